//! The control API server (axum).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ClusterInfo;
use crate::kube_sim::cluster::ClusterHandle;
use crate::kube_sim::config::Timeline;
use crate::kube_sim::faults::{Fault, FaultId};
use crate::kube_sim::script::ScriptRule;

type Clusters = std::sync::Arc<Vec<ClusterHandle>>;

fn no_cluster(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("no cluster named {name:?}")})),
    )
        .into_response()
}

/// Runs `f` on the named cluster, or answers 404.
async fn with<F, Fut>(clusters: &Clusters, name: &str, f: F) -> Response
where
    F: FnOnce(ClusterHandle) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    match clusters.iter().find(|c| c.name() == name).cloned() {
        Some(c) => f(c).await,
        None => no_cluster(name),
    }
}

fn done() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The cluster table of `GET /clusters` (and of the binary's start-up line).
pub fn cluster_table(clusters: &[ClusterHandle]) -> BTreeMap<String, ClusterInfo> {
    clusters
        .iter()
        .map(|c| {
            (
                c.name().to_owned(),
                ClusterInfo {
                    url: c.url(),
                    kubeconfig: c.kubeconfig_path(),
                },
            )
        })
        .collect()
}

#[derive(Deserialize)]
struct Latency {
    ms: u64,
}

async fn list_clusters(State(cs): State<Clusters>) -> Json<BTreeMap<String, ClusterInfo>> {
    Json(cluster_table(&cs))
}

async fn inject(
    State(cs): State<Clusters>,
    Path(name): Path<String>,
    Json(fault): Json<Fault>,
) -> Response {
    with(&cs, &name, |c| async move {
        if let Err(e) = fault.check() {
            return (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response();
        }
        let id = c.inject(fault);
        (StatusCode::CREATED, Json(json!({"id": id.0}))).into_response()
    })
    .await
}

async fn clear_faults(State(cs): State<Clusters>, Path(name): Path<String>) -> Response {
    with(&cs, &name, |c| async move {
        c.clear_faults();
        done()
    })
    .await
}

async fn remove_fault(
    State(cs): State<Clusters>,
    Path((name, id)): Path<(String, u64)>,
) -> Response {
    with(&cs, &name, |c| async move {
        if c.remove_fault(FaultId(id)) {
            done()
        } else {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": format!("no fault {id}")})),
            )
                .into_response()
        }
    })
    .await
}

async fn add_script(
    State(cs): State<Clusters>,
    Path(name): Path<String>,
    Json(rule): Json<ScriptRule>,
) -> Response {
    with(&cs, &name, |c| async move {
        c.add_script(rule);
        done()
    })
    .await
}

async fn clear_scripts(State(cs): State<Clusters>, Path(name): Path<String>) -> Response {
    with(&cs, &name, |c| async move {
        c.clear_scripts();
        done()
    })
    .await
}

async fn set_latency(
    State(cs): State<Clusters>,
    Path(name): Path<String>,
    Json(l): Json<Latency>,
) -> Response {
    with(&cs, &name, |c| async move {
        c.set_latency(Duration::from_millis(l.ms));
        done()
    })
    .await
}

async fn set_timeline(
    State(cs): State<Clusters>,
    Path(name): Path<String>,
    Json(t): Json<Timeline>,
) -> Response {
    with(&cs, &name, |c| async move {
        c.set_timeline(t);
        done()
    })
    .await
}

async fn get_timeline(State(cs): State<Clusters>, Path(name): Path<String>) -> Response {
    with(
        &cs,
        &name,
        |c| async move { Json(c.timeline()).into_response() },
    )
    .await
}

async fn creates(State(cs): State<Clusters>, Path(name): Path<String>) -> Response {
    with(&cs, &name, |c| async move {
        Json(c.create_log()).into_response()
    })
    .await
}

async fn requests(State(cs): State<Clusters>, Path(name): Path<String>) -> Response {
    with(&cs, &name, |c| async move {
        Json(c.request_log()).into_response()
    })
    .await
}

async fn clear_logs(State(cs): State<Clusters>, Path(name): Path<String>) -> Response {
    with(&cs, &name, |c| async move {
        c.clear_logs();
        done()
    })
    .await
}

async fn pods(State(cs): State<Clusters>, Path(name): Path<String>) -> Response {
    with(
        &cs,
        &name,
        |c| async move { Json(c.pods()).into_response() },
    )
    .await
}

async fn secrets(State(cs): State<Clusters>, Path(name): Path<String>) -> Response {
    with(
        &cs,
        &name,
        |c| async move { Json(c.secrets()).into_response() },
    )
    .await
}

async fn leases(State(cs): State<Clusters>, Path(name): Path<String>) -> Response {
    with(
        &cs,
        &name,
        |c| async move { Json(c.leases()).into_response() },
    )
    .await
}

async fn stop_listener(State(cs): State<Clusters>, Path(name): Path<String>) -> Response {
    with(&cs, &name, |c| async move {
        c.stop_listener().await;
        done()
    })
    .await
}

async fn start_listener(State(cs): State<Clusters>, Path(name): Path<String>) -> Response {
    with(&cs, &name, |c| async move {
        c.start_listener().await;
        done()
    })
    .await
}

async fn compact(State(cs): State<Clusters>, Path(name): Path<String>) -> Response {
    with(&cs, &name, |c| async move {
        c.compact();
        done()
    })
    .await
}

async fn reset(State(cs): State<Clusters>, Path(name): Path<String>) -> Response {
    with(&cs, &name, |c| async move {
        c.reset().await;
        done()
    })
    .await
}

async fn delete_now(
    State(cs): State<Clusters>,
    Path((name, ns, pod)): Path<(String, String, String)>,
) -> Response {
    with(&cs, &name, |c| async move {
        if c.delete_pod_now(&ns, &pod) {
            done()
        } else {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": format!("no pod {ns}/{pod}")})),
            )
                .into_response()
        }
    })
    .await
}

/// Binds the control API on `127.0.0.1:port` and serves it until `stop`.
pub async fn serve(
    port: u16,
    clusters: Vec<ClusterHandle>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let app = Router::new()
        .route("/clusters", get(list_clusters))
        .route("/clusters/{name}/faults", post(inject).delete(clear_faults))
        .route("/clusters/{name}/faults/{id}", delete(remove_fault))
        .route(
            "/clusters/{name}/scripts",
            post(add_script).delete(clear_scripts),
        )
        .route("/clusters/{name}/latency", post(set_latency))
        .route(
            "/clusters/{name}/timeline",
            post(set_timeline).get(get_timeline),
        )
        .route("/clusters/{name}/creates", get(creates))
        .route(
            "/clusters/{name}/requests",
            get(requests).delete(clear_logs),
        )
        .route("/clusters/{name}/pods", get(pods))
        .route(
            "/clusters/{name}/pods/{ns}/{pod}/delete-now",
            post(delete_now),
        )
        .route("/clusters/{name}/secrets", get(secrets))
        .route("/clusters/{name}/leases", get(leases))
        .route("/clusters/{name}/listener/stop", post(stop_listener))
        .route("/clusters/{name}/listener/start", post(start_listener))
        .route("/clusters/{name}/compact", post(compact))
        .route("/clusters/{name}/reset", post(reset))
        .with_state(std::sync::Arc::new(clusters));
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok((addr, task))
}
