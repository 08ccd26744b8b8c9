//! The protocol on the broker: question and answer batches on the claims queue, record batches
//! and epoch markers on the ledger, and which ledger records a new sequencer accepts.
//!
//! Executors travel by name, so replicas whose configurations differ still agree on them.

use serde::{Deserialize, Serialize};

use super::table::{Answer, Millis, Question, Record};

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
    /// Records of one epoch, appended together (possibly none: a fence, or the sequencer's
    /// periodic tick).
    Records {
        /// The epoch that wrote them.
        epoch: u32,
        /// The records.
        records: Vec<Record<E>>,
        /// The writing sequencer's own clock when it made the append, after every decision the
        /// records carry (absent from versions before it was added: no time is credited).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<Millis>,
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
///
/// It also keeps the ledger's clock ([`Replay::clock`]): the time each epoch's sequencer saw
/// pass between its own accepted appends, summed over the epochs in stream order. Clocks of
/// different sequencers are never compared: the time between one epoch's last append and the
/// next epoch's first is not counted. Every accepted append of an epoch precedes the next
/// epoch's marker, and that epoch appends only after reading its marker back, so the clock
/// between two appends is a lower bound of the real time between them.
#[derive(Debug, Default)]
pub struct Replay {
    epoch: Option<u32>,
    /// Records accepted so far.
    pub accepted: usize,
    /// Records of a superseded epoch, skipped.
    pub void: usize,
    clock: Millis,
    /// The `at` of the current epoch's last accepted append, if it had one.
    last_at: Option<Millis>,
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
                self.last_at = None;
                if marker == own {
                    Read::Caught
                } else {
                    Read::Skip
                }
            }
            LedgerEntry::Records { epoch, records, at }
                if self.epoch.is_none_or(|current| current == epoch) =>
            {
                // With no marker read yet, the window began after the marker of these records'
                // epoch: the first epoch seen is current (a void append comes milliseconds
                // after a marker, so a window cut between the two is the only way to mistake
                // one).
                self.epoch = Some(epoch);
                self.tick(at);
                self.accepted += records.len();
                Read::Apply(records)
            }
            LedgerEntry::Records { records, .. } => {
                self.void += records.len();
                Read::Skip
            }
        }
    }

    /// The ledger's clock at the last accepted append: records read since were decided no
    /// later than this, and a later reading minus it is time that certainly passed since.
    pub fn clock(&self) -> Millis {
        self.clock
    }

    fn tick(&mut self, at: Option<Millis>) {
        if let (Some(last), Some(now)) = (self.last_at, at) {
            self.clock += now.saturating_sub(last);
        }
        self.last_at = at;
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
            at: None,
        }
        .encode()
    }

    fn tick(epoch: u32, at: Option<Millis>) -> Vec<u8> {
        LedgerEntry::<String>::Records {
            epoch,
            records: vec![],
            at,
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
    fn the_ledger_clock_sums_time_within_epochs_and_never_compares_clocks_across_them() {
        let mut r = Replay::default();
        r.read(&marker(1, "a"), "mine");
        r.read(&tick(1, Some(1_000)), "mine");
        r.read(&tick(1, Some(4_000)), "mine");
        assert_eq!(r.clock(), 3_000);
        // Epoch 2's clock has its own origin: its first append credits nothing.
        r.read(&marker(2, "b"), "mine");
        r.read(&tick(2, Some(50)), "mine");
        assert_eq!(r.clock(), 3_000);
        r.read(&tick(2, Some(550)), "mine");
        assert_eq!(r.clock(), 3_500);
        // A void append of epoch 1 and an append without a time (an older writer) credit
        // nothing, and the time after one without a time counts from the next.
        r.read(&tick(1, Some(99_000)), "mine");
        r.read(&tick(2, None), "mine");
        r.read(&tick(2, Some(900)), "mine");
        assert_eq!(r.clock(), 3_500);
        r.read(&tick(2, Some(1_000)), "mine");
        assert_eq!(r.clock(), 3_600);
        assert_eq!(r.read(&marker(3, "mine"), "mine"), Read::Caught);
        assert_eq!(r.clock(), 3_600);
    }

    #[test]
    fn appends_without_a_time_still_read_and_the_previous_version_reads_new_ones() {
        let old = br#"{"epoch":4,"records":[{"r":"placed","build":7,"exec":"east"}]}"#;
        let Some(LedgerEntry::Records {
            at: None, records, ..
        }) = LedgerEntry::decode(old)
        else {
            panic!("an append of the previous version still reads");
        };
        assert_eq!(records.len(), 1);
        // What a replica of the previous version reads of a new append: the same records (it
        // ignores the time).
        #[derive(serde::Deserialize)]
        struct Previous {
            epoch: u32,
            records: Vec<Record<String>>,
        }
        let new = LedgerEntry::Records {
            epoch: 4,
            records: records.clone(),
            at: Some(12),
        }
        .encode();
        let previous: Previous = serde_json::from_slice(&new).unwrap();
        assert_eq!((previous.epoch, previous.records), (4, records));
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
