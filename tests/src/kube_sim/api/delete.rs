//! Deletes shared by every resource: preconditions, immediate delete, deletecollection.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::list::{list_body, parse_fields, parse_labels};
use super::{ApiObject, Resp, json as json_resp};
use crate::kube_sim::cluster::{ClusterInner, lock};
use crate::kube_sim::request::{DeleteOptions, ListOptions, Query};
use crate::kube_sim::status::{ApiError, GroupResource, delete_success};
use crate::kube_sim::store::Key;

/// 409 when DeleteOptions preconditions do not hold.
pub fn check_preconditions(
    gr: GroupResource,
    name: &str,
    meta: &ObjectMeta,
    opts: &DeleteOptions,
) -> Result<(), ApiError> {
    let uid = meta.uid.as_deref().unwrap_or("");
    if let Some(want) = &opts.precondition_uid
        && want != uid
    {
        return Err(ApiError::conflict(
            gr,
            name,
            &format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
        ));
    }
    let rv = meta.resource_version.as_deref().unwrap_or("");
    if let Some(want) = &opts.precondition_rv
        && want != rv
    {
        return Err(ApiError::conflict(
            gr,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}"
            ),
        ));
    }
    Ok(())
}

/// DELETE of an object without graceful deletion: gone at once, answered with a Status.
pub fn delete_now<K: ApiObject>(
    cluster: &Arc<ClusterInner>,
    ns: &str,
    name: &str,
    query: &Query,
    body: &[u8],
) -> Result<Resp, ApiError> {
    let opts = DeleteOptions::parse(query, body)?;
    let mut store = lock(&cluster.store);
    let key = (ns.to_owned(), name.to_owned());
    let Some(slot) = store.table::<K>().get(&key) else {
        return Err(ApiError::not_found(K::RESOURCE.gr(), name));
    };
    check_preconditions(K::RESOURCE.gr(), name, slot.obj.metadata(), &opts)?;
    let uid = slot.entry.uid.clone();
    if !opts.dry_run {
        store.remove::<K>(&key);
    }
    Ok(json_resp(
        StatusCode::OK,
        serde_json::to_vec(&delete_success(K::RESOURCE.gr(), name, &uid)).unwrap_or_default(),
    ))
}

/// DELETE of a collection: every selected object is deleted as by a single DELETE; the
/// answer lists them.
pub fn delete_collection<K: ApiObject>(
    cluster: &Arc<ClusterInner>,
    ns: &str,
    query: &Query,
    body: &[u8],
) -> Result<Resp, ApiError> {
    let opts = DeleteOptions::parse(query, body)?;
    let list = ListOptions::from_query(query)?;
    let labels = parse_labels(&list.label_selector)?;
    let fields = parse_fields(K::RESOURCE, &list.field_selector)?;
    let mut store = lock(&cluster.store);
    let keys: Vec<Key> = store
        .table::<K>()
        .select(Some(ns), &labels, &fields, None)
        .map(|e| e.key.clone())
        .collect();
    let items: Vec<Bytes> = keys
        .iter()
        .filter_map(|k| K::delete_in_collection(cluster, &mut store, k, &opts))
        .collect();
    Ok(json_resp(
        StatusCode::OK,
        list_body(K::RESOURCE, store.rv(), None, None, &items),
    ))
}
