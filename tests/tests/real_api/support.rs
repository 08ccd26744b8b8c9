//! Shared set-up: the control plane's kubeconfigs, an administrator's client, and worker
//! configurations whose executors reach the cluster with the worker's own identity.

use std::path::PathBuf;
use std::time::Duration;

use bcw_tests::harness::{ExecutorSpec, Knobs, Names, settings_json};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};

/// The namespace `scripts/control-plane up` prepares for builds.
pub const NS: &str = "builds";

/// How long a test waits for something that takes a few seconds on the real control plane.
pub const SOON: Duration = Duration::from_secs(90);

/// The running control plane.
#[derive(Debug, Clone)]
pub struct Real {
    /// Kubeconfig of a cluster administrator (system:masters).
    pub admin: PathBuf,
    /// Kubeconfig of the ServiceAccount `builds/buildcluster-worker`, bound to the shipped Role.
    pub worker: PathBuf,
}

/// The control plane from the environment; `None` (and a loud message) when it is not there.
pub fn real() -> Option<Real> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    match (var("ADMIN_KUBECONFIG"), var("WORKER_KUBECONFIG")) {
        (Some(admin), Some(worker)) => Some(Real { admin, worker }),
        _ if std::env::var("REAL_API_REQUIRED").as_deref() == Ok("1") => panic!(
            "ADMIN_KUBECONFIG and WORKER_KUBECONFIG must be set (scripts/control-plane up prints them)"
        ),
        _ => {
            eprintln!(
                "\n*** SKIPPED: no real control plane. Run `eval \"$(scripts/control-plane up)\"`, \
                 export ADMIN_KUBECONFIG WORKER_KUBECONFIG, and run these tests again. ***\n"
            );
            None
        }
    }
}

/// The control plane, or return from the test (skipped) when there is none.
macro_rules! real_or_skip {
    () => {
        match crate::support::real() {
            Some(r) => r,
            None => return,
        }
    };
}
pub(crate) use real_or_skip;

/// A kube client from a kubeconfig file.
pub async fn client(kubeconfig: &std::path::Path) -> kube::Client {
    bcw_tests::harness::init_logs();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig readable");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig usable");
    kube::Client::try_from(cfg).expect("client")
}

/// Pods in the builds namespace, as the administrator sees them.
pub async fn pods(real: &Real) -> Api<Pod> {
    Api::namespaced(client(&real.admin).await, NS)
}

/// Live (not terminating) pods of one build.
pub async fn build_pods(api: &Api<Pod>, build: u64) -> Vec<Pod> {
    api.list(&ListParams::default().labels(&format!("sdbuild={build}")))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// One executor of a real-cluster configuration.
#[derive(Debug, Clone)]
pub struct RealExecutor {
    /// Executor name (unique per test: pods and Leases are per executor).
    pub name: String,
    /// `runtimeClass` ("" for the cluster's default runtime).
    pub runtime: String,
    /// Extra `options.kubernetes` keys.
    pub kubernetes: Value,
}

impl RealExecutor {
    /// An executor with the cluster's default runtime.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            runtime: String::new(),
            kubernetes: json!({}),
        }
    }

    /// Sets the runtime class.
    pub fn runtime(mut self, rc: &str) -> Self {
        self.runtime = rc.into();
        self
    }

    /// Adds `options.kubernetes` keys.
    pub fn kubernetes(mut self, extra: Value) -> Self {
        bcw_tests::harness::merge_json(&mut self.kubernetes, &extra);
        self
    }
}

/// A worker configuration whose executors use `kubeconfig` (the worker's identity unless a
/// test made another) in the builds namespace.
pub fn config(
    names: &Names,
    kubeconfig: &std::path::Path,
    executors: &[RealExecutor],
    knobs: &Knobs,
) -> Value {
    let specs: Vec<ExecutorSpec> = executors
        .iter()
        .map(|e| ExecutorSpec::new(&e.name, "http://unused").runtime(&e.runtime))
        .collect();
    let mut doc = settings_json(names, &specs, knobs);
    for e in executors {
        let k = &mut doc["executor"][&e.name]["options"]["kubernetes"];
        let obj = k.as_object_mut().expect("kubernetes options");
        obj.remove("host");
        obj.insert("kubeconfig".into(), json!(kubeconfig));
        obj.insert("jobsNamespace".into(), json!(NS));
        bcw_tests::harness::merge_json(k, &e.kubernetes);
    }
    doc
}

/// Knobs with the lifecycle reporter on (a Lease of 3 s renewed every second).
pub fn reporting() -> Knobs {
    Knobs {
        lifecycle: true,
        ..Knobs::default()
    }
}

/// A name unique to this run: the cluster outlives a test run (by hand), and executors whose
/// pods and Leases an earlier run left behind must not be this run's.
pub fn unique(tag: &str) -> String {
    format!("{tag}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6])
}

/// The first of 1,000 build ids unique to this test (pod names derive from build ids, and
/// pods of an earlier run may still be there).
pub fn build_base() -> u64 {
    1_000_000_000 + u64::from(rand::random::<u32>() % 1_000_000) * 1_000
}
