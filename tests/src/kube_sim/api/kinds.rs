//! Per-resource API rules: decoding and defaulting, admission, validation, update
//! preparation and what happens after a create (pod kubelets, garbage collection of
//! Secrets whose owner is already gone).

use std::sync::Arc;

use bytes::Bytes;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, PodSpec, Secret};
use serde::de::DeserializeOwned;

use super::{Resp, delete, pods};
use crate::kube_sim::cluster::{ClusterInner, CreateRecord, lock, now_rfc3339};
use crate::kube_sim::defaults::{admit_pod, canonicalize_quantities, default_pod, initial_status};
use crate::kube_sim::kubelet::{Kubelet, Placement};
use crate::kube_sim::lifecycle;
use crate::kube_sim::quantity::Quantity;
use crate::kube_sim::request::{DeleteOptions, Query};
use crate::kube_sim::script::script_for;
use crate::kube_sim::status::ApiError;
use crate::kube_sim::store::{Key, Store, StoredObject};
use crate::kube_sim::validation::{
    ErrorList, validate_lease, validate_pod_create, validate_pod_update, validate_secret,
};

/// Decodes a body as `K`; a 400 like the API server's decoder when it cannot.
pub fn decode_as<K: StoredObject + DeserializeOwned>(body: &[u8]) -> Result<K, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::undecodable(K::RESOURCE.kind(), K::API_VERSION, e))
}

/// The rules of one resource.
pub trait ApiObject: StoredObject + DeserializeOwned {
    /// PUT may create the object.
    const ALLOW_CREATE_ON_UPDATE: bool;
    /// PUT without metadata.resourceVersion overwrites.
    const ALLOW_UNCONDITIONAL_UPDATE: bool;

    /// Decodes a request body and applies the resource's defaults.
    fn decode(body: &[u8]) -> Result<Self, ApiError> {
        decode_as(body)
    }

    /// Mutating admission on create; may reject.
    fn admit_create(_cluster: &ClusterInner, _obj: &mut Self) -> Result<(), ApiError> {
        Ok(())
    }

    /// Validation on create.
    fn validate_create(&self) -> ErrorList;

    /// Carries over what an update may not change (e.g. a pod's status).
    fn prepare_update(&mut self, _old: &Self) {}

    /// Validation on update.
    fn validate_update(&self, old: &Self) -> ErrorList;

    /// Runs after the object was stored by a create, still under the store lock.
    fn after_create(_cluster: &Arc<ClusterInner>, _store: &mut Store, _obj: &Self) {}

    /// DELETE of one object.
    fn delete(
        cluster: &Arc<ClusterInner>,
        ns: &str,
        name: &str,
        query: &Query,
        body: &[u8],
    ) -> Result<Resp, ApiError> {
        delete::delete_now::<Self>(cluster, ns, name, query, body)
    }

    /// Deletes one object of a deletecollection; answers the item for the response list.
    fn delete_in_collection(
        cluster: &Arc<ClusterInner>,
        store: &mut Store,
        key: &Key,
        opts: &DeleteOptions,
    ) -> Option<Bytes> {
        let _ = cluster;
        let json = store.table::<Self>().get(key)?.entry.json.clone();
        if !opts.dry_run {
            store.remove::<Self>(key);
        }
        Some(json)
    }
}

fn check_quantities(spec: &PodSpec) -> Result<(), ApiError> {
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        if let Some(r) = &c.resources {
            for q in r
                .limits
                .iter()
                .flatten()
                .chain(r.requests.iter().flatten())
                .map(|(_, q)| q)
            {
                Quantity::parse(&q.0).map_err(|e| ApiError::undecodable("Pod", "v1", e))?;
            }
        }
    }
    Ok(())
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A generated name: `generateName` plus five random characters.
pub fn generate_name(prefix: &str) -> String {
    format!("{prefix}{}", random_suffix())
}

impl ApiObject for Pod {
    const ALLOW_CREATE_ON_UPDATE: bool = false;
    const ALLOW_UNCONDITIONAL_UPDATE: bool = true;

    fn decode(body: &[u8]) -> Result<Self, ApiError> {
        let mut pod: Pod = decode_as(body)?;
        let spec = pod.spec.get_or_insert_with(PodSpec::default);
        check_quantities(spec)?;
        canonicalize_quantities(spec);
        default_pod(&mut pod);
        Ok(pod)
    }

    fn admit_create(cluster: &ClusterInner, pod: &mut Self) -> Result<(), ApiError> {
        if let Some(rc) = pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.as_deref())
            && !cluster.config.runtime_classes.iter().any(|c| c == rc)
        {
            let name = pod.metadata.name.clone().unwrap_or_default();
            return Err(ApiError::forbidden(
                Self::RESOURCE.gr(),
                &name,
                &format!("pod rejected: RuntimeClass {rc:?} not found"),
            ));
        }
        admit_pod(pod, &random_suffix());
        pod.metadata.generation = Some(1);
        let spec = pod.spec.get_or_insert_with(PodSpec::default);
        pod.status = Some(initial_status(spec));
        Ok(())
    }

    fn validate_create(&self) -> ErrorList {
        validate_pod_create(self)
    }

    fn prepare_update(&mut self, old: &Self) {
        self.status.clone_from(&old.status);
        // The generation counts spec changes.
        let generation = old.metadata.generation.unwrap_or(1);
        let spec_changed =
            serde_json::to_value(&self.spec).ok() != serde_json::to_value(&old.spec).ok();
        self.metadata.generation = Some(if spec_changed {
            generation + 1
        } else {
            generation
        });
    }

    fn validate_update(&self, old: &Self) -> ErrorList {
        validate_pod_update(self, old)
    }

    fn after_create(cluster: &Arc<ClusterInner>, _store: &mut Store, pod: &Self) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        lock(&cluster.creates).push(CreateRecord {
            name: name.clone(),
            namespace: namespace.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            uid: uid.clone(),
            time: now_rfc3339(),
        });
        let seq = cluster
            .seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let node = seq % 3 + 1;
        let placement = Placement {
            node: format!("{}-node-{node}", cluster.name),
            host_ip: format!("10.0.0.{}", node + 10),
            pod_ip: format!("10.244.{}.{}", (seq / 250) % 250, seq % 250 + 2),
        };
        let spec = pod.spec.clone().unwrap_or_default();
        let image = spec
            .containers
            .first()
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let script = script_for(&lock(&cluster.scripts), &image);
        let kubelet = Kubelet::new(
            &name,
            &namespace,
            &uid,
            &spec,
            script,
            placement,
            Timestamp::now(),
        );
        lifecycle::spawn_driver(
            cluster.clone(),
            (namespace, name),
            uid,
            kubelet,
            spec.active_deadline_seconds,
        );
    }

    fn delete(
        cluster: &Arc<ClusterInner>,
        ns: &str,
        name: &str,
        query: &Query,
        body: &[u8],
    ) -> Result<Resp, ApiError> {
        pods::delete(cluster, ns, name, query, body)
    }

    fn delete_in_collection(
        cluster: &Arc<ClusterInner>,
        store: &mut Store,
        key: &Key,
        opts: &DeleteOptions,
    ) -> Option<Bytes> {
        pods::delete_one(cluster, store, key, opts).ok()
    }
}

impl ApiObject for Secret {
    const ALLOW_CREATE_ON_UPDATE: bool = false;
    const ALLOW_UNCONDITIONAL_UPDATE: bool = true;

    fn decode(body: &[u8]) -> Result<Self, ApiError> {
        let mut secret: Secret = decode_as(body)?;
        // stringData is write-only: merged into data (winning over it), never stored.
        if let Some(string_data) = secret.string_data.take() {
            let data = secret.data.get_or_insert_with(Default::default);
            for (k, v) in string_data {
                data.insert(k, ByteString(v.into_bytes()));
            }
        }
        secret.type_.get_or_insert_with(|| "Opaque".to_owned());
        Ok(secret)
    }

    fn validate_create(&self) -> ErrorList {
        validate_secret(self, None)
    }

    fn validate_update(&self, old: &Self) -> ErrorList {
        validate_secret(self, Some(old))
    }

    fn after_create(_cluster: &Arc<ClusterInner>, store: &mut Store, secret: &Self) {
        // The garbage collector deletes a dependent whose owners do not exist (any more).
        let refs = secret
            .metadata
            .owner_references
            .as_deref()
            .unwrap_or_default();
        let all_pods = !refs.is_empty()
            && refs
                .iter()
                .all(|r| r.kind == "Pod" && r.api_version == "v1");
        if all_pods
            && refs
                .iter()
                .all(|r| store.table::<Pod>().key_of_uid(&r.uid).is_none())
        {
            let key = (
                secret.metadata.namespace.clone().unwrap_or_default(),
                secret.metadata.name.clone().unwrap_or_default(),
            );
            store.remove::<Secret>(&key);
        }
    }
}

impl ApiObject for Lease {
    const ALLOW_CREATE_ON_UPDATE: bool = true;
    const ALLOW_UNCONDITIONAL_UPDATE: bool = false;

    fn validate_create(&self) -> ErrorList {
        validate_lease(self, None)
    }

    fn validate_update(&self, old: &Self) -> ErrorList {
        validate_lease(self, Some(old))
    }
}
