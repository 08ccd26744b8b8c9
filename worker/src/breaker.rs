//! The long-lived circuit breaker of one executor's cluster.
//!
//! Owns the decision whether a call to a cluster may be made now: Closed (calls flow), Open
//! (calls fail fast for a period that grows with each consecutive trip) and HalfOpen (exactly
//! one probe call in flight). Beside that, the launch protocol's own reads and deletions pass a
//! breaker that is not closed, uncounted, one at a time ([`Admission::Side`]).
//! [`Breaker`] is a pure state machine driven by the `now` and the randomness its caller
//! passes in; [`SharedBreaker`] is the small thread-safe handle the cluster layer holds. It
//! never makes calls, sleeps, logs or records metrics itself: every state change is handed
//! back to the caller exactly once as a [`Transition`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::RngExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::BreakerSettings;

/// How a breaker counts failures and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Consecutive counted failures that open a closed breaker (0 is treated as 1).
    pub max_failures: u32,
    /// Open period after the first trip; doubles with each consecutive trip.
    pub reset_timeout: Duration,
    /// Cap of the open period (10 x `reset_timeout` by default).
    pub max_open: Duration,
    /// Fraction (0..=1) by which an open period may be shortened at random, so replicas that
    /// tripped together do not probe together.
    pub jitter: f64,
    /// A probe that has reported nothing after this long is presumed lost (its task was
    /// cancelled) and another probe is allowed.
    pub probe_timeout: Duration,
}

impl BreakerPolicy {
    /// Default share of the open period removed at random.
    pub const DEFAULT_JITTER: f64 = 0.2;

    /// The policy of an executor's `fusebox.breaker` block: open periods from `resetTimeout`
    /// up to ten times it, and a probe deadline of twice the call `timeout` (a probe is one
    /// call, bounded by that timeout, so one still silent by then was lost, not slow).
    pub fn from_settings(settings: &BreakerSettings) -> Self {
        Self {
            max_failures: settings.max_failures,
            reset_timeout: settings.reset_timeout,
            max_open: settings.reset_timeout.saturating_mul(10),
            jitter: Self::DEFAULT_JITTER,
            probe_timeout: settings.timeout.saturating_mul(2),
        }
    }

    /// The longest open period after consecutive trip `trip` (1-based):
    /// `min(max_open, reset_timeout * 2^(trip-1))`, without overflow for any `trip`.
    pub fn open_ceiling(&self, trip: u32) -> Duration {
        let grown = 1u32
            .checked_shl(trip.saturating_sub(1))
            .and_then(|factor| self.reset_timeout.checked_mul(factor));
        grown.map_or(self.max_open, |d| d.min(self.max_open))
    }

    /// The open period after trip `trip` for a random `unit` in `[0, 1)`: the ceiling,
    /// shortened by up to `jitter` of itself. Always within
    /// `[open_ceiling(trip) * (1 - jitter), open_ceiling(trip)]`.
    pub fn open_period(&self, trip: u32, unit: f64) -> Duration {
        let ceiling = self.open_ceiling(trip);
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let keep = 1.0 - self.jitter() * unit;
        Duration::try_from_secs_f64(ceiling.as_secs_f64() * keep)
            .map_or(ceiling, |d| d.min(ceiling))
    }

    fn jitter(&self) -> f64 {
        if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        }
    }

    fn threshold(&self) -> u32 {
        self.max_failures.max(1)
    }
}

/// The breaker's state as the outside sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls flow; failures are counted.
    Closed,
    /// One probe call may run; everything else is rejected until it answers.
    HalfOpen,
    /// Calls are rejected until the open period ends.
    Open,
}

impl State {
    /// The value of the `bcw_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open => 2.0,
        }
    }

    /// A bounded label (`closed`, `half_open`, `open`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }
}

/// How a call asks the breaker for leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Admission {
    /// Refused while the breaker is open; the outcome counts. Every call that can be failed
    /// over or put off: creates, and everything else by default.
    Guarded,
    /// A call the launch protocol needs to make progress on a build already placed or stopped
    /// (a look for its pod, a stop's deletion). Failing it fast helps nothing (the build waits
    /// for its answer, nothing is failed over), and creates that time out keep a breaker open
    /// while the cluster answers reads. So while the breaker is not closed, such calls are let
    /// through anyway, one at a time ([`SharedBreaker::admit`] gives them turns), and their
    /// outcome is not counted: it says nothing about creates. Closed, it is a call like any
    /// other.
    Side,
}

/// What a call's answer says about the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The cluster did its job.
    Success,
    /// The cluster is in trouble (5xx, 429, timeout, transport error): counts.
    Failure,
    /// The cluster answered but refused the request for the user's reasons (422, 409, 403 from
    /// an unknown RuntimeClass): does not count, but proves the cluster is up.
    Neutral,
}

/// A state change, handed to the caller exactly once so it can emit metrics and events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// The breaker opened (from Closed, or again after a failed probe).
    Opened {
        /// Consecutive counted failures since the last success (failed probes included).
        consecutive_failures: u32,
        /// How long it stays open.
        open_for: Duration,
        /// Consecutive trips without a close in between (1 for the first).
        trip: u32,
    },
    /// The open period ended; the next call is the probe.
    HalfOpened,
    /// A probe got an answer: the breaker closed and forgot its trips.
    Closed,
}

impl Transition {
    /// The state the breaker is in after this transition.
    pub fn state(&self) -> State {
        match self {
            Transition::Opened { .. } => State::Open,
            Transition::HalfOpened => State::HalfOpen,
            Transition::Closed => State::Closed,
        }
    }
}

/// Leave to make one call. Hand it back with [`Breaker::record`] (or [`Breaker::abandon`]);
/// a permit from before a state change is stale and its result is ignored.
#[derive(Debug)]
#[must_use = "a permit must be recorded (or abandoned) so the breaker learns the outcome"]
pub struct Permit {
    kind: PermitKind,
    epoch: u64,
    half_opened: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PermitKind {
    Normal,
    Probe(u64),
    Side,
}

impl Permit {
    /// Whether this is the half-open breaker's probe call.
    pub fn is_probe(&self) -> bool {
        matches!(self.kind, PermitKind::Probe(_))
    }

    /// Whether this is a side call let through a breaker that is not closed.
    pub fn is_side(&self) -> bool {
        matches!(self.kind, PermitKind::Side)
    }

    /// `Some(HalfOpened)` when acquiring this permit ended the open period (reported here
    /// because no other call returns it).
    pub fn transition(&self) -> Option<Transition> {
        self.half_opened.then_some(Transition::HalfOpened)
    }
}

/// A call refused by the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker open, retry in {retry_in:?}")]
pub struct Rejected {
    /// How long until a call may be tried: the rest of the open period, or the rest of the
    /// probe's deadline while a probe is in flight (it may answer earlier).
    pub retry_in: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probe: Option<Probe> },
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    id: u64,
    deadline: Instant,
}

/// The pure breaker state machine.
#[derive(Debug, Clone)]
pub struct Breaker {
    policy: BreakerPolicy,
    phase: Phase,
    /// Consecutive counted failures since the last success or close.
    failures: u32,
    /// Consecutive trips since the last close.
    trips: u32,
    /// Bumped on every transition; permits carry the epoch they were granted in.
    epoch: u64,
    next_probe: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            phase: Phase::Closed,
            failures: 0,
            trips: 0,
            epoch: 0,
            next_probe: 0,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    /// The state at `now`: HalfOpen as soon as the open period has passed, even before
    /// [`Breaker::poll`] or [`Breaker::try_acquire`] has reported the transition.
    pub fn state(&self, now: Instant) -> State {
        match self.phase {
            Phase::Closed => State::Closed,
            Phase::Open { until } if now < until => State::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Applies the time-driven transition (the end of the open period) and reports it once.
    /// Calling it is optional: [`Breaker::try_acquire`] does the same.
    pub fn poll(&mut self, now: Instant) -> Option<Transition> {
        match self.phase {
            Phase::Open { until } if now >= until => {
                self.phase = Phase::HalfOpen { probe: None };
                self.epoch += 1;
                Some(Transition::HalfOpened)
            }
            _ => None,
        }
    }

    /// Asks to make one call at `now`. Closed: always granted. Open: rejected until the open
    /// period ends; then the first caller gets the probe. HalfOpen: granted to one probe at a
    /// time; a probe silent past its deadline is presumed lost and replaced.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Permit, Rejected> {
        let half_opened = self.poll(now).is_some();
        match self.phase {
            Phase::Closed => Ok(self.permit(PermitKind::Normal, half_opened)),
            Phase::Open { until } => Err(Rejected {
                retry_in: until.saturating_duration_since(now),
            }),
            Phase::HalfOpen { probe: Some(probe) } if now < probe.deadline => Err(Rejected {
                retry_in: probe.deadline.saturating_duration_since(now),
            }),
            Phase::HalfOpen { .. } => {
                let id = self.next_probe;
                self.next_probe += 1;
                self.phase = Phase::HalfOpen {
                    probe: Some(Probe {
                        id,
                        deadline: later(now, self.policy.probe_timeout),
                    }),
                };
                Ok(self.permit(PermitKind::Probe(id), half_opened))
            }
        }
    }

    /// Leave for one [`Admission::Side`] call, always given: a normal permit while closed, an
    /// uncounted side permit otherwise. The breaker's state does not change (the end of an open
    /// period is left to [`Breaker::poll`] and guarded calls, which report it).
    pub fn acquire_side(&self) -> Permit {
        let kind = match self.phase {
            Phase::Closed => PermitKind::Normal,
            Phase::Open { .. } | Phase::HalfOpen { .. } => PermitKind::Side,
        };
        self.permit(kind, false)
    }

    /// Records the outcome of a permitted call at `now`; `unit` in `[0, 1)` draws the jitter
    /// of the open period if this opens the breaker. Results of stale permits (granted before
    /// the last state change, or a probe that was replaced) are ignored.
    pub fn record(
        &mut self,
        permit: Permit,
        outcome: Outcome,
        now: Instant,
        unit: f64,
    ) -> Option<Transition> {
        if permit.kind == PermitKind::Side {
            return None;
        }
        if permit.epoch != self.epoch {
            return None;
        }
        match (self.phase, permit.kind) {
            (Phase::Closed, PermitKind::Normal) => match outcome {
                Outcome::Success => {
                    self.failures = 0;
                    None
                }
                Outcome::Neutral => None,
                Outcome::Failure => {
                    self.failures = self.failures.saturating_add(1);
                    (self.failures >= self.policy.threshold()).then(|| self.open(now, unit))
                }
            },
            (Phase::HalfOpen { probe: Some(probe) }, PermitKind::Probe(id)) if probe.id == id => {
                match outcome {
                    Outcome::Success | Outcome::Neutral => Some(self.close()),
                    Outcome::Failure => {
                        self.failures = self.failures.saturating_add(1);
                        Some(self.open(now, unit))
                    }
                }
            }
            _ => None,
        }
    }

    /// Hands back a permit whose call ended without an answer (its task was cancelled). An
    /// abandoned probe frees the probe slot at once; anything else changes nothing.
    pub fn abandon(&mut self, permit: Permit) {
        if permit.epoch != self.epoch {
            return;
        }
        if let (Phase::HalfOpen { probe: Some(probe) }, PermitKind::Probe(id)) =
            (self.phase, permit.kind)
            && probe.id == id
        {
            self.phase = Phase::HalfOpen { probe: None };
        }
    }

    /// Consecutive counted failures since the last success or close.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    fn permit(&self, kind: PermitKind, half_opened: bool) -> Permit {
        Permit {
            kind,
            epoch: self.epoch,
            half_opened,
        }
    }

    fn open(&mut self, now: Instant, unit: f64) -> Transition {
        self.trips = self.trips.saturating_add(1);
        let open_for = self.policy.open_period(self.trips, unit);
        self.phase = Phase::Open {
            until: later(now, open_for),
        };
        self.epoch += 1;
        Transition::Opened {
            consecutive_failures: self.failures,
            open_for,
            trip: self.trips,
        }
    }

    fn close(&mut self) -> Transition {
        self.phase = Phase::Closed;
        self.failures = 0;
        self.trips = 0;
        self.epoch += 1;
        Transition::Closed
    }
}

/// `now + d`, saturating at a year ahead instead of overflowing the clock on absurd settings.
fn later(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(365 * 86_400);
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

/// A breaker shared by every task that calls one cluster. The lock is a std mutex held only
/// for a state update, never across an await.
#[derive(Debug, Clone)]
pub struct SharedBreaker {
    inner: Arc<Mutex<Breaker>>,
    /// The side calls' turn while the breaker is not closed: one at a time, so a cluster in
    /// trouble gets no more from them than one call in flight.
    side_turn: Arc<Semaphore>,
}

impl SharedBreaker {
    /// A closed breaker with this policy.
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Breaker::new(policy))),
            side_turn: Arc::new(Semaphore::new(1)),
        }
    }

    /// The state now (tokio's clock), for the `bcw_breaker_state` gauge.
    pub fn state(&self) -> State {
        lock(&self.inner).state(Instant::now())
    }

    /// Reports the end of the open period once, if it has come (for a periodic gauge
    /// update; calls made through [`SharedBreaker::try_acquire`] report it too).
    pub fn poll(&self) -> Option<Transition> {
        lock(&self.inner).poll(Instant::now())
    }

    /// Asks to make one call now. The returned [`Call`] must be given its outcome; dropping it
    /// unrecorded (a cancelled task) frees a probe slot at once.
    pub fn try_acquire(&self) -> Result<Call, Rejected> {
        let permit = lock(&self.inner).try_acquire(Instant::now())?;
        Ok(self.call(permit, None))
    }

    /// Asks to make one call now, as `admission` says. A side call through a breaker that is
    /// not closed first waits for its turn, at most the probe deadline (twice the call
    /// timeout: the call holding the turn has ended by then, or the cluster is hanging).
    pub async fn admit(&self, admission: Admission) -> Result<Call, Rejected> {
        if admission == Admission::Guarded {
            return self.try_acquire();
        }
        let turn = if self.state() == State::Closed {
            None
        } else {
            let wait = lock(&self.inner).policy().probe_timeout;
            let turn = Arc::clone(&self.side_turn).acquire_owned();
            let Ok(Ok(turn)) = tokio::time::timeout(wait, turn).await else {
                return Err(Rejected {
                    retry_in: Duration::ZERO,
                });
            };
            Some(turn)
        };
        let permit = lock(&self.inner).acquire_side();
        Ok(self.call(permit, turn))
    }

    fn call(&self, permit: Permit, turn: Option<OwnedSemaphorePermit>) -> Call {
        Call {
            breaker: Arc::clone(&self.inner),
            permit: Some(permit),
            _turn: turn,
        }
    }
}

/// One permitted call on a [`SharedBreaker`].
#[derive(Debug)]
#[must_use = "a call must be recorded so the breaker learns the outcome"]
pub struct Call {
    breaker: Arc<Mutex<Breaker>>,
    permit: Option<Permit>,
    /// A side call's turn, held until the call is recorded or dropped.
    _turn: Option<OwnedSemaphorePermit>,
}

impl Call {
    /// Whether this is the half-open breaker's probe.
    pub fn is_probe(&self) -> bool {
        self.permit.as_ref().is_some_and(Permit::is_probe)
    }

    /// Whether this is a side call let through a breaker that is not closed.
    pub fn is_side(&self) -> bool {
        self.permit.as_ref().is_some_and(Permit::is_side)
    }

    /// `Some(HalfOpened)` when acquiring this call ended the open period.
    pub fn transition(&self) -> Option<Transition> {
        self.permit.as_ref().and_then(Permit::transition)
    }

    /// Records the call's outcome now; `rng` draws the open period's jitter.
    pub fn record(mut self, outcome: Outcome, rng: &mut impl rand::Rng) -> Option<Transition> {
        let permit = self.permit.take()?;
        let unit: f64 = rng.random();
        lock(&self.breaker).record(permit, outcome, Instant::now(), unit)
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            lock(&self.breaker).abandon(permit);
        }
    }
}

/// The breaker is consistent after any panic (every update is a few plain assignments), so a
/// poisoned lock is used as is rather than wedging the executor.
fn lock(m: &Mutex<Breaker>) -> std::sync::MutexGuard<'_, Breaker> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            max_failures: 3,
            reset_timeout: secs(10),
            max_open: secs(100),
            jitter: 0.2,
            probe_timeout: secs(20),
        }
    }

    /// A breaker driven by hand: `now` moves only when the test says so.
    struct Rig {
        b: Breaker,
        now: Instant,
    }

    impl Rig {
        fn new() -> Self {
            Self {
                b: Breaker::new(policy()),
                now: Instant::now(),
            }
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
        }

        fn acquire(&mut self) -> Result<Permit, Rejected> {
            self.b.try_acquire(self.now)
        }

        /// One whole call with this outcome and no jitter.
        fn call(&mut self, outcome: Outcome) -> Option<Transition> {
            let permit = self.acquire().expect("call permitted");
            self.b.record(permit, outcome, self.now, 0.0)
        }

        fn state(&self) -> State {
            self.b.state(self.now)
        }

        /// Opens the breaker from Closed with `max_failures` failures.
        fn trip(&mut self) -> Option<Transition> {
            let mut last = None;
            for _ in 0..self.b.policy().max_failures {
                last = self.call(Outcome::Failure);
            }
            last
        }
    }

    fn opened(consecutive_failures: u32, open_for: u64, trip: u32) -> Option<Transition> {
        Some(Transition::Opened {
            consecutive_failures,
            open_for: secs(open_for),
            trip,
        })
    }

    #[test]
    fn opens_after_max_failures_consecutive_failures_and_a_success_resets_the_count() {
        let mut r = Rig::new();
        assert_eq!(r.call(Outcome::Failure), None);
        assert_eq!(r.call(Outcome::Failure), None);
        assert_eq!(r.call(Outcome::Success), None);
        assert_eq!(r.call(Outcome::Failure), None);
        assert_eq!(r.call(Outcome::Failure), None);
        assert_eq!(r.state(), State::Closed);
        assert_eq!(r.call(Outcome::Failure), opened(3, 10, 1));
        assert_eq!(r.state(), State::Open);
    }

    #[test]
    fn neutral_answers_neither_count_nor_reset_in_closed() {
        let mut r = Rig::new();
        r.call(Outcome::Failure);
        r.call(Outcome::Failure);
        for _ in 0..10 {
            assert_eq!(r.call(Outcome::Neutral), None);
        }
        assert_eq!(r.b.consecutive_failures(), 2);
        assert_eq!(r.call(Outcome::Failure), opened(3, 10, 1));
    }

    #[test]
    fn an_open_breaker_rejects_and_says_how_long_to_wait() {
        let mut r = Rig::new();
        r.trip();
        r.advance(secs(4));
        assert_eq!(r.acquire().unwrap_err(), Rejected { retry_in: secs(6) });
        r.advance(Duration::from_millis(5999));
        assert_eq!(
            r.acquire().unwrap_err(),
            Rejected {
                retry_in: Duration::from_millis(1)
            }
        );
    }

    #[test]
    fn exactly_one_probe_once_the_open_period_is_over() {
        let mut r = Rig::new();
        r.trip();
        r.advance(secs(10));
        assert_eq!(r.state(), State::HalfOpen);
        let probe = r.acquire().unwrap();
        assert!(probe.is_probe());
        assert_eq!(probe.transition(), Some(Transition::HalfOpened));
        for _ in 0..5 {
            assert_eq!(r.acquire().unwrap_err(), Rejected { retry_in: secs(20) });
        }
        r.advance(secs(1));
        assert_eq!(r.acquire().unwrap_err(), Rejected { retry_in: secs(19) });
        assert_eq!(r.state(), State::HalfOpen);
        assert_eq!(
            r.b.record(probe, Outcome::Success, r.now, 0.0),
            Some(Transition::Closed)
        );
        assert!(!r.acquire().unwrap().is_probe());
    }

    #[test]
    fn failed_probes_reopen_for_doubling_periods_up_to_the_cap() {
        let mut r = Rig::new();
        assert_eq!(r.trip(), opened(3, 10, 1));
        let mut periods = Vec::new();
        let mut open_for = secs(10);
        for _ in 0..5 {
            r.advance(open_for);
            match r.call(Outcome::Failure) {
                Some(Transition::Opened { open_for: next, .. }) => open_for = next,
                other => panic!("a failed probe reopens the breaker, got {other:?}"),
            }
            periods.push(open_for.as_secs());
        }
        assert_eq!(periods, [20, 40, 80, 100, 100]);
        assert_eq!(r.b.consecutive_failures(), 8);
    }

    #[test]
    fn a_closing_probe_forgets_the_trips() {
        let mut r = Rig::new();
        r.trip();
        r.advance(secs(10));
        r.call(Outcome::Failure);
        r.advance(secs(20));
        assert_eq!(r.call(Outcome::Success), Some(Transition::Closed));
        assert_eq!(r.b.consecutive_failures(), 0);
        assert_eq!(r.trip(), opened(3, 10, 1));
    }

    #[test]
    fn a_neutral_probe_answer_proves_the_cluster_is_up() {
        let mut r = Rig::new();
        r.trip();
        r.advance(secs(10));
        assert_eq!(r.call(Outcome::Neutral), Some(Transition::Closed));
        assert_eq!(r.state(), State::Closed);
    }

    #[test]
    fn a_lost_probe_is_replaced_after_its_deadline_and_its_late_answer_ignored() {
        let mut r = Rig::new();
        r.trip();
        r.advance(secs(10));
        let lost = r.acquire().unwrap();
        r.advance(secs(19));
        assert!(r.acquire().is_err());
        r.advance(secs(1));
        let second = r.acquire().unwrap();
        assert!(second.is_probe());
        assert_eq!(second.transition(), None, "HalfOpened was reported already");
        assert!(r.acquire().is_err(), "still one probe at a time");
        assert_eq!(r.b.record(lost, Outcome::Success, r.now, 0.0), None);
        assert_eq!(r.state(), State::HalfOpen);
        assert_eq!(
            r.b.record(second, Outcome::Success, r.now, 0.0),
            Some(Transition::Closed)
        );
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot_at_once() {
        let mut r = Rig::new();
        r.trip();
        r.advance(secs(10));
        let probe = r.acquire().unwrap();
        r.b.abandon(probe);
        let next = r.acquire().unwrap();
        assert!(next.is_probe());
    }

    #[test]
    fn answers_to_calls_from_before_a_state_change_are_ignored() {
        let mut r = Rig::new();
        let early: Vec<Permit> = (0..4).map(|_| r.acquire().unwrap()).collect();
        r.trip();
        for p in early {
            assert_eq!(r.b.record(p, Outcome::Success, r.now, 0.0), None);
        }
        assert_eq!(r.state(), State::Open);

        r.advance(secs(10));
        let before_close = r.acquire().unwrap();
        r.b.record(before_close, Outcome::Success, r.now, 0.0);
        let old = r.acquire().unwrap();
        r.trip();
        r.advance(secs(10));
        r.call(Outcome::Success);
        // `old` was granted in an earlier closed period: its failure must not count now.
        assert_eq!(r.b.record(old, Outcome::Failure, r.now, 0.0), None);
        assert_eq!(r.b.consecutive_failures(), 0);
    }

    #[test]
    fn every_transition_is_reported_exactly_once() {
        let mut r = Rig::new();
        r.trip();
        r.advance(secs(10));
        assert_eq!(r.b.poll(r.now), Some(Transition::HalfOpened));
        assert_eq!(r.b.poll(r.now), None);
        let probe = r.acquire().unwrap();
        assert_eq!(probe.transition(), None);
        r.b.abandon(probe);
    }

    #[test]
    fn jitter_only_shortens_the_open_period() {
        let p = policy();
        assert_eq!(p.open_period(1, 0.0), secs(10));
        assert_eq!(p.open_period(1, 0.5), secs(9));
        assert_eq!(p.open_period(2, 1.0), secs(16));
        assert_eq!(p.open_period(9, 0.0), secs(100));
        assert_eq!(p.open_period(u32::MAX, 0.0), secs(100));
        assert_eq!(p.open_period(1, f64::NAN), secs(10));
    }

    #[test]
    fn the_fusebox_block_becomes_a_policy() {
        let p = BreakerPolicy::from_settings(&BreakerSettings::default());
        assert_eq!(p.max_failures, 5);
        assert_eq!(p.reset_timeout, secs(30));
        assert_eq!(p.max_open, secs(300));
        assert_eq!(p.probe_timeout, secs(20));
    }

    #[test]
    fn gauge_values_follow_the_contract() {
        assert_eq!(State::Closed.as_gauge(), 0.0);
        assert_eq!(State::HalfOpen.as_gauge(), 1.0);
        assert_eq!(State::Open.as_gauge(), 2.0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_shared_breaker_runs_on_tokio_time() {
        let breaker = SharedBreaker::new(policy());
        let mut rng = StdRng::seed_from_u64(7);
        let mut last = None;
        for _ in 0..3 {
            last = breaker
                .try_acquire()
                .unwrap()
                .record(Outcome::Failure, &mut rng);
        }
        let Some(Transition::Opened {
            open_for, trip: 1, ..
        }) = last
        else {
            panic!("expected the breaker to open, got {last:?}");
        };
        assert!(open_for >= secs(8) && open_for <= secs(10), "{open_for:?}");
        assert_eq!(breaker.state(), State::Open);
        let rejected = breaker.try_acquire().unwrap_err();
        assert_eq!(rejected.retry_in, open_for);

        tokio::time::advance(open_for).await;
        assert_eq!(breaker.state(), State::HalfOpen);
        let probe = breaker.try_acquire().unwrap();
        assert_eq!(probe.transition(), Some(Transition::HalfOpened));
        assert!(breaker.try_acquire().is_err());

        // The task holding the probe is cancelled: the slot is free again at once.
        drop(probe);
        let probe = breaker.try_acquire().unwrap();
        assert!(probe.is_probe());
        assert_eq!(
            probe.record(Outcome::Success, &mut rng),
            Some(Transition::Closed)
        );
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.poll(), None);
    }

    #[test]
    fn side_calls_pass_a_breaker_that_is_not_closed_and_change_nothing() {
        let mut r = Rig::new();
        let closed = r.b.acquire_side();
        assert!(
            !closed.is_side(),
            "closed: a side call is an ordinary, counted call"
        );
        assert_eq!(r.b.record(closed, Outcome::Success, r.now, 0.0), None);
        assert!(matches!(r.trip(), Some(Transition::Opened { .. })));
        assert!(r.acquire().is_err(), "guarded calls are refused while open");

        // A failure of a side call does not reopen or lengthen anything.
        let side = r.b.acquire_side();
        assert!(side.is_side());
        assert_eq!(r.b.record(side, Outcome::Failure, r.now, 0.0), None);
        assert_eq!(r.state(), State::Open);

        // The open period ends while a side call is in flight: the probe is still free, and
        // the side call's success does not close the breaker.
        let side = r.b.acquire_side();
        r.advance(secs(10));
        let probe = r.acquire().unwrap();
        assert!(probe.is_probe());
        assert!(r.b.acquire_side().is_side(), "half-open: still a side call");
        assert_eq!(r.b.record(side, Outcome::Success, r.now, 0.0), None);
        assert_eq!(r.state(), State::HalfOpen);
        assert_eq!(
            r.b.record(probe, Outcome::Success, r.now, 0.0),
            Some(Transition::Closed)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn side_calls_take_turns_while_the_breaker_is_open_and_give_up_after_the_probe_deadline()
    {
        let breaker = SharedBreaker::new(policy());
        let mut rng = StdRng::seed_from_u64(3);
        let first = breaker.admit(Admission::Side).await.unwrap();
        let second = breaker.admit(Admission::Side).await.unwrap();
        assert!(!first.is_side() && !second.is_side(), "closed: no turns");
        drop((first, second));
        for _ in 0..3 {
            let _ = breaker
                .try_acquire()
                .unwrap()
                .record(Outcome::Failure, &mut rng);
        }
        let first = breaker.admit(Admission::Side).await.unwrap();
        assert!(first.is_side());
        let waiting = {
            let breaker = breaker.clone();
            tokio::spawn(async move { breaker.admit(Admission::Side).await.map(|c| c.is_side()) })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the second waits for its turn");
        assert_eq!(first.record(Outcome::Success, &mut rng), None);
        assert_eq!(waiting.await.unwrap(), Ok(true), "its turn came");

        // A turn held past the probe deadline (twice the call timeout) is given up on.
        let _stuck = breaker.admit(Admission::Side).await.unwrap();
        let started = Instant::now();
        assert!(breaker.admit(Admission::Side).await.is_err());
        assert_eq!(started.elapsed(), secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_task_does_not_wedge_the_breaker() {
        let breaker = SharedBreaker::new(policy());
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..3 {
            let _ = breaker
                .try_acquire()
                .unwrap()
                .record(Outcome::Failure, &mut rng);
        }
        tokio::time::advance(secs(10)).await;
        let task = {
            let breaker = breaker.clone();
            tokio::spawn(async move {
                let _probe = breaker.try_acquire().unwrap();
                std::future::pending::<()>().await;
            })
        };
        tokio::task::yield_now().await;
        assert!(breaker.try_acquire().is_err(), "the task holds the probe");
        task.abort();
        let _ = task.await;
        assert!(breaker.try_acquire().unwrap().is_probe());
    }

    // ---- property tests: the breaker against a model, after any sequence of events ----

    #[derive(Debug, Clone)]
    enum Op {
        Acquire,
        AcquireSide,
        Record(usize, Outcome, f64),
        Abandon(usize),
        Advance(u64),
        Poll,
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            3 => Just(Outcome::Failure),
            1 => Just(Outcome::Success),
            1 => Just(Outcome::Neutral),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Acquire),
            2 => Just(Op::AcquireSide),
            4 => (any::<usize>(), outcome(), 0.0f64..1.0).prop_map(|(i, o, u)| Op::Record(i, o, u)),
            1 => any::<usize>().prop_map(Op::Abandon),
            3 => (0u64..40_000).prop_map(Op::Advance),
            1 => Just(Op::Poll),
        ]
    }

    fn any_policy() -> impl Strategy<Value = BreakerPolicy> {
        (1u32..6, 1u64..10_000, 1u32..12, 0.0f64..=1.0, 1u64..20_000).prop_map(
            |(max_failures, reset_ms, cap_factor, jitter, probe_ms)| BreakerPolicy {
                max_failures,
                reset_timeout: Duration::from_millis(reset_ms),
                max_open: Duration::from_millis(reset_ms * u64::from(cap_factor)),
                jitter,
                probe_timeout: Duration::from_millis(probe_ms),
            },
        )
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Model {
        Closed,
        Open { until: Instant },
        HalfOpen,
    }

    struct Held {
        permit: Permit,
        period: u64,
        seq: u64,
        issued: Instant,
    }

    /// `min(max_open, reset * 2^(trip-1))`, computed independently of the code under test.
    fn ceiling(p: &BreakerPolicy, trip: u32) -> Duration {
        let factor = 1u128 << (trip - 1).min(100);
        let nanos = p.reset_timeout.as_nanos().saturating_mul(factor);
        Duration::from_nanos(nanos.min(p.max_open.as_nanos()) as u64)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn open_periods_stay_within_their_bounds(p in any_policy(), trip in 1u32..80, unit in 0.0f64..1.0) {
            let hi = ceiling(&p, trip);
            let lo = hi.mul_f64(1.0 - p.jitter);
            let d = p.open_period(trip, unit);
            prop_assert!(d <= hi && d + Duration::from_nanos(1) >= lo, "{d:?} not in [{lo:?}, {hi:?}]");
            prop_assert!(p.open_ceiling(trip) <= p.open_ceiling(trip + 1));
        }

        #[test]
        fn the_breaker_follows_its_model_for_any_sequence(
            p in any_policy(),
            ops in prop::collection::vec(op(), 1..200),
        ) {
            let mut b = Breaker::new(p);
            let mut now = Instant::now();
            let mut model = Model::Closed;
            let mut period = 0u64; // bumped on every transition the breaker reports
            let mut fails = 0u32;
            let mut trips = 0u32;
            let mut seq = 0u64;
            let mut current_probe: Option<u64> = None;
            let mut held: Vec<Held> = Vec::new();

            for op in ops {
                match op {
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Poll => {
                        let t = b.poll(now);
                        let due = matches!(model, Model::Open { until } if now >= until);
                        prop_assert_eq!(t, due.then_some(Transition::HalfOpened));
                        if due {
                            model = Model::HalfOpen;
                            period += 1;
                            current_probe = None;
                        }
                    }
                    Op::Acquire => match b.try_acquire(now) {
                        Ok(permit) => {
                            if permit.transition().is_some() {
                                let due = matches!(model, Model::Open { until } if now >= until);
                                prop_assert!(due, "half-opened before the open period ended");
                                model = Model::HalfOpen;
                                period += 1;
                                current_probe = None;
                            }
                            if permit.is_probe() {
                                prop_assert_eq!(model, Model::HalfOpen);
                                let live = held.iter().filter(|h| h.permit.is_probe() && h.issued + p.probe_timeout > now).count();
                                prop_assert_eq!(live, 0, "a second probe while one is in flight");
                                current_probe = Some(seq);
                            } else {
                                prop_assert_eq!(model, Model::Closed, "a normal call outside Closed");
                            }
                            held.push(Held { permit, period, seq, issued: now });
                            seq += 1;
                        }
                        Err(rejected) => match model {
                            Model::Closed => prop_assert!(false, "rejected while closed"),
                            Model::Open { until } => {
                                prop_assert!(now < until, "still open after its period");
                                prop_assert_eq!(rejected.retry_in, until - now);
                            }
                            Model::HalfOpen => {
                                let live = held.iter().any(|h| {
                                    h.permit.is_probe() && h.issued + p.probe_timeout > now
                                        && Some(h.seq) == current_probe
                                });
                                prop_assert!(live, "rejected in HalfOpen without a probe in flight");
                                prop_assert!(rejected.retry_in <= p.probe_timeout);
                            }
                        },
                    },
                    Op::AcquireSide => {
                        let permit = b.acquire_side();
                        prop_assert_eq!(permit.transition(), None, "a side call changed the breaker");
                        prop_assert_eq!(permit.is_side(), model != Model::Closed);
                        held.push(Held { permit, period, seq, issued: now });
                        seq += 1;
                    }
                    Op::Abandon(i) => {
                        if held.is_empty() { continue; }
                        let h = held.remove(i % held.len());
                        if h.period == period && Some(h.seq) == current_probe {
                            current_probe = None;
                        }
                        b.abandon(h.permit);
                    }
                    Op::Record(i, outcome, unit) => {
                        if held.is_empty() { continue; }
                        let h = held.remove(i % held.len());
                        if h.permit.is_side() {
                            prop_assert_eq!(b.record(h.permit, outcome, now, unit), None, "a side call changed the breaker");
                            continue;
                        }
                        let fresh = h.period == period;
                        let is_probe = h.permit.is_probe();
                        let is_current_probe = is_probe && Some(h.seq) == current_probe;
                        let t = b.record(h.permit, outcome, now, unit);
                        let expected_open = match (fresh, is_probe, outcome) {
                            (false, ..) => false,
                            (true, false, Outcome::Failure) => { fails += 1; fails >= p.max_failures }
                            (true, false, Outcome::Success) => { fails = 0; false }
                            (true, false, Outcome::Neutral) => false,
                            (true, true, Outcome::Failure) if is_current_probe => { fails += 1; true }
                            (true, true, _) => false,
                        };
                        let expected_close = fresh && is_current_probe && outcome != Outcome::Failure;
                        match t {
                            None => prop_assert!(!expected_open && !expected_close, "missed transition"),
                            Some(Transition::Closed) => {
                                prop_assert!(expected_close, "closed without a probe's answer");
                                model = Model::Closed;
                                fails = 0;
                                trips = 0;
                                period += 1;
                                current_probe = None;
                            }
                            Some(Transition::Opened { consecutive_failures, open_for, trip }) => {
                                prop_assert!(expected_open, "opened unexpectedly");
                                prop_assert!(consecutive_failures >= p.max_failures, "opened before max_failures");
                                prop_assert_eq!(consecutive_failures, fails);
                                trips += 1;
                                prop_assert_eq!(trip, trips);
                                let hi = ceiling(&p, trip);
                                let lo = hi.mul_f64(1.0 - p.jitter);
                                prop_assert!(open_for <= hi && open_for + Duration::from_nanos(1) >= lo);
                                model = Model::Open { until: now + open_for };
                                period += 1;
                                current_probe = None;
                            }
                            Some(Transition::HalfOpened) => prop_assert!(false, "record never half-opens"),
                        }
                    }
                }
                let expected_state = match model {
                    Model::Closed => State::Closed,
                    Model::Open { until } if now < until => State::Open,
                    Model::Open { .. } | Model::HalfOpen => State::HalfOpen,
                };
                prop_assert_eq!(b.state(now), expected_state);
            }
        }
    }
}
