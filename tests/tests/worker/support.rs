//! Shared set-up of the worker tests.

use std::time::Duration;

use std::collections::BTreeMap;

use bcw_tests::harness::{EventTap, ExecutorSpec, Knobs, Names, Rabbit, eventually, settings};
use bcw_tests::kube_sim::{ClusterConfig, ClusterHandle, KubeSim, SimConfig, Timeline};
use buildcluster_worker::intake::BuildId;
use buildcluster_worker::routing::Router;
use k8s_openapi::api::core::v1::Pod;

/// How long a test waits for something that normally takes well under a second.
pub const SOON: Duration = Duration::from_secs(60);

/// Two clusters as the demo has them: `runc` (no runtime classes) and `kata` (knows `kata`).
pub async fn two_clusters(timeline: Timeline) -> KubeSim {
    KubeSim::start(SimConfig {
        clusters: vec![
            ClusterConfig::new("runc").with_timeline(timeline),
            ClusterConfig::new("kata")
                .with_runtime_classes(["kata"])
                .with_timeline(timeline),
        ],
        ..Default::default()
    })
    .await
    .expect("kube-sim starts")
}

/// A timeline where pods start quickly and then run until deleted.
pub fn running_forever() -> Timeline {
    Timeline {
        run_for: None,
        ..Timeline::fast()
    }
}

/// The two clusters as executors `a` (runc) and `b` (kata) of equal weight.
pub fn even_pair(sim: &KubeSim) -> (ClusterHandle, ClusterHandle, Vec<ExecutorSpec>) {
    let (a, b) = (sim.cluster("runc"), sim.cluster("kata"));
    let executors = vec![
        ExecutorSpec::new("a", &a.url()).weight(50),
        ExecutorSpec::new("b", &b.url()).weight(50),
    ];
    (a, b, executors)
}

/// The demo's executors: runc weight 30, kata weight 70 with `rhel6` excluded.
pub fn weighted_pair(sim: &KubeSim) -> Vec<ExecutorSpec> {
    vec![
        ExecutorSpec::new("runc", &sim.cluster("runc").url()).weight(30),
        ExecutorSpec::new("kata", &sim.cluster("kata").url())
            .weight(70)
            .runtime("kata")
            .exclude("rhel6"),
    ]
}

/// Fresh names, exchanges declared, and an event tap.
pub async fn broker(tag: &str) -> (Rabbit, Names, EventTap) {
    let rabbit = Rabbit::connect().await;
    let names = Names::unique(tag);
    rabbit.declare_exchanges(&names).await;
    let tap = rabbit.tap(&names).await;
    (rabbit, names, tap)
}

/// Waits until `executor`'s breaker has opened (its `cluster.breaker_opened` event).
pub async fn breaker_opened(tap: &EventTap, executor: &str) {
    tap.wait(SOON, &format!("{executor}'s breaker to open"), |evs| {
        evs.iter()
            .any(|e| e.ty == "cluster.breaker_opened" && e.data["executor"] == executor)
    })
    .await;
}

/// Waits until the test's queue holds no message: every delivery was settled.
pub async fn queue_drained(rabbit: &Rabbit, names: &Names) {
    eventually(SOON, "the queue to drain", || async {
        (rabbit.depth(&names.queue).await == Some(0)).then_some(())
    })
    .await;
}

/// The `sdbuild` label of a pod.
pub fn build_of(pod: &Pod) -> u64 {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("sdbuild"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// Pods of a cluster that are not being deleted.
pub fn live_pods(c: &ClusterHandle) -> Vec<Pod> {
    c.pods()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// Pod creates a cluster answered with 2xx, per build.
pub fn creates(c: &ClusterHandle) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for r in c.create_log() {
        *m.entry(r.labels["sdbuild"].parse().unwrap()).or_default() += 1;
    }
    m
}

/// A build id from `from` on whose preference order `first` comes first.
pub fn build_preferring(executors: &[ExecutorSpec], names: &Names, first: &str, from: u64) -> u64 {
    let s = settings(names, executors, &Knobs::default());
    let router = Router::from_settings(&s.executor).unwrap();
    (from..from + 10_000)
        .find(|id| {
            router
                .plan(BuildId(*id), "node:22", None)
                .candidates()
                .first()
                .map(String::as_str)
                == Some(first)
        })
        .expect("some build prefers it")
}
