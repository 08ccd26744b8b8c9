//! Issue 8: TLS to RabbitMQ (`amqps`) and to clusters (`https`) with a CA bundle, verified by
//! default: the same worker without the CA bundle does not get through.

use std::time::Duration;

use bcw_tests::harness::tls::TestPki;
use bcw_tests::harness::worker::http_status;
use bcw_tests::harness::{
    ExecutorSpec, InProcessWorker, Knobs, StartMsg, WorkerProcess, assert_one_error, error_lines,
    eventually, settings, settings_json,
};
use bcw_tests::kube_sim::{ClusterConfig, KubeSim, SimConfig, Timeline};
use serde_json::json;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::support::{SOON, broker};

async fn sim() -> KubeSim {
    KubeSim::start(SimConfig {
        clusters: vec![ClusterConfig::new("a").with_timeline(Timeline {
            run_for: None,
            ..Timeline::fast()
        })],
        ..Default::default()
    })
    .await
    .unwrap()
}

/// `https://127.0.0.1:<port>` of a TLS proxy, with `pki`'s certificate, in front of `cluster`.
async fn behind_tls(pki: &TestPki, cluster: &bcw_tests::kube_sim::ClusterHandle) -> String {
    let port = pki
        .proxy(cluster.url().trim_start_matches("http://").parse().unwrap())
        .await;
    format!("https://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_and_the_cluster_are_reached_over_verified_tls() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.write_ca(dir.path());
    let sim = sim().await;
    let a = sim.cluster("a");
    let cluster_addr = a.url().trim_start_matches("http://").parse().unwrap();
    let cluster_port = pki.proxy(cluster_addr).await;
    let broker_port = pki.proxy("127.0.0.1:5672".parse().unwrap()).await;
    let (rabbit, names, tap) = broker("tls").await;
    let host = format!("https://127.0.0.1:{cluster_port}");
    let knobs = Knobs {
        extra: json!({
            "rabbitmq": {"url": format!("amqps://guest:guest@localhost:{broker_port}/%2f?heartbeat=10"),
                         "caFile": ca.display().to_string()},
            "executor": {"a": {"options": {"kubernetes": {"caFile": ca.display().to_string()}}}},
        }),
        ..Knobs::default()
    };
    let worker =
        InProcessWorker::start(settings(&names, &[ExecutorSpec::new("a", &host)], &knobs)).await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(1).json())
        .await;
    let launched = tap.wait_count("build.launched", 1, SOON).await;
    assert_eq!(launched[0].data["executor"], "a");
    assert_eq!(
        a.create_log().len(),
        1,
        "the pod was created through the TLS endpoint"
    );
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_bundle_the_cluster_is_not_trusted() {
    let pki = TestPki::new();
    let sim = sim().await;
    let a = sim.cluster("a");
    let (rabbit, names, tap) = broker("tls-untrusted").await;
    let host = behind_tls(&pki, &a).await;
    let worker = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &host)],
        &Knobs::default(),
    ))
    .await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(2).json())
        .await;
    // The handshake fails before any request reaches the API server: the build waits.
    tap.wait(SOON, "the build to be retried", |evs| {
        evs.iter().any(|e| e.ty == "build.retrying")
    })
    .await;
    assert!(
        a.request_log().is_empty(),
        "a request got through an unverified TLS connection"
    );
    assert!(tap.of("build.launched").is_empty());
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

/// Issue 20: a cluster certificate the worker cannot verify is said once, at ERROR, naming the
/// executor, the host, the cause and the fix (not once per call, not by a dependency's line),
/// and `bcw_executor_state` and `/readyz` show why the executor takes no builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_cluster_certificate_is_said_once_and_shown_on_readyz_and_metrics() {
    let pki = TestPki::new();
    let sim = sim().await;
    let (rabbit, names, tap) = broker("tls-said-once").await;
    let host = behind_tls(&pki, &sim.cluster("a")).await;
    let config = settings_json(&names, &[ExecutorSpec::new("a", &host)], &Knobs::default());
    let worker = WorkerProcess::spawn(&config, &[]).await;
    for id in 1..=3u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    tap.wait(SOON, "the builds to wait", |evs| {
        evs.iter().filter(|e| e.ty == "build.retrying").count() >= 3
    })
    .await;
    let body = eventually(SOON, "/readyz to say why", || async {
        let (status, body) = worker.get("/readyz").await?;
        (status == 200 && body.contains("misconfigured")).then_some(body)
    })
    .await;
    assert!(
        body.contains(&format!("executor a ({host})")) && body.contains("caFile"),
        "{body}"
    );
    eventually(SOON, "the executor state gauge", || async {
        let (_, metrics) = worker.get("/metrics").await?;
        metrics
            .lines()
            .any(|l| l.starts_with("bcw_executor_state{executor=\"a\"} 2"))
            .then_some(())
    })
    .await;
    let log = worker.log_text();
    assert_one_error(
        &log,
        &[
            "\"executor\":\"a\"",
            &format!("\"host\":\"{host}\""),
            "\"cause\":\"tls_unknown_issuer\"",
            "BCW_EXECUTOR__A__OPTIONS__KUBERNETES__CA_FILE",
        ],
    );
    // Shutdown does not wait on calls to the cluster it cannot reach (the Lease's retries).
    let mut worker = worker;
    worker.signal(nix::sys::signal::Signal::SIGTERM);
    let status = worker.wait(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}");
    let log = worker.log_text();
    assert!(
        !log.contains("did not stop in time"),
        "shutdown waited out its bound:\n{log}"
    );
    assert_eq!(
        error_lines(&log).len(),
        1,
        "shutdown added ERROR lines:\n{log}"
    );
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_bundle_the_broker_is_not_trusted() {
    bcw_tests::harness::init_logs();
    let pki = TestPki::new();
    let broker_port = pki.proxy("127.0.0.1:5672".parse().unwrap()).await;
    let sim = sim().await;
    let (rabbit, names, _tap) = broker("tls-broker-untrusted").await;
    let knobs = Knobs {
        extra: json!({"rabbitmq": {"url": format!("amqps://guest:guest@localhost:{broker_port}/%2f")}}),
        ..Knobs::default()
    };
    let s = settings(
        &names,
        &[ExecutorSpec::new("a", &sim.cluster("a").url())],
        &knobs,
    );
    let shutdown = CancellationToken::new();
    let (tx, rx) = oneshot::channel();
    let run = tokio::spawn(buildcluster_worker::app::run(
        s,
        None,
        shutdown.clone(),
        Some(tx),
    ));
    let http = rx.await.expect("started").http;
    eventually(SOON, "the HTTP server", || async {
        http_status(http, "/healthz").await.map(|_| ())
    })
    .await;
    // Several connection attempts pass; none is accepted, so the worker never becomes ready
    // and never declares its queue.
    for _ in 0..20 {
        assert_eq!(http_status(http, "/readyz").await, Some(503));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        rabbit.depth(&names.queue).await,
        None,
        "the queue was declared over an unverified connection"
    );
    shutdown.cancel();
    tokio::time::timeout(SOON, run)
        .await
        .expect("stops")
        .expect("task")
        .expect("clean exit");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

/// Issue 20: a host name that does not resolve is said once, at ERROR, at start-up (by the
/// reporter's Lease calls), with the executor, the host, the cause and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_is_said_once_at_start_up() {
    let (rabbit, names, _tap) = broker("unknown-host").await;
    let host = "https://no-such-host.invalid:6443";
    let knobs = Knobs {
        lifecycle: true,
        ..Knobs::default()
    };
    let config = settings_json(&names, &[ExecutorSpec::new("a", host)], &knobs);
    let worker = WorkerProcess::spawn(&config, &[]).await;
    let body = eventually(SOON, "/readyz to say why", || async {
        let (_, body) = worker.get("/readyz").await?;
        body.contains("misconfigured").then_some(body)
    })
    .await;
    assert!(body.contains("does not resolve"), "{body}");
    let log = worker.log_text();
    assert_one_error(
        &log,
        &[
            "\"executor\":\"a\"",
            "no-such-host.invalid",
            "\"cause\":\"unknown_host\"",
            "BCW_EXECUTOR__A__OPTIONS__KUBERNETES__HOST",
        ],
    );
    drop(worker);
    rabbit.cleanup(&names).await;
}
