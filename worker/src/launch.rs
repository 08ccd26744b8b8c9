//! Launch: carries out `start`, `stop` and `verify` against the executors' clusters.
//!
//! Owns the rules that make a launch happen exactly once: a deterministic pod name per build,
//! adoption of an existing pod (409 AlreadyExists, or a pod found on an executor an earlier
//! attempt touched), failover only to executors whose breaker admits calls, and never moving a
//! build away from an executor that may hold its pod until that executor has confirmed it does
//! not. It decides outcomes; the dispatcher turns them into acks, retries and events.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tracing::{debug, error, info, warn};

use crate::breaker::State;
use crate::cluster::{CallError, Cluster};
use crate::config::{EcosystemSettings, ExecutorConfig, TokenDelivery};
use crate::intake::{BuildId, StartBuild};
use crate::launches::{LaunchLog, Recorded};
use crate::naming;
use crate::podspec::{PodInputs, build_pod, token_secret};
use crate::routing::{Plan, Router};
use crate::telemetry::metrics;
use crate::tombstones::Tombstones;
use crate::watch::assess::{Policy, Verdict, assess};

/// Added to the call timeout when waiting for an earlier holder's create to land.
const IN_FLIGHT_MARGIN: Duration = Duration::from_secs(1);

/// How long a build waits before looking again when it cannot proceed and nothing says
/// otherwise.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);

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

    /// The deterministic pod name of a build on this executor.
    pub fn pod_name(&self, build: BuildId) -> String {
        naming::pod_name(&self.config.options.prefix, build)
    }

    /// The assessment thresholds of this executor.
    pub fn policy(&self) -> Policy {
        Policy {
            grace: self.config.options.kubernetes.image_pull_grace_period,
            pending_timeout: self.config.options.kubernetes.pending_timeout,
        }
    }
}

/// Every executor, by name.
pub type Executors = BTreeMap<String, Executor>;

/// What a `start` came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchOutcome {
    /// The pod exists (created now, or adopted).
    Launched {
        /// Executor holding it.
        executor: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        pod: String,
        /// It existed already.
        adopted: bool,
        /// The attempt that created the pod (an adopted pod keeps the attempt of its creator,
        /// so its `build.launched` has the id the reporter derives from the pod).
        attempt: u32,
    },
    /// The build was stopped before it launched: nothing to do.
    Stopped,
    /// Cannot proceed yet, through no fault of the build: wait without using up an attempt.
    Wait {
        /// Executors that may hold a pod of the build.
        touched: BTreeSet<String>,
        /// When to look again.
        retry_in: Duration,
        /// Why (bounded: `no_executor`, `unconfirmed`, `unrecorded`, `quota_exceeded`).
        reason: &'static str,
    },
    /// A transient failure: try again through the delay queue, using up an attempt.
    Retry {
        /// Executors that may hold a pod of the build.
        touched: BTreeSet<String>,
        /// Bounded reason.
        reason: &'static str,
        /// What happened.
        error: String,
        /// Executor involved, for the metric label.
        executor: String,
    },
    /// Can never succeed: dead-letter now.
    Refuse {
        /// Bounded reason.
        reason: &'static str,
        /// What happened.
        error: String,
    },
}

/// What a `stop` came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Every executor answered.
    Done {
        /// Pods deleted.
        deleted: u32,
        /// Executor and namespace of (one of) the deleted pods.
        location: Option<(String, String, String)>,
    },
    /// Some executors could not be asked.
    Wait {
        /// Those executors.
        unreachable: BTreeSet<String>,
        /// When to look again.
        retry_in: Duration,
        /// Pods deleted on the executors that answered.
        deleted: u32,
    },
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

/// Everything `start` needs besides the message.
#[derive(Debug)]
pub struct Launcher {
    router: Router,
    executors: Arc<Executors>,
    ecosystem: EcosystemSettings,
    allow_list: Vec<String>,
    tombstones: Arc<Tombstones>,
    launches: Arc<LaunchLog>,
}

/// A `start` to carry out.
#[derive(Debug, Clone, Copy)]
pub struct StartRequest<'a> {
    /// The build.
    pub build: &'a StartBuild,
    /// Its attempt.
    pub attempt: u32,
    /// Executors an earlier attempt may have created a pod on.
    pub touched: &'a BTreeSet<String>,
    /// The broker redelivered this message (an earlier holder may have created the pod
    /// anywhere among the candidates).
    pub redelivered: bool,
    /// Executors a create of this build was recorded for (by any replica, in the launches
    /// stream), with when: such a create may still be on the wire until its call timeout has
    /// passed. The dispatcher adds them to `touched` as well.
    pub recorded: &'a Recorded,
}

impl Launcher {
    /// A launcher over these executors.
    pub fn new(
        router: Router,
        executors: Arc<Executors>,
        ecosystem: EcosystemSettings,
        allow_list: Vec<String>,
        tombstones: Arc<Tombstones>,
        launches: Arc<LaunchLog>,
    ) -> Self {
        Self {
            router,
            executors,
            ecosystem,
            allow_list,
            tombstones,
            launches,
        }
    }

    /// The launch records.
    pub fn launches(&self) -> &Arc<LaunchLog> {
        &self.launches
    }

    /// The executors.
    pub fn executors(&self) -> &Arc<Executors> {
        &self.executors
    }

    /// The executors a build may be launched on, in its order of preference.
    pub fn candidates(&self, build: &StartBuild) -> Vec<String> {
        self.router
            .plan(
                build.build_id,
                &build.container,
                build.annotations.executor(),
            )
            .candidates()
            .to_vec()
    }

    /// Carries out a `start`.
    pub async fn start(&self, req: StartRequest<'_>) -> LaunchOutcome {
        let build = req.build;
        if self.tombstones.contains(build.build_id) {
            return LaunchOutcome::Stopped;
        }
        let pin = build.annotations.executor();
        if let Some(p) = pin
            && !self.executors.contains_key(p)
        {
            warn!(
                executor = p,
                "the screwdriver.cd/executor annotation names an unknown executor; routing by weight"
            );
        }
        let plan = self.router.plan(build.build_id, &build.container, pin);
        if matches!(plan, Plan::Nowhere) {
            return LaunchOutcome::Refuse {
                reason: "no_eligible_executor",
                error: format!("every executor excludes the image {:?}", build.container),
            };
        }
        let candidates = plan.candidates().to_vec();

        // 1. Executors that may already hold the pod must answer before anything is created
        //    elsewhere; a pod found there is adopted.
        let mut check: Vec<String> = Vec::new();
        for name in candidates.iter().chain(req.touched.iter()) {
            let relevant = req.touched.contains(name) || req.redelivered;
            if relevant && self.executors.contains_key(name) && !check.contains(name) {
                check.push(name.clone());
            }
        }
        let mut unconfirmed = BTreeSet::new();
        let mut retry_in = DEFAULT_WAIT;
        for name in &check {
            let ex = &self.executors[name];
            match self.pod_on(name, ex, build.build_id).await {
                Ok(Some(pod)) => return self.adopt(name, ex, pod, req).await,
                Ok(None) => {}
                Err(e) => {
                    if let CallError::BreakerOpen { retry_in: r, .. } = e {
                        retry_in = retry_in.min(r.max(Duration::from_secs(1)));
                    }
                    unconfirmed.insert(name.clone());
                }
            }
        }
        if !unconfirmed.is_empty() {
            let mut touched = req.touched.clone();
            touched.extend(unconfirmed);
            return LaunchOutcome::Wait {
                touched,
                retry_in,
                reason: "unconfirmed",
            };
        }
        // 1b. A redelivered build's earlier holder, or the replica that began an earlier launch
        //     of it, may have lost its broker connection (and its lock) with a create still on
        //     the wire: that request can land after the look above. Before creating anywhere
        //     but where such a create would collide with ours (same executor, same pod name),
        //     wait until it must have landed or been cut off (the call timeout of the executor
        //     it went to), and look there again.
        if (req.redelivered || !req.recorded.is_empty()) && !check.is_empty() {
            let target = candidates.iter().find(|n| {
                self.executors
                    .get(*n)
                    .is_some_and(|ex| ex.cluster.breaker_state() != State::Open)
            });
            let others: Vec<&String> = check.iter().filter(|n| Some(*n) != target).collect();
            let settle = others
                .iter()
                .map(|n| self.executors[*n].config.options.fusebox.breaker.timeout)
                .max();
            // A redelivery says nothing of when its earlier holder began; a launch record
            // tells when its create was sent, and where.
            let now = tokio::time::Instant::now();
            let until = if req.redelivered {
                settle.map(|settle| now + settle + IN_FLIGHT_MARGIN)
            } else {
                others
                    .iter()
                    .filter_map(|n| {
                        let sent = req.recorded.get(*n)?;
                        let timeout = self.executors[*n].config.options.fusebox.breaker.timeout;
                        Some(*sent + timeout + IN_FLIGHT_MARGIN)
                    })
                    .max()
                    .filter(|u| *u > now)
            };
            if let Some(until) = until {
                debug!(
                    wait = ?until.saturating_duration_since(tokio::time::Instant::now()),
                    "letting an earlier launch's create land"
                );
                tokio::time::sleep_until(until).await;
                for name in others {
                    let ex = &self.executors[name];
                    match self.pod_on(name, ex, build.build_id).await {
                        Ok(Some(pod)) => return self.adopt(name, ex, pod, req).await,
                        Ok(None) => {}
                        Err(_) => {
                            let mut touched = req.touched.clone();
                            touched.insert(name.clone());
                            return LaunchOutcome::Wait {
                                touched,
                                retry_in: DEFAULT_WAIT,
                                reason: "unconfirmed",
                            };
                        }
                    }
                }
            }
        }

        // 2. Create on the first candidate whose breaker admits calls.
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let mut misconfigured: Vec<String> = Vec::new();
        let mut waited_for: Option<Duration> = None;
        let mut quota = false;
        let mut failed: Option<(String, String)> = None;
        for name in &candidates {
            let Some(ex) = self.executors.get(name) else {
                continue;
            };
            if ex.cluster.breaker_state() == State::Open {
                waited_for = Some(waited_for.map_or(DEFAULT_WAIT, |w| w.min(DEFAULT_WAIT)));
                continue;
            }
            let pod = build_pod(&PodInputs {
                executor: name,
                config: &ex.config,
                ecosystem: ex
                    .config
                    .options
                    .ecosystem
                    .as_ref()
                    .unwrap_or(&self.ecosystem),
                build,
                attempt: req.attempt,
                pod_annotation_allow_list: &self.allow_list,
            });
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            // On record before it is sent: a later copy of the build then looks here first,
            // even if this replica loses its lock with the create on the wire.
            if candidates.len() > 1
                && let Err(e) = self.launches.record(build.build_id, name).await
            {
                warn!(executor = %name, error = %e, "cannot record the launch; trying again later");
                let mut all = req.touched.clone();
                all.extend(touched);
                return LaunchOutcome::Wait {
                    touched: all,
                    retry_in: Duration::from_secs(1),
                    reason: "unrecorded",
                };
            }
            match ex.cluster.create_pod(&pod).await {
                Ok(created) => return self.after_create(name, ex, created, req, false).await,
                Err(CallError::AlreadyExists) => match ex.cluster.get_pod(&pod_name).await {
                    Ok(Some(existing))
                        if same_build(&existing, &ex.build_selector(build.build_id)) =>
                    {
                        return self.adopt(name, ex, existing, req).await;
                    }
                    Ok(Some(_)) => {
                        return LaunchOutcome::Refuse {
                            reason: "name_collision",
                            error: format!(
                                "a pod named {pod_name} that does not belong to this build exists on {name}"
                            ),
                        };
                    }
                    Ok(None) => {
                        touched.insert(name.clone());
                        return LaunchOutcome::Retry {
                            touched,
                            reason: "pod_vanished",
                            error: format!(
                                "pod {pod_name} existed and was deleted while being adopted"
                            ),
                            executor: name.clone(),
                        };
                    }
                    Err(e) => {
                        touched.insert(name.clone());
                        return LaunchOutcome::Wait {
                            touched,
                            retry_in: DEFAULT_WAIT,
                            reason: if e.is_transient() {
                                "unconfirmed"
                            } else {
                                "adopt_failed"
                            },
                        };
                    }
                },
                Err(CallError::Invalid(msg)) => {
                    return LaunchOutcome::Refuse {
                        reason: "invalid_pod",
                        error: format!("{name} refused the pod as invalid: {msg}"),
                    };
                }
                Err(
                    e @ (CallError::RuntimeClassMissing(_)
                    | CallError::Forbidden(_)
                    | CallError::NotFound(_)
                    | CallError::Refused { .. }),
                ) => {
                    if matches!(e, CallError::RuntimeClassMissing(_)) {
                        metrics::runtime_class_rejected(name);
                    }
                    error!(
                        executor = %name,
                        error = %e,
                        "executor configuration error: the cluster refuses its pods; fix the executor's configuration"
                    );
                    misconfigured.push(format!("{name}: {e}"));
                    if plan.is_pinned() {
                        break;
                    }
                }
                Err(CallError::QuotaExceeded(msg)) => {
                    info!(executor = %name, %msg, "resource quota exhausted; trying another executor");
                    quota = true;
                }
                Err(e) => {
                    // Transient: the cluster may have created the pod anyway.
                    if e.is_ambiguous() {
                        match self.pod_on(name, ex, build.build_id).await {
                            Ok(Some(pod)) => return self.adopt(name, ex, pod, req).await,
                            Ok(None) => {}
                            Err(_) => {
                                touched.insert(name.clone());
                                let mut all = req.touched.clone();
                                all.extend(touched);
                                return LaunchOutcome::Wait {
                                    touched: all,
                                    retry_in: DEFAULT_WAIT,
                                    reason: "unconfirmed",
                                };
                            }
                        }
                    }
                    let breaker_open = matches!(e, CallError::BreakerOpen { .. })
                        || ex.cluster.breaker_state() == State::Open;
                    if plan.is_pinned() {
                        // A pinned build never moves: it waits for its executor.
                        if breaker_open {
                            return LaunchOutcome::Wait {
                                touched: req.touched.clone(),
                                retry_in: DEFAULT_WAIT,
                                reason: "no_executor",
                            };
                        }
                        return LaunchOutcome::Retry {
                            touched: req.touched.clone(),
                            reason: "unavailable",
                            error: e.to_string(),
                            executor: name.clone(),
                        };
                    }
                    // The executor holds no pod of the build (the failure was not ambiguous, or
                    // the executor confirmed): the next one in the build's order may take it.
                    info!(executor = %name, error = %e, "executor unavailable; failing over");
                    metrics::retried(name, "failover");
                    if breaker_open {
                        waited_for = Some(DEFAULT_WAIT);
                    } else if failed.is_none() {
                        failed = Some((name.clone(), e.to_string()));
                    }
                }
            }
        }
        if let Some((executor, error)) = failed {
            // Every candidate was tried or unavailable, and one of them failed: an attempt.
            return LaunchOutcome::Retry {
                touched: req.touched.clone(),
                reason: "unavailable",
                error,
                executor,
            };
        }
        if !misconfigured.is_empty() && waited_for.is_none() && !quota {
            let reason = if misconfigured.iter().all(|m| m.contains("runtime class")) {
                "runtime_class_not_found"
            } else {
                "executor_misconfigured"
            };
            return LaunchOutcome::Refuse {
                reason,
                error: misconfigured.join("; "),
            };
        }
        LaunchOutcome::Wait {
            touched: req.touched.clone(),
            retry_in: waited_for.unwrap_or(DEFAULT_WAIT),
            reason: if quota {
                "quota_exceeded"
            } else {
                "no_executor"
            },
        }
    }

    /// The build's pod on one executor, if it holds one (a failure to answer is logged).
    async fn pod_on(
        &self,
        name: &str,
        ex: &Executor,
        build: BuildId,
    ) -> Result<Option<Pod>, CallError> {
        let found = ex
            .cluster
            .list_pods(&ex.build_selector(build))
            .await
            .map(|pods| pods.into_iter().find(is_ours));
        if let Err(e) = &found {
            warn!(executor = %name, error = %e, "cannot confirm whether the executor holds the build's pod");
        }
        found
    }

    async fn adopt(
        &self,
        name: &str,
        ex: &Executor,
        pod: Pod,
        req: StartRequest<'_>,
    ) -> LaunchOutcome {
        info!(executor = %name, pod = pod.metadata.name.as_deref().unwrap_or_default(), "adopting the build's existing pod");
        self.after_create(name, ex, pod, req, true).await
    }

    /// The pod exists: make sure its token Secret does too, and that no stop overtook us.
    async fn after_create(
        &self,
        name: &str,
        ex: &Executor,
        pod: Pod,
        req: StartRequest<'_>,
        adopted: bool,
    ) -> LaunchOutcome {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        if ex.config.options.kubernetes.token_delivery == TokenDelivery::Secret {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let secret = token_secret(&pod, &req.build.token, &uid);
            if let Err(e) = ex.cluster.create_secret(&secret).await {
                let mut touched = req.touched.clone();
                touched.insert(name.to_string());
                return LaunchOutcome::Retry {
                    touched,
                    reason: "secret_failed",
                    error: format!("the build token Secret could not be created: {e}"),
                    executor: name.to_string(),
                };
            }
        }
        if self.tombstones.contains(req.build.build_id) {
            // A stop was handled while this start ran: undo the launch.
            let _ = ex.cluster.delete_pod(&pod_name, None).await;
            return LaunchOutcome::Stopped;
        }
        let attempt = crate::naming::pod_attempt(&pod.metadata).unwrap_or(req.attempt);
        LaunchOutcome::Launched {
            executor: name.to_string(),
            namespace: ex.cluster.namespace.clone(),
            pod: pod_name,
            adopted,
            attempt,
        }
    }

    /// Carries out a `stop`: deletes the build's pods on every executor.
    pub async fn stop(&self, build: BuildId) -> StopOutcome {
        self.tombstones.insert(build);
        let mut deleted = 0u32;
        let mut location = None;
        let mut unreachable = BTreeSet::new();
        let mut retry_in = DEFAULT_WAIT;
        for (name, ex) in self.executors.iter() {
            match ex.cluster.delete_pods(&ex.build_selector(build)).await {
                Ok(pods) => {
                    deleted += pods.len() as u32;
                    if let Some(p) = pods.first() {
                        location = Some((
                            name.clone(),
                            ex.cluster.namespace.clone(),
                            p.metadata.name.clone().unwrap_or_default(),
                        ));
                    }
                }
                Err(e) => {
                    warn!(executor = %name, error = %e, "cannot delete the build's pods yet");
                    if let CallError::BreakerOpen { retry_in: r, .. } = e {
                        retry_in = retry_in.min(r.max(Duration::from_secs(1)));
                    }
                    unreachable.insert(name.clone());
                }
            }
        }
        if unreachable.is_empty() {
            StopOutcome::Done { deleted, location }
        } else {
            StopOutcome::Wait {
                unreachable,
                retry_in,
                deleted,
            }
        }
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
            match ex
                .cluster
                .list_pods(&ex.build_selector(build.build_id))
                .await
            {
                Ok(pods) => {
                    if let Some(pod) = pods.into_iter().find(is_ours) {
                        // Grace periods count from the pod's creation: verify has no memory.
                        let age = pod
                            .metadata
                            .creation_timestamp
                            .as_ref()
                            .map(|t| {
                                Duration::from_secs(
                                    now.saturating_sub(t.0.as_second()).max(0) as u64
                                )
                            })
                            .unwrap_or_default();
                        out.verdict = Some(assess(&pod, now, |_| age, &ex.policy()));
                        out.executor = Some(name.clone());
                        out.namespace = Some(ex.cluster.namespace.clone());
                        out.pod = pod.metadata.name.clone();
                        return out;
                    }
                }
                Err(_) => {
                    out.unreachable.insert(name.clone());
                }
            }
        }
        out
    }
}

/// A pod that is not already being deleted.
fn is_ours(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
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
