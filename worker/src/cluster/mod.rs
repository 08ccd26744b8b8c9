//! Cluster: the executor's Kubernetes API, as the few typed operations the worker needs.
//!
//! Owns the kube client of each executor (from `host`/`token`/`caFile`, a kubeconfig, or the
//! in-cluster service account; kube's own retry switched off) and the operations on pods,
//! Secrets and Leases. Every operation goes through [`call::Caller`]: breaker, budget,
//! deadline, classification, retry. It never decides what a failure means for a build.

pub mod call;
pub mod health;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::core::{ObjectList, Request};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use call::{BreakerSignal, CallError, Caller, Verb};
pub use health::Health;

use crate::backoff::Backoff;
use crate::breaker::{Admission, BreakerPolicy, SharedBreaker, State};
use crate::budget::Budget;
use crate::config::ExecutorConfig;

/// Page size of list calls.
const PAGE: u32 = 500;
/// The pod's service-account token, used when an executor names a host but no credentials.
const SA_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The pod's service-account CA bundle.
const SA_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// Why a cluster client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {error}")]
    Kubeconfig {
        /// Its path.
        path: String,
        /// What went wrong.
        error: String,
    },
    /// Anything else about the connection settings.
    #[error("{0}")]
    Settings(String),
}

/// An executor's state, as `bcw_executor_state` and `/readyz` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorState {
    /// Nothing known against it.
    Usable,
    /// Its breaker is open: the cluster fails or does not answer.
    Unreachable,
    /// Its set-up is wrong (TLS, host, credentials, namespace, RuntimeClass, Role): calls
    /// will go on failing until the configuration or the cluster is fixed.
    Misconfigured,
}

impl ExecutorState {
    /// The state of `cluster` now: a set-up problem wins over an open breaker.
    pub fn of(cluster: &Cluster) -> ExecutorState {
        if cluster.health().misconfigured() {
            ExecutorState::Misconfigured
        } else if cluster.breaker_state() == State::Open {
            ExecutorState::Unreachable
        } else {
            ExecutorState::Usable
        }
    }

    /// The gauge's value: 0 usable, 1 unreachable, 2 misconfigured.
    pub fn as_gauge(self) -> f64 {
        match self {
            ExecutorState::Usable => 0.0,
            ExecutorState::Unreachable => 1.0,
            ExecutorState::Misconfigured => 2.0,
        }
    }
}

/// One executor's cluster.
#[derive(Clone)]
pub struct Cluster {
    /// Executor name.
    pub executor: String,
    /// Namespace of the build pods.
    pub namespace: String,
    /// Whether this replica's last pod create here was answered by the API server (created,
    /// or already there) rather than failing or timing out.
    creates_land: Arc<std::sync::atomic::AtomicBool>,
    caller: Caller,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("executor", &self.executor)
            .field("namespace", &self.namespace)
            .field("caller", &self.caller)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects (lazily: no request is made) to the executor's cluster.
    pub async fn connect(
        executor: &str,
        config: &ExecutorConfig,
        signals: mpsc::UnboundedSender<BreakerSignal>,
    ) -> Result<Cluster, SetupError> {
        let opts = &config.options;
        let timeout = opts.fusebox.breaker.timeout;
        let client_config = client_config(config, timeout).await?;
        let host = client_config.cluster_url.to_string();
        let health = Arc::new(health::Health::new(
            executor,
            host.trim_end_matches('/'),
            crate::preflight::executor::fixes(executor, config),
        ));
        let client = kube::Client::try_from(client_config)
            .map_err(|e| SetupError::Settings(e.to_string()))?;
        let backoff = Backoff::for_requests(&opts.requestretry, opts.requestretry.retry_delay * 16)
            .map_err(|e| SetupError::Settings(e.to_string()))?;
        let budget = Budget::try_new(opts.kubernetes.qps, opts.kubernetes.burst)
            .map_err(|e| SetupError::Settings(e.to_string()))?;
        Ok(Cluster {
            executor: executor.to_string(),
            namespace: opts.kubernetes.jobs_namespace.clone(),
            creates_land: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            caller: Caller {
                executor: executor.to_string(),
                client,
                guard: crate::outbound::Guard {
                    breaker: SharedBreaker::new(BreakerPolicy::from_settings(
                        &opts.fusebox.breaker,
                    )),
                    budget: Some(Arc::new(budget)),
                    backoff,
                },
                timeout,
                signals,
                health,
            },
        })
    }

    /// The breaker state now.
    pub fn breaker_state(&self) -> State {
        self.caller.guard.breaker.state()
    }

    /// Reports (once) an open period that ended, for the state gauge.
    pub fn poll_breaker(&self) -> Option<crate::breaker::Transition> {
        self.caller.guard.breaker.poll()
    }

    /// What this replica knows of the executor's set-up.
    pub fn health(&self) -> &health::Health {
        &self.caller.health
    }

    /// The executor's client, for long-lived watches (calls go through [`Caller`]).
    pub fn client(&self) -> kube::Client {
        self.caller.client.clone()
    }

    fn pods(&self) -> Request {
        Request::new(format!("/api/v1/namespaces/{}/pods", self.namespace))
    }

    fn secrets(&self) -> Request {
        Request::new(format!("/api/v1/namespaces/{}/secrets", self.namespace))
    }

    fn leases(&self) -> Request {
        Request::new(format!(
            "/apis/coordination.k8s.io/v1/namespaces/{}/leases",
            self.namespace
        ))
    }

    /// Creates a pod; no attempt is sent after `send_by`. The request carries the call
    /// timeout as `?timeout=`, so the API server abandons it when the worker does.
    /// `AlreadyExists` is an error here: the caller decides about adoption. Only the created
    /// pod's identity is read back (the whole pod, managed fields and all, would cost more to
    /// parse than the rest of the launch).
    pub async fn create_pod(
        &self,
        pod: &Pod,
        send_by: Option<Instant>,
    ) -> Result<ObjectMeta, CallError> {
        let body = serde_json::to_vec(pod).map_err(|e| refused(0, e))?;
        let timeout = self.caller.timeout;
        let answer = self
            .caller
            .call_before(Verb::Create, send_by, || {
                let req = self.pods().create(&PostParams::default(), body.clone())?;
                Ok(with_server_timeout(req, timeout))
            })
            .await;
        let landed = matches!(answer, Ok(_) | Err(CallError::AlreadyExists));
        self.creates_land
            .store(landed, std::sync::atomic::Ordering::Relaxed);
        parse::<Identified>(&answer?.body).map(|p| p.metadata.into())
    }

    /// True when this replica's last pod create here was answered (created or already there).
    pub fn creates_land(&self) -> bool {
        self.creates_land.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads a pod; `None` when it does not exist.
    pub async fn get_pod(&self, name: &str) -> Result<Option<Pod>, CallError> {
        match self
            .caller
            .call(Verb::Get, || self.pods().get(name, &Default::default()))
            .await
        {
            Ok(a) => parse(&a.body).map(Some),
            Err(CallError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists a build's pods by label selector (all pages). Pods are listed only to look for a
    /// build's pod (the launch protocol's looks, a `verify`), so the call is a side call.
    pub async fn list_pods(&self, selector: &str) -> Result<Vec<Pod>, CallError> {
        self.list(Verb::List, selector, Admission::Side, || self.pods())
            .await
    }

    /// Deletes every pod matching the selector (one delete-collection call); returns them.
    /// A stop's deletion: a side call, like [`Cluster::list_pods`].
    pub async fn delete_pods(&self, selector: &str) -> Result<Vec<Pod>, CallError> {
        let lp = ListParams::default().labels(selector);
        let answer = self
            .caller
            .call_as(Verb::DeleteCollection, None, Admission::Side, || {
                self.pods()
                    .delete_collection(&DeleteParams::background(), &lp)
            })
            .await?;
        // The API server answers the deleted items as a list (or a Status for some servers).
        match serde_json::from_slice::<ObjectList<Pod>>(&answer.body) {
            Ok(list) => Ok(list.items),
            Err(_) => Ok(Vec::new()),
        }
    }

    /// Deletes one pod, asking the breaker as `admission` says; `false` when it did not exist.
    pub async fn delete_pod(
        &self,
        name: &str,
        grace: Option<u32>,
        admission: Admission,
    ) -> Result<bool, CallError> {
        let mut dp = DeleteParams::background();
        if let Some(g) = grace {
            dp = dp.grace_period(g);
        }
        match self
            .caller
            .call_as(Verb::Delete, None, admission, || {
                self.pods().delete(name, &dp)
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(CallError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a Secret; an existing one of that name is left as it is.
    pub async fn create_secret(&self, secret: &Secret) -> Result<(), CallError> {
        let body = serde_json::to_vec(secret).map_err(|e| refused(0, e))?;
        match self
            .caller
            .call(Verb::Create, || {
                self.secrets().create(&PostParams::default(), body.clone())
            })
            .await
        {
            Ok(_) | Err(CallError::AlreadyExists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads a Secret; `None` when it does not exist.
    pub async fn get_secret(&self, name: &str) -> Result<Option<Secret>, CallError> {
        match self
            .caller
            .call(Verb::Get, || self.secrets().get(name, &Default::default()))
            .await
        {
            Ok(a) => parse(&a.body).map(Some),
            Err(CallError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a Lease; `None` when it does not exist.
    pub async fn get_lease(&self, name: &str) -> Result<Option<Lease>, CallError> {
        match self
            .caller
            .call(Verb::Get, || self.leases().get(name, &Default::default()))
            .await
        {
            Ok(a) => parse(&a.body).map(Some),
            Err(CallError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a Lease (`AlreadyExists` when another replica was first).
    pub async fn create_lease(&self, lease: &Lease) -> Result<Lease, CallError> {
        let body = serde_json::to_vec(lease).map_err(|e| refused(0, e))?;
        let a = self
            .caller
            .call(Verb::Create, || {
                self.leases().create(&PostParams::default(), body.clone())
            })
            .await?;
        parse(&a.body)
    }

    /// Replaces a Lease, guarded by its `resourceVersion` (`Conflict` when it moved on).
    pub async fn replace_lease(&self, lease: &Lease) -> Result<Lease, CallError> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let body = serde_json::to_vec(lease).map_err(|e| refused(0, e))?;
        let a = self
            .caller
            .call(Verb::Update, || {
                self.leases()
                    .replace(&name, &PostParams::default(), body.clone())
            })
            .await?;
        parse(&a.body)
    }

    async fn list<T: DeserializeOwned + Clone>(
        &self,
        verb: Verb,
        selector: &str,
        admission: Admission,
        request: impl Fn() -> Request,
    ) -> Result<Vec<T>, CallError> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut lp = ListParams::default().labels(selector).limit(PAGE);
            if let Some(t) = &token {
                lp = lp.continue_token(t);
            }
            let a = self
                .caller
                .call_as(verb, None, admission, || request().list(&lp))
                .await?;
            let page: ObjectList<T> = parse(&a.body)?;
            items.extend(page.items);
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(items),
            }
        }
    }
}

/// An object of which only the identity is read.
#[derive(serde::Deserialize)]
struct Identified {
    metadata: Identity,
}

/// The identity of an object: what a launch needs of the pod it created.
#[derive(serde::Deserialize)]
struct Identity {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    labels: Option<std::collections::BTreeMap<String, String>>,
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

impl From<Identity> for ObjectMeta {
    fn from(i: Identity) -> ObjectMeta {
        ObjectMeta {
            name: i.name,
            namespace: i.namespace,
            uid: i.uid,
            labels: i.labels,
            annotations: i.annotations,
            ..Default::default()
        }
    }
}

/// The request with `timeout=<seconds>s` in its query: the API server's own deadline for it.
fn with_server_timeout(
    mut req: http::Request<Vec<u8>>,
    timeout: Duration,
) -> http::Request<Vec<u8>> {
    let uri = req.uri().to_string();
    let sep = if uri.contains('?') { '&' } else { '?' };
    let secs = timeout.as_secs().max(1);
    if let Ok(with) = format!("{uri}{sep}timeout={secs}s").parse() {
        *req.uri_mut() = with;
    }
    req
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, CallError> {
    serde_json::from_slice(body).map_err(|e| refused(200, e))
}

fn refused(status: u16, e: impl std::fmt::Display) -> CallError {
    CallError::Refused {
        status,
        message: format!("unreadable object: {e}"),
    }
}

/// True when `url` is the API server of the cluster the worker runs in: `kubernetes.default`
/// (any of its service names) or the address Kubernetes gives its pods.
fn in_cluster_api(url: &http::Uri) -> bool {
    if url.scheme_str() != Some("https") {
        return false;
    }
    let host = url.host().unwrap_or_default();
    let service = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"];
    service.contains(&host)
        || host.starts_with("kubernetes.default.svc.")
        || std::env::var("KUBERNETES_SERVICE_HOST")
            .is_ok_and(|h| h.trim_matches(['[', ']']) == host.trim_matches(['[', ']']))
}

/// The kube config of an executor, for its calls and its watch. Also used by `preflight`, so
/// that its checks reach the cluster exactly as the worker does.
///
/// No read timeout: a watch may be quiet for minutes, and every call is bounded by the
/// caller's own timeout, whose expiry drops the request and so closes its connection; kube's
/// would only add a timer re-armed at every read.
pub(crate) async fn client_config(
    config: &ExecutorConfig,
    timeout: Duration,
) -> Result<kube::Config, SetupError> {
    let k = &config.options.kubernetes;
    let mut cfg = if !k.kubeconfig.is_empty() {
        let kc = kube::config::Kubeconfig::read_from(&k.kubeconfig).map_err(|e| {
            SetupError::Kubeconfig {
                path: k.kubeconfig.clone(),
                error: e.to_string(),
            }
        })?;
        let options = kube::config::KubeConfigOptions {
            context: (!k.context.is_empty()).then(|| k.context.clone()),
            ..Default::default()
        };
        kube::Config::from_custom_kubeconfig(kc, &options)
            .await
            .map_err(|e| SetupError::Kubeconfig {
                path: k.kubeconfig.clone(),
                error: e.to_string(),
            })?
    } else if !k.host.is_empty() {
        let host = if k.host.contains("://") {
            k.host.clone()
        } else {
            // Screwdriver's form: a bare host name means https.
            format!("https://{}", k.host)
        };
        let url: http::Uri = host
            .parse()
            .map_err(|e| SetupError::Settings(format!("host {host:?}: {e}")))?;
        let mut cfg = kube::Config::new(url.clone());
        if !k.ca_file.is_empty() {
            cfg.root_cert_file = Some(k.ca_file.clone().into());
        } else if in_cluster_api(&url) && std::path::Path::new(SA_CA).exists() {
            // Screwdriver's default (`kubernetes.default` with the pod's service account):
            // verify the API server with the service account's CA instead of skipping TLS.
            // Other hosts keep the system's roots (a CA bundle would replace them).
            cfg.root_cert_file = Some(SA_CA.into());
        }
        if k.token.is_empty() && k.token_file.is_empty() && std::path::Path::new(SA_TOKEN).exists()
        {
            cfg.auth_info.token_file = Some(SA_TOKEN.to_string());
        }
        cfg
    } else {
        kube::Config::incluster()
            .map_err(|e| SetupError::Settings(format!("in-cluster configuration: {e}")))?
    };
    // Credentials given in the worker's configuration win over the kubeconfig's.
    if !k.token.is_empty() {
        cfg.auth_info.token = Some(secrecy::SecretString::from(k.token.expose().to_string()));
    } else if !k.token_file.is_empty() {
        cfg.auth_info.token_file = Some(k.token_file.clone());
    }
    if k.insecure_skip_tls_verify {
        cfg.accept_invalid_certs = true;
    }
    cfg.default_namespace = k.jobs_namespace.clone();
    // Names the worker in the API server's audit log and as the field manager of what it writes.
    cfg.headers.push((http::header::USER_AGENT, user_agent()));
    // Our breaker and retry own the policy; kube's built-in retry would hide failures.
    cfg.default_retry = false;
    cfg.connect_timeout = Some(timeout.min(Duration::from_secs(10)));
    cfg.read_timeout = None;
    Ok(cfg)
}

/// `buildcluster-worker/<version>`.
fn user_agent() -> http::HeaderValue {
    http::HeaderValue::from_static(concat!("buildcluster-worker/", env!("CARGO_PKG_VERSION")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_in_cluster_api_gets_the_service_account_ca() {
        let is = |u: &str| super::in_cluster_api(&u.parse().unwrap());
        assert!(is("https://kubernetes.default.svc"));
        assert!(is("https://kubernetes.default.svc.cluster.local:443"));
        assert!(is("https://kubernetes.default"));
        assert!(!is("http://kubernetes.default.svc"), "not over plain http");
        assert!(
            !is("https://api.example.com:6443"),
            "a remote cluster keeps the system roots"
        );
    }

    /// An API server that takes a request and never answers: the call must end at the call
    /// timeout and its connection be closed (nothing else would ever free it).
    #[tokio::test]
    async fn a_call_cut_off_by_its_timeout_closes_its_connection() {
        use std::time::Duration;
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            // Reads the request, then waits for the client to close (a read of 0).
            while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            let _ = closed_tx.send(());
        });
        let mut config = crate::config::ExecutorConfig::default();
        config.options.kubernetes.host = format!("http://127.0.0.1:{port}");
        config.options.kubernetes.token = crate::secret::Secret::new("t".to_string());
        config.options.fusebox.breaker.timeout = Duration::from_millis(300);
        config.options.requestretry.max_attempts = 1;
        let (signals, _rx) = tokio::sync::mpsc::unbounded_channel();
        let cluster = super::Cluster::connect("east", &config, signals)
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), cluster.get_pod("p"))
            .await
            .expect("the call ends at its own timeout");
        assert!(answer.is_err(), "{answer:?}");
        tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .expect("the connection of the cut-off call is closed")
            .unwrap();
    }
}
