//! The operations HTTP server: `/healthz`, `/readyz` and `/metrics` (docs/interface.md §8), and
//! the original buildcluster-queue-worker's `/health`, so its Deployment's probes keep working.
//!
//! Serves state owned elsewhere (readiness flags, the Prometheus handle); it never changes it.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::{NotReady, Readiness};

#[derive(Clone)]
struct AppState {
    readiness: Readiness,
    metrics: Option<PrometheusHandle>,
}

/// The router, for tests and for [`serve`].
pub fn router(readiness: Readiness, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        // The original's liveness path and body. It answered 503 while the broker connection
        // was down, which made the kubelet restart a worker that reconnects by itself: here it
        // means alive, as `/healthz`; broker trouble shows on `/readyz`.
        .route("/health", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { readiness, metrics })
}

/// The first line is the state (docs/interface.md §8); the lines after it say what else keeps
/// builds from this replica: executors that cannot take them, builds waiting for one.
async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let (status, first) = match s.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(NotReady::NotConsuming) => (StatusCode::SERVICE_UNAVAILABLE, "not consuming"),
        Err(NotReady::Draining) => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
    };
    let mut body = format!("{first}\n");
    for note in s.readiness.notes() {
        body.push_str(&note);
        body.push('\n');
    }
    (status, body)
}

async fn render_metrics(State(s): State<AppState>) -> impl IntoResponse {
    let body = s
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// Binds the listener (so the caller learns the port before serving).
pub async fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((host, port)).await
}

/// Serves until `stop` is cancelled. The metrics recorder's upkeep runs alongside (histograms
/// grow without it).
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    metrics: Option<PrometheusHandle>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    // The recorder's upkeep runs beside the server and ends with it, so shutdown waits for both.
    let upkeep = {
        let (handle, stop) = (metrics.clone(), stop.clone());
        async move {
            let Some(handle) = handle else { return };
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => handle.run_upkeep(),
                    _ = stop.cancelled() => return,
                }
            }
        }
    };
    let server = axum::serve(listener, router(readiness, metrics))
        .with_graceful_shutdown(stop.cancelled_owned())
        .into_future();
    let (served, ()) = tokio::join!(server, upkeep);
    served
}

/// The address a listener is bound to.
pub fn local_addr(listener: &TcpListener) -> std::io::Result<SocketAddr> {
    listener.local_addr()
}
