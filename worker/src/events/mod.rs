//! Lifecycle events (docs/interface.md §4): CloudEvents 1.0 in structured JSON mode, and their
//! CDEvents form ([`cdevents`]) when `events.format` asks for it.
//!
//! Owns the event types, their `data` shapes (also published as JSON Schemas in `schemas/`) and
//! the deterministic event id. It never talks to the broker: [`crate::broker::Publisher`] sends
//! what this module builds.

pub mod cdevents;

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

/// `data` of every `build.*` event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
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
    pub build: Option<CloudEvent<BuildEventData>>,
}

/// The id of a build event: a UUID v5 of (buildId, type, attempt), so a redelivery that
/// publishes the same event publishes the same id, and consumers may deduplicate by id.
pub fn build_event_id(build: BuildId, ty: EventType, attempt: u32) -> String {
    let name = format!("{}/{}/{}", build.0, ty.suffix(), attempt);
    uuid::Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).to_string()
}

/// Builds a `build.*` event.
pub fn build_event(source: &str, ty: EventType, data: BuildEventData) -> OutgoingEvent {
    let id = build_event_id(BuildId(data.build_id), ty, data.attempt);
    let event = CloudEvent {
        specversion: "1.0".into(),
        id: id.clone(),
        source: source.to_string(),
        ty: ty.full(),
        subject: data.build_id.to_string(),
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

    #[test]
    fn event_json_matches_the_contract_shape() {
        let ev = build_event(
            "buildcluster-worker/default",
            EventType::BuildLaunched,
            BuildEventData {
                build_id: 987654,
                job_id: Some(4321),
                executor: Some("k8s".into()),
                namespace: Some("default".into()),
                pod: Some("987654-abcde".into()),
                attempt: 1,
                ..Default::default()
            },
        );
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

    #[test]
    fn suffixes_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::from_suffix(t.suffix()), Some(t));
            assert!(t.full().starts_with(TYPE_PREFIX));
        }
    }
}
