//! The sequencer's table with the executors' names and the sequencer's clock: the worker's
//! executors are names, the table's are small numbers.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bcw_protocol::{Answer, Bounds, Decision, Millis, Question, Record, Table};
use tokio::time::Instant;

/// The table, the executors' names, and the sequencer's clock.
#[derive(Debug)]
pub struct Decider {
    table: Table<u16>,
    names: Vec<String>,
    ids: HashMap<String, u16>,
    origin: Instant,
    busy_for: BTreeMap<String, Duration>,
}

impl Decider {
    /// An empty table of `epoch`; `busy_for` is S + H per executor of this configuration.
    pub fn new(epoch: u32, busy_for: BTreeMap<String, Duration>) -> Self {
        let default = busy_for.values().max().copied().unwrap_or_default();
        let retention = crate::broker::topology::LEDGER_RETENTION;
        Decider {
            table: Table::new(
                epoch,
                Bounds {
                    busy_for: HashMap::new(),
                    default_busy_for: millis(default),
                },
                millis(retention),
            ),
            names: Vec::new(),
            ids: HashMap::new(),
            origin: Instant::now(),
            busy_for,
        }
    }

    /// The sequencer's clock (its origin: this table's creation, at activation).
    pub(crate) fn now(&self) -> Millis {
        millis(self.origin.elapsed())
    }

    /// Builds remembered.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// The table's epoch.
    pub(crate) fn epoch(&self) -> u32 {
        self.table.epoch()
    }

    /// Decides a question.
    pub fn decide(&mut self, question: &Question<String>) -> Decision<String> {
        let q = self.intern_question(question);
        let d = self.table.decide(&q, self.now());
        Decision {
            answer: self.extern_answer(d.answer),
            record: d.record.map(|r| self.extern_record(r)),
            fenced: d.fenced,
        }
    }

    /// Applies a record read back from the ledger, appended at `ledger_at` on the ledger's
    /// clock.
    pub(crate) fn replay(&mut self, record: &Record<String>, ledger_at: Millis) {
        let r = match record {
            Record::Placed { build, exec } => Record::Placed {
                build: *build,
                exec: self.id(exec),
            },
            Record::Launched { build, exec } => Record::Launched {
                build: *build,
                exec: self.id(exec),
            },
            Record::Stopped { build } => Record::Stopped { build: *build },
        };
        let now = self.now();
        self.table.replay(&r, ledger_at, now);
    }

    /// The ledger is read; its clock read `ledger_now` at its last append.
    pub(crate) fn caught_up(&mut self, ledger_now: Millis) {
        let now = self.now();
        self.table.caught_up(ledger_now, now);
    }

    fn id(&mut self, name: &str) -> u16 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = u16::try_from(self.names.len()).unwrap_or(u16::MAX);
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        if let Some(busy) = self.busy_for.get(name) {
            self.table.set_busy_for(id, millis(*busy));
        }
        id
    }

    fn name(&self, id: u16) -> String {
        self.names.get(usize::from(id)).cloned().unwrap_or_default()
    }

    fn intern_question(&mut self, q: &Question<String>) -> Question<u16> {
        match q {
            Question::Claim {
                build,
                prefs,
                failed,
            } => Question::Claim {
                build: *build,
                prefs: prefs.iter().map(|p| self.id(p)).collect(),
                failed: failed.as_ref().map(|(e, v)| (self.id(e), *v)),
            },
            Question::Vacate {
                build,
                exec,
                version,
                prefs,
            } => Question::Vacate {
                build: *build,
                exec: self.id(exec),
                version: *version,
                prefs: prefs.iter().map(|p| self.id(p)).collect(),
            },
            Question::Launched {
                build,
                exec,
                version,
            } => Question::Launched {
                build: *build,
                exec: self.id(exec),
                version: *version,
            },
            Question::Stop { build } => Question::Stop { build: *build },
            Question::State { build } => Question::State { build: *build },
        }
    }

    fn extern_answer(&self, a: Answer<u16>) -> Answer<String> {
        match a {
            Answer::Go { exec, version } => Answer::Go {
                exec: self.name(exec),
                version,
            },
            Answer::Look { exec, version } => Answer::Look {
                exec: self.name(exec),
                version,
            },
            Answer::Wait { exec, wait } => Answer::Wait {
                exec: self.name(exec),
                wait,
            },
            Answer::Launched { exec } => Answer::Launched {
                exec: self.name(exec),
            },
            Answer::StopNoted { at, busy_for } => Answer::StopNoted {
                at: at.map(|e| self.name(e)),
                busy_for,
            },
            Answer::Nowhere => Answer::Nowhere,
            Answer::Stopped => Answer::Stopped,
            Answer::Noted => Answer::Noted,
            Answer::State { state } => Answer::State { state },
        }
    }

    fn extern_record(&self, r: Record<u16>) -> Record<String> {
        match r {
            Record::Placed { build, exec } => Record::Placed {
                build,
                exec: self.name(exec),
            },
            Record::Launched { build, exec } => Record::Launched {
                build,
                exec: self.name(exec),
            },
            Record::Stopped { build } => Record::Stopped { build },
        }
    }
}

fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
