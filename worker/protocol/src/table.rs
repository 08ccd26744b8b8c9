//! The sequencer's table: every decision about a build, as a pure function of its entry, the
//! question and the sequencer's clock. docs/protocol.md states the rules; the model test checks
//! them over every interleaving it explores.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use serde::{Deserialize, Serialize};

/// Milliseconds on the sequencer's own monotonic clock.
pub type Millis = u64;

/// A build id.
pub type Build = u64;

/// Which permission a create was sent under: the sequencer's epoch and a counter bumped by
/// every permission and placement change. A new sequencer has a new epoch, so no answer of an
/// earlier one matches its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version {
    /// The sequencer's epoch (random per activation).
    pub epoch: u32,
    /// Bumped by every Go and every placement change within the epoch.
    pub counter: u32,
}

/// The creates permitted under the current placement and not yet closed. A few are tracked
/// exactly; more, or any after a replay, are `Unknown` (only time can close them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Open {
    /// These counters (of the current epoch) are open; `len` of them are used.
    Known {
        len: u8,
        counters: [u32; OPEN_TRACKED],
    },
    /// Some creates may be open: wait for the busy window.
    Unknown,
}

/// Open creates tracked exactly per build; more become [`Open::Unknown`].
pub const OPEN_TRACKED: usize = 3;

impl Open {
    const NONE: Open = Open::Known {
        len: 0,
        counters: [0; OPEN_TRACKED],
    };

    fn is_empty(&self) -> bool {
        matches!(self, Open::Known { len: 0, .. })
    }

    fn add(&mut self, counter: u32) {
        if let Open::Known { len, counters } = self {
            if usize::from(*len) < OPEN_TRACKED {
                counters[usize::from(*len)] = counter;
                *len += 1;
            } else {
                *self = Open::Unknown;
            }
        }
    }

    fn close(&mut self, counter: u32) {
        if let Open::Known { len, counters } = self {
            let n = usize::from(*len);
            if let Some(i) = counters[..n].iter().position(|c| *c == counter) {
                counters.copy_within(i + 1..n, i);
                *len -= 1;
            }
        }
    }
}

/// What the sequencer knows of one build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry<E> {
    /// Where creates of the build may be sent now.
    pub placed: Option<E>,
    /// The current version.
    pub version: Version,
    /// Creates permitted and not yet closed.
    pub open: Open,
    /// The last instant at which a create permitted under the current placement may land.
    pub busy_until: Millis,
    /// The pod was created or adopted there (final).
    pub launched: Option<E>,
    /// A stop was recorded (final).
    pub stopped: bool,
    /// When the entry last changed (it expires `retention` after that).
    pub touched: Millis,
}

impl<E> Entry<E> {
    /// A build the sequencer of `epoch` knows nothing of yet.
    pub fn new(epoch: u32, now: Millis) -> Self {
        Entry {
            placed: None,
            version: Version { epoch, counter: 0 },
            open: Open::NONE,
            busy_until: 0,
            launched: None,
            stopped: false,
            touched: now,
        }
    }
}

/// A question about one build.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "q", rename_all = "camelCase")]
pub enum Question<E> {
    /// May I create the build's pod? `prefs`: the build's candidates usable to the asker now,
    /// best first. `failed`: the asker's create permitted under that version did not land.
    Claim {
        /// The build.
        build: Build,
        /// Usable candidates, best first.
        prefs: Vec<E>,
        /// A create of the asker's that certainly did not land.
        failed: Option<(E, Version)>,
    },
    /// I looked where you told me to look and found no pod of the build.
    Vacate {
        /// The build.
        build: Build,
        /// Where I looked.
        exec: E,
        /// The version of the Look answer.
        version: Version,
        /// Usable candidates, best first.
        prefs: Vec<E>,
    },
    /// The build's pod exists on `exec` (its `build.launched` event is confirmed).
    Launched {
        /// The build.
        build: Build,
        /// Where.
        exec: E,
        /// The Go it was created under, when the asker created it.
        version: Option<Version>,
    },
    /// The build is stopped.
    Stop {
        /// The build.
        build: Build,
    },
    /// Is the build's launch announced? (the lifecycle reporter's question)
    State {
        /// The build.
        build: Build,
    },
}

impl<E> Question<E> {
    /// The build the question is about.
    pub fn build(&self) -> Build {
        match self {
            Question::Claim { build, .. }
            | Question::Vacate { build, .. }
            | Question::Launched { build, .. }
            | Question::Stop { build }
            | Question::State { build } => *build,
        }
    }
}

/// What the reporter may know of a build's launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LaunchState {
    /// Launched (its `build.launched` was confirmed before this was recorded).
    Launched,
    /// Creates are permitted and open: its launch may be announced soon.
    Pending,
    /// Nothing is known.
    Unknown,
}

/// The sequencer's answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "a", rename_all = "camelCase")]
pub enum Answer<E> {
    /// Create (or adopt) the pod on `exec`; send the create within S of asking.
    Go {
        /// Where.
        exec: E,
        /// The permission, to quote when it failed.
        version: Version,
    },
    /// Look on `exec`: adopt a pod found there, or answer Vacate.
    Look {
        /// Where.
        exec: E,
        /// To quote in Vacate.
        version: Version,
    },
    /// The build is placed on `exec`, which the asker cannot use; ask again after `wait` ms.
    Wait {
        /// Where it is placed.
        exec: E,
        /// How long a create may still land there.
        wait: Millis,
    },
    /// No usable executor and nothing placed: wait for one.
    Nowhere,
    /// The pod was created on `exec`: adopt it, or the build is over.
    Launched {
        /// Where.
        exec: E,
    },
    /// The build is stopped: do not launch (delete a pod just created).
    Stopped,
    /// A launch was noted.
    Noted,
    /// A stop was noted: where a pod may be, and how long a create may still land there.
    StopNoted {
        /// The executor the build is launched or placed on.
        at: Option<E>,
        /// How long a create may still land there (0: none can).
        busy_for: Millis,
    },
    /// The answer to State.
    State {
        /// What is known.
        state: LaunchState,
    },
}

/// What the ledger keeps: enough to rebuild the table after a takeover.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "camelCase")]
pub enum Record<E> {
    /// A create of the build was permitted on `exec`, its placement (the first permission
    /// there, or a later one).
    Placed {
        /// The build.
        build: Build,
        /// Where.
        exec: E,
    },
    /// The build's pod exists on `exec`.
    Launched {
        /// The build.
        build: Build,
        /// Where.
        exec: E,
    },
    /// The build is stopped.
    Stopped {
        /// The build.
        build: Build,
    },
}

/// A decision: the answer, what must be recorded before it is given, and whether the answer
/// needs a fence (a confirmed append after the decision, proving the sequencer was still
/// active) even without a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<E> {
    /// The answer.
    pub answer: Answer<E>,
    /// To append (confirmed) before answering.
    pub record: Option<Record<E>>,
    /// The answer permits a create, so it must follow a confirmed append.
    pub fenced: bool,
}

/// The time bounds of docs/protocol.md, per executor: a permitted create is sent within S of
/// its question and lands within H of being sent, so none lands later than S + H after the
/// permission.
#[derive(Debug, Clone)]
pub struct Bounds<E> {
    /// S + H per executor.
    pub busy_for: HashMap<E, Millis>,
    /// S + H for an executor this sequencer's configuration does not name.
    pub default_busy_for: Millis,
}

impl<E: Eq + Hash> Bounds<E> {
    fn busy_for(&self, exec: &E) -> Millis {
        self.busy_for
            .get(exec)
            .copied()
            .unwrap_or(self.default_busy_for)
    }
}

/// The table of one sequencer epoch.
#[derive(Debug, Clone)]
pub struct Table<E> {
    epoch: u32,
    bounds: Bounds<E>,
    entries: HashMap<Build, Entry<E>>,
    /// Builds by the time they were first (or, once looked at again, last) touched, oldest
    /// first: the expiry order. At most one live element per build.
    expiry: VecDeque<(Build, Millis)>,
    retention: Millis,
}

impl<E: Copy + Eq + Hash + std::fmt::Debug> Table<E> {
    /// An empty table for `epoch`.
    pub fn new(epoch: u32, bounds: Bounds<E>, retention: Millis) -> Self {
        Table {
            epoch,
            bounds,
            entries: HashMap::new(),
            expiry: VecDeque::new(),
            retention,
        }
    }

    /// This table's epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The entry of a build, if any.
    pub fn entry(&self, build: Build) -> Option<&Entry<E>> {
        self.entries.get(&build)
    }

    /// Builds remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no build is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Rebuilds from a record of the ledger, appended when the ledger's clock read `ledger_at`
    /// ([`crate::wire::Replay::clock`]) and read back at `now`, when this sequencer became
    /// active. Once the ledger is read, [`Table::caught_up`] brings the windows onto this
    /// sequencer's clock.
    pub fn replay(&mut self, record: &Record<E>, ledger_at: Millis, now: Millis) {
        let epoch = self.epoch;
        let e = touch(
            &mut self.entries,
            &mut self.expiry,
            self.retention,
            epoch,
            record.build(),
            now,
        );
        e.replay(record, ledger_at, &self.bounds, epoch);
    }

    /// The ledger is read: its clock read `ledger_now` at its last append, this sequencer's
    /// reads `now`. Every window ends what is left of it on the ledger's clock after `now`.
    pub fn caught_up(&mut self, ledger_now: Millis, now: Millis) {
        for e in self.entries.values_mut() {
            e.caught_up(ledger_now, now);
        }
    }

    /// Decides one question at `now`.
    pub fn decide(&mut self, question: &Question<E>, now: Millis) -> Decision<E> {
        let build = question.build();
        if let Question::State { .. } = question {
            return answer(Answer::State {
                state: self.state(build, now),
            });
        }
        let epoch = self.epoch;
        let e = touch(
            &mut self.entries,
            &mut self.expiry,
            self.retention,
            epoch,
            build,
            now,
        );
        e.decide(question, now, &self.bounds, epoch)
    }

    /// Sets S + H for an executor (a shell names executors as it meets them).
    pub fn set_busy_for(&mut self, exec: E, busy: Millis) {
        self.bounds.busy_for.insert(exec, busy);
    }

    /// What is known of a build's launch.
    pub fn state(&self, build: Build, now: Millis) -> LaunchState {
        self.entries
            .get(&build)
            .map_or(LaunchState::Unknown, |e| e.launch_state(now))
    }
}

/// The entry of a build (created empty), touched now; entries untouched for the retention are
/// dropped first.
fn touch<'a, E>(
    entries: &'a mut HashMap<Build, Entry<E>>,
    expiry: &mut VecDeque<(Build, Millis)>,
    retention: Millis,
    epoch: u32,
    build: Build,
    now: Millis,
) -> &'a mut Entry<E> {
    while let Some(&(b, queued)) = expiry.front() {
        if now.saturating_sub(queued) <= retention {
            break;
        }
        expiry.pop_front();
        match entries.get(&b).map(|e| e.touched) {
            // Touched since it was queued: queue it again at its last touch.
            Some(t) if now.saturating_sub(t) <= retention => expiry.push_back((b, t)),
            Some(_) => {
                entries.remove(&b);
            }
            None => {}
        }
    }
    let e = entries.entry(build).or_insert_with(|| {
        expiry.push_back((build, now));
        Entry::new(epoch, now)
    });
    e.touched = now;
    e
}

impl<E: Copy + Eq + Hash> Entry<E> {
    /// Rebuilds from a ledger record appended at `ledger_at` on the ledger's clock, read back by
    /// the sequencer of `epoch`. A replayed placement may still have creates on the wire: they
    /// are `Unknown`, and its busy window runs from the record on the ledger's clock (brought
    /// onto the sequencer's own by [`Entry::caught_up`]).
    pub fn replay(
        &mut self,
        record: &Record<E>,
        ledger_at: Millis,
        bounds: &Bounds<E>,
        epoch: u32,
    ) {
        match record {
            Record::Placed { exec, .. } => {
                self.placed = Some(*exec);
                self.open = Open::Unknown;
                self.busy_until = ledger_at + bounds.busy_for(exec);
                self.version = Version {
                    epoch,
                    counter: self.version.counter + 1,
                };
            }
            Record::Launched { exec, .. } => self.launched = Some(*exec),
            Record::Stopped { .. } => self.stopped = true,
        }
    }

    /// Moves a replayed window from the ledger's clock (at `ledger_now` when the ledger was
    /// read) to this sequencer's (at `now`): what was left of it then is left of it now.
    pub fn caught_up(&mut self, ledger_now: Millis, now: Millis) {
        self.busy_until = now + self.busy_until.saturating_sub(ledger_now);
    }

    /// Decides one question about this build at `now` (State is answered by the table).
    pub fn decide(
        &mut self,
        question: &Question<E>,
        now: Millis,
        bounds: &Bounds<E>,
        epoch: u32,
    ) -> Decision<E> {
        let build = question.build();
        match question {
            Question::Claim { prefs, failed, .. } => {
                if let Some((exec, v)) = failed
                    && self.placed == Some(*exec)
                    && v.epoch == epoch
                {
                    self.open.close(v.counter);
                }
                claim(self, build, prefs, now, bounds)
            }
            Question::Vacate {
                exec,
                version,
                prefs,
                ..
            } => {
                if self.placed == Some(*exec) && self.version == *version && now > self.busy_until {
                    self.placed = None;
                    self.open = Open::NONE;
                }
                claim(self, build, prefs, now, bounds)
            }
            Question::Launched { exec, version, .. } => launched(self, build, *exec, *version, now),
            Question::Stop { .. } => stop(self, build, now),
            Question::State { .. } => answer(Answer::State {
                state: self.launch_state(now),
            }),
        }
    }

    /// What is known of the build's launch.
    pub fn launch_state(&self, now: Millis) -> LaunchState {
        if self.launched.is_some() {
            LaunchState::Launched
        } else if self.placed.is_some() && (!self.open.is_empty() || now <= self.busy_until) {
            LaunchState::Pending
        } else {
            LaunchState::Unknown
        }
    }
}

impl<E> Record<E> {
    /// The build the record is about.
    pub fn build(&self) -> Build {
        match self {
            Record::Placed { build, .. }
            | Record::Launched { build, .. }
            | Record::Stopped { build } => *build,
        }
    }
}

fn claim<E: Copy + Eq + Hash>(
    e: &mut Entry<E>,
    build: Build,
    prefs: &[E],
    now: Millis,
    bounds: &Bounds<E>,
) -> Decision<E> {
    if e.stopped {
        return answer(Answer::Stopped);
    }
    if let Some(exec) = e.launched {
        return answer(Answer::Launched { exec });
    }
    if let Some(exec) = e.placed {
        if prefs.contains(&exec) {
            return go(e, build, exec, now, bounds);
        }
        if e.open.is_empty() {
            // Every create permitted here certainly did not land: nothing can be there.
            e.placed = None;
        } else if now > e.busy_until {
            return answer(Answer::Look {
                exec,
                version: e.version,
            });
        } else {
            return answer(Answer::Wait {
                exec,
                wait: e.busy_until + 1 - now,
            });
        }
    }
    match prefs.first() {
        None => answer(Answer::Nowhere),
        Some(&exec) => {
            e.placed = Some(exec);
            e.open = Open::NONE;
            e.busy_until = 0;
            go(e, build, exec, now, bounds)
        }
    }
}

/// Permits a create on `exec`, the build's placement. Every permission is recorded, a first
/// one and a later one alike: the record's time is where a successor's busy window starts.
fn go<E: Copy + Eq + Hash>(
    e: &mut Entry<E>,
    build: Build,
    exec: E,
    now: Millis,
    bounds: &Bounds<E>,
) -> Decision<E> {
    e.version.counter += 1;
    e.open.add(e.version.counter);
    e.busy_until = e.busy_until.max(now + bounds.busy_for(&exec));
    Decision {
        answer: Answer::Go {
            exec,
            version: e.version,
        },
        record: Some(Record::Placed { build, exec }),
        fenced: true,
    }
}

fn launched<E: Copy + Eq>(
    e: &mut Entry<E>,
    build: Build,
    exec: E,
    version: Option<Version>,
    now: Millis,
) -> Decision<E> {
    if let Some(v) = version
        && v.epoch == e.version.epoch
    {
        e.open.close(v.counter);
    }
    if e.stopped {
        // The asker deletes its pod only when no other create can land (busy_for 0); else the
        // stop's re-check does, once none can.
        return answer(Answer::StopNoted {
            at: Some(exec),
            busy_for: busy_for(e, now),
        });
    }
    let record = (e.launched != Some(exec)).then_some(Record::Launched { build, exec });
    e.launched = Some(exec);
    Decision {
        answer: Answer::Noted,
        fenced: record.is_some(),
        record,
    }
}

/// How long a create permitted under the current placement may still land (0: none can). A
/// create may land at `busy_until` itself, so the time counts past it.
fn busy_for<E>(e: &Entry<E>, now: Millis) -> Millis {
    if e.open.is_empty() {
        0
    } else {
        (e.busy_until + 1).saturating_sub(now)
    }
}

fn stop<E: Copy>(e: &mut Entry<E>, build: Build, now: Millis) -> Decision<E> {
    let record = (!e.stopped).then_some(Record::Stopped { build });
    e.stopped = true;
    Decision {
        answer: Answer::StopNoted {
            at: e.launched.or(e.placed),
            busy_for: busy_for(e, now),
        },
        fenced: record.is_some(),
        record,
    }
}

fn answer<E>(answer: Answer<E>) -> Decision<E> {
    Decision {
        answer,
        record: None,
        fenced: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const X: u8 = 0;
    const Y: u8 = 1;
    /// S + H.
    const BUSY: Millis = 30;

    fn table() -> Table<u8> {
        Table::new(
            7,
            Bounds {
                busy_for: [(X, BUSY), (Y, BUSY)].into_iter().collect(),
                default_busy_for: BUSY,
            },
            1_000,
        )
    }

    fn claim(prefs: &[u8], failed: Option<(u8, Version)>) -> Question<u8> {
        Question::Claim {
            build: 1,
            prefs: prefs.to_vec(),
            failed,
        }
    }

    fn go(d: &Decision<u8>) -> (u8, Version) {
        match d.answer {
            Answer::Go { exec, version } => (exec, version),
            ref other => panic!("expected Go, got {other:?}"),
        }
    }

    #[test]
    fn the_first_claim_places_the_build_on_the_first_preference_and_records_it() {
        let mut t = table();
        let d = t.decide(&claim(&[X, Y], None), 0);
        assert_eq!(go(&d).0, X);
        assert_eq!(d.record, Some(Record::Placed { build: 1, exec: X }));
        // A copy that can use X goes there too: the same placement, its permission recorded
        // again (where a successor's window starts).
        let d = t.decide(&claim(&[X], None), 5);
        assert_eq!(go(&d).0, X);
        assert_eq!(d.record, Some(Record::Placed { build: 1, exec: X }));
    }

    #[test]
    fn a_placed_build_goes_to_its_placement_whatever_the_order_of_preferences() {
        let mut t = table();
        t.decide(&claim(&[X, Y], None), 0);
        // A retry copy that prefers Y (it created on X before) but can use X: X, at once.
        let d = t.decide(&claim(&[Y, X], None), 10);
        assert_eq!(go(&d).0, X);
    }

    #[test]
    fn a_copy_that_cannot_use_the_placement_waits_out_its_creates_then_looks_then_moves() {
        let mut t = table();
        let (_, v) = go(&t.decide(&claim(&[X, Y], None), 0));
        let d = t.decide(&claim(&[Y], None), 10);
        assert_eq!(
            d.answer,
            Answer::Wait {
                exec: X,
                wait: BUSY + 1 - 10
            }
        );
        // At the window's last instant a create may still land.
        assert!(matches!(
            t.decide(&claim(&[Y], None), BUSY).answer,
            Answer::Wait { .. }
        ));
        let d = t.decide(&claim(&[Y], None), BUSY + 1);
        let Answer::Look { exec: X, version } = d.answer else {
            panic!("expected Look, got {:?}", d.answer)
        };
        assert_eq!(version, v, "no permission was given since");
        let d = t.decide(
            &Question::Vacate {
                build: 1,
                exec: X,
                version,
                prefs: vec![Y],
            },
            BUSY + 2,
        );
        assert_eq!(go(&d).0, Y);
        assert_eq!(d.record, Some(Record::Placed { build: 1, exec: Y }));
    }

    #[test]
    fn a_vacate_after_another_permission_is_refused() {
        let mut t = table();
        t.decide(&claim(&[X], None), 0);
        let Answer::Look { version, .. } = t.decide(&claim(&[Y], None), BUSY + 1).answer else {
            panic!()
        };
        // Another copy was permitted on X since the look: its create may still land.
        t.decide(&claim(&[X], None), BUSY + 2);
        let d = t.decide(
            &Question::Vacate {
                build: 1,
                exec: X,
                version,
                prefs: vec![Y],
            },
            BUSY + 3,
        );
        assert!(
            matches!(d.answer, Answer::Wait { exec: X, .. }),
            "{:?}",
            d.answer
        );
    }

    #[test]
    fn a_create_that_certainly_failed_frees_the_placement_at_once() {
        let mut t = table();
        let (x, v) = go(&t.decide(&claim(&[X, Y], None), 0));
        let d = t.decide(&claim(&[Y], Some((x, v))), 1);
        assert_eq!(go(&d).0, Y);
        // Quoting a permission twice (a retried question) closes nothing more.
        let (y, w) = go(&d);
        t.decide(&claim(&[Y], None), 2);
        let d = t.decide(&claim(&[X], Some((y, w))), 3);
        assert!(
            matches!(d.answer, Answer::Wait { exec: Y, .. }),
            "{:?}",
            d.answer
        );
    }

    #[test]
    fn a_launch_is_final_and_a_stop_is_final() {
        let mut t = table();
        let (x, v) = go(&t.decide(&claim(&[X, Y], None), 0));
        let d = t.decide(
            &Question::Launched {
                build: 1,
                exec: x,
                version: Some(v),
            },
            1,
        );
        assert_eq!(d.answer, Answer::Noted);
        assert_eq!(d.record, Some(Record::Launched { build: 1, exec: X }));
        assert_eq!(
            t.decide(&claim(&[Y], None), 2).answer,
            Answer::Launched { exec: X }
        );
        assert_eq!(t.state(1, 2), LaunchState::Launched);
        let d = t.decide(&Question::Stop { build: 1 }, 3);
        assert_eq!(
            d.answer,
            Answer::StopNoted {
                at: Some(X),
                busy_for: 0
            }
        );
        assert_eq!(d.record, Some(Record::Stopped { build: 1 }));
        assert_eq!(t.decide(&claim(&[X], None), 4).answer, Answer::Stopped);
    }

    #[test]
    fn a_stop_with_an_open_create_says_how_long_it_may_land_and_so_does_its_launch() {
        let mut t = table();
        let (x, v) = go(&t.decide(&claim(&[X], None), 0));
        t.decide(&claim(&[X], None), 4);
        let d = t.decide(&Question::Stop { build: 1 }, 10);
        assert_eq!(
            d.answer,
            Answer::StopNoted {
                at: Some(X),
                busy_for: 4 + BUSY + 1 - 10
            }
        );
        // The first copy's pod landed: another create is open, so it must not delete it.
        let d = t.decide(
            &Question::Launched {
                build: 1,
                exec: x,
                version: Some(v),
            },
            11,
        );
        assert!(matches!(d.answer, Answer::StopNoted { busy_for, .. } if busy_for > 0));
    }

    #[test]
    fn a_new_sequencer_restarts_every_window_and_voids_older_permissions() {
        let mut old = table();
        let (x, v) = go(&old.decide(&claim(&[X, Y], None), 0));
        let mut t = Table::new(8, table().bounds, 1_000);
        t.replay(&Record::Placed { build: 1, exec: X }, 70, 500);
        t.caught_up(70, 500);
        assert_eq!(t.state(1, 500), LaunchState::Pending);
        // The old permission's failure closes nothing: creates of unknown number may be open.
        let d = t.decide(&claim(&[Y], Some((x, v))), 501);
        assert!(
            matches!(d.answer, Answer::Wait { exec: X, .. }),
            "{:?}",
            d.answer
        );
        assert!(matches!(
            t.decide(&claim(&[Y], None), 500 + BUSY + 1).answer,
            Answer::Look { exec: X, .. }
        ));
    }

    #[test]
    fn a_new_sequencer_counts_a_window_from_its_record_on_the_ledgers_clock() {
        let mut t = Table::new(8, table().bounds, 1_000);
        // Permitted at 100 on the ledger's clock, again at 110; the ledger's clock had
        // reached 120 when its last append was made: 20 of the window had passed.
        t.replay(&Record::Placed { build: 1, exec: X }, 100, 500);
        t.replay(&Record::Placed { build: 1, exec: X }, 110, 500);
        t.caught_up(120, 500);
        let left = BUSY - 10;
        assert!(matches!(
            t.decide(&claim(&[Y], None), 500).answer,
            Answer::Wait { exec: X, wait } if wait == left + 1
        ));
        assert!(matches!(
            t.decide(&claim(&[Y], None), 500 + left + 1).answer,
            Answer::Look { exec: X, .. }
        ));
        // Nothing is left of a window whose end the ledger's clock passed.
        let mut t = Table::new(9, table().bounds, 1_000);
        t.replay(&Record::Placed { build: 1, exec: X }, 100, 500);
        t.caught_up(100 + BUSY + 5, 500);
        assert!(matches!(
            t.decide(&claim(&[Y], None), 501).answer,
            Answer::Look { exec: X, .. }
        ));
    }

    #[test]
    fn entries_untouched_for_the_retention_are_forgotten() {
        let mut t = table();
        t.decide(&Question::Stop { build: 1 }, 0);
        t.decide(&Question::Stop { build: 2 }, 600);
        t.decide(&Question::Stop { build: 3 }, 1_200);
        assert!(t.entry(1).is_none());
        assert!(t.entry(2).is_some());
        t.decide(&claim(&[X], None), 1_500);
        t.decide(&Question::Stop { build: 2 }, 1_500);
        t.decide(&Question::Stop { build: 4 }, 2_400);
        assert!(t.entry(2).is_some(), "touched again at 1,500");
        assert_eq!(t.state(9, 0), LaunchState::Unknown);
    }

    /// What a sequence of questions asks of the table, as the property test generates it.
    #[derive(Debug, Clone)]
    enum Ask {
        Claim { prefs: Vec<u8>, fail: Option<usize> },
        Vacate { from: usize, prefs: Vec<u8> },
        Launched { of: usize },
        Stop,
        Wait(Millis),
    }

    fn asks() -> impl Strategy<Value = Vec<Ask>> {
        let prefs = prop_oneof![
            Just(vec![X, Y]),
            Just(vec![Y, X]),
            Just(vec![X]),
            Just(vec![Y]),
            Just(vec![])
        ];
        let ask = prop_oneof![
            4 => (prefs.clone(), proptest::option::of(0usize..8))
                .prop_map(|(prefs, fail)| Ask::Claim { prefs, fail }),
            2 => (0usize..8, prefs).prop_map(|(from, prefs)| Ask::Vacate { from, prefs }),
            1 => (0usize..8).prop_map(|of| Ask::Launched { of }),
            1 => Just(Ask::Stop),
            3 => (0u64..40).prop_map(Ask::Wait),
        ];
        proptest::collection::vec(ask, 0..40)
    }

    proptest! {
        /// Whatever copies ask, and however they quote earlier answers: a permission on another
        /// executor is only given when every earlier permission is closed or past its window, and
        /// none after a launch or a stop.
        #[test]
        fn permissions_never_overlap_across_executors(asks in asks()) {
            let mut t = table();
            let mut now = 0;
            // Every permission given: (executor, version, when, closed).
            let mut gos: Vec<(u8, Version, Millis, bool)> = Vec::new();
            let mut looks: Vec<(u8, Version)> = Vec::new();
            let (mut launched, mut stopped) = (false, false);
            for ask in asks {
                let q = match ask {
                    Ask::Wait(d) => { now += d; continue; }
                    Ask::Claim { prefs, fail } => {
                        let failed = fail.and_then(|i| gos.get(i)).map(|g| (g.0, g.1));
                        if let Some(i) = fail && i < gos.len() { gos[i].3 = true; }
                        claim(&prefs, failed)
                    }
                    Ask::Vacate { from, prefs } => match looks.get(from) {
                        Some(&(exec, version)) => Question::Vacate { build: 1, exec, version, prefs },
                        None => continue,
                    },
                    Ask::Launched { of } => match gos.get(of) {
                        Some(g) => Question::Launched { build: 1, exec: g.0, version: Some(g.1) },
                        None => continue,
                    },
                    Ask::Stop => Question::Stop { build: 1 },
                };
                let d = t.decide(&q, now);
                match (&q, &d.answer) {
                    (_, Answer::Go { exec, version }) => {
                        prop_assert!(!launched && !stopped, "a permission after the end");
                        for g in &gos {
                            prop_assert!(
                                g.0 == *exec || g.3 || now > g.2 + BUSY,
                                "Go({exec}) at {now} while a create permitted on {} at {} may land", g.0, g.2
                            );
                        }
                        gos.push((*exec, *version, now, false));
                    }
                    (_, Answer::Look { exec, version }) => looks.push((*exec, *version)),
                    (Question::Launched { .. }, Answer::Noted) => {
                        launched = true;
                        // The pod exists: the creates permitted on that executor are moot.
                        for g in &mut gos { g.3 = true; }
                    }
                    (Question::Stop { .. }, _) => stopped = true,
                    _ => {}
                }
            }
        }
    }
}
