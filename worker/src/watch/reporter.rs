//! The reporter of one executor: while this replica holds the executor's Lease, one pod watch
//! (kube-runtime's watcher with backoff, selected on the managed-by and executor labels) turns
//! what happens to build pods into lifecycle events, fails builds that cannot start (and
//! deletes their pods), sends Screwdriver status updates, and collects garbage.
//!
//! Event ids derive from (build, type, attempt of the pod), so a replica that takes over may
//! repeat an event the previous one published, but never invents a different one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodCondition, PodStatus};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::assess::{Policy, Verdict, assess, trouble_key};
use crate::broker::Publisher;
use crate::cluster::Cluster;
use crate::config::ExecutorConfig;
use crate::events::{BuildEventData, EventType, build_event};
use crate::intake::BuildId;
use crate::naming;
use crate::protocol::client::Protocol;
use crate::protocol::{Answer, LaunchState, Question};
use crate::secret::Secret;
use crate::status::{StatusUpdater, Update};
use crate::telemetry::metrics;

/// How long the reporter waits for a pod's launch to be recorded before it announces (and
/// records) the launch itself: its launcher died, or is late.
const LAUNCH_ANNOUNCE_WITHIN: Duration = Duration::from_secs(30);
/// Watch events taken at once, and pods evaluated concurrently.
const EVENT_BATCH: usize = 256;
/// An unscheduled pod gets Screwdriver's "Waiting for resources" message after this long.
const WAITING_AFTER: Duration = Duration::from_secs(5);
/// How long after first seeing a pod its token Secret may still be missing (the launcher
/// creates it right after the pod); past this, updates that need the token are skipped.
const TOKEN_WAIT: Duration = Duration::from_secs(30);

/// Whether a status update is done with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reported {
    /// Sent, or nothing to send (updates off, no API URI, no token for this pod).
    Done,
    /// The build's token Secret cannot be read yet: try again at the next evaluation.
    NotYet,
}

/// Why [`Reporter::report`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The process is stopping.
    Stopped,
    /// Leadership was lost (or the watch ended): wait to lead again.
    NotLeading,
}

/// What a reporter needs.
#[derive(Debug, Clone)]
pub struct Reporter {
    /// The executor's cluster.
    pub cluster: Cluster,
    /// The executor's configuration.
    pub config: ExecutorConfig,
    /// Where events go.
    pub publisher: Publisher,
    /// `source` of the events.
    pub source: String,
    /// Screwdriver status updates, when enabled.
    pub status: Option<Arc<StatusUpdater>>,
    /// How often pods are re-assessed (time-based verdicts, garbage collection).
    pub resync: Duration,
    /// The launch protocol: whether a pod's launch is announced, and its record.
    pub protocol: Protocol,
    /// S + H of this executor: a build's pod is deleted only this long after its launch was
    /// recorded (every create permitted before then has landed).
    pub busy_for: Duration,
}

/// What the reporter remembers of one pod.
#[derive(Debug)]
struct Track {
    pod: Pod,
    /// First time each trouble (image pull, config error) was seen, for grace periods.
    troubles: HashMap<&'static str, Instant>,
    first_seen: Instant,
    running_sent: bool,
    /// The build container was seen running (its event may still wait for the launch's).
    saw_running: bool,
    terminal_sent: bool,
    /// When the pod was first seen scheduled while still pending: the image pull starts then,
    /// and its stats update is owed.
    scheduled_at: Option<jiff::Timestamp>,
    scheduled_sent: bool,
    waiting_sent: bool,
    /// The FAILURE update of a pod that cannot start went out (or never can).
    failure_sent: bool,
    terminal_at: Option<Instant>,
    deleted: bool,
    token: Option<Secret>,
    /// `build.launched` is known to be on the stream (events about the pod may follow).
    launch_announced: bool,
    /// When the reporter learned that the launch is recorded (deleting the pod waits S + H).
    launch_recorded: Option<Instant>,
    /// A finished pod needs nothing until its TTL: the resync skips it until then (a watch
    /// update still evaluates it at once).
    idle_until: Option<Instant>,
}

impl Track {
    fn new(pod: Pod) -> Self {
        Self {
            pod,
            troubles: HashMap::new(),
            first_seen: Instant::now(),
            running_sent: false,
            saw_running: false,
            terminal_sent: false,
            scheduled_at: None,
            scheduled_sent: false,
            waiting_sent: false,
            failure_sent: false,
            terminal_at: None,
            deleted: false,
            token: None,
            launch_announced: false,
            launch_recorded: None,
            idle_until: None,
        }
    }
}

/// What the reporter keeps of a finished pod whose outcome is reported and whose launch is
/// recorded: only what its collection after `podTTL` needs (a few hundred bytes instead of the
/// pod), since a busy executor keeps thousands of them.
#[derive(Debug)]
struct Done {
    name: String,
    /// When its containers finished (pod time), if they said.
    finished_at: Option<i64>,
    terminal_at: Option<Instant>,
    launch_recorded: Instant,
    idle_until: Option<Instant>,
}

impl Done {
    /// The finished part of `track`, once nothing but its collection is left to do.
    fn of(track: &Track) -> Option<Done> {
        let launch_recorded = track.launch_recorded?;
        // `terminal_at` is set for builds that ran to an outcome; a pod that could not start
        // stays live until it is removed (at once, not after `podTTL`).
        let finished = track.terminal_sent && track.terminal_at.is_some();
        (finished && !track.deleted).then(|| Done {
            name: track.pod.metadata.name.clone().unwrap_or_default(),
            finished_at: finished_at(&track.pod),
            terminal_at: track.terminal_at,
            launch_recorded,
            idle_until: track.idle_until,
        })
    }
}

/// Every pod the reporter follows, by uid: the live ones in full, the finished ones as [`Done`].
#[derive(Debug, Default)]
struct Tracked {
    live: HashMap<String, Track>,
    done: HashMap<String, Done>,
    /// The uids seen since a relist began.
    relisting: Option<HashSet<String>>,
}

impl Tracked {
    /// Forgets, at the end of a relist, every pod the relist did not show.
    fn relisted(&mut self) {
        if let Some(seen) = self.relisting.take() {
            self.live.retain(|uid, _| seen.contains(uid));
            self.done.retain(|uid, _| seen.contains(uid));
        }
    }

    fn forget(&mut self, uid: &str) {
        self.live.remove(uid);
        self.done.remove(uid);
    }

    /// Keeps one evaluated pod: as [`Done`] once finished, not at all once deleted.
    fn keep(&mut self, uid: String, track: Track) {
        if track.deleted {
            return;
        }
        match Done::of(&track) {
            Some(done) => {
                self.done.insert(uid, done);
            }
            None => {
                self.live.insert(uid, track);
            }
        }
    }

    /// Keeps finished pods as [`Done`] and drops deleted ones (after a resync: every pod).
    fn settle(&mut self) {
        self.live.retain(|_, t| !t.deleted);
        let finished: Vec<String> = self
            .live
            .iter()
            .filter(|(_, t)| Done::of(t).is_some())
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in finished {
            if let Some(done) = self.live.remove(&uid).as_ref().and_then(Done::of) {
                self.done.insert(uid, done);
            }
        }
    }
}

/// What every branch of an evaluation needs of the pod it assesses.
struct Seen<'a> {
    info: &'a BuildInfo,
    base: BuildEventData,
    pod_name: &'a str,
    now_unix: i64,
}

/// The build a pod belongs to, read from the pod.
#[derive(Debug, Clone)]
struct BuildInfo {
    build: BuildId,
    job_id: Option<u64>,
    attempt: u32,
    api_uri: Option<String>,
    token_secret: Option<String>,
}

impl Reporter {
    /// Reports while `leading` is true, until `stop`.
    pub async fn run(self, mut leading: watch::Receiver<bool>, stop: CancellationToken) {
        let span = info_span!("reporter", executor = %self.cluster.executor);
        async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = leading.wait_for(|l| *l) => if r.is_err() { return },
                }
                info!("reporting for this executor");
                if self.report(&mut leading, &stop).await == Ended::Stopped {
                    info!("stopped reporting for this executor");
                    return;
                }
                info!("no longer reporting for this executor");
            }
        }
        .instrument(span)
        .await
    }

    /// Reports until leadership is lost or `stop`; a stop takes effect between batches, so the
    /// events of the pods being evaluated are sent (and confirmed) first.
    async fn report(&self, leading: &mut watch::Receiver<bool>, stop: &CancellationToken) -> Ended {
        let api: Api<WatchedPod> =
            Api::namespaced(self.cluster.watch_client(), &self.cluster.namespace);
        let selector = naming::executor_selector(&self.cluster.executor);
        let mut stream = watcher(api, watcher::Config::default().labels(&selector))
            .default_backoff()
            .ready_chunks(EVENT_BATCH)
            .boxed();
        let mut tracked = Tracked::default();
        let mut tick = tokio::time::interval(self.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ended::Stopped,
                changed = leading.changed() => {
                    if changed.is_err() || !*leading.borrow() {
                        return Ended::NotLeading;
                    }
                }
                events = stream.next() => {
                    let Some(events) = events else { return Ended::NotLeading };
                    self.take_in(&mut tracked, events).await;
                }
                _ = tick.tick() => self.resync(&mut tracked).await,
            }
        }
    }

    /// Takes in a batch of watch events. Updates of different pods are handled concurrently
    /// (each may wait for a publish confirm); the updates of one pod, and everything around a
    /// relist or a deletion, keep their order.
    async fn take_in(
        &self,
        tracked: &mut Tracked,
        events: Vec<Result<watcher::Event<WatchedPod>, watcher::Error>>,
    ) {
        let mut applies = Vec::new();
        for event in events {
            match event {
                Ok(watcher::Event::InitApply(pod) | watcher::Event::Apply(pod)) => {
                    applies.push(pod.into_pod());
                }
                other => {
                    self.apply(tracked, std::mem::take(&mut applies)).await;
                    match other {
                        Ok(watcher::Event::Init) => tracked.relisting = Some(HashSet::new()),
                        Ok(watcher::Event::InitDone) => tracked.relisted(),
                        Ok(watcher::Event::Delete(pod)) => {
                            tracked.forget(pod.metadata.uid.as_deref().unwrap_or_default());
                        }
                        Err(e) => warn!(error = %e, "pod watch error; retrying with backoff"),
                        Ok(watcher::Event::InitApply(_) | watcher::Event::Apply(_)) => {}
                    }
                }
            }
        }
        self.apply(tracked, applies).await;
    }

    /// The periodic look: time-based verdicts of live pods, collection of finished ones.
    async fn resync(&self, tracked: &mut Tracked) {
        let now = Instant::now();
        let due = |until: Option<Instant>| until.is_none_or(|until| until <= now);
        futures::stream::iter(tracked.live.values_mut().filter(|t| due(t.idle_until)))
            .for_each_concurrent(EVENT_BATCH, |track| self.evaluate(track))
            .await;
        let collected: Vec<String> =
            futures::stream::iter(tracked.done.iter_mut().filter(|(_, d)| due(d.idle_until)))
                .filter_map(|(uid, done)| async move {
                    self.collect_done(done).await.then(|| uid.clone())
                })
                .collect()
                .await;
        for uid in collected {
            tracked.done.remove(&uid);
        }
        tracked.settle();
    }

    /// Takes in pod updates (in watch order, already slimmed by [`WatchedPod::into_pod`]) and
    /// evaluates each changed pod: pods concurrently, the updates of one pod in order.
    async fn apply(&self, tracked: &mut Tracked, pods: Vec<Pod>) {
        if pods.is_empty() {
            return;
        }
        let mut order: HashMap<String, usize> = HashMap::new();
        let mut groups: Vec<(String, Vec<Pod>)> = Vec::new();
        for pod in pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if let Some(seen) = tracked.relisting.as_mut() {
                seen.insert(uid.clone());
            }
            // A finished pod's outcome is reported; what changes now (its deletion) needs
            // nothing but forgetting it, which the Delete event does.
            if tracked.done.contains_key(&uid) {
                continue;
            }
            match order.get(&uid) {
                Some(&i) => groups[i].1.push(pod),
                None => {
                    order.insert(uid.clone(), groups.len());
                    groups.push((uid, vec![pod]));
                }
            }
        }
        let work = groups.into_iter().map(|(uid, updates)| {
            let track = tracked.live.remove(&uid);
            async move {
                let mut updates = updates.into_iter();
                let first = updates.next().expect("a group has an update");
                let mut track = match track {
                    Some(mut t) => {
                        t.pod = first;
                        t
                    }
                    None => Track::new(first),
                };
                self.evaluate(&mut track).await;
                for pod in updates {
                    track.pod = pod;
                    self.evaluate(&mut track).await;
                }
                (uid, track)
            }
        });
        for (uid, track) in futures::future::join_all(work).await {
            tracked.keep(uid, track);
        }
    }

    fn policy(&self) -> Policy {
        Policy {
            grace: self.config.options.kubernetes.image_pull_grace_period,
            pending_timeout: self.config.options.kubernetes.pending_timeout,
        }
    }

    fn build_info(&self, pod: &Pod) -> Option<BuildInfo> {
        let ann = pod.metadata.annotations.as_ref();
        let get = |k: &str| ann.and_then(|a| a.get(k)).cloned();
        let build = get(naming::ANN_BUILD_ID)
            .and_then(|v| v.parse::<u64>().ok())
            .or_else(|| {
                let label = pod.metadata.labels.as_ref()?.get(naming::BUILD_LABEL)?;
                label
                    .strip_prefix(&self.config.options.prefix)?
                    .parse()
                    .ok()
            })?;
        Some(BuildInfo {
            build: BuildId(build),
            job_id: get(naming::ANN_JOB_ID).and_then(|v| v.parse().ok()),
            attempt: naming::pod_attempt(&pod.metadata).unwrap_or(1),
            api_uri: get(naming::ANN_API_URI).filter(|u| !u.is_empty()),
            token_secret: get(naming::ANN_TOKEN_SECRET).filter(|s| !s.is_empty()),
        })
    }

    /// Assesses one pod and does what its state calls for, once.
    async fn evaluate(&self, track: &mut Track) {
        if track.deleted {
            return;
        }
        // A pod being deleted was stopped (reported as build.stopped) or collected: its
        // containers end because of the deletion, which says nothing about the build.
        if track.pod.metadata.deletion_timestamp.is_some() {
            return;
        }
        let now_unix = jiff::Timestamp::now().as_second();
        let pod_name = track.pod.metadata.name.clone().unwrap_or_default();
        let Some(info) = self.build_info(&track.pod) else {
            self.collect_orphan(track, &pod_name, now_unix, true).await;
            return;
        };
        // Remember when each current trouble first showed, forget the ones that cleared.
        let current: HashSet<&'static str> = waiting_reasons(&track.pod)
            .map(|r| trouble_key(&r))
            .collect();
        track.troubles.retain(|k, _| current.contains(k));
        for k in current {
            track.troubles.entry(k).or_insert_with(Instant::now);
        }
        let troubles = track.troubles.clone();
        let verdict = assess(
            &track.pod,
            now_unix,
            |k| troubles.get(k).map(|t| t.elapsed()).unwrap_or_default(),
            &self.policy(),
        );
        let base = BuildEventData {
            build_id: info.build.0,
            job_id: info.job_id,
            executor: Some(self.cluster.executor.clone()),
            namespace: Some(self.cluster.namespace.clone()),
            pod: Some(pod_name.clone()),
            attempt: info.attempt,
            ..Default::default()
        };
        let span = info_span!("build", buildId = info.build.0, executor = %self.cluster.executor, attempt = info.attempt);
        // Instrumented, not entered: evaluations of different pods run concurrently on one task.
        let seen = Seen {
            info: &info,
            base,
            pod_name: &pod_name,
            now_unix,
        };
        async move {
            match &verdict {
                Verdict::Pending { scheduled } => self.on_pending(track, &seen, *scheduled).await,
                Verdict::Running => self.on_running(track, seen).await,
                Verdict::LaunchFailed { reason, message } => {
                    self.on_launch_failed(track, seen, reason, message).await;
                }
                Verdict::Succeeded | Verdict::Failed { .. } | Verdict::TimedOut { .. } => {
                    self.on_finished(track, seen, &verdict).await;
                }
            }
        }
        .instrument(span)
        .await;
    }

    /// A pod waiting to start: tell the API it was scheduled, or that it waits for resources.
    async fn on_pending(&self, track: &mut Track, seen: &Seen<'_>, scheduled: bool) {
        let Seen {
            info,
            pod_name,
            now_unix,
            ..
        } = *seen;
        if scheduled && !track.scheduled_sent {
            track.scheduled_at.get_or_insert_with(jiff::Timestamp::now);
            self.scheduled_update(track, info).await;
        } else if !scheduled && !track.waiting_sent && track.first_seen.elapsed() >= WAITING_AFTER {
            track.waiting_sent =
                self.status_update(track, info, Update::Waiting).await == Reported::Done;
        }
        self.collect_orphan(track, pod_name, now_unix, false).await;
    }

    /// The build container runs: `build.running` once, after the launch is announced.
    async fn on_running(&self, track: &mut Track, seen: Seen<'_>) {
        track.saw_running = true;
        let sent = track.running_sent;
        if !self.announced(track, &seen, sent).await {
            return;
        }
        if !track.running_sent && self.publish(EventType::BuildRunning, seen.base).await {
            track.running_sent = true;
            if let Some(created) = &track.pod.metadata.creation_timestamp {
                let age = seen.now_unix.saturating_sub(created.0.as_second()).max(0) as u64;
                metrics::pod_started(&self.cluster.executor, Duration::from_secs(age));
            }
            info!(pod = %seen.pod_name, "build running");
        }
        if !track.scheduled_sent {
            if track.scheduled_at.is_some() {
                // Scheduled earlier, but the token was not readable yet: still owed.
                self.scheduled_update(track, seen.info).await;
            } else {
                // First seen running (a reporter that took over): another reporter
                // told the API when the pod was scheduled.
                track.scheduled_sent = true;
            }
        }
        self.collect_orphan(track, seen.pod_name, seen.now_unix, false)
            .await;
    }

    /// The pod cannot start: `build.launch_failed`, the user told, the pod removed.
    async fn on_launch_failed(
        &self,
        track: &mut Track,
        seen: Seen<'_>,
        reason: &str,
        message: &str,
    ) {
        let sent = track.terminal_sent;
        if !self.announced(track, &seen, sent).await {
            return;
        }
        if !track.terminal_sent {
            let data = BuildEventData {
                reason: Some(reason.to_owned()),
                message: Some(message.to_owned()),
                ..seen.base
            };
            if !self.publish(EventType::BuildLaunchFailed, data).await {
                return;
            }
            track.terminal_sent = true;
            metrics::launch_failed(&self.cluster.executor, reason);
            warn!(pod = %seen.pod_name, %reason, "build failed to start");
        }
        if !track.failure_sent {
            // The pod (and its token Secret) stays until the user has been told.
            if self
                .status_update(track, seen.info, Update::Failure(message.to_owned()))
                .await
                == Reported::NotYet
            {
                return;
            }
            track.failure_sent = true;
        }
        // A pod that cannot start is removed, so nothing hangs and nothing is retried
        // (once no create permitted before its launch was recorded can land).
        if self.may_delete(track)
            && self
                .cluster
                .delete_pod(seen.pod_name, Some(0))
                .await
                .is_ok()
        {
            track.deleted = true;
        }
    }

    /// The build ended: its outcome once, then the pod collected after `podTTL`.
    async fn on_finished(&self, track: &mut Track, seen: Seen<'_>, verdict: &Verdict) {
        let sent = track.terminal_sent;
        if !self.announced(track, &seen, sent).await {
            return;
        }
        // A build that ran and finished between two looks (or while its launch was
        // not on the stream yet) still reports that it ran, before its outcome.
        if !track.terminal_sent
            && !track.running_sent
            && (track.saw_running || build_container_ran(&track.pod))
        {
            if !self
                .publish(EventType::BuildRunning, seen.base.clone())
                .await
            {
                return;
            }
            track.running_sent = true;
        }
        if !track.terminal_sent {
            let (ty, outcome, data) = match &verdict {
                Verdict::Succeeded => (EventType::BuildSucceeded, "succeeded", seen.base),
                Verdict::Failed {
                    exit_code,
                    reason,
                    message,
                } => (
                    EventType::BuildFailed,
                    "failed",
                    BuildEventData {
                        exit_code: Some(*exit_code),
                        reason: Some(reason.clone()),
                        message: Some(message.clone()),
                        ..seen.base
                    },
                ),
                Verdict::TimedOut { message } => (
                    EventType::BuildTimedOut,
                    "timed_out",
                    BuildEventData {
                        reason: Some("DeadlineExceeded".into()),
                        message: Some(message.clone()),
                        ..seen.base
                    },
                ),
                _ => unreachable!("matched above"),
            };
            if !self.publish(ty, data).await {
                return;
            }
            track.terminal_sent = true;
            track.terminal_at = Some(Instant::now());
            metrics::build_completed(&self.cluster.executor, outcome);
            info!(pod = %seen.pod_name, outcome, "build finished");
            // The launcher reports its own result; only deaths it cannot report are told.
            if let Verdict::Failed {
                reason, message, ..
            } = &verdict
                && matches!(reason.as_str(), "OOMKilled" | "Evicted" | "Failed")
            {
                self.status_update(track, seen.info, Update::Failure(message.clone()))
                    .await;
            }
            if let Verdict::TimedOut { message } = &verdict {
                self.status_update(track, seen.info, Update::Failure(message.clone()))
                    .await;
            }
        }
        self.collect_finished(track, seen.pod_name, seen.now_unix)
            .await;
    }

    /// Deletes a finished pod once its `podTTL` passed and no create can still land on its
    /// name; until then, sets when to look again.
    async fn collect_finished(&self, track: &mut Track, pod_name: &str, now_unix: i64) {
        let finished_for = finished_for(finished_at(&track.pod), track.terminal_at, now_unix);
        let recorded_for = track.launch_recorded.map(|t| t.elapsed());
        match self.collection(finished_for, recorded_for) {
            Ok(()) => track.deleted = self.delete_finished(pod_name).await,
            Err(wait) => track.idle_until = Some(Instant::now() + wait),
        }
    }

    /// Deletes a finished pod kept as [`Done`] once due; until then, sets when to look again.
    /// True once deleted.
    async fn collect_done(&self, done: &mut Done) -> bool {
        let now_unix = jiff::Timestamp::now().as_second();
        let finished_for = finished_for(done.finished_at, done.terminal_at, now_unix);
        match self.collection(finished_for, Some(done.launch_recorded.elapsed())) {
            Ok(()) => self.delete_finished(&done.name).await,
            Err(wait) => {
                done.idle_until = Some(Instant::now() + wait);
                false
            }
        }
    }

    /// Whether a pod finished `finished_for` ago, whose launch was recorded `recorded_for` ago
    /// (if it was), may be deleted now: once its `podTTL` passed and no create permitted before
    /// its record can land on its name. If not, how long until it is worth another look.
    fn collection(
        &self,
        finished_for: Duration,
        recorded_for: Option<Duration>,
    ) -> Result<(), Duration> {
        let ttl_left = self
            .config
            .options
            .kubernetes
            .pod_ttl
            .saturating_sub(finished_for);
        match recorded_for {
            Some(r) if ttl_left.is_zero() && r >= self.busy_for => Ok(()),
            Some(r) => Err(ttl_left.max(self.busy_for.saturating_sub(r))),
            None => Err(ttl_left.max(self.resync)),
        }
    }

    /// Deletes a finished pod after its `podTTL`; true once deleted.
    async fn delete_finished(&self, pod_name: &str) -> bool {
        let deleted = self.cluster.delete_pod(pod_name, None).await.is_ok();
        if deleted {
            metrics::gc_deleted(&self.cluster.executor, "finished");
            debug!(pod = %pod_name, "finished pod collected");
        }
        deleted
    }

    /// Deletes a pod that no build can still need: one without a build past the pending
    /// deadline, or any pod older than the longest a build may live.
    async fn collect_orphan(
        &self,
        track: &mut Track,
        pod_name: &str,
        now_unix: i64,
        unknown_build: bool,
    ) {
        let k = &self.config.options.kubernetes;
        let Some(created) = track
            .pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
        else {
            return;
        };
        let age = Duration::from_secs(now_unix.saturating_sub(created).max(0) as u64);
        let limit = if unknown_build {
            k.pending_timeout
        } else {
            k.max_build_timeout + k.pending_timeout + k.pod_ttl
        };
        if age >= limit && self.cluster.delete_pod(pod_name, Some(0)).await.is_ok() {
            warn!(pod = %pod_name, ?age, "orphan pod collected");
            metrics::gc_deleted(&self.cluster.executor, "orphan");
            track.deleted = true;
        }
    }

    /// True once the build's launch was recorded S + H ago: its pod may be deleted (no create
    /// permitted before can land and take its name again).
    fn may_delete(&self, track: &Track) -> bool {
        track
            .launch_recorded
            .is_some_and(|t| t.elapsed() >= self.busy_for)
    }

    /// True once `build.launched` is on the stream, or when `sent`: the event the caller owes
    /// is out already, so nothing waits for the announcement. False: look again later.
    async fn announced(&self, track: &mut Track, seen: &Seen<'_>, sent: bool) -> bool {
        sent || self.announce_launch(track, &seen.base, seen.now_unix).await
    }

    /// Makes sure `build.launched` is on the stream before the reporter's first event about the
    /// pod, and that the launch is recorded before the pod can be deleted.
    ///
    /// The launching replica publishes `build.launched`, then records the launch with the
    /// sequencer; the reporter asks the sequencer, and waits while the pod is young. A pod whose
    /// launch is still pending after [`LAUNCH_ANNOUNCE_WITHIN`] lost its launcher: the reporter
    /// publishes the very same event (same id, same data) and records the launch itself. One the
    /// sequencer knows nothing of was launched by a replica of an earlier version, which
    /// announced it: the reporter only records it.
    async fn announce_launch(
        &self,
        track: &mut Track,
        base: &BuildEventData,
        now_unix: i64,
    ) -> bool {
        if track.launch_announced && track.launch_recorded.is_some() {
            return true;
        }
        let created = track
            .pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(now_unix, |t| t.0.as_second());
        let young = now_unix.saturating_sub(created) < LAUNCH_ANNOUNCE_WITHIN.as_secs() as i64;
        let state = self.protocol.state(base.build_id).await;
        match state {
            Some(LaunchState::Launched) => {
                track.launch_announced = true;
                track.launch_recorded.get_or_insert_with(Instant::now);
                return true;
            }
            // Ask again at the next evaluation.
            None | Some(LaunchState::Pending | LaunchState::Unknown) if young => return false,
            // The sequencer cannot be asked: events may flow, deletion waits for a record.
            None => {
                track.launch_announced = true;
                return true;
            }
            Some(LaunchState::Pending) if !track.launch_announced => {
                let data = BuildEventData {
                    build_id: base.build_id,
                    job_id: base.job_id,
                    executor: base.executor.clone(),
                    namespace: base.namespace.clone(),
                    pod: base.pod.clone(),
                    attempt: base.attempt,
                    ..Default::default()
                };
                if !self.publish(EventType::BuildLaunched, data).await {
                    return false;
                }
            }
            Some(_) => {}
        }
        track.launch_announced = true;
        self.record_launch(track, base.build_id).await;
        true
    }

    /// Records the launch of a pod the reporter sees (its launcher did not).
    async fn record_launch(&self, track: &mut Track, build: u64) {
        let question = Question::Launched {
            build,
            exec: self.cluster.executor.clone(),
            version: None,
        };
        match self.protocol.ask(question).await {
            Ok(a) if matches!(a.answer, Answer::Noted | Answer::StopNoted { .. }) => {
                track.launch_recorded = Some(Instant::now());
            }
            Ok(a) => warn!(answer = ?a.answer, "unexpected answer to a launch record"),
            Err(e) => warn!(error = %e, "cannot record the launch yet; will try again"),
        }
    }

    async fn publish(&self, ty: EventType, data: BuildEventData) -> bool {
        let ev = build_event(&self.source, ty, data);
        match self.publisher.publish_event(&ev).await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, event = ty.suffix(), "event not confirmed; will try again");
                false
            }
        }
    }

    /// The `stats.hostname` / `stats.imagePullStartTime` update of a scheduled pod.
    async fn scheduled_update(&self, track: &mut Track, info: &BuildInfo) {
        let node = track
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let pull_start = track.scheduled_at.unwrap_or_else(jiff::Timestamp::now);
        let update = Update::Scheduled {
            hostname: node,
            image_pull_start: format!("{pull_start:.3}"),
        };
        track.scheduled_sent = self.status_update(track, info, update).await == Reported::Done;
    }

    /// Sends an update with the build's own token, read from its Secret. The Secret is created
    /// just after the pod, so the watch can see the pod first: then the update is `NotYet`.
    async fn status_update(&self, track: &mut Track, info: &BuildInfo, update: Update) -> Reported {
        let (Some(status), Some(api)) = (&self.status, &info.api_uri) else {
            return Reported::Done;
        };
        if track.token.is_none()
            && let Some(name) = &info.token_secret
        {
            match self.cluster.get_secret(name).await {
                Ok(Some(secret)) => {
                    track.token = secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get("token"))
                        .and_then(|b| String::from_utf8(b.0.clone()).ok())
                        .map(Secret::new);
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "cannot read the build token for a status update"),
            }
        }
        match &track.token {
            Some(token) => {
                status.send_to(api, info.build, token, update).await;
                Reported::Done
            }
            None if info.token_secret.is_some() && track.first_seen.elapsed() < TOKEN_WAIT => {
                debug!("the build token Secret is not readable yet; status update deferred");
                Reported::NotYet
            }
            None => {
                debug!("no build token available; status update skipped");
                Reported::Done
            }
        }
    }
}

/// The part of a pod the reporter reads (identity, our annotations, the build container's name
/// and image, the node, the status). A tracked pod lives as long as its pod (until its TTL), so
/// with thousands of builds the rest of the spec (env, volumes, the launcher's init container)
/// would dominate the worker's memory.
/// True when the build container (the pod's first) started: it runs, or it ended after a start.
fn build_container_ran(pod: &Pod) -> bool {
    let Some(name) = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.as_str())
    else {
        return false;
    };
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.name == name)
        .filter_map(|c| c.state.as_ref())
        .any(|st| {
            st.running.is_some()
                || st
                    .terminated
                    .as_ref()
                    .is_some_and(|t| t.started_at.is_some())
        })
}

/// A pod as the reporter's watch reads it: only the parts [`slim_spec`] keeps of the spec are
/// deserialised (the rest, env, volumes, init containers, is skipped without being built), and
/// converted at once into the [`Pod`] the reporter handles. Deserialising whole pods was about
/// 8 % of the worker's CPU in a burst (load-tests/README.md).
#[derive(Clone, Debug, serde::Deserialize)]
struct WatchedPod {
    metadata: kube::api::ObjectMeta,
    #[serde(default)]
    spec: Option<WatchedSpec>,
    #[serde(default)]
    status: Option<PodStatus>,
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchedSpec {
    #[serde(default)]
    containers: Vec<WatchedContainer>,
    #[serde(default)]
    node_name: Option<String>,
}

#[derive(Clone, Debug, serde::Deserialize)]
struct WatchedContainer {
    name: String,
    #[serde(default)]
    image: Option<String>,
}

impl kube::Resource for WatchedPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &kube::api::ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut kube::api::ObjectMeta {
        &mut self.metadata
    }
}

impl WatchedPod {
    /// The pod the reporter keeps: its spec slimmed here, the rest by [`slim_with_spec`].
    fn into_pod(self) -> Pod {
        let WatchedPod {
            metadata,
            spec,
            status,
        } = self;
        let spec = spec.map(|s| {
            slim_spec(
                s.containers.into_iter().map(|c| (c.name, c.image)),
                s.node_name,
            )
        });
        slim_with_spec(metadata, spec, status)
    }
}

/// The spec the reporter keeps: the first (build) container's name and image, and the node.
fn slim_spec(
    containers: impl Iterator<Item = (String, Option<String>)>,
    node_name: Option<String>,
) -> k8s_openapi::api::core::v1::PodSpec {
    k8s_openapi::api::core::v1::PodSpec {
        containers: containers
            .take(1)
            .map(|(name, image)| k8s_openapi::api::core::v1::Container {
                name,
                image,
                ..Default::default()
            })
            .collect(),
        node_name,
        ..Default::default()
    }
}

/// What the reporter keeps of a pod (the watch hands over [`WatchedPod::into_pod`], the same).
#[cfg(test)]
fn slim(pod: Pod) -> Pod {
    let Pod {
        metadata,
        spec,
        status,
    } = pod;
    let spec = spec.map(|s| {
        slim_spec(
            s.containers.into_iter().map(|c| (c.name, c.image)),
            s.node_name,
        )
    });
    slim_with_spec(metadata, spec, status)
}

/// The kept pod around a spec already slimmed by [`slim_spec`]: the worker's annotations and
/// the metadata the reporter reads, the status without what it never reads.
fn slim_with_spec(
    metadata: kube::api::ObjectMeta,
    spec: Option<k8s_openapi::api::core::v1::PodSpec>,
    status: Option<PodStatus>,
) -> Pod {
    let annotations = metadata.annotations.map(|a| {
        a.into_iter()
            .filter(|(k, _)| k.starts_with(naming::ANN_PREFIX))
            .collect()
    });
    let status = status.map(|st| {
        let containers = |list: Option<Vec<ContainerStatus>>| {
            list.map(|l| {
                l.into_iter()
                    .map(|c| ContainerStatus {
                        name: c.name,
                        state: c.state,
                        last_state: c.last_state,
                        ready: c.ready,
                        restart_count: c.restart_count,
                        started: c.started,
                        ..Default::default()
                    })
                    .collect()
            })
        };
        PodStatus {
            phase: st.phase,
            reason: st.reason,
            message: st.message,
            conditions: st.conditions.map(|cs| {
                cs.into_iter()
                    .map(|c| PodCondition {
                        type_: c.type_,
                        status: c.status,
                        reason: c.reason,
                        message: c.message,
                        ..Default::default()
                    })
                    .collect()
            }),
            container_statuses: containers(st.container_statuses),
            init_container_statuses: containers(st.init_container_statuses),
            ..Default::default()
        }
    });
    Pod {
        metadata: kube::api::ObjectMeta {
            name: metadata.name,
            namespace: metadata.namespace,
            uid: metadata.uid,
            labels: metadata.labels,
            annotations,
            creation_timestamp: metadata.creation_timestamp,
            deletion_timestamp: metadata.deletion_timestamp,
            ..Default::default()
        },
        spec,
        status,
    }
}

/// Waiting reasons of every container of the pod.
fn waiting_reasons(pod: &Pod) -> impl Iterator<Item = String> + '_ {
    pod.status.iter().flat_map(|s| {
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
            .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
    })
}

/// How long ago a pod finished: by its containers' time when they said, else since its
/// outcome was published here.
fn finished_for(finished_at: Option<i64>, terminal_at: Option<Instant>, now_unix: i64) -> Duration {
    finished_at
        .map(|t| Duration::from_secs(now_unix.saturating_sub(t).max(0) as u64))
        .unwrap_or_else(|| terminal_at.map(|t| t.elapsed()).unwrap_or_default())
}

/// When the build container finished (unix seconds).
fn finished_at(pod: &Pod) -> Option<i64> {
    let build = pod.spec.as_ref()?.containers.first()?.name.clone();
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == build)?
        .state
        .as_ref()?
        .terminated
        .as_ref()?
        .finished_at
        .as_ref()
        .map(|t| t.0.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::assess::Policy;
    use serde_json::json;

    fn full_pod(status: serde_json::Value, node: Option<&str>, deleting: bool) -> Pod {
        let mut meta = json!({
            "name": "42-abcde", "namespace": "builds", "uid": "u-1",
            "creationTimestamp": "2027-01-15T08:00:00Z",
            "labels": {"sdbuild": "beta-42", "app.kubernetes.io/managed-by": "buildcluster-worker"},
            "annotations": {"buildcluster-worker/build-id": "42", "buildcluster-worker/attempt": "2",
                            "buildcluster-worker/token-secret": "42-token", "screwdriver.cd/cpu": "HIGH"},
        });
        if deleting {
            meta["deletionTimestamp"] = json!("2027-01-15T08:05:00Z");
        }
        serde_json::from_value(json!({
            "metadata": meta,
            "spec": {
                "nodeName": node,
                "initContainers": [{"name": "launcher", "image": "screwdrivercd/launcher:v6",
                                    "command": ["/bin/sh", "-c", "cp -a /opt/sd/* /opt/launcher"]}],
                "containers": [
                    {"name": "42", "image": "node:22", "command": ["/opt/sd/launcher_entrypoint.sh"],
                     "env": [{"name": "SD_BUILD_ID", "value": "42"}],
                     "volumeMounts": [{"name": "workspace", "mountPath": "/sd/workspace"}]},
                    {"name": "dind", "image": "docker:dind"}],
                "volumes": [{"name": "workspace", "emptyDir": {}}],
            },
            "status": status,
        }))
        .unwrap()
    }

    fn finished_status() -> serde_json::Value {
        json!({"phase": "Succeeded", "containerStatuses": [{"name": "42", "image": "node:22",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "finishedAt": "2027-01-15T08:03:00Z"}}}]})
    }

    #[test]
    fn a_reported_and_recorded_finished_pod_is_kept_as_its_collection_data_only() {
        let mut tracked = Tracked::default();
        let mut finished = Track::new(full_pod(finished_status(), Some("n1"), false));
        finished.terminal_sent = true;
        finished.terminal_at = Some(Instant::now());
        finished.launch_recorded = Some(Instant::now());
        let mut failed_to_start = Track::new(full_pod(json!({"phase": "Pending"}), None, false));
        failed_to_start.terminal_sent = true;
        failed_to_start.launch_recorded = Some(Instant::now());
        let mut unrecorded = Track::new(full_pod(finished_status(), Some("n1"), false));
        unrecorded.terminal_sent = true;
        unrecorded.terminal_at = Some(Instant::now());
        let running = Track::new(full_pod(json!({"phase": "Running"}), Some("n1"), false));
        let mut deleted = Track::new(full_pod(finished_status(), Some("n1"), false));
        deleted.deleted = true;
        for (uid, t) in [
            ("f", finished),
            ("s", failed_to_start),
            ("u", unrecorded),
            ("r", running),
            ("d", deleted),
        ] {
            tracked.live.insert(uid.into(), t);
        }
        tracked.settle();
        assert_eq!(tracked.done.len(), 1);
        let done = &tracked.done["f"];
        assert_eq!(done.name, "42-abcde");
        assert_eq!(
            done.finished_at,
            Some(
                "2027-01-15T08:03:00Z"
                    .parse::<jiff::Timestamp>()
                    .unwrap()
                    .as_second()
            )
        );
        // Not recorded yet: its deletion waits for the record, which only a live track gets.
        assert!(tracked.live.contains_key("u") && tracked.live.contains_key("r"));
        assert!(
            tracked.live.contains_key("s"),
            "a pod that could not start is removed live"
        );
        assert!(
            !tracked.live.contains_key("d"),
            "a deleted pod is forgotten"
        );
        // A relist that shows only the running pod forgets the others, finished ones included.
        tracked.relisting = Some(HashSet::from(["r".to_string()]));
        tracked.relisted();
        assert_eq!(tracked.live.len(), 1);
        assert!(tracked.done.is_empty());
    }

    #[test]
    fn a_watched_pod_is_the_slim_pod_of_the_same_json() {
        for status in [
            json!({"phase": "Pending"}),
            json!({"phase": "Running", "containerStatuses": [
                {"name": "42", "ready": true, "restartCount": 0, "image": "node:22", "imageID": "x",
                 "state": {"running": {"startedAt": "2027-01-15T08:00:05Z"}}}]}),
            json!(null),
        ] {
            for node in [None, Some("node-1")] {
                for deleting in [false, true] {
                    let full = full_pod(status.clone(), node, deleting);
                    let body = serde_json::to_vec(&full).unwrap();
                    let watched: WatchedPod = serde_json::from_slice(&body).unwrap();
                    assert_eq!(watched.into_pod(), slim(full), "{status} {node:?}");
                }
            }
        }
        let bare: WatchedPod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!(bare.into_pod().metadata.name.as_deref(), Some("p"));
    }

    #[test]
    fn a_slim_pod_is_assessed_exactly_as_the_full_one() {
        let statuses = [
            json!({"phase": "Pending"}),
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}]}),
            json!({"phase": "Pending", "containerStatuses": [{"name": "42", "ready": false, "restartCount": 0, "image": "x", "imageID": "", "state": {"waiting": {"reason": "InvalidImageName", "message": "bad"}}}]}),
            json!({"phase": "Pending", "initContainerStatuses": [{"name": "launcher", "ready": false, "restartCount": 0, "image": "x", "imageID": "", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}),
            json!({"phase": "Running", "containerStatuses": [{"name": "42", "ready": true, "restartCount": 0, "image": "x", "imageID": "", "state": {"running": {"startedAt": "2027-01-15T08:00:05Z"}}}]}),
            json!({"phase": "Running", "containerStatuses": [
                {"name": "42", "ready": false, "restartCount": 0, "image": "x", "imageID": "", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2027-01-15T08:03:00Z"}}},
                {"name": "dind", "ready": true, "restartCount": 0, "image": "x", "imageID": "", "state": {"running": {}}}]}),
            json!({"phase": "Succeeded", "containerStatuses": [{"name": "42", "ready": false, "restartCount": 0, "image": "x", "imageID": "", "state": {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": "2027-01-15T08:04:00Z"}}}]}),
            json!({"phase": "Failed", "reason": "DeadlineExceeded", "message": "too long"}),
        ];
        let policy = Policy {
            grace: Duration::from_secs(30),
            pending_timeout: Duration::from_secs(600),
        };
        let created = "2027-01-15T08:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        for status in statuses {
            for node in [None, Some("node-1")] {
                for deleting in [false, true] {
                    let full = full_pod(status.clone(), node, deleting);
                    let small = slim(full.clone());
                    for now in [created + 1, created + 601, created + 100_000] {
                        for age in [Duration::ZERO, Duration::from_secs(31)] {
                            assert_eq!(
                                assess(&small, now, |_| age, &policy),
                                assess(&full, now, |_| age, &policy),
                                "{status} node={node:?}"
                            );
                        }
                    }
                    assert_eq!(finished_at(&small), finished_at(&full));
                    assert_eq!(
                        waiting_reasons(&small).collect::<Vec<_>>(),
                        waiting_reasons(&full).collect::<Vec<_>>()
                    );
                    assert_eq!(
                        small.metadata.deletion_timestamp,
                        full.metadata.deletion_timestamp
                    );
                    assert_eq!(
                        small.spec.as_ref().unwrap().node_name,
                        full.spec.as_ref().unwrap().node_name
                    );
                }
            }
        }
    }

    #[test]
    fn a_slim_pod_keeps_the_worker_annotations_only() {
        let small = slim(full_pod(json!({"phase": "Pending"}), None, false));
        let ann = small.metadata.annotations.unwrap();
        assert_eq!(ann.len(), 3);
        assert_eq!(ann["buildcluster-worker/build-id"], "42");
        assert!(!ann.contains_key("screwdriver.cd/cpu"));
        assert_eq!(small.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(small.metadata.labels.unwrap()["sdbuild"], "beta-42");
        let spec = small.spec.unwrap();
        assert!(spec.init_containers.is_none() && spec.volumes.is_none());
        assert_eq!(spec.containers.len(), 1);
        assert!(spec.containers[0].env.is_none());
    }

    #[test]
    fn the_build_container_ran_when_it_runs_or_ended_after_a_start() {
        let with = |dind: serde_json::Value, build: serde_json::Value| {
            slim(full_pod(
                json!({"phase": "Succeeded", "containerStatuses": [
                    {"name": "dind", "ready": false, "restartCount": 0, "image": "d", "imageID": "", "state": dind},
                    {"name": "42", "ready": false, "restartCount": 0, "image": "n", "imageID": "", "state": build}]}),
                Some("node-1"),
                false,
            ))
        };
        let ended = json!({"terminated": {"exitCode": 0, "startedAt": "2027-01-15T08:00:05Z",
                                          "finishedAt": "2027-01-15T08:00:09Z"}});
        let never = json!({"terminated": {"exitCode": 128, "reason": "ContainerCannotRun"}});
        let running = json!({"running": {"startedAt": "2027-01-15T08:00:05Z"}});
        let waiting = json!({"waiting": {"reason": "ContainerCreating"}});
        assert!(build_container_ran(&with(waiting.clone(), ended)));
        assert!(build_container_ran(&with(waiting.clone(), running.clone())));
        assert!(!build_container_ran(&with(running.clone(), never)));
        // Another container running says nothing about the build container.
        assert!(!build_container_ran(&with(running, waiting)));
    }
}
