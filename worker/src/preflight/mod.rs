//! Preflight: whether the configuration, as it would run, reaches what it needs (the broker
//! and its layout, every executor's cluster, the Screwdriver API), and why not.
//!
//! Every check is free of side effects (passive declares, dry runs, access reviews, a GET) and
//! returns typed results with a fix for each failure: `check-config --connect` prints them one
//! line each, and the worker can log the executor findings at start-up
//! ([`executor::check`]). It never changes the broker or a cluster and never prints a secret.

pub mod access;
pub mod api;
pub mod broker;
pub mod executor;

use crate::config::Settings;

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Pass,
    /// Works, but worth knowing (not a failure: the exit code stays 0).
    Warn,
    /// Will not work as configured.
    Fail,
    /// Not checked, because an earlier check failed.
    Skip,
}

impl Status {
    /// The column printed first.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One printed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// How it ended.
    pub status: Status,
    /// What was checked (`broker: queue "default"`, `executor k8s (https://...): namespace`).
    pub what: String,
    /// What was seen.
    pub detail: String,
    /// What to do, for failures and warnings.
    pub fix: Option<String>,
}

impl Line {
    fn new(status: Status, what: impl Into<String>, detail: impl Into<String>) -> Line {
        Line {
            status,
            what: what.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    fn with_fix(mut self, fix: impl Into<String>) -> Line {
        self.fix = Some(fix.into());
        self
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<4}  {}: {}",
            self.status.as_str(),
            self.what,
            self.detail
        )?;
        if let Some(fix) = &self.fix {
            write!(f, ". Fix: {fix}")?;
        }
        Ok(())
    }
}

/// Why a connection or a request failed (the transport and HTTP causes shared by the
/// executor and API checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The client cannot even be built (kubeconfig unreadable, host not a URL).
    ClientSetup,
    /// The server's certificate is signed by a CA the worker does not trust.
    TlsUnknownIssuer,
    /// The certificate is unusable otherwise (wrong name, expired, malformed).
    TlsBadCertificate,
    /// The host name does not resolve.
    UnknownHost,
    /// Nothing listens at the address.
    ConnectionRefused,
    /// No answer in time.
    Timeout,
    /// 401: the credentials were refused.
    Unauthorized,
    /// 403: the identity may not do what was asked.
    Forbidden,
    /// The jobs namespace does not exist.
    NamespaceMissing,
    /// The configured RuntimeClass does not exist.
    RuntimeClassMissing,
    /// Some verbs the worker needs are not allowed.
    VerbsDenied,
    /// Any other answer or failure.
    Unexpected,
}

impl Cause {
    /// A bounded label (metrics, logs).
    pub fn label(self) -> &'static str {
        match self {
            Cause::ClientSetup => "client_setup",
            Cause::TlsUnknownIssuer => "tls_unknown_issuer",
            Cause::TlsBadCertificate => "tls_bad_certificate",
            Cause::UnknownHost => "unknown_host",
            Cause::ConnectionRefused => "connection_refused",
            Cause::Timeout => "timeout",
            Cause::Unauthorized => "unauthorized",
            Cause::Forbidden => "forbidden",
            Cause::NamespaceMissing => "namespace_missing",
            Cause::RuntimeClassMissing => "runtime_class_missing",
            Cause::VerbsDenied => "verbs_denied",
            Cause::Unexpected => "unexpected",
        }
    }
}

impl Cause {
    /// What it means, in a few words (the first part of a finding's detail).
    pub fn summary(self) -> &'static str {
        match self {
            Cause::ClientSetup => "the client cannot be set up",
            Cause::TlsUnknownIssuer => {
                "TLS: the server's certificate is signed by a CA the worker does not trust"
            }
            Cause::TlsBadCertificate => "TLS: the server's certificate is not valid for it",
            Cause::UnknownHost => "the host name does not resolve",
            Cause::ConnectionRefused => "connection refused",
            Cause::Timeout => "no answer in time",
            Cause::Unauthorized => "401 Unauthorized: the credentials were refused",
            Cause::Forbidden => "403 Forbidden",
            Cause::NamespaceMissing => "the namespace does not exist",
            Cause::RuntimeClassMissing => "the RuntimeClass does not exist",
            Cause::VerbsDenied => "the worker's identity lacks permissions",
            Cause::Unexpected => "unexpected answer",
        }
    }
}

/// Classifies an error from which no answer came (transport, TLS, DNS) by walking its
/// sources; returns the cause and the chain's text. Public so that the worker can tell the
/// same causes apart when one of its calls fails.
pub fn classify(error: &(dyn std::error::Error + 'static)) -> (Cause, String) {
    let mut cause = None;
    let mut current = Some(error);
    while let Some(e) = current {
        cause = cause.or_else(|| cause_of(e));
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            // An io::Error's source() skips the error it wraps; look at it directly.
            cause = cause.or_else(|| cause_of(inner));
        }
        current = e.source();
    }
    let text = chain_text(error);
    let cause = cause.unwrap_or_else(|| cause_in_text(&text));
    (cause, text)
}

/// The cause one error of a chain shows by its type, if any.
fn cause_of(e: &(dyn std::error::Error + 'static)) -> Option<Cause> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(match tls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                Cause::TlsUnknownIssuer
            }
            _ => Cause::TlsBadCertificate,
        });
    }
    let io = e.downcast_ref::<std::io::Error>()?;
    match io.kind() {
        std::io::ErrorKind::ConnectionRefused => Some(Cause::ConnectionRefused),
        std::io::ErrorKind::TimedOut => Some(Cause::Timeout),
        _ => None,
    }
}

/// The cause a chain's text shows, when no error in it has a telling type (DNS failures
/// arrive as text only; some clients stringify TLS errors).
fn cause_in_text(text: &str) -> Cause {
    if text.contains("dns error")
        || text.contains("failed to lookup address")
        || text.contains("Name or service not known")
    {
        Cause::UnknownHost
    } else if text.contains("UnknownIssuer") {
        Cause::TlsUnknownIssuer
    } else if text.contains("certificate") {
        Cause::TlsBadCertificate
    } else if text.contains("Connection refused") {
        Cause::ConnectionRefused
    } else if text.contains("timed out") || text.contains("deadline has elapsed") {
        Cause::Timeout
    } else {
        Cause::Unexpected
    }
}

/// Every message of an error chain, without repeats ("a: b: c").
fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// Runs every check of the configuration: the broker, every executor (at once), and the
/// Screwdriver API when status updates are on. One line per check, in that order.
pub async fn run_all(settings: &Settings) -> Vec<Line> {
    let mut lines = broker::check(settings).await;
    let executors = settings.executor.executors.iter().map(|(name, config)| {
        let needed = access::required(settings, config);
        async move { executor::check(name, config, &needed).await }
    });
    for report in futures::future::join_all(executors).await {
        lines.extend(executor::lines(&report));
    }
    lines.extend(api::check(settings).await);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_are_classified_by_their_sources() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&refused).0, Cause::ConnectionRefused);
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(classify(&tls).0, Cause::TlsUnknownIssuer);
        let expired = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
        );
        assert_eq!(classify(&expired).0, Cause::TlsBadCertificate);
        let dns = std::io::Error::other("dns error: failed to lookup address information");
        assert_eq!(classify(&dns).0, Cause::UnknownHost);
        let odd = std::io::Error::other("the server hung up");
        assert_eq!(
            classify(&odd),
            (Cause::Unexpected, "the server hung up".into())
        );
    }

    #[test]
    fn a_line_has_its_status_what_detail_and_fix() {
        let line = Line::new(Status::Fail, "broker: queue \"q\"", "missing").with_fix("create it");
        assert_eq!(
            line.to_string(),
            "FAIL  broker: queue \"q\": missing. Fix: create it"
        );
        let ok = Line::new(Status::Pass, "broker: connection", "connected");
        assert_eq!(ok.to_string(), "ok    broker: connection: connected");
    }
}
