//! Launch: carries out `start`, `stop` and `verify` against the executors' clusters.
//!
//! Whether, where and when a pod may be created is decided by the launch protocol
//! ([`crate::protocol`], docs/protocol.md); this module drives its `Start` machine step by
//! step with the real calls: it asks the sequencer, creates, looks, announces and deletes, and
//! turns what the clusters answer into the machine's facts. It decides nothing itself.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::breaker::{Admission, State};
use crate::cluster::{CallError, Cluster};
use crate::config::{EcosystemSettings, ExecutorConfig, TokenDelivery};
use crate::intake::{BuildId, StartBuild};
use crate::naming;
use crate::podspec::{PodInputs, build_pod, token_secret};
use crate::protocol::client::Protocol;
use crate::protocol::stop::{self, StopEnd, StopStep};
use crate::protocol::{
    Answer, CreateFailure, Fact, Misconfiguration, Outcome, Question, Start, Step,
};
use crate::routing::{Plan, Router};
use crate::telemetry::metrics;
use crate::watch::assess::{Policy, Verdict, assess};

/// One executor: its cluster and its configuration.
#[derive(Debug, Clone)]
pub struct Executor {
    /// The cluster.
    pub cluster: Cluster,
    /// Its configuration block.
    pub config: ExecutorConfig,
}

impl Executor {
    /// The `sdbuild` selector of a build on this executor (its own prefix).
    pub fn build_selector(&self, build: BuildId) -> String {
        naming::build_selector(&self.config.options.prefix, build)
    }

    /// The assessment thresholds of this executor.
    pub fn policy(&self) -> Policy {
        Policy {
            grace: self.config.options.kubernetes.image_pull_grace_period,
            pending_timeout: self.config.options.kubernetes.pending_timeout,
        }
    }

    /// S: a permitted create, and its call's retries, are sent within this of its question
    /// (two call timeouts: the first retry fits; later ones renew the permission).
    pub fn send_within(&self) -> Duration {
        self.config.options.fusebox.breaker.timeout * 2
    }

    /// S + H: how long after a permission its create may still land.
    pub fn busy_for(&self) -> Duration {
        self.send_within() + self.config.options.kubernetes.create_lands_within
    }
}

/// Every executor, by name.
pub type Executors = BTreeMap<String, Executor>;

/// The S + H of every executor, for the sequencer's table.
pub fn busy_windows(executors: &Executors) -> BTreeMap<String, Duration> {
    executors
        .iter()
        .map(|(name, ex)| (name.clone(), ex.busy_for()))
        .collect()
}

/// A build's pod, as the launch needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRef {
    /// Its name.
    pub name: String,
    /// Its uid (the token Secret's owner).
    pub uid: String,
    /// The attempt that created it (its `build.launched` carries that attempt's id).
    pub attempt: u32,
    /// Its identity (name, namespace, labels, annotations), which its token Secret copies.
    owner: Pod,
}

impl PodRef {
    fn of(pod: &Pod, attempt: u32) -> PodRef {
        Self::from_meta(&pod.metadata, attempt)
    }

    fn from_meta(meta: &ObjectMeta, attempt: u32) -> PodRef {
        let mut owner = Pod::default();
        owner.metadata.name = meta.name.clone();
        owner.metadata.namespace = meta.namespace.clone();
        owner.metadata.labels = meta.labels.clone();
        owner.metadata.annotations = meta.annotations.clone();
        PodRef {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            attempt: naming::pod_attempt(meta).unwrap_or(attempt),
            owner,
        }
    }
}

/// Publishes `build.launched` for a pod (confirmed); `false` when it was not confirmed.
pub trait Announce {
    /// Announces the launch of `build` on `executor`'s pod.
    fn launched(
        &self,
        build: &StartBuild,
        executor: &str,
        namespace: &str,
        pod: &PodRef,
    ) -> impl Future<Output = bool> + Send;
}

/// How a `start` ended, and where its creates were sent.
#[derive(Debug)]
pub struct Started {
    /// The machine's outcome.
    pub outcome: Outcome<String, PodRef>,
    /// Executors this handling sent a create to (for `x-bcw-executors`).
    pub touched: BTreeSet<String>,
    /// What the last failed create said (for the dead letter or the retry).
    pub last_error: Option<String>,
}

/// What a `stop` came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// No pod exists and none can appear.
    Done {
        /// Pods deleted.
        deleted: u32,
        /// Executor, namespace and name of (one of) the deleted pods.
        location: Option<(String, String, String)>,
    },
    /// A create permitted before the stop may still land: ask again after this long.
    Recheck {
        /// How long.
        after: Duration,
    },
    /// The executor the build is placed on did not answer the delete.
    Unconfirmed,
    /// The sequencer could not be asked.
    Unanswered,
}

/// What a `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOutcome {
    /// Executor holding the pod, when one was found.
    pub executor: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// The verdict (`None`: no pod anywhere).
    pub verdict: Option<Verdict>,
    /// Executors that could not be asked.
    pub unreachable: BTreeSet<String>,
}

/// Everything a launch needs besides the message.
#[derive(Debug)]
pub struct Launcher {
    router: Router,
    executors: Arc<Executors>,
    ecosystem: EcosystemSettings,
    allow_list: Vec<String>,
    protocol: Protocol,
}

impl Launcher {
    /// A launcher over these executors, asking `protocol`.
    pub fn new(
        router: Router,
        executors: Arc<Executors>,
        ecosystem: EcosystemSettings,
        allow_list: Vec<String>,
        protocol: Protocol,
    ) -> Self {
        Self {
            router,
            executors,
            ecosystem,
            allow_list,
            protocol,
        }
    }

    /// The executors.
    pub fn executors(&self) -> &Arc<Executors> {
        &self.executors
    }

    /// The executors a build may be launched on, best first (empty: every one excludes its
    /// image).
    pub fn candidates(&self, build: &StartBuild) -> Vec<String> {
        let pin = build.annotations.executor();
        if let Some(p) = self.router.ignored_pin(pin) {
            warn!(
                executor = p,
                "the screwdriver.cd/executor annotation names an unknown executor; routing by weight"
            );
        }
        match self.router.plan(build.build_id, &build.container, pin) {
            Plan::Nowhere => Vec::new(),
            plan => plan.candidates().to_vec(),
        }
    }

    /// Of the executors an earlier handling created on, those whose creates still fail here.
    /// One whose creates land again is not avoided: a build placed there goes back at once
    /// instead of waiting out the placement's busy window, which every new sequencer starts
    /// afresh (with sequencers changing faster than that window, it would wait until `maxWait`).
    fn still_failing(&self, avoid: BTreeSet<String>) -> BTreeSet<String> {
        avoid
            .into_iter()
            .filter(|x| {
                self.executors
                    .get(x)
                    .is_none_or(|ex| !ex.cluster.creates_land())
            })
            .collect()
    }

    /// Executors whose breaker admits calls now.
    fn usable(&self) -> BTreeSet<String> {
        self.executors
            .iter()
            .filter(|(_, ex)| ex.cluster.breaker_state() != State::Open)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Carries out a `start` of a build with these candidates (not empty); `avoid` are the
    /// executors earlier handlings of this message sent creates to.
    pub async fn start(
        &self,
        build: &StartBuild,
        candidates: Vec<String>,
        avoid: BTreeSet<String>,
        attempt: u32,
        announce: &impl Announce,
    ) -> Started {
        let mut machine =
            Start::new(build.build_id.0, candidates).avoiding(self.still_failing(avoid));
        let mut touched = BTreeSet::new();
        let mut last_error = None;
        let mut asked_at = Instant::now();
        let mut step = machine.begin(&self.usable());
        loop {
            let fact = match step {
                Step::Ask(q) => match self.protocol.ask(q).await {
                    Ok(asked) => {
                        asked_at = asked.asked_at;
                        Fact::Answered(asked.answer)
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot ask the sequencer; the build will be tried again");
                        Fact::Unanswered
                    }
                },
                Step::Create { exec } => {
                    touched.insert(exec.clone());
                    let (fact, error) = self.create(build, attempt, &exec, asked_at).await;
                    last_error = error.or(last_error);
                    fact
                }
                Step::Look { exec } => self.look(&exec, build.build_id).await,
                Step::Announce { exec, pod, .. } => {
                    self.announce(build, &exec, &pod, announce).await
                }
                Step::Delete { exec, pod } => {
                    self.delete(&exec, &pod.name).await;
                    Fact::Deleted
                }
                Step::Done(outcome) => {
                    return Started {
                        outcome,
                        touched,
                        last_error,
                    };
                }
            };
            step = machine.next(fact, &self.usable());
        }
    }

    /// Sends the build's pod to `exec`, within S of the question that permitted it.
    async fn create(
        &self,
        build: &StartBuild,
        attempt: u32,
        exec: &str,
        asked_at: Instant,
    ) -> (Fact<String, PodRef>, Option<String>) {
        let Some(ex) = self.executors.get(exec) else {
            // Another replica's configuration names it; this one cannot reach it.
            let error = format!("{exec} is not an executor of this replica");
            return (Fact::CreateFailed(CreateFailure::NotSent), Some(error));
        };
        let pod = build_pod(&PodInputs {
            executor: exec,
            config: &ex.config,
            ecosystem: ex
                .config
                .options
                .ecosystem
                .as_ref()
                .unwrap_or(&self.ecosystem),
            build,
            attempt,
            pod_annotation_allow_list: &self.allow_list,
        });
        let send_by = asked_at + ex.send_within();
        match ex.cluster.create_pod(&pod, Some(send_by)).await {
            Ok(created) => (Fact::Created(PodRef::from_meta(&created, attempt)), None),
            Err(CallError::AlreadyExists) => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                (existing(ex, &name, build, attempt).await, None)
            }
            Err(e) => {
                let why = classify(exec, &e, ex.cluster.breaker_state() == State::Open);
                (Fact::CreateFailed(why), Some(format!("{exec}: {e}")))
            }
        }
    }

    /// The build's pod on `exec`, if it holds one.
    async fn look(&self, exec: &str, build: BuildId) -> Fact<String, PodRef> {
        let Some(ex) = self.executors.get(exec) else {
            return Fact::LookFailed;
        };
        match ex.cluster.list_pods(&ex.build_selector(build)).await {
            Ok(pods) => Fact::Found(
                pods.iter()
                    .find(|p| p.metadata.deletion_timestamp.is_none())
                    .map(|p| PodRef::of(p, 1)),
            ),
            Err(e) => {
                warn!(executor = %exec, error = %e, "cannot look for the build's pod");
                Fact::LookFailed
            }
        }
    }

    /// Gives the pod its token Secret, then publishes its `build.launched`.
    async fn announce(
        &self,
        build: &StartBuild,
        exec: &str,
        pod: &PodRef,
        announce: &impl Announce,
    ) -> Fact<String, PodRef> {
        let Some(ex) = self.executors.get(exec) else {
            return Fact::PrepareFailed;
        };
        if ex.config.options.kubernetes.token_delivery == TokenDelivery::Secret {
            let secret = token_secret(&pod.owner, &build.token, &pod.uid);
            if let Err(e) = ex.cluster.create_secret(&secret).await {
                warn!(executor = %exec, error = %e, "the build token Secret could not be created");
                return Fact::PrepareFailed;
            }
        }
        if announce
            .launched(build, exec, &ex.cluster.namespace, pod)
            .await
        {
            Fact::Announced
        } else {
            Fact::AnnounceFailed
        }
    }

    async fn delete(&self, exec: &str, pod: &str) {
        if let Some(ex) = self.executors.get(exec)
            && let Err(e) = ex.cluster.delete_pod(pod, Some(0), Admission::Side).await
        {
            warn!(executor = %exec, %pod, error = %e, "cannot delete the stopped build's pod; the stop's re-check will");
        }
    }

    /// Carries out a `stop` (docs/protocol.md): recorded first, then the pods deleted once no
    /// create permitted before it can land.
    pub async fn stop(&self, build: BuildId) -> StopOutcome {
        let noted = match self.protocol.ask(Question::Stop { build: build.0 }).await {
            Ok(a) => a.answer,
            Err(e) => {
                warn!(error = %e, "cannot record the stop yet");
                return StopOutcome::Unanswered;
            }
        };
        let Answer::StopNoted { at, busy_for } = noted else {
            warn!(answer = ?noted, "the sequencer did not answer the stop as a stop");
            return StopOutcome::Unanswered;
        };
        match stop::step(busy_for) {
            StopStep::Recheck { after } => StopOutcome::Recheck {
                after: Duration::from_millis(after),
            },
            StopStep::Delete => {
                let (deleted, location, answered) = self.delete_everywhere(build, at).await;
                match stop::settle(answered) {
                    StopEnd::Settled => StopOutcome::Done { deleted, location },
                    StopEnd::Unconfirmed => StopOutcome::Unconfirmed,
                }
            }
        }
    }

    /// Deletes the build's pods on every executor; whether `at` (where it is placed) answered.
    async fn delete_everywhere(
        &self,
        build: BuildId,
        at: Option<String>,
    ) -> (u32, Option<(String, String, String)>, bool) {
        let mut deleted = 0u32;
        let mut location = None;
        let mut answered = true;
        for (name, ex) in self.executors.iter() {
            match ex.cluster.delete_pods(&ex.build_selector(build)).await {
                Ok(pods) => {
                    deleted += pods.len() as u32;
                    if let Some(p) = pods.first() {
                        let pod = p.metadata.name.clone().unwrap_or_default();
                        location = Some((name.clone(), ex.cluster.namespace.clone(), pod));
                    }
                }
                Err(e) => {
                    warn!(executor = %name, error = %e, "cannot delete the build's pods there yet");
                    answered &= at.as_deref() != Some(name.as_str());
                }
            }
        }
        (deleted, location, answered)
    }

    /// Carries out a `verify`: finds the build's pod and assesses it.
    pub async fn verify(&self, build: &StartBuild) -> VerifyOutcome {
        let mut out = VerifyOutcome {
            executor: None,
            namespace: None,
            pod: None,
            verdict: None,
            unreachable: BTreeSet::new(),
        };
        let now = jiff::Timestamp::now().as_second();
        for (name, ex) in self.executors.iter() {
            let pods = match ex
                .cluster
                .list_pods(&ex.build_selector(build.build_id))
                .await
            {
                Ok(pods) => pods,
                Err(_) => {
                    out.unreachable.insert(name.clone());
                    continue;
                }
            };
            if let Some(pod) = pods
                .into_iter()
                .find(|p| p.metadata.deletion_timestamp.is_none())
            {
                // Grace periods count from the pod's creation: verify has no memory.
                let created = pod.metadata.creation_timestamp.as_ref();
                let age = created
                    .map(|t| Duration::from_secs(now.saturating_sub(t.0.as_second()).max(0) as u64))
                    .unwrap_or_default();
                out.verdict = Some(assess(&pod, now, |_| age, &ex.policy()));
                out.executor = Some(name.clone());
                out.namespace = Some(ex.cluster.namespace.clone());
                out.pod = pod.metadata.name.clone();
                return out;
            }
        }
        out
    }
}

/// The existing pod of that name, after a 409: this build's (adopt it) or another's.
async fn existing(
    ex: &Executor,
    name: &str,
    build: &StartBuild,
    attempt: u32,
) -> Fact<String, PodRef> {
    match ex.cluster.get_pod(name).await {
        Ok(Some(pod)) if same_build(&pod, &ex.build_selector(build.build_id)) => {
            Fact::Exists(PodRef::of(&pod, attempt))
        }
        Ok(Some(_)) => Fact::CreateFailed(CreateFailure::NameTaken),
        // Deleted while being adopted, or unreadable: look again (it may be back).
        Ok(None) | Err(_) => Fact::CreateFailed(CreateFailure::Ambiguous),
    }
}

/// What a failed create means for the protocol (`down`: the executor's breaker is open now).
fn classify(exec: &str, e: &CallError, down: bool) -> CreateFailure {
    match e {
        CallError::Invalid(_) => CreateFailure::Invalid,
        CallError::RuntimeClassMissing(_) => {
            metrics::runtime_class_rejected(exec);
            misconfigured(exec, e);
            CreateFailure::Misconfigured(Misconfiguration::RuntimeClassMissing)
        }
        CallError::Forbidden(_) | CallError::NotFound(_) | CallError::Refused { .. } => {
            misconfigured(exec, e);
            CreateFailure::Misconfigured(Misconfiguration::Refused)
        }
        CallError::QuotaExceeded(msg) => {
            info!(executor = %exec, %msg, "resource quota exhausted; trying another executor");
            CreateFailure::Quota
        }
        e if e.is_ambiguous() => CreateFailure::Ambiguous,
        CallError::Expired { .. } => CreateFailure::Expired,
        e => {
            info!(executor = %exec, error = %e, "executor unavailable; trying another");
            metrics::retried(exec, "failover");
            if down || matches!(e, CallError::BreakerOpen { .. }) {
                CreateFailure::Down
            } else {
                CreateFailure::NotSent
            }
        }
    }
}

/// Said at ERROR once per executor by its health (`cluster::health`), not once per build.
fn misconfigured(exec: &str, e: &CallError) {
    debug!(executor = %exec, error = %e, "the executor refused the build's pod");
}

/// True when the pod carries the build's `sdbuild` label.
fn same_build(pod: &Pod, selector: &str) -> bool {
    let Some((key, value)) = selector.split_once('=') else {
        return false;
    };
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .is_some_and(|v| v == value)
}
