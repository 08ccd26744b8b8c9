//! The `kube-sim` binary: start-up line, control API, SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use bcw_tests::kube_sim::{ClusterInfo, ControlClient, Fault, Verb};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::api_error;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_prints_its_endpoints_and_obeys_the_control_api() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-sim"))
        .args([
            "--cluster",
            "a",
            "--cluster",
            "b:kata,kata-qemu",
            "--kubeconfig-dir",
        ])
        .arg(dir.path())
        .args([
            "--schedule-after-ms",
            "10",
            "--start-after-ms",
            "20",
            "--run-forever",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a start-up line")
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON line");
    let clusters: std::collections::BTreeMap<String, ClusterInfo> =
        serde_json::from_value(v["clusters"].clone()).unwrap();
    assert_eq!(clusters.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert!(clusters["b"].kubeconfig.starts_with(dir.path()));

    let control = ControlClient::new(v["control"].as_str().unwrap());
    assert_eq!(control.clusters().await.unwrap(), clusters);
    control
        .inject("a", &Fault::status(503).on_verbs([Verb::List]).count(1))
        .await
        .unwrap();
    let mut cfg = kube::Config::new(clusters["a"].url.parse().unwrap());
    cfg.default_retry = false;
    let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(cfg).unwrap(), "default");
    assert_eq!(api_error(pods.list(&ListParams::default()).await).code, 503);
    pods.list(&ListParams::default()).await.unwrap();
    let requests = control.request_log("a").await.unwrap();
    assert_eq!(
        requests.iter().map(|r| r.code).collect::<Vec<_>>(),
        [Some(503), Some(200)]
    );
    assert!(
        control.inject("nope", &Fault::status(500)).await.is_err(),
        "unknown clusters are 404s"
    );

    kill(
        Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
