//! Build events of every type, as the worker builds them: one with as little as its type
//! allows (no job, no pod, empty sentences) and one with everything, for each reason kind the
//! worker has (its own codes, Kubernetes reasons) and each verified state.

use buildcluster_worker::dispatch::{DeadWhy, Waiting};
use buildcluster_worker::events::{
    BuildEvent, BuildRef, BuildState, DeadLettered, DeadlineExceeded, EventType, Failed,
    LaunchFailed, Launched, Retrying, Running, Stopped, Succeeded, TimedOut, Verified,
};
use buildcluster_worker::intake::{BuildId, PoisonReason};
use buildcluster_worker::protocol::{DeadReason, WaitReason};

/// A build with nothing known but its id and attempt.
pub fn sparse() -> BuildRef {
    BuildRef {
        build_id: BuildId(987654),
        job_id: None,
        executor: None,
        namespace: None,
        pod: None,
        attempt: 1,
    }
}

/// A build with everything known, its id the largest Screwdriver sends.
pub fn full() -> BuildRef {
    BuildRef {
        build_id: BuildId(9007199254740991),
        job_id: Some(4321),
        executor: Some("k8s".into()),
        namespace: Some("builds".into()),
        pod: Some("987654-h53zd".into()),
        attempt: 5,
    }
}

/// Every event of `build` the worker can build, at least one per build type.
pub fn events_of(build: &BuildRef, message: &str) -> Vec<BuildEvent> {
    let b = || build.clone();
    let m = || message.to_string();
    let mut events: Vec<BuildEvent> = vec![
        Launched::new(b()).into(),
        Running::new(b()).into(),
        Succeeded::new(b()).into(),
        Stopped::new(b(), 0).into(),
        Stopped::new(b(), 2).into(),
        LaunchFailed {
            build: b(),
            reason: "ImagePullBackOff".into(),
            message: m(),
        }
        .into(),
        Failed {
            build: b(),
            reason: "OOMKilled".into(),
            message: m(),
            exit_code: -1,
        }
        .into(),
        TimedOut {
            build: b(),
            reason: DeadlineExceeded::DeadlineExceeded,
            message: m(),
        }
        .into(),
    ];
    for reason in [
        Waiting::Build(WaitReason::QuotaExceeded),
        Waiting::Build(WaitReason::NoExecutor),
        Waiting::StopRecheck,
    ] {
        events.push(
            Retrying {
                build: b(),
                reason,
                message: m(),
                retry_in_seconds: 30,
            }
            .into(),
        );
    }
    for reason in [
        DeadWhy::Poison(PoisonReason::MissingField, Some("buildId")),
        DeadWhy::Poison(PoisonReason::InvalidJson, None),
        DeadWhy::Launch(DeadReason::InvalidPod),
        DeadWhy::GaveUp(Waiting::Build(WaitReason::Unavailable)),
        DeadWhy::NoExecutor,
    ] {
        events.push(
            DeadLettered {
                build: b(),
                reason,
                message: m(),
            }
            .into(),
        );
    }
    for state in BuildState::ALL {
        let why = matches!(state, BuildState::Failed | BuildState::LaunchFailed);
        events.push(
            Verified {
                build: b(),
                reason: why.then(|| "Error".into()),
                message: why.then(m),
                state,
            }
            .into(),
        );
    }
    events
}

/// Every event of [`events_of`] for a sparse and a full build; every build type is among them.
pub fn build_events() -> Vec<BuildEvent> {
    let mut events = events_of(&sparse(), "");
    events.extend(events_of(&full(), "the image node:99 cannot be pulled"));
    for ty in EventType::ALL {
        assert!(
            !ty.suffix().starts_with("build.") || events.iter().any(|e| e.event_type() == ty),
            "no {} among the corpus events",
            ty.suffix()
        );
    }
    events
}
