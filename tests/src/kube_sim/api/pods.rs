//! Pod deletion: immediate for pods that are not scheduled or already finished, graceful
//! (deletionTimestamp, then the kubelet stops it) for the others.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::delete::check_preconditions;
use super::{Resp, json};
use crate::kube_sim::cluster::{ClusterInner, lock};
use crate::kube_sim::lifecycle;
use crate::kube_sim::request::{DeleteOptions, Propagation, Query};
use crate::kube_sim::status::ApiError;
use crate::kube_sim::store::{Key, ResourceKind, Store};

/// DELETE of one pod; answers the pod (deleted, or marked for deletion).
pub fn delete(
    cluster: &Arc<ClusterInner>,
    ns: &str,
    name: &str,
    query: &Query,
    body: &[u8],
) -> Result<Resp, ApiError> {
    let opts = DeleteOptions::parse(query, body)?;
    let mut store = lock(&cluster.store);
    let body = delete_one(
        cluster,
        &mut store,
        &(ns.to_owned(), name.to_owned()),
        &opts,
    )?;
    Ok(json(StatusCode::OK, body))
}

/// Deletes one pod with the API server's grace-period rules (`CheckGracefulDelete`):
/// the grace period is the option's or the pod's; unscheduled and finished pods go at once;
/// a second delete may only shorten the grace period. Answers the pod JSON to return.
pub fn delete_one(
    cluster: &Arc<ClusterInner>,
    store: &mut Store,
    key: &Key,
    opts: &DeleteOptions,
) -> Result<Bytes, ApiError> {
    let gr = ResourceKind::Pods.gr();
    let Some(slot) = store.table::<Pod>().get(key) else {
        return Err(ApiError::not_found(gr, &key.1));
    };
    check_preconditions(gr, &key.1, &slot.obj.metadata, opts)?;
    let pod = slot.object();
    let current = slot.entry.json.clone();
    let spec = pod.spec.clone().unwrap_or_default();
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    let scheduled = spec.node_name.as_deref().is_some_and(|n| !n.is_empty());
    let mut grace = opts
        .grace_period
        .unwrap_or_else(|| spec.termination_grace_period_seconds.unwrap_or(30));
    if !scheduled || matches!(phase, "Succeeded" | "Failed") {
        grace = 0;
    }
    if grace < 0 {
        grace = 1;
    }
    if opts.dry_run {
        return Ok(current);
    }
    let propagation = opts.propagation.unwrap_or(Propagation::Background);
    if grace == 0 {
        cluster.remove_pod(store, key, propagation);
        return Ok(current);
    }
    let now = Timestamp::now();
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let deadline = now
        .checked_add(SignedDuration::from_secs(grace))
        .unwrap_or(now);
    if let Some(existing) = &pod.metadata.deletion_timestamp
        && existing.0 <= deadline
    {
        // Already terminating at least as soon: nothing changes.
        return Ok(current);
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut pod = pod;
    pod.metadata.deletion_timestamp = Some(Time(deadline));
    pod.metadata.deletion_grace_period_seconds = Some(grace);
    let entry = store.put(pod);
    lock(&cluster.deletions).insert(uid.clone(), propagation);
    let grace_secs = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
    let after = grace_secs.min(cluster.timeline().terminate_after);
    lifecycle::spawn_termination(cluster.clone(), key.clone(), uid, after);
    Ok(entry.json.clone())
}
