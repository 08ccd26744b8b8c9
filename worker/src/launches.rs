//! Launch records: which executor some replica was about to create a build's pod on, and when.
//!
//! Before a create on an executor, for a build that has more than one candidate, a replica
//! appends a record `(build, executor)` to the launches stream and waits for the broker's
//! confirm; every replica reads the stream (from the start of its window when it connects, then
//! live). A later copy of the build (a producer's duplicate, a retry copy, a redelivery) thus
//! knows where an earlier one may have created the pod, even when that replica lost its build
//! lock with the create on the wire, or when this replica started after the launch: it looks
//! there first, and gives such a create its call timeout to land before creating elsewhere.
//!
//! Records are appended by group commit: while one append waits for its confirm, the records
//! that arrive meanwhile gather and go out together as the next message (a JSON array; a lone
//! record is a bare object). In a burst one stream message and one delivery per replica then
//! carry several launches; a lone launch waits for one confirm, as before.
//!
//! The memory is bounded in number and age (the window: `maxWait` plus a margin).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use lapin::BasicProperties;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::broker::{Outgoing, Publisher};
use crate::intake::BuildId;

/// The executors a build's launches were recorded for, each with when it was last noted.
pub type Recorded = BTreeMap<String, Instant>;

/// Records remembered at most (about 100 bytes each).
const CAPACITY: usize = 200_000;
/// Records appended in one stream message at most (about 50 bytes each).
const MAX_BATCH: usize = 256;

/// The launch records a replica knows, and the stream it appends its own to.
#[derive(Debug)]
pub struct LaunchLog {
    records: Mutex<Records>,
    ttl: Duration,
    capacity: usize,
    /// The appender's inbox (`None`: no stream; records are then only kept in this process).
    appender: Option<mpsc::UnboundedSender<Waiting>>,
}

/// Why a record could not be appended.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(String);

/// A record waiting to be appended, and who waits for the broker's confirm.
type Waiting = (Record, oneshot::Sender<Result<(), RecordError>>);

#[derive(Debug, Default)]
struct Records {
    /// Per build, the executors named by its records and when each was last noted.
    at: HashMap<BuildId, Vec<(String, Instant)>>,
    order: VecDeque<(BuildId, Instant)>,
}

/// One record on the stream.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Record {
    build_id: u64,
    executor: String,
}

impl LaunchLog {
    /// A log remembering records for `ttl`, appending to `stream` through `publisher` (`None`:
    /// no stream; records are then only kept in this process). With a stream, it must be made
    /// within a Tokio runtime: its appender is a task of its own, which ends with the log.
    pub fn new(ttl: Duration, stream: Option<(Publisher, String)>) -> Self {
        Self::with_capacity(ttl, stream, CAPACITY)
    }

    fn with_capacity(ttl: Duration, stream: Option<(Publisher, String)>, capacity: usize) -> Self {
        let appender = stream.map(|(publisher, stream)| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(append(publisher, stream, rx));
            tx
        });
        Self {
            records: Mutex::default(),
            ttl,
            capacity,
            appender,
        }
    }

    /// Appends the record of a create about to be sent (confirmed by the broker), and notes it.
    pub async fn record(&self, build: BuildId, executor: &str) -> Result<(), RecordError> {
        if let Some(appender) = &self.appender {
            let record = Record {
                build_id: build.0,
                executor: executor.to_string(),
            };
            let stopped = || RecordError("the launch record appender has stopped".into());
            let (tx, rx) = oneshot::channel();
            appender.send((record, tx)).map_err(|_| stopped())?;
            rx.await.map_err(|_| stopped())??;
        }
        self.note(build, executor);
        Ok(())
    }

    /// Notes the records of a stream message; `false` when the body holds none (a marker).
    pub fn note_encoded(&self, body: &[u8]) -> bool {
        match decode(body) {
            Some(records) => {
                for r in &records {
                    self.note(BuildId(r.build_id), &r.executor);
                }
                !records.is_empty()
            }
            None => false,
        }
    }

    /// Notes that a create of `build` on `executor` was about to be sent now.
    pub fn note(&self, build: BuildId, executor: &str) {
        let now = Instant::now();
        let mut records = self.records.lock().expect("launch records lock poisoned");
        let entry = records.at.entry(build).or_default();
        match entry.iter_mut().find(|(e, _)| e == executor) {
            Some((_, t)) => *t = now,
            None => entry.push((executor.to_string(), now)),
        }
        records.order.push_back((build, now));
        while records.order.len() > self.capacity
            || records
                .order
                .front()
                .is_some_and(|(_, t)| now.duration_since(*t) > self.ttl)
        {
            let Some((b, t)) = records.order.pop_front() else {
                break;
            };
            if let Some(entry) = records.at.get_mut(&b) {
                entry.retain(|(_, noted)| *noted > t);
                if entry.is_empty() {
                    records.at.remove(&b);
                }
            }
        }
    }

    /// The executors a launch of `build` was recorded for, each with when it was last noted.
    pub fn noted(&self, build: BuildId) -> Recorded {
        let now = Instant::now();
        let records = self.records.lock().expect("launch records lock poisoned");
        records
            .at
            .get(&build)
            .into_iter()
            .flatten()
            .filter(|(_, t)| now.duration_since(*t) <= self.ttl)
            .map(|(e, t)| (e.clone(), *t))
            .collect()
    }
}

/// Appends the records sent to `rx`, a group at a time: everything that arrived while the last
/// append waited for its confirm goes out in the next message.
async fn append(publisher: Publisher, stream: String, mut rx: mpsc::UnboundedReceiver<Waiting>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(next) = rx.try_recv()
        {
            batch.push(next);
        }
        let (records, waiters): (Vec<Record>, Vec<_>) = batch.into_iter().unzip();
        let body = encode(&records);
        let result = publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: &stream,
                body: &body,
                properties: BasicProperties::default(),
                mandatory: false,
            })
            .await
            .map_err(|e| RecordError(e.to_string()));
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

/// The body of a stream message: a lone record as an object, several as an array.
fn encode(records: &[Record]) -> Vec<u8> {
    match records {
        [one] => serde_json::to_vec(one),
        many => serde_json::to_vec(many),
    }
    .expect("records serialise")
}

/// The records of a stream message (`None`: not records, such as a marker).
fn decode(body: &[u8]) -> Option<Vec<Record>> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Body {
        One(Record),
        Many(Vec<Record>),
    }
    match serde_json::from_slice::<Body>(body).ok()? {
        Body::One(r) => Some(vec![r]),
        Body::Many(rs) => Some(rs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn records_name_executors_with_their_latest_time() {
        let log = LaunchLog::new(Duration::from_secs(60), None);
        assert!(log.noted(BuildId(7)).is_empty());
        log.note(BuildId(7), "a");
        let first = Instant::now();
        tokio::time::advance(Duration::from_secs(10)).await;
        log.note(BuildId(7), "b");
        tokio::time::advance(Duration::from_secs(10)).await;
        log.note(BuildId(7), "a");
        let noted = log.noted(BuildId(7));
        assert_eq!(noted.len(), 2);
        assert_eq!(noted["a"].duration_since(first), Duration::from_secs(20));
        assert_eq!(noted["b"].duration_since(first), Duration::from_secs(10));
        assert!(log.noted(BuildId(8)).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn records_expire_after_the_window_and_a_newer_note_survives_an_older_one() {
        let log = LaunchLog::new(Duration::from_secs(60), None);
        log.note(BuildId(1), "a");
        tokio::time::advance(Duration::from_secs(40)).await;
        log.note(BuildId(1), "a");
        tokio::time::advance(Duration::from_secs(30)).await;
        // The first note expired (and was dropped by this insert); the second holds.
        log.note(BuildId(2), "b");
        assert_eq!(log.noted(BuildId(1)).len(), 1);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(log.noted(BuildId(1)).is_empty());
        assert_eq!(log.noted(BuildId(2)).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_memory_is_bounded() {
        let log = LaunchLog::with_capacity(Duration::from_secs(3600), None, 100);
        for i in 0..250 {
            log.note(BuildId(i), "a");
        }
        let records = log.records.lock().unwrap();
        assert!(records.order.len() <= 100);
        assert!(records.at.len() <= 100);
        assert!(!records.at.contains_key(&BuildId(0)));
        assert!(records.at.contains_key(&BuildId(249)));
    }

    #[test]
    fn a_record_round_trips_and_anything_else_is_not_one() {
        let log = LaunchLog::new(Duration::from_secs(60), None);
        let one = Record {
            build_id: 42,
            executor: "kata-east".into(),
        };
        let body = encode(std::slice::from_ref(&one));
        assert_eq!(body, br#"{"buildId":42,"executor":"kata-east"}"#);
        assert!(log.note_encoded(&body));
        assert!(log.noted(BuildId(42)).contains_key("kata-east"));
        assert!(!log.note_encoded(b""));
        assert!(!log.note_encoded(b"42"));
        assert!(!log.note_encoded(b"[]"));
        assert!(!log.note_encoded(br#"{"buildId":-1,"executor":"a"}"#));
        assert!(!log.note_encoded(br#"[{"buildId":-1,"executor":"a"}]"#));
    }

    #[test]
    fn a_group_of_records_travels_as_one_array_and_each_is_noted() {
        let log = LaunchLog::new(Duration::from_secs(60), None);
        let group = [
            Record {
                build_id: 1,
                executor: "a".into(),
            },
            Record {
                build_id: 2,
                executor: "b".into(),
            },
            Record {
                build_id: 1,
                executor: "b".into(),
            },
        ];
        let body = encode(&group);
        assert!(body.starts_with(b"["));
        assert_eq!(decode(&body).as_deref(), Some(&group[..]));
        assert!(log.note_encoded(&body));
        assert_eq!(log.noted(BuildId(1)).len(), 2);
        assert!(log.noted(BuildId(2)).contains_key("b"));
    }
}
