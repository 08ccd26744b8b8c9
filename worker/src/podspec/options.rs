//! The operator's free-form pod options, read into typed items: `volumeMounts`,
//! `buildSecrets`, `buildSecretsFile` and `lifecycleHooks`.
//!
//! The configuration keeps these as raw JSON (Screwdriver passes them as JSON strings in
//! environment variables). They are read leniently here, keys matched ignoring case, `_` and
//! `-` (`mountPath`, `mount_path`): an incomplete item is skipped rather than turned into an
//! invalid pod, and [`check_options`] names every item that would be skipped so the
//! configuration check can refuse it at start-up. Pure code.

use k8s_openapi::api::core::v1::Lifecycle;
use serde_json::{Map, Value};

use crate::config::KubernetesOptions;

/// A `volumeMounts` item: a hostPath volume mounted into the build container.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostPathMount {
    /// Volume name.
    pub name: String,
    /// Where the build container sees it.
    pub mount_path: String,
    /// Path on the node.
    pub path: String,
    /// hostPath `type` (`File`, `Directory`, ...), when given.
    pub type_: Option<String>,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A `buildSecrets` item: one key of a Secret as an environment variable.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SecretEnv {
    /// The variable's name (`secret_env`).
    pub env: String,
    /// The Secret (`secret_name`).
    pub secret_name: String,
    /// The key in the Secret (`secret_key`).
    pub secret_key: String,
}

/// A `buildSecretsFile` item: a Secret mounted as files.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SecretFile {
    /// Volume name.
    pub name: String,
    /// Where the build container sees it.
    pub mount_path: String,
    /// The Secret.
    pub secret_name: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The items of a list option: the elements of an array, or the values of a map (Screwdriver's
/// template iterates either). Anything else has no items.
fn items(value: &Value) -> Vec<&Map<String, Value>> {
    let values: Vec<&Value> = match value {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => o.values().collect(),
        _ => Vec::new(),
    };
    values.into_iter().filter_map(Value::as_object).collect()
}

fn simplify(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The field `key` of an item, matched ignoring case, `_` and `-`.
fn field<'a>(item: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let wanted = simplify(key);
    item.iter()
        .find(|(k, _)| simplify(k) == wanted)
        .map(|(_, v)| v)
}

/// A non-empty string field (numbers are written out).
fn text(item: &Map<String, Value>, key: &str) -> Option<String> {
    match field(item, key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn flag(item: &Map<String, Value>, key: &str) -> bool {
    match field(item, key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.trim().eq_ignore_ascii_case("true"),
        _ => false,
    }
}

fn host_path_mount(item: &Map<String, Value>) -> Option<HostPathMount> {
    Some(HostPathMount {
        name: text(item, "name")?,
        mount_path: text(item, "mountPath")?,
        path: text(item, "path")?,
        type_: text(item, "type"),
        read_only: flag(item, "readOnly"),
    })
}

fn secret_env(item: &Map<String, Value>) -> Option<SecretEnv> {
    Some(SecretEnv {
        env: text(item, "secret_env")?,
        secret_name: text(item, "secret_name")?,
        secret_key: text(item, "secret_key")?,
    })
}

fn secret_file(item: &Map<String, Value>) -> Option<SecretFile> {
    Some(SecretFile {
        name: text(item, "name")?,
        mount_path: text(item, "mountPath")?,
        secret_name: text(item, "secretName")?,
        read_only: flag(item, "readOnly"),
    })
}

/// The complete `volumeMounts` items.
pub(crate) fn host_path_mounts(value: &Value) -> Vec<HostPathMount> {
    items(value)
        .into_iter()
        .filter_map(host_path_mount)
        .collect()
}

/// The complete `buildSecrets` items (Screwdriver's "disabled" marker `[{}]` has none).
pub(crate) fn secret_envs(value: &Value) -> Vec<SecretEnv> {
    items(value).into_iter().filter_map(secret_env).collect()
}

/// The complete `buildSecretsFile` items.
pub(crate) fn secret_files(value: &Value) -> Vec<SecretFile> {
    items(value).into_iter().filter_map(secret_file).collect()
}

/// Object keys rewritten to camelCase (`post_start` -> `postStart`), in case the configuration
/// was written, or normalised, in snake_case. Kubernetes field names have no `_`, so keys that
/// are already camelCase are unchanged; values are never touched.
fn camel_keys(value: &Value) -> Value {
    match value {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let mut key = String::with_capacity(k.len());
                    let mut upper = false;
                    for c in k.chars() {
                        if c == '_' {
                            upper = true;
                        } else if upper {
                            key.extend(c.to_uppercase());
                            upper = false;
                        } else {
                            key.push(c);
                        }
                    }
                    (key, camel_keys(v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(camel_keys).collect()),
        other => other.clone(),
    }
}

fn is_unset(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// The build container's `lifecycle` from `lifecycleHooks`, when set and well-formed.
pub(crate) fn lifecycle(value: &Value) -> Option<Lifecycle> {
    if is_unset(value) {
        return None;
    }
    serde_json::from_value(camel_keys(value)).ok()
}

/// Problems in the pod-shaping options that [`build_pod`](super::build_pod) would otherwise
/// pass over silently (an incomplete list item is skipped, malformed lifecycle hooks are
/// dropped). One sentence each, naming the option; empty when all is well. The configuration
/// check is expected to report these at start-up.
pub fn check_options(options: &KubernetesOptions) -> Vec<String> {
    let mut problems = Vec::new();
    check_lists(options, &mut problems);
    check_volume_names(options, &mut problems);
    if secret_envs(&options.build_secrets)
        .iter()
        .any(|s| s.env == super::TOKEN_ENV)
    {
        problems.push(format!(
            "buildSecrets: {} is reserved for the build token; that item would be ignored",
            super::TOKEN_ENV
        ));
    }
    if !is_unset(&options.lifecycle_hooks)
        && let Err(e) = serde_json::from_value::<Lifecycle>(camel_keys(&options.lifecycle_hooks))
    {
        problems.push(format!(
            "lifecycleHooks: not a Kubernetes container lifecycle ({e}); it would be ignored"
        ));
    }
    problems
}

/// List options whose items would be skipped as incomplete.
fn check_lists(options: &KubernetesOptions, problems: &mut Vec<String>) {
    let mut check_list = |option: &str,
                          value: &Value,
                          wanted: &str,
                          complete: &dyn Fn(&Map<String, Value>) -> bool| {
        if !matches!(value, Value::Null | Value::Array(_) | Value::Object(_)) {
            problems.push(format!(
                "{option}: expected a list of {{{wanted}}}, got {value}"
            ));
            return;
        }
        let list: Vec<&Value> = match value {
            Value::Array(a) => a.iter().collect(),
            Value::Object(o) => o.values().collect(),
            _ => Vec::new(),
        };
        for (i, item) in list.into_iter().enumerate() {
            match item.as_object() {
                // `{}` is Screwdriver's way of writing "none".
                Some(o) if o.is_empty() || complete(o) => {}
                _ => problems.push(format!(
                    "{option}[{i}]: needs {{{wanted}}}, got {item}; it would be ignored"
                )),
            }
        }
    };
    check_list(
        "volumeMounts",
        &options.volume_mounts,
        "name, mountPath, path",
        &|o| host_path_mount(o).is_some(),
    );
    check_list(
        "buildSecrets",
        &options.build_secrets,
        "secret_env, secret_name, secret_key",
        &|o| secret_env(o).is_some(),
    );
    check_list(
        "buildSecretsFile",
        &options.build_secrets_file,
        "name, mountPath, secretName",
        &|o| secret_file(o).is_some(),
    );
}

/// Operator volumes whose names collide with the pod's own or each other.
fn check_volume_names(options: &KubernetesOptions, problems: &mut Vec<String>) {
    let mut names: Vec<String> = super::volumes::BUILT_IN_VOLUMES
        .iter()
        .map(|n| n.to_string())
        .collect();
    let operator_volumes = host_path_mounts(&options.volume_mounts)
        .into_iter()
        .map(|m| ("volumeMounts", m.name))
        .chain(
            secret_files(&options.build_secrets_file)
                .into_iter()
                .map(|s| ("buildSecretsFile", s.name)),
        );
    for (option, name) in operator_volumes {
        if names.contains(&name) {
            problems.push(format!(
                "{option}: volume name {name:?} is already used by the build pod"
            ));
        } else {
            names.push(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mounts_accept_both_spellings_and_skip_incomplete_items() {
        let v = json!([
            {"name": "kvm", "mountPath": "/dev/kvm", "path": "/dev/kvm", "type": "File", "readOnly": true},
            {"name": "docker", "mount_path": "/var/run/docker.sock", "path": "/var/run/docker.sock", "read_only": "false"},
            {"name": "half"}
        ]);
        let mounts = host_path_mounts(&v);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].type_.as_deref(), Some("File"));
        assert!(mounts[0].read_only);
        assert_eq!(mounts[1].mount_path, "/var/run/docker.sock");
        assert!(!mounts[1].read_only);
    }

    #[test]
    fn screwdriver_disabled_marker_has_no_items() {
        assert!(secret_envs(&json!([{}])).is_empty());
        assert!(secret_files(&json!({})).is_empty());
        assert!(host_path_mounts(&Value::Null).is_empty());
        assert!(
            check_options(&KubernetesOptions {
                build_secrets: json!([{}]),
                ..Default::default()
            })
            .is_empty()
        );
    }

    #[test]
    fn secrets_read_screwdriver_keys() {
        let envs = secret_envs(
            &json!([{"secret_env": "SSHCA", "secret_name": "sd-secret", "secret_key": "private"}]),
        );
        assert_eq!(
            envs,
            [SecretEnv {
                env: "SSHCA".into(),
                secret_name: "sd-secret".into(),
                secret_key: "private".into()
            }]
        );
        let files = secret_files(
            &json!([{"name": "ca", "mountPath": "/etc/ca", "secretName": "ca-bundle", "readOnly": true}]),
        );
        assert_eq!(files[0].secret_name, "ca-bundle");
    }

    #[test]
    fn lifecycle_hooks_in_either_case() {
        let camel = json!({"preStop": {"exec": {"command": ["sh", "-c", "sleep 5"]}}});
        let snake = json!({"pre_stop": {"exec": {"command": ["sh", "-c", "sleep 5"]}}});
        assert!(lifecycle(&camel).is_some());
        assert_eq!(lifecycle(&camel), lifecycle(&snake));
        assert_eq!(lifecycle(&json!({})), None);
        assert_eq!(
            lifecycle(&json!({"preStop": {"exec": {"command": "not a list"}}})),
            None
        );
    }

    #[test]
    fn check_options_names_every_problem() {
        let options = KubernetesOptions {
            volume_mounts: json!([{"name": "x"}]),
            build_secrets: json!("oops"),
            build_secrets_file: json!([{"name": "f", "mountPath": "/f", "secretName": "s"}]),
            lifecycle_hooks: json!({"preStop": 3}),
            ..Default::default()
        };
        let problems = check_options(&options);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].starts_with("volumeMounts[0]"));
        assert!(problems[1].starts_with("buildSecrets:"));
        assert!(problems[2].starts_with("lifecycleHooks"));
    }

    #[test]
    fn check_options_refuses_reused_volume_names_and_the_token_variable() {
        let options = KubernetesOptions {
            volume_mounts: json!([
                {"name": "workspace", "mountPath": "/w", "path": "/w"},
                {"name": "kvm", "mountPath": "/dev/kvm", "path": "/dev/kvm"}
            ]),
            build_secrets_file: json!([{"name": "kvm", "mountPath": "/k", "secretName": "s"}]),
            build_secrets: json!([{"secret_env": "SD_TOKEN", "secret_name": "s", "secret_key": "k"}]),
            ..Default::default()
        };
        let problems = check_options(&options);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("\"workspace\""));
        assert!(problems[1].starts_with("buildSecretsFile: volume name \"kvm\""));
        assert!(problems[2].contains("SD_TOKEN"));
    }
}
