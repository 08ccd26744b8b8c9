//! A model of the kubelet and scheduler for one pod: which status change comes next, when,
//! and what the pod status then looks like.
//!
//! Owns the phase/condition/container-state rules (Pending -> scheduled -> init containers ->
//! Running -> Succeeded/Failed, waiting reasons, restarts, deadline and termination kills).
//! Pure: it never sleeps and never touches the store; the `lifecycle` driver does.

mod containers;
mod status;
#[cfg(test)]
mod tests;

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::PodSpec;

use super::config::Timeline;
use super::script::Script;
use containers::{CModel, CState};

pub use containers::normalize_image;
pub use status::kill;

/// Where the scheduler put the pod.
#[derive(Clone, Debug)]
pub struct Placement {
    /// spec.nodeName.
    pub node: String,
    /// status.hostIP.
    pub host_ip: String,
    /// status.podIP.
    pub pod_ip: String,
}

/// The next thing that happens to a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The scheduler binds the pod to a node.
    Schedule,
    /// The scheduler gives up: PodScheduled=False.
    Unschedulable,
    /// The kubelet accepts the pod and starts the first init container.
    StartInit,
    /// Init containers finish; the build container starts (or fails to).
    InitDone,
    /// ErrImagePull and ImagePullBackOff take turns.
    PullRetry,
    /// The build container exits.
    Exit,
    /// A crashed container starts again after its back-off.
    Restart,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Pending,
    Scheduled,
    Initializing,
    Blocked,
    Running,
    BackOff,
    Stuck,
    Terminal,
}

/// The kubelet's view of one pod.
#[derive(Clone, Debug)]
pub struct Kubelet {
    script: Script,
    restart_policy: String,
    pod_uid: String,
    pod_ref: String,
    placement: Placement,
    stage: Stage,
    init: Vec<CModel>,
    app: Vec<CModel>,
    phase: &'static str,
    scheduled_at: Option<Timestamp>,
    start_time: Option<Timestamp>,
    init_done_at: Option<Timestamp>,
    ready_changed_at: Option<Timestamp>,
    terminal_at: Option<Timestamp>,
    unschedulable: Option<(Timestamp, String)>,
    retries: u32,
}

impl Kubelet {
    /// The model of a freshly created pod. `scheduled` is true when the client set
    /// spec.nodeName itself (the scheduler is bypassed).
    pub fn new(
        name: &str,
        namespace: &str,
        uid: &str,
        spec: &PodSpec,
        script: Script,
        placement: Placement,
        now: Timestamp,
    ) -> Self {
        let has_init = spec.init_containers.as_ref().is_some_and(|i| !i.is_empty());
        let app_reason = if has_init {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        let scheduled = spec.node_name.as_deref().is_some_and(|n| !n.is_empty());
        Self {
            script,
            restart_policy: spec
                .restart_policy
                .clone()
                .unwrap_or_else(|| "Always".to_owned()),
            pod_uid: uid.to_owned(),
            pod_ref: format!("{name}_{namespace}({uid})"),
            placement,
            stage: if scheduled {
                Stage::Scheduled
            } else {
                Stage::Pending
            },
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| CModel::new(&c.name, c.image.as_deref().unwrap_or(""), "PodInitializing"))
                .collect(),
            app: spec
                .containers
                .iter()
                .map(|c| CModel::new(&c.name, c.image.as_deref().unwrap_or(""), app_reason))
                .collect(),
            phase: "Pending",
            scheduled_at: scheduled.then_some(now),
            start_time: None,
            init_done_at: None,
            ready_changed_at: None,
            terminal_at: None,
            unschedulable: None,
            retries: 0,
        }
    }

    /// The node the pod runs on.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// True once the kubelet started the pod (status.startTime is set); the active deadline
    /// counts from here.
    pub fn started(&self) -> bool {
        self.start_time.is_some()
    }

    /// True in Succeeded or Failed.
    pub fn is_terminal(&self) -> bool {
        self.stage == Stage::Terminal
    }

    fn backoff(&self, t: &Timeline) -> Duration {
        t.start_after.max(Duration::from_millis(10)) * 2u32.pow(self.retries.min(4))
    }

    /// The next step and how long after the previous one it happens; `None` when nothing
    /// more happens by itself.
    pub fn next_step(&self, t: &Timeline) -> Option<(Duration, Step)> {
        match self.stage {
            Stage::Pending => match self.script {
                Script::Unschedulable { .. } => Some((t.schedule_after, Step::Unschedulable)),
                _ => Some((t.schedule_after, Step::Schedule)),
            },
            Stage::Scheduled => Some((t.start_after / 2, Step::StartInit)),
            Stage::Initializing => Some((t.start_after - t.start_after / 2, Step::InitDone)),
            Stage::Blocked => matches!(self.script, Script::ErrImagePull)
                .then(|| (self.backoff(t), Step::PullRetry)),
            Stage::Running => match &self.script {
                Script::Normal => t.run_for.map(|d| (d, Step::Exit)),
                Script::RunForever => None,
                Script::CrashLoopBackOff => Some((t.run_for.unwrap_or(t.start_after), Step::Exit)),
                _ => Some((t.run_for.unwrap_or(Duration::ZERO), Step::Exit)),
            },
            Stage::BackOff => Some((self.backoff(t), Step::Restart)),
            Stage::Stuck | Stage::Terminal => None,
        }
    }

    /// Applies a step at wall-clock time `now`.
    pub fn apply(&mut self, step: Step, now: Timestamp) {
        match step {
            Step::Schedule => {
                self.stage = Stage::Scheduled;
                self.scheduled_at = Some(now);
            }
            Step::Unschedulable => {
                let msg = match &self.script {
                    Script::Unschedulable { message: Some(m) } => m.clone(),
                    _ => "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.".to_owned(),
                };
                self.unschedulable = Some((now, msg));
                self.stage = Stage::Stuck;
            }
            Step::StartInit => {
                self.start_time = Some(now);
                if let Some(first) = self.init.first_mut() {
                    first.start(now, &self.pod_uid);
                }
                self.stage = Stage::Initializing;
            }
            Step::InitDone => self.finish_init(now),
            Step::PullRetry => {
                let image = self
                    .app
                    .first()
                    .map(|c| c.image.clone())
                    .unwrap_or_default();
                if let Some(c) = self.app.first_mut() {
                    let backoff = matches!(&c.state, CState::Waiting { reason, .. } if reason == "ErrImagePull");
                    c.state = if backoff {
                        CState::Waiting {
                            reason: "ImagePullBackOff".into(),
                            message: Some(format!("Back-off pulling image {image:?}")),
                        }
                    } else {
                        CState::Waiting {
                            reason: "ErrImagePull".into(),
                            message: Some(pull_error(&image)),
                        }
                    };
                }
                self.retries += 1;
            }
            Step::Exit => self.exit(now),
            Step::Restart => {
                let uid = self.pod_uid.clone();
                if let Some(c) = self.app.first_mut() {
                    c.start(now, &uid);
                    c.ready = true;
                }
                self.ready_changed_at = Some(now);
                self.retries += 1;
                self.stage = Stage::Running;
            }
        }
    }

    fn finish_init(&mut self, now: Timestamp) {
        let uid = self.pod_uid.clone();
        if let Script::InitFails { code } = self.script
            && !self.init.is_empty()
        {
            let first = &mut self.init[0];
            let started = match first.state {
                CState::Running { started } => Some(started),
                _ => None,
            };
            let terminated = CState::Terminated {
                code,
                reason: "Error".into(),
                started,
                finished: now,
            };
            if self.restart_policy == "Never" {
                first.state = terminated;
                self.phase = "Failed";
                self.terminal_at = Some(now);
                self.stage = Stage::Terminal;
            } else {
                first.last = Some(terminated);
                first.restarts = 1;
                first.state = CState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(format!(
                        "back-off 10s restarting failed container={} pod={}",
                        first.name, self.pod_ref
                    )),
                };
                self.stage = Stage::Stuck;
            }
            return;
        }
        for c in &mut self.init {
            if c.id.is_none() {
                c.start(now, &uid);
            }
            let started = match c.state {
                CState::Running { started } => Some(started),
                _ => Some(now),
            };
            c.state = CState::Terminated {
                code: 0,
                reason: "Completed".into(),
                started,
                finished: now,
            };
        }
        self.init_done_at = Some(now);
        let image = self
            .app
            .first()
            .map(|c| c.image.clone())
            .unwrap_or_default();
        let blocked = match &self.script {
            Script::InvalidImageName => Some((
                "InvalidImageName",
                format!(
                    "Failed to apply default image tag {image:?}: couldn't parse image name {image:?}: invalid reference format"
                ),
            )),
            Script::ErrImagePull => Some(("ErrImagePull", pull_error(&image))),
            Script::CreateContainerConfigError { message } => Some((
                "CreateContainerConfigError",
                message
                    .clone()
                    .unwrap_or_else(|| "secret \"build-secrets\" not found".to_owned()),
            )),
            Script::CreateContainerError { message } => Some((
                "CreateContainerError",
                message
                    .clone()
                    .unwrap_or_else(|| "context deadline exceeded".to_owned()),
            )),
            _ => None,
        };
        match blocked {
            Some((reason, message)) => {
                if let Some(c) = self.app.first_mut() {
                    c.state = CState::Waiting {
                        reason: reason.to_owned(),
                        message: Some(message),
                    };
                }
                for c in self.app.iter_mut().skip(1) {
                    c.start(now, &uid);
                    c.ready = true;
                }
                self.stage = Stage::Blocked;
            }
            None => {
                for c in &mut self.app {
                    c.start(now, &uid);
                    c.ready = true;
                }
                self.ready_changed_at = Some(now);
                self.phase = "Running";
                self.stage = Stage::Running;
            }
        }
    }

    fn exit(&mut self, now: Timestamp) {
        let (code, reason) = match &self.script {
            Script::Exit { code, reason } => (*code, reason.clone()),
            Script::CrashLoopBackOff => (1, "Error".to_owned()),
            _ => (0, "Completed".to_owned()),
        };
        for (i, c) in self.app.iter_mut().enumerate() {
            let started = match c.state {
                CState::Running { started } => Some(started),
                _ => None,
            };
            let (code, reason) = if i == 0 {
                (code, reason.clone())
            } else {
                (0, "Completed".to_owned())
            };
            c.state = CState::Terminated {
                code,
                reason,
                started,
                finished: now,
            };
            c.ready = false;
        }
        self.ready_changed_at = Some(now);
        let restart = matches!(self.script, Script::CrashLoopBackOff)
            || match self.restart_policy.as_str() {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => true,
            };
        if restart {
            let pod_ref = self.pod_ref.clone();
            let secs = 10u64 * 2u64.pow(self.retries.min(5)).min(30);
            if let Some(c) = self.app.first_mut() {
                c.last = Some(c.state.clone());
                c.restarts += 1;
                c.state = CState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(format!(
                        "back-off {secs}s restarting failed container={} pod={pod_ref}",
                        c.name
                    )),
                };
            }
            self.stage = Stage::BackOff;
        } else {
            self.phase = if code == 0 { "Succeeded" } else { "Failed" };
            self.terminal_at = Some(now);
            self.stage = Stage::Terminal;
        }
    }
}

fn pull_error(image: &str) -> String {
    let full = normalize_image(image);
    format!(
        "rpc error: code = NotFound desc = failed to pull and unpack image {full:?}: failed to resolve reference {full:?}: {full}: not found"
    )
}
