//! Failure scripts: how the pods of matching images behave.
//!
//! Owns the [`Script`] catalogue and the first-match-wins rule list. Pure data; the kubelet
//! model in `kubelet` turns a script into status changes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What the kubelet does with a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Script {
    /// Runs for the timeline's `run_for`, then exits 0.
    #[default]
    Normal,
    /// Runs until deleted, whatever the timeline says.
    RunForever,
    /// Runs for the timeline's `run_for` (0 when unset), then exits with `code`/`reason`
    /// (e.g. 1/"Error", 137/"OOMKilled").
    Exit {
        /// Exit code of the build container.
        code: i32,
        /// Termination reason.
        reason: String,
    },
    /// The build container waits with `InvalidImageName` and never starts.
    InvalidImageName,
    /// The image cannot be pulled: `ErrImagePull` and `ImagePullBackOff` alternate.
    ErrImagePull,
    /// `CreateContainerConfigError` (e.g. a missing Secret key).
    CreateContainerConfigError {
        /// Waiting message; a kubelet-like default when absent.
        #[serde(default)]
        message: Option<String>,
    },
    /// `CreateContainerError` (the runtime failed to create the container).
    CreateContainerError {
        /// Waiting message; a kubelet-like default when absent.
        #[serde(default)]
        message: Option<String>,
    },
    /// The build container exits 1 again and again; restartCount grows and it waits in
    /// `CrashLoopBackOff` between runs (even with restartPolicy Never, unlike real pods).
    CrashLoopBackOff,
    /// The first init container exits with `code`; with restartPolicy Never the pod fails.
    InitFails {
        /// Exit code of the init container.
        code: i32,
    },
    /// The scheduler never finds a node: PodScheduled=False, reason Unschedulable.
    Unschedulable {
        /// Condition message; the scheduler's usual sentence when absent.
        #[serde(default)]
        message: Option<String>,
    },
}

/// Pods whose first container's image matches `image` follow `script`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRule {
    /// Regex on the image of the first (build) container.
    #[serde(serialize_with = "ser_regex", deserialize_with = "de_regex")]
    pub image: regex::Regex,
    /// What those pods do.
    pub script: Script,
}

impl ScriptRule {
    /// A rule for images matching `pattern`.
    pub fn new(pattern: &str, script: Script) -> Result<Self, regex::Error> {
        Ok(Self {
            image: regex::Regex::new(pattern)?,
            script,
        })
    }
}

fn ser_regex<S: Serializer>(r: &regex::Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

fn de_regex<'de, D: Deserializer<'de>>(d: D) -> Result<regex::Regex, D::Error> {
    let s = String::deserialize(d)?;
    regex::Regex::new(&s).map_err(serde::de::Error::custom)
}

/// The script of the first rule matching `image`; [`Script::Normal`] when none does.
pub fn script_for(rules: &[ScriptRule], image: &str) -> Script {
    rules
        .iter()
        .find(|r| r.image.is_match(image))
        .map(|r| r.script.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_wins() {
        let rules = vec![
            ScriptRule::new("^bad", Script::ErrImagePull).unwrap(),
            ScriptRule::new("bad", Script::InvalidImageName).unwrap(),
        ];
        assert_eq!(script_for(&rules, "bad:1"), Script::ErrImagePull);
        assert_eq!(script_for(&rules, "x/bad"), Script::InvalidImageName);
        assert_eq!(script_for(&rules, "node:22"), Script::Normal);
    }

    #[test]
    fn scripts_read_from_json() {
        let r: ScriptRule = serde_json::from_str(
            r#"{"image":"oom","script":{"kind":"exit","code":137,"reason":"OOMKilled"}}"#,
        )
        .unwrap();
        assert_eq!(
            r.script,
            Script::Exit {
                code: 137,
                reason: "OOMKilled".into()
            }
        );
        let s: Script = serde_json::from_str(r#"{"kind":"unschedulable"}"#).unwrap();
        assert_eq!(s, Script::Unschedulable { message: None });
    }
}
