//! What a build pod's status means for the build: pure classification, no I/O.
//!
//! The reporter feeds every pod it sees through [`assess`] and publishes what comes out. Time
//! matters for some verdicts (image pull grace, pending deadline); the caller injects the wall
//! clock and how long it has been seeing the current trouble, so this stays testable.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::events::BuildState;

/// Thresholds of one executor.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// ErrImagePull / ImagePullBackOff / CreateContainer(Config)Error fail after this long.
    pub grace: Duration,
    /// Any Pending longer than this fails (Unschedulable or otherwise).
    pub pending_timeout: Duration,
}

/// Where a build stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not running yet and nothing is wrong (or not wrong for long enough).
    Pending {
        /// A node was assigned.
        scheduled: bool,
    },
    /// The build container runs.
    Running,
    /// The pod cannot start; it should be deleted and the user told why.
    LaunchFailed {
        /// Kubernetes reason (`ImagePullBackOff`, `Unschedulable`, ...).
        reason: String,
        /// A sentence for the user.
        message: String,
    },
    /// The build container exited 0.
    Succeeded,
    /// The build container exited non-zero, or the pod failed after starting.
    Failed {
        /// Exit code of the build container (-1 when unknown).
        exit_code: i32,
        /// Kubernetes reason (`Error`, `OOMKilled`, `Evicted`, ...).
        reason: String,
        /// A sentence for the user.
        message: String,
    },
    /// The pod ran past `activeDeadlineSeconds`.
    TimedOut {
        /// A sentence for the user.
        message: String,
    },
}

impl Verdict {
    /// True for verdicts after which nothing more happens to the pod.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Verdict::LaunchFailed { .. }
                | Verdict::Succeeded
                | Verdict::Failed { .. }
                | Verdict::TimedOut { .. }
        )
    }

    /// The state of a `build.verified` event.
    pub fn build_state(&self) -> BuildState {
        match self {
            Verdict::Pending { .. } => BuildState::Pending,
            Verdict::Running => BuildState::Running,
            Verdict::LaunchFailed { .. } => BuildState::LaunchFailed,
            Verdict::Succeeded => BuildState::Succeeded,
            Verdict::Failed { .. } => BuildState::Failed,
            Verdict::TimedOut { .. } => BuildState::TimedOut,
        }
    }

    /// The state name (the metric label of a finished build).
    pub fn state(&self) -> &'static str {
        self.build_state().as_str()
    }
}

/// A trouble whose grace period is measured by the caller: the key to remember when it was
/// first seen (ErrImagePull and ImagePullBackOff alternate but are one trouble).
pub fn trouble_key(reason: &str) -> &'static str {
    match reason {
        "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" => "ImagePull",
        "CreateContainerConfigError" => "CreateContainerConfigError",
        "CreateContainerError" => "CreateContainerError",
        "RunContainerError" | "StartError" => "StartError",
        _ => "Other",
    }
}

fn timed_out() -> Verdict {
    Verdict::TimedOut {
        message: "The build ran past its timeout and was stopped by Kubernetes.".into(),
    }
}

/// Assesses one pod. `now_unix` is the wall clock (seconds since the epoch, for the pod's
/// timestamps); `trouble_age(key)` says how long the caller has been seeing that trouble.
pub fn assess(
    pod: &Pod,
    now_unix: i64,
    trouble_age: impl Fn(&'static str) -> Duration,
    policy: &Policy,
) -> Verdict {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let build = build_status(pod);
    // Kubernetes killed the pod at its activeDeadlineSeconds: its containers end with a kill
    // code too, but the build timed out, it did not fail.
    if phase == "Failed" && status.and_then(|s| s.reason.as_deref()) == Some("DeadlineExceeded") {
        return timed_out();
    }
    // The build container's own end decides, even while a sidecar keeps the pod Running.
    if let Some(t) = build
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
    {
        return ended(t.exit_code, t.reason.as_deref());
    }
    match phase {
        "Succeeded" => return Verdict::Succeeded,
        "Failed" => return pod_failed(pod, build),
        _ => {}
    }
    if build
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
    {
        return Verdict::Running;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Verdict::Pending { scheduled: true };
    }
    if let Some((code, why)) = failed_init(pod) {
        return init_failed(code, &why);
    }
    // Waiting reasons of any container (init first: they run first).
    let waiting = status
        .into_iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .filter_map(waiting_reason)
        .next();
    if let Some(v) = waiting
        .as_ref()
        .and_then(|(reason, detail)| cannot_start(pod, reason, detail, &trouble_age, policy))
    {
        return v;
    }
    pending(pod, now_unix, waiting, policy)
}

/// The status of the build container (the pod's first).
fn build_status(pod: &Pod) -> Option<&ContainerStatus> {
    let name = pod.spec.as_ref()?.containers.first()?.name.as_str();
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
}

/// The image of the build container.
fn build_image(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// The build container ended with `code`.
fn ended(code: i32, reason: Option<&str>) -> Verdict {
    if code == 0 {
        return Verdict::Succeeded;
    }
    let reason = reason.unwrap_or("Error").to_string();
    Verdict::Failed {
        exit_code: code,
        message: finished_message(code, &reason),
        reason,
    }
}

/// The pod failed: after its build ran, or before.
fn pod_failed(pod: &Pod, build: Option<&ContainerStatus>) -> Verdict {
    let status = pod.status.as_ref();
    if let Some((code, why)) = failed_init(pod) {
        return init_failed(code, &why);
    }
    let ran = build.is_some_and(|c| c.last_state.is_some() || c.started == Some(true));
    let reason = status
        .and_then(|s| s.reason.clone())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "Failed".to_string());
    let detail = status.and_then(|s| s.message.clone()).unwrap_or_default();
    if ran {
        Verdict::Failed {
            exit_code: -1,
            message: format!("The build pod failed ({reason}). {detail}")
                .trim_end()
                .to_string(),
            reason,
        }
    } else {
        Verdict::LaunchFailed {
            message: format!(
                "Build failed to start: the pod failed before the build ran ({reason}). {detail}"
            )
            .trim_end()
            .to_string(),
            reason,
        }
    }
}

/// A kubelet waiting reason that means the pod cannot start: at once, or once it has lasted
/// the grace period.
fn cannot_start(
    pod: &Pod,
    reason: &str,
    detail: &str,
    trouble_age: &impl Fn(&'static str) -> Duration,
    policy: &Policy,
) -> Option<Verdict> {
    let message = match reason {
        "InvalidImageName" => format!(
            "Build failed to start: {} is not a valid image reference. Please check the image name.",
            quote(&build_image(pod))
        ),
        "CrashLoopBackOff" => format!(
            "Build failed to start: a container keeps crashing ({}). Please reach out to your cluster admin for help.",
            short(detail)
        ),
        r if trouble_key(r) == "Other" || trouble_age(trouble_key(r)) < policy.grace => {
            return None;
        }
        r if trouble_key(r) == "ImagePull" => format!(
            "Build failed to start: the image {} could not be pulled ({}). Please check if your image is valid and accessible.",
            quote(&build_image(pod)),
            short(detail)
        ),
        _ => format!(
            "Build failed to start: the container could not be created ({}). Please reach out to your cluster admin for help.",
            short(detail)
        ),
    };
    Some(Verdict::LaunchFailed {
        reason: reason.to_string(),
        message,
    })
}

/// A pod not running yet and not failed: pending, or failed for staying pending too long.
fn pending(
    pod: &Pod,
    now_unix: i64,
    waiting: Option<(String, String)>,
    policy: &Policy,
) -> Verdict {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some();
    let age = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| now_unix.saturating_sub(t.0.as_second()))
        .unwrap_or(0);
    if age < 0 || Duration::from_secs(age as u64) < policy.pending_timeout {
        return Verdict::Pending { scheduled };
    }
    let minutes = policy.pending_timeout.as_secs().div_ceil(60);
    let unschedulable = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter().find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        });
    match unschedulable {
        Some(c) => Verdict::LaunchFailed {
            reason: "Unschedulable".into(),
            message: format!(
                "Build failed to start: no node could run it within {minutes} minutes ({}). Waiting for resources to be available timed out.",
                short(c.message.as_deref().unwrap_or("no details"))
            ),
        },
        None => Verdict::LaunchFailed {
            // A known kubelet reason says more than "it took too long".
            reason: waiting
                .as_ref()
                .map(|(r, _)| r.clone())
                .unwrap_or_else(|| "PendingTimeout".into()),
            message: format!(
                "Build failed to start: the pod stayed pending for more than {minutes} minutes{}.",
                waiting
                    .map(|(r, d)| format!(" ({r}: {})", short(&d)))
                    .unwrap_or_default()
            ),
        },
    }
}

fn waiting_reason(c: &ContainerStatus) -> Option<(String, String)> {
    let w = c.state.as_ref()?.waiting.as_ref()?;
    let reason = w.reason.clone()?;
    if matches!(reason.as_str(), "ContainerCreating" | "PodInitializing") {
        return None;
    }
    Some((reason, w.message.clone().unwrap_or_default()))
}

/// An init container that terminated with a non-zero exit code.
fn failed_init(pod: &Pod) -> Option<(i32, String)> {
    pod.status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .find(|t| t.exit_code != 0)
        .map(|t| {
            (
                t.exit_code,
                t.reason.clone().unwrap_or_else(|| "Error".into()),
            )
        })
}

fn init_failed(code: i32, why: &str) -> Verdict {
    Verdict::LaunchFailed {
        reason: "InitContainerFailed".into(),
        message: format!(
            "Build failed to start: the launcher init container failed (exit code {code}, {why}). Please reach out to your cluster admin for help."
        ),
    }
}

fn finished_message(code: i32, reason: &str) -> String {
    match reason {
        "OOMKilled" => format!(
            "The build ran out of memory and was killed (exit code {code}). Consider a larger screwdriver.cd/ram."
        ),
        _ => format!("The build exited with code {code} ({reason})."),
    }
}

fn quote(s: &str) -> String {
    let cut: String = s.chars().take(200).collect();
    format!("{cut:?}")
}

fn short(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if one_line.trim().is_empty() {
        "no details".into()
    } else {
        one_line.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POLICY: Policy = Policy {
        grace: Duration::from_secs(30),
        pending_timeout: Duration::from_secs(600),
    };
    const NOW: i64 = 1_800_000_000;

    fn pod(status: serde_json::Value, extra_spec: serde_json::Value) -> Pod {
        let mut spec = json!({"containers": [{"name": "42", "image": "node:22"}, {"name": "dind", "image": "docker"}]});
        if let Some(o) = extra_spec.as_object() {
            for (k, v) in o {
                spec[k] = v.clone();
            }
        }
        serde_json::from_value(json!({
            "metadata": {"name": "42-abcde", "creationTimestamp": "2027-01-15T08:00:00Z"},
            "spec": spec,
            "status": status,
        }))
        .unwrap()
    }

    fn created_at() -> i64 {
        "2027-01-15T08:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second()
    }

    fn never(_: &'static str) -> Duration {
        Duration::ZERO
    }

    fn waiting(reason: &str) -> Pod {
        pod(
            json!({"phase": "Pending", "containerStatuses": [
            {"name": "42", "ready": false, "restartCount": 0, "image": "node:22", "imageID": "",
             "state": {"waiting": {"reason": reason, "message": "kubelet says no"}}}]}),
            json!({"nodeName": "n1"}),
        )
    }

    #[test]
    fn invalid_image_fails_at_once() {
        let v = assess(
            &waiting("InvalidImageName"),
            created_at() + 1,
            never,
            &POLICY,
        );
        assert!(
            matches!(v, Verdict::LaunchFailed { ref reason, .. } if reason == "InvalidImageName"),
            "{v:?}"
        );
    }

    #[test]
    fn image_pull_errors_wait_for_the_grace_period() {
        let p = waiting("ImagePullBackOff");
        assert_eq!(
            assess(&p, created_at() + 5, |_| Duration::from_secs(29), &POLICY),
            Verdict::Pending { scheduled: true }
        );
        let v = assess(
            &p,
            created_at() + 5,
            |k| {
                if k == "ImagePull" {
                    Duration::from_secs(30)
                } else {
                    Duration::ZERO
                }
            },
            &POLICY,
        );
        assert!(
            matches!(v, Verdict::LaunchFailed { ref reason, ref message } if reason == "ImagePullBackOff" && message.contains("node:22")),
            "{v:?}"
        );
        for r in ["CreateContainerConfigError", "CreateContainerError"] {
            assert_eq!(
                assess(&waiting(r), created_at() + 5, never, &POLICY),
                Verdict::Pending { scheduled: true }
            );
            assert!(
                assess(
                    &waiting(r),
                    created_at() + 5,
                    |_| Duration::from_secs(31),
                    &POLICY
                )
                .is_terminal()
            );
        }
    }

    #[test]
    fn crash_loop_and_init_failures_fail_at_once() {
        assert!(matches!(
            assess(&waiting("CrashLoopBackOff"), created_at(), never, &POLICY),
            Verdict::LaunchFailed { .. }
        ));
        let p = pod(
            json!({"phase": "Failed", "initContainerStatuses": [{"name": "launcher-42", "ready": false, "restartCount": 0, "image": "l", "imageID": "",
            "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}]}),
            json!({}),
        );
        assert!(
            matches!(assess(&p, created_at(), never, &POLICY), Verdict::LaunchFailed { ref reason, .. } if reason == "InitContainerFailed")
        );
    }

    #[test]
    fn unschedulable_fails_after_the_pending_deadline_with_the_scheduler_message() {
        let p = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient cpu."}]}),
            json!({}),
        );
        assert_eq!(
            assess(&p, created_at() + 599, never, &POLICY),
            Verdict::Pending { scheduled: false }
        );
        let v = assess(&p, created_at() + 600, never, &POLICY);
        assert!(
            matches!(v, Verdict::LaunchFailed { ref reason, ref message } if reason == "Unschedulable" && message.contains("Insufficient cpu")),
            "{v:?}"
        );
        // Past the deadline, a pending pod with a kubelet reason fails with that reason.
        let waiting_too_long = assess(
            &waiting("CreateContainerError"),
            created_at() + 700,
            never,
            &POLICY,
        );
        assert!(
            matches!(waiting_too_long, Verdict::LaunchFailed { ref reason, .. } if reason == "CreateContainerError")
        );
        let plain = pod(json!({"phase": "Pending"}), json!({"nodeName": "n"}));
        assert!(
            matches!(assess(&plain, created_at() + 700, never, &POLICY), Verdict::LaunchFailed { ref reason, .. } if reason == "PendingTimeout")
        );
    }

    #[test]
    fn finishing_states() {
        let term = |code: i32, reason: &str| {
            pod(
                json!({"phase": "Running", "containerStatuses": [
            {"name": "42", "ready": false, "restartCount": 0, "image": "node:22", "imageID": "",
             "state": {"terminated": {"exitCode": code, "reason": reason}}},
            {"name": "dind", "ready": true, "restartCount": 0, "image": "docker", "imageID": "", "state": {"running": {}}}]}),
                json!({}),
            )
        };
        assert_eq!(
            assess(&term(0, "Completed"), NOW, never, &POLICY),
            Verdict::Succeeded
        );
        let v = assess(&term(137, "OOMKilled"), NOW, never, &POLICY);
        assert!(
            matches!(v, Verdict::Failed { exit_code: 137, ref reason, .. } if reason == "OOMKilled"),
            "{v:?}"
        );
        let deadline = pod(
            json!({"phase": "Failed", "reason": "DeadlineExceeded", "message": "Pod was active on the node longer than the specified deadline"}),
            json!({}),
        );
        assert!(matches!(
            assess(&deadline, NOW, never, &POLICY),
            Verdict::TimedOut { .. }
        ));
        // The kubelet kills the containers too: the pod's reason still decides.
        let killed = pod(
            json!({"phase": "Failed", "reason": "DeadlineExceeded", "containerStatuses": [
                {"name": "42", "ready": false, "restartCount": 0, "image": "node:22", "imageID": "",
                 "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]}),
            json!({}),
        );
        assert!(matches!(
            assess(&killed, NOW, never, &POLICY),
            Verdict::TimedOut { .. }
        ));
        let running = pod(
            json!({"phase": "Running", "containerStatuses": [{"name": "42", "ready": true, "restartCount": 0, "image": "node:22", "imageID": "", "state": {"running": {"startedAt": "2027-01-15T08:00:05Z"}}}]}),
            json!({}),
        );
        assert_eq!(assess(&running, NOW, never, &POLICY), Verdict::Running);
    }
}
