//! `--compat screwdriver`: the original buildcluster-queue-worker's configuration, unchanged.
//!
//! Owns the rendition of the original `config/default.yaml` (the base layer in this mode), the
//! mapping of its environment variable names (`config/custom-environment-variables.yaml`) onto
//! the tree, the fix-ups that give the original's values their original meaning, and the one list
//! of keys the original layout has and the worker accepts without acting on them. It never reads
//! the process environment itself: the loader hands it the map.
//!
//! Deliberate differences from the original (docs/migration.md):
//! - booleans are real booleans: `"false"` is false everywhere (the original treated
//!   `DOCKER_FEATURE_ENABLED="false"` as enabled and only the string `'true'` as a true
//!   `automountServiceAccountToken`);
//! - `exclusion` (what default.yaml says) and `exclusions` (what the router reads) both apply,
//!   so the shipped `rhel6` exclusion of `k8s` now takes effect for weighted routing;
//! - a value that does not parse (`RABBITMQ_PREFETCH_COUNT=lots`) is an error, not NaN.
//!   `initTimeout: 0` still means 5 minutes, as in the original.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::issue::ConfigIssue;
use super::model::DEFAULT_EXECUTOR_KEY;
use super::normalize::merge;

/// The original `config/default.yaml`, in its own layout and spellings, plus three settings that
/// make the worker behave towards the broker and the API as the original did.
pub(crate) const SCREWDRIVER_DEFAULTS: &str = include_str!("screwdriver_default.yaml");

/// The executor blocks a Screwdriver variable applies to.
const ALL: &[&str] = &["k8s", "k8s-sandbox", "k8s-vm"];
const K8S_AND_SANDBOX: &[&str] = &["k8s", "k8s-sandbox"];
const K8S: &[&str] = &["k8s"];
const SANDBOX: &[&str] = &["k8s-sandbox"];
const VM: &[&str] = &["k8s-vm"];

/// How a Screwdriver variable's value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Taken as a string; the lenient deserializers read numbers, booleans and lists from it.
    Text,
    /// Parsed as JSON (`__format: json` in the original, or JSON.parse in its code).
    Json,
}

/// Where a Screwdriver variable goes.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// One canonical path.
    At(&'static str),
    /// The same path inside each of these executor blocks (`executor.<block>.<path>`).
    Blocks(&'static [&'static str], &'static str),
}

/// One variable of the original's `custom-environment-variables.yaml`.
#[derive(Debug, Clone, Copy)]
struct EnvVar {
    name: &'static str,
    target: Target,
    kind: Kind,
}

const fn at(name: &'static str, path: &'static str) -> EnvVar {
    EnvVar {
        name,
        target: Target::At(path),
        kind: Kind::Text,
    }
}

const fn blocks(name: &'static str, blocks: &'static [&'static str], path: &'static str) -> EnvVar {
    EnvVar {
        name,
        target: Target::Blocks(blocks, path),
        kind: Kind::Text,
    }
}

const fn json(mut v: EnvVar) -> EnvVar {
    v.kind = Kind::Json;
    v
}

/// The mapping, in the original's order (rabbitmq, httpd and ecosystem, then the executors).
const ENV_VARS: &[EnvVar] = &[
    at("RABBITMQ_PROTOCOL", "rabbitmq.protocol"),
    at("RABBITMQ_USERNAME", "rabbitmq.username"),
    at("RABBITMQ_PASSWORD", "rabbitmq.password"),
    at("RABBITMQ_HOST", "rabbitmq.host"),
    at("RABBITMQ_PORT", "rabbitmq.port"),
    at("RABBITMQ_VIRTUAL_HOST", "rabbitmq.vhost"),
    json(at("RABBITMQ_CONNECT_OPTIONS", "rabbitmq.connect_options")),
    at("RABBITMQ_QUEUE", "rabbitmq.queue"),
    at("RABBITMQ_PREFETCH_COUNT", "rabbitmq.prefetch_count"),
    at(
        "RABBITMQ_MSG_REPROCESS_LIMIT",
        "rabbitmq.message_reprocess_limit",
    ),
    at("RABBITMQ_RETRYQUEUE", "rabbitmq.retry_queue"),
    at(
        "RABBITMQ_RETRYQUEUE_ENABLED",
        "rabbitmq.retry_queue_enabled",
    ),
    at("RABBITMQ_EXCHANGE", "rabbitmq.exchange"),
    at("RABBITMQ_BUILD_INIT_TIMEOUT", "rabbitmq.init_timeout"),
    at("PORT", "httpd.port"),
    at("HOST", "httpd.host"),
    at("URI", "httpd.uri"),
    at("ECOSYSTEM_UI", "ecosystem.ui"),
    at("ECOSYSTEM_API", "ecosystem.api"),
    at("ECOSYSTEM_STORE", "ecosystem.store"),
    at("ECOSYSTEM_PUSHGATEWAY_URL", "ecosystem.pushgateway_url"),
    at("CACHE_STRATEGY", "ecosystem.cache.strategy"),
    at("CACHE_PATH", "ecosystem.cache.path"),
    at("CACHE_COMPRESS", "ecosystem.cache.compress"),
    at("CACHE_MD5CHECK", "ecosystem.cache.md5check"),
    at("CACHE_MAX_SIZE_MB", "ecosystem.cache.max_size_mb"),
    at("CACHE_MAX_GO_THREADS", "ecosystem.cache.max_go_threads"),
    at("EXECUTOR_PLUGIN", "executor.plugin"),
    at("WEIGHT_K8S", "executor.k8s.weightage"),
    // `__value: json` in the original (a typo for `__format`): a JSON list or a plain string.
    at("K8S_EXECUTOR_EXCLUSION", "executor.k8s.exclusions"),
    at("WEIGHT_K8S_VM", "executor.k8s-vm.weightage"),
    blocks("K8S_HOST", ALL, "options.kubernetes.host"),
    blocks(
        "K8S_SECURITYCONTEXT_PRIVILEGED",
        ALL,
        "options.kubernetes.privileged",
    ),
    blocks("K8S_TOKEN", ALL, "options.kubernetes.token"),
    blocks(
        "K8S_JOBS_NAMESPACE",
        ALL,
        "options.kubernetes.jobs_namespace",
    ),
    blocks(
        "K8S_SERVICE_ACCOUNT_NAME",
        K8S_AND_SANDBOX,
        "options.kubernetes.service_account",
    ),
    blocks("K8S_POD_DNS_POLICY", K8S, "options.kubernetes.dns_policy"),
    blocks(
        "K8S_POD_IMAGE_PULL_POLICY",
        K8S,
        "options.kubernetes.image_pull_policy",
    ),
    blocks(
        "K8S_AUTOMOUNT_SERVICE_ACCOUNT_TOKEN",
        K8S_AND_SANDBOX,
        "options.kubernetes.automount_service_account_token",
    ),
    blocks(
        "DOCKER_FEATURE_ENABLED",
        K8S_AND_SANDBOX,
        "options.kubernetes.docker_feature_enabled",
    ),
    blocks(
        "K8S_CPU_MICRO",
        ALL,
        "options.kubernetes.resources.cpu.micro",
    ),
    blocks("K8S_CPU_LOW", ALL, "options.kubernetes.resources.cpu.low"),
    blocks("K8S_CPU_HIGH", ALL, "options.kubernetes.resources.cpu.high"),
    blocks(
        "K8S_CPU_TURBO",
        ALL,
        "options.kubernetes.resources.cpu.turbo",
    ),
    blocks("K8S_CPU_MAX", ALL, "options.kubernetes.resources.cpu.max"),
    blocks(
        "K8S_MEMORY_MICRO",
        ALL,
        "options.kubernetes.resources.memory.micro",
    ),
    blocks(
        "K8S_MEMORY_LOW",
        ALL,
        "options.kubernetes.resources.memory.low",
    ),
    blocks(
        "K8S_MEMORY_HIGH",
        ALL,
        "options.kubernetes.resources.memory.high",
    ),
    blocks(
        "K8S_MEMORY_TURBO",
        ALL,
        "options.kubernetes.resources.memory.turbo",
    ),
    blocks(
        "K8S_MEMORY_MAX",
        ALL,
        "options.kubernetes.resources.memory.max",
    ),
    blocks(
        "K8S_BUILD_TIMEOUT",
        K8S_AND_SANDBOX,
        "options.kubernetes.build_timeout",
    ),
    blocks(
        "K8S_MAX_BUILD_TIMEOUT",
        K8S_AND_SANDBOX,
        "options.kubernetes.max_build_timeout",
    ),
    blocks(
        "TERMINATION_GRACE_PERIOD_SECONDS",
        K8S_AND_SANDBOX,
        "options.kubernetes.termination_grace_period_seconds",
    ),
    json(blocks(
        "K8S_LIFECYCLE_HOOKS",
        K8S_AND_SANDBOX,
        "options.kubernetes.lifecycle_hooks",
    )),
    json(blocks(
        "K8S_POD_LABELS",
        K8S_AND_SANDBOX,
        "options.kubernetes.pod_labels",
    )),
    json(blocks(
        "K8S_NODE_SELECTORS",
        K8S,
        "options.kubernetes.node_selectors",
    )),
    json(blocks(
        "K8S_PREFERRED_NODE_SELECTORS",
        K8S,
        "options.kubernetes.preferred_node_selectors",
    )),
    json(blocks(
        "K8S_SANDBOX_NODE_SELECTORS",
        SANDBOX,
        "options.kubernetes.node_selectors",
    )),
    json(blocks(
        "K8S_SANDBOX_PREFERRED_NODE_SELECTORS",
        SANDBOX,
        "options.kubernetes.preferred_node_selectors",
    )),
    json(blocks(
        "K8S_ANNOTATIONS",
        K8S_AND_SANDBOX,
        "options.kubernetes.annotations",
    )),
    blocks(
        "K8S_RUNTIME_CLASS",
        K8S_AND_SANDBOX,
        "options.kubernetes.runtime_class",
    ),
    blocks(
        "K8S_IMAGE_PULL_SECRET_NAME",
        K8S_AND_SANDBOX,
        "options.kubernetes.image_pull_secret_name",
    ),
    json(blocks(
        "K8S_VOLUME_MOUNTS",
        K8S_AND_SANDBOX,
        "options.kubernetes.volume_mounts",
    )),
    blocks(
        "K8S_POD_STATUSQUERY_DELAY",
        K8S_AND_SANDBOX,
        "options.kubernetes.pod_status_query_delay",
    ),
    json(blocks(
        "K8S_SECRETS",
        K8S,
        "options.kubernetes.build_secrets",
    )),
    json(blocks(
        "K8S_SECRETS_FILE",
        K8S,
        "options.kubernetes.build_secrets_file",
    )),
    blocks("K8S_BASE_IMAGE", VM, "options.kubernetes.base_image"),
    blocks(
        "K8S_DISK_LABEL",
        VM,
        "options.kubernetes.resources.disk.space",
    ),
    blocks(
        "K8S_DISK_SPEED_LABEL",
        VM,
        "options.kubernetes.resources.disk.speed",
    ),
    blocks(
        "K8S_VM_BUILD_TIMEOUT",
        VM,
        "options.kubernetes.build_timeout",
    ),
    blocks(
        "K8S_VM_MAX_BUILD_TIMEOUT",
        VM,
        "options.kubernetes.max_build_timeout",
    ),
    json(blocks(
        "K8S_VM_NODE_SELECTORS",
        VM,
        "options.kubernetes.node_selectors",
    )),
    json(blocks(
        "K8S_VM_PREFERRED_NODE_SELECTORS",
        VM,
        "options.kubernetes.preferred_node_selectors",
    )),
    blocks("LAUNCH_IMAGE", ALL, "options.launch_image"),
    blocks("LAUNCH_VERSION", ALL, "options.launch_version"),
    blocks("EXECUTOR_PREFIX", ALL, "options.prefix"),
    blocks("CIRCUIT_TIMEOUT", ALL, "options.fusebox.breaker.timeout"),
    blocks(
        "REQUEST_RETRYDELAY",
        ALL,
        "options.requestretry.retry_delay",
    ),
    blocks(
        "REQUEST_MAXATTEMPTS",
        ALL,
        "options.requestretry.max_attempts",
    ),
    blocks("SD_HAB_ENABLED", K8S_AND_SANDBOX, "options.sd_hab_enabled"),
];

/// A key (or variable) of the original layout that the worker accepts and does not act on.
#[derive(Debug, Clone, Copy)]
pub struct IgnoredKey {
    /// The key as the original's files spell it.
    pub key: &'static str,
    /// The original's environment variable(s) for it.
    pub env: &'static str,
    /// Why nothing is lost.
    pub reason: &'static str,
    /// The canonical path the loader looks it up by (`""` when the key is a field of the model
    /// that is kept for compatibility, not dropped). A path the model has no field for is a key
    /// the loader accepts and drops (`config::schema` adds it to the key tree).
    pub(crate) canonical: &'static str,
}

/// Every key of the original layout that the worker accepts without acting on it: the one list.
pub const IGNORED: &[IgnoredKey] = &[
    IgnoredKey {
        key: "rabbitmq.queueOptions",
        env: "RABBITMQ_QUEUE_OPTIONS",
        reason: "queue arguments are the worker's own (rabbitmq.queueType, the retry and dead-letter \
                 queues); with declareTopology false the existing queue is used as it is",
        canonical: "rabbitmq.queue_options",
    },
    IgnoredKey {
        key: "executor.jenkins (a block whose pluginName, or name, is jenkins)",
        env: "WEIGHT_JENKINS, EXECUTOR_JENKINS_*",
        reason: "the Jenkins executor is not part of the worker; the original skipped it as well \
                 when its module was not installed",
        canonical: "executor.jenkins",
    },
    IgnoredKey {
        key: "rabbitmq.connectOptions (every option but heartbeatIntervalInSeconds)",
        env: "RABBITMQ_CONNECT_OPTIONS",
        reason: "amqp-connection-manager options; reconnecting is the worker's own",
        canonical: "",
    },
    IgnoredKey {
        key: "rabbitmq.initTimeout",
        env: "RABBITMQ_BUILD_INIT_TIMEOUT",
        reason: "the original's one-off timer (a 'delayed' message and a verify after 5 minutes) \
                 is replaced by the pod watch, which reports pending, failing and stuck pods as \
                 they happen (lifecycle, pendingTimeout)",
        canonical: "",
    },
    IgnoredKey {
        key: "rabbitmq.stopRechecks",
        env: "",
        reason: "a stop is recorded with the launch protocol's sequencer and deletes the build's \
                 pods once no create permitted before it can land (docs/protocol.md); there is \
                 nothing left to re-check",
        canonical: "rabbitmq.stop_rechecks",
    },
    IgnoredKey {
        key: "httpd.uri",
        env: "URI",
        reason: "the worker's public address was only used by the original's hapi server",
        canonical: "",
    },
    IgnoredKey {
        key: "executor.*.options.kubernetes.podStatusQueryDelay",
        env: "K8S_POD_STATUSQUERY_DELAY",
        reason: "unused by executor-k8s since its move to got; pods are watched instead",
        canonical: "",
    },
    IgnoredKey {
        key: "executor.*.options.kubernetes.baseImage",
        env: "K8S_BASE_IMAGE",
        reason: "executor-k8s-vm's VM image; k8s-vm blocks are served by the pod launcher",
        canonical: "",
    },
];

/// The notice for a dropped key of the original layout.
pub(crate) fn ignored_reason(canonical: &str) -> String {
    let reason = IGNORED
        .iter()
        .find(|k| !k.canonical.is_empty() && k.canonical == canonical)
        .map_or("not used by this worker", |k| k.reason);
    format!("accepted for compatibility and ignored: {reason}")
}

/// The tree the original's environment variables describe (empty values count as unset, as with
/// node-config), with an issue for each JSON-valued variable that is not JSON and a notice for
/// each variable that is accepted and ignored.
pub(crate) fn env_layer(
    env: &BTreeMap<String, String>,
) -> (Value, Vec<ConfigIssue>, Vec<ConfigIssue>) {
    let mut tree = Value::Object(Map::new());
    let mut issues = Vec::new();
    let mut notices = Vec::new();
    for var in ENV_VARS {
        let Some(raw) = env.get(var.name).filter(|v| !v.is_empty()) else {
            continue;
        };
        let value = match var.kind {
            Kind::Text => Value::String(raw.clone()),
            Kind::Json => match serde_json::from_str::<Value>(raw) {
                Ok(v) => v,
                Err(e) => {
                    // Never quote the value: it may hold a secret (K8S_SECRETS names, tokens).
                    issues.push(ConfigIssue::new(var.name, format!("not valid JSON ({e})")));
                    continue;
                }
            },
        };
        match var.target {
            Target::At(path) => set_path(&mut tree, path, value),
            Target::Blocks(names, path) => {
                for name in names {
                    set_path(&mut tree, &format!("executor.{name}.{path}"), value.clone());
                }
            }
        }
    }
    for (name, value) in env {
        let ignored = name == "RABBITMQ_QUEUE_OPTIONS"
            || name == "WEIGHT_JENKINS"
            || name.starts_with("EXECUTOR_JENKINS_");
        if ignored && !value.is_empty() {
            let canonical = if name == "RABBITMQ_QUEUE_OPTIONS" {
                "rabbitmq.queue_options"
            } else {
                "executor.jenkins"
            };
            notices.push(ConfigIssue::new(name.clone(), ignored_reason(canonical)));
        }
    }
    (tree, issues, notices)
}

/// Sets a dotted canonical path (segments never contain dots: executor names of the original
/// are `k8s`, `k8s-sandbox`, `k8s-vm`).
fn set_path(tree: &mut Value, path: &str, value: Value) {
    let mut patch = value;
    for segment in path.rsplit('.') {
        let mut m = Map::new();
        m.insert(segment.to_string(), patch);
        patch = Value::Object(m);
    }
    merge(tree, patch);
}

/// The built-in layer of this mode: the original defaults plus the worker's own compat choices.
pub(crate) fn defaults_layer() -> Result<Value, String> {
    super::load::read_yaml_str(SCREWDRIVER_DEFAULTS)
}

/// Gives the original's values their original meaning, on the merged canonical tree:
/// a cluster host without a scheme is `https://<host>` (executor-k8s always called
/// `https://<host>/api/v1/...`), and `initTimeout: 0` means the default of 5 minutes.
pub(crate) fn fix_up(tree: &mut Value) {
    if let Some(executors) = tree.get_mut("executor").and_then(Value::as_object_mut) {
        for (name, block) in executors.iter_mut() {
            if name == DEFAULT_EXECUTOR_KEY {
                continue;
            }
            let host = block.pointer_mut("/options/kubernetes/host").filter(|h| {
                h.as_str()
                    .is_some_and(|s| !s.is_empty() && !s.contains("://"))
            });
            if let Some(host) = host {
                *host = Value::String(format!("https://{}", host.as_str().unwrap_or_default()));
            }
        }
    }
    if let Some(init) = tree.pointer_mut("/rabbitmq/init_timeout") {
        let zero = match &*init {
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::String(s) => s.trim().parse::<f64>().ok() == Some(0.0),
            _ => false,
        };
        if zero {
            *init = Value::from(5);
        }
    }
}

/// The names of the original's environment variables that the worker reads in this mode.
pub fn screwdriver_env_vars() -> impl Iterator<Item = &'static str> {
    ENV_VARS.iter().map(|v| v.name)
}

#[cfg(test)]
#[path = "compat_tests.rs"]
mod tests;
