//! One dead letter as `dead` reads it: why it died, how often it was tried, which build, how
//! long ago; the filters; and the message a replay publishes. Pure: no I/O, no clock.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use serde_json::Value;

use crate::broker::Topology;
use crate::broker::headers::{self, as_i64, as_string};

/// Who dead-lettered a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadBy {
    /// The worker, with `x-bcw-reason`, `x-bcw-error` and `x-bcw-attempts`.
    Worker,
    /// RabbitMQ itself (a quorum delivery limit, a TTL, a length limit): only `x-death`.
    Broker,
    /// Neither left a trace (a message published there by hand).
    Unknown,
}

/// What `dead` knows about one message of the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Its place in the queue when read (1 = the oldest).
    pub position: usize,
    /// Who dead-lettered it.
    pub by: DeadBy,
    /// The reason code: the worker's (`no_executor`, `missing_field`, ...) or the broker's
    /// (`delivery_limit`, `expired`, ...). Text from the wire, kept as it came.
    pub reason: Option<String>,
    /// The worker's sentence about it.
    pub error: Option<String>,
    /// Attempts made before it died.
    pub attempts: Option<u32>,
    /// `job` of the body.
    pub job: Option<String>,
    /// `buildConfig.buildId` of the body.
    pub build_id: Option<u64>,
    /// Unix milliseconds when it died, when recorded.
    pub dead_at_ms: Option<i64>,
    /// How often a quorum queue handed it out before without an ack (`x-delivery-count`): each
    /// browse counts, and a delivery limit on the queue would drop it once reached.
    pub returns: Option<u32>,
}

impl DeadLetter {
    /// Reads a message of the dead-letter queue.
    pub fn read(position: usize, properties: &BasicProperties, body: &[u8]) -> DeadLetter {
        let empty = FieldTable::default();
        let table = properties.headers().as_ref().unwrap_or(&empty);
        let header = |key: &str| table.inner().get(key);
        let death = newest_death(table);
        let by = if header(headers::REASON).is_some() {
            DeadBy::Worker
        } else if death.is_some() {
            DeadBy::Broker
        } else {
            DeadBy::Unknown
        };
        let death_field = |key: &str| death.and_then(|d| d.inner().get(key));
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        DeadLetter {
            position,
            by,
            reason: header(headers::REASON)
                .and_then(as_string)
                .or_else(|| death_field("reason").and_then(as_string)),
            error: header(headers::ERROR).and_then(as_string),
            attempts: header(headers::ATTEMPTS)
                .or_else(|| death_field("count"))
                .and_then(as_i64)
                .and_then(|n| u32::try_from(n).ok()),
            job: parsed
                .as_ref()
                .and_then(|v| v["job"].as_str().map(String::from)),
            build_id: parsed.as_ref().and_then(build_id),
            dead_at_ms: header(headers::DEAD_AT)
                .and_then(as_i64)
                .or_else(|| properties.timestamp().and_then(seconds_ms))
                .or_else(|| death_field("time").and_then(as_i64).map(|s| s * 1000)),
            returns: header("x-delivery-count")
                .and_then(as_i64)
                .and_then(|n| u32::try_from(n).ok()),
        }
    }

    /// How long ago it died, when known.
    pub fn age(&self, now_ms: i64) -> Option<Duration> {
        let ms = now_ms.checked_sub(self.dead_at_ms?)?;
        Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    }
}

fn seconds_ms(seconds: u64) -> Option<i64> {
    i64::try_from(seconds).ok()?.checked_mul(1000)
}

/// `buildConfig.buildId`, a number or a string of digits (as producers send it).
fn build_id(body: &Value) -> Option<u64> {
    match &body["buildConfig"]["buildId"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The newest `x-death` entry (RabbitMQ puts it first).
fn newest_death(table: &FieldTable) -> Option<&FieldTable> {
    match table.inner().get("x-death")? {
        AMQPValue::FieldArray(deaths) => deaths.as_slice().iter().find_map(|v| match v {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

/// Which dead letters a command acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this reason code.
    pub reason: Option<String>,
    /// Only this build.
    pub build_id: Option<u64>,
    /// Only those dead for longer than this.
    pub older_than: Option<Duration>,
    /// Only those dead for less than this.
    pub newer_than: Option<Duration>,
}

impl Filter {
    /// True when no filter is set (every dead letter matches).
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether `d` matches at `now_ms`. An age filter never matches a dead letter whose
    /// age is unknown.
    pub fn matches(&self, d: &DeadLetter, now_ms: i64) -> bool {
        if let Some(r) = &self.reason
            && d.reason.as_deref() != Some(r.as_str())
        {
            return false;
        }
        if self.build_id.is_some() && d.build_id != self.build_id {
            return false;
        }
        let age = d.age(now_ms);
        if let Some(min) = self.older_than
            && age.is_none_or(|a| a <= min)
        {
            return false;
        }
        if let Some(max) = self.newer_than
            && age.is_none_or(|a| a >= max)
        {
            return false;
        }
        true
    }
}

/// Headers a replay drops: the dead-letter record, the attempt count (the worker's and
/// RabbitMQ's), and the wait for an executor. `x-bcw-executors` stays: the executors an
/// earlier attempt touched may still hold a pod of the build.
fn dropped_on_replay(key: &str) -> bool {
    matches!(
        key,
        headers::REASON
            | headers::ERROR
            | headers::ATTEMPTS
            | headers::DEAD_AT
            | headers::ATTEMPT
            | headers::WAITING_SINCE
            | headers::RECHECK
            | "x-death"
            | "x-delivery-count"
    ) || key.starts_with("x-first-death-")
        || key.starts_with("x-last-death-")
}

/// The properties of the replayed message: the original's, without the dropped headers,
/// without an expiration or a user id (the replaying user may differ).
pub fn replay_properties(original: &BasicProperties) -> BasicProperties {
    let mut table = FieldTable::default();
    if let Some(h) = original.headers() {
        for (k, v) in h.inner() {
            if !dropped_on_replay(k.as_str()) {
                table.insert(k.clone(), v.clone());
            }
        }
    }
    let mut props = BasicProperties::default().with_headers(table);
    let o = original;
    if let Some(v) = o.content_type() {
        props = props.with_content_type(v.clone());
    }
    if let Some(v) = o.content_encoding() {
        props = props.with_content_encoding(v.clone());
    }
    if let Some(v) = o.message_id() {
        props = props.with_message_id(v.clone());
    }
    if let Some(v) = o.correlation_id() {
        props = props.with_correlation_id(v.clone());
    }
    if let Some(v) = o.priority() {
        props = props.with_priority(*v);
    }
    if let Some(v) = o.app_id() {
        props = props.with_app_id(v.clone());
    }
    props
}

/// Where a replay goes: the producers' exchange, with the routing key the message came in
/// with. Every message of the pool is routed with the pool's queue name, except Screwdriver's
/// verify messages, which came from the verify queue (its name is in their `x-death`).
pub fn replay_route(topology: &Topology, original: &BasicProperties) -> (String, String) {
    let from_verify = topology.verify_queue.as_deref().is_some_and(|verify| {
        original
            .headers()
            .as_ref()
            .and_then(|h| match h.inner().get("x-death") {
                Some(AMQPValue::FieldArray(deaths)) => Some(deaths.as_slice().iter().any(|d| {
                    matches!(d, AMQPValue::FieldTable(t)
                        if t.inner().get("queue").and_then(as_string).as_deref() == Some(verify))
                })),
                _ => None,
            })
            .unwrap_or(false)
    });
    let key = match (&topology.verify_queue, from_verify) {
        (Some(verify), true) => verify.clone(),
        _ => topology.queue.clone(),
    };
    (topology.exchange.clone(), key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString, ShortString};

    fn key(k: &str) -> ShortString {
        ShortString::from(k)
    }

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s))
    }

    fn worker_dead(reason: &str, attempts: i64, dead_at: i64) -> BasicProperties {
        let mut t = FieldTable::default();
        t.insert(key("x-bcw-reason"), long(reason));
        t.insert(key("x-bcw-error"), long("no build cluster was available"));
        t.insert(key("x-bcw-attempts"), AMQPValue::LongLongInt(attempts));
        t.insert(key("x-bcw-dead-at"), AMQPValue::LongLongInt(dead_at));
        t.insert(key("x-bcw-attempt"), AMQPValue::LongLongInt(attempts));
        t.insert(key("x-bcw-executors"), long("k8s,kata"));
        t.insert(key("x-trace"), long("producer's own"));
        BasicProperties::default()
            .with_headers(t)
            .with_content_type("application/json".into())
            .with_message_id("m-1".into())
            .with_expiration("60000".into())
    }

    fn broker_dead(queue: &str, reason: &str, time_s: i64) -> BasicProperties {
        let mut entry = FieldTable::default();
        entry.insert(key("queue"), long(queue));
        entry.insert(key("reason"), long(reason));
        entry.insert(key("count"), AMQPValue::LongLongInt(1));
        entry.insert(key("time"), AMQPValue::Timestamp(time_s as u64));
        let mut t = FieldTable::default();
        t.insert(
            key("x-death"),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(entry)])),
        );
        t.insert(key("x-first-death-reason"), long(reason));
        t.insert(key("x-delivery-count"), AMQPValue::LongLongInt(5));
        BasicProperties::default().with_headers(t)
    }

    const BODY: &[u8] = br#"{"job": "start", "buildConfig": {"buildId": "987654", "token": "t"}}"#;

    #[test]
    fn a_worker_dead_letter_is_read_from_its_headers_and_body() {
        let d = DeadLetter::read(3, &worker_dead("no_executor", 4, 1_000_000), BODY);
        assert_eq!(d.by, DeadBy::Worker);
        assert_eq!(d.reason.as_deref(), Some("no_executor"));
        assert_eq!(d.error.as_deref(), Some("no build cluster was available"));
        assert_eq!(d.attempts, Some(4));
        assert_eq!(
            (d.job.as_deref(), d.build_id),
            (Some("start"), Some(987654))
        );
        assert_eq!(d.age(1_090_000), Some(Duration::from_secs(90)));
        assert_eq!(d.position, 3);
    }

    #[test]
    fn a_broker_dead_letter_is_read_from_x_death() {
        let d = DeadLetter::read(1, &broker_dead("q", "delivery_limit", 1000), b"not json");
        assert_eq!(d.by, DeadBy::Broker);
        assert_eq!(d.reason.as_deref(), Some("delivery_limit"));
        assert_eq!(
            d.attempts,
            Some(1),
            "x-death's count, not the queue's returns"
        );
        assert_eq!(d.returns, Some(5));
        assert_eq!((d.job.clone(), d.build_id), (None, None));
        assert_eq!(d.dead_at_ms, Some(1_000_000));
        let unknown = DeadLetter::read(1, &BasicProperties::default(), BODY);
        assert_eq!((unknown.by, unknown.age(5)), (DeadBy::Unknown, None));
    }

    #[test]
    fn filters_combine_and_an_unknown_age_never_matches_an_age_filter() {
        let d = DeadLetter::read(1, &worker_dead("no_executor", 4, 0), BODY);
        let now = 3_600_000; // one hour later
        let f = |reason: Option<&str>,
                 build: Option<u64>,
                 older: Option<u64>,
                 newer: Option<u64>| Filter {
            reason: reason.map(String::from),
            build_id: build,
            older_than: older.map(Duration::from_secs),
            newer_than: newer.map(Duration::from_secs),
        };
        assert!(f(None, None, None, None).matches(&d, now));
        assert!(f(Some("no_executor"), Some(987654), Some(60), Some(7200)).matches(&d, now));
        assert!(!f(Some("missing_field"), None, None, None).matches(&d, now));
        assert!(!f(None, Some(1), None, None).matches(&d, now));
        assert!(!f(None, None, Some(7200), None).matches(&d, now));
        assert!(!f(None, None, None, Some(60)).matches(&d, now));
        let ageless = DeadLetter::read(1, &BasicProperties::default(), BODY);
        assert!(!f(None, None, Some(1), None).matches(&ageless, now));
        assert!(!f(None, None, None, Some(99999)).matches(&ageless, now));
        assert!(f(None, Some(987654), None, None).matches(&ageless, now));
    }

    #[test]
    fn a_replay_drops_the_dead_letter_record_and_the_attempt_count_but_keeps_the_rest() {
        let props = replay_properties(&worker_dead("no_executor", 4, 0));
        let h = props.headers().clone().unwrap();
        let keys: Vec<&str> = h.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, ["x-bcw-executors", "x-trace"]);
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(props.message_id().as_ref().unwrap().as_str(), "m-1");
        assert!(
            props.expiration().is_none(),
            "a replay must not expire on its way"
        );
        let broker = replay_properties(&broker_dead("q", "rejected", 0));
        assert!(
            broker.headers().as_ref().unwrap().inner().is_empty(),
            "x-death and x-first-death-* go"
        );
    }

    #[test]
    fn a_replay_goes_back_with_the_routing_key_it_came_with() {
        let mut s = crate::config::Settings::default();
        s.rabbitmq.queue = "ClusterA".into();
        s.rabbitmq.exchange = "build".into();
        s.rabbitmq.declare_topology = false;
        s.rabbitmq.retry_queue_enabled = true;
        s.rabbitmq.retry_queue = "ClusterARetry".into();
        let t = Topology::from_settings(&s);
        let plain = worker_dead("no_executor", 4, 0);
        assert_eq!(
            replay_route(&t, &plain),
            ("build".into(), "ClusterA".into())
        );
        let verify = broker_dead("ClusterARetry", "rejected", 0);
        assert_eq!(
            replay_route(&t, &verify),
            ("build".into(), "ClusterARetry".into())
        );
        let main = broker_dead("ClusterA", "rejected", 0);
        assert_eq!(replay_route(&t, &main).1, "ClusterA");
    }
}
