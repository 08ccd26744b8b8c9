//! The original's message shapes with the worker's own topology (`declareTopology: true`):
//! string weights, the `beta.` annotation prefix, PR builds, headers without `x-death`, stop
//! with and without a token, verify on the main queue, and `clear`.

use std::collections::BTreeMap;
use std::path::Path;

use bcw_tests::harness::{ExecutorSpec, FakeApi, InProcessWorker, StartMsg, eventually, settings};
use bcw_tests::kube_sim::{ClusterConfig, KubeSim, Script, ScriptRule, SimConfig};
use k8s_openapi::api::core::v1::Pod;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::json;

use super::{assert_put_with_token, failures, header, knobs_with};
use crate::support::{SOON, broker, live_pods, queue_drained, running_forever};

/// Clusters `a` and `b`, pods running until deleted; `sim/invalid-image` never starts.
async fn clusters() -> KubeSim {
    let sim = KubeSim::start(SimConfig {
        clusters: vec![
            ClusterConfig::new("a").with_timeline(running_forever()),
            ClusterConfig::new("b").with_timeline(running_forever()),
        ],
        ..Default::default()
    })
    .await
    .expect("kube-sim starts");
    for c in sim.clusters() {
        c.add_script(ScriptRule::new("^sim/invalid-image", Script::InvalidImageName).unwrap());
    }
    sim
}

/// Executors `a` (weight `"30"`, a string as `WEIGHT_K8S` gives it) and `b` (weight 0: only
/// reachable by annotation).
fn executors(sim: &KubeSim) -> Vec<ExecutorSpec> {
    vec![
        ExecutorSpec::new("a", &sim.cluster("a").url()),
        ExecutorSpec::new("b", &sim.cluster("b").url()).weight(0),
    ]
}

fn string_weight() -> serde_json::Value {
    json!({"executor": {"a": {"weightage": "30"}}})
}

fn pod_of(pods: &[Pod], build: u64) -> Option<&Pod> {
    pods.iter().find(|p| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("sdbuild"))
            .is_some_and(|v| v == &build.to_string())
    })
}

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_originals_start_shapes_launch_where_the_original_would() {
    let sim = clusters().await;
    let (a, b) = (sim.cluster("a"), sim.cluster("b"));
    let api = FakeApi::start().await;
    let (rabbit, names, tap) = broker("sdstart").await;
    let cache = tempfile::tempdir().unwrap();
    let mut extra = string_weight();
    super::merge(
        &mut extra,
        &json!({"ecosystem": {"cache": {"strategy": "disk", "path": cache.path().display().to_string()}}}),
    );
    let worker =
        InProcessWorker::start(settings(&names, &executors(&sim), &knobs_with(extra))).await;
    let publish = |msg: StartMsg| {
        let rabbit = &rabbit;
        let names = &names;
        async move {
            rabbit
                .publish_json(&names.exchange, &names.queue, &msg.json())
                .await
        }
    };
    // Weighted: `a` has "30", `b` has 0, so every unpinned build goes to `a`.
    for id in 3001..=3005u64 {
        publish(StartMsg::new(id).api(&api.url())).await;
    }
    // A PR build as queue-service sends it.
    publish(
        StartMsg::new(3010)
            .api(&api.url())
            .field("jobName", json!("PR-42:main"))
            .field("jobId", json!(9999))
            .field("isPR", json!(true))
            .field("prNum", json!(42))
            .field("prParentJobId", json!(4321)),
    )
    .await;
    // The `beta.` prefix pins like the plain one, past weight 0.
    publish(
        StartMsg::new(3020)
            .api(&api.url())
            .annotation("beta.screwdriver.cd/executor", json!("b")),
    )
    .await;
    // Headers, but no x-death: the original threw on these and dropped the message.
    let mut headers = FieldTable::default();
    headers.insert(
        "x-trace-id".into(),
        AMQPValue::LongString(LongString::from("abc123")),
    );
    rabbit
        .publish_bytes(
            &names.exchange,
            &names.queue,
            &StartMsg::new(3030).api(&api.url()).bytes(),
            BasicProperties::default().with_headers(headers),
        )
        .await;

    tap.wait_count("build.launched", 8, SOON).await;
    let on_a = a.pods();
    let on_b = b.pods();
    for id in (3001..=3005).chain([3010, 3030]) {
        let pod = pod_of(&on_a, id).unwrap_or_else(|| panic!("build {id} is not on a"));
        assert_eq!(label(pod, "buildcluster-worker/executor"), Some("a"));
    }
    let pinned = pod_of(&on_b, 3020).expect("the beta.-pinned build runs on b");
    assert_eq!(label(pinned, "buildcluster-worker/executor"), Some("b"));
    assert_eq!(on_b.len(), 1, "weight 0 is never chosen by weight");

    // The PR build: PR label, and the parent job's caches mounted read-only.
    let pr = pod_of(&on_a, 3010).unwrap();
    assert_eq!(label(pr, "screwdriver.cd/pr_number"), Some("42"));
    let spec = pr.spec.as_ref().unwrap();
    let host_path = |name: &str| {
        spec.volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
            .unwrap_or_else(|| panic!("no hostPath volume {name}"))
    };
    let root = cache.path().display().to_string();
    assert_eq!(host_path("sd-job-cache"), format!("{root}/jobs/1234/4321"));
    assert_eq!(
        host_path("sd-pipeline-cache"),
        format!("{root}/pipelines/1234")
    );
    let mounts: BTreeMap<&str, bool> = spec.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.read_only.unwrap_or(false)))
        .collect();
    assert_eq!(mounts.get("sd-job-cache"), Some(&true));
    assert_eq!(mounts.get("sd-pipeline-cache"), Some(&true));
    assert_eq!(mounts.get("sd-event-cache"), Some(&false));
    let main = pod_of(&on_a, 3001).unwrap();
    assert_eq!(label(main, "screwdriver.cd/pr_number"), None);

    // The message with foreign headers is an ordinary first attempt.
    let traced = pod_of(&on_a, 3030).unwrap();
    assert_eq!(annotation(traced, "buildcluster-worker/attempt"), Some("1"));

    // Exactly one pod per build, and nothing went wrong: no update reached the API.
    assert_eq!(a.create_log().len() + b.create_log().len(), 8);
    assert!(api.calls().is_empty(), "{:?}", api.calls());
    assert_eq!(rabbit.depth(&names.dead()).await, Some(0));
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    api.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_and_without_token_and_verify_on_the_main_queue() {
    let sim = clusters().await;
    let a = sim.cluster("a");
    let api = FakeApi::start().await;
    let (rabbit, names, tap) = broker("sdstopverify").await;
    let worker = InProcessWorker::start(settings(
        &names,
        &executors(&sim),
        &knobs_with(string_weight()),
    ))
    .await;
    for msg in [
        StartMsg::new(3101),
        StartMsg::new(3102),
        StartMsg::new(3103),
        StartMsg::new(3104).image("sim/invalid-image"),
    ] {
        rabbit
            .publish_json(&names.exchange, &names.queue, &msg.api(&api.url()).json())
            .await;
    }
    tap.wait_count("build.launched", 4, SOON).await;

    // queue-service's stop with the stored config (token included), and the bare one it sends
    // when Redis had no config left.
    let with_token = bcw_tests::harness::stop(3101);
    let without_token =
        json!({"job": "stop", "buildConfig": {"buildId": 3102, "jobId": 4321, "jobName": "main"}});
    for msg in [&with_token, &without_token] {
        rabbit
            .publish_json(&names.exchange, &names.queue, msg)
            .await;
    }
    let stopped = tap.wait_count("build.stopped", 2, SOON).await;
    let ids: Vec<u64> = stopped.iter().map(|e| e.build_id()).collect();
    assert!(ids.contains(&3101) && ids.contains(&3102), "{ids:?}");
    eventually(SOON, "the stopped builds' pods to go", || async {
        let live = live_pods(&a);
        (pod_of(&live, 3101).is_none() && pod_of(&live, 3102).is_none()).then_some(())
    })
    .await;

    // Verify: the running build is left alone, the broken one is failed with a sentence.
    eventually(
        SOON,
        "the broken build to show InvalidImageName",
        || async {
            let pods = a.pods();
            let pod = pod_of(&pods, 3104)?;
            let waiting = pod
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .iter()
                .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
                .any(|r| r == "InvalidImageName");
            waiting.then_some(())
        },
    )
    .await;
    for id in [3103, 3104] {
        rabbit
            .publish_json(
                &names.exchange,
                &names.queue,
                &StartMsg::new(id).api(&api.url()).job("verify").json(),
            )
            .await;
    }
    let verified = tap.wait_count("build.verified", 2, SOON).await;
    let state = |id: u64| {
        verified
            .iter()
            .find(|e| e.build_id() == id)
            .map(|e| e.data["state"].clone())
    };
    assert_eq!(state(3103), Some(json!("running")));
    assert_eq!(state(3104), Some(json!("launch_failed")));
    api.wait_for_build(3104, 1, SOON).await;
    let failed = failures(&api, 3104);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_put_with_token(&failed[0], 3104);
    let text = failed[0].status_message().unwrap();
    assert!(
        text.starts_with("Build failed to start") && text.contains("sim/invalid-image"),
        "{text}"
    );
    // Stops and a healthy verify send nothing to the API.
    assert_eq!(api.calls().len(), 1, "{:?}", api.calls());
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    api.shutdown().await;
    sim.shutdown().await;
}

/// A `clear` message as queue-service publishes it.
fn clear(prefix: &str, scope: &str, id: serde_json::Value, pipeline: &str) -> serde_json::Value {
    json!({"job": "clear", "cacheConfig": {"resource": "caches", "action": "delete", "prefix": prefix,
        "scope": scope, "id": id, "pipelineId": pipeline, "buildClusters": ["ClusterA", "ClusterB"]}})
}

fn mkdirs(root: &Path, dirs: &[&str]) {
    for d in dirs {
        std::fs::create_dir_all(root.join(d)).unwrap();
        std::fs::write(root.join(d).join("cache.tgz"), "x").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_removes_exactly_the_named_directory_and_dead_letters_a_traversal() {
    let sim = clusters().await;
    let api = FakeApi::start().await;
    let (rabbit, names, _tap) = broker("sdclear").await;
    let outside = tempfile::tempdir().unwrap();
    let root = outside.path().join("cache");
    mkdirs(
        &root,
        &[
            "pipelines/1234",
            "jobs/1234/4321",
            "jobs/1234/4322",
            "beta-/jobs/1234/4321",
            "events/1234/77",
        ],
    );
    mkdirs(outside.path(), &["victim"]);
    let extra =
        json!({"ecosystem": {"cache": {"strategy": "disk", "path": root.display().to_string()}}});
    let worker =
        InProcessWorker::start(settings(&names, &executors(&sim), &knobs_with(extra))).await;
    for msg in [
        clear("", "jobs", json!(4321), "1234"),
        clear("beta-", "jobs", json!("4321"), "1234"),
        clear("", "pipelines", json!(""), "1234"),
        clear("", "jobs", json!(1), "../../victim"),
        clear("..", "events", json!(77), "1234"),
    ] {
        rabbit
            .publish_json(&names.exchange, &names.queue, &msg)
            .await;
    }
    eventually(SOON, "both traversals to be dead-lettered", || async {
        (rabbit.depth(&names.dead()).await == Some(2)).then_some(())
    })
    .await;
    queue_drained(&rabbit, &names).await;
    assert!(!root.join("jobs/1234/4321").exists());
    assert!(!root.join("beta-/jobs/1234/4321").exists());
    assert!(!root.join("pipelines/1234").exists());
    // Everything else is untouched, inside the root and out.
    assert!(root.join("jobs/1234/4322/cache.tgz").exists());
    assert!(root.join("events/1234/77/cache.tgz").exists());
    assert!(outside.path().join("victim/cache.tgz").exists());
    for (props, _) in rabbit.drain(&names.dead()).await {
        let h = props.headers().clone().unwrap_or_default();
        assert_eq!(
            header(&h, "x-bcw-reason").as_deref(),
            Some("invalid_cache_path")
        );
    }
    // A cache message is not about a build: nothing for the API.
    assert!(api.calls().is_empty());
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    api.shutdown().await;
    sim.shutdown().await;
}
