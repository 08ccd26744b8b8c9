//! Intake: turns the bytes of one broker message into a typed job, or says precisely why not.
//!
//! Owns the Screwdriver wire format (docs/interface.md §3). It never talks to the network and
//! never panics on any input: anything it cannot accept becomes a [`Poison`] with a bounded
//! reason code (a metric label and the `x-bcw-reason` header) and a sentence for a human
//! (`x-bcw-error`).

mod annotations;
mod decode;

pub use annotations::{Annotations, INTERPRETED_KEYS, ResourceAnnotations, Tier};
pub use decode::{Limits, decode};

use std::fmt;

use serde::Serialize;

use crate::secret::Secret;

/// A Screwdriver build id: a positive integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BuildId(pub u64);

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One decoded message.
#[derive(Debug, Clone)]
pub enum Job {
    /// Launch one build pod.
    Start(StartBuild),
    /// Delete the build's pods wherever they may be.
    Stop(StopBuild),
    /// Re-check a started build and report its state.
    Verify(StartBuild),
    /// Remove a disk-cache directory.
    Clear(ClearCache),
}

impl Job {
    /// The `job` label value of this message (bounded).
    pub fn kind(&self) -> JobKind {
        match self {
            Job::Start(_) => JobKind::Start,
            Job::Stop(_) => JobKind::Stop,
            Job::Verify(_) => JobKind::Verify,
            Job::Clear(_) => JobKind::Clear,
        }
    }

    /// The build this message is about, when it has one.
    pub fn build_id(&self) -> Option<BuildId> {
        match self {
            Job::Start(b) | Job::Verify(b) => Some(b.build_id),
            Job::Stop(s) => Some(s.build_id),
            Job::Clear(_) => None,
        }
    }
}

/// The kind of a message, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// `start`.
    Start,
    /// `stop`.
    Stop,
    /// `verify`.
    Verify,
    /// `clear`.
    Clear,
    /// A message that could not be decoded far enough to know.
    Unknown,
}

impl JobKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Start => "start",
            JobKind::Stop => "stop",
            JobKind::Verify => "verify",
            JobKind::Clear => "clear",
            JobKind::Unknown => "unknown",
        }
    }
}

/// The `buildConfig` of a `start` (or `verify`) message, reduced to what the worker uses.
#[derive(Debug, Clone)]
pub struct StartBuild {
    /// The build.
    pub build_id: BuildId,
    /// Screwdriver job id.
    pub job_id: Option<u64>,
    /// Job name (`main`, `PR-42:main`).
    pub job_name: Option<String>,
    /// Screwdriver event id.
    pub event_id: Option<u64>,
    /// Pipeline id (also read from `pipeline.id`).
    pub pipeline_id: Option<u64>,
    /// Pipeline name (`screwdriver-cd/example`).
    pub pipeline_name: Option<String>,
    /// Pipeline's SCM context.
    pub scm_context: Option<String>,
    /// Build container image.
    pub container: String,
    /// Screwdriver API the build and the worker report to.
    pub api_uri: String,
    /// Build JWT.
    pub token: Secret,
    /// Build annotations.
    pub annotations: Annotations,
    /// Pull-request build.
    pub is_pr: bool,
    /// Pull-request number.
    pub pr_num: Option<u64>,
    /// Parent job of a PR job.
    pub pr_parent_job_id: Option<u64>,
    /// Template name, when the job uses one.
    pub template_name: Option<String>,
    /// Template version.
    pub template_version: Option<String>,
}

impl StartBuild {
    /// True for Screwdriver PR jobs (`PR-<n>` or `PR-<n>:<name>`).
    pub fn is_pr_job(&self) -> bool {
        self.job_name.as_deref().is_some_and(is_pr_job_name)
    }
}

/// Screwdriver's PR job name rule: `^PR-\d+(:.+)?$`.
pub fn is_pr_job_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("PR-") else {
        return false;
    };
    let digits = rest.split(':').next().unwrap_or_default();
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (rest.len() == digits.len() || rest.len() > digits.len() + 1)
}

/// The `buildConfig` of a `stop` message.
#[derive(Debug, Clone)]
pub struct StopBuild {
    /// The build.
    pub build_id: BuildId,
    /// Screwdriver job id.
    pub job_id: Option<u64>,
    /// API to report to, when given.
    pub api_uri: Option<String>,
    /// Build token, when given (never used for Kubernetes calls).
    pub token: Option<Secret>,
}

/// The `cacheConfig` of a `clear` message.
#[derive(Debug, Clone)]
pub struct ClearCache {
    /// Must be `caches`.
    pub resource: String,
    /// Must be `delete`.
    pub action: String,
    /// Queue prefix (`beta-`), may be empty.
    pub prefix: String,
    /// `pipelines`, `jobs` or `events`.
    pub scope: String,
    /// Cache id (job or event id).
    pub id: String,
    /// Pipeline id.
    pub pipeline_id: String,
}

/// Why a message was refused. Bounded: every value is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoisonReason {
    /// Larger than `intake.maxMessageBytes`; not parsed.
    TooLarge,
    /// Not UTF-8 or not JSON (or nested deeper than the parser allows).
    InvalidJson,
    /// JSON, but not an object.
    NotAnObject,
    /// No `job` field, or not a string.
    MissingJob,
    /// A `job` the worker does not know.
    UnknownJob,
    /// No `buildConfig` object (or `cacheConfig` for `clear`).
    MissingConfig,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// A field has the right type but an unusable value (negative id, empty image, bad URI).
    InvalidValue,
}

impl PoisonReason {
    /// The reason code (`x-bcw-reason`, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            PoisonReason::TooLarge => "too_large",
            PoisonReason::InvalidJson => "invalid_json",
            PoisonReason::NotAnObject => "not_an_object",
            PoisonReason::MissingJob => "missing_job",
            PoisonReason::UnknownJob => "unknown_job",
            PoisonReason::MissingConfig => "missing_config",
            PoisonReason::MissingField => "missing_field",
            PoisonReason::WrongType => "wrong_type",
            PoisonReason::InvalidValue => "invalid_value",
        }
    }
}

/// A message the worker refuses, with everything needed to dead-letter it.
#[derive(Debug, Clone)]
pub struct Poison {
    /// Kind of refusal.
    pub reason: PoisonReason,
    /// The field at fault, for field-level refusals (`buildId`, `container`, ...).
    pub field: Option<&'static str>,
    /// A sentence for a human; never contains the token.
    pub detail: String,
    /// The build id, when one could be read (for the `build.dead_lettered` event).
    pub build_id: Option<BuildId>,
    /// The job kind, when it could be read.
    pub job: JobKind,
}

impl Poison {
    /// The reason code of `x-bcw-reason` and the dead-letter metric: the kind, plus the field
    /// for field-level refusals (`missing_container`, `invalid_build_id`, `wrong_type_token`).
    /// Bounded: the fields are a fixed set.
    pub fn code(&self) -> String {
        poison_code(self.reason, self.field)
    }
}

/// The reason code of a refusal for `reason` at `field` (see [`Poison::code`]).
pub fn poison_code(reason: PoisonReason, field: Option<&'static str>) -> String {
    match (reason, field) {
        (PoisonReason::MissingField, Some(f)) => format!("missing_{}", snake(f)),
        (PoisonReason::WrongType, Some(f)) => format!("wrong_type_{}", snake(f)),
        (PoisonReason::InvalidValue, Some(f)) => format!("invalid_{}", snake(f)),
        (r, _) => r.as_str().to_string(),
    }
}

fn snake(field: &str) -> String {
    let mut out = String::with_capacity(field.len() + 4);
    for c in field.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else if c == '.' {
            out.push('_');
        } else {
            out.push(c);
        }
    }
    out
}

impl fmt::Display for Poison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.detail)
    }
}

impl std::error::Error for Poison {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pr_job_names_follow_screwdriver() {
        assert!(is_pr_job_name("PR-42"));
        assert!(is_pr_job_name("PR-42:main"));
        assert!(!is_pr_job_name("PR-42:"));
        assert!(!is_pr_job_name("PR-:main"));
        assert!(!is_pr_job_name("main"));
        assert!(!is_pr_job_name("PR-4x2"));
    }
}
