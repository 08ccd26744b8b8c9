//! Helpers: starting a sim, kube clients without retries, build pods, bounded waiting.

use std::future::Future;
use std::time::Duration;

use bcw_tests::kube_sim::{ClusterConfig, ClusterHandle, KubeSim, SimConfig, Timeline};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::Client;
use kube::core::Status;
use serde_json::json;
use tokio::time::Instant;

/// Namespace the tests create their objects in.
pub const NS: &str = "builds";

/// Starts a sim with these clusters.
pub async fn start(clusters: Vec<ClusterConfig>) -> KubeSim {
    let _ = rustls::crypto::ring::default_provider().install_default();
    KubeSim::start(SimConfig {
        clusters,
        ..SimConfig::default()
    })
    .await
    .expect("kube-sim starts")
}

/// Starts a sim with one cluster "a" knowing RuntimeClass "kata".
pub async fn start_one(timeline: Timeline) -> (KubeSim, ClusterHandle) {
    let sim = start(vec![
        ClusterConfig::new("a")
            .with_runtime_classes(["kata"])
            .with_timeline(timeline),
    ])
    .await;
    let a = sim.cluster("a");
    (sim, a)
}

/// A kube client of `c` without kube's own retries.
pub fn client(c: &ClusterHandle) -> Client {
    c.client()
}

/// A kube client of `c` whose reads give up after `timeout`.
pub fn client_with_timeout(c: &ClusterHandle, timeout: Duration) -> Client {
    let mut cfg = c.kube_config();
    cfg.read_timeout = Some(timeout);
    Client::try_from(cfg).expect("client")
}

/// A pod shaped like the worker's build pods.
pub fn build_pod(name: &str, image: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "screwdriver", "tier": "builds", "sdbuild": name}},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [{"name": "launcher", "image": "screwdrivercd/launcher:stable"}],
            "containers": [{"name": "build", "image": image,
                            "resources": {"limits": {"cpu": "2", "memory": "2Gi"}, "requests": {"cpu": "2", "memory": "2Gi"}}}]
        }
    }))
    .expect("pod json")
}

/// Polls `f` every 10 ms until it answers `Some`, for at most 10 s.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The Status of an API error; panics on any other error.
pub fn api_error<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> Box<Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// status.phase.
pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Status of the build (first) container.
pub fn build_status(p: &Pod) -> Option<&ContainerStatus> {
    p.status.as_ref()?.container_statuses.as_ref()?.first()
}

/// A raw HTTP request to the cluster: status, headers and body.
pub async fn raw(
    c: &ClusterHandle,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, http::HeaderMap, serde_json::Value) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client as HttpClient;
    use hyper_util::rt::TokioExecutor;
    let http: HttpClient<_, Full<bytes::Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", c.url()))
        .header("content-type", content_type)
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .expect("request");
    let resp = http.request(req).await.expect("raw request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, value)
}
