//! A fake Screwdriver API: an HTTP server on loopback that records every call the worker makes
//! (`PUT <apiUri>/v4/builds/<id>` and anything else) and answers per build.
//!
//! Tests assert exactly which updates were sent, with which bearer token and which body. By
//! default every call gets 200 `{}`; [`FakeApi::reply`] makes one build's calls answer 403, 404,
//! 500 or slowly, as the real API does for a finished build, a deleted one or an outage. It never
//! interprets the bodies beyond recording them: judging them is the test's job.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One call the API received.
#[derive(Debug, Clone)]
pub struct ApiCall {
    /// HTTP method (`PUT`).
    pub method: String,
    /// Request path (`/v4/builds/42`).
    pub path: String,
    /// The `Authorization` header, verbatim (`Bearer <token>`).
    pub authorization: Option<String>,
    /// The body as JSON (`Value::Null` when empty or not JSON).
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
    /// When it arrived, by the wall clock (to compare with timestamps in bodies).
    pub received: jiff::Timestamp,
    /// The status it was answered with.
    pub answered: u16,
}

impl ApiCall {
    /// The build id of a `/v4/builds/<id>` path.
    pub fn build_id(&self) -> Option<u64> {
        build_of_path(&self.path)
    }

    /// True for `status: FAILURE` updates.
    pub fn is_failure(&self) -> bool {
        self.body["status"] == "FAILURE"
    }

    /// `statusMessage`, when the body has one.
    pub fn status_message(&self) -> Option<&str> {
        self.body["statusMessage"].as_str()
    }

    /// True for the `stats.hostname` / `stats.imagePullStartTime` update of a scheduled pod.
    pub fn is_scheduled_stats(&self) -> bool {
        self.body["stats"]["hostname"].is_string()
            && self.body["stats"]["imagePullStartTime"].is_string()
    }
}

/// How the API answers one build's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Delay before answering.
    pub delay: Duration,
    /// `Retry-After` seconds sent with the answer.
    pub retry_after: Option<u32>,
}

impl Reply {
    /// Answer `status` at once.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
            retry_after: None,
        }
    }

    /// Answer `status` with `Retry-After: <seconds>`.
    pub fn retry_after(status: u16, seconds: u32) -> Reply {
        Reply {
            retry_after: Some(seconds),
            ..Reply::status(status)
        }
    }

    /// Answer 200 after `delay` (a slow API).
    pub fn slow(delay: Duration) -> Reply {
        Reply {
            status: 200,
            delay,
            retry_after: None,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    calls: Mutex<Vec<ApiCall>>,
    /// Per build: the answers in order, the last one repeated.
    replies: Mutex<HashMap<u64, Vec<Reply>>>,
    notify: Notify,
}

/// A running fake API.
#[derive(Debug)]
pub struct FakeApi {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl FakeApi {
    /// Starts listening on `127.0.0.1:0`.
    pub async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake API binds");
        let addr = listener.local_addr().expect("fake API address");
        let inner = Arc::new(Inner::default());
        let stop = CancellationToken::new();
        let app = Router::new().fallback(record).with_state(inner.clone());
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
        });
        FakeApi {
            inner,
            addr,
            stop,
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:<port>`: the `apiUri` of the test's messages.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers every later call about `build` with `reply`.
    pub fn reply(&self, build: u64, reply: Reply) {
        self.inner
            .replies
            .lock()
            .unwrap()
            .insert(build, vec![reply]);
    }

    /// How the API answers a build's calls in turn; the last answer is kept for later ones.
    pub fn replies(&self, build: u64, replies: Vec<Reply>) {
        assert!(!replies.is_empty(), "at least one reply");
        self.inner.replies.lock().unwrap().insert(build, replies);
    }

    /// Every call so far, in arrival order.
    pub fn calls(&self) -> Vec<ApiCall> {
        self.inner.calls.lock().unwrap().clone()
    }

    /// The calls about one build.
    pub fn calls_for(&self, build: u64) -> Vec<ApiCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.build_id() == Some(build))
            .collect()
    }

    /// Waits until `done` holds for the calls so far; panics with `what` after `timeout`.
    pub async fn wait(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[ApiCall]) -> bool,
    ) -> Vec<ApiCall> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.inner.notify.notified();
            let calls = self.calls();
            if done(&calls) {
                return calls;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; calls so far: {:#?}",
                    calls
                        .iter()
                        .map(|c| (&c.method, &c.path, c.answered, &c.body))
                        .collect::<Vec<_>>()
                );
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }

    /// Waits for at least `n` calls about `build` and returns them.
    pub async fn wait_for_build(&self, build: u64, n: usize, timeout: Duration) -> Vec<ApiCall> {
        self.wait(
            timeout,
            &format!("{n} calls about build {build}"),
            |calls| calls.iter().filter(|c| c.build_id() == Some(build)).count() >= n,
        )
        .await;
        self.calls_for(build)
    }

    /// Stops the server.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn record(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let reply = build_of_path(&path)
        .and_then(|b| {
            let mut replies = inner.replies.lock().unwrap();
            let queue = replies.get_mut(&b)?;
            Some(if queue.len() > 1 {
                queue.remove(0)
            } else {
                queue[0]
            })
        })
        .unwrap_or(Reply::status(200));
    let call = ApiCall {
        method: method.as_str().to_string(),
        path,
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        at: Instant::now(),
        received: jiff::Timestamp::now(),
        answered: reply.status,
    };
    // Recorded on arrival: a client that gives up on a slow answer still made the call.
    inner.calls.lock().unwrap().push(call);
    inner.notify.notify_waiters();
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // The real API answers errors with a Boom body.
    let body = if status.is_success() {
        serde_json::json!({})
    } else {
        serde_json::json!({"statusCode": reply.status, "error": status.canonical_reason(), "message": "fake API"})
    };
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(seconds) = reply.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, seconds.into());
    }
    response
}

fn build_of_path(path: &str) -> Option<u64> {
    path.strip_prefix("/v4/builds/")?
        .trim_end_matches('/')
        .parse()
        .ok()
}
