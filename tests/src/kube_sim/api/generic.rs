//! Handlers shared by every resource: get, list (selectors, pagination, resourceVersion
//! semantics), watch, create, update (optimistic concurrency), merge patch, delete and
//! deletecollection.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::{Value, json};

use super::kinds::generate_name;
use super::{ApiObject, Resp, json as json_resp};
use crate::kube_sim::cluster::{ClusterInner, lock};
use crate::kube_sim::request::{DeleteOptions, ListOptions, Query};
use crate::kube_sim::selector::{FieldSelector, LabelSelector};
use crate::kube_sim::status::{ApiError, GroupResource, delete_success};
use crate::kube_sim::store::{Entry, Key, ResourceKind, Store};
use crate::kube_sim::validation::FieldError;
use crate::kube_sim::watch::{self, Filter};

const CONTINUE_TOO_OLD: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

fn parse_labels(s: &str) -> Result<LabelSelector, ApiError> {
    LabelSelector::parse(s).map_err(|e| ApiError::bad_request(e.0))
}

fn parse_fields(kind: ResourceKind, s: &str) -> Result<FieldSelector, ApiError> {
    let f = FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.0))?;
    if let Some(t) = f.0.iter().find(|t| !kind.field_labels().contains(&t.field.as_str())) {
        return Err(ApiError::bad_request(format!("field label not supported: {}", t.field)));
    }
    Ok(f)
}

/// GET of one object.
pub fn get<K: ApiObject>(cluster: &ClusterInner, ns: &str, name: &str) -> Result<Resp, ApiError> {
    let store = lock(&cluster.store);
    match store.table::<K>().get(&(ns.to_owned(), name.to_owned())) {
        Some(slot) => Ok(json_resp(StatusCode::OK, slot.entry.json.clone())),
        None => Err(ApiError::not_found(K::RESOURCE.gr(), name)),
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let vals: Vec<u32> = s.bytes().map(|c| B64.iter().position(|b| *b == c).map(|p| p as u32)).collect::<Option<_>>()?;
    let mut out = Vec::new();
    for chunk in vals.chunks(4) {
        if chunk.len() < 2 {
            return None;
        }
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, v)| acc | (v << (18 - 6 * i)));
        for i in 0..chunk.len() - 1 {
            out.push(((n >> (16 - 8 * i)) & 0xff) as u8);
        }
    }
    Some(out)
}

/// The continue token of a page that ended at `key` of a list at `rv` (the API server's
/// format: base64 of `{"v":"meta.k8s.io/v1","rv":N,"start":"ns/name\u0000"}`).
fn encode_continue(rv: u64, key: &Key) -> String {
    let start = format!("{}/{}\u{0}", key.0, key.1);
    b64_encode(&serde_json::to_vec(&json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start})).unwrap_or_default())
}

fn decode_continue(token: &str) -> Result<(u64, Key), ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
    let raw = b64_decode(token).ok_or_else(|| bad("illegal base64 data"))?;
    let v: Value = serde_json::from_slice(&raw).map_err(|e| bad(&e.to_string()))?;
    if v["v"] != "meta.k8s.io/v1" {
        return Err(bad("incorrect encoded start resourceVersion (version meta.k8s.io/v1)"));
    }
    let rv = v["rv"].as_u64().ok_or_else(|| bad("incorrect encoded start resourceVersion"))?;
    let start = v["start"].as_str().ok_or_else(|| bad("missing start"))?.trim_end_matches('\u{0}');
    let (ns, name) = start.split_once('/').unwrap_or(("", start));
    Ok((rv, (ns.to_owned(), name.to_owned())))
}

fn list_body(kind: ResourceKind, rv: u64, cont: Option<String>, remaining: Option<usize>, items: &[Bytes]) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    if let Some(r) = remaining {
        meta["remainingItemCount"] = json!(r);
    }
    let head = json!({"kind": format!("{}List", kind.kind()), "apiVersion": kind.api_version(), "metadata": meta});
    let mut head = serde_json::to_vec(&head).unwrap_or_default();
    head.pop(); // the closing brace: items follow
    let mut b = BytesMut::with_capacity(head.len() + items.iter().map(|i| i.len() + 1).sum::<usize>() + 16);
    b.put_slice(&head);
    b.put_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            b.put_u8(b',');
        }
        b.put_slice(item);
    }
    b.put_slice(b"]}");
    b.freeze()
}

fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

/// LIST with selectors, `limit`/`continue` and `resourceVersion`/`resourceVersionMatch`.
pub async fn list<K: ApiObject>(cluster: &Arc<ClusterInner>, ns: Option<&str>, query: &Query) -> Result<Resp, ApiError> {
    let opts = ListOptions::from_query(query)?;
    if opts.send_initial_events.is_some() {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            &[FieldError::forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list")],
        ));
    }
    let labels = parse_labels(&opts.label_selector)?;
    let fields = parse_fields(K::RESOURCE, &opts.field_selector)?;
    let cont = opts.continue_token.as_deref().map(decode_continue).transpose()?;
    let requested = match opts.resource_version.as_deref() {
        None | Some("" | "0") => None,
        Some(rv) => Some(parse_rv(rv)?),
    };
    match opts.resource_version_match.as_deref() {
        None => {}
        Some("NotOlderThan" | "Exact") if opts.resource_version.as_deref().is_some_and(|r| !r.is_empty()) => {}
        Some(m @ ("NotOlderThan" | "Exact")) => {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "ListOptions",
                "",
                &[FieldError::forbidden("resourceVersionMatch", format!("resourceVersionMatch \"{m}\" is forbidden unless resourceVersion is provided"))],
            ));
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "ListOptions",
                "",
                &[FieldError::not_supported("resourceVersionMatch", other, &["Exact", "NotOlderThan", ""])],
            ));
        }
    }
    if cont.is_some() && requested.is_some() {
        return Err(ApiError::bad_request("specifying resource version is not allowed when using continue"));
    }
    if let Some(rv) = requested {
        watch::wait_for_rv(cluster, rv).await;
    }
    let store = lock(&cluster.store);
    let table = store.table::<K>();
    if let Some(rv) = requested {
        if rv > store.rv() {
            return Err(ApiError::too_large_resource_version(rv, store.rv()));
        }
        // The simulator keeps no snapshots: an exact list of the past is gone.
        if opts.resource_version_match.as_deref() == Some("Exact") && rv != store.rv() {
            return Err(ApiError::expired(format!("too old resource version: {rv} ({})", table.floor())));
        }
    }
    let list_rv = match &cont {
        Some((rv, _)) if *rv < table.floor() => return Err(ApiError::expired(CONTINUE_TOO_OLD)),
        Some((rv, _)) => *rv,
        None => store.rv(),
    };
    let after = cont.as_ref().map(|(_, k)| k);
    let limit = if opts.limit == 0 { usize::MAX } else { opts.limit };
    let mut iter = table.select(ns, &labels, &fields, after);
    let mut page: Vec<&Arc<Entry>> = Vec::new();
    let mut more = false;
    for e in iter.by_ref() {
        if page.len() == limit {
            more = true;
            break;
        }
        page.push(e);
    }
    let unfiltered = labels.0.is_empty() && fields.0.is_empty();
    let remaining = (more && unfiltered).then(|| 1 + iter.count());
    let token = if more { page.last().map(|e| encode_continue(list_rv, &e.key)) } else { None };
    let items: Vec<Bytes> = page.iter().map(|e| e.json.clone()).collect();
    Ok(json_resp(StatusCode::OK, list_body(K::RESOURCE, list_rv, token, remaining, &items)))
}

/// WATCH of a collection (or of one object when `name` is given).
pub async fn watch<K: ApiObject>(cluster: &Arc<ClusterInner>, ns: Option<&str>, name: Option<&str>, query: &Query) -> Result<Resp, ApiError> {
    let opts = ListOptions::from_query(query)?;
    let labels = parse_labels(&opts.label_selector)?;
    let mut fields = parse_fields(K::RESOURCE, &opts.field_selector)?;
    if let Some(name) = name {
        fields.0.push(crate::kube_sim::selector::FieldTerm { field: "metadata.name".into(), value: name.into(), negated: false });
    }
    let filter = Filter { ns: ns.map(str::to_owned), labels, fields };
    watch::serve(cluster.clone(), K::RESOURCE, filter, &opts).await
}

fn set_system_fields(meta: &mut ObjectMeta) {
    meta.uid = Some(uuid::Uuid::new_v4().to_string());
    let now = Timestamp::now();
    meta.creation_timestamp = Some(Time(Timestamp::from_second(now.as_second()).unwrap_or(now)));
    meta.deletion_timestamp = None;
    meta.deletion_grace_period_seconds = None;
    meta.managed_fields = None;
    meta.self_link = None;
}

fn check_namespace(obj_ns: Option<&str>, ns: &str) -> Result<(), ApiError> {
    match obj_ns {
        Some(n) if !n.is_empty() && n != ns => {
            Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"))
        }
        _ => Ok(()),
    }
}

/// POST: decode, default, admit, validate, store.
pub fn create<K: ApiObject>(cluster: &Arc<ClusterInner>, ns: &str, query: &Query, body: &[u8]) -> Result<Resp, ApiError> {
    let obj = K::decode(body)?;
    create_object(cluster, ns, obj, query.get("dryRun") == Some("All"), None)
}

fn create_object<K: ApiObject>(
    cluster: &Arc<ClusterInner>,
    ns: &str,
    mut obj: K,
    dry_run: bool,
    locked: Option<&mut Store>,
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
    K::admit_create(cluster, &mut obj)?;
    let name = obj.metadata().name.clone().unwrap_or_default();
    let errs = obj.validate_create();
    if !errs.is_empty() {
        return Err(ApiError::invalid(K::GROUP, K::RESOURCE.kind(), &name, &errs));
    }
    if obj.metadata().resource_version.as_deref().is_some_and(|r| !r.is_empty()) {
        return Err(ApiError::internal("resourceVersion should not be set on objects to be created"));
    }
    set_system_fields(obj.metadata_mut());
    if dry_run {
        return Ok(json_resp(StatusCode::CREATED, serde_json::to_vec(&obj).unwrap_or_default()));
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
pub fn update<K: ApiObject>(cluster: &Arc<ClusterInner>, ns: &str, name: &str, body: &[u8]) -> Result<Resp, ApiError> {
    let obj = K::decode(body)?;
    let obj_name = obj.metadata().name.clone().unwrap_or_default();
    if obj_name != name {
        return Err(ApiError::bad_request(format!("the name of the object ({obj_name}) does not match the name on the URL ({name})")));
    }
    check_namespace(obj.metadata().namespace.as_deref(), ns)?;
    let mut store = lock(&cluster.store);
    let key = (ns.to_owned(), name.to_owned());
    let Some(old) = store.table::<K>().get(&key).map(|s| s.obj.clone()) else {
        if K::ALLOW_CREATE_ON_UPDATE {
            let mut obj = obj;
            obj.metadata_mut().resource_version = None;
            return create_object(cluster, ns, obj, false, Some(&mut store));
        }
        return Err(ApiError::not_found(K::RESOURCE.gr(), name));
    };
    match obj.metadata().resource_version.as_deref().filter(|r| !r.is_empty()) {
        None if !K::ALLOW_UNCONDITIONAL_UPDATE => {
            return Err(ApiError::invalid(
                K::GROUP,
                K::RESOURCE.kind(),
                name,
                &[FieldError::invalid_raw("metadata.resourceVersion", "0x0", "must be specified for an update")],
            ));
        }
        Some(rv) if Some(rv) != old.metadata().resource_version.as_deref() => return Err(ApiError::stale_update(K::RESOURCE.gr(), name)),
        _ => {}
    }
    apply_update(&mut store, ns, obj, &old)
}

fn apply_update<K: ApiObject>(store: &mut Store, ns: &str, mut obj: K, old: &K) -> Result<Resp, ApiError> {
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
    m.resource_version.clone_from(&om.resource_version);
    m.managed_fields = None;
    obj.prepare_update(old);
    let errs = obj.validate_update(old);
    if !errs.is_empty() {
        return Err(ApiError::invalid(K::GROUP, K::RESOURCE.kind(), &name, &errs));
    }
    let key = (ns.to_owned(), name);
    let old_json = store.table::<K>().get(&key).map(|s| s.entry.json.clone()).unwrap_or_default();
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
pub fn patch<K: ApiObject>(cluster: &Arc<ClusterInner>, ns: &str, name: &str, content_type: &str, body: &[u8]) -> Result<Resp, ApiError> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    if !matches!(ct, "application/merge-patch+json" | "application/strategic-merge-patch+json") {
        return Err(ApiError::unsupported_media_type(ct));
    }
    let patch: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let mut store = lock(&cluster.store);
    let key = (ns.to_owned(), name.to_owned());
    let Some(old) = store.table::<K>().get(&key).map(|s| s.obj.clone()) else {
        return Err(ApiError::not_found(K::RESOURCE.gr(), name));
    };
    if let Some(rv) = patch.pointer("/metadata/resourceVersion").and_then(Value::as_str)
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
    apply_update(&mut store, ns, obj, &old)
}

/// 409 when DeleteOptions preconditions do not hold.
pub fn check_preconditions(gr: GroupResource, name: &str, meta: &ObjectMeta, opts: &DeleteOptions) -> Result<(), ApiError> {
    let uid = meta.uid.as_deref().unwrap_or("");
    if let Some(want) = &opts.precondition_uid
        && want != uid
    {
        return Err(ApiError::conflict(gr, name, &format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}")));
    }
    let rv = meta.resource_version.as_deref().unwrap_or("");
    if let Some(want) = &opts.precondition_rv
        && want != rv
    {
        return Err(ApiError::conflict(
            gr,
            name,
            &format!("Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}"),
        ));
    }
    Ok(())
}

/// DELETE of an object without graceful deletion: gone at once, answered with a Status.
pub fn delete_now<K: ApiObject>(cluster: &Arc<ClusterInner>, ns: &str, name: &str, query: &Query, body: &[u8]) -> Result<Resp, ApiError> {
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
    Ok(json_resp(StatusCode::OK, serde_json::to_vec(&delete_success(K::RESOURCE.gr(), name, &uid)).unwrap_or_default()))
}

/// DELETE of a collection: every selected object is deleted as by a single DELETE; the
/// answer lists them.
pub fn delete_collection<K: ApiObject>(cluster: &Arc<ClusterInner>, ns: &str, query: &Query, body: &[u8]) -> Result<Resp, ApiError> {
    let opts = DeleteOptions::parse(query, body)?;
    let list = ListOptions::from_query(query)?;
    let labels = parse_labels(&list.label_selector)?;
    let fields = parse_fields(K::RESOURCE, &list.field_selector)?;
    let mut store = lock(&cluster.store);
    let keys: Vec<Key> = store.table::<K>().select(Some(ns), &labels, &fields, None).map(|e| e.key.clone()).collect();
    let items: Vec<Bytes> = keys.iter().filter_map(|k| K::delete_in_collection(cluster, &mut store, k, &opts)).collect();
    Ok(json_resp(StatusCode::OK, list_body(K::RESOURCE, store.rv(), None, None, &items)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut doc, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(doc, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn continue_tokens_round_trip() {
        let key = ("ns".to_owned(), "pod-1".to_owned());
        assert_eq!(decode_continue(&encode_continue(42, &key)).unwrap(), (42, key));
        assert!(decode_continue("not base64!").is_err());
    }

    proptest! {
        #[test]
        fn base64_round_trips(data in prop::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(b64_decode(&b64_encode(&data)).unwrap(), data);
        }
    }
}
