//! Writes shared by every resource: create, update (optimistic concurrency) and merge patch.

use std::sync::Arc;

use http::StatusCode;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::{Value, json};

use super::kinds::generate_name;
use super::{ApiObject, Resp, json as json_resp};
use crate::kube_sim::cluster::{ClusterInner, lock};
use crate::kube_sim::managed;
use crate::kube_sim::request::Query;
use crate::kube_sim::status::ApiError;
use crate::kube_sim::store::Store;
use crate::kube_sim::validation::FieldError;

fn set_system_fields(meta: &mut ObjectMeta) {
    meta.uid = Some(uuid::Uuid::new_v4().to_string());
    let now = Timestamp::now();
    meta.creation_timestamp = Some(Time(Timestamp::from_second(now.as_second()).unwrap_or(now)));
    meta.deletion_timestamp = None;
    meta.deletion_grace_period_seconds = None;
    meta.self_link = None;
}

fn check_namespace(obj_ns: Option<&str>, ns: &str) -> Result<(), ApiError> {
    match obj_ns {
        Some(n) if !n.is_empty() && n != ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => Ok(()),
    }
}

/// POST: decode, default, admit, validate, store.
pub fn create<K: ApiObject>(
    cluster: &Arc<ClusterInner>,
    ns: &str,
    query: &Query,
    body: &[u8],
    manager: &str,
) -> Result<Resp, ApiError> {
    let obj = K::decode(body)?;
    create_object(
        cluster,
        ns,
        obj,
        query.get("dryRun") == Some("All"),
        None,
        manager,
    )
}

fn create_object<K: ApiObject>(
    cluster: &Arc<ClusterInner>,
    ns: &str,
    mut obj: K,
    dry_run: bool,
    locked: Option<&mut Store>,
    manager: &str,
) -> Result<Resp, ApiError> {
    check_namespace(obj.metadata().namespace.as_deref(), ns)?;
    let meta = obj.metadata_mut();
    meta.namespace = Some(ns.to_owned());
    if meta.name.as_deref().unwrap_or("").is_empty()
        && let Some(prefix) = meta.generate_name.clone().filter(|g| !g.is_empty())
    {
        meta.name = Some(generate_name(&prefix));
    }
    if let Some(known) = &cluster.config.namespaces
        && !known.iter().any(|n| n == ns)
    {
        return Err(ApiError::namespace_not_found(ns));
    }
    // The field manager sees the object as decoded and defaulted, before admission mutates it;
    // what the client sent as managedFields is replaced.
    managed::record(None, &mut obj, manager);
    K::admit_create(cluster, &mut obj)?;
    let name = obj.metadata().name.clone().unwrap_or_default();
    let errs = obj.validate_create();
    if !errs.is_empty() {
        return Err(ApiError::invalid(
            K::GROUP,
            K::RESOURCE.kind(),
            &name,
            &errs,
        ));
    }
    if obj
        .metadata()
        .resource_version
        .as_deref()
        .is_some_and(|r| !r.is_empty())
    {
        return Err(ApiError::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    set_system_fields(obj.metadata_mut());
    if dry_run {
        return Ok(json_resp(
            StatusCode::CREATED,
            serde_json::to_vec(&obj).unwrap_or_default(),
        ));
    }
    let key = (ns.to_owned(), name.clone());
    let mut guard;
    let store = match locked {
        Some(s) => s,
        None => {
            guard = lock(&cluster.store);
            &mut *guard
        }
    };
    if store.table::<K>().get(&key).is_some() {
        return Err(ApiError::already_exists(K::RESOURCE.gr(), &name));
    }
    let entry = store.put(obj);
    let stored = store.table::<K>().get(&key).map(|s| s.obj.clone());
    if let Some(stored) = stored {
        K::after_create(cluster, store, &stored);
    }
    Ok(json_resp(StatusCode::CREATED, entry.json.clone()))
}

/// PUT with optimistic concurrency on metadata.resourceVersion.
pub fn update<K: ApiObject>(
    cluster: &Arc<ClusterInner>,
    ns: &str,
    name: &str,
    body: &[u8],
    manager: &str,
) -> Result<Resp, ApiError> {
    let obj = K::decode(body)?;
    let obj_name = obj.metadata().name.clone().unwrap_or_default();
    if obj_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({obj_name}) does not match the name on the URL ({name})"
        )));
    }
    check_namespace(obj.metadata().namespace.as_deref(), ns)?;
    let mut store = lock(&cluster.store);
    let key = (ns.to_owned(), name.to_owned());
    let Some(old) = store.table::<K>().get(&key).map(|s| s.object()) else {
        if K::ALLOW_CREATE_ON_UPDATE {
            let mut obj = obj;
            obj.metadata_mut().resource_version = None;
            return create_object(cluster, ns, obj, false, Some(&mut store), manager);
        }
        return Err(ApiError::not_found(K::RESOURCE.gr(), name));
    };
    match obj
        .metadata()
        .resource_version
        .as_deref()
        .filter(|r| !r.is_empty())
    {
        None if !K::ALLOW_UNCONDITIONAL_UPDATE => {
            return Err(ApiError::invalid(
                K::GROUP,
                K::RESOURCE.kind(),
                name,
                &[FieldError::invalid_raw(
                    "metadata.resourceVersion",
                    "0x0",
                    "must be specified for an update",
                )],
            ));
        }
        Some(rv) if Some(rv) != old.metadata().resource_version.as_deref() => {
            return Err(ApiError::stale_update(K::RESOURCE.gr(), name));
        }
        _ => {}
    }
    apply_update(&mut store, ns, obj, &old, manager)
}

fn apply_update<K: ApiObject>(
    store: &mut Store,
    ns: &str,
    mut obj: K,
    old: &K,
    manager: &str,
) -> Result<Resp, ApiError> {
    let name = old.metadata().name.clone().unwrap_or_default();
    let om = old.metadata();
    let m = obj.metadata_mut();
    m.namespace = Some(ns.to_owned());
    if m.uid.as_deref().unwrap_or("").is_empty() {
        m.uid.clone_from(&om.uid);
    }
    if m.creation_timestamp.is_none() {
        m.creation_timestamp.clone_from(&om.creation_timestamp);
    }
    m.deletion_timestamp.clone_from(&om.deletion_timestamp);
    m.deletion_grace_period_seconds = om.deletion_grace_period_seconds;
    m.generation = om.generation;
    m.resource_version.clone_from(&om.resource_version);
    obj.prepare_update(old);
    managed::record(Some(old), &mut obj, manager);
    let errs = obj.validate_update(old);
    if !errs.is_empty() {
        return Err(ApiError::invalid(
            K::GROUP,
            K::RESOURCE.kind(),
            &name,
            &errs,
        ));
    }
    let key = (ns.to_owned(), name);
    let old_json = store
        .table::<K>()
        .get(&key)
        .map(|s| s.entry.json.clone())
        .unwrap_or_default();
    // etcd skips a write that changes nothing: same resourceVersion, no event.
    if serde_json::to_vec(&obj).ok().as_deref() == Some(&old_json[..]) {
        return Ok(json_resp(StatusCode::OK, old_json));
    }
    let entry = store.put(obj);
    Ok(json_resp(StatusCode::OK, entry.json.clone()))
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// PATCH with a JSON merge patch (strategic merge patches are applied as merge patches:
/// lists are replaced, not merged by key).
pub fn patch<K: ApiObject>(
    cluster: &Arc<ClusterInner>,
    ns: &str,
    name: &str,
    content_type: &str,
    body: &[u8],
    manager: &str,
) -> Result<Resp, ApiError> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    if !matches!(
        ct,
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        return Err(ApiError::unsupported_media_type(ct));
    }
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let mut store = lock(&cluster.store);
    let key = (ns.to_owned(), name.to_owned());
    let Some(old) = store.table::<K>().get(&key).map(|s| s.object()) else {
        return Err(ApiError::not_found(K::RESOURCE.gr(), name));
    };
    if let Some(rv) = patch
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        && Some(rv) != old.metadata().resource_version.as_deref()
    {
        return Err(ApiError::stale_update(K::RESOURCE.gr(), name));
    }
    let mut doc = serde_json::to_value(&old).map_err(|e| ApiError::internal(&e.to_string()))?;
    merge_patch(&mut doc, &patch);
    let obj = K::decode(&serde_json::to_vec(&doc).unwrap_or_default())?;
    if obj.metadata().name.as_deref() != Some(name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            obj.metadata().name.clone().unwrap_or_default()
        )));
    }
    apply_update(&mut store, ns, obj, &old, manager)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut doc, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(doc, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }
}
