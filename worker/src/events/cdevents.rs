//! CDEvents (the CD Foundation's event vocabulary, release 0.5.1): the build lifecycle as
//! `taskRun` events, rendered from the same typed event the CloudEvents are serialised from.
//!
//! Pure: it never talks to the broker and never reads a clock (the timestamp is the
//! CloudEvent's). A Screwdriver build is one run of one job of a pipeline, which is CDEvents'
//! `taskRun` (an instance of a task, usually within a `pipelineRun`); the CI `build` subject is
//! narrower (a process producing an artifact from source) and its `finished` event has no
//! outcome, so it cannot say that a build failed. Only the worker events that mean a change of
//! the task run are rendered: `build.running` is `taskrun.started`, and `build.succeeded`,
//! `build.failed`, `build.timed_out` and `build.launch_failed` are `taskrun.finished` with an
//! outcome. Everything else (retries, dead letters, stops, breakers) has no CDEvents form.

use serde::Serialize;

use super::{BuildEvent, CloudEvent, EventType};

/// The CDEvents specification release the events follow (`context.specversion`).
pub const SPEC_VERSION: &str = "0.5.1";
/// Content type of a CDEvents message: the CDEvent itself is the body (CloudEvents binary
/// mode, the CloudEvents attributes in `cloudEvents:*` headers).
pub const CONTENT_TYPE: &str = "application/json";

/// UUID namespace of CDEvents ids (distinct from the CloudEvents', so the two forms of one
/// occurrence never share an id).
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x0c1d_e5e7_40a4_4b57_8d6e_3a61_cd0e_5e51);

/// The CDEvents types the worker publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CdEventType {
    /// `dev.cdevents.taskrun.started.0.3.0`: the build container runs.
    TaskRunStarted,
    /// `dev.cdevents.taskrun.finished.0.3.0`: the build ended, with an outcome.
    TaskRunFinished,
}

impl CdEventType {
    /// Every type, for documentation and tests.
    pub const ALL: [CdEventType; 2] = [CdEventType::TaskRunStarted, CdEventType::TaskRunFinished];

    /// The full type; also the routing key on the events exchange.
    pub fn as_str(self) -> &'static str {
        match self {
            CdEventType::TaskRunStarted => "dev.cdevents.taskrun.started.0.3.0",
            CdEventType::TaskRunFinished => "dev.cdevents.taskrun.finished.0.3.0",
        }
    }
}

/// `subject.content.outcome` of a finished task run (the values the specification lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The build container exited 0.
    Success,
    /// The build ran and failed (non-zero exit, eviction, deadline).
    Failure,
    /// The build could not run (bad image, pod refused, never scheduled).
    Error,
}

/// A rendered CDEvent with what the publisher needs.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingCdEvent {
    /// Its type (routing key).
    pub ty: CdEventType,
    /// `context.id` (also the AMQP `message_id` and `cloudEvents:id`).
    pub id: String,
    /// `context.source`.
    pub source: String,
    /// `subject.id`: the build id.
    pub subject: String,
    /// `context.timestamp`.
    pub time: String,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// What a worker event means for the task run, if anything.
fn meaning(ty: EventType) -> Option<(CdEventType, Option<Outcome>)> {
    use CdEventType::{TaskRunFinished, TaskRunStarted};
    match ty {
        EventType::BuildRunning => Some((TaskRunStarted, None)),
        EventType::BuildSucceeded => Some((TaskRunFinished, Some(Outcome::Success))),
        EventType::BuildFailed | EventType::BuildTimedOut => {
            Some((TaskRunFinished, Some(Outcome::Failure)))
        }
        EventType::BuildLaunchFailed => Some((TaskRunFinished, Some(Outcome::Error))),
        _ => None,
    }
}

/// The id of a CDEvent: a UUID v5 of (buildId, CDEvents type, attempt), so a redelivery that
/// publishes the same event publishes the same id, as for the CloudEvents.
pub fn cdevent_id(build_id: u64, ty: CdEventType, attempt: u32) -> String {
    let name = format!("{build_id}/{}/{attempt}", ty.as_str());
    uuid::Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).to_string()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    context: Context<'a>,
    subject: Subject<'a>,
    /// The worker's own event data (executor, pod, attempt, reason, exit code).
    custom_data: &'a BuildEvent,
    custom_data_content_type: &'static str,
}

#[derive(Serialize)]
struct Context<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    ty: &'static str,
    timestamp: &'a str,
}

#[derive(Serialize)]
struct Subject<'a> {
    id: &'a str,
    content: Content,
}

#[derive(Serialize)]
struct Content {
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<String>,
}

/// Renders a `build.*` CloudEvent as a CDEvent; `None` for the types that have no CDEvents
/// form.
pub fn render(event: &CloudEvent<BuildEvent>) -> Option<OutgoingCdEvent> {
    let data = &event.data;
    let ty = data.event_type();
    let (cd_ty, outcome) = meaning(ty)?;
    let build = data.build();
    let id = cdevent_id(build.build_id.0, cd_ty, build.attempt);
    let source = uri_reference(&event.source);
    let subject = build.build_id.0.to_string();
    let envelope = Envelope {
        context: Context {
            specversion: SPEC_VERSION,
            id: &id,
            source: &source,
            ty: cd_ty.as_str(),
            timestamp: &event.time,
        },
        subject: Subject {
            id: &subject,
            content: Content {
                outcome,
                errors: outcome
                    .filter(|o| *o != Outcome::Success)
                    .map(|_| errors(ty, data)),
            },
        },
        custom_data: data,
        custom_data_content_type: "application/json",
    };
    let body = serde_json::to_vec(&envelope).expect("CDEvent serialisation cannot fail");
    Some(OutgoingCdEvent {
        ty: cd_ty,
        id,
        source,
        subject,
        time: event.time.clone(),
        body,
    })
}

/// `subject.content.errors`: what went wrong, for a person (reason, sentence, exit code).
fn errors(ty: EventType, data: &BuildEvent) -> String {
    let mut parts: Vec<String> = Vec::new();
    if ty == EventType::BuildTimedOut {
        parts.push("the build ran past its deadline".into());
    }
    if let Some(reason) = data.reason().filter(|r| !r.is_empty()) {
        parts.push(reason.into_owned());
    }
    if let Some(message) = data.message().filter(|m| !m.is_empty()) {
        parts.push(message.to_string());
    }
    if parts.is_empty() {
        parts.push(ty.suffix().replace("build.", "build ").replace('_', " "));
    }
    let mut text = parts.join(": ");
    if let Some(code) = data.exit_code() {
        text.push_str(&format!(" (exit code {code})"));
    }
    text
}

/// `source` as a URI reference: characters a URI may not hold (a queue name is free text)
/// percent-encoded, so the schema's `uri-reference` format holds for any queue.
fn uri_reference(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    for b in source.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~/:@!$&'()*+,;=".contains(&b);
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{
        BuildRef, DeadlineExceeded, Failed, LaunchFailed, Running, Succeeded, TimedOut, build_event,
    };
    use crate::intake::BuildId;
    use serde_json::Value;

    fn rendered(data: impl Into<BuildEvent>) -> (OutgoingCdEvent, Value) {
        let ev = build_event("buildcluster-worker/default", data);
        let cd = render(ev.build.as_ref().expect("a build event is typed"))
            .expect("this type has a CDEvents form");
        let v = serde_json::from_slice(&cd.body).unwrap();
        (cd, v)
    }

    fn build(build_id: u64, attempt: u32) -> BuildRef {
        BuildRef {
            build_id: BuildId(build_id),
            job_id: None,
            executor: None,
            namespace: None,
            pod: None,
            attempt,
        }
    }

    fn failed() -> Failed {
        Failed {
            build: BuildRef {
                executor: Some("k8s".into()),
                ..build(987654, 2)
            },
            reason: "OOMKilled".into(),
            message: "The build ran out of memory.".into(),
            exit_code: 137,
        }
    }

    #[test]
    fn running_is_a_started_task_run_of_the_build() {
        let (cd, v) = rendered(Running::new(build(42, 1)));
        assert_eq!(cd.ty, CdEventType::TaskRunStarted);
        assert_eq!(v["context"]["type"], "dev.cdevents.taskrun.started.0.3.0");
        assert_eq!(v["context"]["specversion"], "0.5.1");
        assert_eq!(v["context"]["id"], cd.id.as_str());
        assert_eq!(v["context"]["source"], "buildcluster-worker/default");
        assert_eq!(v["subject"]["id"], "42");
        assert_eq!(v["subject"]["content"], serde_json::json!({}));
        assert_eq!(v["customData"]["buildId"], 42);
        assert_eq!(v["customDataContentType"], "application/json");
    }

    #[test]
    fn endings_are_finished_task_runs_with_their_outcome_and_errors() {
        let (_, ok) = rendered(Succeeded::new(build(1, 1)));
        assert_eq!(ok["context"]["type"], "dev.cdevents.taskrun.finished.0.3.0");
        assert_eq!(ok["subject"]["content"]["outcome"], "success");
        assert!(ok["subject"]["content"].get("errors").is_none());
        let (_, bad) = rendered(failed());
        assert_eq!(bad["subject"]["content"]["outcome"], "failure");
        assert_eq!(
            bad["subject"]["content"]["errors"],
            "OOMKilled: The build ran out of memory. (exit code 137)"
        );
        let (_, late) = rendered(TimedOut {
            build: build(1, 1),
            reason: DeadlineExceeded::DeadlineExceeded,
            message: String::new(),
        });
        assert_eq!(late["subject"]["content"]["outcome"], "failure");
        assert_eq!(
            late["subject"]["content"]["errors"],
            "the build ran past its deadline: DeadlineExceeded"
        );
        let (_, never) = rendered(LaunchFailed {
            build: build(1, 1),
            reason: "InvalidImageName".into(),
            message: String::new(),
        });
        assert_eq!(never["subject"]["content"]["outcome"], "error");
        assert_eq!(never["subject"]["content"]["errors"], "InvalidImageName");
    }

    #[test]
    fn only_task_run_changes_have_a_cdevents_form() {
        let with_form: Vec<EventType> = EventType::ALL
            .into_iter()
            .filter(|t| meaning(*t).is_some())
            .collect();
        assert_eq!(
            with_form,
            [
                EventType::BuildRunning,
                EventType::BuildLaunchFailed,
                EventType::BuildSucceeded,
                EventType::BuildFailed,
                EventType::BuildTimedOut,
            ]
        );
    }

    #[test]
    fn ids_are_deterministic_per_build_type_and_attempt_and_differ_from_cloudevents() {
        let (a, _) = rendered(failed());
        let (b, _) = rendered(failed());
        assert_eq!(a.id, b.id, "a redelivery publishes the same id");
        assert_ne!(a.time, "", "the CloudEvent's time is kept");
        let mut next = failed();
        next.build.attempt = 3;
        assert_ne!(rendered(next).0.id, a.id);
        assert_ne!(
            rendered(Running::new(failed().build)).0.id,
            a.id,
            "another type, another id"
        );
        let cloud = crate::events::build_event_id(BuildId(987654), EventType::BuildFailed, 2);
        assert_ne!(a.id, cloud);
    }

    #[test]
    fn a_source_with_characters_a_uri_cannot_hold_is_percent_encoded() {
        assert_eq!(
            uri_reference("buildcluster-worker/Cluster A%ü"),
            "buildcluster-worker/Cluster%20A%25%C3%BC"
        );
    }
}
