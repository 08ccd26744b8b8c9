//! The HTTP API of a simulated cluster: request classification, per-request latency and
//! faults, the request log, and routing to the resource handlers.
//!
//! Owns the request/response plumbing only; object semantics live in `generic` (shared by
//! every resource), `kinds` (per-resource rules) and `pods` (graceful deletion). It never
//! sleeps while holding the store lock.

mod delete;
mod discovery;
mod kinds;
mod list;
mod pods;
mod write;

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::cluster::{ClusterInner, RequestRecord, lock, now_rfc3339};
use super::faults::{Decision, Effect, Verb};
use super::request::{Query, RequestInfo};
use super::status::ApiError;
use super::store::ResourceKind;

pub use kinds::ApiObject;

/// A response of the simulated API.
pub type Resp = Response<Body>;

/// Largest request body the API server accepts.
const MAX_BODY: usize = 3 * 1024 * 1024;

fn with_common_headers(mut r: Resp, content_type: &'static str) -> Resp {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    r
}

/// A JSON response.
pub fn json(code: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Body::from(body.into()));
    *r.status_mut() = code;
    with_common_headers(r, "application/json")
}

/// A streaming JSON response (watch) fed by `rx`.
pub fn json_stream(rx: mpsc::Receiver<Bytes>) -> Resp {
    let mut r = Response::new(super::watch::body_of(rx));
    *r.status_mut() = StatusCode::OK;
    with_common_headers(r, "application/json")
}

/// A plain-text response.
pub fn text(code: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = code;
    with_common_headers(r, "text/plain; charset=utf-8")
}

/// The response of an API error (with `Retry-After` when it has one).
pub fn error(e: &ApiError) -> Resp {
    let mut r = json(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        e.to_json(),
    );
    if let Some(secs) = e.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// Reads a request body up to the server's limit.
pub async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large(MAX_BODY))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "unable to read the request body: {e}"
        ))),
    }
}

/// Handles one HTTP request to a cluster's API.
pub async fn handle(cluster: Arc<ClusterInner>, req: hyper::Request<Incoming>) -> Resp {
    let latency = *lock(&cluster.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (parts, body) = req.into_parts();
    let query = Query::parse(parts.uri.query());
    let path = parts.uri.path().to_owned();
    let info = RequestInfo::parse(&parts.method, &path, &query);
    let mut record = RequestRecord {
        verb: info.as_ref().map_or("get", |i| i.verb.as_str()).to_owned(),
        resource: info
            .as_ref()
            .map(|i| i.resource.clone())
            .unwrap_or_default(),
        subresource: info.as_ref().and_then(|i| i.subresource.clone()),
        namespace: info.as_ref().and_then(|i| i.namespace.clone()),
        name: info.as_ref().and_then(|i| i.name.clone()),
        method: parts.method.to_string(),
        path: path.clone(),
        code: None,
        time: now_rfc3339(),
    };
    let decision = match &info {
        Some(i) => lock(&cluster.faults).decide(i.verb, &i.resource, Instant::now()),
        None => Decision::default(),
    };
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
    let commit = match &decision.effect {
        None => true,
        Some(Effect::Fail { after_commit, .. } | Effect::Hang { after_commit }) => *after_commit,
    };
    let response = if commit {
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let user_agent = parts.headers.get(header::USER_AGENT);
        let manager = super::managed::manager_of(
            query.get("fieldManager"),
            user_agent.and_then(|v| v.to_str().ok()),
        );
        let request = Request {
            info: info.as_ref(),
            query: &query,
            content_type: &content_type,
            manager: &manager,
        };
        Some(dispatch(&cluster, &parts.method, &path, request, body).await)
    } else {
        None
    };
    match (decision.effect, response) {
        (Some(Effect::Fail { error: e, .. }), _) => {
            record.code = Some(e.code);
            cluster.log_request(record);
            error(&e)
        }
        (Some(Effect::Hang { .. }), _) => {
            cluster.log_request(record);
            std::future::pending::<Resp>().await
        }
        (None, Some(r)) => {
            record.code = Some(r.status().as_u16());
            cluster.log_request(record);
            r
        }
        (None, None) => error(&ApiError::internal("no response")),
    }
}

/// What the handlers read of a request besides its body.
#[derive(Clone, Copy)]
struct Request<'a> {
    info: Option<&'a RequestInfo>,
    query: &'a Query,
    content_type: &'a str,
    /// The field manager a write is recorded under (`managedFields`).
    manager: &'a str,
}

async fn dispatch(
    cluster: &Arc<ClusterInner>,
    method: &Method,
    path: &str,
    request: Request<'_>,
    body: Incoming,
) -> Resp {
    let Some(info) = request.info else {
        return discovery::handle(cluster, method, path);
    };
    let result = match info.kind {
        None => Err(ApiError::path_not_found()),
        Some(ResourceKind::Pods) => route::<Pod>(cluster, info, request, body).await,
        Some(ResourceKind::Secrets) => route::<Secret>(cluster, info, request, body).await,
        Some(ResourceKind::Leases) => route::<Lease>(cluster, info, request, body).await,
    };
    result.unwrap_or_else(|e| error(&e))
}

async fn route<K: ApiObject>(
    cluster: &Arc<ClusterInner>,
    info: &RequestInfo,
    request: Request<'_>,
    body: Incoming,
) -> Result<Resp, ApiError> {
    let Request {
        query,
        content_type,
        manager,
        ..
    } = request;
    let ns = info.namespace.as_deref();
    match info.subresource.as_deref() {
        None => {}
        Some("status") if K::RESOURCE == ResourceKind::Pods && info.verb == Verb::Get => {}
        Some("status") if K::RESOURCE == ResourceKind::Pods => {
            return Err(ApiError::method_not_allowed());
        }
        Some(_) => return Err(ApiError::path_not_found()),
    }
    match (info.verb, ns, info.name.as_deref()) {
        (Verb::List, _, None) => list::list::<K>(cluster, ns, query).await,
        (Verb::Watch, _, name) => list::watch::<K>(cluster, ns, name, query).await,
        (Verb::Get, Some(ns), Some(name)) => list::get::<K>(cluster, ns, name),
        (Verb::Create, Some(ns), None) => {
            let body = read_body(body).await?;
            write::create::<K>(cluster, ns, query, &body, manager)
        }
        (Verb::Update, Some(ns), Some(name)) => {
            let body = read_body(body).await?;
            write::update::<K>(cluster, ns, name, &body, manager)
        }
        (Verb::Patch, Some(ns), Some(name)) => {
            let body = read_body(body).await?;
            write::patch::<K>(cluster, ns, name, content_type, &body, manager)
        }
        (Verb::Delete, Some(ns), Some(name)) => {
            let body = read_body(body).await?;
            K::delete(cluster, ns, name, query, &body)
        }
        (Verb::Deletecollection, Some(ns), None) => {
            let body = read_body(body).await?;
            delete::delete_collection::<K>(cluster, ns, query, &body)
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}
