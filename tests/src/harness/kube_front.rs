//! A Kubernetes API front for preflight tests: bearer-token authentication, `GET /version`
//! and SelfSubjectAccessReviews answered from a set of granted verbs, everything else passed
//! through to a kube-sim cluster (which does the dry-run pod creates, namespaces and
//! RuntimeClasses).
//!
//! kube-sim serves the resources the worker reads and writes, not authentication or
//! authorisation; this front adds just those, answering as kube-apiserver does (a `Status`
//! body with 401 or 403, a review with `status.allowed`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How the front behaves.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// The kube-sim cluster's URL everything else goes to.
    pub upstream: String,
    /// The only bearer token accepted (`None`: any request is let in).
    pub token: Option<String>,
    /// (resource, verb) pairs a review answers as not allowed.
    pub denied: BTreeSet<(String, String)>,
    /// Answer 403 to everything but `/version`.
    pub forbid_all: bool,
}

impl FrontConfig {
    /// A front accepting `token`, granting everything, before `upstream`.
    pub fn new(upstream: &str, token: &str) -> FrontConfig {
        FrontConfig {
            upstream: upstream.trim_end_matches('/').to_string(),
            token: Some(token.to_string()),
            denied: BTreeSet::new(),
            forbid_all: false,
        }
    }

    /// Denies `verb` on `resource` in reviews.
    pub fn deny(mut self, resource: &str, verb: &str) -> FrontConfig {
        self.denied.insert((resource.into(), verb.into()));
        self
    }
}

struct Inner {
    config: FrontConfig,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A running front.
#[derive(Debug)]
pub struct KubeFront {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl KubeFront {
    /// Starts on `127.0.0.1:0`.
    pub async fn start(config: FrontConfig) -> KubeFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("front binds");
        let addr = listener.local_addr().expect("front address");
        let inner = Arc::new(Inner {
            config,
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let app = Router::new().fallback(answer).with_state(inner);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        KubeFront { addr, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its address (for a TLS proxy in front of it).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for KubeFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).expect("a status code"),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn answer(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let config = &inner.config;
    if let Some(token) = &config.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if presented != Some(format!("Bearer {token}").as_str()) {
            return status(401, "Unauthorized", "Unauthorized");
        }
    }
    let path = uri.path();
    if method == Method::GET && path == "/version" {
        let version = json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-front",
            "platform": "linux/amd64"});
        return axum::Json(version).into_response();
    }
    if config.forbid_all {
        return status(
            403,
            "Forbidden",
            &format!("{path} is forbidden: User \"worker\" cannot do this"),
        );
    }
    if method == Method::POST && path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" {
        return review(config, &body);
    }
    forward(&inner, method, &uri, &headers, body).await
}

fn review(config: &FrontConfig, body: &[u8]) -> Response {
    let Ok(mut review) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "not a SelfSubjectAccessReview");
    };
    let attrs = &review["spec"]["resourceAttributes"];
    let key = (
        attrs["resource"].as_str().unwrap_or_default().to_string(),
        attrs["verb"].as_str().unwrap_or_default().to_string(),
    );
    let allowed = !config.denied.contains(&key);
    review["status"] = if allowed {
        json!({"allowed": true, "reason": "RBAC: allowed by RoleBinding"})
    } else {
        json!({"allowed": false})
    };
    (StatusCode::CREATED, axum::Json(review)).into_response()
}

async fn forward(
    inner: &Inner,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let target = format!(
        "{}{}",
        inner.config.upstream,
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut request = http::Request::builder().method(method).uri(target);
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    let request = request.body(Full::new(body)).expect("a request");
    match inner.client.request(request).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::from_parts(parts, Body::from(bytes))
        }
        Err(e) => status(502, "InternalError", &format!("upstream: {e}")),
    }
}
