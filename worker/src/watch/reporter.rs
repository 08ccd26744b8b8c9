//! The reporter of one executor: while this replica holds the executor's Lease, one pod watch
//! (kube-runtime's watcher with backoff, selected on the managed-by and executor labels) turns
//! what happens to build pods into lifecycle events, fails builds that cannot start (and
//! deletes their pods), sends Screwdriver status updates, and collects garbage.
//!
//! It is a reconcile loop: each look at a pod asks [`plan`] for the next step, given what the pod
//! shows and the pod's [`Record`], carries the step out and tells the record how it went. The
//! watch loop is its own rather than kube-runtime's `Controller`: pods are evaluated
//! concurrently, one evaluation per pod at a time (each step may wait for a publish confirm),
//! and the watch is read on meanwhile: an update of a pod under evaluation waits for it, so a
//! pod's updates are taken in their order. A finished pod shrinks to the little its collection
//! needs.
//!
//! Event ids derive from (build, type, attempt of the pod), so a replica that takes over may
//! repeat an event the previous one published, but never invents a different one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::assess::{Policy, Verdict, assess};
use super::gc;
use super::handover::{Handover, Note, Reported};
use super::plan::{
    Asked, Clock, Deletion, Event, Limits, MAX_STEPS, Observed, Record, Step, Went, plan,
};
use super::slim::{WatchedPod, build_container_ran, finished_at, waiting_reasons};
use crate::broker::Publisher;
use crate::cluster::Cluster;
use crate::config::ExecutorConfig;
use crate::events::{
    BuildEvent, BuildRef, DeadlineExceeded, Failed, LaunchFailed, Launched, Running, Succeeded,
    TimedOut, build_event,
};
use crate::intake::BuildId;
use crate::naming;
use crate::protocol::client::Protocol;
use crate::protocol::{Answer, Question};
use crate::secret::Secret;
use crate::status::{StatusUpdater, Update};
use crate::telemetry::metrics;

/// Watch events taken at once, and pods evaluated concurrently at a resync.
const EVENT_BATCH: usize = 256;
/// Pods under evaluation past which the watch is not read until some are done: a broker that
/// confirms slowly holds the reporter back rather than piling up evaluations.
const MAX_EVALUATING: usize = EVENT_BATCH;
/// How long after first seeing a pod its token Secret may still be missing (the launcher
/// creates it right after the pod); past this, updates that need the token are skipped.
const TOKEN_WAIT: Duration = Duration::from_secs(30);

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
    /// What this reporter leaves for the next, and finds from the previous one.
    pub handover: Arc<Handover>,
}

/// What the reporter keeps of a live pod: the pod (slimmed), its record, and the build's token
/// once read.
#[derive(Debug)]
struct Track {
    pod: Pod,
    record: Record,
    token: Option<Secret>,
    first_seen: Instant,
}

impl Track {
    fn new(pod: Pod) -> Self {
        let now = Instant::now();
        Self {
            pod,
            record: Record::new(now),
            token: None,
            first_seen: now,
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
    /// When its outcome was published.
    published: Instant,
    /// When its launch's record was learnt.
    recorded: Instant,
    idle_until: Option<Instant>,
}

impl Done {
    /// The finished part of `track`, once nothing but its collection is left to do.
    fn of(track: &Track) -> Option<Done> {
        let (published, recorded) = track.record.only_collection_left()?;
        Some(Done {
            name: track.pod.metadata.name.clone().unwrap_or_default(),
            finished_at: finished_at(&track.pod),
            published,
            recorded,
            idle_until: track.record.idle_until(),
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
    /// What the previous reporter published, for the pods of the first list.
    handed_over: Option<Note>,
    /// Pods this reporter deleted, until the watch says they are gone: updates of theirs that
    /// were on the way before the delete must not start their reports over.
    deleted: HashSet<String>,
    /// Pods under evaluation (their tracks are with it), with the updates that came meanwhile.
    busy: HashMap<String, Vec<Pod>>,
    /// Pods under evaluation that are gone (deleted, or not in a relist): forgotten once back.
    gone: HashSet<String>,
}

impl Tracked {
    /// Forgets, at the end of a relist, every pod the relist did not show.
    fn relisted(&mut self) {
        self.handed_over = None;
        if let Some(seen) = self.relisting.take() {
            self.live.retain(|uid, _| seen.contains(uid));
            self.done.retain(|uid, _| seen.contains(uid));
            self.deleted.retain(|uid| seen.contains(uid));
            let gone = self.busy.keys().filter(|uid| !seen.contains(*uid));
            self.gone.extend(gone.cloned());
        }
    }

    /// A pod first seen now: what the previous reporter published of it is not published again.
    fn first_seen(&self, pod: Pod) -> Track {
        let mut track = Track::new(pod);
        let name = track.pod.metadata.name.as_deref().unwrap_or_default();
        if let Some(reported) = self.handed_over.as_ref().and_then(|n| n.of(name)) {
            track.record.handed_over(reported, Instant::now());
        }
        track
    }

    /// What this reporter has published, for the next one.
    fn note(&self) -> Note {
        let mut note = Note::default();
        for track in self.live.values() {
            if let (Some(name), Some(reported)) =
                (&track.pod.metadata.name, track.record.reported())
            {
                note.insert(name.clone(), reported);
            }
        }
        for done in self.done.values() {
            note.insert(done.name.clone(), Reported::Finished);
        }
        note
    }

    fn forget(&mut self, uid: &str) {
        self.live.remove(uid);
        self.done.remove(uid);
        self.deleted.remove(uid);
        if let Some(queued) = self.busy.get_mut(uid) {
            queued.clear();
            self.gone.insert(uid.to_owned());
        }
    }

    /// Takes in pod updates (in watch order, already slimmed by [`WatchedPod::into_pod`]): the
    /// changed pods that are not under evaluation, to evaluate now.
    fn apply(&mut self, pods: Vec<Pod>) -> Vec<Evaluation> {
        let mut order: HashMap<String, usize> = HashMap::new();
        let mut groups: Vec<(String, Vec<Pod>)> = Vec::new();
        for pod in pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if let Some(seen) = self.relisting.as_mut() {
                seen.insert(uid.clone());
            }
            // What changes now about a settled pod (its deletion) needs nothing but forgetting
            // it, which the Delete event does.
            if self.settled(&uid) {
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
        groups
            .into_iter()
            .filter_map(|(uid, updates)| self.check_out(uid, updates))
            .collect()
    }

    /// Takes updates of one pod (in watch order): queued when the pod is under evaluation, else
    /// its track with the first update and the rest, to evaluate now.
    fn check_out(&mut self, uid: String, updates: Vec<Pod>) -> Option<Evaluation> {
        if let Some(queued) = self.busy.get_mut(&uid) {
            queued.extend(updates);
            return None;
        }
        let mut updates = updates.into_iter();
        let first = updates.next()?;
        let track = match self.live.remove(&uid) {
            Some(mut t) => {
                t.pod = first;
                t
            }
            None => self.first_seen(first),
        };
        self.busy.insert(uid.clone(), Vec::new());
        Some((uid, track, updates.collect()))
    }

    /// Takes back a pod whose evaluation ended: the next evaluation if updates came meanwhile
    /// and the pod still needs them, else keeps it.
    fn back(&mut self, uid: String, track: Track) -> Option<Evaluation> {
        let queued = self.busy.get_mut(&uid).map(std::mem::take);
        self.put_back(uid.clone(), track);
        // Kept live: neither gone nor settled by the evaluation (which `keep` decides).
        let live = self.live.contains_key(&uid);
        queued
            .filter(|q| live && !q.is_empty())
            .and_then(|q| self.check_out(uid, q))
    }

    /// Takes back a pod whose evaluation ended, whatever came meanwhile.
    fn put_back(&mut self, uid: String, track: Track) {
        self.busy.remove(&uid);
        if !self.gone.remove(&uid) {
            self.keep(uid, track);
        }
    }

    /// Updates of this pod need nothing: its outcome is reported and only its collection is
    /// left, or this reporter deleted it.
    fn settled(&self, uid: &str) -> bool {
        self.done.contains_key(uid) || self.deleted.contains(uid)
    }

    /// Keeps one evaluated pod: as [`Done`] once finished, not at all once deleted.
    fn keep(&mut self, uid: String, track: Track) {
        if track.record.deleted() {
            self.deleted.insert(uid);
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
        for (uid, track) in std::mem::take(&mut self.live) {
            self.keep(uid, track);
        }
    }
}

/// A pod to evaluate: its uid, its track (holding the first update) and the updates after it.
type Evaluation = (String, Track, Vec<Pod>);

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
                    _ = stop.cancelled() => break,
                    r = leading.wait_for(|l| *l) => if r.is_err() { break },
                }
                info!("reporting for this executor");
                if self.report(&mut leading, &stop).await == Ended::Stopped {
                    info!("stopped reporting for this executor");
                    break;
                }
                info!("no longer reporting for this executor");
            }
            self.handover.reporter_stopped();
        }
        .instrument(span)
        .await
    }

    /// Reports until leadership is lost or `stop`. Either way the evaluations under way end
    /// first, so the events they are sending are confirmed (or given up) before it returns.
    async fn report(&self, leading: &mut watch::Receiver<bool>, stop: &CancellationToken) -> Ended {
        let api: Api<WatchedPod> = Api::namespaced(self.cluster.client(), &self.cluster.namespace);
        let selector = naming::executor_selector(&self.cluster.executor);
        let mut stream = watcher(api, watcher::Config::default().labels(&selector))
            .default_backoff()
            .ready_chunks(EVENT_BATCH)
            .boxed();
        let mut tracked = Tracked {
            handed_over: self.handover.take_found(),
            ..Tracked::default()
        };
        let mut evaluating = FuturesUnordered::new();
        let mut tick = tokio::time::interval(self.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break Ended::Stopped,
                changed = leading.changed() => {
                    if changed.is_err() || !*leading.borrow() {
                        break Ended::NotLeading;
                    }
                }
                Some((uid, track)) = evaluating.next(), if !evaluating.is_empty() => {
                    if let Some(next) = tracked.back(uid, track) {
                        evaluating.push(self.evaluate_each(next));
                    }
                }
                events = stream.next(), if evaluating.len() < MAX_EVALUATING => {
                    let Some(events) = events else { break Ended::NotLeading };
                    for next in self.take_in(&mut tracked, events) {
                        evaluating.push(self.evaluate_each(next));
                    }
                }
                _ = tick.tick() => self.resync(&mut tracked).await,
            }
        };
        while let Some((uid, track)) = evaluating.next().await {
            tracked.put_back(uid, track);
        }
        if ended == Ended::Stopped {
            self.handover.leave(tracked.note());
        }
        ended
    }

    /// Takes in a batch of watch events: the pods to evaluate now. Updates of a pod under
    /// evaluation wait for it; a deletion or a relist forgets pods, those under evaluation once
    /// it ends.
    fn take_in(
        &self,
        tracked: &mut Tracked,
        events: Vec<Result<watcher::Event<WatchedPod>, watcher::Error>>,
    ) -> Vec<Evaluation> {
        let mut applies = Vec::new();
        let mut ready = Vec::new();
        for event in events {
            match event {
                Ok(watcher::Event::InitApply(pod) | watcher::Event::Apply(pod)) => {
                    applies.push(pod.into_pod());
                }
                other => {
                    ready.extend(tracked.apply(std::mem::take(&mut applies)));
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
        ready.extend(tracked.apply(applies));
        ready
    }

    /// Evaluates a pod's updates in their order, and gives its track back.
    async fn evaluate_each(&self, (uid, mut track, rest): Evaluation) -> (String, Track) {
        self.evaluate(&mut track).await;
        for pod in rest {
            track.pod = pod;
            self.evaluate(&mut track).await;
        }
        (uid, track)
    }

    /// The periodic look: time-based verdicts of live pods, collection of finished ones.
    async fn resync(&self, tracked: &mut Tracked) {
        let now = Instant::now();
        let due = |until: Option<Instant>| until.is_none_or(|until| until <= now);
        futures::stream::iter(
            tracked
                .live
                .values_mut()
                .filter(|t| due(t.record.idle_until())),
        )
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
            tracked.deleted.insert(uid);
        }
        tracked.settle();
    }

    fn policy(&self) -> Policy {
        Policy {
            grace: self.config.options.kubernetes.image_pull_grace_period,
            pending_timeout: self.config.options.kubernetes.pending_timeout,
        }
    }

    fn limits(&self) -> Limits {
        let k = &self.config.options.kubernetes;
        Limits {
            pod_ttl: k.pod_ttl,
            pending_timeout: k.pending_timeout,
            max_build_timeout: k.max_build_timeout,
            busy_for: self.busy_for,
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

    /// Looks at one pod and carries out what its plan calls for, step by step, until the plan
    /// waits or a step fails (the next look tries again).
    async fn evaluate(&self, track: &mut Track) {
        if track.record.deleted() {
            return;
        }
        let clock = Clock::now();
        let info = self.build_info(&track.pod);
        let observed = self.observe(track, &clock, info.is_some());
        let mut step = plan(&observed, &track.record, &self.limits(), &clock);
        if let Step::Wait(_) = step {
            // A look that only waits logs nothing, so it gets no span.
            track.record.apply(&step, Went::Done, clock.now);
            return;
        }
        let span = info_span!("build", buildId = info.as_ref().map(|i| i.build.0), executor = %self.cluster.executor, attempt = info.as_ref().map(|i| i.attempt));
        // Instrumented, not entered: evaluations of different pods run concurrently on one task.
        async move {
            for _ in 0..MAX_STEPS {
                let went = match &step {
                    Step::Wait(_) => Went::Done,
                    _ => self.carry_out(&step, track, &observed, info.as_ref()).await,
                };
                if !track.record.apply(&step, went, clock.now) {
                    return;
                }
                step = plan(&observed, &track.record, &self.limits(), &clock);
            }
            warn!(
                ?observed,
                "a look at a pod did not settle; it goes on at the next look"
            );
        }
        .instrument(span)
        .await;
    }

    /// What the pod shows now, its record brought up to date with it.
    fn observe(&self, track: &mut Track, clock: &Clock, known: bool) -> Observed {
        track.record.look(waiting_reasons(&track.pod), clock.now);
        let record = &track.record;
        let verdict = assess(
            &track.pod,
            clock.wall.as_second(),
            |k| record.trouble_age(k, clock.now),
            &self.policy(),
        );
        track.record.saw(&verdict, clock);
        let pod = &track.pod;
        Observed {
            verdict,
            known,
            deleting: pod.metadata.deletion_timestamp.is_some(),
            created_at: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            finished_at: finished_at(pod),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ran: build_container_ran(pod),
        }
    }

    /// Carries out one step of a pod's plan.
    async fn carry_out(
        &self,
        step: &Step,
        track: &mut Track,
        observed: &Observed,
        info: Option<&BuildInfo>,
    ) -> Went {
        let pod_name = track.pod.metadata.name.clone().unwrap_or_default();
        if let Step::Delete(why) = step {
            return went(gc::delete(&self.cluster, &pod_name, *why).await);
        }
        // Every other step is about a known build: plan never gives one for an orphan.
        let Some(info) = info else {
            return Went::Failed;
        };
        match step {
            Step::AskLaunch => Went::Answer(match self.protocol.state(info.build.0).await {
                Some(state) => Asked::State(state),
                None => Asked::Unreachable,
            }),
            Step::RecordLaunch => went(self.record_launch(info.build.0).await),
            Step::Publish(event) => went(self.publish(*event, observed, info, &pod_name).await),
            Step::Tell(update) => self.status_update(track, info, update.clone()).await,
            Step::Delete(_) | Step::Wait(_) => Went::Done,
        }
    }

    /// Deletes a finished pod kept as [`Done`] once due; until then, sets when to look again.
    /// True once deleted.
    async fn collect_done(&self, done: &mut Done) -> bool {
        let clock = Clock::now();
        let finished_for = gc::finished_for(done.finished_at, done.published, &clock);
        let recorded_for = clock.now.saturating_duration_since(done.recorded);
        match gc::collection(&self.limits(), finished_for, recorded_for) {
            Ok(()) => gc::delete(&self.cluster, &done.name, Deletion::Collect).await,
            Err(wait) => {
                done.idle_until = Some(clock.now + wait);
                false
            }
        }
    }

    /// Records the launch of a pod the reporter sees (its launcher did not); true once noted.
    async fn record_launch(&self, build: u64) -> bool {
        let question = Question::Launched {
            build,
            exec: self.cluster.executor.clone(),
            version: None,
        };
        match self.protocol.ask(question).await {
            Ok(a) if matches!(a.answer, Answer::Noted | Answer::StopNoted { .. }) => true,
            Ok(a) => {
                warn!(answer = ?a.answer, "unexpected answer to a launch record");
                false
            }
            Err(e) => {
                warn!(error = %e, "cannot record the launch yet; will try again");
                false
            }
        }
    }

    /// Publishes one event about a pod (confirmed); true once confirmed. Its metric and log line
    /// go with the confirm.
    async fn publish(&self, event: Event, o: &Observed, info: &BuildInfo, pod: &str) -> bool {
        let build = BuildRef {
            build_id: info.build,
            job_id: info.job_id,
            executor: Some(self.cluster.executor.clone()),
            namespace: Some(self.cluster.namespace.clone()),
            pod: Some(pod.to_owned()),
            attempt: info.attempt,
        };
        let data = event_data(event, &o.verdict, build);
        let ty = data.event_type();
        let ev = build_event(&self.source, data);
        if let Err(e) = self.publisher.publish_event(&ev).await {
            warn!(error = %e, event = ty.suffix(), "event not confirmed; will try again");
            return false;
        }
        let executor = &self.cluster.executor;
        match (event, &o.verdict) {
            (Event::Running, _) => {
                if let Some(created) = o.created_at {
                    let age = jiff::Timestamp::now()
                        .as_second()
                        .saturating_sub(created)
                        .max(0);
                    metrics::pod_started(executor, Duration::from_secs(age as u64));
                }
                info!(%pod, "build running");
            }
            (Event::LaunchFailed, Verdict::LaunchFailed { reason, .. }) => {
                metrics::launch_failed(executor, reason);
                warn!(%pod, %reason, "build failed to start");
            }
            (Event::Finished { .. }, verdict) => {
                let outcome = verdict.state();
                metrics::build_completed(executor, outcome);
                info!(%pod, outcome, "build finished");
            }
            _ => {}
        }
        true
    }

    /// Sends an update with the build's own token, read from its Secret. The Secret is created
    /// just after the pod, so the watch can see the pod first: then the update is `NotYet`.
    async fn status_update(&self, track: &mut Track, info: &BuildInfo, update: Update) -> Went {
        let (Some(status), Some(api)) = (&self.status, &info.api_uri) else {
            return Went::Done;
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
                Went::Done
            }
            None if info.token_secret.is_some() && track.first_seen.elapsed() < TOKEN_WAIT => {
                debug!("the build token Secret is not readable yet; status update deferred");
                Went::NotYet
            }
            None => {
                debug!("no build token available; status update skipped");
                Went::Done
            }
        }
    }
}

fn went(done: bool) -> Went {
    if done { Went::Done } else { Went::Failed }
}

/// The typed event of `event` about `build`'s pod, whose state is `verdict`.
fn event_data(event: Event, verdict: &Verdict, build: BuildRef) -> BuildEvent {
    match (event, verdict) {
        (Event::Launched, _) => Launched::new(build).into(),
        (Event::Running, _) => Running::new(build).into(),
        (Event::LaunchFailed, Verdict::LaunchFailed { reason, message }) => LaunchFailed {
            build,
            reason: reason.clone(),
            message: message.clone(),
        }
        .into(),
        (
            Event::Finished { .. },
            Verdict::Failed {
                exit_code,
                reason,
                message,
            },
        ) => Failed {
            build,
            reason: reason.clone(),
            message: message.clone(),
            exit_code: *exit_code,
        }
        .into(),
        (Event::Finished { .. }, Verdict::TimedOut { message }) => TimedOut {
            build,
            reason: DeadlineExceeded::DeadlineExceeded,
            message: message.clone(),
        }
        .into(),
        // Plan gives a finished or failed-to-start event only with its verdict: succeeded here.
        _ => Succeeded::new(build).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::LaunchState;
    use crate::watch::slim::{finished_status, full_pod};
    use serde_json::json;

    /// A track whose record went through `steps`, each done.
    fn track(status: serde_json::Value, steps: &[(Step, Went)]) -> Track {
        let mut t = Track::new(full_pod(status, Some("n1"), false));
        for (step, went) in steps {
            t.record.apply(step, *went, Instant::now());
        }
        t
    }

    fn phase_of(track: &Track) -> Option<&str> {
        track.pod.status.as_ref()?.phase.as_deref()
    }

    fn pod(phase: &str) -> Pod {
        full_pod(json!({ "phase": phase }), Some("n1"), false)
    }

    #[test]
    fn updates_of_a_pod_under_evaluation_wait_for_it_in_their_order() {
        let mut tracked = Tracked::default();
        let (uid, track, rest) = tracked.check_out("u".into(), vec![pod("Pending")]).unwrap();
        assert_eq!((phase_of(&track), rest.len()), (Some("Pending"), 0));
        assert!(
            tracked
                .check_out("u".into(), vec![pod("Running"), pod("Succeeded")])
                .is_none(),
            "a second evaluation of a pod never starts while one runs"
        );
        let (uid, track, rest) = tracked.back(uid, track).expect("the queued updates");
        assert_eq!(phase_of(&track), Some("Running"));
        assert_eq!(
            rest.iter()
                .map(|p| p.status.as_ref().unwrap().phase.as_deref())
                .collect::<Vec<_>>(),
            [Some("Succeeded")]
        );
        assert!(tracked.back(uid, track).is_none());
        assert!(tracked.live.contains_key("u") && tracked.busy.is_empty());
        assert!(
            tracked
                .check_out("u".into(), vec![pod("Running")])
                .is_some(),
            "once back, the pod's next update is evaluated at once"
        );
    }

    #[test]
    fn a_pod_gone_while_under_evaluation_is_forgotten_once_back() {
        let mut tracked = Tracked::default();
        let (deleted, deleted_track, _) =
            tracked.check_out("d".into(), vec![pod("Running")]).unwrap();
        let (unlisted, unlisted_track, _) =
            tracked.check_out("r".into(), vec![pod("Running")]).unwrap();
        assert!(
            tracked
                .check_out("d".into(), vec![pod("Succeeded")])
                .is_none()
        );
        tracked.forget("d");
        tracked.relisting = Some(HashSet::new());
        tracked.relisted();
        assert!(
            tracked.back(deleted, deleted_track).is_none(),
            "its queued update is dropped"
        );
        assert!(tracked.back(unlisted, unlisted_track).is_none());
        assert!(tracked.live.is_empty() && tracked.done.is_empty());
        assert!(tracked.busy.is_empty() && tracked.gone.is_empty());
    }

    #[test]
    fn a_pod_deleted_by_its_evaluation_takes_no_queued_update() {
        let mut tracked = Tracked::default();
        let (uid, mut track, _) = tracked.check_out("x".into(), vec![pod("Failed")]).unwrap();
        assert!(tracked.check_out("x".into(), vec![pod("Failed")]).is_none());
        track
            .record
            .apply(&Step::Delete(Deletion::Collect), Went::Done, Instant::now());
        assert!(tracked.back(uid, track).is_none());
        assert!(tracked.settled("x") && tracked.live.is_empty());
    }

    #[test]
    fn a_reported_and_recorded_finished_pod_is_kept_as_its_collection_data_only() {
        let mut tracked = Tracked::default();
        let recorded = (
            Step::AskLaunch,
            Went::Answer(Asked::State(LaunchState::Launched)),
        );
        let outcome = (Step::Publish(Event::Finished { tell: false }), Went::Done);
        let finished = track(finished_status(), &[recorded.clone(), outcome.clone()]);
        let failed_to_start = track(
            json!({"phase": "Pending"}),
            &[
                recorded.clone(),
                (Step::Publish(Event::LaunchFailed), Went::Done),
            ],
        );
        let unrecorded = track(finished_status(), std::slice::from_ref(&outcome));
        let owed = track(
            finished_status(),
            &[
                recorded.clone(),
                (Step::Publish(Event::Finished { tell: true }), Went::Done),
            ],
        );
        let running = track(json!({"phase": "Running"}), &[]);
        let deleted = track(
            finished_status(),
            &[
                recorded,
                outcome,
                (Step::Delete(Deletion::Collect), Went::Done),
            ],
        );
        for (uid, t) in [
            ("f", finished),
            ("s", failed_to_start),
            ("u", unrecorded),
            ("o", owed),
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
            tracked.live.contains_key("o"),
            "a FAILURE update still owed keeps the pod live"
        );
        assert!(
            tracked.live.contains_key("s"),
            "a pod that could not start is removed live"
        );
        assert!(
            !tracked.live.contains_key("d"),
            "a deleted pod is forgotten"
        );
        assert!(
            tracked.settled("d") && tracked.settled("f") && !tracked.settled("r"),
            "updates of a pod this reporter deleted, or of a finished one, need nothing"
        );
        tracked.forget("d");
        assert!(!tracked.settled("d"), "until the watch says it is gone");
        // A relist that shows only the running pod forgets the others, finished ones included.
        tracked.relisting = Some(HashSet::from(["r".to_string()]));
        tracked.relisted();
        assert_eq!(tracked.live.len(), 1);
        assert!(tracked.done.is_empty());
    }
}
