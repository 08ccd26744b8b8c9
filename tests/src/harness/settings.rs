//! Worker configurations for tests: real settings with short timings, pointing at kube-sim.

use std::collections::BTreeMap;
use std::time::Duration;

use buildcluster_worker::config::{self, Compat, LoadOptions, Settings};
use serde_json::{Value, json};

use super::rabbit::{AMQP_URL, Names};

/// One executor of a test configuration.
#[derive(Debug, Clone)]
pub struct ExecutorSpec {
    /// Executor name.
    pub name: String,
    /// Cluster URL (a kube-sim cluster).
    pub url: String,
    /// Relative weight.
    pub weight: i64,
    /// `runtimeClass` (empty: the cluster default).
    pub runtime_class: String,
    /// Exclusion regexes.
    pub exclusions: Vec<String>,
}

impl ExecutorSpec {
    /// An executor with weight 1.
    pub fn new(name: &str, url: &str) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            weight: 1,
            runtime_class: String::new(),
            exclusions: Vec::new(),
        }
    }

    /// Sets the weight.
    pub fn weight(mut self, w: i64) -> Self {
        self.weight = w;
        self
    }

    /// Sets the runtime class.
    pub fn runtime(mut self, rc: &str) -> Self {
        self.runtime_class = rc.into();
        self
    }

    /// Adds an exclusion.
    pub fn exclude(mut self, re: &str) -> Self {
        self.exclusions.push(re.into());
        self
    }
}

/// Timing knobs of a test worker.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// Consumer prefetch.
    pub prefetch: u16,
    /// Breaker call timeout (ms).
    pub breaker_timeout_ms: u64,
    /// Breaker consecutive failures.
    pub max_failures: u32,
    /// Breaker reset (ms).
    pub reset_timeout_ms: u64,
    /// Call retry base (ms).
    pub retry_delay_ms: u64,
    /// Call attempts.
    pub max_attempts: u32,
    /// Message retry delays (seconds).
    pub retry_delays: Vec<f64>,
    /// Message attempts.
    pub reprocess_limit: u32,
    /// `maxWait` (seconds).
    pub max_wait_s: u64,
    /// `createLandsWithin` (seconds): kube-sim carries a create out at once unless a fault
    /// holds it.
    pub create_lands_within_s: u64,
    /// Reporter on.
    pub lifecycle: bool,
    /// Queue type.
    pub queue_type: &'static str,
    /// Anything else, merged on top (camelCase JSON).
    pub extra: Value,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            prefetch: 20,
            breaker_timeout_ms: 2000,
            max_failures: 5,
            reset_timeout_ms: 1000,
            retry_delay_ms: 50,
            max_attempts: 3,
            retry_delays: vec![1.0, 2.0],
            reprocess_limit: 5,
            max_wait_s: 120,
            create_lands_within_s: 1,
            lifecycle: false,
            queue_type: "quorum",
            extra: json!({}),
        }
    }
}

/// The configuration of a test worker as the JSON (= YAML) document a real deployment would
/// write.
pub fn settings_json(names: &Names, executors: &[ExecutorSpec], knobs: &Knobs) -> Value {
    let mut exec = serde_json::Map::new();
    for e in executors {
        exec.insert(
            e.name.clone(),
            json!({
                "weightage": e.weight,
                "exclusions": e.exclusions,
                "options": {
                    "kubernetes": {
                        "host": e.url,
                        "jobsNamespace": "default",
                        "runtimeClass": e.runtime_class,
                        "qps": 5000, "burst": 5000,
                        "pendingTimeout": 600, "imagePullGracePeriod": 1, "podTTL": 600,
                        "createLandsWithin": knobs.create_lands_within_s,
                    },
                    "fusebox": {"breaker": {"timeout": knobs.breaker_timeout_ms, "maxFailures": knobs.max_failures,
                                            "resetTimeout": knobs.reset_timeout_ms}},
                    "requestretry": {"retryDelay": knobs.retry_delay_ms, "maxAttempts": knobs.max_attempts},
                }
            }),
        );
    }
    if let Some(first) = executors.first() {
        exec.insert("plugin".into(), json!(first.name));
    }
    let delays: Vec<String> = knobs
        .retry_delays
        .iter()
        .map(|s| format!("{}ms", (s * 1000.0) as u64))
        .collect();
    let mut doc = json!({
        "rabbitmq": {
            "url": AMQP_URL,
            "exchange": names.exchange,
            "queue": names.queue,
            "queueType": knobs.queue_type,
            "prefetchCount": knobs.prefetch,
            "messageReprocessLimit": knobs.reprocess_limit,
            "retryDelays": delays,
            "maxWait": format!("{}s", knobs.max_wait_s),
        },
        "events": {"exchange": names.events},
        "httpd": {"host": "127.0.0.1", "port": 0},
        "executor": Value::Object(exec),
        "lifecycle": {"enabled": knobs.lifecycle, "leaseDuration": 3, "leaseRenewInterval": 1, "resyncInterval": 1},
        "shutdown": {"drainTimeout": 10},
    });
    merge_json(&mut doc, &knobs.extra);
    doc
}

/// Loads the test configuration through the real loader (so it is validated as in production).
pub fn settings(names: &Names, executors: &[ExecutorSpec], knobs: &Knobs) -> Settings {
    let doc = settings_json(names, executors, knobs);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).expect("write config");
    match config::load(&LoadOptions {
        path: Some(path),
        env: BTreeMap::new(),
        compat: Compat::Native,
    }) {
        Ok(s) => s,
        Err(e) => panic!("test configuration is invalid:\n{e}"),
    }
}

/// Merges `from` into `into` (objects key by key, anything else replaced).
pub fn merge_json(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge_json(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// How long tests wait for things that should take well under a second.
pub const SOON: Duration = Duration::from_secs(30);
