//! Pod status rendering (phase, conditions, container statuses) and the kill on deletion
//! or deadline.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, HostIP, PodCondition, PodIP,
    PodStatus,
};

use super::containers::{CModel, CState, time};
use super::{Kubelet, Stage};

impl Kubelet {
    /// The pod status for the current state (without qosClass, which the store keeps).
    pub fn render(&self) -> PodStatus {
        let mut conditions = Vec::new();
        let cond = |t: &str,
                    ok: bool,
                    at: Option<Timestamp>,
                    reason: Option<&str>,
                    message: Option<String>| PodCondition {
            type_: t.to_owned(),
            status: if ok { "True" } else { "False" }.to_owned(),
            last_transition_time: at.map(time),
            reason: reason.map(str::to_owned),
            message,
            ..PodCondition::default()
        };
        let Some(start) = self.start_time else {
            if let Some((at, msg)) = &self.unschedulable {
                conditions.push(cond(
                    "PodScheduled",
                    false,
                    Some(*at),
                    Some("Unschedulable"),
                    Some(msg.clone()),
                ));
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
        conditions.push(cond(
            "PodReadyToStartContainers",
            !terminal,
            Some(self.terminal_at.unwrap_or(start)),
            None,
            None,
        ));
        let pending_init: Vec<&str> = self
            .init
            .iter()
            .filter(|c| !matches!(c.state, CState::Terminated { code: 0, .. }))
            .map(|c| c.name.as_str())
            .collect();
        if pending_init.is_empty() {
            conditions.push(cond(
                "Initialized",
                true,
                Some(self.init_done_at.unwrap_or(start)),
                None,
                None,
            ));
        } else {
            conditions.push(cond(
                "Initialized",
                false,
                Some(start),
                Some("ContainersNotInitialized"),
                Some(format!(
                    "containers with incomplete status: [{}]",
                    pending_init.join(" ")
                )),
            ));
        }
        let unready: Vec<&str> = self
            .app
            .iter()
            .filter(|c| !c.ready)
            .map(|c| c.name.as_str())
            .collect();
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
                    Some(format!(
                        "containers with unready status: [{}]",
                        unready.join(" ")
                    )),
                ),
            };
            conditions.push(c);
        }
        conditions.push(cond("PodScheduled", true, self.scheduled_at, None, None));
        PodStatus {
            phase: Some(self.phase.to_owned()),
            conditions: Some(conditions),
            host_ip: Some(self.placement.host_ip.clone()),
            host_ips: Some(vec![HostIP {
                ip: self.placement.host_ip.clone(),
            }]),
            pod_ip: Some(self.placement.pod_ip.clone()),
            pod_ips: Some(vec![PodIP {
                ip: self.placement.pod_ip.clone(),
            }]),
            start_time: Some(time(start)),
            init_container_statuses: (!self.init.is_empty())
                .then(|| self.init.iter().map(CModel::status).collect()),
            container_statuses: Some(self.app.iter().map(CModel::status).collect()),
            ..PodStatus::default()
        }
    }
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
                message: Some(
                    "The container could not be located when the pod was terminated".into(),
                ),
                ..ContainerStateTerminated::default()
            }
        };
        *state = ContainerState {
            terminated: Some(terminated),
            ..ContainerState::default()
        };
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
