//! Issue 8: the Role in `deploy/` grants exactly what the worker uses. Every code path that
//! talks to a cluster runs against kube-sim, whose audit log records each request as its RBAC
//! verb; the set of (resource, verb) seen must equal the Role's rules.

use std::collections::BTreeSet;
use std::time::Duration;

use bcw_tests::harness::{
    ExecutorSpec, InProcessWorker, Knobs, StartMsg, eventually, settings, stop,
};
use bcw_tests::kube_sim::{ClusterConfig, KubeSim, Script, ScriptRule, SimConfig, Timeline};
use serde_json::{Value, json};

use crate::support::{SOON, broker};

/// (resource, verb) pairs the Role in `deploy/base/role.yaml` grants.
fn role_grants() -> BTreeSet<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/base/role.yaml");
    let text = std::fs::read_to_string(path).expect("deploy/base/role.yaml");
    let role: Value = serde_saphyr::from_str(&text).expect("role.yaml parses");
    assert_eq!(role["kind"], "Role", "a namespaced Role, not a ClusterRole");
    let mut grants = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        for resource in rule["resources"].as_array().unwrap() {
            for verb in rule["verbs"].as_array().unwrap() {
                let (r, v) = (resource.as_str().unwrap(), verb.as_str().unwrap());
                assert!(r != "*" && v != "*", "wildcards are not least privilege");
                grants.insert((r.to_string(), v.to_string()));
            }
        }
    }
    grants
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_grants_exactly_the_verbs_the_worker_uses() {
    let sim = KubeSim::start(SimConfig {
        clusters: vec![ClusterConfig::new("a").with_timeline(Timeline {
            run_for: Some(Duration::from_millis(300)),
            ..Timeline::fast()
        })],
        ..Default::default()
    })
    .await
    .unwrap();
    let a = sim.cluster("a");
    a.add_script(ScriptRule::new("^sim/invalid", Script::InvalidImageName).unwrap());
    a.add_script(ScriptRule::new("^sim/forever", Script::RunForever).unwrap());
    // A pod left by an earlier attempt that never recorded it: the worker's create answers
    // 409 and the worker reads the pod (get) to adopt it.
    let leftover =
        buildcluster_worker::naming::pod_name("", buildcluster_worker::intake::BuildId(6));
    let client = kube::Client::try_from(kube::Config::new(a.url().parse().unwrap())).unwrap();
    let pods_api: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client, "default");
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": leftover, "labels": {"sdbuild": "6", "app.kubernetes.io/managed-by": "buildcluster-worker",
            "buildcluster-worker/executor": "a"}},
        "spec": {"containers": [{"name": "6", "image": "sim/forever"}], "restartPolicy": "Never"}
    }))
    .unwrap();
    pods_api.create(&Default::default(), &pod).await.unwrap();
    a.clear_logs();
    let (rabbit, names, tap) = broker("rbac").await;
    let knobs = Knobs {
        lifecycle: true,
        extra: json!({
            "executor": {"a": {"options": {"kubernetes": {"podTTL": 1}}}},
            "statusUpdates": {"enabled": true, "retry": {"retryDelay": 10, "maxAttempts": 1}},
        }),
        ..Knobs::default()
    };
    let worker = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &knobs,
    ))
    .await;
    // A status update needs the build token: the reporter reads it from the build's Secret.
    let api = "http://127.0.0.1:9";
    // launch (create pod + Secret), adopt (AlreadyExists -> get), watch/list (reporter),
    // delete (launch failure, garbage collection), deletecollection (stop), leases.
    for id in 1..=3u64 {
        let msg = StartMsg::new(id).api(api).json();
        rabbit
            .publish_json(&names.exchange, &names.queue, &msg)
            .await;
    }
    let duplicate = StartMsg::new(1).api(api).json();
    rabbit
        .publish_json(&names.exchange, &names.queue, &duplicate)
        .await;
    let broken = StartMsg::new(4).image("sim/invalid:x").api(api).json();
    rabbit
        .publish_json(&names.exchange, &names.queue, &broken)
        .await;
    let verify = StartMsg::new(5).api(api).job("verify").json();
    rabbit
        .publish_json(&names.exchange, &names.queue, &verify)
        .await;
    let adopt = StartMsg::new(6).api(api).json();
    rabbit
        .publish_json(&names.exchange, &names.queue, &adopt)
        .await;
    tap.wait_count("build.succeeded", 3, SOON).await;
    tap.wait_count("build.launch_failed", 1, SOON).await;
    let events = tap
        .wait(SOON, "the leftover pod of build 6 adopted", |evs| {
            evs.iter()
                .any(|e| e.ty == "build.launched" && e.build_id() == 6)
        })
        .await;
    let adopted = events
        .iter()
        .find(|e| e.ty == "build.launched" && e.build_id() == 6);
    assert_eq!(adopted.unwrap().data["pod"], leftover.as_str());
    rabbit
        .publish_json(&names.exchange, &names.queue, &stop(2))
        .await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &stop(6))
        .await;
    tap.wait_count("build.stopped", 2, SOON).await;
    eventually(SOON, "garbage collection of finished pods", || async {
        a.pods().is_empty().then_some(())
    })
    .await;
    worker.stop().await.expect("clean shutdown");

    let used: BTreeSet<(String, String)> = a
        .request_log()
        .into_iter()
        .filter(|r| !r.resource.is_empty())
        .map(|r| (r.resource, r.verb))
        .collect();
    let granted = role_grants();
    let missing: Vec<_> = used.difference(&granted).collect();
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "the worker uses verbs the Role does not grant: {missing:?}"
    );
    assert!(
        unused.is_empty(),
        "the Role grants verbs the worker never uses: {unused:?}"
    );
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}
