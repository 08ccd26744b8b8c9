//! Build status updates to the Screwdriver API: `PUT <apiUri>/v4/builds/<id>` with the build's
//! own token, as the original worker and executor-k8s send them.
//!
//! The API has a breaker of its own (it is not a cluster) on the one call path of every
//! outbound request ([`crate::outbound`]: retries on backoff or `Retry-After`, stopping when
//! the breaker opens). 403 and 404 mean the build already finished or is gone; any other 4xx
//! but 408 and 429 would be refused again: neither is retried. An update never fails a
//! message: a build whose status could not be updated is still launched, stopped or
//! dead-lettered as it should.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, parse_retry_after};
use crate::breaker::{Admission, BreakerPolicy, SharedBreaker, Transition};
use crate::config::StatusUpdateSettings;
use crate::intake::{BuildId, StartBuild};
use crate::outbound::{Ended, Failure, Guard, Observer, Transient, Tried};
use crate::secret::Secret;
use crate::telemetry::metrics;

/// Screwdriver's message for a build waiting for the scheduler.
pub const WAITING_MESSAGE: &str = "Waiting for resources to be available.";

/// One update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The build cannot run: `status: FAILURE` with a sentence for the user.
    Failure(String),
    /// The pod waits for a node.
    Waiting,
    /// The pod was scheduled: `stats.hostname` and `stats.imagePullStartTime`.
    Scheduled {
        /// Node name.
        hostname: String,
        /// When the image pull started (RFC 3339).
        image_pull_start: String,
    },
}

impl Update {
    fn body(&self) -> serde_json::Value {
        match self {
            Update::Failure(msg) => json!({"status": "FAILURE", "statusMessage": msg}),
            Update::Waiting => json!({"statusMessage": WAITING_MESSAGE}),
            Update::Scheduled {
                hostname,
                image_pull_start,
            } => json!({"stats": {"hostname": hostname, "imagePullStartTime": image_pull_start}}),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Update::Failure(_) => "failure",
            Update::Waiting => "waiting",
            Update::Scheduled { .. } => "scheduled",
        }
    }
}

/// How an update ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The API took it.
    Accepted,
    /// 403/404: the build already finished or does not exist; nothing to do.
    Gone,
}

/// Why an update did not reach the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// The API's breaker is open.
    #[error("Screwdriver API breaker open")]
    BreakerOpen,
    /// The API refused the update for good (4xx other than 403/404/408/429).
    #[error("refused with {0}")]
    Refused(u16),
    /// Transient failures, retries exhausted.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The apiUri is not usable.
    #[error("bad apiUri: {0}")]
    BadUri(String),
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Sends status updates.
#[derive(Debug, Clone)]
pub struct StatusUpdater {
    client: HttpClient,
    guard: Guard,
    timeout: Duration,
}

impl StatusUpdater {
    /// An updater; the CA bundle (if any) is added to the web PKI roots.
    pub fn new(settings: &StatusUpdateSettings) -> Result<Arc<Self>, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if !settings.ca_file.is_empty() {
            for cert in CertificateDer::pem_file_iter(&settings.ca_file)
                .map_err(|e| format!("{}: {e}", settings.ca_file))?
            {
                let cert = cert.map_err(|e| format!("{}: {e}", settings.ca_file))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", settings.ca_file))?;
            }
        }
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let backoff = Backoff::for_requests(&settings.retry, settings.retry.retry_delay * 8)
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(Self {
            client,
            guard: Guard {
                breaker: SharedBreaker::new(BreakerPolicy::from_settings(&settings.breaker)),
                budget: None,
                backoff,
            },
            timeout: settings.breaker.timeout,
        }))
    }

    /// `GET <api>/v4/status` once, without breaker or retry: the status the API answers, or
    /// why none came (used by `check-config --connect`; the same client, so the same TLS).
    pub async fn reach(&self, api: &str) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
        let uri: http::Uri = format!("{}/v4/status", api.trim_end_matches('/')).parse()?;
        let request = http::Request::get(uri).body(Full::new(Bytes::new()))?;
        let resp = self.client.request(request).await?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Ok(status)
    }

    /// Sends an update about a build from a message; failures are logged, never returned.
    pub async fn send(&self, build: &StartBuild, update: Update) {
        self.send_to(&build.api_uri, build.build_id, &build.token, update)
            .await;
    }

    /// Sends an update; failures are logged, never returned.
    pub async fn send_to(&self, api_uri: &str, build: BuildId, token: &Secret, update: Update) {
        let label = update.label();
        match self.put(api_uri, build, token, &update).await {
            Ok(Sent::Accepted) => {
                metrics::status_update("accepted");
                debug!(update = label, "build status updated");
            }
            Ok(Sent::Gone) => {
                metrics::status_update("gone");
                debug!(
                    update = label,
                    "build already finished or gone; status not updated"
                );
            }
            Err(e) => {
                metrics::status_update("failed");
                warn!(update = label, error = %e, "build status update failed");
            }
        }
    }

    /// `PUT <apiUri>/v4/builds/<id>`, retried while transient and the breaker is closed.
    pub async fn put(
        &self,
        api_uri: &str,
        build: BuildId,
        token: &Secret,
        update: &Update,
    ) -> Result<Sent, StatusError> {
        let url = format!("{}/v4/builds/{}", api_uri.trim_end_matches('/'), build);
        let uri: http::Uri = url
            .parse()
            .map_err(|e| StatusError::BadUri(format!("{e}")))?;
        let body = Bytes::from(update.body().to_string());
        let ended = self
            .guard
            .call(None, Admission::Guarded, &ApiObserver, |_| {
                self.attempt(&uri, token, &body)
            })
            .await;
        ended.map_err(|e| match e {
            Ended::Refused(e) => e,
            Ended::Failed(Failure::BreakerOpen { .. }) => StatusError::BreakerOpen,
            Ended::Failed(Failure::Unavailable { message, .. }) => {
                StatusError::Unavailable(message)
            }
            Ended::Failed(Failure::Expired { .. }) => {
                StatusError::Unavailable("not sent in time".into())
            }
        })
    }

    /// One PUT within the timeout, its answer classified.
    async fn attempt(
        &self,
        uri: &http::Uri,
        token: &Secret,
        body: &Bytes,
    ) -> Tried<Sent, StatusError> {
        let request = match http::Request::put(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.expose()),
            )
            .body(Full::new(body.clone()))
        {
            Ok(r) => r,
            Err(e) => return Tried::Refused(StatusError::BadUri(e.to_string())),
        };
        let exchange = async {
            let resp = self.client.request(request).await?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
            // Drain the body so the connection can be reused.
            let _ = resp.into_body().collect().await;
            Ok::<_, hyper_util::client::legacy::Error>((status, retry_after))
        };
        let transient = |status, message, retry_after| {
            // A PUT of the same status is idempotent: a repeat is harmless.
            Tried::Transient(Transient {
                status,
                message,
                ambiguous: false,
                retry_after,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok((status, retry_after))) => match answer(status) {
                Answer::Accepted => Tried::Done(Sent::Accepted),
                Answer::Gone => Tried::Done(Sent::Gone),
                Answer::Refused => Tried::Refused(StatusError::Refused(status)),
                Answer::Transient => {
                    transient(Some(status), format!("status {status}"), retry_after)
                }
            },
            Ok(Err(e)) => transient(None, format!("transport error: {e}"), None),
            Err(_) => transient(None, format!("no answer within {:?}", self.timeout), None),
        }
    }
}

/// The Screwdriver API's breaker said in the log (it has no `cluster.*` events: it is not a
/// cluster).
struct ApiObserver;

impl Observer for ApiObserver {
    fn transition(&self, transition: Transition) {
        match transition {
            Transition::Opened { open_for, .. } => {
                warn!(
                    ?open_for,
                    "Screwdriver API breaker opened: status updates wait"
                );
            }
            Transition::HalfOpened => debug!("Screwdriver API breaker half-open"),
            Transition::Closed => info!("Screwdriver API breaker closed"),
        }
    }

    fn retrying(&self, attempt: u32, failed: &Transient, delay: Duration) {
        debug!(attempt, ?delay, message = %failed.message, "retrying status update");
    }
}

/// What an HTTP status from the Screwdriver API means for an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// 2xx.
    Accepted,
    /// 403 or 404: the build finished or does not exist.
    Gone,
    /// 5xx, 408 or 429: worth another try.
    Transient,
    /// Any other status: the same request would be refused again.
    Refused,
}

fn answer(status: u16) -> Answer {
    match status {
        200..=299 => Answer::Accepted,
        403 | 404 => Answer::Gone,
        408 | 429 | 500..=599 => Answer::Transient,
        _ => Answer::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_server_errors_timeouts_and_throttling_are_retried() {
        assert_eq!(answer(200), Answer::Accepted);
        assert_eq!(answer(204), Answer::Accepted);
        assert_eq!(answer(403), Answer::Gone);
        assert_eq!(answer(404), Answer::Gone);
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(answer(s), Answer::Transient, "{s}");
        }
        // A body too large (413) or an invalid one (400, 422) would be refused again.
        for s in [400, 401, 409, 413, 422, 301] {
            assert_eq!(answer(s), Answer::Refused, "{s}");
        }
    }

    #[test]
    fn each_update_has_the_body_screwdriver_expects() {
        assert_eq!(
            Update::Failure("no cluster".into()).body(),
            json!({"status": "FAILURE", "statusMessage": "no cluster"})
        );
        assert_eq!(
            Update::Waiting.body(),
            json!({"statusMessage": WAITING_MESSAGE})
        );
        let scheduled = Update::Scheduled {
            hostname: "node-1".into(),
            image_pull_start: "2026-12-06T12:00:00Z".into(),
        };
        assert_eq!(
            scheduled.body(),
            json!({"stats": {"hostname": "node-1", "imagePullStartTime": "2026-12-06T12:00:00Z"}})
        );
    }
}
