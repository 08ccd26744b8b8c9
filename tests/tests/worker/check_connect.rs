//! Issue 20: `check-config --connect` with the real binary: the broker (login, vhost, the
//! layout, native or the administrator's), every executor (TLS, token, version, namespace,
//! RuntimeClass, each verb by SelfSubjectAccessReview) and the Screwdriver API, one line per
//! check with a fix for each failure, exit 2 when one fails. Clusters are kube-sim behind a
//! front that adds authentication, `/version` and access reviews (`harness::kube_front`).

use bcw_tests::harness::command::{Ran, run};
use bcw_tests::harness::kube_front::{FrontConfig, KubeFront};
use bcw_tests::harness::tls::TestPki;
use bcw_tests::harness::{
    AMQP_URL, AdminTopology, ExecutorSpec, FakeApi, InProcessWorker, Knobs, free_port, settings,
    settings_json,
};
use bcw_tests::kube_sim::{ClusterConfig, KubeSim, SimConfig, Timeline};
use serde_json::{Value, json};

use crate::support::broker;

const TOKEN: &str = "cluster-token-sentinel-4b1d";
const RABBIT_PASSWORD: &str = "guest";

/// One cluster with namespace `builds` (only) and RuntimeClass `kata`.
async fn sim() -> KubeSim {
    let mut cluster = ClusterConfig::new("a")
        .with_runtime_classes(["kata"])
        .with_timeline(Timeline::fast());
    cluster.namespaces = Some(vec!["builds".into()]);
    KubeSim::start(SimConfig {
        clusters: vec![cluster],
        ..Default::default()
    })
    .await
    .expect("kube-sim starts")
}

/// An executor block: `host`, token, namespace and runtime class, plus `extra` options.
fn executor(host: &str, token: &str, namespace: &str, runtime_class: &str, extra: Value) -> Value {
    let mut k = json!({"host": host, "token": token, "jobsNamespace": namespace,
        "runtimeClass": runtime_class});
    bcw_tests::harness::merge_json(&mut k, &extra);
    json!({"options": {"kubernetes": k}})
}

/// The line of `what` (its start), or a panic showing every line.
fn line<'a>(ran: &'a Ran, start: &str) -> &'a str {
    ran.lines()
        .into_iter()
        .find(|l| l.contains(start))
        .unwrap_or_else(|| panic!("no line with {start:?}:\n{}", ran.all()))
}

fn assert_line(ran: &Ran, what: &str, status: &str, fragments: &[&str]) {
    let l = line(ran, what);
    assert!(l.starts_with(status), "{what}: expected {status}:\n{l}");
    for f in fragments {
        assert!(l.contains(f), "{what}: no {f:?} in\n{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_passes_for_a_configuration_that_works() {
    let sim = sim().await;
    let front = KubeFront::start(FrontConfig::new(&sim.cluster("a").url(), TOKEN)).await;
    let api = FakeApi::start().await;
    let (rabbit, names, _tap) = broker("preflight-ok").await;
    let knobs = Knobs {
        extra: json!({"executor": {"a": executor(&front.url(), TOKEN, "builds", "kata", json!({}))}}),
        ..Knobs::default()
    };
    let specs = [ExecutorSpec::new("a", &front.url())];
    // A worker declares its topology once, so that every object exists to be compared.
    let worker = InProcessWorker::start(settings(&names, &specs, &knobs)).await;
    worker.stop().await.expect("clean shutdown");
    let mut doc = settings_json(&names, &specs, &knobs);
    doc["lifecycle"]["enabled"] = json!(true);
    doc["statusUpdates"] = json!({"enabled": true});
    doc["ecosystem"] = json!({"api": api.url()});
    let ran = run(&["check-config", "--connect"], Some(&doc), &[], b"");
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert_line(
        &ran,
        "broker: connection",
        "ok",
        &["logged in to amqp://guest:***@127.0.0.1"],
    );
    assert_line(
        &ran,
        &format!("queue {:?}", names.dead()),
        "ok",
        &["exists"],
    );
    assert_line(
        &ran,
        "broker: arguments",
        "ok",
        &["every object has the arguments"],
    );
    assert_line(
        &ran,
        "): connection",
        "ok",
        &[
            "Kubernetes v1.33.0-front",
            "plain HTTP, no TLS, credentials accepted",
        ],
    );
    assert_line(&ran, "): namespace", "ok", &["builds exists"]);
    assert_line(&ran, "): runtime class", "ok", &["kata exists"]);
    assert_line(
        &ran,
        "): permissions",
        "ok",
        &["all 11 verbs the worker uses are allowed in builds"],
    );
    assert_line(
        &ran,
        "Screwdriver API",
        "ok",
        &["GET /v4/status answered 200"],
    );
    assert!(ran.stdout.contains("0 failed"), "{}", ran.stdout);
    assert!(!ran.all().contains(TOKEN), "a token was printed");
    assert!(
        sim.cluster("a").pods().is_empty(),
        "the dry-run create stored nothing"
    );
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_misconfigured_executor_is_told_apart_with_its_fix() {
    let sim = sim().await;
    let upstream = sim.cluster("a").url();
    let front = KubeFront::start(FrontConfig::new(&upstream, TOKEN)).await;
    let rbac = KubeFront::start(
        FrontConfig::new(&upstream, TOKEN)
            .deny("pods", "watch")
            .deny("leases", "update"),
    )
    .await;
    let forbidding = KubeFront::start(FrontConfig {
        forbid_all: true,
        ..FrontConfig::new(&upstream, TOKEN)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let pki_dir = tempfile::tempdir().unwrap();
    let pki_ca = pki.write_ca(pki_dir.path());
    let untrusted = pki.proxy(front.addr()).await;
    let elsewhere = TestPki::for_names(&["api.elsewhere.example"]);
    let elsewhere_ca = elsewhere.write_ca(dir.path());
    let wrong_name = elsewhere.proxy(front.addr()).await;
    let ok = |host: &str| executor(host, TOKEN, "builds", "", json!({}));
    let blocks = json!({
        "plugin": "untrusted",
        "untrusted": ok(&format!("https://127.0.0.1:{untrusted}")),
        "trusted": executor(&format!("https://127.0.0.1:{untrusted}"), TOKEN, "builds", "",
            json!({"caFile": pki_ca.display().to_string()})),
        "wrongname": executor(&format!("https://127.0.0.1:{wrong_name}"), TOKEN, "builds", "",
            json!({"caFile": elsewhere_ca.display().to_string()})),
        "badtoken": executor(&front.url(), "not-the-token", "builds", "", json!({})),
        "refused": ok(&format!("http://127.0.0.1:{}", free_port())),
        "nowhere": ok("https://no-such-host.invalid:6443"),
        "nons": executor(&front.url(), TOKEN, "missing", "", json!({})),
        "norc": executor(&front.url(), TOKEN, "builds", "gvisor", json!({})),
        "rbac": ok(&rbac.url()),
        "forbidden": ok(&forbidding.url()),
    });
    let (rabbit, names, _tap) = broker("preflight-bad").await;
    let mut doc = settings_json(&names, &[], &Knobs::default());
    doc["executor"] = blocks;
    doc["lifecycle"]["enabled"] = json!(true);
    let ran = run(&["check-config", "--connect"], Some(&doc), &[], b"");
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert_line(
        &ran,
        "executor untrusted (",
        "FAIL",
        &[
            "connection: TLS: the server's certificate is signed by a CA the worker does not trust",
            "Fix: set executor.untrusted.options.kubernetes.caFile (BCW_EXECUTOR__UNTRUSTED__OPTIONS__KUBERNETES__CA_FILE)",
        ],
    );
    assert_line(
        &ran,
        "executor wrongname (",
        "FAIL",
        &[
            "TLS: the server's certificate is not valid for it",
            "use the host name it was issued for",
        ],
    );
    assert_line(
        &ran,
        "executor trusted (",
        "ok",
        &["TLS verified, credentials accepted"],
    );
    assert_line(
        &ran,
        "executor badtoken (",
        "FAIL",
        &[
            "401 Unauthorized",
            "set a valid executor.badtoken.options.kubernetes.token",
        ],
    );
    assert_line(
        &ran,
        "executor refused (",
        "FAIL",
        &["connection refused", "nothing listens there"],
    );
    assert_line(
        &ran,
        "executor nowhere (",
        "FAIL",
        &[
            "the host name does not resolve",
            "K8S_HOST with --compat screwdriver",
        ],
    );
    assert_line(&ran, "executor nons (", "ok", &["connection: Kubernetes"]);
    assert_line(
        &ran,
        "): namespace: the namespace does not exist",
        "FAIL",
        &[
            "executor nons",
            "create namespace missing",
            "K8S_JOBS_NAMESPACE",
        ],
    );
    assert_line(
        &ran,
        "): runtime class: the RuntimeClass does not exist",
        "FAIL",
        &["executor norc", "create RuntimeClass gvisor"],
    );
    assert_line(&ran, "executor rbac (", "ok", &[]);
    assert_line(
        &ran,
        "): permissions: the worker's identity lacks permissions",
        "FAIL",
        &[
            "executor rbac",
            "not allowed in builds: watch pods, update leases.coordination.k8s.io",
            "deploy/base/role.yaml",
        ],
    );
    assert_line(
        &ran,
        "): permissions: 403 Forbidden",
        "FAIL",
        &["executor forbidden", "bind the Role"],
    );
    // A check that could not run says why instead of failing twice.
    assert_line(&ran, "executor untrusted (https://127.0.0.1", "FAIL", &[]);
    assert!(ran.lines().iter().any(|l| l.starts_with("skip")
        && l.contains("executor untrusted")
        && l.contains("permissions")));
    assert!(
        !ran.all().contains(TOKEN) && !ran.all().contains("not-the-token"),
        "a token was printed"
    );
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_and_a_missing_vhost_are_told_apart() {
    let (rabbit, names, _tap) = broker("preflight-login").await;
    let mut doc = settings_json(
        &names,
        &[ExecutorSpec::new("a", "http://127.0.0.1:9")],
        &Knobs::default(),
    );
    doc["rabbitmq"]["url"] = json!("amqp://guest:wrong-password-sentinel@127.0.0.1:5672/%2f");
    let ran = run(&["check-config", "--connect"], Some(&doc), &[], b"");
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert_line(
        &ran,
        "broker: connection",
        "FAIL",
        &[
            "amqp://guest:***@127.0.0.1:5672",
            "set the right user name and password",
        ],
    );
    assert!(
        !ran.all().contains("wrong-password-sentinel"),
        "a password was printed"
    );
    doc["rabbitmq"]["url"] = json!(format!(
        "amqp://guest:{RABBIT_PASSWORD}@127.0.0.1:5672/no-such-vhost"
    ));
    let ran = run(&["check-config", "--connect"], Some(&doc), &[], b"");
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert_line(
        &ran,
        "broker: connection",
        "FAIL",
        &["use a virtual host that exists"],
    );
    assert_line(&ran, "broker: layout", "skip", &["not reached"]);
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_administrators_layout_is_checked_as_it_is_and_refused_for_a_declared_topology() {
    let sim = sim().await;
    let front = KubeFront::start(FrontConfig::new(&sim.cluster("a").url(), TOKEN)).await;
    let (rabbit, names, _tap) = broker("preflight-admin").await;
    let admin = AdminTopology::for_names(&names);
    admin.declare(&rabbit).await;
    let host = front.url();
    // Only the original's variables, as a migrating operator has them.
    let env = [
        ("RABBITMQ_USERNAME", "guest"),
        ("RABBITMQ_PASSWORD", RABBIT_PASSWORD),
        ("RABBITMQ_HOST", "127.0.0.1"),
        ("RABBITMQ_VIRTUAL_HOST", "/"),
        ("RABBITMQ_EXCHANGE", names.exchange.as_str()),
        ("RABBITMQ_QUEUE", names.queue.as_str()),
        ("RABBITMQ_RETRYQUEUE", admin.retry.as_str()),
        ("RABBITMQ_RETRYQUEUE_ENABLED", "true"),
        ("EXECUTOR_PLUGIN", "k8s"),
        ("K8S_HOST", host.as_str()),
        ("K8S_TOKEN", TOKEN),
        ("K8S_JOBS_NAMESPACE", "builds"),
        ("ECOSYSTEM_API", "http://127.0.0.1:9"),
    ];
    let ran = run(
        &["check-config", "--connect", "--compat", "screwdriver"],
        None,
        &env,
        b"",
    );
    assert_line(&ran, &format!("queue {:?}", admin.queue), "ok", &["exists"]);
    assert_line(
        &ran,
        &format!("queue {:?}", admin.dlr),
        "ok",
        &["the delay loop"],
    );
    assert_line(&ran, &format!("queue {:?}", admin.retry), "ok", &["exists"]);
    assert_line(
        &ran,
        &format!("queue {:?}", admin.dead()),
        "WARN",
        &["nothing of it is kept", "declare a durable queue"],
    );
    for block in ["k8s", "k8s-sandbox", "k8s-vm"] {
        assert_line(
            &ran,
            &format!("executor {block} ({host}): permissions"),
            "ok",
            &[],
        );
    }
    // Status updates are on in this mode, and nothing listens at ECOSYSTEM_API.
    assert_line(
        &ran,
        "Screwdriver API (http://127.0.0.1:9)",
        "FAIL",
        &["connection refused", "ECOSYSTEM_API"],
    );
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert!(!ran.all().contains(TOKEN), "a token was printed");

    // The same queues with the worker's own topology configured: refused, with the way out.
    let mut doc = settings_json(&names, &[ExecutorSpec::new("a", &host)], &Knobs::default());
    doc["rabbitmq"]["url"] = json!(AMQP_URL);
    let ran = run(&["check-config", "--connect"], Some(&doc), &[], b"");
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert_line(
        &ran,
        "broker: layout",
        "FAIL",
        &[
            "this is the administrator's Screwdriver layout",
            "declareTopology: false",
        ],
    );
    admin.cleanup(&rabbit).await;
    rabbit.cleanup(&names).await;
}

#[test]
fn check_config_help_shows_the_connect_example() {
    let ran = run(&["check-config", "--help"], None, &[], b"");
    assert_eq!(ran.code, Some(0));
    assert!(ran.stdout.contains("--connect"), "{}", ran.stdout);
    assert!(
        ran.stdout
            .contains("check-config --connect --config worker.yaml"),
        "{}",
        ran.stdout
    );
}
