//! The served resources and how the store sees their objects.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::json;

use super::{Store, Table};
use crate::kube_sim::status::GroupResource;

/// The resources the simulated API serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// core/v1 pods.
    Pods,
    /// core/v1 secrets.
    Secrets,
    /// coordination.k8s.io/v1 leases.
    Leases,
}

impl ResourceKind {
    /// Group and plural name.
    pub fn gr(self) -> GroupResource {
        match self {
            Self::Pods => GroupResource {
                group: "",
                resource: "pods",
            },
            Self::Secrets => GroupResource {
                group: "",
                resource: "secrets",
            },
            Self::Leases => GroupResource {
                group: "coordination.k8s.io",
                resource: "leases",
            },
        }
    }

    /// The object kind.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Pods => "Pod",
            Self::Secrets => "Secret",
            Self::Leases => "Lease",
        }
    }

    /// `apiVersion` of the objects.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::Pods | Self::Secrets => "v1",
            Self::Leases => "coordination.k8s.io/v1",
        }
    }

    /// Field labels the resource supports in `fieldSelector`.
    pub fn field_labels(self) -> &'static [&'static str] {
        match self {
            Self::Pods => &[
                "metadata.name",
                "metadata.namespace",
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            Self::Secrets => &["metadata.name", "metadata.namespace", "type"],
            Self::Leases => &["metadata.name", "metadata.namespace"],
        }
    }

    /// The body of a BOOKMARK event at `rv` (the zero object of the kind, as Go prints it).
    pub fn bookmark(self, rv: u64, initial_events_end: bool) -> serde_json::Value {
        let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
        if initial_events_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let mut v =
            json!({"kind": self.kind(), "apiVersion": self.api_version(), "metadata": meta});
        match self {
            Self::Pods => {
                v["spec"] = json!({"containers": null});
                v["status"] = json!({});
            }
            Self::Leases => v["spec"] = json!({}),
            Self::Secrets => {}
        }
        v
    }
}

/// The typed objects the store keeps.
pub trait StoredObject:
    k8s_openapi::Resource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Serialize
    + Clone
    + Send
    + Sync
    + 'static
{
    /// Which resource this is.
    const RESOURCE: ResourceKind;
    /// Values of the field labels.
    fn fields(&self) -> Vec<(&'static str, String)>;
    /// Its table.
    fn table(store: &Store) -> &Table<Self>;
    /// Its table, mutable.
    fn table_mut(store: &mut Store) -> &mut Table<Self>;
}

fn meta_fields(m: &ObjectMeta) -> [(&'static str, String); 2] {
    [
        ("metadata.name", m.name.clone().unwrap_or_default()),
        (
            "metadata.namespace",
            m.namespace.clone().unwrap_or_default(),
        ),
    ]
}

impl StoredObject for Pod {
    const RESOURCE: ResourceKind = ResourceKind::Pods;
    fn fields(&self) -> Vec<(&'static str, String)> {
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        let mut f = meta_fields(&self.metadata).to_vec();
        f.extend([
            (
                "spec.nodeName",
                spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            ),
            (
                "spec.restartPolicy",
                spec.and_then(|s| s.restart_policy.clone())
                    .unwrap_or_default(),
            ),
            (
                "spec.schedulerName",
                spec.and_then(|s| s.scheduler_name.clone())
                    .unwrap_or_default(),
            ),
            (
                "spec.serviceAccountName",
                spec.and_then(|s| s.service_account_name.clone())
                    .unwrap_or_default(),
            ),
            (
                "spec.hostNetwork",
                spec.and_then(|s| s.host_network)
                    .unwrap_or(false)
                    .to_string(),
            ),
            (
                "status.phase",
                status.and_then(|s| s.phase.clone()).unwrap_or_default(),
            ),
            (
                "status.podIP",
                status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
            ),
            (
                "status.nominatedNodeName",
                status
                    .and_then(|s| s.nominated_node_name.clone())
                    .unwrap_or_default(),
            ),
        ]);
        f
    }
    fn table(store: &Store) -> &Table<Self> {
        &store.pods
    }
    fn table_mut(store: &mut Store) -> &mut Table<Self> {
        &mut store.pods
    }
}

impl StoredObject for Secret {
    const RESOURCE: ResourceKind = ResourceKind::Secrets;
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = meta_fields(&self.metadata).to_vec();
        f.push(("type", self.type_.clone().unwrap_or_default()));
        f
    }
    fn table(store: &Store) -> &Table<Self> {
        &store.secrets
    }
    fn table_mut(store: &mut Store) -> &mut Table<Self> {
        &mut store.secrets
    }
}

impl StoredObject for Lease {
    const RESOURCE: ResourceKind = ResourceKind::Leases;
    fn fields(&self) -> Vec<(&'static str, String)> {
        meta_fields(&self.metadata).to_vec()
    }
    fn table(store: &Store) -> &Table<Self> {
        &store.leases
    }
    fn table_mut(store: &mut Store) -> &mut Table<Self> {
        &mut store.leases
    }
}
