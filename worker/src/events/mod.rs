//! Lifecycle events (docs/interface.md §4): CloudEvents 1.0 in structured JSON mode, and their
//! CDEvents form ([`cdevents`]) when `events.format` asks for it.
//!
//! Owns the event types, their `data` shapes (also published as JSON Schemas in `schemas/`) and
//! the deterministic event id. It never talks to the broker: [`crate::broker::Publisher`] sends
//! what this module builds. A `build.*` event is built from a typed [`BuildEvent`], whose
//! variant decides its type.

mod build;
pub mod cdevents;

pub use build::{
    BuildEvent, BuildRef, BuildState, DeadLettered, DeadlineExceeded, Failed, LaunchFailed,
    Launched, Retrying, Running, Stopped, Succeeded, TimedOut, Verified,
};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::intake::BuildId;

/// Prefix of every event type.
pub const TYPE_PREFIX: &str = "dev.buildcluster.";
/// Content type of an event message.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// UUID namespace of build event ids (a fixed random UUID; changing it changes every id).
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f1c_52e4_8b0a_4d8e_9a35_1f77_c0de_b0c1);

/// Every event type the worker publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The pod was created, or an existing pod of this build was adopted.
    BuildLaunched,
    /// The build container was observed running.
    BuildRunning,
    /// The pod cannot start; `reason` is the Kubernetes reason.
    BuildLaunchFailed,
    /// A transient failure; the message was put on a delay queue.
    BuildRetrying,
    /// The message gave up, or was poison.
    BuildDeadLettered,
    /// A stop was carried out.
    BuildStopped,
    /// The pod finished with exit code 0.
    BuildSucceeded,
    /// The pod finished with a non-zero exit code or was evicted.
    BuildFailed,
    /// The pod ran past its `activeDeadlineSeconds`.
    BuildTimedOut,
    /// Answer to a `verify` message: the build's current state.
    BuildVerified,
    /// An executor's breaker opened.
    BreakerOpened,
    /// An executor's breaker closed again.
    BreakerClosed,
}

impl EventType {
    /// Every type, for documentation and schema generation.
    pub const ALL: [EventType; 12] = [
        EventType::BuildLaunched,
        EventType::BuildRunning,
        EventType::BuildLaunchFailed,
        EventType::BuildRetrying,
        EventType::BuildDeadLettered,
        EventType::BuildStopped,
        EventType::BuildSucceeded,
        EventType::BuildFailed,
        EventType::BuildTimedOut,
        EventType::BuildVerified,
        EventType::BreakerOpened,
        EventType::BreakerClosed,
    ];

    /// The type without its prefix; also the routing key (`build.launched`).
    pub fn suffix(self) -> &'static str {
        match self {
            EventType::BuildLaunched => "build.launched",
            EventType::BuildRunning => "build.running",
            EventType::BuildLaunchFailed => "build.launch_failed",
            EventType::BuildRetrying => "build.retrying",
            EventType::BuildDeadLettered => "build.dead_lettered",
            EventType::BuildStopped => "build.stopped",
            EventType::BuildSucceeded => "build.succeeded",
            EventType::BuildFailed => "build.failed",
            EventType::BuildTimedOut => "build.timed_out",
            EventType::BuildVerified => "build.verified",
            EventType::BreakerOpened => "cluster.breaker_opened",
            EventType::BreakerClosed => "cluster.breaker_closed",
        }
    }

    /// The full CloudEvents type (`dev.buildcluster.build.launched`).
    pub fn full(self) -> String {
        format!("{TYPE_PREFIX}{}", self.suffix())
    }

    /// Reads a suffix back (`build.launched`).
    pub fn from_suffix(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.suffix() == s)
    }
}

// The general shape that every type's data ([`BuildEvent`]) fits: the contract schema
// `build-event-data.schema.json` is generated from it, and a consumer may read any build event
// with it. The worker never builds one (`non_exhaustive` keeps other crates from doing so).
/// `data` of every `build.*` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BuildEventData {
    /// The build.
    pub build_id: u64,
    /// Screwdriver job id, when known.
    pub job_id: Option<u64>,
    /// Executor that holds (or was to hold) the pod.
    pub executor: Option<String>,
    /// Namespace of the pod.
    pub namespace: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Attempt of the message (1 for the first delivery).
    pub attempt: u32,
    /// Machine-readable reason (a Kubernetes reason, or a worker reason code).
    pub reason: Option<String>,
    /// A sentence for the user.
    pub message: Option<String>,
    /// `build.retrying`: seconds until the next attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_seconds: Option<u64>,
    /// `build.failed`: exit code of the build container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// `build.stopped`: how many pods were deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_pods: Option<u32>,
    /// `build.verified`: the build's state (`pending`, `running`, `succeeded`, `failed`,
    /// `launch_failed`, `missing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// `data` of the `cluster.*` events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterEventData {
    /// The executor whose breaker changed state.
    pub executor: String,
    /// Consecutive failures that opened it (0 when closing).
    pub failures: u32,
    /// How long it stays open before one probe call (opened only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_for_seconds: Option<f64>,
    /// Consecutive trips without a successful close (opened only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trip: Option<u32>,
}

/// One CloudEvent, ready to serialise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CloudEvent<D> {
    /// Always `1.0`.
    pub specversion: String,
    /// Deterministic id (see [`build_event_id`]).
    pub id: String,
    /// `buildcluster-worker/<queue>`.
    pub source: String,
    /// `dev.buildcluster.<suffix>`.
    #[serde(rename = "type")]
    pub ty: String,
    /// The build id (or the executor name for cluster events).
    pub subject: String,
    /// RFC 3339 time of publication.
    pub time: String,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The payload.
    pub data: D,
}

/// A serialised event with what the publisher needs.
#[derive(Debug, Clone)]
pub struct OutgoingEvent {
    /// The event type.
    pub ty: EventType,
    /// The event id (also the AMQP `message_id`).
    pub id: String,
    /// The JSON body.
    pub body: Vec<u8>,
    /// The typed event of a `build.*` type, from which its other forms ([`cdevents`]) are
    /// rendered; `None` for `cluster.*` events.
    pub build: Option<CloudEvent<BuildEvent>>,
}

/// The id of a build event: a UUID v5 of (buildId, type, attempt), so a redelivery that
/// publishes the same event publishes the same id, and consumers may deduplicate by id.
pub fn build_event_id(build: BuildId, ty: EventType, attempt: u32) -> String {
    let name = format!("{}/{}/{}", build.0, ty.suffix(), attempt);
    uuid::Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).to_string()
}

/// Builds a `build.*` event; its type is the variant of `data`.
pub fn build_event(source: &str, data: impl Into<BuildEvent>) -> OutgoingEvent {
    let data = data.into();
    let ty = data.event_type();
    let BuildRef {
        build_id, attempt, ..
    } = *data.build();
    let id = build_event_id(build_id, ty, attempt);
    let event = CloudEvent {
        specversion: "1.0".into(),
        id: id.clone(),
        source: source.to_string(),
        ty: ty.full(),
        subject: build_id.0.to_string(),
        time: now_rfc3339(),
        datacontenttype: "application/json".into(),
        data,
    };
    OutgoingEvent {
        ty,
        id,
        body: serde_json::to_vec(&event).expect("event serialisation cannot fail"),
        build: Some(event),
    }
}

/// Builds a `cluster.*` event. `sequence` distinguishes the transitions of one replica.
pub fn cluster_event(
    source: &str,
    replica: &str,
    sequence: u64,
    ty: EventType,
    data: ClusterEventData,
) -> OutgoingEvent {
    let name = format!("{}/{}/{}/{}", data.executor, ty.suffix(), replica, sequence);
    let id = uuid::Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).to_string();
    let event = CloudEvent {
        specversion: "1.0".into(),
        id: id.clone(),
        source: source.to_string(),
        ty: ty.full(),
        subject: data.executor.clone(),
        time: now_rfc3339(),
        datacontenttype: "application/json".into(),
        data,
    };
    OutgoingEvent {
        ty,
        id,
        body: serde_json::to_vec(&event).expect("event serialisation cannot fail"),
        build: None,
    }
}

/// The `source` of every event of a pool: `buildcluster-worker/<queue>`.
pub fn source(queue: &str) -> String {
    format!("buildcluster-worker/{queue}")
}

fn now_rfc3339() -> String {
    // Millisecond precision, as in the example of docs/interface.md §4.1.
    let now = jiff::Timestamp::now();
    format!("{:.3}", now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_per_build_type_and_attempt() {
        let a = build_event_id(BuildId(987654), EventType::BuildLaunched, 1);
        assert_eq!(
            a,
            build_event_id(BuildId(987654), EventType::BuildLaunched, 1)
        );
        assert_ne!(
            a,
            build_event_id(BuildId(987654), EventType::BuildLaunched, 2)
        );
        assert_ne!(
            a,
            build_event_id(BuildId(987654), EventType::BuildRunning, 1)
        );
        assert_ne!(
            a,
            build_event_id(BuildId(987655), EventType::BuildLaunched, 1)
        );
    }

    fn at(attempt: u32) -> BuildRef {
        BuildRef {
            build_id: BuildId(987654),
            job_id: Some(4321),
            executor: Some("k8s".into()),
            namespace: Some("builds".into()),
            pod: Some("987654-h53zd".into()),
            attempt,
        }
    }

    fn nowhere(job_id: Option<u64>, attempt: u32) -> BuildRef {
        BuildRef {
            job_id,
            executor: None,
            namespace: None,
            pod: None,
            ..at(attempt)
        }
    }

    #[test]
    fn event_json_matches_the_contract_shape() {
        let ev = build_event("buildcluster-worker/default", Launched::new(at(1)));
        let v: serde_json::Value = serde_json::from_slice(&ev.body).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "dev.buildcluster.build.launched");
        assert_eq!(v["subject"], "987654");
        assert_eq!(v["id"], ev.id.as_str());
        assert_eq!(v["datacontenttype"], "application/json");
        assert!(v["data"]["reason"].is_null() && v["data"].get("reason").is_some());
        assert!(v["data"].get("retryInSeconds").is_none());
        let time = v["time"].as_str().unwrap();
        assert!(time.parse::<jiff::Timestamp>().is_ok(), "{time}");
        assert!(time.ends_with('Z'));
    }

    /// The id and `data` that the flat struct these types replaced wrote for [`golden_events`]:
    /// the typed events must not change a byte on the wire.
    const GOLDEN: [(&str, &str); 12] = [
        (
            "83e3a43a-810c-526d-ad99-514a7b06e031",
            r#"{"buildId":987654,"jobId":4321,"executor":"k8s","namespace":"builds","pod":"987654-h53zd","attempt":1,"reason":null,"message":null}"#,
        ),
        (
            "8892f20e-bde4-5921-b202-b18d0e78cf85",
            r#"{"buildId":987654,"jobId":4321,"executor":"k8s","namespace":"builds","pod":"987654-h53zd","attempt":2,"reason":null,"message":null}"#,
        ),
        (
            "a4bfab6a-ae8d-59ef-a851-ec54509ad855",
            r#"{"buildId":987654,"jobId":4321,"executor":"k8s","namespace":"builds","pod":"987654-h53zd","attempt":1,"reason":"ImagePullBackOff","message":"the image node:99 cannot be pulled"}"#,
        ),
        (
            "671aaba8-cecc-5f7c-8b0a-91c1fec2ecfa",
            r#"{"buildId":987654,"jobId":4321,"executor":"k8s","namespace":null,"pod":null,"attempt":2,"reason":"unavailable","message":"the cluster did not answer","retryInSeconds":30}"#,
        ),
        (
            "8a890234-f214-539b-ae66-e6ee5185b381",
            r#"{"buildId":987654,"jobId":null,"executor":null,"namespace":null,"pod":null,"attempt":5,"reason":"no_executor","message":"no usable executor within rabbitmq.maxWait (5m)"}"#,
        ),
        (
            "10e7133e-4c63-586d-9676-fe628c3cfaa6",
            r#"{"buildId":987654,"jobId":4321,"executor":"k8s","namespace":"builds","pod":"987654-h53zd","attempt":1,"reason":null,"message":null,"deletedPods":1}"#,
        ),
        (
            "10e7133e-4c63-586d-9676-fe628c3cfaa6",
            r#"{"buildId":987654,"jobId":null,"executor":null,"namespace":null,"pod":null,"attempt":1,"reason":null,"message":null,"deletedPods":0}"#,
        ),
        (
            "e1d72d15-273d-5157-b8d2-5c14b6a40573",
            r#"{"buildId":987654,"jobId":4321,"executor":"k8s","namespace":"builds","pod":"987654-h53zd","attempt":1,"reason":null,"message":null}"#,
        ),
        (
            "436eca67-0f34-545c-9bb0-5b2a23c5dc4e",
            r#"{"buildId":987654,"jobId":4321,"executor":"k8s","namespace":"builds","pod":"987654-h53zd","attempt":1,"reason":"OOMKilled","message":"The build ran out of memory.","exitCode":137}"#,
        ),
        (
            "6c577dba-1fa5-5c2a-a8a2-0b3616281990",
            r#"{"buildId":987654,"jobId":4321,"executor":"k8s","namespace":"builds","pod":"987654-h53zd","attempt":1,"reason":"DeadlineExceeded","message":"The build ran past its deadline."}"#,
        ),
        (
            "ecc232d6-4a5e-5ad2-9752-95c576e95e4a",
            r#"{"buildId":987654,"jobId":4321,"executor":null,"namespace":null,"pod":null,"attempt":1,"reason":null,"message":null,"state":"missing"}"#,
        ),
        (
            "ecc232d6-4a5e-5ad2-9752-95c576e95e4a",
            r#"{"buildId":987654,"jobId":4321,"executor":"k8s","namespace":"builds","pod":"987654-h53zd","attempt":1,"reason":"Error","message":"exit 2","state":"failed"}"#,
        ),
    ];

    /// One event of every type (two stops and two verifies: with and without a pod).
    fn golden_events() -> Vec<BuildEvent> {
        use crate::dispatch::{DeadWhy, Waiting};
        use crate::protocol::WaitReason;
        let text = |s: &str| s.to_string();
        vec![
            Launched::new(at(1)).into(),
            Running::new(at(2)).into(),
            LaunchFailed {
                build: at(1),
                reason: text("ImagePullBackOff"),
                message: text("the image node:99 cannot be pulled"),
            }
            .into(),
            Retrying {
                build: BuildRef {
                    executor: Some(text("k8s")),
                    ..nowhere(Some(4321), 2)
                },
                reason: Waiting::Build(WaitReason::Unavailable),
                message: text("the cluster did not answer"),
                retry_in_seconds: 30,
            }
            .into(),
            DeadLettered {
                build: nowhere(None, 5),
                reason: DeadWhy::NoExecutor,
                message: text("no usable executor within rabbitmq.maxWait (5m)"),
            }
            .into(),
            Stopped::new(at(1), 1).into(),
            Stopped::new(nowhere(None, 1), 0).into(),
            Succeeded::new(at(1)).into(),
            Failed {
                build: at(1),
                reason: text("OOMKilled"),
                message: text("The build ran out of memory."),
                exit_code: 137,
            }
            .into(),
            TimedOut {
                build: at(1),
                reason: DeadlineExceeded::DeadlineExceeded,
                message: text("The build ran past its deadline."),
            }
            .into(),
            Verified {
                build: nowhere(Some(4321), 1),
                reason: None,
                message: None,
                state: BuildState::Missing,
            }
            .into(),
            Verified {
                build: at(1),
                reason: Some(text("Error")),
                message: Some(text("exit 2")),
                state: BuildState::Failed,
            }
            .into(),
        ]
    }

    #[test]
    fn typed_events_write_the_same_bytes_and_ids_as_before() {
        assert_eq!(golden_events().len(), GOLDEN.len());
        for (event, (id, data)) in golden_events().into_iter().zip(GOLDEN) {
            let ev = build_event("buildcluster-worker/default", event);
            let body = String::from_utf8(ev.body).unwrap();
            assert_eq!(ev.id, id, "{body}");
            assert!(
                body.contains(&format!(r#","data":{data}}}"#)),
                "{body}\nwant {data}"
            );
        }
    }

    #[test]
    fn every_event_reads_back_as_the_general_shape() {
        for event in golden_events() {
            let ev = build_event("buildcluster-worker/default", event);
            let v: serde_json::Value = serde_json::from_slice(&ev.body).unwrap();
            let general: BuildEventData = serde_json::from_value(v["data"].clone()).unwrap();
            assert_eq!(serde_json::to_value(general).unwrap(), v["data"]);
        }
    }

    #[test]
    fn build_states_are_written_as_their_names() {
        for state in BuildState::ALL {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
    }

    #[test]
    fn suffixes_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::from_suffix(t.suffix()), Some(t));
            assert!(t.full().starts_with(TYPE_PREFIX));
        }
    }
}
