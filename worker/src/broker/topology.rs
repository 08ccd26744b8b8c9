//! The broker topology of docs/interface.md §5: declared idempotently, or (admin-provisioned)
//! only checked passively.
//!
//! Every declare or check runs on a throwaway channel: a refused declare (406
//! PRECONDITION_FAILED) or a failed passive check (404) closes its channel, and must never take
//! the consume or publish channels with it. Both are fatal at start-up, with a message that says
//! what to fix.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{ErrorKind, ExchangeKind};

use super::Connection;

use crate::config::{QueueType, Settings};

/// Every name of the topology, derived from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Exchange the producers publish to.
    pub exchange: String,
    /// The pool's queue.
    pub queue: String,
    /// Queue type of declared queues.
    pub queue_type: QueueType,
    /// Delay queues `<queue>.retry.<n>` with their TTL.
    pub retry_queues: Vec<(String, Duration)>,
    /// `<queue>.dead`.
    pub dead_queue: String,
    /// Events exchange, when events are enabled.
    pub events_exchange: Option<String>,
    /// Declare (`true`) or only check passively.
    pub declare: bool,
    /// Screwdriver's verify queue, consumed when enabled (admin-provisioned).
    pub verify_queue: Option<String>,
    /// `<queue>.claims`: the launch protocol's questions, consumed by every replica with a
    /// single active consumer (the sequencer). Declared in both layouts when the protocol runs
    /// across replicas (`rabbitmq.buildLocks`).
    pub claims_queue: Option<String>,
    /// `<queue>.ledger`: the sequencer's records, kept [`LEDGER_RETENTION`]. Declared with the
    /// claims queue.
    pub ledger_stream: Option<String>,
}

/// How long the ledger keeps the sequencer's records, and the sequencer remembers a build: a
/// constant, so that replicas configured differently agree on the stream's arguments.
pub const LEDGER_RETENTION: Duration = Duration::from_secs(6 * 3600);

/// What the start-up check found, for the admin-provisioned mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologyReport {
    /// `<queue>.dead` exists (always true when declaring).
    pub dead_queue_exists: bool,
}

/// A topology problem that stops the worker.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// An object exists with other arguments (406 PRECONDITION_FAILED).
    #[error(
        "{object} exists with different arguments ({detail}); the worker will not change it. \
         Delete it, or configure the worker to match it (queueType, retryDelays), or set \
         rabbitmq.declareTopology: false if an administrator provisions the broker"
    )]
    Inequivalent {
        /// `queue "x"` / `exchange "y"`.
        object: String,
        /// The broker's reply text.
        detail: String,
    },
    /// A passive check found nothing (404 NOT_FOUND).
    #[error(
        "{object} does not exist; with rabbitmq.declareTopology: false it must be provisioned \
         by an administrator ({detail})"
    )]
    Missing {
        /// `queue "x"` / `exchange "y"`.
        object: String,
        /// The broker's reply text.
        detail: String,
    },
    /// Access refused, connection lost, ...
    #[error("{object}: {source}")]
    Broker {
        /// What was being declared or checked.
        object: String,
        /// The error.
        #[source]
        source: lapin::Error,
    },
}

impl TopologyError {
    /// True when retrying cannot help (a configuration mismatch, not a broker hiccup).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, TopologyError::Broker { source, .. } if !source.is_amqp_soft_error())
    }
}

impl Topology {
    /// Derives the topology from the configuration.
    pub fn from_settings(s: &Settings) -> Topology {
        let r = &s.rabbitmq;
        Topology {
            exchange: r.exchange.clone(),
            queue: r.queue.clone(),
            queue_type: r.queue_type,
            retry_queues: r
                .retry_delays
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("{}.retry.{}", r.queue, i + 1), *d))
                .collect(),
            dead_queue: format!("{}.dead", r.queue),
            events_exchange: s.events.enabled.then(|| s.events.exchange.clone()),
            declare: r.declare_topology,
            verify_queue: (r.retry_queue_enabled && !r.retry_queue.is_empty())
                .then(|| r.retry_queue.clone()),
            claims_queue: r.build_locks.then(|| format!("{}.claims", r.queue)),
            ledger_stream: r.build_locks.then(|| format!("{}.ledger", r.queue)),
        }
    }

    /// The delay queue for the attempt that follows attempt `attempt` (1-based): the n-th delay
    /// queue for attempt n+1, the last one repeating.
    pub fn retry_queue_for(&self, next_attempt: u32) -> Option<&(String, Duration)> {
        let idx =
            (next_attempt.saturating_sub(2) as usize).min(self.retry_queues.len().checked_sub(1)?);
        self.retry_queues.get(idx)
    }

    /// The delay queue whose delay is closest to `wanted` without exceeding it by much: used
    /// to wait for an executor, where the wait should roughly follow the breaker's open period.
    pub fn retry_queue_near(&self, wanted: Duration) -> Option<&(String, Duration)> {
        self.retry_queues
            .iter()
            .filter(|(_, d)| *d >= wanted)
            .min_by_key(|(_, d)| *d)
            .or_else(|| self.retry_queues.iter().max_by_key(|(_, d)| *d))
    }

    /// The queues worth sampling for `bcw_queue_*`: only those that exist. An admin-provisioned
    /// broker has no `<queue>.retry.<n>` (and maybe no `<queue>.dead`); a passive declare of a
    /// missing queue is a channel error on the broker and in the log, every few seconds.
    pub fn sampled_queues(&self, report: &TopologyReport) -> Vec<String> {
        let mut queues = vec![self.queue.clone()];
        if self.declare || report.dead_queue_exists {
            queues.push(self.dead_queue.clone());
        }
        if self.declare {
            queues.extend(self.retry_queues.iter().map(|(q, _)| q.clone()));
        }
        queues.extend(self.verify_queue.iter().cloned());
        queues
    }

    /// Declares (or checks) everything. Idempotent.
    pub async fn ensure(&self, connection: &Connection) -> Result<TopologyReport, TopologyError> {
        let report = if self.declare {
            self.declare_all(connection).await?;
            TopologyReport {
                dead_queue_exists: true,
            }
        } else {
            self.check_all(connection).await?
        };
        // The protocol's own queue and stream, in both layouts: nobody else makes them.
        self.declare_protocol(connection).await?;
        Ok(report)
    }

    async fn declare_protocol(&self, connection: &Connection) -> Result<(), TopologyError> {
        if let Some(claims) = &self.claims_queue {
            let mut args = FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from("classic")),
            );
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
            declare_queue(connection, claims, args).await?;
        }
        if let Some(ledger) = &self.ledger_stream {
            declare_queue(connection, ledger, stream_args(LEDGER_RETENTION)).await?;
        }
        Ok(())
    }

    async fn declare_all(&self, connection: &Connection) -> Result<(), TopologyError> {
        declare_exchange(connection, &self.exchange).await?;
        // Anything the broker itself would drop from the main queue (a quorum delivery limit)
        // goes to the dead-letter queue instead of being lost.
        let mut main_args = self.queue_args();
        main_args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from("")),
        );
        main_args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(self.dead_queue.as_str())),
        );
        declare_queue(connection, &self.dead_queue, self.queue_args()).await?;
        declare_queue(connection, &self.queue, main_args).await?;
        bind(connection, &self.queue, &self.exchange, &self.queue).await?;
        for (name, ttl) in &self.retry_queues {
            let mut args = self.queue_args();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from(self.exchange.as_str())),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(self.queue.as_str())),
            );
            declare_queue(connection, name, args).await?;
        }
        if let Some(events) = &self.events_exchange {
            declare_exchange(connection, events).await?;
        }
        Ok(())
    }

    async fn check_all(&self, connection: &Connection) -> Result<TopologyReport, TopologyError> {
        check_exchange(connection, &self.exchange).await?;
        check_queue(connection, &self.queue).await?;
        if let Some(verify) = &self.verify_queue {
            check_queue(connection, verify).await?;
        }
        if let Some(events) = &self.events_exchange {
            check_exchange(connection, events).await?;
        }
        let dead_queue_exists = match check_queue(connection, &self.dead_queue).await {
            Ok(()) => true,
            Err(TopologyError::Missing { .. }) => false,
            Err(e) => return Err(e),
        };
        Ok(TopologyReport { dead_queue_exists })
    }

    fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        let ty = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(ty)),
        );
        args
    }
}

async fn declare_exchange(connection: &Connection, name: &str) -> Result<(), TopologyError> {
    let object = format!("exchange {name:?}");
    let channel = open(connection, &object).await?;
    let result = channel
        .exchange_declare(
            ShortString::from(name),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    finish(channel, result.map(|_| ()), object).await
}

async fn check_exchange(connection: &Connection, name: &str) -> Result<(), TopologyError> {
    let object = format!("exchange {name:?}");
    let channel = open(connection, &object).await?;
    let result = channel
        .exchange_declare(
            ShortString::from(name),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    finish(channel, result.map(|_| ()), object).await
}

/// Arguments of a stream keeping records for `retention`.
fn stream_args(retention: Duration) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("stream")),
    );
    args.insert(
        "x-max-age".into(),
        AMQPValue::LongString(LongString::from(format!("{}s", retention.as_secs()))),
    );
    // Small segments, so retention can drop old records (it drops whole segments).
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(8 * 1024 * 1024),
    );
    args
}

async fn declare_queue(
    connection: &Connection,
    name: &str,
    args: FieldTable,
) -> Result<(), TopologyError> {
    let object = format!("queue {name:?}");
    let channel = open(connection, &object).await?;
    let result = channel
        .queue_declare(
            ShortString::from(name),
            QueueDeclareOptions::durable(),
            args,
        )
        .await;
    finish(channel, result.map(|_| ()), object).await
}

async fn check_queue(connection: &Connection, name: &str) -> Result<(), TopologyError> {
    let object = format!("queue {name:?}");
    let channel = open(connection, &object).await?;
    let result = channel
        .queue_declare(
            ShortString::from(name),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        )
        .await;
    finish(channel, result.map(|_| ()), object).await
}

async fn bind(
    connection: &Connection,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), TopologyError> {
    let object = format!("binding of queue {queue:?} to exchange {exchange:?}");
    let channel = open(connection, &object).await?;
    let result = channel
        .queue_bind(
            ShortString::from(queue),
            ShortString::from(exchange),
            ShortString::from(key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    finish(channel, result, object).await
}

async fn open(connection: &Connection, object: &str) -> Result<lapin::Channel, TopologyError> {
    connection
        .create_channel()
        .await
        .map_err(|source| TopologyError::Broker {
            object: object.to_string(),
            source,
        })
}

async fn finish(
    channel: lapin::Channel,
    result: lapin::Result<()>,
    object: String,
) -> Result<(), TopologyError> {
    match result {
        Ok(()) => {
            super::bounded_wait(
                "topology channel close",
                channel.close(200, "topology checked".into()),
            )
            .await;
            Ok(())
        }
        Err(source) => Err(classify(source, object)),
    }
}

fn classify(source: lapin::Error, object: String) -> TopologyError {
    if let ErrorKind::ProtocolError(amqp) = source.kind() {
        let detail = amqp.get_message().as_str().to_string();
        match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => {
                return TopologyError::Inequivalent { object, detail };
            }
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => {
                return TopologyError::Missing { object, detail };
            }
            _ => {}
        }
    }
    TopologyError::Broker { object, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(delays: &[u64]) -> Topology {
        let mut s = Settings::default();
        s.rabbitmq.queue = "q".into();
        s.rabbitmq.retry_delays = delays.iter().map(|d| Duration::from_secs(*d)).collect();
        Topology::from_settings(&s)
    }

    #[test]
    fn retry_queue_follows_the_attempt_and_repeats_the_last() {
        let t = topo(&[5, 30, 120]);
        assert_eq!(t.retry_queue_for(2).unwrap().0, "q.retry.1");
        assert_eq!(t.retry_queue_for(3).unwrap().0, "q.retry.2");
        assert_eq!(t.retry_queue_for(4).unwrap().0, "q.retry.3");
        assert_eq!(t.retry_queue_for(9).unwrap().0, "q.retry.3");
        assert_eq!(t.dead_queue, "q.dead");
    }

    #[test]
    fn the_claims_queue_and_the_ledger_exist_in_both_layouts_with_build_locks() {
        let t = topo(&[5]);
        assert_eq!(t.claims_queue.as_deref(), Some("q.claims"));
        assert_eq!(t.ledger_stream.as_deref(), Some("q.ledger"));
        let mut s = crate::config::Settings::default();
        s.rabbitmq.queue = "q".into();
        s.rabbitmq.declare_topology = false;
        assert_eq!(
            Topology::from_settings(&s).claims_queue.as_deref(),
            Some("q.claims")
        );
        s.rabbitmq.build_locks = false;
        assert_eq!(Topology::from_settings(&s).claims_queue, None);
        assert_eq!(Topology::from_settings(&s).ledger_stream, None);
    }

    #[test]
    fn only_existing_queues_are_sampled() {
        let mut t = topo(&[5, 30]);
        let absent = TopologyReport {
            dead_queue_exists: false,
        };
        let present = TopologyReport {
            dead_queue_exists: true,
        };
        assert_eq!(
            t.sampled_queues(&present),
            ["q", "q.dead", "q.retry.1", "q.retry.2"]
        );
        t.declare = false;
        t.verify_queue = Some("qRetry".into());
        assert_eq!(t.sampled_queues(&absent), ["q", "qRetry"]);
        assert_eq!(t.sampled_queues(&present), ["q", "q.dead", "qRetry"]);
    }

    #[test]
    fn waiting_picks_the_shortest_delay_covering_the_wait() {
        let t = topo(&[5, 30, 120]);
        assert_eq!(
            t.retry_queue_near(Duration::from_secs(1)).unwrap().0,
            "q.retry.1"
        );
        assert_eq!(
            t.retry_queue_near(Duration::from_secs(20)).unwrap().0,
            "q.retry.2"
        );
        assert_eq!(
            t.retry_queue_near(Duration::from_secs(500)).unwrap().0,
            "q.retry.3"
        );
    }
}
