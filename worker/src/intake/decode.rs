//! Decoding and validation of one message body.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{
    Annotations, BuildId, ClearCache, Job, JobKind, Poison, PoisonReason, StartBuild, StopBuild,
};
use crate::secret::Secret;

/// Limits applied before and during decoding.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bodies larger than this are refused without being parsed.
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
        }
    }
}

/// The largest id accepted: JavaScript's `Number.MAX_SAFE_INTEGER`, since Screwdriver's ids are
/// JavaScript numbers.
const MAX_ID: u64 = (1 << 53) - 1;
/// Longest container image reference accepted.
const MAX_IMAGE_LEN: usize = 4096;
/// Longest value quoted back in an error sentence.
const QUOTE_LEN: usize = 60;

/// Decodes one message body (docs/interface.md §3 Build messages).
pub fn decode(body: &[u8], limits: Limits) -> Result<Job, Poison> {
    let mut ctx = Ctx {
        job: JobKind::Unknown,
        build_id: None,
    };
    if body.len() > limits.max_bytes {
        return Err(ctx.poison(
            PoisonReason::TooLarge,
            format!(
                "message of {} bytes is larger than the limit of {} bytes",
                body.len(),
                limits.max_bytes
            ),
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ctx.poison(
            PoisonReason::InvalidJson,
            format!("body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(root) = value else {
        return Err(ctx.poison(
            PoisonReason::NotAnObject,
            format!("body is a JSON {}, not an object", type_name(&value)),
        ));
    };
    let job = match root.get("job") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(ctx.poison(
                PoisonReason::MissingJob,
                format!("field job must be a string, got {}", type_name(other)),
            ));
        }
        None => return Err(ctx.poison(PoisonReason::MissingJob, "field job is missing".into())),
    };
    // Read the build id early (best effort) so that every later refusal can name the build.
    if let Some(Value::Object(cfg)) = root.get("buildConfig") {
        ctx.build_id = cfg
            .get("buildId")
            .and_then(|v| as_id(v).ok().flatten())
            .map(BuildId);
    }
    match job {
        "start" => {
            ctx.job = JobKind::Start;
            Ok(Job::Start(ctx.start(&root)?))
        }
        "verify" => {
            ctx.job = JobKind::Verify;
            Ok(Job::Verify(ctx.start(&root)?))
        }
        "stop" => {
            ctx.job = JobKind::Stop;
            Ok(Job::Stop(ctx.stop(&root)?))
        }
        "clear" => {
            ctx.job = JobKind::Clear;
            Ok(Job::Clear(ctx.clear(&root)?))
        }
        other => Err(ctx.poison(
            PoisonReason::UnknownJob,
            format!("unknown job {}", quote(other)),
        )),
    }
}

struct Ctx {
    job: JobKind,
    build_id: Option<BuildId>,
}

impl Ctx {
    fn poison(&self, reason: PoisonReason, detail: String) -> Poison {
        Poison {
            reason,
            field: None,
            detail,
            build_id: self.build_id,
            job: self.job,
        }
    }

    fn field_poison(&self, reason: PoisonReason, field: &'static str, detail: String) -> Poison {
        Poison {
            field: Some(field),
            ..self.poison(reason, detail)
        }
    }

    fn config<'a>(
        &self,
        root: &'a Map<String, Value>,
        key: &str,
    ) -> Result<&'a Map<String, Value>, Poison> {
        match root.get(key) {
            Some(Value::Object(o)) => Ok(o),
            Some(other) => Err(self.poison(
                PoisonReason::MissingConfig,
                format!("field {key} must be an object, got {}", type_name(other)),
            )),
            None => Err(self.poison(
                PoisonReason::MissingConfig,
                format!("field {key} is missing"),
            )),
        }
    }

    fn build_id(&self, cfg: &Map<String, Value>) -> Result<BuildId, Poison> {
        match cfg.get("buildId") {
            None | Some(Value::Null) => Err(self.field_poison(
                PoisonReason::MissingField,
                "buildId",
                "buildConfig.buildId is missing".into(),
            )),
            Some(v) => match as_id(v) {
                Ok(Some(id)) => Ok(BuildId(id)),
                Ok(None) => Err(self.field_poison(
                    PoisonReason::InvalidValue,
                    "buildId",
                    format!(
                        "buildConfig.buildId must be a positive integer up to {MAX_ID}, got {}",
                        short(v)
                    ),
                )),
                Err(t) => Err(self.field_poison(
                    PoisonReason::WrongType,
                    "buildId",
                    format!("buildConfig.buildId must be an integer, got {t}"),
                )),
            },
        }
    }

    fn required_str<'a>(
        &self,
        cfg: &'a Map<String, Value>,
        key: &'static str,
    ) -> Result<&'a str, Poison> {
        match cfg.get(key) {
            None | Some(Value::Null) => Err(self.field_poison(
                PoisonReason::MissingField,
                key,
                format!("buildConfig.{key} is missing"),
            )),
            Some(Value::String(s)) => Ok(s.as_str()),
            Some(other) => Err(self.field_poison(
                PoisonReason::WrongType,
                key,
                format!(
                    "buildConfig.{key} must be a string, got {}",
                    type_name(other)
                ),
            )),
        }
    }

    fn optional_id(
        &self,
        cfg: &Map<String, Value>,
        path: &str,
        key: &'static str,
    ) -> Result<Option<u64>, Poison> {
        match cfg.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match as_id(v) {
                Ok(Some(id)) => Ok(Some(id)),
                Ok(None) => Err(self.field_poison(
                    PoisonReason::InvalidValue,
                    key,
                    format!(
                        "{path}.{key} must be a positive integer up to {MAX_ID}, got {}",
                        short(v)
                    ),
                )),
                Err(t) => Err(self.field_poison(
                    PoisonReason::WrongType,
                    key,
                    format!("{path}.{key} must be an integer, got {t}"),
                )),
            },
        }
    }

    fn optional_str(
        &self,
        cfg: &Map<String, Value>,
        path: &str,
        key: &'static str,
    ) -> Result<Option<String>, Poison> {
        match cfg.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(self.field_poison(
                PoisonReason::WrongType,
                key,
                format!("{path}.{key} must be a string, got {}", type_name(other)),
            )),
        }
    }

    fn optional_bool(
        &self,
        cfg: &Map<String, Value>,
        key: &'static str,
    ) -> Result<Option<bool>, Poison> {
        match cfg.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(other) => Err(self.field_poison(
                PoisonReason::WrongType,
                key,
                format!(
                    "buildConfig.{key} must be a boolean, got {}",
                    type_name(other)
                ),
            )),
        }
    }

    fn optional_object<'a>(
        &self,
        cfg: &'a Map<String, Value>,
        path: &str,
        key: &'static str,
    ) -> Result<Option<&'a Map<String, Value>>, Poison> {
        match cfg.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(other) => Err(self.field_poison(
                PoisonReason::WrongType,
                key,
                format!("{path}.{key} must be an object, got {}", type_name(other)),
            )),
        }
    }

    fn start(&self, root: &Map<String, Value>) -> Result<StartBuild, Poison> {
        let cfg = self.config(root, "buildConfig")?;
        let build_id = self.build_id(cfg)?;
        let container = self.container(cfg)?;
        let api_uri = self.api_uri(cfg)?;
        let token = self.token(cfg)?;
        let annotations = match self.optional_object(cfg, "buildConfig", "annotations")? {
            Some(o) => Annotations::new(
                o.iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            None => Annotations::default(),
        };

        let pipeline = self.optional_object(cfg, "buildConfig", "pipeline")?;
        let template = self.optional_object(cfg, "buildConfig", "template")?;
        let pipeline_id = match self.optional_id(cfg, "buildConfig", "pipelineId")? {
            Some(id) => Some(id),
            None => match pipeline {
                Some(p) => self.optional_id(p, "buildConfig.pipeline", "id")?,
                None => None,
            },
        };

        Ok(StartBuild {
            build_id,
            job_id: self.optional_id(cfg, "buildConfig", "jobId")?,
            job_name: self.optional_str(cfg, "buildConfig", "jobName")?,
            event_id: self.optional_id(cfg, "buildConfig", "eventId")?,
            pipeline_id,
            pipeline_name: match pipeline {
                Some(p) => self.optional_str(p, "buildConfig.pipeline", "name")?,
                None => None,
            },
            scm_context: match pipeline {
                Some(p) => self.optional_str(p, "buildConfig.pipeline", "scmContext")?,
                None => None,
            },
            container: container.to_string(),
            api_uri: api_uri.trim_end_matches('/').to_string(),
            token: Secret::new(token),
            annotations,
            is_pr: self.optional_bool(cfg, "isPR")?.unwrap_or(false),
            pr_num: self.optional_id(cfg, "buildConfig", "prNum")?,
            pr_parent_job_id: self.optional_id(cfg, "buildConfig", "prParentJobId")?,
            template_name: match template {
                Some(t) => self.optional_str(t, "buildConfig.template", "name")?,
                None => None,
            },
            template_version: match template {
                Some(t) => self.optional_str(t, "buildConfig.template", "version")?,
                None => None,
            },
        })
    }

    /// `buildConfig.container`: an image reference (trimmed), no blanks or control characters.
    fn container<'a>(&self, cfg: &'a Map<String, Value>) -> Result<&'a str, Poison> {
        let container = self.required_str(cfg, "container")?.trim();
        if container.is_empty()
            || container.len() > MAX_IMAGE_LEN
            || container
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(self.field_poison(
                PoisonReason::InvalidValue,
                "container",
                format!(
                    "buildConfig.container is not an image reference: {}",
                    quote(container)
                ),
            ));
        }
        Ok(container)
    }

    /// `buildConfig.apiUri`: an http(s) URI (trimmed).
    fn api_uri<'a>(&self, cfg: &'a Map<String, Value>) -> Result<&'a str, Poison> {
        let api_uri = self.required_str(cfg, "apiUri")?.trim();
        if !is_http_uri(api_uri) {
            return Err(self.field_poison(
                PoisonReason::InvalidValue,
                "apiUri",
                format!(
                    "buildConfig.apiUri is not an http(s) URI: {}",
                    quote(api_uri)
                ),
            ));
        }
        Ok(api_uri)
    }

    /// `buildConfig.token`: not blank, no control characters; never quoted back.
    fn token<'a>(&self, cfg: &'a Map<String, Value>) -> Result<&'a str, Poison> {
        let token = self.required_str(cfg, "token")?;
        if token.trim().is_empty() || token.chars().any(|c| c.is_control()) {
            return Err(self.field_poison(
                PoisonReason::InvalidValue,
                "token",
                "buildConfig.token is empty or contains control characters".into(),
            ));
        }
        Ok(token)
    }

    fn stop(&self, root: &Map<String, Value>) -> Result<StopBuild, Poison> {
        let cfg = self.config(root, "buildConfig")?;
        let build_id = self.build_id(cfg)?;
        let api_uri = match cfg.get("apiUri") {
            Some(Value::String(s)) if is_http_uri(s.trim()) => {
                Some(s.trim().trim_end_matches('/').to_string())
            }
            _ => None,
        };
        let token = match cfg.get("token") {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(Secret::new(s.as_str())),
            _ => None,
        };
        Ok(StopBuild {
            build_id,
            job_id: self.optional_id(cfg, "buildConfig", "jobId")?,
            api_uri,
            token,
        })
    }

    fn clear(&self, root: &Map<String, Value>) -> Result<ClearCache, Poison> {
        let cfg = self.config(root, "cacheConfig")?;
        let field = |key: &'static str, required: bool| -> Result<String, Poison> {
            match cfg.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                None | Some(Value::Null) if !required => Ok(String::new()),
                None | Some(Value::Null) => Err(self.field_poison(
                    PoisonReason::MissingField,
                    key,
                    format!("cacheConfig.{key} is missing"),
                )),
                Some(other) => Err(self.field_poison(
                    PoisonReason::WrongType,
                    key,
                    format!(
                        "cacheConfig.{key} must be a string, got {}",
                        type_name(other)
                    ),
                )),
            }
        };
        Ok(ClearCache {
            resource: field("resource", true)?,
            action: field("action", true)?,
            prefix: field("prefix", false)?,
            scope: field("scope", true)?,
            id: field("id", false)?,
            pipeline_id: field("pipelineId", true)?,
        })
    }
}

/// Reads an id: a JSON integer, or a string of digits (Screwdriver's Joi schema converts those).
/// `Ok(None)` = right type, unusable value; `Err(type name)` = wrong type.
fn as_id(v: &Value) -> Result<Option<u64>, &'static str> {
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Ok((1..=MAX_ID).contains(&u).then_some(u))
            } else if n.is_i64() {
                Ok(None)
            } else {
                // A float: accept only an exact integer value.
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f >= 1.0 && f <= MAX_ID as f64 => {
                        Ok(Some(f as u64))
                    }
                    Some(f) if f.fract() == 0.0 => Ok(None),
                    _ => Err("a fractional number"),
                }
            }
        }
        Value::String(s) => {
            let t = s.trim();
            if !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit()) {
                Ok(t.parse::<u64>().ok().filter(|u| (1..=MAX_ID).contains(u)))
            } else if t.starts_with('-')
                && t.len() > 1
                && t[1..].bytes().all(|b| b.is_ascii_digit())
            {
                Ok(None)
            } else {
                Err("a non-numeric string")
            }
        }
        other => Err(type_name(other)),
    }
}

/// An absolute http(s) URI with a host. URIs are ASCII (RFC 3986); the `http` crate lets raw
/// non-ASCII bytes through in the path and query, including C1 controls and non-breaking
/// spaces, which would then travel unencoded in request lines and annotations.
fn is_http_uri(s: &str) -> bool {
    // Printable ASCII only, as the schema says: `http::Uri` skips a fragment, and would take a
    // control character hidden there.
    if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return false;
    }
    match s.parse::<http::Uri>() {
        Ok(uri) => {
            matches!(uri.scheme_str(), Some("http") | Some("https"))
                && uri.authority().is_some_and(|a| !a.host().is_empty())
        }
        Err(_) => false,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value quoted for an error sentence: escaped, and cut to a readable length.
fn quote(s: &str) -> String {
    let cut: String = s.chars().take(QUOTE_LEN).collect();
    let mut q = format!("{cut:?}");
    if s.chars().count() > QUOTE_LEN {
        q.push('…');
    }
    q
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => quote(s),
        other => quote(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn start_body() -> Value {
        json!({"job": "start", "buildConfig": {"buildId": 987654, "jobId": 4321, "jobName": "main",
            "eventId": 123456, "pipelineId": 1234,
            "pipeline": {"id": 1234, "name": "screwdriver-cd/example", "scmContext": "github:github.com"},
            "container": "node:22", "apiUri": "https://api.screwdriver.cd", "token": "secret-jwt",
            "annotations": {"screwdriver.cd/cpu": "HIGH", "screwdriver.cd/ram": 8},
            "isPR": false, "prNum": null, "blockedBy": [4321], "freezeWindows": []}})
    }

    fn dec(v: &Value) -> Result<Job, Poison> {
        decode(&serde_json::to_vec(v).unwrap(), Limits::default())
    }

    fn reason(v: &Value) -> PoisonReason {
        dec(v).unwrap_err().reason
    }

    #[test]
    fn decodes_the_contract_example() {
        let Job::Start(b) = dec(&start_body()).unwrap() else {
            panic!("not a start")
        };
        assert_eq!(b.build_id, BuildId(987654));
        assert_eq!(b.job_id, Some(4321));
        assert_eq!(b.pipeline_name.as_deref(), Some("screwdriver-cd/example"));
        assert_eq!(b.container, "node:22");
        assert_eq!(b.token.expose(), "secret-jwt");
        assert_eq!(b.pr_num, None);
    }

    #[test]
    fn each_kind_of_bad_message_has_its_reason() {
        assert_eq!(
            decode(b"{not json", Limits::default()).unwrap_err().reason,
            PoisonReason::InvalidJson
        );
        assert_eq!(reason(&json!([1, 2])), PoisonReason::NotAnObject);
        assert_eq!(
            reason(&json!({"buildConfig": {}})),
            PoisonReason::MissingJob
        );
        assert_eq!(
            reason(&json!({"job": "launch", "buildConfig": {"buildId": 5}})),
            PoisonReason::UnknownJob
        );
        assert_eq!(
            reason(&json!({"job": "start"})),
            PoisonReason::MissingConfig
        );
        let mut b = start_body();
        b["buildConfig"]
            .as_object_mut()
            .unwrap()
            .remove("container");
        assert_eq!(reason(&b), PoisonReason::MissingField);
        let mut b = start_body();
        b["buildConfig"]["buildId"] = json!({"id": 1});
        assert_eq!(reason(&b), PoisonReason::WrongType);
        let mut b = start_body();
        b["buildConfig"]["buildId"] = json!(-4);
        assert_eq!(reason(&b), PoisonReason::InvalidValue);
        let mut b = start_body();
        b["buildConfig"]["apiUri"] = json!("not a uri");
        assert_eq!(reason(&b), PoisonReason::InvalidValue);
        for raw in [
            "https://api.example/x\u{85}y",
            "https://api.example/\u{a0}x",
        ] {
            let mut b = start_body();
            b["buildConfig"]["apiUri"] = json!(raw);
            assert_eq!(reason(&b), PoisonReason::InvalidValue, "{raw:?}");
        }
        let big = vec![b' '; 2048];
        assert_eq!(
            decode(&big, Limits { max_bytes: 1024 }).unwrap_err().reason,
            PoisonReason::TooLarge
        );
    }

    #[test]
    fn the_token_is_never_quoted_in_a_refusal() {
        let mut b = start_body();
        b["buildConfig"]["token"] = json!("tok\u{7}en-secret");
        let p = dec(&b).unwrap_err();
        assert!(!p.detail.contains("secret"), "{}", p.detail);
        assert_eq!(p.build_id, Some(BuildId(987654)));
    }

    #[test]
    fn numeric_strings_are_ids_like_joi_converts_them() {
        let mut b = start_body();
        b["buildConfig"]["buildId"] = json!("42");
        assert_eq!(dec(&b).unwrap().build_id(), Some(BuildId(42)));
    }

    #[test]
    fn stop_needs_only_the_build_id() {
        let job = dec(&json!({"job": "stop", "buildConfig": {"buildId": 7}})).unwrap();
        let Job::Stop(s) = job else {
            panic!("not a stop")
        };
        assert_eq!(s.build_id, BuildId(7));
        assert!(s.token.is_none());
    }

    #[test]
    fn deep_json_is_refused_not_overflowed() {
        let deep = "[".repeat(100_000);
        assert_eq!(
            decode(deep.as_bytes(), Limits::default())
                .unwrap_err()
                .reason,
            PoisonReason::InvalidJson
        );
    }
}

#[cfg(test)]
mod code_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn codes_name_the_field() {
        let code = |v: Value| {
            decode(&serde_json::to_vec(&v).unwrap(), Limits::default())
                .unwrap_err()
                .code()
        };
        let base = json!({"job": "start", "buildConfig": {"buildId": 1, "container": "a", "apiUri": "https://x", "token": "t"}});
        let mut b = base.clone();
        b["buildConfig"]
            .as_object_mut()
            .unwrap()
            .remove("container");
        assert_eq!(code(b), "missing_container");
        let mut b = base.clone();
        b["buildConfig"]["buildId"] = json!(-1);
        assert_eq!(code(b), "invalid_build_id");
        let mut b = base.clone();
        b["buildConfig"]["token"] = json!(5);
        assert_eq!(code(b), "wrong_type_token");
        let mut b = base;
        b["buildConfig"]["apiUri"] = json!("ftp://x");
        assert_eq!(code(b.clone()), "invalid_api_uri");
        // Found by the schema agreement property: a control character in the fragment.
        b["buildConfig"]["apiUri"] = json!("https://a#pi.screwdriver.cd\u{0}");
        assert_eq!(code(b.clone()), "invalid_api_uri");
        b["buildConfig"]["apiUri"] = json!("https://a/b c");
        assert_eq!(code(b), "invalid_api_uri");
        assert_eq!(code(json!({"job": "nope"})), "unknown_job");
    }
}
