//! Issue 5: metrics, readiness, logs, graceful drain, broker connection loss.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bcw_tests::harness::{
    ExecutorSpec, Knobs, Names, StartMsg, TOKEN, TcpProxy, WorkerProcess, eventually, settings_json,
};
use bcw_tests::kube_sim::{ClusterHandle, Fault, Verb};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{
    SOON, broker, even_pair, live_pods, queue_drained, running_forever, two_clusters,
};

/// Parses Prometheus text: name -> list of label maps (with the value under `__value`).
fn parse_metrics(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").expect("label");
            map.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        map.insert("__value".into(), value.to_string());
        out.entry(name.to_string()).or_default().push(map);
    }
    out
}

/// The sum of a metric's samples that satisfy `pred` (0 while the metric is absent).
fn metric_sum(
    m: &BTreeMap<String, Vec<BTreeMap<String, String>>>,
    name: &str,
    pred: impl Fn(&BTreeMap<String, String>) -> bool,
) -> f64 {
    m.get(name)
        .into_iter()
        .flatten()
        .filter(|s| pred(s))
        .map(|s| s["__value"].parse::<f64>().expect("a sample's value"))
        .sum()
}

/// A worker's configuration with one executor `a` on `cluster`, reaching RabbitMQ through
/// `proxy`.
fn through(proxy: &TcpProxy, names: &Names, cluster: &ClusterHandle) -> Value {
    let mut doc = settings_json(
        names,
        &[ExecutorSpec::new("a", &cluster.url())],
        &Knobs::default(),
    );
    doc["rabbitmq"]["url"] = json!(proxy.amqp_url());
    doc
}

fn label_keys(samples: &[BTreeMap<String, String>]) -> BTreeSet<String> {
    samples
        .iter()
        .flat_map(|m| m.keys().filter(|k| *k != "__value" && *k != "le").cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_every_contract_name_and_label_set_and_move() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("metrics").await;
    let (a, b, executors) = even_pair(&sim);
    let knobs = Knobs {
        max_failures: 2,
        reset_timeout_ms: 300,
        ..Knobs::default()
    };
    a.inject(
        Fault::status(500)
            .on_verbs([Verb::Create])
            .on_resources(["pods"])
            .count(4),
    );
    let worker = WorkerProcess::spawn(&settings_json(&names, &executors, &knobs), &[]).await;
    for id in 1..=30u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    rabbit
        .publish_bytes(
            &names.exchange,
            &names.queue,
            b"not json",
            Default::default(),
        )
        .await;
    tap.wait_count("build.launched", 30, SOON).await;
    tap.wait_count("cluster.breaker_opened", 1, SOON).await;

    let metrics = eventually(
        SOON,
        "queue gauges, the dead letter and 30 launches in the metrics",
        || async {
            let (_, body) = worker.get("/metrics").await?;
            let m = parse_metrics(&body);
            // A build's event is confirmed before its message is settled and counted.
            let launched = metric_sum(&m, "bcw_messages_total", |s| {
                s["job"] == "start" && launched_or_adopted(s)
            });
            (m.contains_key("bcw_queue_messages")
                && m.contains_key("bcw_dead_letters_total")
                && launched >= 30.0)
                .then_some((m, body))
        },
    )
    .await;
    let (m, body) = metrics;
    let expected: &[(&str, &[&str])] = &[
        ("bcw_messages_total", &["job", "outcome"]),
        ("bcw_inflight_builds", &[]),
        ("bcw_launch_duration_seconds_bucket", &["executor"]),
        ("bcw_launch_duration_seconds_count", &["executor"]),
        ("bcw_kube_requests_total", &["executor", "verb", "code"]),
        ("bcw_breaker_state", &["executor"]),
        ("bcw_breaker_trips_total", &["executor"]),
        ("bcw_retries_total", &["executor", "reason"]),
        ("bcw_dead_letters_total", &["reason"]),
        ("bcw_queue_messages", &["queue"]),
        ("bcw_queue_consumers", &["queue"]),
        ("bcw_events_published_total", &["type"]),
    ];
    for (name, labels) in expected {
        let samples = m.get(*name).unwrap_or_else(|| panic!("{name} is missing"));
        let want: BTreeSet<String> = labels.iter().map(|s| s.to_string()).collect();
        assert_eq!(label_keys(samples), want, "label set of {name}");
    }
    let value = |name: &str, pred: &dyn Fn(&BTreeMap<String, String>) -> bool| -> f64 {
        metric_sum(&m, name, pred)
    };
    assert_eq!(
        value("bcw_messages_total", &|s| s["job"] == "start"
            && launched_or_adopted(s)),
        30.0
    );
    assert_eq!(
        value("bcw_dead_letters_total", &|s| s["reason"] == "invalid_json"),
        1.0
    );
    assert!(value("bcw_kube_requests_total", &|s| s["code"] == "500") >= 2.0);
    assert!(value("bcw_breaker_trips_total", &|s| s["executor"] == "a") >= 1.0);
    assert!(
        value("bcw_events_published_total", &|s| s["type"]
            == "build.launched")
            >= 30.0
    );
    assert!(value("bcw_launch_duration_seconds_count", &|_| true) >= 30.0);
    let consumers = value("bcw_queue_consumers", &|s| s["queue"] == names.queue);
    assert!(consumers >= 1.0, "the worker's own consumer is counted");
    // Histograms, never summaries; no unbounded label values; no secret.
    assert!(!body.contains("quantile="));
    let pods: BTreeSet<String> = live_pods(&a)
        .into_iter()
        .chain(live_pods(&b))
        .filter_map(|p| p.metadata.name)
        .collect();
    for samples in m.values() {
        for s in samples {
            for (k, v) in s
                .iter()
                .filter(|(k, _)| !["__value", "le", "code"].contains(&k.as_str()))
            {
                assert!(
                    !pods.contains(v),
                    "pod name {v} used as the value of label {k}"
                );
                assert!(
                    v.parse::<u64>().is_err(),
                    "a number ({v}) used as the value of label {k}"
                );
            }
        }
    }
    assert!(!body.contains(TOKEN));
    drop(worker);
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

/// A broker that stops answering without closing anything (a partition, a hung node) must not
/// hold a shutdown: every close the worker sends to the broker is bounded, so SIGTERM ends the
/// process (exit 0; its unsettled deliveries go back to the queue when the broker drops the
/// connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stopped_answering_does_not_hold_the_shutdown() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("frozen").await;
    let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let a = sim.cluster("runc");
    let mut doc = through(&proxy, &names, &a);
    // Heartbeats a minute apart: lapin would notice the silent broker only after two minutes,
    // so the exit below cannot come from the heartbeat.
    doc["rabbitmq"]["url"] = json!(proxy.amqp_url_with_heartbeat(60));
    let mut worker = WorkerProcess::spawn(&doc, &[]).await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(1).json())
        .await;
    tap.wait_count("build.launched", 1, SOON).await;

    proxy.freeze();
    worker.signal(Signal::SIGTERM);
    let status = worker.wait(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}\n{}", worker.log_text());
    proxy.cut();
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_broker_connection_and_the_drain() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("ready").await;
    let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    proxy.set_enabled(false);
    let a = sim.cluster("runc");
    let mut doc = through(&proxy, &names, &a);
    let dir = tempfile::tempdir().unwrap();
    // Spawn without waiting for readiness: the broker is unreachable.
    let port = bcw_tests::harness::free_port();
    doc["httpd"] = json!({"host": "127.0.0.1", "port": port});
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, serde_json::to_string(&doc).unwrap()).unwrap();
    let mut command = tokio::process::Command::new(bcw_tests::harness::worker_binary());
    // Only the test configures the worker: no BCW_ variable of the caller's shell leaks in.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("BCW_")) {
        command.env_remove(k);
    }
    let mut child = command
        .args(["run", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::from(
            std::fs::File::create(dir.path().join("worker.log")).unwrap(),
        ))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let status = |p: &'static str| bcw_tests::harness::worker::http_status(addr, p);
    eventually(SOON, "/healthz up", || async {
        (status("/healthz").await == Some(200)).then_some(())
    })
    .await;
    assert_eq!(
        status("/readyz").await,
        Some(503),
        "not ready before the broker connection"
    );

    proxy.set_enabled(true);
    eventually(SOON, "ready once consuming", || async {
        (status("/readyz").await == Some(200)).then_some(())
    })
    .await;
    proxy.set_enabled(false);
    proxy.cut();
    eventually(SOON, "not ready while reconnecting", || async {
        (status("/readyz").await == Some(503)).then_some(())
    })
    .await;
    assert_eq!(
        status("/healthz").await,
        Some(200),
        "alive while reconnecting"
    );
    proxy.set_enabled(true);
    eventually(SOON, "ready again after reconnecting", || async {
        (status("/readyz").await == Some(200)).then_some(())
    })
    .await;

    // Builds in flight (slow API), then SIGTERM: not ready while draining, exit 0.
    a.set_latency(Duration::from_millis(1500));
    for id in 1..=5u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    eventually(SOON, "creates in flight", || async {
        (a.request_log().iter().any(|r| r.verb == "create")).then_some(())
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    eventually(SOON, "not ready while draining", || async {
        matches!(status("/readyz").await, Some(503)).then_some(())
    })
    .await;
    let exit = tokio::time::timeout(SOON, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit 0 after the drain");
    tap.wait_count("build.launched", 5, SOON).await;
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

/// Adds a RabbitMQ user with a distinctive password (so a grep for it means something).
async fn broker_user(user: &str, password: &str) {
    let run = |args: Vec<String>| async move {
        tokio::process::Command::new("rabbitmqctl")
            .args(args)
            .output()
            .await
            .expect("rabbitmqctl")
    };
    let added = run(vec!["add_user".into(), user.into(), password.into()]).await;
    if !added.status.success() {
        let changed = run(vec!["change_password".into(), user.into(), password.into()]).await;
        assert!(
            changed.status.success(),
            "rabbitmqctl change_password failed"
        );
    }
    let perms = run(vec![
        "set_permissions".into(),
        "-p".into(),
        "/".into(),
        user.into(),
        ".*".into(),
        ".*".into(),
        ".*".into(),
    ])
    .await;
    assert!(perms.status.success(), "rabbitmqctl set_permissions failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_with_build_fields_and_no_secret_reaches_logs_events_or_metrics() {
    let password = "pw-7c1f0e2b9d-sentinel";
    broker_user("bcw-log-test", password).await;
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("logs").await;
    let a = sim.cluster("runc");
    let mut doc = settings_json(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &Knobs {
            lifecycle: true,
            ..Knobs::default()
        },
    );
    doc["rabbitmq"]["url"] = json!(format!("amqp://bcw-log-test:{password}@127.0.0.1:5672/%2f"));
    let worker = WorkerProcess::spawn(&doc, &[("RUST_LOG", "debug")]).await;
    for id in 1..=5u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    // A refused message whose token must not be echoed either.
    rabbit
        .publish_json(
            &names.exchange,
            &names.queue,
            &StartMsg::new(99).api("not a uri").json(),
        )
        .await;
    tap.wait_count("build.running", 5, SOON).await;
    tap.wait_count("build.dead_lettered", 1, SOON).await;
    let (_, metrics) = worker.get("/metrics").await.unwrap();
    let log = worker.log_text();
    drop(worker);

    let mut about_builds = 0;
    for line in log.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string(),
            "{line}"
        );
        if v.get("buildId").is_some() {
            about_builds += 1;
            assert!(
                v.get("attempt").is_some(),
                "a build line without attempt: {line}"
            );
            let msg = v["message"].as_str().unwrap();
            if [
                "build launched",
                "build running",
                "build finished",
                "build failed to start",
            ]
            .contains(&msg)
            {
                assert!(
                    v["executor"].is_string(),
                    "a build line without executor: {line}"
                );
            }
        }
    }
    assert!(about_builds >= 10, "only {about_builds} lines about builds");
    for (what, text) in [("logs", log.as_str()), ("metrics", metrics.as_str())] {
        assert!(!text.contains(TOKEN), "the build token reached the {what}");
        assert!(
            !text.contains(password),
            "the broker password reached the {what}"
        );
    }
    for e in tap.all() {
        let body = String::from_utf8_lossy(&e.body);
        assert!(!body.contains(TOKEN), "the build token reached an event");
        assert!(!body.contains(password));
    }
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_leaves_every_message_done_or_back_in_the_queue() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("drain").await;
    let a = sim.cluster("runc");
    a.set_latency(Duration::from_millis(100));
    let mut worker = WorkerProcess::spawn(
        &settings_json(
            &names,
            &[ExecutorSpec::new("a", &a.url())],
            &Knobs::default(),
        ),
        &[],
    )
    .await;
    for id in 1..=300u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    tap.wait_count("build.launched", 40, SOON).await;
    worker.signal(Signal::SIGTERM);
    let exit = worker.wait(SOON).await;
    assert!(exit.success(), "exit 0 after the drain");
    // The tap may still be receiving the last confirmed events.
    let settled = tap.all().len();
    eventually(SOON, "the event tap to settle", || async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        (tap.all().len() == settled).then_some(())
    })
    .await;

    let launched: BTreeSet<u64> = tap
        .all()
        .iter()
        .filter(|e| e.ty == "build.launched")
        .map(|e| e.build_id())
        .collect();
    let with_pod: BTreeSet<u64> = a
        .create_log()
        .iter()
        .map(|r| r.labels["sdbuild"].parse().unwrap())
        .collect();
    let queued: BTreeSet<u64> = rabbit
        .drain(&names.queue)
        .await
        .iter()
        .map(|(_, body)| {
            serde_json::from_slice::<Value>(body).unwrap()["buildConfig"]["buildId"]
                .as_u64()
                .unwrap()
        })
        .collect();
    // Done = pod and event; anything else must be back in the queue (a pod without its event
    // is adopted when the message comes round again).
    assert!(launched.is_subset(&with_pod), "an event without its pod");
    let done: BTreeSet<u64> = launched.clone();
    assert!(
        done.is_disjoint(&queued),
        "a finished build was returned to the queue"
    );
    let all: BTreeSet<u64> = done.union(&queued).copied().collect();
    assert_eq!(
        all.len(),
        300,
        "{} builds neither done nor queued",
        300 - all.len()
    );
    let unfinished = with_pod.difference(&done).count();
    assert!(
        unfinished <= 20,
        "{unfinished} builds were cut short although the drain deadline allowed them to finish"
    );
    assert!(
        !queued.is_empty(),
        "the burst was still running when SIGTERM came"
    );
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_connection_loss_is_survived_without_duplicates() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("connloss").await;
    let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let a = sim.cluster("runc");
    a.set_latency(Duration::from_millis(50));
    let doc = through(&proxy, &names, &a);
    let worker = WorkerProcess::spawn(&doc, &[]).await;
    for id in 1..=100u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    tap.wait_count("build.launched", 20, SOON).await;
    proxy.cut();
    tap.wait(SOON, "every build launched after the reconnect", |evs| {
        evs.iter()
            .filter(|e| e.ty == "build.launched")
            .map(|e| e.build_id())
            .collect::<BTreeSet<_>>()
            .len()
            == 100
    })
    .await;
    queue_drained(&rabbit, &names).await;
    let mut per_build: BTreeMap<u64, usize> = BTreeMap::new();
    for r in a.create_log() {
        *per_build
            .entry(r.labels["sdbuild"].parse().unwrap())
            .or_default() += 1;
    }
    assert_eq!(per_build.len(), 100);
    assert!(
        per_build.values().all(|n| *n == 1),
        "a redelivery created a second pod"
    );
    // Redeliveries publish the same event id again, never a new one.
    let mut ids: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for e in tap.of("build.launched") {
        ids.entry(e.build_id()).or_default().insert(e.id.clone());
    }
    assert!(ids.values().all(|s| s.len() == 1));
    let (_, metrics) = worker.get("/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bcw_broker_reconnects_total ") && !l.ends_with(" 0")),
        "the reconnect is counted"
    );
    drop(worker);
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_with_other_arguments_stops_the_worker_with_a_clear_error() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, _tap) = broker("precondition").await;
    // Someone declared the pool's queue as a classic queue; the worker is configured quorum.
    let ch = rabbit.channel().await;
    ch.queue_declare(
        lapin::types::ShortString::from(names.queue.as_str()),
        lapin::options::QueueDeclareOptions::durable(),
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();
    let s = bcw_tests::harness::settings(
        &names,
        &[ExecutorSpec::new("a", &sim.cluster("runc").url())],
        &Knobs::default(),
    );
    let result = tokio::time::timeout(
        SOON,
        buildcluster_worker::app::run(s, None, tokio_util::sync::CancellationToken::new(), None),
    )
    .await
    .expect("the worker gives up instead of retrying forever");
    let error = format!("{:#}", result.expect_err("a mismatched topology is fatal"));
    assert!(
        error.contains(&names.queue) && error.contains("different arguments"),
        "{error}"
    );
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

/// A start that ended with the build's pod: created now, or adopted because an earlier attempt
/// created it but was cut off before it could tell (a create slower than the breaker timeout on
/// a loaded machine).
fn launched_or_adopted(sample: &BTreeMap<String, String>) -> bool {
    sample["outcome"] == "launched" || sample["outcome"] == "adopted"
}

/// Issue 3: a pod refused for an unknown RuntimeClass (403) is a configuration error of the
/// executor: logged loudly, counted on its own metric, never retried, and no breaker trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_runtime_class_is_counted_and_logged_without_tripping_the_breaker() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("runtimeclass").await;
    // The `runc` cluster has no RuntimeClass `kata`.
    let a = sim.cluster("runc");
    let executors = vec![ExecutorSpec::new("a", &a.url()).runtime("kata")];
    let knobs = Knobs {
        max_failures: 2,
        ..Knobs::default()
    };
    let worker = WorkerProcess::spawn(&settings_json(&names, &executors, &knobs), &[]).await;
    for id in 1..=4u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    let dead = tap.wait_count("build.dead_lettered", 4, SOON).await;
    assert!(
        dead.iter()
            .all(|e| e.data["reason"] == "runtime_class_not_found"),
        "{:?}",
        dead.iter().map(|e| &e.data["reason"]).collect::<Vec<_>>()
    );
    let creates = a
        .request_log()
        .iter()
        .filter(|r| r.resource == "pods" && r.verb == "create")
        .count();
    assert_eq!(creates, 4, "a refused RuntimeClass is never retried");
    let m = eventually(SOON, "the rejections in the metrics", || async {
        let (_, body) = worker.get("/metrics").await?;
        let m = parse_metrics(&body);
        let rejected = metric_sum(&m, "bcw_runtime_class_rejections_total", |s| {
            s["executor"] == "a"
        });
        (rejected == 4.0).then_some(m)
    })
    .await;
    let value = |name: &str| metric_sum(&m, name, |s| s["executor"] == "a");
    assert_eq!(
        value("bcw_breaker_trips_total"),
        0.0,
        "more than maxFailures refusals, no trip"
    );
    assert_eq!(value("bcw_breaker_state"), 0.0, "the breaker is closed");
    assert!(tap.of("cluster.breaker_opened").is_empty());
    // The state gauge follows within a second.
    eventually(SOON, "the executor shown as misconfigured", || async {
        let (_, body) = worker.get("/metrics").await?;
        let m = parse_metrics(&body);
        (metric_sum(&m, "bcw_executor_state", |s| s["executor"] == "a") == 2.0).then_some(())
    })
    .await;
    let (status, body) = worker.get("/readyz").await.expect("/readyz answers");
    assert_eq!(status, 200, "the replica still consumes: {body}");
    assert!(
        body.contains("executor a (") && body.contains("RuntimeClass kata"),
        "/readyz does not say why executor a cannot take builds:\n{body}"
    );
    // Issue 20: loud once, not once per build: one ERROR line naming the executor, the host,
    // the cause and the fix, for four refused builds.
    let log = worker.log_text();
    bcw_tests::harness::assert_one_error(
        &log,
        &[
            "executor misconfigured",
            "\"executor\":\"a\"",
            &format!("\"host\":\"{}\"", a.url()),
            "\"cause\":\"runtime_class_missing\"",
            "create RuntimeClass kata",
        ],
    );
    drop(worker);
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}
