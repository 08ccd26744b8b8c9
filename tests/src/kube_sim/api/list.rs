//! Reads shared by every resource: get, list (selectors, pagination, resourceVersion
//! semantics) and watch.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;
use serde_json::{Value, json};

use super::{ApiObject, Resp, json as json_resp};
use crate::kube_sim::cluster::{ClusterInner, lock};
use crate::kube_sim::request::{ListOptions, Query};
use crate::kube_sim::selector::{FieldSelector, LabelSelector};
use crate::kube_sim::status::ApiError;
use crate::kube_sim::store::{Entry, Key, ResourceKind};
use crate::kube_sim::validation::FieldError;
use crate::kube_sim::watch::{self, Filter};

const CONTINUE_TOO_OLD: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

pub(super) fn parse_labels(s: &str) -> Result<LabelSelector, ApiError> {
    LabelSelector::parse(s).map_err(|e| ApiError::bad_request(e.0))
}

pub(super) fn parse_fields(kind: ResourceKind, s: &str) -> Result<FieldSelector, ApiError> {
    let f = FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.0))?;
    if let Some(t) =
        f.0.iter()
            .find(|t| !kind.field_labels().contains(&t.field.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "field label not supported: {}",
            t.field
        )));
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
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let vals: Vec<u32> = s
        .bytes()
        .map(|c| B64.iter().position(|b| *b == c).map(|p| p as u32))
        .collect::<Option<_>>()?;
    let mut out = Vec::new();
    for chunk in vals.chunks(4) {
        if chunk.len() < 2 {
            return None;
        }
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, v)| acc | (v << (18 - 6 * i)));
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
    b64_encode(
        &serde_json::to_vec(&json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start}))
            .unwrap_or_default(),
    )
}

fn decode_continue(token: &str) -> Result<(u64, Key), ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
    let raw = b64_decode(token).ok_or_else(|| bad("illegal base64 data"))?;
    let v: Value = serde_json::from_slice(&raw).map_err(|e| bad(&e.to_string()))?;
    if v["v"] != "meta.k8s.io/v1" {
        return Err(bad(
            "incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        ));
    }
    let rv = v["rv"]
        .as_u64()
        .ok_or_else(|| bad("incorrect encoded start resourceVersion"))?;
    let start = v["start"]
        .as_str()
        .ok_or_else(|| bad("missing start"))?
        .trim_end_matches('\u{0}');
    let (ns, name) = start.split_once('/').unwrap_or(("", start));
    Ok((rv, (ns.to_owned(), name.to_owned())))
}

pub(super) fn list_body(
    kind: ResourceKind,
    rv: u64,
    cont: Option<String>,
    remaining: Option<usize>,
    items: &[Bytes],
) -> Bytes {
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
    let mut b =
        BytesMut::with_capacity(head.len() + items.iter().map(|i| i.len() + 1).sum::<usize>() + 16);
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
    rv.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

/// LIST with selectors, `limit`/`continue` and `resourceVersion`/`resourceVersionMatch`.
pub async fn list<K: ApiObject>(
    cluster: &Arc<ClusterInner>,
    ns: Option<&str>,
    query: &Query,
) -> Result<Resp, ApiError> {
    let opts = ListOptions::from_query(query)?;
    if opts.send_initial_events.is_some() {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            &[FieldError::forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for list",
            )],
        ));
    }
    let labels = parse_labels(&opts.label_selector)?;
    let fields = parse_fields(K::RESOURCE, &opts.field_selector)?;
    let cont = opts
        .continue_token
        .as_deref()
        .map(decode_continue)
        .transpose()?;
    let requested = match opts.resource_version.as_deref() {
        None | Some("" | "0") => None,
        Some(rv) => Some(parse_rv(rv)?),
    };
    match opts.resource_version_match.as_deref() {
        None => {}
        Some("NotOlderThan" | "Exact")
            if opts
                .resource_version
                .as_deref()
                .is_some_and(|r| !r.is_empty()) => {}
        Some(m @ ("NotOlderThan" | "Exact")) => {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "ListOptions",
                "",
                &[FieldError::forbidden(
                    "resourceVersionMatch",
                    format!(
                        "resourceVersionMatch \"{m}\" is forbidden unless resourceVersion is provided"
                    ),
                )],
            ));
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "ListOptions",
                "",
                &[FieldError::not_supported(
                    "resourceVersionMatch",
                    other,
                    &["Exact", "NotOlderThan", ""],
                )],
            ));
        }
    }
    if cont.is_some() && requested.is_some() {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
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
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                table.floor()
            )));
        }
    }
    let list_rv = match &cont {
        Some((rv, _)) if *rv < table.floor() => return Err(ApiError::expired(CONTINUE_TOO_OLD)),
        Some((rv, _)) => *rv,
        None => store.rv(),
    };
    let after = cont.as_ref().map(|(_, k)| k);
    let limit = if opts.limit == 0 {
        usize::MAX
    } else {
        opts.limit
    };
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
    let token = if more {
        page.last().map(|e| encode_continue(list_rv, &e.key))
    } else {
        None
    };
    let items: Vec<Bytes> = page.iter().map(|e| e.json.clone()).collect();
    Ok(json_resp(
        StatusCode::OK,
        list_body(K::RESOURCE, list_rv, token, remaining, &items),
    ))
}

/// WATCH of a collection (or of one object when `name` is given).
pub async fn watch<K: ApiObject>(
    cluster: &Arc<ClusterInner>,
    ns: Option<&str>,
    name: Option<&str>,
    query: &Query,
) -> Result<Resp, ApiError> {
    let opts = ListOptions::from_query(query)?;
    let labels = parse_labels(&opts.label_selector)?;
    let mut fields = parse_fields(K::RESOURCE, &opts.field_selector)?;
    if let Some(name) = name {
        fields.0.push(crate::kube_sim::selector::FieldTerm {
            field: "metadata.name".into(),
            value: name.into(),
            negated: false,
        });
    }
    let filter = Filter {
        ns: ns.map(str::to_owned),
        labels,
        fields,
    };
    watch::serve(cluster.clone(), K::RESOURCE, filter, &opts).await
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let key = ("ns".to_owned(), "pod-1".to_owned());
        assert_eq!(
            decode_continue(&encode_continue(42, &key)).unwrap(),
            (42, key)
        );
        assert!(decode_continue("not base64!").is_err());
    }

    proptest! {
        #[test]
        fn base64_round_trips(data in prop::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(b64_decode(&b64_encode(&data)).unwrap(), data);
        }
    }
}
