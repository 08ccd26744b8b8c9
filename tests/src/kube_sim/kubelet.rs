//! A model of the kubelet and scheduler for one pod: which status change comes next, when,
//! and what the pod status then looks like.
//!
//! Owns the phase/condition/container-state rules (Pending -> scheduled -> init containers ->
//! Running -> Succeeded/Failed, waiting reasons, restarts, deadline and termination kills).
//! Pure: it never sleeps and never touches the store; the `lifecycle` driver does.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, HostIP, PodCondition, PodIP,
    PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::config::Timeline;
use super::script::Script;

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

#[derive(Clone, Debug)]
enum CState {
    Waiting { reason: String, message: Option<String> },
    Running { started: Timestamp },
    Terminated { code: i32, reason: String, started: Option<Timestamp>, finished: Timestamp },
}

#[derive(Clone, Debug)]
struct CModel {
    name: String,
    image: String,
    state: CState,
    last: Option<CState>,
    restarts: i32,
    id: Option<String>,
    ready: bool,
}

impl CModel {
    fn new(name: &str, image: &str, reason: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_owned(),
            state: CState::Waiting { reason: reason.to_owned(), message: None },
            last: None,
            restarts: 0,
            id: None,
            ready: false,
        }
    }

    fn start(&mut self, now: Timestamp, pod_uid: &str) {
        self.id = Some(format!("containerd://{}", hex_digest(&format!("{pod_uid}/{}/{}", self.name, self.restarts))));
        self.state = CState::Running { started: now };
    }

    fn status(&self) -> ContainerStatus {
        let pulled = self.id.is_some();
        ContainerStatus {
            name: self.name.clone(),
            image: normalize_image(&self.image),
            image_id: if pulled { image_id(&self.image) } else { String::new() },
            container_id: self.id.clone(),
            ready: self.ready,
            restart_count: self.restarts,
            started: Some(matches!(self.state, CState::Running { .. })),
            state: Some(render_state(&self.state)),
            last_state: Some(self.last.as_ref().map(render_state).unwrap_or_default()),
            ..ContainerStatus::default()
        }
    }
}

fn time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

fn render_state(s: &CState) -> ContainerState {
    match s {
        CState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting { reason: Some(reason.clone()), message: message.clone() }),
            ..ContainerState::default()
        },
        CState::Running { started } => {
            ContainerState { running: Some(ContainerStateRunning { started_at: Some(time(*started)) }), ..ContainerState::default() }
        }
        CState::Terminated { code, reason, started, finished } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *code,
                reason: Some(reason.clone()),
                started_at: started.map(time),
                finished_at: Some(time(*finished)),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        },
    }
}

/// The image reference as the runtime reports it (`node:22` -> `docker.io/library/node:22`).
pub fn normalize_image(image: &str) -> String {
    let (first, _) = image.split_once('/').unwrap_or(("", image));
    let mut full = if !image.contains('/') {
        format!("docker.io/library/{image}")
    } else if first.contains('.') || first.contains(':') || first == "localhost" {
        image.to_owned()
    } else {
        format!("docker.io/{image}")
    };
    let last = full.rsplit('/').next().unwrap_or("");
    if !last.contains(':') && !full.contains('@') {
        full.push_str(":latest");
    }
    full
}

fn image_id(image: &str) -> String {
    let normalized = normalize_image(image);
    let repo = normalized.split('@').next().unwrap_or(&normalized);
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    format!("{repo}@sha256:{}", hex_digest(&normalized))
}

/// 64 hex characters derived from `s` (container and image ids).
fn hex_digest(s: &str) -> String {
    let mut out = String::with_capacity(64);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    for _ in 0..4 {
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        out.push_str(&format!("{h:016x}"));
    }
    out
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
    pub fn new(name: &str, namespace: &str, uid: &str, spec: &PodSpec, script: Script, placement: Placement, now: Timestamp) -> Self {
        let has_init = spec.init_containers.as_ref().is_some_and(|i| !i.is_empty());
        let app_reason = if has_init { "PodInitializing" } else { "ContainerCreating" };
        let scheduled = spec.node_name.as_deref().is_some_and(|n| !n.is_empty());
        Self {
            script,
            restart_policy: spec.restart_policy.clone().unwrap_or_else(|| "Always".to_owned()),
            pod_uid: uid.to_owned(),
            pod_ref: format!("{name}_{namespace}({uid})"),
            placement,
            stage: if scheduled { Stage::Scheduled } else { Stage::Pending },
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| CModel::new(&c.name, c.image.as_deref().unwrap_or(""), "PodInitializing"))
                .collect(),
            app: spec.containers.iter().map(|c| CModel::new(&c.name, c.image.as_deref().unwrap_or(""), app_reason)).collect(),
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
            Stage::Blocked => matches!(self.script, Script::ErrImagePull).then(|| (self.backoff(t), Step::PullRetry)),
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
                let image = self.app.first().map(|c| c.image.clone()).unwrap_or_default();
                if let Some(c) = self.app.first_mut() {
                    let backoff = matches!(&c.state, CState::Waiting { reason, .. } if reason == "ErrImagePull");
                    c.state = if backoff {
                        CState::Waiting { reason: "ImagePullBackOff".into(), message: Some(format!("Back-off pulling image {image:?}")) }
                    } else {
                        CState::Waiting { reason: "ErrImagePull".into(), message: Some(pull_error(&image)) }
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
            let terminated = CState::Terminated { code, reason: "Error".into(), started, finished: now };
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
                    message: Some(format!("back-off 10s restarting failed container={} pod={}", first.name, self.pod_ref)),
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
            c.state = CState::Terminated { code: 0, reason: "Completed".into(), started, finished: now };
        }
        self.init_done_at = Some(now);
        let image = self.app.first().map(|c| c.image.clone()).unwrap_or_default();
        let blocked = match &self.script {
            Script::InvalidImageName => Some((
                "InvalidImageName",
                format!("Failed to apply default image tag {image:?}: couldn't parse image name {image:?}: invalid reference format"),
            )),
            Script::ErrImagePull => Some(("ErrImagePull", pull_error(&image))),
            Script::CreateContainerConfigError { message } => Some((
                "CreateContainerConfigError",
                message.clone().unwrap_or_else(|| "secret \"build-secrets\" not found".to_owned()),
            )),
            Script::CreateContainerError { message } => Some((
                "CreateContainerError",
                message.clone().unwrap_or_else(|| "context deadline exceeded".to_owned()),
            )),
            _ => None,
        };
        match blocked {
            Some((reason, message)) => {
                if let Some(c) = self.app.first_mut() {
                    c.state = CState::Waiting { reason: reason.to_owned(), message: Some(message) };
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
            let (code, reason) = if i == 0 { (code, reason.clone()) } else { (0, "Completed".to_owned()) };
            c.state = CState::Terminated { code, reason, started, finished: now };
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
                    message: Some(format!("back-off {secs}s restarting failed container={} pod={pod_ref}", c.name)),
                };
            }
            self.stage = Stage::BackOff;
        } else {
            self.phase = if code == 0 { "Succeeded" } else { "Failed" };
            self.terminal_at = Some(now);
            self.stage = Stage::Terminal;
        }
    }

    /// The pod status for the current state (without qosClass, which the store keeps).
    pub fn render(&self) -> PodStatus {
        let mut conditions = Vec::new();
        let cond = |t: &str, ok: bool, at: Option<Timestamp>, reason: Option<&str>, message: Option<String>| PodCondition {
            type_: t.to_owned(),
            status: if ok { "True" } else { "False" }.to_owned(),
            last_transition_time: at.map(time),
            reason: reason.map(str::to_owned),
            message,
            ..PodCondition::default()
        };
        let Some(start) = self.start_time else {
            if let Some((at, msg)) = &self.unschedulable {
                conditions.push(cond("PodScheduled", false, Some(*at), Some("Unschedulable"), Some(msg.clone())));
            } else if let Some(at) = self.scheduled_at {
                conditions.push(cond("PodScheduled", true, Some(at), None, None));
            }
            return PodStatus {
                phase: Some(self.phase.to_owned()),
                conditions: (!conditions.is_empty()).then_some(conditions),
                ..PodStatus::default()
            };
        };
        let terminal = self.stage == Stage::Terminal;
        conditions.push(cond("PodReadyToStartContainers", !terminal, Some(self.terminal_at.unwrap_or(start)), None, None));
        let pending_init: Vec<&str> = self
            .init
            .iter()
            .filter(|c| !matches!(c.state, CState::Terminated { code: 0, .. }))
            .map(|c| c.name.as_str())
            .collect();
        if pending_init.is_empty() {
            conditions.push(cond("Initialized", true, Some(self.init_done_at.unwrap_or(start)), None, None));
        } else {
            conditions.push(cond(
                "Initialized",
                false,
                Some(start),
                Some("ContainersNotInitialized"),
                Some(format!("containers with incomplete status: [{}]", pending_init.join(" "))),
            ));
        }
        let unready: Vec<&str> = self.app.iter().filter(|c| !c.ready).map(|c| c.name.as_str()).collect();
        let ready_at = Some(self.ready_changed_at.unwrap_or(start));
        for t in ["Ready", "ContainersReady"] {
            let c = match self.phase {
                "Failed" => cond(t, false, ready_at, Some("PodFailed"), None),
                "Succeeded" => cond(t, false, ready_at, Some("PodCompleted"), None),
                _ if unready.is_empty() => cond(t, true, ready_at, None, None),
                _ => cond(
                    t,
                    false,
                    ready_at,
                    Some("ContainersNotReady"),
                    Some(format!("containers with unready status: [{}]", unready.join(" "))),
                ),
            };
            conditions.push(c);
        }
        conditions.push(cond("PodScheduled", true, self.scheduled_at, None, None));
        PodStatus {
            phase: Some(self.phase.to_owned()),
            conditions: Some(conditions),
            host_ip: Some(self.placement.host_ip.clone()),
            host_ips: Some(vec![HostIP { ip: self.placement.host_ip.clone() }]),
            pod_ip: Some(self.placement.pod_ip.clone()),
            pod_ips: Some(vec![PodIP { ip: self.placement.pod_ip.clone() }]),
            start_time: Some(time(start)),
            init_container_statuses: (!self.init.is_empty()).then(|| self.init.iter().map(CModel::status).collect()),
            container_statuses: Some(self.app.iter().map(CModel::status).collect()),
            ..PodStatus::default()
        }
    }
}

fn pull_error(image: &str) -> String {
    let full = normalize_image(image);
    format!("rpc error: code = NotFound desc = failed to pull and unpack image {full:?}: failed to resolve reference {full:?}: {full}: not found")
}

/// Kills every container of a pod the way the kubelet does on deletion or deadline: running
/// containers end with exit code 137, waiting ones as ContainerStatusUnknown, and the pod
/// becomes Failed (unless it already finished). `pod_reason` sets status.reason/message.
pub fn kill(status: &mut PodStatus, now: Timestamp, pod_reason: Option<(&str, &str)>) {
    let was_terminal = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let kill_one = |cs: &mut ContainerStatus| {
        let state = cs.state.get_or_insert_with(ContainerState::default);
        if state.terminated.is_some() {
            return;
        }
        let terminated = if let Some(running) = state.running.take() {
            ContainerStateTerminated {
                exit_code: 137,
                reason: Some("Error".into()),
                started_at: running.started_at,
                finished_at: Some(time(now)),
                container_id: cs.container_id.clone(),
                ..ContainerStateTerminated::default()
            }
        } else {
            ContainerStateTerminated {
                exit_code: 137,
                reason: Some("ContainerStatusUnknown".into()),
                message: Some("The container could not be located when the pod was terminated".into()),
                ..ContainerStateTerminated::default()
            }
        };
        *state = ContainerState { terminated: Some(terminated), ..ContainerState::default() };
        cs.ready = false;
        cs.started = Some(false);
    };
    for cs in status.container_statuses.iter_mut().flatten() {
        kill_one(cs);
    }
    for cs in status.init_container_statuses.iter_mut().flatten() {
        kill_one(cs);
    }
    if !was_terminal {
        status.phase = Some("Failed".into());
        if let Some((reason, message)) = pod_reason {
            status.reason = Some(reason.into());
            status.message = Some(message.into());
        }
        for c in status.conditions.iter_mut().flatten() {
            let (reason, off) = match c.type_.as_str() {
                "Ready" | "ContainersReady" => (Some("PodFailed"), true),
                "PodReadyToStartContainers" => (None, true),
                _ => (None, false),
            };
            if off && c.status != "False" {
                c.status = "False".into();
                c.reason = reason.map(str::to_owned);
                c.message = None;
                c.last_transition_time = Some(time(now));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Container;

    use super::*;

    fn spec(policy: &str, init: bool) -> PodSpec {
        let c = |n: &str, i: &str| Container { name: n.into(), image: Some(i.into()), ..Container::default() };
        PodSpec {
            containers: vec![c("build", "node:22")],
            init_containers: init.then(|| vec![c("launcher", "screwdrivercd/launcher:stable")]),
            restart_policy: Some(policy.into()),
            ..PodSpec::default()
        }
    }

    fn kubelet(script: Script, policy: &str, init: bool) -> Kubelet {
        let placement = Placement { node: "n1".into(), host_ip: "10.0.0.1".into(), pod_ip: "10.244.0.2".into() };
        Kubelet::new("p", "ns", "uid", &spec(policy, init), script, placement, Timestamp::now())
    }

    /// Runs the model until nothing more happens (or `max` steps), answering the steps taken.
    fn run(k: &mut Kubelet, max: usize) -> Vec<Step> {
        let t = Timeline::fast();
        let mut steps = Vec::new();
        while let Some((_, s)) = k.next_step(&t) {
            if steps.len() == max {
                break;
            }
            k.apply(s, Timestamp::now());
            steps.push(s);
        }
        steps
    }

    fn build_state(k: &Kubelet) -> ContainerState {
        k.render().container_statuses.unwrap()[0].state.clone().unwrap()
    }

    #[test]
    fn normal_pod_walks_to_succeeded() {
        let mut k = kubelet(Script::Normal, "Never", true);
        assert_eq!(run(&mut k, 10), vec![Step::Schedule, Step::StartInit, Step::InitDone, Step::Exit]);
        let s = k.render();
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        assert_eq!(build_state(&k).terminated.unwrap().reason.as_deref(), Some("Completed"));
        let ready = s.conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason.as_deref(), Some("PodCompleted"));
    }

    #[test]
    fn running_pod_is_ready_with_init_completed() {
        let mut k = kubelet(Script::RunForever, "Never", true);
        run(&mut k, 10);
        let s = k.render();
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let conds = s.conditions.unwrap();
        assert!(conds.iter().all(|c| c.status == "True"), "{conds:?}");
        assert_eq!(s.init_container_statuses.unwrap()[0].state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, 0);
        assert!(s.start_time.is_some() && s.pod_ip.is_some() && s.host_ip.is_some());
    }

    #[test]
    fn exit_scripts_fail_with_their_code_and_reason() {
        let mut k = kubelet(Script::Exit { code: 137, reason: "OOMKilled".into() }, "Never", true);
        run(&mut k, 10);
        assert_eq!(k.render().phase.as_deref(), Some("Failed"));
        let t = build_state(&k).terminated.unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("OOMKilled")));
    }

    #[test]
    fn image_pull_errors_alternate_and_stay_pending() {
        let mut k = kubelet(Script::ErrImagePull, "Never", true);
        run(&mut k, 5);
        let reasons: Vec<String> = (0..2)
            .map(|_| {
                let r = build_state(&k).waiting.unwrap().reason.unwrap();
                k.apply(Step::PullRetry, Timestamp::now());
                r
            })
            .collect();
        assert_eq!(reasons.len(), 2);
        assert_ne!(reasons[0], reasons[1]);
        assert!(reasons.contains(&"ImagePullBackOff".to_owned()) && reasons.contains(&"ErrImagePull".to_owned()));
        assert_eq!(k.render().phase.as_deref(), Some("Pending"));
    }

    #[test]
    fn blocking_scripts_wait_with_their_reason() {
        for (script, reason) in [
            (Script::InvalidImageName, "InvalidImageName"),
            (Script::CreateContainerConfigError { message: None }, "CreateContainerConfigError"),
            (Script::CreateContainerError { message: Some("boom".into()) }, "CreateContainerError"),
        ] {
            let mut k = kubelet(script, "Never", true);
            assert_eq!(run(&mut k, 10).last(), Some(&Step::InitDone));
            let w = build_state(&k).waiting.unwrap();
            assert_eq!(w.reason.as_deref(), Some(reason));
            assert!(w.message.is_some());
        }
    }

    #[test]
    fn crash_loop_grows_the_restart_count() {
        let mut k = kubelet(Script::CrashLoopBackOff, "Never", false);
        run(&mut k, 9);
        let cs = &k.render().container_statuses.unwrap()[0];
        assert!(cs.restart_count >= 2, "{cs:?}");
        assert_eq!(cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, 1);
        assert_eq!(k.render().phase.as_deref(), Some("Running"));
    }

    #[test]
    fn failing_init_container_fails_a_never_restart_pod() {
        let mut k = kubelet(Script::InitFails { code: 3 }, "Never", true);
        run(&mut k, 10);
        let s = k.render();
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        assert_eq!(s.init_container_statuses.unwrap()[0].state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, 3);
        let init = s.conditions.unwrap().into_iter().find(|c| c.type_ == "Initialized").unwrap();
        assert_eq!(init.reason.as_deref(), Some("ContainersNotInitialized"));
    }

    #[test]
    fn unschedulable_pods_stay_pending_without_start_time() {
        let mut k = kubelet(Script::Unschedulable { message: None }, "Never", true);
        assert_eq!(run(&mut k, 10), vec![Step::Unschedulable]);
        let s = k.render();
        let c = &s.conditions.unwrap()[0];
        assert_eq!((c.type_.as_str(), c.status.as_str(), c.reason.as_deref()), ("PodScheduled", "False", Some("Unschedulable")));
        assert!(s.start_time.is_none());
        assert!(!k.started());
    }

    #[test]
    fn kill_marks_running_containers_and_the_pod_failed() {
        let mut k = kubelet(Script::RunForever, "Never", true);
        run(&mut k, 10);
        let mut s = k.render();
        kill(&mut s, Timestamp::now(), Some(("DeadlineExceeded", "Pod was active on the node longer than the specified deadline")));
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        assert_eq!(s.reason.as_deref(), Some("DeadlineExceeded"));
        assert_eq!(s.container_statuses.unwrap()[0].state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, 137);
    }

    #[test]
    fn images_are_normalized_like_containerd() {
        assert_eq!(normalize_image("node:22"), "docker.io/library/node:22");
        assert_eq!(normalize_image("screwdrivercd/launcher"), "docker.io/screwdrivercd/launcher:latest");
        assert_eq!(normalize_image("quay.io/x/y:1"), "quay.io/x/y:1");
        assert!(image_id("node:22").starts_with("docker.io/library/node@sha256:"));
    }
}
