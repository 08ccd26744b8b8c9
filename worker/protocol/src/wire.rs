//! The protocol on the broker: question and answer batches on the claims queue, record batches
//! and epoch markers on the ledger, and which ledger records a new sequencer accepts.
//!
//! Executors travel by name, so replicas whose configurations differ still agree on them.

use serde::{Deserialize, Serialize};

use super::table::{Answer, Question, Record};

/// Questions asked together (one claims-queue message); answered in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Questions {
    /// The questions.
    pub questions: Vec<Question<String>>,
}

/// The answers to one [`Questions`], in its order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answers {
    /// The answers.
    pub answers: Vec<Answer<String>>,
}

/// One ledger message (`E`: how executors are named; by name on the broker).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LedgerEntry<E> {
    /// A sequencer became active: records of other epochs that follow are void.
    Marker {
        /// Its epoch.
        epoch: u32,
        /// Unique per activation: the new sequencer reads the ledger up to it.
        marker: String,
    },
    /// Records of one epoch, appended together (possibly none: a fence).
    Records {
        /// The epoch that wrote them.
        epoch: u32,
        /// The records.
        records: Vec<Record<E>>,
    },
}

impl LedgerEntry<String> {
    /// The message body.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("ledger entries serialise")
    }

    /// Reads a message body (`None`: not a ledger entry).
    pub fn decode(body: &[u8]) -> Option<LedgerEntry<String>> {
        serde_json::from_slice(body).ok()
    }
}

/// Which ledger records count, in stream order: those of the epoch of the latest marker read.
/// A sequencer that lost its consumer can still have had an append on the wire, which the broker
/// may write after its successor's marker; that sequencer never answered on it, so it is void.
#[derive(Debug, Default)]
pub struct Replay {
    epoch: Option<u32>,
    /// Records accepted so far.
    pub accepted: usize,
    /// Records of a superseded epoch, skipped.
    pub void: usize,
}

/// What one ledger message was to the replay.
#[derive(Debug, PartialEq, Eq)]
pub enum Read<E> {
    /// The marker the reader waits for: the ledger is read.
    Caught,
    /// Records to apply, in order.
    Apply(Vec<Record<E>>),
    /// Nothing to apply (another marker, void records, not a ledger entry).
    Skip,
}

impl Replay {
    /// Reads one ledger message body; `own` is the reader's own marker.
    pub fn read(&mut self, body: &[u8], own: &str) -> Read<String> {
        match LedgerEntry::decode(body) {
            Some(entry) => self.entry(entry, own),
            None => Read::Skip,
        }
    }

    /// Reads one ledger entry; `own` is the reader's own marker.
    pub fn entry<E>(&mut self, entry: LedgerEntry<E>, own: &str) -> Read<E> {
        match entry {
            LedgerEntry::Marker { epoch, marker } => {
                self.epoch = Some(epoch);
                if marker == own {
                    Read::Caught
                } else {
                    Read::Skip
                }
            }
            LedgerEntry::Records { epoch, records } if self.epoch == Some(epoch) => {
                self.accepted += records.len();
                Read::Apply(records)
            }
            LedgerEntry::Records { epoch, records } if self.epoch.is_none() => {
                // The window began after the marker of these records' epoch: take the first
                // epoch seen as current (a void append comes milliseconds after a marker, so a
                // window cut between the two is the only way to mistake one).
                self.epoch = Some(epoch);
                self.accepted += records.len();
                Read::Apply(records)
            }
            LedgerEntry::Records { records, .. } => {
                self.void += records.len();
                Read::Skip
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(epoch: u32, builds: &[u64]) -> Vec<u8> {
        LedgerEntry::Records {
            epoch,
            records: builds
                .iter()
                .map(|b| Record::Stopped { build: *b })
                .collect(),
        }
        .encode()
    }

    fn marker(epoch: u32, m: &str) -> Vec<u8> {
        LedgerEntry::Marker {
            epoch,
            marker: m.into(),
        }
        .encode()
    }

    #[test]
    fn records_count_only_in_the_epoch_of_the_latest_marker_until_the_readers_own() {
        let mut r = Replay::default();
        assert_eq!(
            r.read(&records(9, &[1]), "mine"),
            Read::Apply(vec![Record::Stopped { build: 1 }])
        );
        // Before any marker, the first epoch seen is current.
        assert_eq!(r.read(&records(8, &[0]), "mine"), Read::Skip);
        assert_eq!(r.read(&marker(1, "a"), "mine"), Read::Skip);
        assert_eq!(
            r.read(&records(1, &[2]), "mine"),
            Read::Apply(vec![Record::Stopped { build: 2 }])
        );
        assert_eq!(r.read(&marker(2, "b"), "mine"), Read::Skip);
        // Epoch 1's last append landed after epoch 2 began: void.
        assert_eq!(r.read(&records(1, &[3]), "mine"), Read::Skip);
        assert_eq!(
            r.read(&records(2, &[4, 5]), "mine"),
            Read::Apply(vec![
                Record::Stopped { build: 4 },
                Record::Stopped { build: 5 }
            ])
        );
        assert_eq!(r.read(b"not json", "mine"), Read::Skip);
        assert_eq!(r.read(&marker(3, "mine"), "mine"), Read::Caught);
        assert_eq!((r.accepted, r.void), (4, 2));
    }

    #[test]
    fn questions_and_answers_round_trip_with_executor_names() {
        let q = Questions {
            questions: vec![
                Question::Claim {
                    build: 42,
                    prefs: vec!["east".into(), "west".into()],
                    failed: Some((
                        "east".into(),
                        super::super::Version {
                            epoch: 7,
                            counter: 3,
                        },
                    )),
                },
                Question::State { build: 43 },
            ],
        };
        let body = serde_json::to_vec(&q).unwrap();
        assert_eq!(serde_json::from_slice::<Questions>(&body).unwrap(), q);
        let a = Answers {
            answers: vec![
                Answer::Wait {
                    exec: "east".into(),
                    wait: 1500,
                },
                Answer::Stopped,
            ],
        };
        let body = serde_json::to_vec(&a).unwrap();
        assert_eq!(serde_json::from_slice::<Answers>(&body).unwrap(), a);
    }
}
