//! The administrator's broker layout (`declareTopology: false`): a worker configured only
//! through the original's environment variables, the `Xdlr` retry loop counted by `x-death`,
//! verify from `XRetry`, and a build that waits past `maxWait` without delay queues of its own.

use std::time::Duration;

use bcw_tests::harness::{
    AdminTopology, ExecutorSpec, FakeApi, InProcessWorker, Knobs, Rabbit, StartMsg, TOKEN,
    WorkerProcess, eventually, settings,
};
use bcw_tests::kube_sim::{ClusterConfig, Fault, KubeSim, Script, ScriptRule, SimConfig, Verb};
use k8s_openapi::api::core::v1::Pod;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::json;

use super::{assert_put_with_token, failures, status_updates};
use crate::support::{SOON, broker, live_pods, running_forever};

/// A Kubernetes token the worker is given and must never print.
const K8S_TOKEN: &str = "k8s-sentinel-token-6b1f0e2d9a";

async fn one_cluster() -> KubeSim {
    let sim = KubeSim::start(SimConfig {
        clusters: vec![ClusterConfig::new("a").with_timeline(running_forever())],
        ..Default::default()
    })
    .await
    .expect("kube-sim starts");
    sim.cluster("a")
        .add_script(ScriptRule::new("^sim/invalid-image", Script::InvalidImageName).unwrap());
    sim
}

fn pod_of(pods: &[Pod], build: u64) -> Option<Pod> {
    pods.iter()
        .find(|p| {
            p.metadata.labels.as_ref().and_then(|l| l.get("sdbuild")) == Some(&build.to_string())
        })
        .cloned()
}

fn executor_of(pod: &Pod) -> String {
    pod.metadata.labels.as_ref().unwrap()["buildcluster-worker/executor"].clone()
}

async fn queues_empty(rabbit: &Rabbit, queues: &[&str]) -> bool {
    for q in queues {
        if rabbit.depth(q).await != Some(0) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_configured_by_the_originals_environment_runs_on_the_admins_queues() {
    let sim = one_cluster().await;
    let a = sim.cluster("a");
    let api = FakeApi::start().await;
    let (rabbit, names, _tap) = broker("sdenv").await;
    let topology = AdminTopology::for_names(&names);
    topology.declare(&rabbit).await;
    let cache = tempfile::tempdir().unwrap();
    let cache_path = cache.path().display().to_string();
    let url = a.url();
    // The original's variables, strings as its Deployment sets them; nothing else but
    // `--compat screwdriver` (as BCW_COMPAT).
    let env = [
        ("BCW_COMPAT", "screwdriver"),
        ("BCW_LOG_LEVEL", "debug"),
        ("RABBITMQ_PROTOCOL", "amqp"),
        ("RABBITMQ_USERNAME", "guest"),
        ("RABBITMQ_PASSWORD", "guest"),
        ("RABBITMQ_HOST", "127.0.0.1"),
        ("RABBITMQ_PORT", "5672"),
        ("RABBITMQ_VIRTUAL_HOST", "/"),
        ("RABBITMQ_EXCHANGE", names.exchange.as_str()),
        ("RABBITMQ_QUEUE", topology.queue.as_str()),
        ("RABBITMQ_RETRYQUEUE", topology.retry.as_str()),
        ("RABBITMQ_RETRYQUEUE_ENABLED", "true"),
        ("RABBITMQ_PREFETCH_COUNT", "10"),
        ("RABBITMQ_MSG_REPROCESS_LIMIT", "2"),
        ("WEIGHT_K8S", "30"),
        ("K8S_HOST", url.as_str()),
        ("K8S_TOKEN", K8S_TOKEN),
        ("K8S_JOBS_NAMESPACE", "default"),
        ("CACHE_STRATEGY", "disk"),
        ("CACHE_PATH", cache_path.as_str()),
    ];
    // The file only adds what a test needs: no reporter (verify must find the broken pod),
    // fast API retries. `httpd` is set by the harness.
    let mut doc = status_updates();
    doc["lifecycle"] = json!({"enabled": false});
    let mut worker = WorkerProcess::spawn(&doc, &env).await;
    // The original's liveness probe path still answers.
    assert_eq!(worker.get("/health").await, Some((200, "ok".to_string())));

    let publish = |body: Vec<u8>, props: BasicProperties, key: String| {
        let rabbit = &rabbit;
        let exchange = names.exchange.clone();
        async move { rabbit.publish_bytes(&exchange, &key, &body, props).await }
    };
    let main = topology.queue.clone();
    let plain = BasicProperties::default;
    // WEIGHT_K8S="30" and every other weight 0: unpinned builds go to k8s, not to the default
    // plugin k8s-vm.
    publish(
        StartMsg::new(4001).api(&api.url()).bytes(),
        plain(),
        main.clone(),
    )
    .await;
    publish(
        StartMsg::new(4002)
            .api(&api.url())
            .annotation("beta.screwdriver.cd/executor", json!("k8s-sandbox"))
            .bytes(),
        plain(),
        main.clone(),
    )
    .await;
    publish(
        StartMsg::new(4003)
            .api(&api.url())
            .field("jobName", json!("PR-42:main"))
            .field("isPR", json!(true))
            .field("prNum", json!(42))
            .bytes(),
        plain(),
        main.clone(),
    )
    .await;
    let mut headers = FieldTable::default();
    headers.insert(
        "x-trace-id".into(),
        AMQPValue::LongString(LongString::from("abc123")),
    );
    publish(
        StartMsg::new(4004).api(&api.url()).bytes(),
        BasicProperties::default().with_headers(headers),
        main.clone(),
    )
    .await;
    publish(
        StartMsg::new(4005)
            .api(&api.url())
            .image("sim/invalid-image")
            .bytes(),
        plain(),
        main.clone(),
    )
    .await;
    eventually(SOON, "five pods", || async {
        (live_pods(&a).len() == 5).then_some(())
    })
    .await;
    let pods = a.pods();
    assert_eq!(executor_of(&pod_of(&pods, 4001).unwrap()), "k8s");
    assert_eq!(executor_of(&pod_of(&pods, 4002).unwrap()), "k8s-sandbox");
    let pr = pod_of(&pods, 4003).unwrap();
    assert_eq!(
        pr.metadata.labels.as_ref().unwrap()["screwdriver.cd/pr_number"],
        "42"
    );
    let traced = pod_of(&pods, 4004).unwrap();
    assert_eq!(
        traced.metadata.annotations.as_ref().unwrap()["buildcluster-worker/attempt"],
        "1"
    );

    // A stop without a token (queue-service's bare form).
    publish(
        serde_json::to_vec(
            &json!({"job": "stop", "buildConfig": {"buildId": 4001, "jobId": 4321, "jobName": "main"}}),
        )
        .unwrap(),
        plain(),
        main.clone(),
    )
    .await;
    eventually(SOON, "build 4001's pod to go", || async {
        pod_of(&live_pods(&a), 4001).is_none().then_some(())
    })
    .await;

    // Verify from XRetry: the broken build is failed, the running one left alone.
    eventually(SOON, "the broken pod to show InvalidImageName", || async {
        let pod = pod_of(&a.pods(), 4005)?;
        let reasons: Vec<String> = pod
            .status?
            .container_statuses?
            .into_iter()
            .filter_map(|c| c.state?.waiting?.reason)
            .collect();
        reasons
            .iter()
            .any(|r| r == "InvalidImageName")
            .then_some(())
    })
    .await;
    for id in [4002, 4005] {
        publish(
            StartMsg::new(id).api(&api.url()).job("verify").bytes(),
            plain(),
            topology.retry.clone(),
        )
        .await;
    }
    api.wait_for_build(4005, 1, SOON).await;

    // A clear that tries to leave the cache root: refused, acknowledged (no X.dead exists), and
    // no build is failed for it.
    publish(
        serde_json::to_vec(
            &json!({"job": "clear", "cacheConfig": {"resource": "caches",
            "action": "delete", "prefix": "", "scope": "jobs", "id": 1, "pipelineId": "../.."}}),
        )
        .unwrap(),
        plain(),
        main.clone(),
    )
    .await;
    eventually(SOON, "every queue of the layout to drain", || async {
        queues_empty(
            &rabbit,
            &[
                &topology.queue,
                &topology.dlr,
                &topology.retry,
                &topology.retry_dlr,
            ],
        )
        .await
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let failed = failures(&api, 4005);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_put_with_token(&failed[0], 4005);
    assert!(
        failed[0]
            .status_message()
            .unwrap()
            .starts_with("Build failed to start"),
        "{:?}",
        failed[0]
    );
    assert_eq!(
        api.calls().len(),
        1,
        "only the broken build reaches the API: {:?}",
        api.calls()
    );
    assert!(cache.path().exists());

    worker.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(worker.wait(Duration::from_secs(30)).await.success());
    let log = worker.log_text();
    assert!(
        log.contains("\"buildId\""),
        "the log is the worker's JSON log"
    );
    assert!(!log.contains(TOKEN), "the build token appears in the log");
    assert!(
        !log.contains(K8S_TOKEN),
        "the Kubernetes token appears in the log"
    );
    // The stock layout has no `X.dead`: said once, as a WARN; no ERROR of the worker's but the
    // one for the refused clear (a message lost for want of that queue), and none from the
    // channel the broker closes on the passive check, nor from the connection's close.
    let lines = |level: &str| -> Vec<&str> {
        log.lines()
            .filter(|l| l.contains(&format!("\"level\":\"{level}\"")))
            .collect()
    };
    let said = lines("WARN")
        .into_iter()
        .filter(|l| l.contains("the dead-letter queue does not exist"))
        .count();
    assert_eq!(said, 1, "{log}");
    let errors: Vec<_> = lines("ERROR")
        .into_iter()
        .filter(|l| !l.contains("message refused; no dead-letter queue exists"))
        .collect();
    assert!(errors.is_empty(), "unexpected ERROR lines: {errors:#?}");
    topology.cleanup(&rabbit).await;
    rabbit.cleanup(&names).await;
    api.shutdown().await;
    sim.shutdown().await;
}

/// Settings on the administrator's layout, with a fragile cluster: one call per attempt.
fn admin_knobs(extra: serde_json::Value) -> Knobs {
    let mut doc = json!({"rabbitmq": {"declareTopology": false}});
    super::merge(&mut doc, &extra);
    Knobs {
        max_attempts: 1,
        ..super::knobs_with(doc)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_go_round_the_admins_delay_loop_then_fail_the_build_once() {
    let sim = one_cluster().await;
    let a = sim.cluster("a");
    a.inject(
        Fault::status(500)
            .on_verbs([Verb::Create])
            .on_resources(["pods"]),
    );
    let api = FakeApi::start().await;
    let (rabbit, names, tap) = broker("sdloop").await;
    let topology = AdminTopology::for_names(&names);
    topology.declare(&rabbit).await;
    let knobs = Knobs {
        max_failures: 100,
        reprocess_limit: 3,
        ..admin_knobs(json!({}))
    };
    let worker = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &knobs,
    ))
    .await;
    rabbit
        .publish_json(
            &names.exchange,
            &names.queue,
            &StartMsg::new(5001).api(&api.url()).json(),
        )
        .await;
    tap.wait_count("build.dead_lettered", 1, SOON).await;
    eventually(SOON, "X and Xdlr to drain", || async {
        queues_empty(&rabbit, &[&topology.queue, &topology.dlr])
            .await
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // messageReprocessLimit 3: three attempts, each a round of the admin's loop apart.
    let creates: Vec<jiff::Timestamp> = a
        .request_log()
        .iter()
        .filter(|r| r.resource == "pods" && r.verb == "create")
        .map(|r| r.time.parse().unwrap())
        .collect();
    assert_eq!(creates.len(), 3, "one create per attempt");
    for pair in creates.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= jiff::SignedDuration::try_from(AdminTopology::LOOP_DELAY).unwrap(),
            "attempts {gap:?} apart, the loop holds them {:?}",
            AdminTopology::LOOP_DELAY
        );
    }
    let dead = tap.of("build.dead_lettered");
    assert_eq!(dead[0].data["attempt"], 3);
    // Then exactly one FAILURE, with the build's token; the message was acknowledged (no
    // X.dead exists) and nothing is left anywhere.
    let failed = failures(&api, 5001);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_put_with_token(&failed[0], 5001);
    assert!(
        failed[0]
            .status_message()
            .unwrap()
            .starts_with("Build failed to start"),
    );
    assert_eq!(rabbit.depth(&topology.dead()).await, None);
    worker.stop().await.expect("clean shutdown");
    topology.cleanup(&rabbit).await;
    rabbit.cleanup(&names).await;
    api.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_waits_past_max_wait_is_failed_not_dropped() {
    let sim = one_cluster().await;
    let a = sim.cluster("a");
    a.inject(
        Fault::status(500)
            .on_verbs([Verb::Create])
            .on_resources(["pods"]),
    );
    let api = FakeApi::start().await;
    let (rabbit, names, tap) = broker("sdmaxwait").await;
    let topology = AdminTopology::for_names(&names);
    topology.declare(&rabbit).await;
    // The first failure opens the breaker for a minute: every later attempt waits for the
    // executor in process (the admin's layout has no delay queue for waiting), for at most 2 s.
    let knobs = Knobs {
        max_failures: 1,
        reset_timeout_ms: 60_000,
        max_wait_s: 2,
        ..admin_knobs(json!({}))
    };
    let worker = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &knobs,
    ))
    .await;
    rabbit
        .publish_json(
            &names.exchange,
            &names.queue,
            &StartMsg::new(5101).api(&api.url()).json(),
        )
        .await;
    let failed = api
        .wait(SOON, "the waiting build to be failed", |calls| {
            calls.iter().any(|c| c.is_failure())
        })
        .await;
    assert_eq!(failed.len(), 1);
    assert_put_with_token(&failed[0], 5101);
    assert!(
        failed[0]
            .status_message()
            .unwrap()
            .contains("no build cluster was available in time"),
        "{:?}",
        failed[0].body
    );
    let dead = tap.wait_count("build.dead_lettered", 1, SOON).await;
    assert_eq!(dead[0].data["reason"], "no_executor");
    eventually(SOON, "X and Xdlr to drain", || async {
        queues_empty(&rabbit, &[&topology.queue, &topology.dlr])
            .await
            .then_some(())
    })
    .await;
    worker.stop().await.expect("clean shutdown");
    topology.cleanup(&rabbit).await;
    rabbit.cleanup(&names).await;
    api.shutdown().await;
    sim.shutdown().await;
}

/// Issue 20: in the administrator's layout a build that no executor of this replica can take
/// waits in its memory for at most 30 s, counted on `/readyz` (and `bcw_builds_waiting`), then
/// goes back to the end of `X`, where a replica whose executors work takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_waiting_in_memory_goes_back_to_the_queue_for_a_healthy_replica() {
    let sim = one_cluster().await;
    let a = sim.cluster("a");
    let pki = bcw_tests::harness::tls::TestPki::new();
    // The first replica reaches cluster `a` through TLS it cannot verify: no create lands.
    let untrusted = pki
        .proxy(a.url().trim_start_matches("http://").parse().unwrap())
        .await;
    let (rabbit, names, tap) = broker("sdhandback").await;
    let topology = AdminTopology::for_names(&names);
    topology.declare(&rabbit).await;
    let knobs = Knobs {
        max_failures: 1,
        reset_timeout_ms: 600_000,
        ..admin_knobs(json!({}))
    };
    let broken = format!("https://127.0.0.1:{untrusted}");
    let first =
        InProcessWorker::start(settings(&names, &[ExecutorSpec::new("a", &broken)], &knobs)).await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(5201).json())
        .await;
    let body = eventually(SOON, "the first replica to hold the build", || async {
        let (_, body) = bcw_tests::harness::worker::http_get(first.http, "/readyz").await?;
        body.contains("1 build(s) waiting").then_some(body)
    })
    .await;
    assert!(body.contains("executor a ("), "{body}");
    let second = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &knobs,
    ))
    .await;
    let launched = tap
        .wait_count("build.launched", 1, Duration::from_secs(90))
        .await;
    assert_eq!(launched[0].build_id(), 5201);
    assert_eq!(
        a.create_log().len(),
        1,
        "one pod, created by the second replica"
    );
    eventually(SOON, "the first replica to hold nothing", || async {
        let (_, body) = bcw_tests::harness::worker::http_get(first.http, "/readyz").await?;
        (!body.contains("waiting")).then_some(())
    })
    .await;
    first.stop().await.expect("clean shutdown");
    second.stop().await.expect("clean shutdown");
    topology.cleanup(&rabbit).await;
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}
