//! One message built from `enqueue`'s flags, in Screwdriver's wire format (docs/interface.md §3).

use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::config::Settings;

/// The job of a message built from flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JobArg {
    /// Launch a build pod.
    Start,
    /// Delete a build's pods.
    Stop,
    /// Remove a disk-cache directory.
    Clear,
}

/// The flags that describe one message.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct MessageFlags {
    /// The message's job.
    #[arg(long, value_enum)]
    pub job: Option<JobArg>,
    /// `buildConfig.buildId` (start, stop).
    #[arg(long)]
    pub build_id: Option<u64>,
    /// `buildConfig.container`: the build image (start).
    #[arg(long)]
    pub image: Option<String>,
    /// An annotation, repeatable (`screwdriver.cd/executor=kata`, `screwdriver.cd/ram=8`). A
    /// value that is a JSON number or boolean is sent as one; quote it (`'k="8"'`) for a string.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// `buildConfig.jobId`.
    #[arg(long)]
    pub job_id: Option<u64>,
    /// `buildConfig.jobName`.
    #[arg(long)]
    pub job_name: Option<String>,
    /// `buildConfig.eventId`.
    #[arg(long)]
    pub event_id: Option<u64>,
    /// `buildConfig.pipelineId` (start, stop), `cacheConfig.pipelineId` (clear).
    #[arg(long)]
    pub pipeline_id: Option<u64>,
    /// `buildConfig.prNum` (also sets `isPR`).
    #[arg(long)]
    pub pr_num: Option<u64>,
    /// `buildConfig.apiUri` (default: ecosystem.api).
    #[arg(long)]
    pub api_uri: Option<String>,
    /// A file holding the build token (`buildConfig.token`, required for start).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The build token; prefer --token-file (a command line is visible to other users).
    #[arg(long, env = "BCW_BUILD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// `cacheConfig.scope` (clear): `pipelines`, `jobs` or `events`.
    #[arg(long)]
    pub scope: Option<String>,
    /// `cacheConfig.id` (clear): the job or event id.
    #[arg(long)]
    pub cache_id: Option<String>,
    /// `cacheConfig.prefix` (clear).
    #[arg(long)]
    pub prefix: Option<String>,
}

impl MessageFlags {
    /// Whether any message flag was given (files and flags do not mix).
    pub fn any(&self) -> bool {
        let MessageFlags {
            job,
            build_id,
            image,
            annotations,
            job_id,
            job_name,
            event_id,
            pipeline_id,
            pr_num,
            api_uri,
            token_file,
            token: _,
            scope,
            cache_id,
            prefix,
        } = self;
        job.is_some()
            || build_id.is_some()
            || image.is_some()
            || !annotations.is_empty()
            || job_id.is_some()
            || job_name.is_some()
            || event_id.is_some()
            || pipeline_id.is_some()
            || pr_num.is_some()
            || api_uri.is_some()
            || token_file.is_some()
            || scope.is_some()
            || cache_id.is_some()
            || prefix.is_some()
    }

    /// The message these flags describe (checked by the schema afterwards; here only what the
    /// flags themselves get wrong).
    pub fn message(&self, settings: &Settings) -> Result<Value, String> {
        match self.job.unwrap_or(JobArg::Start) {
            JobArg::Start => self.start(settings),
            JobArg::Stop => self.stop(settings),
            JobArg::Clear => self.clear(),
        }
    }

    fn start(&self, settings: &Settings) -> Result<Value, String> {
        let build_id = self.build_id.ok_or("a start needs --build-id")?;
        let image = self.image.as_deref().ok_or("a start needs --image")?;
        let mut config = self.common(build_id, settings)?;
        config.insert("container".into(), json!(image));
        config.insert("token".into(), json!(self.token()?));
        config.insert("isPR".into(), json!(self.pr_num.is_some()));
        if let Some(n) = self.pr_num {
            config.insert("prNum".into(), json!(n));
        }
        Ok(json!({"job": "start", "buildConfig": config}))
    }

    fn stop(&self, settings: &Settings) -> Result<Value, String> {
        let build_id = self.build_id.ok_or("a stop needs --build-id")?;
        let config = self.common(build_id, settings)?;
        Ok(json!({"job": "stop", "buildConfig": config}))
    }

    /// The fields a start and a stop share (the original worker required `apiUri` on a stop
    /// too, so it is always sent).
    fn common(&self, build_id: u64, settings: &Settings) -> Result<Map<String, Value>, String> {
        let mut config = Map::new();
        config.insert("buildId".into(), json!(build_id));
        let api = self
            .api_uri
            .clone()
            .unwrap_or_else(|| settings.ecosystem.api.clone());
        config.insert("apiUri".into(), json!(api));
        for (key, value) in [
            ("jobId", self.job_id.map(|v| json!(v))),
            ("jobName", self.job_name.as_ref().map(|v| json!(v))),
            ("eventId", self.event_id.map(|v| json!(v))),
            ("pipelineId", self.pipeline_id.map(|v| json!(v))),
        ] {
            if let Some(v) = value {
                config.insert(key.into(), v);
            }
        }
        config.insert(
            "annotations".into(),
            Value::Object(annotations(&self.annotations)?),
        );
        Ok(config)
    }

    fn clear(&self) -> Result<Value, String> {
        let scope = self.scope.as_deref().ok_or("a clear needs --scope")?;
        let pipeline = self.pipeline_id.ok_or("a clear needs --pipeline-id")?;
        let mut cache = json!({"resource": "caches", "action": "delete", "scope": scope,
            "pipelineId": pipeline.to_string()});
        if let Some(id) = &self.cache_id {
            cache["id"] = json!(id);
        }
        if let Some(prefix) = &self.prefix {
            cache["prefix"] = json!(prefix);
        }
        Ok(json!({"job": "clear", "cacheConfig": cache}))
    }

    fn token(&self) -> Result<String, String> {
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
            return Ok(text.trim_end_matches(['\n', '\r']).to_string());
        }
        self.token.clone().ok_or_else(|| {
            "a start needs a build token: --token-file FILE (or BCW_BUILD_TOKEN)".into()
        })
    }
}

/// `KEY=VALUE` pairs as an annotations object.
fn annotations(pairs: &[String]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for pair in pairs {
        let (key, raw) = pair
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| format!("--annotation {pair:?} is not KEY=VALUE"))?;
        let value = match serde_json::from_str::<Value>(raw) {
            Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::String(_))) => v,
            _ => json!(raw),
        };
        out.insert(key.trim().to_string(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> MessageFlags {
        MessageFlags {
            build_id: Some(42),
            image: Some("node:22".into()),
            token: Some("tok".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_start_from_flags_has_the_wire_format_and_typed_annotations() {
        let mut f = flags();
        f.annotations = vec![
            "screwdriver.cd/ram=8".into(),
            "screwdriver.cd/cpu=HIGH".into(),
            "beta.screwdriver.cd/executor=\"8\"".into(),
            "flag=true".into(),
        ];
        f.pr_num = Some(3);
        let m = f.message(&Settings::default()).unwrap();
        assert_eq!(m["job"], "start");
        let c = &m["buildConfig"];
        assert_eq!(c["buildId"], 42);
        assert_eq!(c["container"], "node:22");
        assert_eq!(c["apiUri"], Settings::default().ecosystem.api);
        assert_eq!(c["token"], "tok");
        assert_eq!(
            (c["isPR"].clone(), c["prNum"].clone()),
            (json!(true), json!(3))
        );
        assert_eq!(
            c["annotations"],
            json!({"screwdriver.cd/ram": 8, "screwdriver.cd/cpu": "HIGH",
                   "beta.screwdriver.cd/executor": "8", "flag": true})
        );
    }

    #[test]
    fn what_the_flags_lack_is_said() {
        let mut f = flags();
        f.image = None;
        assert_eq!(
            f.message(&Settings::default()).unwrap_err(),
            "a start needs --image"
        );
        let mut f = flags();
        f.token = None;
        assert!(
            f.message(&Settings::default())
                .unwrap_err()
                .contains("--token-file")
        );
        let mut f = flags();
        f.annotations = vec!["=x".into()];
        assert!(
            f.message(&Settings::default())
                .unwrap_err()
                .contains("not KEY=VALUE")
        );
        let clear = MessageFlags {
            job: Some(JobArg::Clear),
            ..Default::default()
        };
        assert_eq!(
            clear.message(&Settings::default()).unwrap_err(),
            "a clear needs --scope"
        );
    }

    #[test]
    fn stop_and_clear_from_flags() {
        let stop = MessageFlags {
            job: Some(JobArg::Stop),
            build_id: Some(9),
            ..Default::default()
        };
        let m = stop.message(&Settings::default()).unwrap();
        assert_eq!(m["job"], "stop");
        assert_eq!(m["buildConfig"]["buildId"], 9);
        assert!(m["buildConfig"].get("token").is_none());
        let clear = MessageFlags {
            job: Some(JobArg::Clear),
            scope: Some("jobs".into()),
            pipeline_id: Some(1234),
            cache_id: Some("4321".into()),
            ..Default::default()
        };
        assert_eq!(
            clear.message(&Settings::default()).unwrap(),
            json!({"job": "clear", "cacheConfig": {"resource": "caches", "action": "delete",
                "scope": "jobs", "pipelineId": "1234", "id": "4321"}})
        );
        assert!(!MessageFlags::default().any());
        assert!(stop.any());
    }
}
