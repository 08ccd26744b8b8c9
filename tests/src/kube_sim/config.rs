//! Configuration of a simulated API server: its clusters and their pod timelines.
//!
//! Owns the plain data that says how many clusters run, on which ports, which runtime classes
//! they know and how fast pods move. It never starts anything and never touches the network.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything [`super::KubeSim::start`] needs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// The clusters to serve, one loopback port each.
    pub clusters: Vec<ClusterConfig>,
    /// Port of the control API; 0 picks any free port.
    #[serde(default)]
    pub control_port: u16,
    /// Where the kubeconfig files go; `None` = a temporary directory kept alive by the sim.
    #[serde(default)]
    pub kubeconfig_dir: Option<PathBuf>,
}

/// One simulated cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster name (kubeconfig cluster, context and file name).
    pub name: String,
    /// Port of its API; 0 picks any free port.
    #[serde(default)]
    pub port: u16,
    /// RuntimeClass objects that exist in the cluster; a pod naming another one is rejected.
    #[serde(default)]
    pub runtime_classes: Vec<String>,
    /// How fast pods move through their phases.
    #[serde(default)]
    pub timeline: Timeline,
    /// Namespaces that exist; `None` = every namespace exists.
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    /// Watch events kept per resource for resuming watches; older ones answer 410 Expired.
    #[serde(default = "default_history_limit")]
    pub history_limit: usize,
    /// Interval of BOOKMARK events on watches that asked for them.
    #[serde(default = "default_bookmark_interval", with = "ms")]
    pub bookmark_interval: Duration,
}

fn default_history_limit() -> usize {
    10_000
}

fn default_bookmark_interval() -> Duration {
    Duration::from_secs(60)
}

impl ClusterConfig {
    /// A cluster with the given name, any free port, no runtime classes and the default
    /// timeline.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            port: 0,
            runtime_classes: Vec::new(),
            timeline: Timeline::default(),
            namespaces: None,
            history_limit: default_history_limit(),
            bookmark_interval: default_bookmark_interval(),
        }
    }

    /// Adds RuntimeClasses that exist in this cluster.
    #[must_use]
    pub fn with_runtime_classes<I, S>(mut self, classes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.runtime_classes
            .extend(classes.into_iter().map(Into::into));
        self
    }

    /// Replaces the pod timeline.
    #[must_use]
    pub fn with_timeline(mut self, timeline: Timeline) -> Self {
        self.timeline = timeline;
        self
    }
}

/// How long each step of a pod's life takes in a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeline {
    /// Creation to scheduled (spec.nodeName set, PodScheduled=True).
    #[serde(rename = "schedule_after_ms", with = "ms")]
    pub schedule_after: Duration,
    /// Scheduled to the build container running; the init containers run in between.
    #[serde(rename = "start_after_ms", with = "ms")]
    pub start_after: Duration,
    /// How long the build container runs; `None` = until the pod is deleted.
    #[serde(rename = "run_for_ms", with = "ms_opt", default)]
    pub run_for: Option<Duration>,
    /// How long the kubelet needs to stop a running pod on graceful deletion (the pod goes
    /// away after the shorter of this and its grace period).
    #[serde(rename = "terminate_after_ms", with = "ms")]
    pub terminate_after: Duration,
    /// Multiplies `activeDeadlineSeconds`; 1.0 = real seconds.
    pub deadline_scale: f64,
}

impl Default for Timeline {
    fn default() -> Self {
        Self {
            schedule_after: Duration::from_millis(50),
            start_after: Duration::from_millis(200),
            run_for: Some(Duration::from_secs(1)),
            terminate_after: Duration::from_millis(200),
            deadline_scale: 1.0,
        }
    }
}

impl Timeline {
    /// A quick timeline for tests: a pod runs within tens of milliseconds.
    pub fn fast() -> Self {
        Self {
            schedule_after: Duration::from_millis(10),
            start_after: Duration::from_millis(30),
            run_for: Some(Duration::from_millis(100)),
            terminate_after: Duration::from_millis(30),
            deadline_scale: 1.0,
        }
    }

    /// The same timeline with the build container running for `run_for` (`None` = forever).
    #[must_use]
    pub fn running_for(mut self, run_for: Option<Duration>) -> Self {
        self.run_for = run_for;
        self
    }
}

/// Serde helper: a [`Duration`] as integer milliseconds.
pub(crate) mod ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as milliseconds.
    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Deserializes from milliseconds.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Serde helper: an optional [`Duration`] as integer milliseconds or null.
pub(crate) mod ms_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as milliseconds or null.
    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    /// Deserializes from milliseconds or null.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_round_trips_as_milliseconds() {
        let t = Timeline::fast().running_for(None);
        let v = serde_json::to_value(t).unwrap();
        assert_eq!(v["schedule_after_ms"], 10);
        assert!(v["run_for_ms"].is_null());
        let back: Timeline = serde_json::from_value(v).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn cluster_config_defaults_fill_missing_keys() {
        let c: ClusterConfig = serde_json::from_str(r#"{"name":"a"}"#).unwrap();
        assert_eq!(c.history_limit, 10_000);
        assert_eq!(c.timeline, Timeline::default());
        assert!(serde_json::from_str::<ClusterConfig>(r#"{"name":"a","typo":1}"#).is_err());
    }
}
