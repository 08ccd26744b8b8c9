//! The typed `build.*` events: one data type per event type, so that a `build.failed` without
//! an exit code or a `build.retrying` without `retryInSeconds` does not compile.
//!
//! Each data type serialises to the wire shape of docs/interface.md §4.3 (the common fields,
//! then `reason` and `message`, always written, then the fields of its type) and is the source
//! of its type's JSON Schema (`schemas/events/build.<type>.data.schema.json`).

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Serialize, Serializer};

use super::EventType;
use crate::dispatch::{DeadWhy, Waiting};
use crate::intake::BuildId;

/// The build an event is about and where its pod is: the first fields of every build event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildRef {
    /// The build.
    #[schemars(with = "u64")]
    pub build_id: BuildId,
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
}

/// A JSON `null`: the `reason` and `message` of a type that has none are still written, as
/// consumers expect every build event to carry both keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(inline)]
struct Null;

/// `reason` and `message` of a type that has neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
struct NoReason {
    /// Always `null` for this type.
    reason: Null,
    /// Always `null` for this type.
    message: Null,
}

/// `data` of `build.launched`: the pod was created, or an existing pod of the build adopted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Launched {
    /// The build and its pod.
    #[serde(flatten)]
    pub build: BuildRef,
    #[serde(flatten)]
    none: NoReason,
}

/// `data` of `build.running`: the build container was observed running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Running {
    /// The build and its pod.
    #[serde(flatten)]
    pub build: BuildRef,
    #[serde(flatten)]
    none: NoReason,
}

/// `data` of `build.succeeded`: the pod finished with exit code 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Succeeded {
    /// The build and its pod.
    #[serde(flatten)]
    pub build: BuildRef,
    #[serde(flatten)]
    none: NoReason,
}

/// `data` of `build.stopped`: a stop was carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stopped {
    /// The build, and the pod that was deleted when one was.
    #[serde(flatten)]
    pub build: BuildRef,
    #[serde(flatten)]
    none: NoReason,
    /// How many pods were deleted.
    pub deleted_pods: u32,
}

impl Launched {
    /// The event of `build`.
    pub fn new(build: BuildRef) -> Self {
        Self {
            build,
            none: NoReason::default(),
        }
    }
}

impl Running {
    /// The event of `build`.
    pub fn new(build: BuildRef) -> Self {
        Self {
            build,
            none: NoReason::default(),
        }
    }
}

impl Succeeded {
    /// The event of `build`.
    pub fn new(build: BuildRef) -> Self {
        Self {
            build,
            none: NoReason::default(),
        }
    }
}

impl Stopped {
    /// The event of `build` after `deleted_pods` pods were deleted.
    pub fn new(build: BuildRef, deleted_pods: u32) -> Self {
        Self {
            build,
            none: NoReason::default(),
            deleted_pods,
        }
    }
}

/// `data` of `build.launch_failed`: the pod cannot start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct LaunchFailed {
    /// The build and its pod.
    #[serde(flatten)]
    pub build: BuildRef,
    /// The Kubernetes reason (`ImagePullBackOff`, `Unschedulable`, ...).
    pub reason: String,
    /// A sentence for the user.
    pub message: String,
}

/// `data` of `build.retrying`: a transient failure, or the first wait for a usable executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retrying {
    /// The build, and the executor that failed when one did.
    #[serde(flatten)]
    pub build: BuildRef,
    /// Why it waits: a worker reason code (`unavailable`, `unconfirmed`, `quota_exceeded`,
    /// `no_executor`, `sequencer_unavailable`, ...).
    pub reason: Waiting,
    /// A sentence for the user.
    pub message: String,
    /// Seconds until the next attempt.
    pub retry_in_seconds: u64,
}

/// `data` of `build.dead_lettered`: the message gave up, or was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct DeadLettered {
    /// The build.
    #[serde(flatten)]
    pub build: BuildRef,
    /// Why it was dead-lettered: a reason code of docs/interface.md §5.5 (`no_executor`,
    /// `invalid_pod`, `missing_build_id`, ...).
    pub reason: DeadWhy,
    /// A sentence for the user.
    pub message: String,
}

/// `data` of `build.failed`: the pod finished with a non-zero exit code or was evicted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failed {
    /// The build and its pod.
    #[serde(flatten)]
    pub build: BuildRef,
    /// The Kubernetes reason (`Error`, `OOMKilled`, `Evicted`, ...).
    pub reason: String,
    /// A sentence for the user.
    pub message: String,
    /// Exit code of the build container (-1 when unknown).
    pub exit_code: i32,
}

/// `data` of `build.timed_out`: the pod ran past its `activeDeadlineSeconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct TimedOut {
    /// The build and its pod.
    #[serde(flatten)]
    pub build: BuildRef,
    /// Always the Kubernetes reason `DeadlineExceeded`.
    pub reason: DeadlineExceeded,
    /// A sentence for the user.
    pub message: String,
}

/// The Kubernetes reason of a pod that ran past its deadline: the only `reason` of
/// `build.timed_out`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(inline)]
pub enum DeadlineExceeded {
    /// `DeadlineExceeded`.
    #[default]
    DeadlineExceeded,
}

impl DeadlineExceeded {
    /// The reason as written.
    pub fn as_str(self) -> &'static str {
        "DeadlineExceeded"
    }
}

/// `data` of `build.verified`: the answer to a `verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Verified {
    /// The build, and its pod when one was found.
    #[serde(flatten)]
    pub build: BuildRef,
    /// The Kubernetes reason of a build that failed or could not start.
    pub reason: Option<String>,
    /// A sentence for the user, with `reason`.
    pub message: Option<String>,
    /// The build's state.
    pub state: BuildState,
}

/// The state of a build, as `build.verified` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    /// Its pod exists and has not started yet.
    Pending,
    /// The build container runs.
    Running,
    /// It finished with exit code 0.
    Succeeded,
    /// It finished with a non-zero exit code, or its pod failed after starting.
    Failed,
    /// Its pod cannot start.
    LaunchFailed,
    /// Its pod ran past its deadline.
    TimedOut,
    /// No pod of the build was found.
    Missing,
}

impl BuildState {
    /// Every state, for tests.
    pub const ALL: [BuildState; 7] = [
        BuildState::Pending,
        BuildState::Running,
        BuildState::Succeeded,
        BuildState::Failed,
        BuildState::LaunchFailed,
        BuildState::TimedOut,
        BuildState::Missing,
    ];

    /// The state as written (also a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Pending => "pending",
            BuildState::Running => "running",
            BuildState::Succeeded => "succeeded",
            BuildState::Failed => "failed",
            BuildState::LaunchFailed => "launch_failed",
            BuildState::TimedOut => "timed_out",
            BuildState::Missing => "missing",
        }
    }
}

/// A `build.*` event: its variant is its type, and it carries exactly the data of that type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum BuildEvent {
    /// `build.launched`.
    Launched(Launched),
    /// `build.running`.
    Running(Running),
    /// `build.launch_failed`.
    LaunchFailed(LaunchFailed),
    /// `build.retrying`.
    Retrying(Retrying),
    /// `build.dead_lettered`.
    DeadLettered(DeadLettered),
    /// `build.stopped`.
    Stopped(Stopped),
    /// `build.succeeded`.
    Succeeded(Succeeded),
    /// `build.failed`.
    Failed(Failed),
    /// `build.timed_out`.
    TimedOut(TimedOut),
    /// `build.verified`.
    Verified(Verified),
}

macro_rules! from_data {
    ($($variant:ident),*) => {$(
        impl From<$variant> for BuildEvent {
            fn from(data: $variant) -> Self {
                BuildEvent::$variant(data)
            }
        }
    )*};
}

from_data!(
    Launched,
    Running,
    LaunchFailed,
    Retrying,
    DeadLettered,
    Stopped,
    Succeeded,
    Failed,
    TimedOut,
    Verified
);

impl BuildEvent {
    /// The event's type, which its variant decides.
    pub fn event_type(&self) -> EventType {
        match self {
            BuildEvent::Launched(_) => EventType::BuildLaunched,
            BuildEvent::Running(_) => EventType::BuildRunning,
            BuildEvent::LaunchFailed(_) => EventType::BuildLaunchFailed,
            BuildEvent::Retrying(_) => EventType::BuildRetrying,
            BuildEvent::DeadLettered(_) => EventType::BuildDeadLettered,
            BuildEvent::Stopped(_) => EventType::BuildStopped,
            BuildEvent::Succeeded(_) => EventType::BuildSucceeded,
            BuildEvent::Failed(_) => EventType::BuildFailed,
            BuildEvent::TimedOut(_) => EventType::BuildTimedOut,
            BuildEvent::Verified(_) => EventType::BuildVerified,
        }
    }

    /// The build and where its pod is.
    pub fn build(&self) -> &BuildRef {
        match self {
            BuildEvent::Launched(d) => &d.build,
            BuildEvent::Running(d) => &d.build,
            BuildEvent::LaunchFailed(d) => &d.build,
            BuildEvent::Retrying(d) => &d.build,
            BuildEvent::DeadLettered(d) => &d.build,
            BuildEvent::Stopped(d) => &d.build,
            BuildEvent::Succeeded(d) => &d.build,
            BuildEvent::Failed(d) => &d.build,
            BuildEvent::TimedOut(d) => &d.build,
            BuildEvent::Verified(d) => &d.build,
        }
    }

    /// `reason` as written, when the event has one.
    pub fn reason(&self) -> Option<Cow<'_, str>> {
        match self {
            BuildEvent::LaunchFailed(d) => Some(Cow::Borrowed(&d.reason)),
            BuildEvent::Retrying(d) => Some(Cow::Borrowed(d.reason.label())),
            BuildEvent::DeadLettered(d) => Some(d.reason.label()),
            BuildEvent::Failed(d) => Some(Cow::Borrowed(&d.reason)),
            BuildEvent::TimedOut(d) => Some(Cow::Borrowed(d.reason.as_str())),
            BuildEvent::Verified(d) => d.reason.as_deref().map(Cow::Borrowed),
            BuildEvent::Launched(_)
            | BuildEvent::Running(_)
            | BuildEvent::Stopped(_)
            | BuildEvent::Succeeded(_) => None,
        }
    }

    /// `message`, when the event has one.
    pub fn message(&self) -> Option<&str> {
        match self {
            BuildEvent::LaunchFailed(d) => Some(&d.message),
            BuildEvent::Retrying(d) => Some(&d.message),
            BuildEvent::DeadLettered(d) => Some(&d.message),
            BuildEvent::Failed(d) => Some(&d.message),
            BuildEvent::TimedOut(d) => Some(&d.message),
            BuildEvent::Verified(d) => d.message.as_deref(),
            BuildEvent::Launched(_)
            | BuildEvent::Running(_)
            | BuildEvent::Stopped(_)
            | BuildEvent::Succeeded(_) => None,
        }
    }

    /// The exit code of a `build.failed`.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            BuildEvent::Failed(d) => Some(d.exit_code),
            _ => None,
        }
    }
}

// The worker's own reason codes are enums of dispatch; on the wire they are their labels, the
// same codes as `x-bcw-reason` (docs/interface.md §5.5).

impl Serialize for Waiting {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.label())
    }
}

impl JsonSchema for Waiting {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Waiting".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A worker reason code: why the build waits (`unavailable`, \
                            `unconfirmed`, `quota_exceeded`, `no_executor`, ...)."
        })
    }
}

impl Serialize for DeadWhy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.label())
    }
}

impl JsonSchema for DeadWhy {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "DeadWhy".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A dead-letter reason code of docs/interface.md §5.5 (`no_executor`, \
                            `invalid_pod`, `missing_build_id`, ...)."
        })
    }
}
