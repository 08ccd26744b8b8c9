//! Dispatch: what happens to one delivery, from its bytes to its ack.
//!
//! Decodes the message ([`crate::intake`]), carries out the job ([`crate::launch`],
//! [`crate::cache`]), and settles the delivery only after everything it caused is durable:
//! events confirmed, the retry or dead-letter copy confirmed by the broker. Anything that fails
//! on the way returns the message to its queue untouched, so nothing is lost; handling is
//! idempotent, so nothing happens twice.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::FieldTable;
use tracing::{Instrument, error, info, info_span, warn};

use crate::broker::headers::{self, Carried};
use crate::broker::{Handler, Inbound, Outgoing, Publisher, Source, Topology};
use crate::cache::{self, ClearError, ClearOutcome};
use crate::config::CacheSettings;
use crate::events::{
    BuildEvent, BuildRef, BuildState, DeadLettered, DeadlineExceeded, Launched, OutgoingEvent,
    Retrying, Stopped, Verified, build_event,
};
use crate::health::Readiness;
use crate::intake::{self, BuildId, Job, JobKind, Limits, PoisonReason, StartBuild};
use crate::launch::{Announce, Launcher, PodRef, Started, StopOutcome};
use crate::protocol::{DeadReason, Outcome, WaitReason};
use crate::status::{StatusUpdater, Update};
use crate::telemetry::metrics;
use crate::watch::assess::Verdict;

/// Longest a build is held in process while waiting for an executor (administrator's layout,
/// which has no delay queues of its own for waiting): then it goes back to the end of its
/// queue, with the time it has waited, so that a replica whose executors work can take it.
pub const HOLD_AT_MOST: Duration = Duration::from_secs(30);
/// How long a build waits before it is looked at again when nothing says otherwise.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// Message policy from the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Intake limits.
    pub limits: Limits,
    /// Attempts before dead-lettering.
    pub reprocess_limit: u32,
    /// Longest wait for a usable executor.
    pub max_wait: Duration,
    /// Disk cache settings for `clear`.
    pub cache: CacheSettings,
}

/// Handles every delivery of a replica.
#[derive(Debug)]
pub struct Dispatcher {
    launcher: Launcher,
    publisher: Publisher,
    topology: Topology,
    policy: Policy,
    source: String,
    status: Option<Arc<StatusUpdater>>,
    dead_queue_exists: AtomicBool,
    readiness: Readiness,
}

/// A build counted as waiting in memory (metric and `/readyz`) while this lives.
struct Holding<'a>(&'a Readiness);

impl<'a> Holding<'a> {
    fn start(readiness: &'a Readiness) -> Holding<'a> {
        readiness.build_waiting(true);
        Holding(readiness)
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.build_waiting(false);
    }
}

/// How a delivery was handled: the `outcome` label of `bcw_messages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// A pod was created.
    Launched,
    /// An existing pod of the build was adopted.
    Adopted,
    /// A stop was carried out, or a start of a stopped build ended.
    Stopped,
    /// A late copy of a build whose pod is gone.
    Finished,
    /// A copy of a build launched on an executor that cannot be looked at now.
    Duplicate,
    /// A `verify` was answered.
    Verified,
    /// A `clear` was carried out.
    Cleared,
    /// A message with nothing to do.
    Ignored,
    /// A job that failed and will not be retried.
    Failed,
    /// Sent to a delay queue for another attempt.
    Retried,
    /// A stop sent back to re-check later.
    Rechecking,
    /// Returned to its queue untouched.
    Requeued,
    /// Settled with nothing more to do.
    Done,
    /// Dead-lettered.
    DeadLettered,
    /// Undecodable: dead-lettered as poison.
    Poison,
}

impl Handled {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Handled::Launched => "launched",
            Handled::Adopted => "adopted",
            Handled::Stopped => "stopped",
            Handled::Finished => "finished",
            Handled::Duplicate => "duplicate",
            Handled::Verified => "verified",
            Handled::Cleared => "cleared",
            Handled::Ignored => "ignored",
            Handled::Failed => "failed",
            Handled::Retried => "retried",
            Handled::Rechecking => "rechecking",
            Handled::Requeued => "requeued",
            Handled::Done => "done",
            Handled::DeadLettered => "dead_lettered",
            Handled::Poison => "poison",
        }
    }
}

/// What to do with a delivery once its job was carried out.
#[derive(Debug)]
enum Decision {
    /// Publish these events, then ack.
    Done {
        events: Vec<OutgoingEvent>,
        outcome: Handled,
    },
    /// Send a copy to a delay queue, then ack.
    Later(Later),
    /// Send a copy to the dead-letter queue, then ack.
    Dead(Box<Dead>),
    /// Return the message to its queue untouched.
    Requeue,
}

/// Why a message waits (`build.retrying`'s reason, the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// A start (or a stop) waits, as the launch protocol said.
    Build(WaitReason),
    /// A stop looks again for a pod whose create may still land.
    StopRecheck,
}

impl Waiting {
    pub fn label(self) -> &'static str {
        match self {
            Waiting::Build(reason) => reason.label(),
            Waiting::StopRecheck => "stop_recheck",
        }
    }
}

/// Why a message is dead-lettered (`x-bcw-reason`, `bcw_dead_letters_total{reason}`,
/// `build.dead_lettered`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadWhy {
    /// The message itself is unusable, for this reason, at this field.
    Poison(PoisonReason, Option<&'static str>),
    /// The launch protocol gave the build up.
    Launch(DeadReason),
    /// Its attempts were used up while it waited for this reason.
    GaveUp(Waiting),
    /// No executor was usable within `maxWait`.
    NoExecutor,
    /// Every executor excludes its image.
    NoEligibleExecutor,
    /// A `clear` with a path outside the cache.
    InvalidCachePath,
}

impl DeadWhy {
    /// The reason code: bounded (a poison code names one of a fixed set of fields).
    pub fn label(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            DeadWhy::Poison(reason, field) => return intake::poison_code(reason, field).into(),
            DeadWhy::Launch(d) => d.label(),
            DeadWhy::GaveUp(w) => w.label(),
            DeadWhy::NoExecutor => "no_executor",
            DeadWhy::NoEligibleExecutor => "no_eligible_executor",
            DeadWhy::InvalidCachePath => "invalid_cache_path",
        })
    }
}

#[derive(Debug)]
struct Later {
    next: Carried,
    /// Uses up an attempt (a failure), or not (waiting for an executor).
    uses_attempt: bool,
    retry_in: Duration,
    reason: Waiting,
    error: String,
    executor: Option<String>,
    /// Events to publish first (a stop's `build.stopped` before its re-check).
    events: Vec<OutgoingEvent>,
    /// A stop re-check: quiet, no `build.retrying`.
    recheck: bool,
    build: Option<(BuildId, Option<u64>)>,
}

#[derive(Debug)]
struct Dead {
    reason: DeadWhy,
    error: String,
    build: Option<(BuildId, Option<u64>)>,
    attempt: u32,
    job: JobKind,
    /// The build to mark failed in Screwdriver.
    fail: Option<StartBuild>,
}

impl Dispatcher {
    /// A dispatcher.
    pub fn new(
        launcher: Launcher,
        publisher: Publisher,
        topology: Topology,
        policy: Policy,
        status: Option<Arc<StatusUpdater>>,
    ) -> Self {
        Self {
            source: crate::events::source(&topology.queue),
            launcher,
            publisher,
            topology,
            policy,
            status,
            dead_queue_exists: AtomicBool::new(true),
            readiness: Readiness::default(),
        }
    }

    /// Where builds held in memory are counted (`/readyz`, `bcw_builds_waiting`).
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// Records whether `<queue>.dead` exists (admin-provisioned topology may lack it).
    pub fn set_dead_queue_exists(&self, exists: bool) {
        self.dead_queue_exists.store(exists, Ordering::SeqCst);
    }

    fn admin(&self) -> bool {
        !self.topology.declare
    }

    fn event(&self, data: impl Into<BuildEvent>) -> OutgoingEvent {
        build_event(&self.source, data)
    }

    async fn run(&self, inbound: Inbound) {
        metrics::inflight(1.0);
        self.process(&inbound).await;
        metrics::inflight(-1.0);
    }

    /// Handles one delivery.
    async fn process(&self, inbound: &Inbound) {
        let span = tracing::Span::current();
        let mut carried = Carried::read(&inbound.properties);
        if self.admin() {
            // The administrator's dead-letter loop counts attempts in x-death.
            let queue = match inbound.source {
                Source::Main => self.topology.queue.as_str(),
                Source::Verify => self.topology.verify_queue.as_deref().unwrap_or_default(),
            };
            let deaths = headers::x_death_count(&inbound.properties, queue);
            carried.attempt = deaths + 1;
        }
        span.record("attempt", carried.attempt);

        let job = match intake::decode(&inbound.data, self.policy.limits) {
            Ok(job) => job,
            Err(poison) => {
                if let Some(b) = poison.build_id {
                    span.record("buildId", b.0);
                }
                warn!(reason = %poison.code(), error = %poison.detail, "poison message");
                let decision = Decision::Dead(Box::new(Dead {
                    reason: DeadWhy::Poison(poison.reason, poison.field),
                    error: poison.detail.clone(),
                    build: poison.build_id.map(|b| (b, None)),
                    attempt: carried.attempt,
                    job: poison.job,
                    fail: None,
                }));
                self.settle(inbound, &carried, decision).await;
                metrics::message_handled(poison.job.as_str(), Handled::Poison.label());
                return;
            }
        };
        let kind = job.kind();
        if let Some(b) = job.build_id() {
            span.record("buildId", b.0);
        }
        span.record("job", kind.as_str());
        let started = tokio::time::Instant::now();
        let mut holding = None;
        loop {
            let decision = self.decide(&job, inbound, &carried).await;
            // Without delay queues of our own, waiting for an executor happens in process, for
            // a bounded time (then `later` hands it back to the queue).
            if self.admin()
                && let Decision::Later(l) = &decision
                && !l.uses_attempt
                && !l.recheck
            {
                let now_ms = jiff::Timestamp::now().as_millisecond();
                carried.waiting_since_ms.get_or_insert(now_ms);
                let left = HOLD_AT_MOST.saturating_sub(started.elapsed());
                if !left.is_zero() && !self.waited_too_long(&carried, now_ms) {
                    holding.get_or_insert_with(|| Holding::start(&self.readiness));
                    carried.executors = l.next.executors.clone();
                    tokio::time::sleep(l.retry_in.clamp(Duration::from_secs(1), left)).await;
                    continue;
                }
            }
            drop(holding.take());
            let outcome = self.settle(inbound, &carried, decision).await;
            metrics::message_handled(kind.as_str(), outcome.label());
            return;
        }
    }

    /// True once a build waiting for an executor since `carried.waiting_since_ms` has waited
    /// `maxWait`.
    fn waited_too_long(&self, carried: &Carried, now_ms: i64) -> bool {
        let since = carried.waiting_since_ms.unwrap_or(now_ms);
        Duration::from_millis(now_ms.saturating_sub(since).max(0) as u64) > self.policy.max_wait
    }

    async fn decide(&self, job: &Job, inbound: &Inbound, carried: &Carried) -> Decision {
        match job {
            Job::Start(build) => self.start(build, inbound, carried).await,
            Job::Stop(stop) => self.stop(stop.build_id, stop.job_id, carried).await,
            Job::Verify(build) => self.verify(build, carried).await,
            Job::Clear(c) => match cache::clear(&self.policy.cache, c).await {
                Ok(ClearOutcome::Removed(p)) => {
                    info!(path = %p.display(), "cache directory removed");
                    Decision::Done {
                        events: vec![],
                        outcome: Handled::Cleared,
                    }
                }
                Ok(ClearOutcome::Absent(_)) => Decision::Done {
                    events: vec![],
                    outcome: Handled::Cleared,
                },
                Ok(ClearOutcome::Disabled) => Decision::Done {
                    events: vec![],
                    outcome: Handled::Ignored,
                },
                Err(e @ ClearError::Io { .. }) => {
                    // As the original worker: a failed removal is logged, not retried forever.
                    error!(error = %e, "cache removal failed");
                    Decision::Done {
                        events: vec![],
                        outcome: Handled::Failed,
                    }
                }
                Err(e) => Decision::Dead(Box::new(Dead {
                    reason: DeadWhy::InvalidCachePath,
                    error: e.to_string(),
                    build: None,
                    attempt: carried.attempt,
                    job: JobKind::Clear,
                    fail: None,
                })),
            },
        }
    }

    async fn start(&self, build: &StartBuild, inbound: &Inbound, carried: &Carried) -> Decision {
        let candidates = self.launcher.candidates(build);
        if candidates.is_empty() {
            return Decision::Dead(Box::new(Dead {
                reason: DeadWhy::NoEligibleExecutor,
                error: format!("every executor excludes the image {:?}", build.container),
                build: Some((build.build_id, build.job_id)),
                attempt: carried.attempt,
                job: JobKind::Start,
                fail: Some(build.clone()),
            }));
        }
        let announcer = Announcer { dispatcher: self };
        let avoid = carried.executors.clone();
        let started = self
            .launcher
            .start(build, candidates, avoid, carried.attempt, &announcer)
            .await;
        self.started(build, inbound, carried, started)
    }

    /// What the launch protocol's outcome for a start means for its delivery.
    fn started(
        &self,
        build: &StartBuild,
        inbound: &Inbound,
        carried: &Carried,
        started: Started,
    ) -> Decision {
        let mut next = carried.clone();
        next.executors.extend(started.touched);
        let detail = started.last_error.unwrap_or_default();
        let later = |reason: WaitReason, wait: u64, uses_attempt: bool| {
            Decision::Later(Later {
                next: next.clone(),
                uses_attempt,
                retry_in: Duration::from_millis(wait).max(DEFAULT_WAIT),
                reason: Waiting::Build(reason),
                error: if detail.is_empty() {
                    format!("waiting: {}", reason.label())
                } else {
                    detail.clone()
                },
                executor: None,
                events: vec![],
                recheck: false,
                build: Some((build.build_id, build.job_id)),
            })
        };
        // `build.launched` went out in the launch's announce step: these outcomes publish
        // nothing with the ack.
        let done = |outcome| Decision::Done {
            events: vec![],
            outcome,
        };
        match started.outcome {
            Outcome::Launched {
                exec, pod, adopted, ..
            } => {
                tracing::Span::current().record("executor", exec.as_str());
                metrics::launched(&exec, inbound.received.elapsed());
                info!(pod = %pod.name, adopted, "build launched");
                done(if adopted {
                    Handled::Adopted
                } else {
                    Handled::Launched
                })
            }
            Outcome::Stopped => {
                info!("the build was stopped; not launching");
                done(Handled::Stopped)
            }
            Outcome::Finished => {
                info!("the build was launched earlier and its pod is gone: a late copy");
                done(Handled::Finished)
            }
            Outcome::Duplicate { exec } => {
                info!(%exec, "the build was launched earlier there, which cannot be looked at now: a duplicate copy");
                done(Handled::Duplicate)
            }
            Outcome::Later {
                reason,
                wait,
                consumes_attempt,
            } => later(reason, wait, consumes_attempt),
            Outcome::Dead(reason) => Decision::Dead(Box::new(Dead {
                reason: DeadWhy::Launch(reason),
                error: format!(
                    "the build cannot be launched ({}): {detail}",
                    reason.label()
                ),
                build: Some((build.build_id, build.job_id)),
                attempt: carried.attempt,
                job: JobKind::Start,
                fail: Some(build.clone()),
            })),
            Outcome::Requeue => Decision::Requeue,
        }
    }

    async fn stop(&self, build: BuildId, job_id: Option<u64>, carried: &Carried) -> Decision {
        // `build.stopped` goes out at the first handling of a stop; a re-check that finds a
        // late pod publishes it again, with its own attempt number.
        let first = carried.recheck == 0 && carried.waiting_since_ms.is_none();
        let stopped = |deleted: u32, location: Option<(String, String, String)>| {
            let (executor, namespace, pod) = match location {
                Some((e, n, p)) => (Some(e), Some(n), Some(p)),
                None => (None, None, None),
            };
            self.event(Stopped::new(
                BuildRef {
                    build_id: build,
                    job_id,
                    executor,
                    namespace,
                    pod,
                    attempt: carried.recheck + 1,
                },
                deleted,
            ))
        };
        let wait = |reason: Waiting, retry_in: Duration, recheck: bool| {
            Decision::Later(Later {
                next: Carried {
                    recheck: carried.recheck + u32::from(recheck),
                    ..carried.clone()
                },
                uses_attempt: false,
                retry_in,
                reason,
                error: format!("the stop waits: {}", reason.label()),
                executor: None,
                events: if first {
                    vec![stopped(0, None)]
                } else {
                    vec![]
                },
                recheck,
                build: Some((build, job_id)),
            })
        };
        match self.launcher.stop(build).await {
            StopOutcome::Done { deleted, location } => {
                info!(deleted, "stop carried out");
                let events = if first || (deleted > 0 && carried.recheck > 0) {
                    vec![stopped(deleted, location)]
                } else {
                    vec![]
                };
                Decision::Done {
                    events,
                    outcome: Handled::Stopped,
                }
            }
            StopOutcome::Recheck { after } => wait(Waiting::StopRecheck, after, true),
            StopOutcome::Unconfirmed => {
                wait(Waiting::Build(WaitReason::NoExecutor), DEFAULT_WAIT, false)
            }
            StopOutcome::Unanswered => {
                wait(Waiting::Build(WaitReason::Unanswered), DEFAULT_WAIT, false)
            }
        }
    }

    async fn verify(&self, build: &StartBuild, carried: &Carried) -> Decision {
        let found = self.launcher.verify(build).await;
        if !found.unreachable.is_empty() && found.verdict.is_none() {
            return Decision::Later(Later {
                next: Carried {
                    executors: found.unreachable,
                    ..carried.clone()
                },
                uses_attempt: false,
                retry_in: Duration::from_secs(5),
                reason: Waiting::Build(WaitReason::NoExecutor),
                error: "waiting for executors to answer the verify".into(),
                executor: None,
                events: vec![],
                recheck: false,
                build: Some((build.build_id, build.job_id)),
            });
        }
        let (state, reason, message) = match &found.verdict {
            None => (BuildState::Missing, None, None),
            Some(v @ Verdict::LaunchFailed { reason, message }) => {
                (v.build_state(), Some(reason.clone()), Some(message.clone()))
            }
            Some(
                v @ Verdict::Failed {
                    reason, message, ..
                },
            ) => (v.build_state(), Some(reason.clone()), Some(message.clone())),
            Some(v @ Verdict::TimedOut { message }) => (
                v.build_state(),
                Some(DeadlineExceeded::DeadlineExceeded.as_str().into()),
                Some(message.clone()),
            ),
            Some(v) => (v.build_state(), None, None),
        };
        if let (Some(status), Some(Verdict::LaunchFailed { message, .. })) =
            (&self.status, &found.verdict)
        {
            status.send(build, Update::Failure(message.clone())).await;
        }
        Decision::Done {
            events: vec![self.event(Verified {
                build: BuildRef {
                    build_id: build.build_id,
                    job_id: build.job_id,
                    executor: found.executor,
                    namespace: found.namespace,
                    pod: found.pod,
                    attempt: carried.attempt,
                },
                reason,
                message,
                state,
            })],
            outcome: Handled::Verified,
        }
    }

    /// Makes the decision durable, then settles the delivery. Returns how it was handled.
    async fn settle(&self, inbound: &Inbound, carried: &Carried, decision: Decision) -> Handled {
        match decision {
            Decision::Done { events, outcome } => {
                if self.publish_all(&events).await {
                    inbound.settle.ack().await;
                    outcome
                } else {
                    inbound.settle.requeue().await;
                    Handled::Requeued
                }
            }
            Decision::Later(later) => self.later(inbound, carried, later).await,
            Decision::Dead(dead) => self.dead(inbound, *dead).await,
            Decision::Requeue => {
                inbound.settle.requeue().await;
                Handled::Requeued
            }
        }
    }

    async fn later(&self, inbound: &Inbound, carried: &Carried, later: Later) -> Handled {
        if later.uses_attempt
            && let Some(ex) = &later.executor
        {
            metrics::retried(ex, later.reason.label());
        }
        let now_ms = jiff::Timestamp::now().as_millisecond();
        if let Some(dead) = self.given_up(inbound, carried, &later, now_ms) {
            return self.dead(inbound, dead).await;
        }
        let mut next = later.next.clone();
        if later.uses_attempt {
            next.attempt = carried.attempt + 1;
            next.waiting_since_ms = None;
        } else if !later.recheck {
            next.waiting_since_ms = Some(carried.waiting_since_ms.unwrap_or(now_ms));
        }
        if !self.admin() {
            return self.delay(inbound, carried, later, next).await;
        }
        if later.uses_attempt {
            // The administrator's dead-letter loop brings it back.
            inbound.settle.reject().await;
            return Handled::Retried;
        }
        if !later.recheck {
            return self.hand_back(inbound, next, &later.events).await;
        }
        // A stop re-check without delay queues: done for now (waits expired above).
        if self.publish_all(&later.events).await {
            inbound.settle.ack().await;
            return Handled::Done;
        }
        inbound.settle.requeue().await;
        Handled::Requeued
    }

    /// The dead letter of a message that waited or failed too long: its attempts used up, or
    /// `maxWait` passed without a usable executor.
    fn given_up(
        &self,
        inbound: &Inbound,
        carried: &Carried,
        later: &Later,
        now_ms: i64,
    ) -> Option<Dead> {
        let (reason, error) = if later.uses_attempt {
            if carried.attempt < self.policy.reprocess_limit {
                return None;
            }
            let error = format!(
                "gave up after {} attempts: {}",
                carried.attempt, later.error
            );
            (DeadWhy::GaveUp(later.reason), error)
        } else if !later.recheck && self.waited_too_long(carried, now_ms) {
            let error = format!(
                "no usable executor within rabbitmq.maxWait ({}): {}",
                humantime::format_duration(self.policy.max_wait),
                later.error
            );
            (DeadWhy::NoExecutor, error)
        } else {
            return None;
        };
        let fail = match intake::decode(&inbound.data, self.policy.limits) {
            Ok(Job::Start(b)) => Some(b),
            _ => None,
        };
        Some(Dead {
            reason,
            error,
            build: later.build,
            attempt: carried.attempt,
            job: JobKind::Start,
            fail,
        })
    }

    /// The worker's own layout: a copy on the delay queue for the next attempt or look (with
    /// `build.retrying` the first time), then the ack.
    async fn delay(
        &self,
        inbound: &Inbound,
        carried: &Carried,
        later: Later,
        next: Carried,
    ) -> Handled {
        let queue = if later.uses_attempt {
            self.topology.retry_queue_for(next.attempt)
        } else {
            self.topology.retry_queue_near(later.retry_in)
        };
        let Some((queue, delay)) = queue.cloned() else {
            inbound.settle.requeue().await;
            return Handled::Requeued;
        };
        let mut events = later.events;
        let first_wait = !later.uses_attempt && carried.waiting_since_ms.is_none();
        if !later.recheck
            && (later.uses_attempt || first_wait)
            && let Some((build, job_id)) = later.build
        {
            events.push(self.event(Retrying {
                build: BuildRef {
                    build_id: build,
                    job_id,
                    executor: later.executor.clone(),
                    namespace: None,
                    pod: None,
                    attempt: carried.attempt,
                },
                reason: later.reason,
                message: later.error.clone(),
                retry_in_seconds: delay.as_secs(),
            }));
        }
        if !self.publish_all(&events).await {
            inbound.settle.requeue().await;
            return Handled::Requeued;
        }
        let mut table = inbound.properties.headers().clone().unwrap_or_default();
        next.write(&mut table);
        match self.copy_to(inbound, &queue, table).await {
            Ok(()) if later.recheck => {
                inbound.settle.ack().await;
                Handled::Rechecking
            }
            Ok(()) => {
                info!(queue = %queue, reason = later.reason.label(), next_attempt = next.attempt, "build will be retried");
                inbound.settle.ack().await;
                Handled::Retried
            }
            Err(e) => {
                warn!(error = %e, "could not put the message on its delay queue; returning it to the queue");
                inbound.settle.requeue().await;
                Handled::Requeued
            }
        }
    }

    async fn dead(&self, inbound: &Inbound, dead: Dead) -> Handled {
        let dead_queue = self.topology.dead_queue.clone();
        let use_queue = !self.admin() || self.dead_queue_exists.load(Ordering::SeqCst);
        if use_queue {
            let mut table = inbound.properties.headers().clone().unwrap_or_default();
            headers::dead_letter(&mut table, &dead.reason.label(), &dead.error, dead.attempt);
            if let Err(e) = self.copy_to(inbound, &dead_queue, table).await {
                warn!(error = %e, "could not dead-letter the message; returning it to the queue");
                inbound.settle.requeue().await;
                return Handled::Requeued;
            }
            metrics::dead_lettered(&dead.reason.label());
            warn!(reason = %dead.reason.label(), error = %dead.error, "message dead-lettered");
        } else {
            error!(reason = %dead.reason.label(), error = %dead.error, job = dead.job.as_str(), "message refused; no dead-letter queue exists, acknowledging it");
        }
        if let Some(build) = &dead.fail
            && let Some(status) = &self.status
        {
            status
                .send(
                    build,
                    Update::Failure(failure_message(dead.reason, &dead.error)),
                )
                .await;
        }
        if let Some((build, job_id)) = dead.build {
            let ev = self.event(DeadLettered {
                build: BuildRef {
                    build_id: build,
                    job_id,
                    executor: None,
                    namespace: None,
                    pod: None,
                    attempt: dead.attempt,
                },
                reason: dead.reason,
                message: dead.error.clone(),
            });
            // The copy is safe in the dead-letter queue; an unpublished event must not send
            // the message round again, so a failure here is only logged.
            if let Err(e) = self.publisher.publish_event(&ev).await {
                warn!(error = %e, "build.dead_lettered event not published");
            }
        }
        inbound.settle.ack().await;
        Handled::DeadLettered
    }

    /// The administrator's layout: a build that waited [`HOLD_AT_MOST`] here for an executor
    /// goes back to the end of its queue, with the time it has waited and the executors it may
    /// have touched, confirmed before the delivery is acknowledged (a crash in between leaves
    /// two copies, which the launch protocol absorbs).
    async fn hand_back(
        &self,
        inbound: &Inbound,
        next: Carried,
        events: &[OutgoingEvent],
    ) -> Handled {
        let queue = match inbound.source {
            Source::Main => self.topology.queue.as_str(),
            Source::Verify => self.topology.verify_queue.as_deref().unwrap_or_default(),
        };
        let mut table = inbound.properties.headers().clone().unwrap_or_default();
        next.write(&mut table);
        if !self.publish_all(events).await {
            inbound.settle.requeue().await;
            return Handled::Requeued;
        }
        match self.copy_to(inbound, queue, table).await {
            Ok(()) => {
                info!(queue = %queue, "no executor can take the build here yet; handed back to its queue");
                inbound.settle.ack().await;
                Handled::Retried
            }
            Err(e) => {
                warn!(error = %e, "could not hand the build back; returning it to the queue");
                inbound.settle.requeue().await;
                Handled::Requeued
            }
        }
    }

    async fn copy_to(
        &self,
        inbound: &Inbound,
        queue: &str,
        headers: FieldTable,
    ) -> Result<(), crate::broker::PublishError> {
        let p = &inbound.properties;
        let mut props = BasicProperties::default().with_headers(headers);
        if let Some(ct) = p.content_type() {
            props = props.with_content_type(ct.clone());
        }
        if let Some(id) = p.message_id() {
            props = props.with_message_id(id.clone());
        }
        if let Some(id) = p.correlation_id() {
            props = props.with_correlation_id(id.clone());
        }
        self.publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: queue,
                body: &inbound.data,
                properties: props,
                mandatory: true,
            })
            .await
    }

    async fn publish_all(&self, events: &[OutgoingEvent]) -> bool {
        for ev in events {
            if let Err(e) = self.publisher.publish_event(ev).await {
                warn!(error = %e, event = ev.ty.suffix(), "event not confirmed; the message goes back to the queue");
                return false;
            }
        }
        true
    }
}

/// Publishes a build's `build.launched` for the launch (confirmed before the launch is
/// recorded, so that the reporter, which waits for the record, never announces anything
/// about the pod before it).
struct Announcer<'a> {
    dispatcher: &'a Dispatcher,
}

impl Announce for Announcer<'_> {
    async fn launched(
        &self,
        build: &StartBuild,
        executor: &str,
        namespace: &str,
        pod: &PodRef,
    ) -> bool {
        let ev = self.dispatcher.event(Launched::new(BuildRef {
            build_id: build.build_id,
            job_id: build.job_id,
            executor: Some(executor.to_string()),
            namespace: Some(namespace.to_string()),
            pod: Some(pod.name.clone()),
            // An adopted pod keeps the attempt that created it: the reporter derives the
            // same event id from the pod.
            attempt: pod.attempt,
        }));
        self.dispatcher.publish_all(&[ev]).await
    }
}

impl Handler for Dispatcher {
    async fn handle(&self, inbound: Inbound) {
        let span = info_span!(
            "message",
            buildId = tracing::field::Empty,
            executor = tracing::field::Empty,
            attempt = tracing::field::Empty,
            job = tracing::field::Empty,
        );
        self.run(inbound).instrument(span).await;
    }

    fn topology_checked(&self, report: &crate::broker::TopologyReport) {
        let had = self
            .dead_queue_exists
            .swap(report.dead_queue_exists, Ordering::SeqCst);
        // Once at start (and again only if it disappears later): a correct layout, not an error.
        if had && !report.dead_queue_exists {
            warn!(
                queue = %self.topology.dead_queue,
                "the dead-letter queue does not exist: a message that cannot be processed is \
                 logged and acknowledged (dropped), as by the original worker; declare the \
                 queue to keep such messages for `buildcluster-worker dead`"
            );
        }
    }
}

/// The sentence a Screwdriver user sees on a build that could not be launched.
fn failure_message(reason: DeadWhy, error: &str) -> String {
    match reason {
        DeadWhy::NoExecutor => "Build failed to start: no build cluster was available in time. Please try again later.".into(),
        DeadWhy::Launch(DeadReason::InvalidPod) => format!("Build failed to start: the cluster refused the build pod ({error})."),
        DeadWhy::Launch(DeadReason::RuntimeClassMissing | DeadReason::ExecutorMisconfigured) => {
            "Build failed to start: the build cluster is misconfigured. Please reach out to your cluster admin for help.".into()
        }
        DeadWhy::NoEligibleExecutor => format!("Build failed to start: no build cluster accepts this image ({error})."),
        _ => format!("Build failed to start: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_reasons_keep_their_codes() {
        let codes = [
            (
                DeadWhy::Poison(PoisonReason::MissingField, Some("buildId")),
                "missing_build_id",
            ),
            (
                DeadWhy::Poison(PoisonReason::InvalidJson, None),
                "invalid_json",
            ),
            (
                DeadWhy::Launch(DeadReason::RuntimeClassMissing),
                "runtime_class_not_found",
            ),
            (
                DeadWhy::GaveUp(Waiting::Build(WaitReason::Unavailable)),
                "unavailable",
            ),
            (DeadWhy::GaveUp(Waiting::StopRecheck), "stop_recheck"),
            (DeadWhy::NoExecutor, "no_executor"),
            (DeadWhy::NoEligibleExecutor, "no_eligible_executor"),
            (DeadWhy::InvalidCachePath, "invalid_cache_path"),
        ];
        for (why, code) in codes {
            assert_eq!(why.label(), code, "{why:?}");
        }
    }

    #[test]
    fn the_user_is_told_why_a_build_failed_to_start_in_their_words() {
        let misconfigured =
            failure_message(DeadWhy::Launch(DeadReason::ExecutorMisconfigured), "403");
        assert!(
            misconfigured.contains("cluster is misconfigured"),
            "{misconfigured}"
        );
        assert!(
            !misconfigured.contains("403"),
            "no cluster detail for the user"
        );
        let late = failure_message(DeadWhy::NoExecutor, "");
        assert!(
            late.contains("no build cluster was available in time"),
            "{late}"
        );
        let other = failure_message(
            DeadWhy::GaveUp(Waiting::Build(WaitReason::Unavailable)),
            "boom",
        );
        assert_eq!(other, "Build failed to start: boom");
    }
}
