//! Build annotations: the `screwdriver.cd/<key>` (or `beta.screwdriver.cd/<key>`) map of a
//! message, and the typed reading of the keys the worker acts on.
//!
//! Only the keys of Screwdriver's executor-base allow-list are ever interpreted; everything else
//! in a message's annotations is ignored unless the operator lists it in
//! `intake.podAnnotationAllowList`.

use std::collections::BTreeMap;

use serde_json::Value;

/// The annotation keys Screwdriver's executors interpret (executor-base allow-list plus the
/// buildkit keys of `^11.1`).
pub const INTERPRETED_KEYS: &[&str] = &[
    "cpu",
    "ram",
    "disk",
    "diskSpeed",
    "timeout",
    "executor",
    "buildPeriodically",
    "repoManifest",
    "dockerEnabled",
    "dockerCpu",
    "dockerRam",
    "nodeLabel",
    "terminationGracePeriodSeconds",
];

/// The annotations of one build, as received.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Annotations(BTreeMap<String, Value>);

impl Annotations {
    /// Wraps a raw annotation map.
    pub fn new(raw: BTreeMap<String, Value>) -> Self {
        Self(raw)
    }

    /// The raw map.
    pub fn raw(&self) -> &BTreeMap<String, Value> {
        &self.0
    }

    /// The value of `screwdriver.cd/<key>`, or else `beta.screwdriver.cd/<key>`.
    pub fn screwdriver(&self, key: &str) -> Option<&Value> {
        self.0
            .get(&format!("screwdriver.cd/{key}"))
            .or_else(|| self.0.get(&format!("beta.screwdriver.cd/{key}")))
    }

    /// The executor named by `screwdriver.cd/executor`, when it is a non-empty string.
    pub fn executor(&self) -> Option<&str> {
        match self.screwdriver("executor") {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim()),
            _ => None,
        }
    }

    /// The typed reading of the resource-related keys.
    pub fn resources(&self) -> ResourceAnnotations {
        ResourceAnnotations {
            cpu: self.screwdriver("cpu").and_then(Tier::parse),
            ram: self.screwdriver("ram").and_then(Tier::parse),
            disk: self
                .screwdriver("disk")
                .and_then(Value::as_str)
                .map(|s| s.trim().to_ascii_uppercase())
                .filter(|s| matches!(s.as_str(), "MICRO" | "LOW" | "HIGH" | "TURBO")),
            disk_speed: self
                .screwdriver("diskSpeed")
                .and_then(Value::as_str)
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty()),
            timeout_minutes: self.screwdriver("timeout").and_then(positive_number),
            termination_grace_period_seconds: self
                .screwdriver("terminationGracePeriodSeconds")
                .and_then(positive_number),
            docker_enabled: self.screwdriver("dockerEnabled").is_some_and(is_true),
            docker_cpu: self.screwdriver("dockerCpu").and_then(Tier::parse),
            docker_ram: self.screwdriver("dockerRam").and_then(Tier::parse),
        }
    }
}

/// The resource-related annotations of a build, typed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceAnnotations {
    /// `cpu`: a tier or a number of cores.
    pub cpu: Option<Tier>,
    /// `ram`: a tier or a number of GiB.
    pub ram: Option<Tier>,
    /// `disk`: MICRO/LOW/HIGH/TURBO (a label only).
    pub disk: Option<String>,
    /// `diskSpeed`, lowercased (a node selector when configured).
    pub disk_speed: Option<String>,
    /// `timeout` in minutes.
    pub timeout_minutes: Option<u64>,
    /// `terminationGracePeriodSeconds` (may only raise the configured value).
    pub termination_grace_period_seconds: Option<u64>,
    /// `dockerEnabled` (a boolean `true`, or the string `"true"`).
    pub docker_enabled: bool,
    /// `dockerCpu`.
    pub docker_cpu: Option<Tier>,
    /// `dockerRam`.
    pub docker_ram: Option<Tier>,
}

/// A resource size: a named tier or a number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tier {
    /// MICRO.
    Micro,
    /// LOW (the default).
    Low,
    /// HIGH.
    High,
    /// TURBO.
    Turbo,
    /// MAX.
    Max,
    /// A number of cores or GiB (capped at the tier table's `max`).
    Amount(f64),
}

impl Tier {
    /// Reads a tier name (any case) or a positive number (also as a numeric string).
    /// Anything else is `None`, which means the default tier.
    pub fn parse(v: &Value) -> Option<Tier> {
        match v {
            Value::Number(n) => n
                .as_f64()
                .filter(|f| f.is_finite() && *f > 0.0)
                .map(Tier::Amount),
            Value::String(s) => match s.trim().to_ascii_uppercase().as_str() {
                "MICRO" => Some(Tier::Micro),
                "LOW" => Some(Tier::Low),
                "HIGH" => Some(Tier::High),
                "TURBO" => Some(Tier::Turbo),
                "MAX" => Some(Tier::Max),
                other => other
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .map(Tier::Amount),
            },
            _ => None,
        }
    }
}

fn positive_number(v: &Value) -> Option<u64> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (f.is_finite() && (1.0..1e12).contains(&f)).then_some(f as u64)
}

fn is_true(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => s.trim().eq_ignore_ascii_case("true"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ann(v: Value) -> Annotations {
        Annotations::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn beta_prefix_is_read_when_the_plain_key_is_absent() {
        let a = ann(
            json!({"beta.screwdriver.cd/executor": "k8s-vm", "beta.screwdriver.cd/cpu": "high"}),
        );
        assert_eq!(a.executor(), Some("k8s-vm"));
        assert_eq!(a.resources().cpu, Some(Tier::High));
        let a = ann(
            json!({"screwdriver.cd/executor": "k8s", "beta.screwdriver.cd/executor": "k8s-vm"}),
        );
        assert_eq!(a.executor(), Some("k8s"));
    }

    #[test]
    fn tiers_numbers_and_junk() {
        assert_eq!(Tier::parse(&json!(8)), Some(Tier::Amount(8.0)));
        assert_eq!(Tier::parse(&json!("4")), Some(Tier::Amount(4.0)));
        assert_eq!(Tier::parse(&json!("Turbo")), Some(Tier::Turbo));
        assert_eq!(Tier::parse(&json!(-3)), None);
        assert_eq!(Tier::parse(&json!("huge")), None);
        assert_eq!(Tier::parse(&json!({"a": 1})), None);
    }

    #[test]
    fn docker_enabled_accepts_boolean_and_string_true_only() {
        assert!(
            ann(json!({"screwdriver.cd/dockerEnabled": true}))
                .resources()
                .docker_enabled
        );
        assert!(
            ann(json!({"screwdriver.cd/dockerEnabled": "true"}))
                .resources()
                .docker_enabled
        );
        assert!(
            !ann(json!({"screwdriver.cd/dockerEnabled": "false"}))
                .resources()
                .docker_enabled
        );
        assert!(
            !ann(json!({"screwdriver.cd/dockerEnabled": 1}))
                .resources()
                .docker_enabled
        );
    }

    #[test]
    fn timeout_must_be_a_positive_number() {
        assert_eq!(
            ann(json!({"screwdriver.cd/timeout": 60}))
                .resources()
                .timeout_minutes,
            Some(60)
        );
        assert_eq!(
            ann(json!({"screwdriver.cd/timeout": "45"}))
                .resources()
                .timeout_minutes,
            Some(45)
        );
        assert_eq!(
            ann(json!({"screwdriver.cd/timeout": -5}))
                .resources()
                .timeout_minutes,
            None
        );
        assert_eq!(
            ann(json!({"screwdriver.cd/timeout": "soon"}))
                .resources()
                .timeout_minutes,
            None
        );
    }
}
