//! The kubelet model's view of single containers: states, ids, images.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

#[derive(Clone, Debug)]
pub(super) enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started: Timestamp,
    },
    Terminated {
        code: i32,
        reason: String,
        started: Option<Timestamp>,
        finished: Timestamp,
    },
}

#[derive(Clone, Debug)]
pub(super) struct CModel {
    pub(super) name: String,
    pub(super) image: String,
    pub(super) state: CState,
    pub(super) last: Option<CState>,
    pub(super) restarts: i32,
    pub(super) id: Option<String>,
    pub(super) ready: bool,
}

impl CModel {
    pub(super) fn new(name: &str, image: &str, reason: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_owned(),
            state: CState::Waiting {
                reason: reason.to_owned(),
                message: None,
            },
            last: None,
            restarts: 0,
            id: None,
            ready: false,
        }
    }

    pub(super) fn start(&mut self, now: Timestamp, pod_uid: &str) {
        self.id = Some(format!(
            "containerd://{}",
            hex_digest(&format!("{pod_uid}/{}/{}", self.name, self.restarts))
        ));
        self.state = CState::Running { started: now };
    }

    pub(super) fn status(&self) -> ContainerStatus {
        let pulled = self.id.is_some();
        ContainerStatus {
            name: self.name.clone(),
            image: normalize_image(&self.image),
            image_id: if pulled {
                image_id(&self.image)
            } else {
                String::new()
            },
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

pub(super) fn time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

fn render_state(s: &CState) -> ContainerState {
    match s {
        CState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..ContainerState::default()
        },
        CState::Running { started } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(time(*started)),
            }),
            ..ContainerState::default()
        },
        CState::Terminated {
            code,
            reason,
            started,
            finished,
        } => ContainerState {
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

pub(super) fn image_id(image: &str) -> String {
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
