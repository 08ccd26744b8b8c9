//! Broker: the RabbitMQ connection as transport.
//!
//! Owns the connection supervisor (connect, declare or check the topology, consume with
//! `prefetchCount` and manual acks, reconnect with backoff, drain on shutdown), confirmed
//! publishing ([`Publisher`]), stream reading ([`stream`]), the worker's headers and the
//! queue-depth sampler. It knows nothing of builds: each delivery goes to a [`Handler`], which
//! settles it through [`Settle`], and whatever else must live on the connection is a
//! [`Companion`] the supervisor starts with every session and watches: when a companion ends,
//! the session ends and the connection is replaced.

pub mod channels;
mod connection;
pub mod headers;
pub mod pipeline;
pub mod publisher;
mod session;
pub mod stream;
pub mod topology;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties, ConnectionProperties, DefaultConnectionBuilder};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use session::SessionEnd;
use tracing::{error, info, warn};

pub use connection::Connection;
pub use publisher::{Outgoing, PublishError, Publisher, PublisherControl};
pub use topology::{Topology, TopologyError, TopologyReport};

use crate::health::Readiness;
use crate::secret::Secret;
use crate::telemetry::metrics;

/// How often queue depth is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Reconnect backoff bounds.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Longest wait for the broker's answer to a cancel or a close on the way out. A broker that
/// stopped answering (a partition, a hung node) would otherwise hold the caller
/// until heartbeats time out (minutes with long heartbeats), and lapin 4.12 can leave a close
/// unanswered for good after a connection error (the broker's close crossing ours: "invalid
/// channel state: Closing").
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Waits for `what` (a cancel, a requeue, a channel or connection close) for at most
/// [`CLOSE_WAIT`]; the answer, if one came. The supervisor goes on either way: the broker drops
/// whatever the channel or connection held when the socket goes, and returns its unsettled
/// deliveries to their queues.
pub(crate) async fn bounded_wait<T>(what: &str, answer: impl Future<Output = T>) -> Option<T> {
    let answer = tokio::time::timeout(CLOSE_WAIT, answer).await.ok();
    if answer.is_none() {
        warn!(
            what,
            "the broker did not answer in time; going on without it"
        );
    }
    answer
}

/// Which queue a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The pool's queue (start, stop, verify, clear; retries come back here too).
    Main,
    /// Screwdriver's verify queue (admin-provisioned topology only).
    Verify,
}

/// One delivery, with the means to settle it exactly once.
#[derive(Debug)]
pub struct Inbound {
    /// Message body.
    pub data: Vec<u8>,
    /// AMQP properties (headers, message id, ...).
    pub properties: BasicProperties,
    /// Delivered before (the broker says so: an earlier holder did not settle it).
    pub redelivered: bool,
    /// Which queue it came from.
    pub source: Source,
    /// When it arrived.
    pub received: Instant,
    /// Ack / nack.
    pub settle: Settle,
}

/// Settles a delivery exactly once; later calls are no-ops. Shared between the handler and the
/// supervisor, which returns unsettled deliveries to the queue when the drain deadline passes.
#[derive(Debug, Clone)]
pub struct Settle {
    acker: Acker,
    settled: Arc<AtomicBool>,
}

impl Settle {
    fn new(acker: Acker) -> Self {
        Self {
            acker,
            settled: Arc::new(AtomicBool::new(false)),
        }
    }

    fn claim(&self) -> bool {
        !self.settled.swap(true, Ordering::SeqCst)
    }

    /// Acknowledges: the message is done. Errors (a channel that died meanwhile) are logged:
    /// the broker will deliver the message again, and handling is idempotent.
    pub async fn ack(&self) {
        if self.claim()
            && let Err(e) = self.acker.ack(BasicAckOptions::default()).await
        {
            warn!(error = %e, "ack failed; the message will be delivered again");
        }
    }

    /// Returns the message to its queue untouched (shutdown, or nothing was done).
    pub async fn requeue(&self) {
        if self.claim() {
            let opts = BasicNackOptions {
                requeue: true,
                multiple: false,
            };
            if let Err(e) = self.acker.nack(opts).await {
                warn!(error = %e, "nack failed; the message will be delivered again");
            }
        }
    }

    /// Rejects without requeue: with an admin-provisioned topology this sends the message
    /// into the administrator's dead-letter delay loop.
    pub async fn reject(&self) {
        if self.claim() {
            let opts = BasicNackOptions {
                requeue: false,
                multiple: false,
            };
            if let Err(e) = self.acker.nack(opts).await {
                warn!(error = %e, "nack failed; the message will be delivered again");
            }
        }
    }
}

/// What the worker does with each delivery.
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivery and settles it.
    fn handle(&self, inbound: Inbound) -> impl Future<Output = ()> + Send;

    /// The topology was declared or checked (after every connect).
    fn topology_checked(&self, report: &TopologyReport) {
        let _ = report;
    }
}

/// A future that runs for the rest of a session and says why it ended.
pub type Running = futures::future::BoxFuture<'static, String>;

/// Something that lives on the broker connection beside the consumer. It is attached to every
/// new connection before any delivery is taken, runs while builds in flight drain, and the
/// session ends when it ends (so nothing on the connection can stop silently).
pub trait Companion: Send + Sync + 'static {
    /// Sets up on `connection`; what it returns runs until the session ends. An error (why)
    /// ends the session before it consumes.
    fn attach(
        &self,
        connection: Arc<Connection>,
    ) -> futures::future::BoxFuture<'static, Result<Running, String>>;
}

/// Connection parameters.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// AMQP URI (with credentials and heartbeat).
    pub uri: Secret,
    /// PEM CA bundle for `amqps`.
    pub ca_pem: Option<String>,
    /// Connection name shown in the management UI.
    pub connection_name: String,
    /// The topology.
    pub topology: Topology,
    /// Consumer prefetch.
    pub prefetch: u16,
    /// Longest wait for builds in flight after shutdown starts.
    pub drain_timeout: Duration,
}

/// Why the supervisor stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The topology does not match the configuration.
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

/// Runs the broker side until `shutdown` is cancelled, then drains: stops consuming, lets
/// builds in flight finish until the drain deadline, returns the rest to the queue, runs
/// `before_disconnect` (the caller stops its other publishers there, while their events can
/// still be confirmed), stops the companion and closes the connection. Reconnects with backoff
/// whenever the connection drops.
pub async fn run<H: Handler>(
    opts: BrokerOptions,
    handler: Arc<H>,
    control: PublisherControl,
    companion: Option<Arc<dyn Companion>>,
    readiness: Readiness,
    shutdown: CancellationToken,
    before_disconnect: impl Future<Output = ()>,
) -> Result<TopologyReport, BrokerError> {
    let supervisor = Supervisor {
        opts,
        handler,
        control,
        companion,
        readiness,
        shutdown,
        tracker: TaskTracker::new(),
        abort: CancellationToken::new(),
    };
    supervisor.run(before_disconnect).await
}

/// What lives for the whole process on the broker side.
struct Supervisor<H> {
    opts: BrokerOptions,
    handler: Arc<H>,
    control: PublisherControl,
    companion: Option<Arc<dyn Companion>>,
    readiness: Readiness,
    shutdown: CancellationToken,
    /// The handlers of deliveries in flight.
    tracker: TaskTracker,
    /// Cancelled when the drain deadline passes: unsettled deliveries go back to the queue.
    abort: CancellationToken,
}

/// How one connection attempt went.
enum Connected {
    Up(Arc<Connection>, TopologyReport),
    Retry,
    Fatal(TopologyError),
}

impl<H: Handler> Supervisor<H> {
    async fn run(
        self,
        before_disconnect: impl Future<Output = ()>,
    ) -> Result<TopologyReport, BrokerError> {
        let mut before_disconnect = Some(Box::pin(before_disconnect));
        let mut delay = RECONNECT_MIN;
        let mut first = true;
        let mut report = TopologyReport::default();
        while !self.shutdown.is_cancelled() {
            let connection = match self.connect(&mut delay).await {
                Connected::Up(c, r) => {
                    report = r;
                    c
                }
                Connected::Retry => continue,
                Connected::Fatal(e) => return Err(e.into()),
            };
            if !std::mem::take(&mut first) {
                metrics::broker_reconnected();
            }
            let lost = CancellationToken::new();
            let (ended, companion) = self.session(&connection, &report, &lost).await;
            self.readiness.set_consuming(false);
            metrics::broker_connected(false);
            match ended {
                SessionEnd::Shutdown => {
                    self.finish(connection, companion, before_disconnect.take())
                        .await;
                    return Ok(report);
                }
                SessionEnd::Lost(reason) => {
                    lost.cancel();
                    companion.stop().await;
                    self.control.disconnected();
                    // A session can end with its connection still open (a consumer cancelled):
                    // close it, or its consumers would keep their unacknowledged deliveries
                    // while nobody reads them.
                    let _ = connection.close("session ended; reconnecting").await;
                    warn!(%reason, "broker connection lost; reconnecting");
                    delay = RECONNECT_MIN;
                    sleep_or_shutdown(jitter(delay), &self.shutdown).await;
                }
            }
        }
        self.readiness.set_consuming(false);
        self.control.disconnected();
        drain(&self.tracker, &self.abort, self.opts.drain_timeout).await;
        Ok(report)
    }

    /// Connects and declares or checks the topology.
    async fn connect(&self, delay: &mut Duration) -> Connected {
        let connection = tokio::select! {
            c = connect(&self.opts) => c,
            _ = self.shutdown.cancelled() => return Connected::Retry,
        };
        let connection = match connection {
            Ok(c) => Arc::new(Connection::new(c)),
            Err(e) => {
                warn!(error = %e, retry_in = ?delay, "cannot connect to the broker");
                sleep_or_shutdown(jitter(*delay), &self.shutdown).await;
                *delay = (*delay * 2).min(RECONNECT_MAX);
                return Connected::Retry;
            }
        };
        match self.opts.topology.ensure(&connection).await {
            Ok(report) => {
                self.handler.topology_checked(&report);
                self.control
                    .connected(channels::confirm_channels(connection.clone()));
                Connected::Up(connection, report)
            }
            Err(e) if e.is_fatal() => {
                error!(error = %e, "broker topology problem");
                let _ = connection.close("topology problem").await;
                Connected::Fatal(e)
            }
            Err(e) => {
                warn!(error = %e, "topology check failed; reconnecting");
                let _ = connection.close("reconnect").await;
                sleep_or_shutdown(jitter(*delay), &self.shutdown).await;
                *delay = (*delay * 2).min(RECONNECT_MAX);
                Connected::Retry
            }
        }
    }

    /// Shutdown: builds in flight finish and settle on this connection, then the rest of the
    /// process's publishers (the reporters' last events), then the companion stops and the
    /// connection closes with its channels.
    async fn finish(
        &self,
        connection: Arc<Connection>,
        companion: session::CompanionHandle,
        before_disconnect: Option<std::pin::Pin<Box<impl Future<Output = ()>>>>,
    ) {
        drain(&self.tracker, &self.abort, self.opts.drain_timeout).await;
        if let Some(stop_the_rest) = before_disconnect {
            stop_the_rest.await;
        }
        companion.stop().await;
        self.control.disconnected();
        let _ = connection.close("shutdown").await;
        info!("broker connection closed");
    }
}

async fn connect(opts: &BrokerOptions) -> lapin::Result<lapin::Connection> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(opts.connection_name.as_str()));
    let mut builder = DefaultConnectionBuilder::new()?
        .with_uri_str(with_default_frame_max(opts.uri.expose()))
        .with_properties(props);
    if let Some(pem) = &opts.ca_pem {
        builder = builder.with_tls_config(OwnedTLSConfig {
            identity: None,
            cert_chain: Some(pem.clone()),
        });
    }
    // lapin retries the TCP connect itself; bound one attempt so readiness and shutdown stay
    // responsive while the broker is down.
    tokio::time::timeout(Duration::from_secs(30), builder.connect())
        .await
        .map_err(|_| lapin::Error::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
}

/// Largest AMQP frame we ask for unless the URI says otherwise (`?frame_max=`). lapin keeps a
/// receive and a send buffer of 32 frames per connection, so RabbitMQ's default of 128 KiB
/// would cost 8 MiB of resident memory per connection; our messages are a few KiB, and larger
/// ones simply travel in more frames.
const DEFAULT_FRAME_MAX: u32 = 32 * 1024;

/// `uri` with `frame_max=DEFAULT_FRAME_MAX` in its query unless it has a `frame_max`.
fn with_default_frame_max(uri: &str) -> String {
    let query = uri.split_once('?').map_or("", |(_, q)| q);
    if query
        .split('&')
        .any(|pair| pair.split('=').next() == Some("frame_max"))
    {
        return uri.to_string();
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}frame_max={DEFAULT_FRAME_MAX}")
}

/// Waits for builds in flight until the deadline, then returns the rest to the queue.
async fn drain(tracker: &TaskTracker, abort: &CancellationToken, deadline: Duration) {
    tracker.close();
    if tokio::time::timeout(deadline, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            deadline = ?deadline,
            "drain deadline passed; returning unfinished messages to the queue"
        );
        abort.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    }
}

/// Samples ready messages and consumers of the pool's queues every few seconds with passive
/// declares on a channel of its own (`bcw_queue_messages`, `bcw_queue_consumers`).
async fn sample_queues(connection: Arc<Connection>, queues: Vec<String>, stop: CancellationToken) {
    let mut channel: Option<lapin::Channel> = None;
    loop {
        for q in &queues {
            if channel.as_ref().is_none_or(|c| !c.status().connected()) {
                channel = connection.create_channel().await.ok();
            }
            let Some(ch) = &channel else { break };
            match ch
                .queue_declare(
                    ShortString::from(q.as_str()),
                    QueueDeclareOptions::default().passive(),
                    FieldTable::default(),
                )
                .await
            {
                Ok(info) => metrics::queue_sampled(q, info.message_count(), info.consumer_count()),
                Err(_) => channel = None,
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.cancelled() => {}
    }
}

pub(crate) fn jitter(d: Duration) -> Duration {
    use rand::RngExt;
    d.mul_f64(rand::rng().random_range(0.5..1.0))
}

#[cfg(test)]
mod frame_max_tests {
    use super::*;

    #[test]
    fn a_small_frame_max_is_asked_for_unless_the_uri_sets_one() {
        assert_eq!(
            with_default_frame_max("amqp://u:p@h:5672/%2f?heartbeat=20"),
            "amqp://u:p@h:5672/%2f?heartbeat=20&frame_max=32768"
        );
        assert_eq!(
            with_default_frame_max("amqp://u:p@h:5672/%2f"),
            "amqp://u:p@h:5672/%2f?frame_max=32768"
        );
        let own = "amqp://u:p@h:5672/%2f?frame_max=131072&heartbeat=20";
        assert_eq!(with_default_frame_max(own), own);
        let parsed: lapin::uri::AMQPUri = with_default_frame_max("amqp://u:p@h:5672/%2f")
            .parse()
            .unwrap();
        assert_eq!(parsed.query.frame_max, Some(32_768));
    }
}
