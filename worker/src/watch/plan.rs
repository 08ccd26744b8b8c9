//! What the reporter does next about one build pod, as a pure function of what it sees of the
//! pod and what it has done about it so far: [`plan`] gives one [`Step`], the reporter carries
//! it out and tells the [`Record`] how it went ([`Record::apply`]), and plans again until the
//! step is [`Step::Wait`]. No I/O and no clock: the caller passes the time.
//!
//! The rules it keeps, each checked by the property tests below:
//! - no event about a pod before its `build.launched` is known to be on the stream (published by
//!   its launcher and recorded, or published here for a launcher that died);
//! - each event at most once, `build.running` before the outcome, nothing after the outcome;
//! - a pod is deleted (cannot start, or collected) only after its launch was recorded `busy_for`
//!   ago, so no create permitted before the record can land on its name again;
//! - a pod that cannot start is deleted only after its user was told;
//! - a finished pod is collected only after its `podTTL`.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::assess::{Verdict, trouble_key};
use super::gc::{collection, finished_for, lifetime};
use super::handover::Reported;
use crate::protocol::LaunchState;
use crate::status::Update;

/// An unscheduled pod gets Screwdriver's "Waiting for resources" message after this long.
pub const WAITING_AFTER: Duration = Duration::from_secs(5);
/// How long a pod's launcher has to record its launch: past this, the reporter announces (and
/// records) the launch itself, since its launcher died or is late.
pub const LAUNCH_ANNOUNCE_WITHIN: Duration = Duration::from_secs(30);

/// The thresholds of one executor.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a finished pod is kept.
    pub pod_ttl: Duration,
    /// The longest a pod may stay pending.
    pub pending_timeout: Duration,
    /// The longest a build may run.
    pub max_build_timeout: Duration,
    /// S + H: how long after a launch's record a create permitted before it may still land.
    pub busy_for: Duration,
}

/// The time of one look: monotonic for durations, wall clock for pod timestamps.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Monotonic now.
    pub now: Instant,
    /// Wall-clock now.
    pub wall: jiff::Timestamp,
}

impl Clock {
    /// The current time.
    pub fn now() -> Clock {
        Clock {
            now: Instant::now(),
            wall: jiff::Timestamp::now(),
        }
    }

    fn unix(&self) -> i64 {
        self.wall.as_second()
    }

    /// How long ago a pod time (unix seconds) was; zero for a time ahead of the clock.
    pub(super) fn since(&self, unix: i64) -> Duration {
        Duration::from_secs(self.unix().saturating_sub(unix).max(0) as u64)
    }
}

/// What the reporter sees of a pod at one look.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// What the pod's status means for its build.
    pub verdict: Verdict,
    /// The pod names its build (a pod without one is an orphan).
    pub known: bool,
    /// The pod is being deleted: its containers end because of that, which says nothing.
    pub deleting: bool,
    /// When the pod was created (unix seconds).
    pub created_at: Option<i64>,
    /// When its build container finished (unix seconds), if it said.
    pub finished_at: Option<i64>,
    /// The node it was scheduled on.
    pub node: Option<String>,
    /// The build container started (it runs, or ended after a start).
    pub ran: bool,
}

/// What is known of a pod's launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// Nothing yet.
    Unknown,
    /// `build.launched` is on the stream (or cannot be checked and the pod is old): events may
    /// follow, deletion still waits for the record.
    Announced,
    /// Recorded by the sequencer, learnt at this time.
    Recorded(Instant),
}

/// What the sequencer said of the launch in the current look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// Its answer.
    State(LaunchState),
    /// It could not be asked, or could not take the record.
    Unreachable,
}

/// Screwdriver's `stats.hostname` update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduled {
    /// Not seen scheduled while pending.
    No,
    /// Seen scheduled while pending at this time (the image pull starts then): owed.
    Owed(jiff::Timestamp),
    /// Sent, or told by an earlier reporter.
    Told,
}

/// The build's outcome event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not published.
    Open,
    /// `build.launch_failed` published.
    CannotStart,
    /// `build.succeeded`, `build.failed` or `build.timed_out` published at this time.
    Finished(Instant),
}

/// What the reporter has done about one pod, and when it first saw it.
#[derive(Debug, Clone)]
pub struct Record {
    first_seen: Instant,
    /// First time each current trouble (image pull, config error) was seen, for grace periods.
    troubles: HashMap<&'static str, Instant>,
    launch: Launch,
    asked: Option<Asked>,
    scheduled: Scheduled,
    waiting_told: bool,
    saw_running: bool,
    running_sent: bool,
    outcome: Outcome,
    /// The FAILURE update owed after the outcome went out (or none was owed).
    failure_told: bool,
    deleted: bool,
    /// Nothing to do before this time unless the pod changes.
    idle_until: Option<Instant>,
}

/// An event about the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `build.launched`, for a launcher that died before it was recorded.
    Launched,
    /// `build.running`.
    Running,
    /// `build.launch_failed`.
    LaunchFailed,
    /// The outcome of a build that ran; `tell` when Screwdriver must also hear of it (deaths
    /// the launcher cannot report).
    Finished {
        /// A FAILURE update is owed after it.
        tell: bool,
    },
}

/// Why a pod is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// No build can still need it (no build, or older than any build may live).
    Orphan,
    /// It cannot start; its user was told.
    CannotStart,
    /// Finished, and kept for its `podTTL`.
    Collect,
}

/// The next thing to do about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask the sequencer whether the launch is recorded.
    AskLaunch,
    /// Record the launch with the sequencer (its launcher did not).
    RecordLaunch,
    /// Publish an event (confirmed).
    Publish(Event),
    /// Send Screwdriver a status update.
    Tell(Update),
    /// Delete the pod.
    Delete(Deletion),
    /// Nothing more now: look again at this time (or at the next resync), or when it changes.
    Wait(Option<Instant>),
}

/// How a step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Went {
    /// Done (published and confirmed, sent, deleted, recorded).
    Done,
    /// Failed; the next look tries again.
    Failed,
    /// A status update whose token cannot be read yet.
    NotYet,
    /// The sequencer's answer to [`Step::AskLaunch`].
    Answer(Asked),
}

/// The most steps one look takes (each done step moves the record on, so a look ends sooner).
pub const MAX_STEPS: usize = 12;

impl Record {
    /// The record of a pod first seen now.
    pub fn new(now: Instant) -> Record {
        Record {
            first_seen: now,
            troubles: HashMap::new(),
            launch: Launch::Unknown,
            asked: None,
            scheduled: Scheduled::No,
            waiting_told: false,
            saw_running: false,
            running_sent: false,
            outcome: Outcome::Open,
            failure_told: false,
            deleted: false,
            idle_until: None,
        }
    }

    /// Starts a look: remembers when each current waiting reason was first seen and forgets the
    /// troubles that cleared, and the previous look's answer.
    pub fn look<'a>(&mut self, waiting_reasons: impl Iterator<Item = &'a str>, now: Instant) {
        let current: Vec<&'static str> = waiting_reasons.map(trouble_key).collect();
        self.troubles.retain(|k, _| current.contains(k));
        for k in current {
            self.troubles.entry(k).or_insert(now);
        }
        self.asked = None;
    }

    /// How long the trouble `key` has been seen.
    pub fn trouble_age(&self, key: &str, now: Instant) -> Duration {
        self.troubles
            .get(key)
            .map(|t| now.saturating_duration_since(*t))
            .unwrap_or_default()
    }

    /// Takes in what the look's verdict shows (before planning).
    pub fn saw(&mut self, verdict: &Verdict, clock: &Clock) {
        match (verdict, self.scheduled) {
            (Verdict::Pending { scheduled: true }, Scheduled::No) => {
                self.scheduled = Scheduled::Owed(clock.wall);
            }
            // First seen running (a reporter that took over): another told the API already.
            (Verdict::Running, Scheduled::No) => self.scheduled = Scheduled::Told,
            _ => {}
        }
        if *verdict == Verdict::Running {
            self.saw_running = true;
        }
    }

    /// Takes in how `step` went; true when the look goes on, false when it ends here (the
    /// next look tries again).
    pub fn apply(&mut self, step: &Step, went: Went, now: Instant) -> bool {
        match (step, went) {
            (Step::AskLaunch, Went::Answer(answer)) => {
                self.asked = Some(answer);
                if answer == Asked::State(LaunchState::Launched) {
                    self.launch = Launch::Recorded(now);
                }
                true
            }
            (Step::RecordLaunch, Went::Done) => {
                self.launch = Launch::Recorded(now);
                true
            }
            // Events still flow: the record is retried when the next look asks again.
            (Step::RecordLaunch, _) => {
                self.asked = Some(Asked::Unreachable);
                true
            }
            (Step::Publish(event), Went::Done) => {
                self.published(*event, now);
                true
            }
            (Step::Tell(update), Went::Done) => {
                match update {
                    Update::Scheduled { .. } => self.scheduled = Scheduled::Told,
                    Update::Waiting => self.waiting_told = true,
                    Update::Failure(_) => self.failure_told = true,
                }
                true
            }
            (Step::Delete(_), Went::Done) => {
                self.deleted = true;
                false
            }
            (Step::Wait(until), _) => {
                self.idle_until = *until;
                false
            }
            _ => false,
        }
    }

    fn published(&mut self, event: Event, now: Instant) {
        match event {
            Event::Launched => self.launch = Launch::Announced,
            Event::Running => self.running_sent = true,
            Event::LaunchFailed => self.outcome = Outcome::CannotStart,
            Event::Finished { tell } => {
                self.outcome = Outcome::Finished(now);
                self.failure_told = !tell;
            }
        }
    }

    /// How far the pod's events were published, for the next reporter ([`super::handover`]).
    pub fn reported(&self) -> Option<Reported> {
        match self.outcome {
            Outcome::Finished(_) if self.failure_told => Some(Reported::Finished),
            Outcome::CannotStart if self.failure_told => Some(Reported::CannotStart),
            _ if self.running_sent => Some(Reported::Running),
            _ => None,
        }
    }

    /// Takes in what the previous reporter left about this pod: its events are not published
    /// again (its launch was on the stream then; deleting the pod still waits for the record).
    pub fn handed_over(&mut self, reported: Reported, now: Instant) {
        self.launch = Launch::Announced;
        self.running_sent = true;
        self.scheduled = Scheduled::Told;
        self.waiting_told = true;
        match reported {
            Reported::Running => {}
            Reported::CannotStart => {
                self.outcome = Outcome::CannotStart;
                self.failure_told = true;
            }
            Reported::Finished => {
                self.outcome = Outcome::Finished(now);
                self.failure_told = true;
            }
        }
    }

    /// Deleted by the reporter.
    pub fn deleted(&self) -> bool {
        self.deleted
    }

    /// When the next resync should look at the pod (`None`: every resync).
    pub fn idle_until(&self) -> Option<Instant> {
        self.idle_until
    }

    /// The build ran to an outcome that is reported, Screwdriver was told what it had to be,
    /// and the launch is recorded: only the pod's collection is left. Gives when its outcome
    /// went out and when the record was learnt.
    pub fn only_collection_left(&self) -> Option<(Instant, Instant)> {
        match (self.outcome, self.launch) {
            (Outcome::Finished(at), Launch::Recorded(recorded))
                if self.failure_told && !self.deleted =>
            {
                Some((at, recorded))
            }
            _ => None,
        }
    }

    /// The scheduled time owed to Screwdriver, if any.
    pub fn scheduled_at(&self) -> Option<jiff::Timestamp> {
        match self.scheduled {
            Scheduled::Owed(at) => Some(at),
            _ => None,
        }
    }

    fn young(&self, observed: &Observed, clock: &Clock) -> bool {
        let age = observed
            .created_at
            .map_or(Duration::ZERO, |created| clock.since(created));
        age < LAUNCH_ANNOUNCE_WITHIN
    }
}

/// The next step for a pod seen as `observed`, given `record`.
pub fn plan(observed: &Observed, record: &Record, limits: &Limits, clock: &Clock) -> Step {
    if record.deleted || observed.deleting {
        return Step::Wait(None);
    }
    if !observed.known {
        return orphan(observed, clock, limits.pending_timeout);
    }
    let step = match &observed.verdict {
        Verdict::Pending { scheduled } => pending(observed, record, limits, clock, *scheduled),
        Verdict::Running => running(observed, record, limits, clock),
        Verdict::LaunchFailed { message, .. } => {
            cannot_start(observed, record, limits, clock, message)
        }
        Verdict::Succeeded | Verdict::Failed { .. } | Verdict::TimedOut { .. } => {
            finished(observed, record, limits, clock)
        }
    };
    step.unwrap_or(Step::Wait(None))
}

fn pending(o: &Observed, r: &Record, l: &Limits, c: &Clock, scheduled: bool) -> Option<Step> {
    if scheduled && let Some(step) = tell_scheduled(o, r) {
        return Some(step);
    }
    if !scheduled
        && !r.waiting_told
        && c.now.saturating_duration_since(r.first_seen) >= WAITING_AFTER
    {
        return Some(Step::Tell(Update::Waiting));
    }
    Some(orphan(o, c, lifetime(l)))
}

fn running(o: &Observed, r: &Record, l: &Limits, c: &Clock) -> Option<Step> {
    if !r.running_sent {
        return Some(launch_known(o, r, c).unwrap_or(Step::Publish(Event::Running)));
    }
    tell_scheduled(o, r).or_else(|| Some(orphan(o, c, lifetime(l))))
}

fn cannot_start(o: &Observed, r: &Record, l: &Limits, c: &Clock, message: &str) -> Option<Step> {
    if r.outcome == Outcome::Open {
        return Some(launch_known(o, r, c).unwrap_or(Step::Publish(Event::LaunchFailed)));
    }
    // The pod (and its token Secret) stays until the user has been told.
    if !r.failure_told {
        return Some(Step::Tell(Update::Failure(message.to_owned())));
    }
    let recorded = match launch_recorded(o, r, c) {
        Ok(at) => at,
        Err(step) => return Some(step),
    };
    (c.now.saturating_duration_since(recorded) >= l.busy_for)
        .then_some(Step::Delete(Deletion::CannotStart))
}

fn finished(o: &Observed, r: &Record, l: &Limits, c: &Clock) -> Option<Step> {
    if r.outcome == Outcome::Open {
        if let Some(step) = launch_known(o, r, c) {
            return Some(step);
        }
        // A build that ran and finished between two looks (or while its launch was not on the
        // stream yet) still reports that it ran, before its outcome.
        if !r.running_sent && (r.saw_running || o.ran) {
            return Some(Step::Publish(Event::Running));
        }
        return Some(Step::Publish(Event::Finished {
            tell: failure_to_tell(&o.verdict).is_some(),
        }));
    }
    if !r.failure_told
        && let Some(message) = failure_to_tell(&o.verdict)
    {
        return Some(Step::Tell(Update::Failure(message.to_owned())));
    }
    let recorded = match launch_recorded(o, r, c) {
        Ok(at) => at,
        Err(step) => return Some(step),
    };
    let at = match r.outcome {
        Outcome::Finished(at) => at,
        Outcome::Open | Outcome::CannotStart => r.first_seen,
    };
    let finished_for = finished_for(o.finished_at, at, c);
    let recorded_for = c.now.saturating_duration_since(recorded);
    Some(match collection(l, finished_for, recorded_for) {
        Ok(()) => Step::Delete(Deletion::Collect),
        Err(wait) => Step::Wait(Some(c.now + wait)),
    })
}

/// The FAILURE update owed after an outcome: the launcher reports its own result, so only the
/// deaths it cannot report are told.
fn failure_to_tell(verdict: &Verdict) -> Option<&str> {
    match verdict {
        Verdict::Failed {
            reason, message, ..
        } if matches!(reason.as_str(), "OOMKilled" | "Evicted" | "Failed") => Some(message),
        Verdict::TimedOut { message } => Some(message),
        _ => None,
    }
}

fn tell_scheduled(o: &Observed, r: &Record) -> Option<Step> {
    let at = r.scheduled_at()?;
    Some(Step::Tell(Update::Scheduled {
        hostname: o.node.clone().unwrap_or_default(),
        image_pull_start: format!("{at:.3}"),
    }))
}

/// `None` once events about the pod may go out; else the step that gets there.
///
/// The launching replica publishes `build.launched`, then records the launch; the reporter asks
/// the sequencer and waits while the pod is young. A launch still pending after
/// [`LAUNCH_ANNOUNCE_WITHIN`] lost its launcher: the reporter publishes the very same event (same
/// id, same data) and records the launch. One the sequencer knows nothing of was launched by a
/// replica of an earlier version, which announced it: the reporter only records it. A sequencer
/// that cannot be asked holds events back only while the pod is young.
fn launch_known(o: &Observed, r: &Record, c: &Clock) -> Option<Step> {
    if matches!(r.launch, Launch::Recorded(_)) {
        return None;
    }
    let young = r.young(o, c);
    let Some(asked) = r.asked else {
        return Some(Step::AskLaunch);
    };
    match asked {
        Asked::State(LaunchState::Launched) => None,
        Asked::Unreachable | Asked::State(_) if young => Some(Step::Wait(None)),
        Asked::Unreachable => None,
        Asked::State(LaunchState::Pending) if r.launch == Launch::Unknown => {
            Some(Step::Publish(Event::Launched))
        }
        Asked::State(_) => Some(Step::RecordLaunch),
    }
}

/// When the launch's record was learnt; else the step that gets it (or a wait).
fn launch_recorded(o: &Observed, r: &Record, c: &Clock) -> Result<Instant, Step> {
    if let Launch::Recorded(at) = r.launch {
        return Ok(at);
    }
    match r.asked {
        None => Err(Step::AskLaunch),
        Some(Asked::State(LaunchState::Pending | LaunchState::Unknown)) if !r.young(o, c) => {
            Err(Step::RecordLaunch)
        }
        Some(_) => Err(Step::Wait(None)),
    }
}

fn orphan(o: &Observed, c: &Clock, limit: Duration) -> Step {
    match o.created_at {
        Some(created) if c.since(created) >= limit => Step::Delete(Deletion::Orphan),
        _ => Step::Wait(None),
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
