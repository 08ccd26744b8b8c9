//! kube-sim: a simulated Kubernetes API server for tests, the load generator and the chaos
//! suite.
//!
//! Each simulated cluster is a real HTTP server on its own loopback port that speaks the
//! subset of the Kubernetes API the worker uses (pods, secrets, leases; list/watch with
//! selectors, pagination and resourceVersion semantics; `Status` errors; validation and
//! admission), with pods that move through their phases on a configurable timeline, failure
//! scripts per image, and fault injection per verb and resource. The worker talks to it with
//! the real kube-rs client exactly as to a cluster, so everything here aims to be faithful to
//! the real API server and kubelet, never shaped for a test's convenience.
//!
//! This module owns starting and stopping the clusters and the control API. It must never be
//! linked into the worker itself.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use bcw_tests::kube_sim::{ClusterConfig, Fault, KubeSim, SimConfig, Verb};
//! let sim = KubeSim::start(SimConfig { clusters: vec![ClusterConfig::new("a").with_runtime_classes(["kata"])], ..SimConfig::default() }).await?;
//! let a = sim.cluster("a");
//! a.inject(Fault::status(500).on_verbs([Verb::Create]).count(1));
//! let config = kube::Config::new(a.url().parse()?);
//! # Ok(()) }
//! ```

mod api;
mod cluster;
mod config;
mod control;
mod defaults;
mod faults;
mod kubeconfig;
mod kubelet;
mod lifecycle;
mod listener;
mod managed;
mod quantity;
mod request;
mod script;
mod selector;
mod status;
mod store;
mod validation;
mod watch;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use cluster::{ClusterHandle, CreateRecord, RequestRecord};
pub use config::{ClusterConfig, SimConfig, Timeline};
pub use control::{ClusterInfo, ControlClient};
pub use faults::{Fault, FaultId, Verb};
pub use script::{Script, ScriptRule};

use cluster::ClusterInner;
use faults::FaultSet;
use listener::Listener;
use store::Store;

/// A running simulator: its clusters and its control API.
pub struct KubeSim {
    clusters: Vec<ClusterHandle>,
    control_addr: std::net::SocketAddr,
    control_task: Option<JoinHandle<()>>,
    shutdown: CancellationToken,
    kubeconfig_dir: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for KubeSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSim")
            .field("clusters", &self.clusters)
            .field("control", &self.control_url())
            .finish()
    }
}

impl KubeSim {
    /// Starts every cluster (listening before this returns) and the control API.
    pub async fn start(cfg: SimConfig) -> anyhow::Result<Self> {
        let mut names = HashSet::new();
        for c in &cfg.clusters {
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.')
            {
                bail!(
                    "cluster name {:?} must be non-empty and use only letters, digits, '-', '_' and '.'",
                    c.name
                );
            }
            if !names.insert(c.name.clone()) {
                bail!("cluster {:?} is configured twice", c.name);
            }
        }
        let shutdown = CancellationToken::new();
        let (kubeconfig_dir, tempdir) = match &cfg.kubeconfig_dir {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("kube-sim-").tempdir()?;
                (t.path().to_owned(), Some(t))
            }
        };
        let mut clusters = Vec::new();
        for c in cfg.clusters {
            let (listener, socket) = Listener::bind(c.port)
                .await
                .with_context(|| format!("cluster {}: binding port {}", c.name, c.port))?;
            let url = format!("http://{}", listener.addr());
            let kubeconfig = kubeconfig::write(&kubeconfig_dir, &c.name, &url)
                .with_context(|| format!("cluster {}: kubeconfig", c.name))?;
            let inner = Arc::new(ClusterInner {
                name: c.name.clone(),
                store: Mutex::new(Store::new(c.history_limit)),
                faults: Mutex::new(FaultSet::default()),
                scripts: Mutex::new(Vec::new()),
                timeline: Mutex::new(c.timeline),
                latency: Mutex::new(Duration::ZERO),
                requests: Mutex::new(VecDeque::new()),
                creates: Mutex::new(Vec::new()),
                deletions: Mutex::new(HashMap::new()),
                seq: AtomicU32::new(0),
                drivers: AtomicUsize::new(0),
                shutdown: shutdown.child_token(),
                listener,
                kubeconfig,
                config: c,
            });
            inner.listener.start(inner.clone(), Some(socket)).await?;
            clusters.push(ClusterHandle { inner });
        }
        let (control_addr, control_task) =
            control::serve(cfg.control_port, clusters.clone(), shutdown.child_token())
                .await
                .with_context(|| format!("control API: binding port {}", cfg.control_port))?;
        Ok(Self {
            clusters,
            control_addr,
            control_task: Some(control_task),
            shutdown,
            kubeconfig_dir,
            _tempdir: tempdir,
        })
    }

    /// The cluster named `name`; panics when there is none (a test set-up error).
    pub fn cluster(&self, name: &str) -> ClusterHandle {
        self.try_cluster(name)
            .unwrap_or_else(|| panic!("kube-sim has no cluster named {name:?}"))
    }

    /// The cluster named `name`, if any.
    pub fn try_cluster(&self, name: &str) -> Option<ClusterHandle> {
        self.clusters.iter().find(|c| c.name() == name).cloned()
    }

    /// Every cluster, in configuration order.
    pub fn clusters(&self) -> &[ClusterHandle] {
        &self.clusters
    }

    /// How to reach every cluster.
    pub fn cluster_table(&self) -> BTreeMap<String, ClusterInfo> {
        control::cluster_table(&self.clusters)
    }

    /// `http://127.0.0.1:PORT` of the control API.
    pub fn control_url(&self) -> String {
        format!("http://{}", self.control_addr)
    }

    /// A client of this sim's control API.
    pub fn control_client(&self) -> ControlClient {
        ControlClient::new(self.control_url())
    }

    /// Directory holding the kubeconfig files.
    pub fn kubeconfig_dir(&self) -> PathBuf {
        self.kubeconfig_dir.clone()
    }

    /// Stops every cluster, pod driver, watch and the control API.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for c in &self.clusters {
            c.inner.listener.stop().await;
        }
        if let Some(t) = self.control_task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
