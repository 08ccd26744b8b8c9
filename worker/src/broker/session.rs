//! One session on one connection: the companion attached, the work queue (and the verify
//! queue) consumed, every delivery handed to the handler as a tracked task, until shutdown or
//! until anything on the connection ends.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{
    Companion, Connection, Handler, Inbound, Settle, Source, Supervisor, TopologyReport,
    bounded_wait, sample_queues,
};
use crate::telemetry::metrics;

/// How a session ended.
pub(super) enum SessionEnd {
    /// Shutdown: the consume channel stays open (the connection keeps it) while builds in
    /// flight finish and ack; closing it would return their messages to the queue.
    Shutdown,
    /// The connection, a consumer or the companion ended.
    Lost(String),
}

/// The companion of a session, running as a task of its own until stopped.
pub(super) struct CompanionHandle {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl CompanionHandle {
    fn idle() -> CompanionHandle {
        CompanionHandle {
            stop: CancellationToken::new(),
            task: None,
        }
    }

    /// Stops it and waits for its task, which ends at its next await.
    pub(super) async fn stop(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

/// Starts the companion on `connection`; the receiver says why it ended, if it does.
async fn attach(
    companion: Option<&Arc<dyn Companion>>,
    connection: &Arc<Connection>,
) -> Result<(CompanionHandle, Option<oneshot::Receiver<String>>), String> {
    let stop = CancellationToken::new();
    let Some(companion) = companion else {
        return Ok((CompanionHandle::idle(), None));
    };
    let running = companion.attach(connection.clone()).await?;
    let (ended_tx, ended) = oneshot::channel();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        tokio::select! {
            why = running => { let _ = ended_tx.send(why); }
            () = token.cancelled() => {}
        }
    });
    let handle = CompanionHandle {
        stop,
        task: Some(task),
    };
    Ok((handle, Some(ended)))
}

/// Why the companion ended (never, without one).
async fn ended(companion: &mut Option<oneshot::Receiver<String>>) -> String {
    match companion {
        Some(rx) => rx.await.unwrap_or_else(|_| "the companion stopped".into()),
        None => std::future::pending().await,
    }
}

impl<H: Handler> Supervisor<H> {
    /// Runs one session; returns how it ended and the companion (still running on shutdown,
    /// so that builds in flight can finish).
    pub(super) async fn session(
        &self,
        connection: &Arc<Connection>,
        report: &TopologyReport,
        lost: &CancellationToken,
    ) -> (SessionEnd, CompanionHandle) {
        let (companion, mut companion_ended) =
            match attach(self.companion.as_ref(), connection).await {
                Ok(c) => c,
                Err(why) => {
                    return (SessionEnd::Lost(why), CompanionHandle::idle());
                }
            };
        let ended = self
            .consume(connection, report, lost, &mut companion_ended)
            .await;
        (ended, companion)
    }

    async fn consume(
        &self,
        connection: &Arc<Connection>,
        report: &TopologyReport,
        lost: &CancellationToken,
        companion_ended: &mut Option<oneshot::Receiver<String>>,
    ) -> SessionEnd {
        let channel = match connection.create_channel().await {
            Ok(c) => c,
            Err(e) => return SessionEnd::Lost(format!("cannot open the consume channel: {e}")),
        };
        if let Err(e) = channel
            .basic_qos(self.opts.prefetch, BasicQosOptions::default())
            .await
        {
            return SessionEnd::Lost(format!("basic.qos failed: {e}"));
        }
        let tag = format!(
            "{}-{}",
            self.opts.connection_name,
            uuid::Uuid::new_v4().simple()
        );
        let topology = &self.opts.topology;
        let mut main = match consumer(&channel, &topology.queue, &tag).await {
            Ok(c) => c,
            Err(e) => return SessionEnd::Lost(format!("basic.consume failed: {e}")),
        };
        let verify_tag = format!("{tag}-verify");
        let mut verify = match &topology.verify_queue {
            Some(q) => match consumer(&channel, q, &verify_tag).await {
                Ok(c) => Some(c),
                Err(e) => {
                    return SessionEnd::Lost(format!(
                        "basic.consume of the verify queue failed: {e}"
                    ));
                }
            },
            None => None,
        };
        // Read-only sampling that ends with the session, on every return path.
        let sampler = CancellationToken::new();
        let _sampling = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(sample_queues(
            connection.clone(),
            topology.sampled_queues(report),
            sampler.clone(),
        )));
        let _sampler_guard = sampler.drop_guard();
        self.readiness.set_consuming(true);
        metrics::broker_connected(true);
        info!(queue = %topology.queue, prefetch = self.opts.prefetch, "consuming");
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    self.stop_consuming(&channel, &tag, verify.is_some().then_some(&verify_tag), &mut main).await;
                    return SessionEnd::Shutdown;
                }
                why = ended(companion_ended) => return SessionEnd::Lost(why),
                next = main.next() => match next {
                    Some(Ok(d)) => self.dispatch(d, Source::Main, lost),
                    Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
                    None => return SessionEnd::Lost("consumer cancelled".into()),
                },
                next = next_opt(&mut verify) => match next {
                    Some(Ok(d)) => self.dispatch(d, Source::Verify, lost),
                    Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
                    None => return SessionEnd::Lost("verify consumer cancelled".into()),
                },
            }
        }
    }

    /// Cancels the consumers; deliveries that raced the cancel go straight back.
    async fn stop_consuming(
        &self,
        channel: &lapin::Channel,
        tag: &str,
        verify_tag: Option<&String>,
        main: &mut lapin::Consumer,
    ) {
        self.readiness.set_consuming(false);
        for t in std::iter::once(tag).chain(verify_tag.map(String::as_str)) {
            let cancel = channel.basic_cancel(ShortString::from(t), BasicCancelOptions::default());
            bounded_wait("consumer cancel", cancel).await;
        }
        while let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_millis(200), main.next()).await
        {
            let requeue = BasicNackOptions {
                requeue: true,
                multiple: false,
            };
            bounded_wait("requeue", d.acker.nack(requeue)).await;
        }
    }

    fn dispatch(&self, d: Delivery, source: Source, lost: &CancellationToken) {
        let settle = Settle::new(d.acker.clone());
        let inbound = Inbound {
            data: d.data,
            properties: d.properties,
            redelivered: d.redelivered,
            source,
            received: Instant::now(),
            settle: settle.clone(),
        };
        let handler = Arc::clone(&self.handler);
        let abort = self.abort.clone();
        let lost = lost.clone();
        self.tracker.spawn(async move {
            // A panic in a handler must not leave its message unsettled until the connection
            // closes (nor be redelivered into the same panic forever): it is rejected, which
            // dead-letters it (`<queue>.dead` through the main queue's dead-letter arguments,
            // or the administrator's loop without a topology of ours).
            let handled = std::panic::AssertUnwindSafe(handler.handle(inbound)).catch_unwind();
            tokio::select! {
                result = handled => if result.is_err() {
                    error!("a message handler panicked; rejecting its message");
                    metrics::message_handled("unknown", "panicked");
                    settle.reject().await;
                },
                _ = abort.cancelled() => settle.requeue().await,
                // Handlers of a lost connection stop at once: their deliveries come back as
                // redeliveries, and a handler still running would race them.
                _ = lost.cancelled() => {}
            }
        });
    }
}

async fn consumer(
    channel: &lapin::Channel,
    queue: &str,
    tag: &str,
) -> lapin::Result<lapin::Consumer> {
    channel
        .basic_consume(
            ShortString::from(queue),
            ShortString::from(tag),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

async fn next_opt(c: &mut Option<lapin::Consumer>) -> Option<lapin::Result<Delivery>> {
    match c {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}
