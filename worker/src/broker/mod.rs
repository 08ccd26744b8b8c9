//! Broker: the RabbitMQ connection and everything that rides on it.
//!
//! Owns the connection supervisor (connect, declare or check the topology, consume with
//! `prefetchCount` and manual acks, reconnect with backoff, drain on shutdown), confirmed
//! publishing ([`Publisher`]), the worker's headers, and the queue-depth sampler. It knows
//! nothing of builds: each delivery goes to a [`Handler`], which settles it through
//! [`Settle`].

pub mod channels;
pub mod headers;
pub mod locks;
pub mod publisher;
pub mod topology;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties, Connection, ConnectionProperties, DefaultConnectionBuilder};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use locks::{BuildLock, LockError, Locks, LocksControl};
pub use publisher::{Outgoing, PublishError, Publisher, PublisherControl};
pub use topology::{Topology, TopologyError, TopologyReport};

use crate::events::EventType;
use crate::health::Readiness;
use crate::secret::Secret;
use crate::telemetry::metrics;

/// How often queue depth is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Reconnect backoff bounds.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Longest wait for the broker's answer to a cancel or a close on the way out, a build lock's
/// release included (and for a stream acknowledgement to be sent from the session's loop). A
/// broker that stopped answering (a partition, a hung node) would otherwise hold the caller
/// until heartbeats time out (minutes with long heartbeats), and lapin 4.12 can leave a close
/// unanswered for good after a connection error (the broker's close crossing ours: "invalid
/// channel state: Closing").
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Waits for `what` (a cancel, a requeue, a channel or connection close) for at most
/// [`CLOSE_WAIT`]; its outcome does not matter: the broker drops whatever the channel or
/// connection held when the socket goes, and returns its unsettled deliveries to their queues.
pub(crate) async fn bounded_wait<T>(what: &str, answer: impl Future<Output = T>) {
    if tokio::time::timeout(CLOSE_WAIT, answer).await.is_err() {
        warn!(
            what,
            "the broker did not answer in time; going on without it"
        );
    }
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
    settled: Arc<Mutex<bool>>,
}

impl Settle {
    fn new(acker: Acker) -> Self {
        Self {
            acker,
            settled: Arc::new(Mutex::new(false)),
        }
    }

    fn claim(&self) -> bool {
        let mut s = self.settled.lock().expect("settle lock poisoned");
        !std::mem::replace(&mut *s, true)
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

    /// A `build.stopped` event was seen on the events exchange (from any replica).
    fn stopped_elsewhere(&self, build_id: u64);

    /// A message was read from the launches stream (a record of a create about to be sent, by
    /// any replica, this one included); `true` when it was a record.
    fn launch_recorded(&self, body: &[u8]) -> bool {
        let _ = body;
        false
    }

    /// The topology was declared or checked (after every connect).
    fn topology_checked(&self, report: &TopologyReport) {
        let _ = report;
    }
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
    /// Also follow every replica's `build.launched` on the events exchange (for the lifecycle
    /// reporter, which announces nothing about a pod before its launch is on the stream).
    pub launch_feed: bool,
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
/// still be confirmed), and closes the connection. Reconnects with backoff whenever the
/// connection drops.
pub async fn run<H: Handler>(
    opts: BrokerOptions,
    handler: Arc<H>,
    control: PublisherControl,
    locks: LocksControl,
    readiness: Readiness,
    shutdown: CancellationToken,
    before_disconnect: impl Future<Output = ()>,
) -> Result<TopologyReport, BrokerError> {
    let mut before_disconnect = Some(Box::pin(before_disconnect));
    let tracker = TaskTracker::new();
    // Cancelled when the drain deadline passes: unsettled deliveries go back to the queue.
    let abort = CancellationToken::new();
    let mut delay = RECONNECT_MIN;
    let mut first = true;
    let mut report = TopologyReport::default();

    while !shutdown.is_cancelled() {
        let connection = tokio::select! {
            c = connect(&opts) => c,
            _ = shutdown.cancelled() => break,
        };
        let connection = match connection {
            Ok(c) => Arc::new(c),
            Err(e) => {
                warn!(error = %e, retry_in = ?delay, "cannot connect to the broker");
                sleep_or_shutdown(jitter(delay), &shutdown).await;
                delay = (delay * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        match opts.topology.ensure(&connection).await {
            Ok(r) => {
                handler.topology_checked(&r);
                report = r;
            }
            Err(e) if e.is_fatal() => {
                error!(error = %e, "broker topology problem");
                bounded_wait(
                    "connection close",
                    connection.close(200, "topology problem".into()),
                )
                .await;
                return Err(e.into());
            }
            Err(e) => {
                warn!(error = %e, "topology check failed; reconnecting");
                bounded_wait(
                    "connection close",
                    connection.close(200, "reconnect".into()),
                )
                .await;
                sleep_or_shutdown(jitter(delay), &shutdown).await;
                delay = (delay * 2).min(RECONNECT_MAX);
                continue;
            }
        }
        if !report.dead_queue_exists {
            warn!(
                queue = %opts.topology.dead_queue,
                "dead-letter queue does not exist: refused messages are acknowledged after \
                 their build is marked failed, as the original worker did"
            );
        }
        control.connected(publisher::channel_pool(connection.clone()));
        let locks_exhausted = locks.connected(locks::lock_pool(connection.clone(), opts.prefetch));
        if !first {
            metrics::broker_reconnected();
        }
        first = false;

        // Cancelled when this connection is lost: the deliveries of its builds in flight can no
        // longer be settled and come back as redeliveries, so their handling stops at once
        // instead of racing the redelivered copies (two handlers of one build at a time could
        // choose different executors).
        let lost = CancellationToken::new();
        let session = Session {
            opts: &opts,
            sampled: opts.topology.sampled_queues(&report),
            connection: &connection,
            handler: &handler,
            tracker: &tracker,
            abort: &abort,
            lost: &lost,
            readiness: &readiness,
            shutdown: &shutdown,
            control: &control,
            locks_exhausted: &locks_exhausted,
        };
        let ended = session.consume().await;
        readiness.set_consuming(false);
        metrics::broker_connected(false);
        match ended {
            SessionEnd::Shutdown(consume_channel) => {
                // Builds in flight still publish their events and settle on this connection.
                drain(&tracker, &abort, opts.drain_timeout).await;
                // So do the rest of the process's publishers (the reporters' last events).
                if let Some(stop_the_rest) = before_disconnect.take() {
                    stop_the_rest.await;
                }
                bounded_wait(
                    "consume channel close",
                    consume_channel.close(200, "shutdown".into()),
                )
                .await;
                control.disconnected();
                locks.disconnected();
                bounded_wait("connection close", connection.close(200, "shutdown".into())).await;
                info!("broker connection closed");
                return Ok(report);
            }
            SessionEnd::Lost(reason) => {
                lost.cancel();
                control.disconnected();
                locks.disconnected();
                // A session can end with its connection still open (a consumer cancelled, no
                // channel left for locks): close it, or its consumers would keep their
                // unacknowledged deliveries and its lock consumers their locks while nobody
                // reads them.
                bounded_wait(
                    "connection close",
                    connection.close(200, "session ended; reconnecting".into()),
                )
                .await;
                warn!(%reason, "broker connection lost; reconnecting");
                delay = RECONNECT_MIN;
                sleep_or_shutdown(jitter(delay), &shutdown).await;
            }
        }
    }
    readiness.set_consuming(false);
    control.disconnected();
    locks.disconnected();
    drain(&tracker, &abort, opts.drain_timeout).await;
    Ok(report)
}

enum SessionEnd {
    /// Shutdown: the consume channel is handed back so it stays open while builds in flight
    /// finish and ack (closing it would return their messages to the queue).
    Shutdown(lapin::Channel),
    Lost(String),
}

struct Session<'a, H> {
    opts: &'a BrokerOptions,
    /// Queues whose depth is sampled (those that exist).
    sampled: Vec<String>,
    connection: &'a Arc<Connection>,
    handler: &'a Arc<H>,
    tracker: &'a TaskTracker,
    abort: &'a CancellationToken,
    lost: &'a CancellationToken,
    readiness: &'a Readiness,
    shutdown: &'a CancellationToken,
    control: &'a PublisherControl,
    locks_exhausted: &'a CancellationToken,
}

impl<H: Handler> Session<'_, H> {
    async fn consume(&self) -> SessionEnd {
        let channel = match self.connection.create_channel().await {
            Ok(c) => c,
            Err(e) => return SessionEnd::Lost(format!("cannot open the consume channel: {e}")),
        };
        if let Err(e) = channel
            .basic_qos(self.opts.prefetch, BasicQosOptions::default())
            .await
        {
            return SessionEnd::Lost(format!("basic.qos failed: {e}"));
        }
        // Stops made and launches begun before this replica connected, before any start is
        // taken; launches keep coming in for the rest of the session.
        self.catch_up_stops().await;
        let mut launches = self.launches_feed().await;
        let tag = format!(
            "{}-{}",
            self.opts.connection_name,
            uuid::Uuid::new_v4().simple()
        );
        let mut main = match channel
            .basic_consume(
                ShortString::from(self.opts.topology.queue.as_str()),
                ShortString::from(tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return SessionEnd::Lost(format!("basic.consume failed: {e}")),
        };
        let verify_tag = format!("{tag}-verify");
        let mut verify = match &self.opts.topology.verify_queue {
            Some(q) => match channel
                .basic_consume(
                    ShortString::from(q.as_str()),
                    ShortString::from(verify_tag.as_str()),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
            {
                Ok(c) => Some(c),
                Err(e) => {
                    return SessionEnd::Lost(format!(
                        "basic.consume of the verify queue failed: {e}"
                    ));
                }
            },
            None => None,
        };
        // The channel is kept alive beside its consumer for the whole session.
        let (_feed_channel, mut feed) = match self.event_feed().await {
            Some((ch, c)) => (Some(ch), Some(c)),
            None => (None, None),
        };
        let sampler = CancellationToken::new();
        tokio::spawn(sample_queues(
            self.connection.clone(),
            self.sampled.clone(),
            sampler.clone(),
        ));
        let _sampler_guard = sampler.drop_guard();

        let mut acks = tokio::time::interval(STREAM_ACK_EVERY);
        acks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.readiness.set_consuming(true);
        metrics::broker_connected(true);
        info!(queue = %self.opts.topology.queue, prefetch = self.opts.prefetch, "consuming");

        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    self.readiness.set_consuming(false);
                    bounded_wait("consumer cancel", channel.basic_cancel(ShortString::from(tag.as_str()), BasicCancelOptions::default())).await;
                    if verify.is_some() {
                        bounded_wait("consumer cancel", channel.basic_cancel(ShortString::from(verify_tag.as_str()), BasicCancelOptions::default())).await;
                    }
                    // Deliveries that raced the cancel go straight back.
                    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(200), main.next()).await {
                        bounded_wait("requeue", d.acker.nack(BasicNackOptions { requeue: true, multiple: false })).await;
                    }
                    return SessionEnd::Shutdown(channel);
                }
                _ = self.locks_exhausted.cancelled() => {
                    return SessionEnd::Lost(
                        "this connection can open no more lock channels (lapin keeps every channel the broker refused); replacing it".into(),
                    );
                }
                next = main.next() => match next {
                    Some(Ok(d)) => self.dispatch(d, Source::Main),
                    Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
                    None => return SessionEnd::Lost("consumer cancelled".into()),
                },
                next = next_opt(&mut verify) => match next {
                    Some(Ok(d)) => self.dispatch(d, Source::Verify),
                    Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
                    None => return SessionEnd::Lost("verify consumer cancelled".into()),
                },
                _ = acks.tick() => {
                    // A body of this loop: bounded, or a stuck send would keep it from
                    // noticing a shutdown.
                    if let Some(reader) = launches.as_mut() {
                        match tokio::time::timeout(CLOSE_WAIT, reader.flush()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return SessionEnd::Lost(format!("launches stream: {e}")),
                            Err(_) => return SessionEnd::Lost("launches stream: its acknowledgement was not sent in time".into()),
                        }
                    }
                }
                next = next_record(&mut launches) => match next {
                    Some(Ok(d)) => {
                        self.handler.launch_recorded(&d.data);
                    }
                    Some(Err(e)) => return SessionEnd::Lost(format!("launches stream: {e}")),
                    None => return SessionEnd::Lost("launches stream consumer cancelled".into()),
                },
                next = next_opt(&mut feed) => {
                    if let Some(Ok(d)) = next {
                        if d.routing_key.as_str() == EventType::BuildLaunched.suffix() {
                            if let Some(id) = d.properties.message_id() {
                                self.control.launched_seen(id.as_str(), event_build_id(&d.data));
                            }
                        } else if let Some(id) = event_build_id(&d.data) {
                            self.handler.stopped_elsewhere(id);
                        }
                    }
                }
            }
        }
    }

    fn dispatch(&self, d: Delivery, source: Source) {
        let settle = Settle::new(d.acker.clone());
        let inbound = Inbound {
            data: d.data,
            properties: d.properties,
            redelivered: d.redelivered,
            source,
            received: Instant::now(),
            settle: settle.clone(),
        };
        let handler = Arc::clone(self.handler);
        let abort = self.abort.clone();
        let lost = self.lost.clone();
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
                _ = lost.cancelled() => {}
            }
        });
    }

    /// Reads the stops stream up to a marker of its own (bounded by [`STOPS_CATCH_UP`]): every
    /// `build.stopped` of the retention period becomes a tombstone, so a replica that started
    /// after a stop still refuses a late `start` of that build.
    async fn catch_up_stops(&self) {
        let Some(stream) = self.opts.topology.stops_stream.as_deref() else {
            return;
        };
        let started = Instant::now();
        match tokio::time::timeout(STOPS_CATCH_UP, self.read_stops(stream)).await {
            Ok(Ok(stops)) => info!(
                stream,
                stops,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "read the stops made before this connection"
            ),
            Ok(Err(e)) => {
                warn!(stream, error = %e, "cannot read the stops stream; continuing with the stops seen live")
            }
            Err(_) => warn!(
                stream,
                "the stops stream was not read to its end in time; continuing with what was read"
            ),
        }
    }

    async fn read_stops(&self, stream: &str) -> lapin::Result<usize> {
        let from = jiff::Timestamp::now().as_second() - topology::STOPS_RETENTION.as_secs() as i64;
        let (mut reader, marker) = StreamReader::open(self.connection, stream, from).await?;
        let mut stops = 0;
        reader
            .read_to_marker(&marker, &mut stops, |body| {
                event_build_id(body)
                    .map(|id| self.handler.stopped_elsewhere(id))
                    .is_some()
            })
            .await?;
        bounded_wait(
            "stops stream channel close",
            reader.channel.close(200, "caught up with the stops".into()),
        )
        .await;
        Ok(stops)
    }

    /// The launches stream from the start of the window: read up to a marker of this
    /// connection's own (bounded by [`STOPS_CATCH_UP`]) before any start is taken, then
    /// followed live for the rest of the session. `None` without the stream, or when it cannot
    /// be read (the replica then knows only the launches it begins itself).
    async fn launches_feed(&self) -> Option<StreamReader> {
        let stream = self.opts.topology.launches_stream.as_deref()?;
        let from = jiff::Timestamp::now().as_second()
            - self.opts.topology.launches_window.as_secs() as i64;
        let started = Instant::now();
        let (mut reader, marker) = match StreamReader::open(self.connection, stream, from).await {
            Ok(r) => r,
            Err(e) => {
                warn!(stream, error = %e, "cannot read the launches stream; continuing without it");
                return None;
            }
        };
        let mut records = 0usize;
        let caught_up = tokio::time::timeout(STOPS_CATCH_UP, async {
            let reached = reader
                .read_to_marker(&marker, &mut records, |body| {
                    self.handler.launch_recorded(body)
                })
                .await?;
            if reached {
                Ok(())
            } else {
                Err(lapin::Error::from(std::io::Error::from(
                    std::io::ErrorKind::UnexpectedEof,
                )))
            }
        })
        .await;
        match caught_up {
            Ok(Ok(())) => info!(
                stream,
                records,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "read the launches begun before this connection"
            ),
            Ok(Err(e)) => {
                warn!(stream, error = %e, "cannot read the launches stream; continuing without it");
                return None;
            }
            Err(_) => warn!(
                stream,
                records,
                "the launches stream was not read to its end in time; reading the rest while consuming"
            ),
        }
        Some(reader)
    }

    /// An exclusive, server-named queue bound to `build.stopped` on the events exchange, so
    /// every replica learns of every stop (a `start` consumed later is not launched), and, for
    /// the reporter, to `build.launched`.
    async fn event_feed(&self) -> Option<(lapin::Channel, lapin::Consumer)> {
        let exchange = self.opts.topology.events_exchange.as_deref()?;
        let channel = self.connection.create_channel().await.ok()?;
        let queue = channel
            .queue_declare(
                ShortString::from(""),
                QueueDeclareOptions::exclusive().auto_delete(),
                FieldTable::default(),
            )
            .await
            .ok()?;
        let mut keys = vec![EventType::BuildStopped];
        if self.opts.launch_feed {
            keys.push(EventType::BuildLaunched);
        }
        for key in keys {
            channel
                .queue_bind(
                    queue.name().clone(),
                    ShortString::from(exchange),
                    ShortString::from(key.suffix()),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .ok()?;
        }
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()?;
        if self.opts.launch_feed {
            self.control.launch_feed(Some(jiff::Timestamp::now()));
        }
        Some((channel, consumer))
    }
}

/// A consumer of a stream with its channel, acknowledging as it goes (a stream consumer needs
/// acks for credit; they acknowledge nothing else).
struct StreamReader {
    channel: lapin::Channel,
    consumer: lapin::Consumer,
    unacked: u16,
    /// The acker of the last delivery, while some are unacknowledged.
    last: Option<Acker>,
}

impl StreamReader {
    /// Appends a marker to `stream` (the end of what exists now; readers skip it, it names no
    /// build) and consumes the stream from `from` (seconds since the epoch).
    async fn open(
        connection: &Connection,
        stream: &str,
        from: i64,
    ) -> lapin::Result<(StreamReader, String)> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channel
            .basic_qos(STOPS_PREFETCH, BasicQosOptions::default())
            .await?;
        let marker = format!("bcw-sync-{}", uuid::Uuid::new_v4().simple());
        channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(stream),
                BasicPublishOptions::default(),
                b"",
                BasicProperties::default().with_message_id(ShortString::from(marker.as_str())),
            )
            .await?
            .await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-stream-offset".into(),
            lapin::types::AMQPValue::Timestamp(from.max(0) as u64),
        );
        let consumer = channel
            .basic_consume(
                ShortString::from(stream),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                args,
            )
            .await?;
        Ok((
            StreamReader {
                channel,
                consumer,
                unacked: 0,
                last: None,
            },
            marker,
        ))
    }

    /// Reads up to `marker`, handing every other body to `each`, which says whether it was one
    /// to count in `counted` (kept by the caller: a timeout around this keeps the count).
    /// `false` when the stream ended before the marker.
    async fn read_to_marker(
        &mut self,
        marker: &str,
        counted: &mut usize,
        mut each: impl FnMut(&[u8]) -> bool,
    ) -> lapin::Result<bool> {
        while let Some(delivery) = self.next().await {
            let delivery = delivery?;
            if is_marker(&delivery, marker) {
                return Ok(true);
            }
            if each(&delivery.data) {
                *counted += 1;
            }
        }
        Ok(false)
    }

    async fn next(&mut self) -> Option<lapin::Result<Delivery>> {
        let delivery = match self.consumer.next().await? {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        self.unacked += 1;
        self.last = Some(delivery.acker.clone());
        if self.unacked >= STOPS_PREFETCH / 2
            && let Err(e) = self.flush().await
        {
            return Some(Err(e));
        }
        Some(Ok(delivery))
    }

    /// Acknowledges everything delivered so far (also done now and then while the stream is
    /// quiet, so that no delivery stays unacknowledged for long: the broker's consumer timeout).
    async fn flush(&mut self) -> lapin::Result<()> {
        if let Some(last) = self.last.take() {
            self.unacked = 0;
            last.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(())
    }
}

fn is_marker(delivery: &Delivery, marker: &str) -> bool {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str())
        == Some(marker)
}

async fn next_record(r: &mut Option<StreamReader>) -> Option<lapin::Result<Delivery>> {
    match r {
        Some(r) => r.next().await,
        None => std::future::pending().await,
    }
}

async fn next_opt(c: &mut Option<lapin::Consumer>) -> Option<lapin::Result<Delivery>> {
    match c {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// `data.buildId` of a `build.*` event.
fn event_build_id(body: &[u8]) -> Option<u64> {
    // Typed, so that the rest of the event is skipped rather than built (every replica reads
    // every `build.launched`).
    #[derive(serde::Deserialize)]
    struct Event {
        data: Data,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        #[serde(rename = "buildId")]
        build_id: Option<u64>,
    }
    serde_json::from_slice::<Event>(body).ok()?.data.build_id
}

async fn connect(opts: &BrokerOptions) -> lapin::Result<Connection> {
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

/// Longest a connecting replica reads the stops stream before it consumes anyway.
const STOPS_CATCH_UP: Duration = Duration::from_secs(15);
/// How often the launches stream's deliveries are acknowledged while it is quiet.
const STREAM_ACK_EVERY: Duration = Duration::from_secs(10);
/// Stops delivered at once while catching up.
const STOPS_PREFETCH: u16 = 500;

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

#[cfg(test)]
mod event_feed_tests {
    use super::*;

    #[test]
    fn the_build_id_of_an_event_is_read_and_anything_else_is_none() {
        let event = br#"{"specversion":"1.0","type":"cd.screwdriver.build.launched","id":"x",
            "data":{"buildId":42,"jobId":7,"executor":"east","pod":"42-abcde","attempt":1}}"#;
        assert_eq!(event_build_id(event), Some(42));
        assert_eq!(event_build_id(br#"{"data":{"jobId":7}}"#), None);
        assert_eq!(event_build_id(br#"{"data":{"buildId":-1}}"#), None);
        assert_eq!(event_build_id(br#"{"id":"x"}"#), None);
        assert_eq!(event_build_id(b"not json"), None);
    }
}
