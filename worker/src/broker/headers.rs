//! The AMQP headers the worker reads and writes (`x-bcw-*`, RabbitMQ's `x-death`).

use std::collections::BTreeSet;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Attempt number of the message (1 for the first delivery).
pub const ATTEMPT: &str = "x-bcw-attempt";
/// Executors an earlier attempt may have created a pod on (comma-separated names).
pub const EXECUTORS: &str = "x-bcw-executors";
/// Unix milliseconds since which the build has been waiting for a usable executor.
pub const WAITING_SINCE: &str = "x-bcw-waiting-since";
/// How many times a `stop` has been re-checked.
pub const RECHECK: &str = "x-bcw-recheck";
/// Dead-letter reason code.
pub const REASON: &str = "x-bcw-reason";
/// Dead-letter error sentence.
pub const ERROR: &str = "x-bcw-error";
/// Attempts made before dead-lettering.
pub const ATTEMPTS: &str = "x-bcw-attempts";
/// Unix milliseconds when the message was dead-lettered (the age `dead list` shows).
pub const DEAD_AT: &str = "x-bcw-dead-at";

/// What the worker carries from one attempt of a message to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    /// Attempt number, 1-based.
    pub attempt: u32,
    /// Executors that may hold a pod of the build from an earlier attempt.
    pub executors: BTreeSet<String>,
    /// Unix ms since which the build waits for a usable executor (none: not waiting).
    pub waiting_since_ms: Option<i64>,
    /// Re-checks done by a `stop`.
    pub recheck: u32,
}

impl Carried {
    /// Reads the worker's headers of a delivery. A message without them is attempt 1.
    pub fn read(props: &BasicProperties) -> Carried {
        let Some(h) = props.headers() else {
            return Carried {
                attempt: 1,
                ..Default::default()
            };
        };
        let inner = h.inner();
        Carried {
            attempt: inner
                .get(ATTEMPT)
                .and_then(as_i64)
                .filter(|a| *a >= 1)
                .map(|a| a.min(i64::from(u32::MAX)) as u32)
                .unwrap_or(1),
            executors: inner
                .get(EXECUTORS)
                .and_then(as_string)
                .map(|s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            waiting_since_ms: inner.get(WAITING_SINCE).and_then(as_i64),
            recheck: inner
                .get(RECHECK)
                .and_then(as_i64)
                .filter(|r| *r >= 0)
                .map(|r| r.min(i64::from(u32::MAX)) as u32)
                .unwrap_or(0),
        }
    }

    /// Writes these values into a header table (keeping other headers).
    pub fn write(&self, table: &mut FieldTable) {
        table.insert(
            ShortString::from(ATTEMPT),
            AMQPValue::LongLongInt(i64::from(self.attempt)),
        );
        if self.executors.is_empty() {
            remove(table, EXECUTORS);
        } else {
            let joined = self.executors.iter().cloned().collect::<Vec<_>>().join(",");
            table.insert(
                ShortString::from(EXECUTORS),
                AMQPValue::LongString(LongString::from(joined)),
            );
        }
        match self.waiting_since_ms {
            Some(ms) => {
                table.insert(ShortString::from(WAITING_SINCE), AMQPValue::LongLongInt(ms));
            }
            None => remove(table, WAITING_SINCE),
        }
        if self.recheck > 0 {
            table.insert(
                ShortString::from(RECHECK),
                AMQPValue::LongLongInt(i64::from(self.recheck)),
            );
        } else {
            remove(table, RECHECK);
        }
    }
}

/// Retries counted by RabbitMQ's dead-letter loop for `queue` (admin-provisioned topology):
/// the `count` of the `x-death` entry of that queue with reason `rejected`, else the first
/// entry's count (what the original worker read), else 0. Robust to headers without `x-death`
/// (the original threw on those and dropped the message).
pub fn x_death_count(props: &BasicProperties, queue: &str) -> u32 {
    let Some(h) = props.headers() else { return 0 };
    let Some(AMQPValue::FieldArray(deaths)) = h.inner().get("x-death") else {
        return 0;
    };
    let entries: Vec<&FieldTable> = deaths
        .as_slice()
        .iter()
        .filter_map(|v| match v {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        })
        .collect();
    let count = |t: &FieldTable| t.inner().get("count").and_then(as_i64).unwrap_or(0);
    let of_queue = entries.iter().find(|t| {
        t.inner().get("queue").and_then(as_string).as_deref() == Some(queue)
            && t.inner().get("reason").and_then(as_string).as_deref() == Some("rejected")
    });
    let n = match of_queue {
        Some(t) => count(t),
        None => entries.first().map(|t| count(t)).unwrap_or(0),
    };
    n.clamp(0, i64::from(u32::MAX)) as u32
}

/// The dead-letter headers added to a copy in `<queue>.dead`.
pub fn dead_letter(table: &mut FieldTable, reason: &str, error: &str, attempts: u32) {
    table.insert(
        ShortString::from(REASON),
        AMQPValue::LongString(LongString::from(reason)),
    );
    // Header values are bounded so a huge error text cannot bloat the dead-letter queue.
    let error: String = error.chars().take(1000).collect();
    table.insert(
        ShortString::from(ERROR),
        AMQPValue::LongString(LongString::from(error)),
    );
    table.insert(
        ShortString::from(ATTEMPTS),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    table.insert(
        ShortString::from(DEAD_AT),
        AMQPValue::LongLongInt(jiff::Timestamp::now().as_millisecond()),
    );
}

fn remove(table: &mut FieldTable, key: &str) {
    // FieldTable has no remove; rebuild without the key.
    if table.contains_key(key) {
        let mut next = FieldTable::default();
        for (k, v) in table.inner() {
            if k.as_str() != key {
                next.insert(k.clone(), v.clone());
            }
        }
        *table = next;
    }
}

/// Reads an integer header of any AMQP integer type (or a numeric string).
pub fn as_i64(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

/// Reads a string header.
pub fn as_string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldArray;

    fn props(table: FieldTable) -> BasicProperties {
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn carried_round_trips_and_defaults_to_attempt_one() {
        assert_eq!(Carried::read(&BasicProperties::default()).attempt, 1);
        let c = Carried {
            attempt: 3,
            executors: ["a".to_string(), "kata".to_string()].into(),
            waiting_since_ms: Some(1_700_000_000_000),
            recheck: 2,
        };
        let mut t = FieldTable::default();
        c.write(&mut t);
        assert_eq!(Carried::read(&props(t.clone())), c);
        let cleared = Carried {
            attempt: 4,
            ..Default::default()
        };
        cleared.write(&mut t);
        assert_eq!(Carried::read(&props(t)), cleared);
    }

    #[test]
    fn x_death_is_read_robustly() {
        // Headers without x-death (the original worker threw and dropped such messages).
        let mut t = FieldTable::default();
        t.insert("foo".into(), AMQPValue::LongString("bar".into()));
        assert_eq!(x_death_count(&props(t), "ClusterA"), 0);
        assert_eq!(x_death_count(&BasicProperties::default(), "ClusterA"), 0);

        let entry = |queue: &str, reason: &str, count: i64| {
            let mut e = FieldTable::default();
            e.insert("queue".into(), AMQPValue::LongString(queue.into()));
            e.insert("reason".into(), AMQPValue::LongString(reason.into()));
            e.insert("count".into(), AMQPValue::LongLongInt(count));
            AMQPValue::FieldTable(e)
        };
        let mut t = FieldTable::default();
        t.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                entry("ClusterAdlr", "expired", 3),
                entry("ClusterA", "rejected", 2),
            ])),
        );
        assert_eq!(x_death_count(&props(t.clone()), "ClusterA"), 2);
        assert_eq!(x_death_count(&props(t), "Other"), 3);
    }
}
