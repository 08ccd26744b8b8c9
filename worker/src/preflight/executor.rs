//! Whether an executor's cluster is usable as configured: TLS, token, the API server's
//! version, the jobs namespace, the RuntimeClass, and every permission the worker needs.
//!
//! Each problem is a typed [`Finding`] (executor, host, cause, fix sentence), so that
//! `check-config --connect` prints it and the worker can log it at start-up. Every check is
//! free of side effects: the namespace and the RuntimeClass are checked with a dry-run pod
//! create (what the worker's own create would meet, nothing stored), the permissions with
//! SelfSubjectAccessReviews. The client is built exactly as the worker builds it.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};

pub use super::{Cause, classify};

use super::access::{self, Access};
use super::{Line, Status};
use crate::config::ExecutorConfig;

/// Longest one request of a check may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// What was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// TLS, the token and the API server's version (`GET /version`).
    Connection,
    /// The jobs namespace exists.
    Namespace,
    /// The RuntimeClass exists (only when one is configured).
    RuntimeClass,
    /// Every verb the worker needs is allowed (SelfSubjectAccessReview).
    Permissions,
}

impl Check {
    /// A short name for output.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Connection => "connection",
            Check::Namespace => "namespace",
            Check::RuntimeClass => "runtime class",
            Check::Permissions => "permissions",
        }
    }
}

/// One problem of one executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The executor's name.
    pub executor: String,
    /// The API server it talks to.
    pub host: String,
    /// What was being checked.
    pub check: Check,
    /// Why it failed.
    pub cause: Cause,
    /// What was seen (never a token).
    pub detail: String,
    /// What to do about it.
    pub fix: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "executor {} ({}): {}: {}. Fix: {}",
            self.executor,
            self.host,
            self.check.as_str(),
            self.detail,
            self.fix
        )
    }
}

/// How one check of an executor ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It passed; what was seen.
    Passed(String),
    /// It failed.
    Failed(Finding),
    /// It could not run (an earlier check failed); why.
    Skipped(String),
}

/// Everything checked about one executor, in order.
#[derive(Debug, Clone)]
pub struct ExecutorReport {
    /// The executor's name.
    pub executor: String,
    /// The API server it talks to.
    pub host: String,
    /// The checks.
    pub checks: Vec<(Check, Outcome)>,
}

impl ExecutorReport {
    /// The problems found (what the worker logs at start-up, one ERROR line each).
    pub fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.checks.iter().filter_map(|(_, o)| match o {
            Outcome::Failed(f) => Some(f),
            _ => None,
        })
    }
}

/// The printed lines of a report, one per check.
pub fn lines(report: &ExecutorReport) -> Vec<Line> {
    report
        .checks
        .iter()
        .map(|(check, outcome)| {
            let what = format!(
                "executor {} ({}): {}",
                report.executor,
                report.host,
                check.as_str()
            );
            match outcome {
                Outcome::Passed(detail) => Line::new(Status::Pass, what, detail.clone()),
                Outcome::Failed(f) => {
                    Line::new(Status::Fail, what, f.detail.clone()).with_fix(f.fix.clone())
                }
                Outcome::Skipped(why) => Line::new(Status::Skip, what, why.clone()),
            }
        })
        .collect()
}

/// Where a check stands while it runs.
struct Probe<'a> {
    executor: &'a str,
    host: String,
    namespace: String,
    runtime_class: String,
    client: kube::Client,
}

/// Runs every check of one executor; `needed` are the permissions to review
/// ([`access::required`]).
pub async fn check(name: &str, config: &ExecutorConfig, needed: &[Access]) -> ExecutorReport {
    let k = &config.options.kubernetes;
    let fallback_host = if k.host.is_empty() {
        k.kubeconfig.clone()
    } else {
        k.host.clone()
    };
    let built = crate::cluster::client_config(config, config.options.fusebox.breaker.timeout)
        .await
        .map_err(|e| e.to_string())
        .and_then(|cfg| {
            let host = cfg.cluster_url.to_string();
            kube::Client::try_from(cfg)
                .map(|c| (c, host))
                .map_err(|e| e.to_string())
        });
    let (client, host) = match built {
        Ok(ok) => ok,
        Err(detail) => {
            let finding = finding(
                name,
                &fallback_host,
                Check::Connection,
                Cause::ClientSetup,
                detail,
                &Fixes::new(name, config),
            );
            return ExecutorReport {
                executor: name.into(),
                host: fallback_host,
                checks: vec![(Check::Connection, Outcome::Failed(finding))],
            };
        }
    };
    let probe = Probe {
        executor: name,
        host: host.trim_end_matches('/').to_string(),
        namespace: k.jobs_namespace.clone(),
        runtime_class: k.runtime_class.clone(),
        client,
    };
    probe.run(&Fixes::new(name, config), needed).await
}

impl Probe<'_> {
    async fn run(&self, fixes: &Fixes, needed: &[Access]) -> ExecutorReport {
        let mut checks = vec![(Check::Connection, self.connection(fixes).await)];
        if matches!(checks[0].1, Outcome::Failed(_)) {
            let why = "the API server was not reached".to_string();
            for c in [Check::Namespace, Check::RuntimeClass, Check::Permissions] {
                if c != Check::RuntimeClass || !self.runtime_class.is_empty() {
                    checks.push((c, Outcome::Skipped(why.clone())));
                }
            }
        } else {
            checks.extend(self.dry_run(fixes).await);
            checks.push((Check::Permissions, self.permissions(fixes, needed).await));
        }
        ExecutorReport {
            executor: self.executor.into(),
            host: self.host.clone(),
            checks,
        }
    }

    fn failed(&self, check: Check, cause: Cause, detail: String, fixes: &Fixes) -> Outcome {
        Outcome::Failed(finding(
            self.executor,
            &self.host,
            check,
            cause,
            detail,
            fixes,
        ))
    }

    /// `GET /version`: TLS, the token (a refused token is 401 on any path) and the version.
    async fn connection(&self, fixes: &Fixes) -> Outcome {
        match self.request(http::Method::GET, "/version", None).await {
            Ok((200, body)) => {
                let version = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["gitVersion"].as_str().map(String::from))
                    .unwrap_or_else(|| "an unknown version".into());
                let tls = if self.host.starts_with("https://") {
                    "TLS verified"
                } else {
                    "plain HTTP, no TLS"
                };
                Outcome::Passed(format!("Kubernetes {version}, {tls}, credentials accepted"))
            }
            Ok((status, body)) => {
                let (cause, detail) = refusal(status, &body);
                self.failed(Check::Connection, cause, detail, fixes)
            }
            Err((cause, detail)) => self.failed(Check::Connection, cause, detail, fixes),
        }
    }

    /// A dry-run create of a minimal pod in the jobs namespace, with the RuntimeClass: the
    /// namespace and RuntimeClass admission answer it as they would the worker's pods.
    async fn dry_run(&self, fixes: &Fixes) -> Vec<(Check, Outcome)> {
        let path = format!("/api/v1/namespaces/{}/pods?dryRun=All", self.namespace);
        let answer = self
            .request(http::Method::POST, &path, Some(self.probe_pod()))
            .await;
        let rc = !self.runtime_class.is_empty();
        let ns_ok = || {
            (
                Check::Namespace,
                Outcome::Passed(format!("{} exists", self.namespace)),
            )
        };
        let rc_ok = || {
            (
                Check::RuntimeClass,
                Outcome::Passed(format!("{} exists", self.runtime_class)),
            )
        };
        let mut out = match answer {
            Ok((200..=299, _)) => vec![ns_ok(), rc_ok()],
            Ok((status, body)) => {
                let (cause, detail) = refusal(status, &body);
                match cause {
                    Cause::NamespaceMissing => vec![
                        (
                            Check::Namespace,
                            self.failed(Check::Namespace, cause, detail, fixes),
                        ),
                        (
                            Check::RuntimeClass,
                            Outcome::Skipped("the namespace is missing".into()),
                        ),
                    ],
                    Cause::RuntimeClassMissing => vec![
                        ns_ok(),
                        (
                            Check::RuntimeClass,
                            self.failed(Check::RuntimeClass, cause, detail, fixes),
                        ),
                    ],
                    Cause::Forbidden => {
                        let why = format!("a dry-run pod create was refused ({detail})");
                        vec![
                            (Check::Namespace, Outcome::Skipped(why.clone())),
                            (Check::RuntimeClass, Outcome::Skipped(why)),
                        ]
                    }
                    _ => vec![(
                        Check::Namespace,
                        self.failed(Check::Namespace, cause, detail, fixes),
                    )],
                }
            }
            Err((cause, detail)) => {
                vec![(
                    Check::Namespace,
                    self.failed(Check::Namespace, cause, detail, fixes),
                )]
            }
        };
        if !rc {
            out.retain(|(c, _)| *c != Check::RuntimeClass);
        }
        out
    }

    fn probe_pod(&self) -> Value {
        probe_pod(&self.runtime_class)
    }

    /// One SelfSubjectAccessReview per verb the worker needs.
    async fn permissions(&self, fixes: &Fixes, needed: &[Access]) -> Outcome {
        let mut denied = Vec::new();
        for a in needed {
            let body = access::review(&self.namespace, *a);
            match self
                .request(http::Method::POST, access::REVIEW_PATH, Some(body))
                .await
            {
                Ok((200..=299, answer)) => {
                    match serde_json::from_slice::<Value>(&answer)
                        .ok()
                        .as_ref()
                        .and_then(access::allowed)
                    {
                        Some(true) => {}
                        Some(false) => denied.push(a.to_string()),
                        None => {
                            let detail = format!("the review of {a} has no answer");
                            return self.failed(
                                Check::Permissions,
                                Cause::Unexpected,
                                detail,
                                fixes,
                            );
                        }
                    }
                }
                Ok((status, body)) => {
                    let (cause, detail) = refusal(status, &body);
                    let detail = format!("a SelfSubjectAccessReview was refused: {detail}");
                    return self.failed(Check::Permissions, cause, detail, fixes);
                }
                Err((cause, detail)) => {
                    return self.failed(Check::Permissions, cause, detail, fixes);
                }
            }
        }
        if denied.is_empty() {
            Outcome::Passed(format!(
                "all {} verbs the worker uses are allowed in {}",
                needed.len(),
                self.namespace
            ))
        } else {
            let detail = format!("not allowed in {}: {}", self.namespace, denied.join(", "));
            self.failed(Check::Permissions, Cause::VerbsDenied, detail, fixes)
        }
    }

    /// Sends one request; `Ok((status, body))` for any answer, `Err` (classified) when none
    /// came.
    async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Bytes), (Cause, String)> {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(kube::client::Body::from(bytes))
            .map_err(|e| (Cause::Unexpected, e.to_string()))?;
        let exchange = async {
            let response = self.client.send(req).await.map_err(|e| classify(&e))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| classify(&e))?
                .to_bytes();
            Ok((status, body))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(r) => r,
            Err(_) => Err((
                Cause::Timeout,
                format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
            )),
        }
    }
}

fn finding(
    executor: &str,
    host: &str,
    check: Check,
    cause: Cause,
    detail: String,
    fixes: &Fixes,
) -> Finding {
    Finding {
        executor: executor.into(),
        host: host.into(),
        check,
        cause,
        detail: format!("{} ({detail})", cause.summary()),
        fix: fixes.fix(cause),
    }
}

/// Classifies a refusal by the API server from its status and `Status` body.
fn refusal(status: u16, body: &[u8]) -> (Cause, String) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|s| s["message"].as_str())
        .filter(|m| !m.is_empty())
        .map(String::from)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    let kind = parsed
        .as_ref()
        .and_then(|s| s.pointer("/details/kind"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let cause = match status {
        401 => Cause::Unauthorized,
        403 if message.contains("RuntimeClass") && message.contains("not found") => {
            Cause::RuntimeClassMissing
        }
        403 => Cause::Forbidden,
        404 if kind == "namespaces" || message.starts_with("namespaces ") => {
            Cause::NamespaceMissing
        }
        _ => Cause::Unexpected,
    };
    (cause, format!("{status}: {message}"))
}

/// A pod the API server would admit if the namespace and RuntimeClass exist (also under the
/// restricted Pod Security Standard); sent as a dry run only, never stored.
pub fn probe_pod(runtime_class: &str) -> Value {
    let mut spec = json!({
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65534,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "preflight", "image": "busybox",
                        "securityContext": {"allowPrivilegeEscalation": false,
                                            "capabilities": {"drop": ["ALL"]}}}],
    });
    if !runtime_class.is_empty() {
        spec["runtimeClassName"] = json!(runtime_class);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "buildcluster-worker-preflight-"},
        "spec": spec,
    })
}

/// The fix sentence of each cause for one executor (naming its keys and variables), as the
/// worker logs it when one of its calls meets the cause.
pub fn fixes(name: &str, config: &ExecutorConfig) -> crate::cluster::health::FixFor {
    let fixes = Fixes::new(name, config);
    Box::new(move |cause| fixes.fix(cause))
}

/// The fix sentences of one executor, naming its keys and variables.
struct Fixes {
    name: String,
    env: String,
    namespace: String,
    runtime_class: String,
}

impl Fixes {
    fn new(name: &str, config: &ExecutorConfig) -> Fixes {
        Fixes {
            name: name.into(),
            env: format!(
                "BCW_EXECUTOR__{}__OPTIONS__KUBERNETES__",
                name.to_uppercase().replace('-', "_")
            ),
            namespace: config.options.kubernetes.jobs_namespace.clone(),
            runtime_class: config.options.kubernetes.runtime_class.clone(),
        }
    }

    fn key(&self, key: &str, env: &str) -> String {
        format!(
            "executor.{}.options.kubernetes.{key} ({}{env})",
            self.name, self.env
        )
    }

    fn fix(&self, cause: Cause) -> String {
        let role = format!(
            "bind the Role of deploy/base/role.yaml to the worker's identity in namespace {} (if that namespace does not exist, create it or correct {})",
            self.namespace,
            self.key("jobsNamespace", "JOBS_NAMESPACE")
        );
        match cause {
            Cause::ClientSetup => format!(
                "correct {} or {}",
                self.key("host", "HOST"),
                self.key("kubeconfig", "KUBECONFIG")
            ),
            Cause::TlsUnknownIssuer => format!(
                "set {} to a PEM bundle with the CA that signed the API server's certificate (or use a kubeconfig with certificate-authority-data)",
                self.key("caFile", "CA_FILE")
            ),
            Cause::TlsBadCertificate => format!(
                "the certificate does not fit this address (wrong name, expired or malformed): use the host name it was issued for in {}, or renew it",
                self.key("host", "HOST")
            ),
            Cause::UnknownHost => format!(
                "the host name does not resolve: correct {} (K8S_HOST with --compat screwdriver) or the worker's DNS",
                self.key("host", "HOST")
            ),
            Cause::ConnectionRefused => format!(
                "nothing listens there: correct the host and port in {}, and check that the API server is up and reachable from the worker",
                self.key("host", "HOST")
            ),
            Cause::Timeout => "no answer in time: check that the worker can reach the API server (network policies, firewalls, proxies)".into(),
            Cause::Unauthorized => format!(
                "the API server refused the credentials: set a valid {} or {} (K8S_TOKEN with --compat screwdriver), or check the service account",
                self.key("token", "TOKEN"),
                self.key("tokenFile", "TOKEN_FILE")
            ),
            Cause::Forbidden | Cause::VerbsDenied => role,
            Cause::NamespaceMissing => format!(
                "create namespace {} or set {} (K8S_JOBS_NAMESPACE with --compat screwdriver) to the namespace of the build pods",
                self.namespace,
                self.key("jobsNamespace", "JOBS_NAMESPACE")
            ),
            Cause::RuntimeClassMissing => format!(
                "create RuntimeClass {} in the cluster (deploy/ has an example for Kata) or set {} to one that exists (empty: the cluster's default runtime)",
                self.runtime_class,
                self.key("runtimeClass", "RUNTIME_CLASS")
            ),
            Cause::Unexpected => "see the answer above; the API server or a proxy in front of it answered something the worker does not expect".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_by_status_and_status_body() {
        let status = |code: u16, message: &str, kind: &str| {
            json!({"kind": "Status", "code": code, "message": message, "details": {"kind": kind}})
                .to_string()
                .into_bytes()
        };
        assert_eq!(
            refusal(401, &status(401, "Unauthorized", "")).0,
            Cause::Unauthorized
        );
        assert_eq!(
            refusal(
                404,
                &status(404, "namespaces \"builds\" not found", "namespaces")
            )
            .0,
            Cause::NamespaceMissing
        );
        assert_eq!(
            refusal(
                403,
                &status(
                    403,
                    "pods \"x\" is forbidden: pod rejected: RuntimeClass \"kata\" not found",
                    "pods"
                )
            )
            .0,
            Cause::RuntimeClassMissing
        );
        let (cause, detail) = refusal(
            403,
            &status(
                403,
                "pods is forbidden: User \"w\" cannot create resource \"pods\"",
                "pods",
            ),
        );
        assert_eq!(cause, Cause::Forbidden);
        assert!(detail.starts_with("403: pods is forbidden"), "{detail}");
        assert_eq!(refusal(404, b"404 page not found").0, Cause::Unexpected);
    }

    #[test]
    fn fixes_name_the_executors_keys_and_variables() {
        let mut config = ExecutorConfig::default();
        config.options.kubernetes.jobs_namespace = "builds".into();
        config.options.kubernetes.runtime_class = "kata".into();
        let fixes = Fixes::new("k8s-sandbox", &config);
        let tls = fixes.fix(Cause::TlsUnknownIssuer);
        assert!(
            tls.contains("executor.k8s-sandbox.options.kubernetes.caFile (BCW_EXECUTOR__K8S_SANDBOX__OPTIONS__KUBERNETES__CA_FILE)"),
            "{tls}"
        );
        assert!(
            fixes
                .fix(Cause::NamespaceMissing)
                .contains("create namespace builds")
        );
        assert!(
            fixes
                .fix(Cause::RuntimeClassMissing)
                .contains("create RuntimeClass kata")
        );
        assert!(
            fixes
                .fix(Cause::VerbsDenied)
                .contains("deploy/base/role.yaml")
        );
    }
}
