//! One Kubernetes call: what an answer means.
//!
//! Every call of the worker to a cluster goes through [`Caller::call`], on the one call path
//! of every outbound request ([`crate::outbound`]: the executor's breaker admits it, the
//! client-side budget paces it, transient failures are retried with exponential backoff and
//! full jitter or `Retry-After`, stopping at once when the breaker opens). Here: a deadline
//! cuts each attempt off, and its answer is classified; refusals are never retried.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::health::{self, Health};
use crate::backoff::parse_retry_after;
use crate::breaker::{Admission, Transition};
use crate::outbound::{Ended, Failure, Guard, Observer, Transient, Tried};
use crate::telemetry::metrics;

/// The RBAC verb of a call (metric label, and what the Role in `deploy/` must grant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// GET one object.
    Get,
    /// GET a collection.
    List,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// DELETE one object.
    Delete,
    /// DELETE a collection.
    DeleteCollection,
}

impl Verb {
    /// The RBAC verb.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }

    /// Whether a failed call might still have changed something (only writes that create).
    fn may_have_written(self) -> bool {
        matches!(self, Verb::Create | Verb::Update)
    }
}

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The breaker refused the call (no request was sent by this attempt).
    #[error("circuit breaker open (retry in {retry_in:?})")]
    BreakerOpen {
        /// When a call may be tried again.
        retry_in: Duration,
        /// An earlier attempt of this call may have written (timeout, 5xx after sending).
        ambiguous: bool,
    },
    /// Infrastructure failure after the retries this call was allowed.
    #[error("cluster unavailable: {message}")]
    Unavailable {
        /// HTTP status of the last attempt, if any.
        status: Option<u16>,
        /// What happened last.
        message: String,
        /// An attempt may have written despite the failure.
        ambiguous: bool,
    },
    /// The send deadline passed before the next attempt: it was not sent.
    #[error("not sent: the send deadline passed")]
    Expired {
        /// An earlier attempt may have written.
        ambiguous: bool,
    },
    /// 409 AlreadyExists.
    #[error("already exists")]
    AlreadyExists,
    /// 409 Conflict (stale resourceVersion).
    #[error("conflict: {0}")]
    Conflict(String),
    /// 404 NotFound.
    #[error("not found: {0}")]
    NotFound(String),
    /// 422 Invalid: the object itself is wrong.
    #[error("invalid: {0}")]
    Invalid(String),
    /// 403 from the RuntimeClass admission: the executor's runtime class does not exist.
    #[error("runtime class not found: {0}")]
    RuntimeClassMissing(String),
    /// 403 because a ResourceQuota is exhausted: wait, do not trip the breaker.
    #[error("resource quota exceeded: {0}")]
    QuotaExceeded(String),
    /// 401/403 otherwise (RBAC, credentials): a configuration error of the executor.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Any other refusal (400, 405, 413, ...), or an answer that cannot be read.
    #[error("refused ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The Status message.
        message: String,
    },
}

impl CallError {
    /// True for failures that say nothing about the object and may pass (retry later).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CallError::BreakerOpen { .. }
                | CallError::Unavailable { .. }
                | CallError::Expired { .. }
                | CallError::QuotaExceeded(_)
        )
    }

    /// True when the call may have written although it failed.
    pub fn is_ambiguous(&self) -> bool {
        matches!(
            self,
            CallError::BreakerOpen {
                ambiguous: true,
                ..
            } | CallError::Unavailable {
                ambiguous: true,
                ..
            } | CallError::Expired { ambiguous: true }
        )
    }

    /// True for errors that mean the executor itself is misconfigured (not the build).
    pub fn is_executor_misconfigured(&self) -> bool {
        matches!(
            self,
            CallError::RuntimeClassMissing(_) | CallError::Forbidden(_)
        )
    }

    /// A bounded label for metrics and retry reasons.
    pub fn label(&self) -> &'static str {
        match self {
            CallError::BreakerOpen { .. } => "breaker_open",
            CallError::Unavailable { .. } => "unavailable",
            CallError::Expired { .. } => "expired",
            CallError::AlreadyExists => "already_exists",
            CallError::Conflict(_) => "conflict",
            CallError::NotFound(_) => "not_found",
            CallError::Invalid(_) => "invalid",
            CallError::RuntimeClassMissing(_) => "runtime_class_not_found",
            CallError::QuotaExceeded(_) => "quota_exceeded",
            CallError::Forbidden(_) => "forbidden",
            CallError::Refused { .. } => "refused",
        }
    }
}

/// The raw answer of one request.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Body bytes.
    pub body: Bytes,
    /// `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
}

/// How one attempt went.
enum Attempt {
    Done(Answer),
    Refused(CallError),
    Transient {
        status: Option<u16>,
        message: String,
        ambiguous: bool,
        retry_after: Option<Duration>,
        code: String,
    },
}

/// A breaker transition of one executor, for metrics, logs and `cluster.*` events.
#[derive(Debug, Clone)]
pub struct BreakerSignal {
    /// The executor.
    pub executor: String,
    /// What changed.
    pub transition: Transition,
}

/// Everything a call needs besides the request: the executor's breaker, budget, backoff and
/// deadline.
#[derive(Clone)]
pub struct Caller {
    /// Executor name (metric label).
    pub executor: String,
    /// The kube client (its own retry is off).
    pub client: kube::Client,
    /// The executor's breaker, budget and retry schedule (the one call path, `outbound`).
    pub guard: Guard,
    /// One attempt slower than this is cut off and counts as a failure.
    pub timeout: Duration,
    /// Where breaker transitions go.
    pub signals: mpsc::UnboundedSender<BreakerSignal>,
    /// What the answers say about the executor's set-up.
    pub health: std::sync::Arc<Health>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("executor", &self.executor)
            .field("breaker", &self.guard.breaker)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Caller {
    /// Sends the request built by `request` (rebuilt for each attempt), retrying transient
    /// failures. A 2xx answer is returned; a refusal is classified.
    pub async fn call(
        &self,
        verb: Verb,
        request: impl Fn() -> Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<Answer, CallError> {
        self.call_as(verb, None, Admission::Guarded, request).await
    }

    /// As [`Caller::call`], but no attempt is sent after `send_by` (the launch protocol's S):
    /// past it the call fails as unavailable, ambiguous only if an earlier attempt was.
    pub async fn call_before(
        &self,
        verb: Verb,
        send_by: Option<Instant>,
        request: impl Fn() -> Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<Answer, CallError> {
        self.call_as(verb, send_by, Admission::Guarded, request)
            .await
    }

    /// As [`Caller::call_before`], asking the breaker as `admission` says.
    pub async fn call_as(
        &self,
        verb: Verb,
        send_by: Option<Instant>,
        admission: Admission,
        request: impl Fn() -> Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<Answer, CallError> {
        let observer = Observed { caller: self, verb };
        let ended = self
            .guard
            .call(send_by, admission, &observer, |_| {
                self.attempt(verb, &request)
            })
            .await;
        ended.map_err(|e| match e {
            Ended::Refused(e) => e,
            Ended::Failed(Failure::BreakerOpen {
                retry_in,
                ambiguous,
            }) => CallError::BreakerOpen {
                retry_in,
                ambiguous,
            },
            Ended::Failed(Failure::Unavailable {
                status,
                message,
                ambiguous,
            }) => CallError::Unavailable {
                status,
                message,
                ambiguous,
            },
            Ended::Failed(Failure::Expired { ambiguous }) => CallError::Expired { ambiguous },
        })
    }

    /// One attempt: sent within the timeout, counted, classified.
    async fn attempt(
        &self,
        verb: Verb,
        request: &impl Fn() -> Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Tried<Answer, CallError> {
        let req = match request() {
            Ok(r) => r,
            Err(e) => {
                return Tried::Refused(CallError::Refused {
                    status: 0,
                    message: format!("cannot build the request: {e}"),
                });
            }
        };
        let started = Instant::now();
        let attempt = match tokio::time::timeout(self.timeout, self.send(verb, req)).await {
            Ok(r) => r,
            Err(_) => Attempt::Transient {
                status: None,
                message: format!("no answer within {:?}", self.timeout),
                ambiguous: verb.may_have_written(),
                retry_after: None,
                code: "timeout".into(),
            },
        };
        let code = match &attempt {
            Attempt::Done(a) => a.status.as_u16().to_string(),
            Attempt::Refused(e) => refused_code(e),
            Attempt::Transient { code, .. } => code.clone(),
        };
        metrics::kube_request(&self.executor, verb.as_str(), &code, started.elapsed());
        match attempt {
            Attempt::Done(a) => Tried::Done(a),
            Attempt::Refused(e) => Tried::Refused(e),
            Attempt::Transient {
                status,
                message,
                ambiguous,
                retry_after,
                ..
            } => Tried::Transient(Transient {
                status,
                message,
                ambiguous: ambiguous && verb.may_have_written(),
                retry_after,
            }),
        }
    }

    fn signal(&self, transition: Transition) {
        let _ = self.signals.send(BreakerSignal {
            executor: self.executor.clone(),
            transition,
        });
    }

    async fn send(&self, verb: Verb, req: http::Request<Vec<u8>>) -> Attempt {
        // Judged only when it can matter (a refusal, or a problem known): no cost otherwise.
        let uri = req.uri().clone();
        let response = match self.client.send(req.map(kube::client::Body::from)).await {
            Ok(r) => r,
            Err(e) => {
                let refused = connection_refused(&e);
                let (seen, text) = health::judge_transport(&e);
                self.health.judge(seen);
                return Attempt::Transient {
                    status: None,
                    message: format!("transport error: {text}"),
                    // A connection that was never made sent nothing.
                    ambiguous: !refused,
                    retry_after: None,
                    code: if refused {
                        "refused".into()
                    } else {
                        "error".into()
                    },
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
        let body = match response.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return Attempt::Transient {
                    status: Some(status.as_u16()),
                    message: format!("reading the answer failed: {e}"),
                    ambiguous: true,
                    retry_after: None,
                    code: status.as_u16().to_string(),
                };
            }
        };
        let attempt = classify(status, body, retry_after);
        let refusal = match &attempt {
            Attempt::Refused(e) => Some(e),
            _ => None,
        };
        if refusal.is_some() || self.health.misconfigured() {
            self.health.judge(health::judge_answer(
                verb,
                health::resource_of(uri.path()),
                status.as_u16(),
                refusal,
            ));
        }
        attempt
    }
}

/// The executor's logs, metrics and breaker signals for its calls.
struct Observed<'a> {
    caller: &'a Caller,
    verb: Verb,
}

impl Observer for Observed<'_> {
    fn transition(&self, transition: Transition) {
        self.caller.signal(transition);
    }

    fn retrying(&self, attempt: u32, failed: &Transient, delay: Duration) {
        debug!(
            executor = %self.caller.executor,
            verb = self.verb.as_str(),
            attempt,
            ?delay,
            message = %failed.message,
            "retrying Kubernetes call"
        );
        let reason = if failed.status == Some(429) {
            "throttled"
        } else {
            "unavailable"
        };
        metrics::retried(&self.caller.executor, reason);
    }

    fn budget_waited(&self, waited: Duration) {
        metrics::budget_wait(&self.caller.executor, waited);
    }
}

/// Classifies a complete answer.
fn classify(status: StatusCode, body: Bytes, retry_after: Option<Duration>) -> Attempt {
    if status.is_success() {
        return Attempt::Done(Answer {
            status,
            body,
            retry_after,
        });
    }
    let parsed: Option<kube::core::Status> = serde_json::from_slice(&body).ok();
    let reason = parsed
        .as_ref()
        .map(|s| s.reason.clone())
        .unwrap_or_default();
    let message = parsed
        .as_ref()
        .map(|s| s.message.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
    let retry_after = retry_after.or_else(|| {
        parsed
            .as_ref()
            .and_then(|s| s.details.as_ref())
            .map(|d| d.retry_after_seconds)
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(u64::from(s)))
    });
    let code = status.as_u16();
    match code {
        409 if reason == "AlreadyExists" => Attempt::Refused(CallError::AlreadyExists),
        409 => Attempt::Refused(CallError::Conflict(message)),
        404 => Attempt::Refused(CallError::NotFound(message)),
        422 => Attempt::Refused(CallError::Invalid(message)),
        403 if message.contains("RuntimeClass") && message.contains("not found") => {
            Attempt::Refused(CallError::RuntimeClassMissing(message))
        }
        403 if message.contains("exceeded quota") => {
            Attempt::Refused(CallError::QuotaExceeded(message))
        }
        401 | 403 => Attempt::Refused(CallError::Forbidden(message)),
        408 | 429 => Attempt::Transient {
            status: Some(code),
            message,
            ambiguous: false,
            retry_after,
            code: code.to_string(),
        },
        500..=599 => Attempt::Transient {
            status: Some(code),
            message,
            ambiguous: true,
            retry_after,
            code: code.to_string(),
        },
        _ => Attempt::Refused(CallError::Refused {
            status: code,
            message,
        }),
    }
}

fn refused_code(e: &CallError) -> String {
    match e {
        CallError::AlreadyExists | CallError::Conflict(_) => "409".into(),
        CallError::NotFound(_) => "404".into(),
        CallError::Invalid(_) => "422".into(),
        CallError::RuntimeClassMissing(_)
        | CallError::QuotaExceeded(_)
        | CallError::Forbidden(_) => "403".into(),
        CallError::Refused { status, .. } => status.to_string(),
        CallError::BreakerOpen { .. }
        | CallError::Unavailable { .. }
        | CallError::Expired { .. } => "error".into(),
    }
}

/// True when the error chain shows the TCP connection was never established.
fn connection_refused(e: &kube::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        if let Some(h) = s.downcast_ref::<hyper_util::client::legacy::Error>()
            && h.is_connect()
        {
            return true;
        }
        source = s.source();
    }
    let text = e.to_string();
    if text.contains("Connection refused") {
        warn!(error = %text, "connection refused without an io::Error in the chain");
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str, message: &str) -> Bytes {
        Bytes::from(
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code})
            .to_string(),
        )
    }

    fn refused(code: u16, reason: &str, message: &str) -> CallError {
        match classify(
            StatusCode::from_u16(code).unwrap(),
            status(code, reason, message),
            None,
        ) {
            Attempt::Refused(e) => e,
            _ => panic!("{code} was not refused"),
        }
    }

    #[test]
    fn user_errors_are_refusals_not_failures() {
        assert_eq!(
            refused(409, "AlreadyExists", "pods \"x\" already exists"),
            CallError::AlreadyExists
        );
        assert!(matches!(
            refused(409, "Conflict", "modified"),
            CallError::Conflict(_)
        ));
        assert!(matches!(
            refused(422, "Invalid", "bad"),
            CallError::Invalid(_)
        ));
        assert!(matches!(
            refused(
                403,
                "Forbidden",
                "pods \"x\" is forbidden: pod rejected: RuntimeClass \"kata\" not found"
            ),
            CallError::RuntimeClassMissing(_)
        ));
        assert!(matches!(
            refused(
                403,
                "Forbidden",
                "pods \"x\" is forbidden: exceeded quota: compute"
            ),
            CallError::QuotaExceeded(_)
        ));
        assert!(matches!(
            refused(403, "Forbidden", "User cannot create pods"),
            CallError::Forbidden(_)
        ));
        assert!(matches!(
            refused(404, "NotFound", "nope"),
            CallError::NotFound(_)
        ));
    }

    #[test]
    fn infrastructure_errors_are_transient_and_429_is_not_ambiguous() {
        match classify(
            StatusCode::TOO_MANY_REQUESTS,
            status(429, "TooManyRequests", "slow down"),
            Some(Duration::from_secs(1)),
        ) {
            Attempt::Transient {
                ambiguous,
                retry_after,
                ..
            } => {
                assert!(!ambiguous);
                assert_eq!(retry_after, Some(Duration::from_secs(1)));
            }
            _ => panic!("429 must be transient"),
        }
        for code in [500, 502, 503, 504] {
            match classify(
                StatusCode::from_u16(code).unwrap(),
                Bytes::from_static(b"oops"),
                None,
            ) {
                Attempt::Transient { ambiguous, .. } => assert!(ambiguous),
                _ => panic!("{code} must be transient"),
            }
        }
    }

    #[test]
    fn retry_after_falls_back_to_status_details() {
        let body = Bytes::from(
            serde_json::json!({"kind": "Status", "status": "Failure", "message": "m", "reason": "TooManyRequests",
                "code": 429, "details": {"retryAfterSeconds": 3}})
            .to_string(),
        );
        match classify(StatusCode::TOO_MANY_REQUESTS, body, None) {
            Attempt::Transient { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(3)))
            }
            _ => panic!("429 must be transient"),
        }
    }
}
