//! One simulated cluster: its shared state and the [`ClusterHandle`] tests drive it with.
//!
//! Owns everything a cluster has besides its objects' store: faults, scripts, timeline,
//! latency, the request and create logs, and the listener. It never implements API
//! semantics (those live in `api`) nor pod behaviour (`kubelet`, `lifecycle`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{ClusterConfig, Timeline};
use super::faults::{Fault, FaultId, FaultSet};
use super::listener::Listener;
use super::managed;
use super::request::Propagation;
use super::script::ScriptRule;
use super::store::{Key, Store, StoredObject};

/// Locks a std mutex, ignoring poisoning (a panicking test must not wedge the sim).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Wall-clock time as RFC 3339 with milliseconds.
pub(crate) fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%.3fZ", now).unwrap_or_else(|_| now.to_string())
}

/// One successful pod create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRecord {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Pod uid.
    pub uid: String,
    /// When it was created (RFC 3339).
    pub time: String,
}

/// One API request as the audit log would see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// RBAC verb (`get` for non-resource paths).
    pub verb: String,
    /// Resource (`pods`, ...); empty for non-resource paths.
    pub resource: String,
    /// Subresource, if any.
    pub subresource: Option<String>,
    /// Namespace, if any.
    pub namespace: Option<String>,
    /// Object name, if any.
    pub name: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Status code answered; `None` when the request was never answered (hang).
    pub code: Option<u16>,
    /// When it arrived (RFC 3339).
    pub time: String,
}

/// Requests kept in the request log (older ones are dropped).
const REQUEST_LOG_LIMIT: usize = 200_000;

/// The state of one cluster shared by its listener, its API handlers and its pod drivers.
pub struct ClusterInner {
    /// Cluster name.
    pub name: String,
    /// Its configuration (runtime classes, namespaces, limits).
    pub config: ClusterConfig,
    /// Objects, resourceVersions and watch fan-out.
    pub store: Mutex<Store>,
    /// Injected faults.
    pub faults: Mutex<FaultSet>,
    /// Failure scripts, first match wins.
    pub scripts: Mutex<Vec<ScriptRule>>,
    /// The current pod timeline.
    pub timeline: Mutex<Timeline>,
    /// Delay added to every request.
    pub latency: Mutex<Duration>,
    /// Every request (bounded).
    pub requests: Mutex<VecDeque<RequestRecord>>,
    /// Every successful pod create.
    pub creates: Mutex<Vec<CreateRecord>>,
    /// Propagation policy of pods being deleted gracefully, by uid.
    pub deletions: Mutex<HashMap<String, Propagation>>,
    /// Counter for pod IPs and name suffixes.
    pub seq: AtomicU32,
    /// Pod drivers currently running.
    pub drivers: AtomicUsize,
    /// Cancelled when the sim shuts down.
    pub shutdown: CancellationToken,
    /// Listening socket control.
    pub listener: Listener,
    /// The kubeconfig file of this cluster.
    pub kubeconfig: PathBuf,
}

impl ClusterInner {
    /// The current timeline.
    pub fn timeline(&self) -> Timeline {
        *lock(&self.timeline)
    }

    /// Base URL of the API.
    pub fn url(&self) -> String {
        format!("http://{}", self.listener.addr())
    }

    /// Appends to the request log.
    pub fn log_request(&self, record: RequestRecord) {
        let mut log = lock(&self.requests);
        if log.len() == REQUEST_LOG_LIMIT {
            log.pop_front();
        }
        log.push_back(record);
    }

    /// Removes a pod at once (DELETED event), then collects its dependents like the garbage
    /// collector with `propagation`.
    pub fn remove_pod(
        &self,
        store: &mut Store,
        key: &Key,
        propagation: Propagation,
    ) -> Option<Pod> {
        let pod = store.remove::<Pod>(key)?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        lock(&self.deletions).remove(&uid);
        collect_dependents(store, &uid, propagation);
        Some(pod)
    }
}

/// The garbage collector's work when an owner with `uid` is gone: dependents whose only
/// owners are gone are deleted (Background/Foreground) or lose the reference (Orphan).
pub(crate) fn collect_dependents(store: &mut Store, uid: &str, propagation: Propagation) {
    for key in store.table::<Secret>().owned_by(uid) {
        let Some(slot) = store.table::<Secret>().get(&key) else {
            continue;
        };
        let before = slot.object();
        let mut secret = before.clone();
        let refs = secret.metadata.owner_references.take().unwrap_or_default();
        let remaining: Vec<_> = refs.into_iter().filter(|r| r.uid != uid).collect();
        if remaining.is_empty() && propagation != Propagation::Orphan {
            store.remove::<Secret>(&key);
        } else {
            secret.metadata.owner_references = (!remaining.is_empty()).then_some(remaining);
            managed::record(Some(&before), &mut secret, "kube-controller-manager");
            store.put(secret);
        }
    }
}

/// A handle on one simulated cluster. Cheap to clone.
#[derive(Clone)]
pub struct ClusterHandle {
    pub(crate) inner: Arc<ClusterInner>,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle")
            .field("name", &self.inner.name)
            .field("url", &self.url())
            .finish()
    }
}

impl ClusterHandle {
    /// Cluster name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.inner.url()
    }

    /// A kube client configuration for this cluster, without kube's own retries (the calls a
    /// test makes are counted in the request log).
    pub fn kube_config(&self) -> kube::Config {
        let mut cfg = kube::Config::new(self.url().parse().expect("cluster url"));
        cfg.default_retry = false;
        cfg
    }

    /// A kube client of this cluster ([`ClusterHandle::kube_config`]).
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.kube_config()).expect("kube client")
    }

    /// An ordinary kubeconfig file for this cluster.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.inner.kubeconfig.clone()
    }

    /// Injects a fault; panics when the fault makes no sense (see [`Fault::check`]).
    pub fn inject(&self, fault: Fault) -> FaultId {
        if let Err(e) = fault.check() {
            panic!("invalid fault {fault:?}: {e}");
        }
        lock(&self.inner.faults).inject(fault, Instant::now())
    }

    /// Removes one fault; false when it had already expired or been removed.
    pub fn remove_fault(&self, id: FaultId) -> bool {
        lock(&self.inner.faults).remove(id)
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        lock(&self.inner.faults).clear();
    }

    /// Adds a failure script (after the existing ones; first match wins).
    pub fn add_script(&self, rule: ScriptRule) {
        lock(&self.inner.scripts).push(rule);
    }

    /// Removes every failure script.
    pub fn clear_scripts(&self) {
        lock(&self.inner.scripts).clear();
    }

    /// Delay added to every API request from now on.
    pub fn set_latency(&self, d: Duration) {
        *lock(&self.inner.latency) = d;
    }

    /// Replaces the pod timeline (applies to the next step of every pod).
    pub fn set_timeline(&self, t: Timeline) {
        *lock(&self.inner.timeline) = t;
    }

    /// The current pod timeline.
    pub fn timeline(&self) -> Timeline {
        self.inner.timeline()
    }

    /// Every successful pod create so far.
    pub fn create_log(&self) -> Vec<CreateRecord> {
        lock(&self.inner.creates).clone()
    }

    /// Every request so far (the most recent 200 000).
    pub fn request_log(&self) -> Vec<RequestRecord> {
        lock(&self.inner.requests).iter().cloned().collect()
    }

    /// Empties the request and create logs.
    pub fn clear_logs(&self) {
        lock(&self.inner.requests).clear();
        lock(&self.inner.creates).clear();
    }

    /// Every pod, in namespace/name order.
    pub fn pods(&self) -> Vec<Pod> {
        all::<Pod>(&self.inner)
    }

    /// Every secret.
    pub fn secrets(&self) -> Vec<Secret> {
        all::<Secret>(&self.inner)
    }

    /// Every lease.
    pub fn leases(&self) -> Vec<Lease> {
        all::<Lease>(&self.inner)
    }

    /// One pod.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        let store = lock(&self.inner.store);
        store
            .table::<Pod>()
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|s| s.object())
    }

    /// The cluster's current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.inner.store).rv()
    }

    /// Closes the port and cuts open connections: clients get refused connections until
    /// [`Self::start_listener`].
    pub async fn stop_listener(&self) {
        self.inner.listener.stop().await;
    }

    /// Serves again on the same port.
    pub async fn start_listener(&self) {
        if let Err(e) = self.inner.listener.start(self.inner.clone(), None).await {
            panic!(
                "cluster {}: cannot listen on {} again: {e}",
                self.inner.name,
                self.inner.listener.addr()
            );
        }
    }

    /// Removes a pod at once, as when its node is lost (DELETED event, dependents
    /// collected). False when there is no such pod.
    pub fn delete_pod_now(&self, namespace: &str, name: &str) -> bool {
        let mut store = lock(&self.inner.store);
        self.inner
            .remove_pod(
                &mut store,
                &(namespace.to_owned(), name.to_owned()),
                Propagation::Background,
            )
            .is_some()
    }

    /// Drops the watch history and ends open watches: resuming from an earlier
    /// resourceVersion answers 410 Expired, so watchers must relist.
    pub fn compact(&self) {
        lock(&self.inner.store).compact();
    }

    /// Back to the configured state: objects removed (with DELETED events), faults, scripts,
    /// latency and logs cleared, timeline restored, listener serving.
    pub async fn reset(&self) {
        self.clear_faults();
        self.clear_scripts();
        self.set_latency(Duration::ZERO);
        self.set_timeline(self.inner.config.timeline);
        {
            let mut store = lock(&self.inner.store);
            let pods: Vec<Key> = store
                .table::<Pod>()
                .iter()
                .map(|s| s.entry.key.clone())
                .collect();
            for k in pods {
                store.remove::<Pod>(&k);
            }
            let secrets: Vec<Key> = store
                .table::<Secret>()
                .iter()
                .map(|s| s.entry.key.clone())
                .collect();
            for k in secrets {
                store.remove::<Secret>(&k);
            }
            let leases: Vec<Key> = store
                .table::<Lease>()
                .iter()
                .map(|s| s.entry.key.clone())
                .collect();
            for k in leases {
                store.remove::<Lease>(&k);
            }
        }
        lock(&self.inner.deletions).clear();
        self.clear_logs();
        self.start_listener().await;
    }

    /// Number of pod drivers (simulated kubelets) still running.
    pub fn active_pod_drivers(&self) -> usize {
        self.inner.drivers.load(Ordering::Relaxed)
    }
}

fn all<K: StoredObject>(inner: &ClusterInner) -> Vec<K> {
    lock(&inner.store)
        .table::<K>()
        .iter()
        .map(|s| s.object())
        .collect()
}
