//! `metadata.managedFields` as the API server's field manager keeps them for `Update`
//! operations (creates, PUTs, PATCHes, status writes): one entry per writer, each a FieldsV1
//! tree of the fields the writer set or changed, and a field changed by one writer moves to it.
//!
//! Every object a real API server answers or sends on a watch carries them, often larger than
//! the rest of the metadata; clients pay for them and must not depend on them being absent.
//! The schema knowledge (which lists are keyed by what, which maps are atomic) covers the
//! fields of pods, Secrets and Leases; any other list is atomic, any other object granular.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
use serde_json::{Map, Value, json};

use super::store::{ResourceKind, StoredObject};

/// Who writes, as the API server names the manager and the part written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Writer<'a> {
    /// `fieldManager`, else the User-Agent up to its first `/`, else `unknown`.
    manager: &'a str,
    /// The object itself, or its `status` subresource.
    part: Part,
}

/// The part of an object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// Everything but a pod's status.
    Main,
    /// Only the status.
    Status,
}

/// The manager name of a request (as the API server derives it).
pub fn manager_of(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    if let Some(m) = field_manager.filter(|m| !m.is_empty()) {
        return m.to_owned();
    }
    let prefix = user_agent
        .and_then(|ua| ua.split('/').next())
        .filter(|p| !p.is_empty());
    prefix.unwrap_or("unknown").chars().take(128).collect()
}

/// Lists of objects merged by key: the field name and its key fields (in the order the key
/// is written).
const KEYED: &[(&str, &[&str])] = &[
    ("containers", &["name"]),
    ("initContainers", &["name"]),
    ("ephemeralContainers", &["name"]),
    ("env", &["name"]),
    ("ports", &["containerPort", "protocol"]),
    ("volumeMounts", &["mountPath"]),
    ("volumeDevices", &["devicePath"]),
    ("volumes", &["name"]),
    ("imagePullSecrets", &["name"]),
    ("conditions", &["type"]),
    ("podIPs", &["ip"]),
    ("hostAliases", &["ip"]),
    ("ownerReferences", &["uid"]),
    ("resourceClaims", &["name"]),
    ("schedulingGates", &["name"]),
    (
        "topologySpreadConstraints",
        &["topologyKey", "whenUnsatisfiable"],
    ),
];

/// Keyed lists whose items are atomic (`x-kubernetes-map-type: atomic` items).
const ATOMIC_ITEMS: &[&str] = &["imagePullSecrets"];

/// Objects owned as a whole.
const ATOMIC_MAPS: &[&str] = &[
    "nodeSelector",
    "requiredDuringSchedulingIgnoredDuringExecution",
    "labelSelector",
    "namespaceSelector",
];

/// Lists of scalars merged as sets.
const SETS: &[&str] = &["finalizers"];

/// Metadata the field manager never tracks.
const UNTRACKED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// A field's path: its elements (`f:spec`, `k:{"name":"b"}`, ...) joined by [`SEP`].
type Path = String;

/// Joins path elements: no element holds a newline (field names and keys are JSON, escaped).
const SEP: char = '\n';

fn child(path: &str, element: &str) -> Path {
    if path.is_empty() {
        element.to_owned()
    } else {
        format!("{path}{SEP}{element}")
    }
}

/// The tracked fields of an object: every path, with the value of each leaf (`None` for a
/// node whose children are tracked one by one).
type Fields = BTreeMap<Path, Option<Value>>;

/// Records `manager`'s write of `new` (replacing `old`, or creating it) in `new`'s
/// managedFields.
pub fn record<K: StoredObject>(old: Option<&K>, new: &mut K, manager: &str) {
    let writer = Writer {
        manager,
        part: Part::Main,
    };
    let scope = |v: Value| tracked(v, K::RESOURCE, writer.part);
    let before = scope(old.map_or_else(|| zero(K::RESOURCE), to_value));
    let after = scope(to_value(new));
    let entries = old
        .and_then(|o| o.metadata().managed_fields.clone())
        .unwrap_or_default();
    settle(new, entries, &before, &after, writer);
}

/// Records the kubelet's write of a pod's status (the pod's status was `before`); only the
/// status is encoded, as nothing else may change.
pub fn record_kubelet_status(before: Option<&PodStatus>, pod: &mut Pod) {
    let writer = Writer {
        manager: "kubelet",
        part: Part::Status,
    };
    let scope = |status: Option<&PodStatus>| {
        let status = serde_json::to_value(status).unwrap_or(Value::Null);
        tracked(
            json!({ "status": status }),
            ResourceKind::Pods,
            Part::Status,
        )
    };
    let (before, after) = (scope(before), scope(pod.status.as_ref()));
    let entries = pod.metadata.managed_fields.take().unwrap_or_default();
    settle(pod, entries, &before, &after, writer);
}

fn settle<K: StoredObject>(
    new: &mut K,
    entries: Vec<ManagedFieldsEntry>,
    before: &Fields,
    after: &Fields,
    writer: Writer<'_>,
) {
    let (changed, removed) = compare(before, after);
    let entries = reassign(
        entries,
        &changed,
        &removed,
        writer,
        K::RESOURCE.api_version(),
    );
    new.metadata_mut().managed_fields = (!entries.is_empty()).then_some(entries);
}

fn to_value<K: StoredObject>(obj: &K) -> Value {
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

/// The object a create is compared with: the type's zero value as the API server encodes it
/// (fields without `omitempty` present), so they count as set before, not as added.
fn zero(kind: ResourceKind) -> Value {
    match kind {
        ResourceKind::Pods => json!({"metadata": {}, "spec": {"containers": null}, "status": {}}),
        ResourceKind::Secrets => json!({"metadata": {}}),
        ResourceKind::Leases => json!({"metadata": {}, "spec": {}}),
    }
}

/// The fields a writer of `part` may own, flattened.
fn tracked(value: Value, kind: ResourceKind, part: Part) -> Fields {
    let mut fields = Fields::new();
    let Value::Object(root) = value else {
        return fields;
    };
    for (key, mut value) in root {
        let keep = match (part, key.as_str()) {
            (_, "apiVersion" | "kind") => false,
            (Part::Status, k) => k == "status",
            (Part::Main, "status") => kind != ResourceKind::Pods,
            (Part::Main, _) => true,
        };
        if !keep {
            continue;
        }
        if key == "metadata"
            && let Value::Object(m) = &mut value
        {
            m.retain(|k, _| !UNTRACKED_META.contains(&k.as_str()));
        }
        // The root's own fields are present in the zero value: only their contents count.
        let path = format!("f:{key}");
        match value {
            Value::Object(m) if !m.is_empty() && !is_granular_map(&key) => {
                walk_members(&mut fields, &path, m);
            }
            other => walk(&mut fields, path, &key, other),
        }
    }
    fields
}

/// Root fields that are maps of their own (a Secret's data), not structs.
fn is_granular_map(key: &str) -> bool {
    matches!(key, "data" | "binaryData")
}

fn walk(fields: &mut Fields, path: Path, name: &str, value: Value) {
    match value {
        Value::Object(m) if !m.is_empty() && !ATOMIC_MAPS.contains(&name) => {
            fields.insert(path.clone(), None);
            walk_members(fields, &path, m);
        }
        Value::Array(items) if !items.is_empty() => walk_list(fields, path, name, items),
        leaf => {
            fields.insert(path, Some(leaf));
        }
    }
}

fn walk_members(fields: &mut Fields, path: &str, members: Map<String, Value>) {
    for (key, value) in members {
        let p = child(path, &format!("f:{key}"));
        walk(fields, p, &key, value);
    }
}

fn walk_list(fields: &mut Fields, path: Path, name: &str, items: Vec<Value>) {
    let keys = KEYED.iter().find(|(n, _)| *n == name).map(|(_, k)| *k);
    let set = SETS.contains(&name);
    if keys.is_none() && !set {
        fields.insert(path, Some(Value::Array(items)));
        return;
    }
    fields.insert(path.clone(), None);
    for item in items {
        match keys {
            Some(keys) => {
                let p = child(&path, &item_key(keys, &item));
                if ATOMIC_ITEMS.contains(&name) {
                    fields.insert(p, Some(item));
                } else if let Value::Object(m) = item {
                    fields.insert(p.clone(), None);
                    walk_members(fields, &p, m);
                }
            }
            None => {
                fields.insert(child(&path, &format!("v:{item}")), Some(Value::Null));
            }
        }
    }
}

/// `k:{"name":"build"}`: the item's key fields, as compact JSON.
fn item_key(keys: &[&str], item: &Value) -> String {
    let key: Map<String, Value> = keys
        .iter()
        .filter_map(|k| Some(((*k).to_owned(), item.get(*k)?.clone())))
        .collect();
    format!("k:{}", Value::Object(key))
}

/// What a write added or changed, and what it removed.
fn compare(before: &Fields, after: &Fields) -> (BTreeSet<Path>, BTreeSet<Path>) {
    let changed = after
        .iter()
        .filter(|(p, v)| match (before.get(*p), v) {
            (None, _) => true,
            (Some(Some(old)), Some(new)) => old != new,
            _ => false,
        })
        .map(|(p, _)| p.clone())
        .collect();
    let removed = before
        .keys()
        .filter(|p| !after.contains_key(*p))
        .cloned()
        .collect();
    (changed, removed)
}

/// The entries after a write: the writer owns what it changed (taken from any other owner);
/// what it removed is nobody's; an entry left owning nothing goes.
fn reassign(
    entries: Vec<ManagedFieldsEntry>,
    changed: &BTreeSet<Path>,
    removed: &BTreeSet<Path>,
    writer: Writer<'_>,
    api_version: &str,
) -> Vec<ManagedFieldsEntry> {
    let subresource = match writer.part {
        Part::Main => None,
        Part::Status => Some("status".to_owned()),
    };
    let is_writer = |e: &ManagedFieldsEntry| {
        e.manager.as_deref() == Some(writer.manager)
            && e.operation.as_deref() == Some("Update")
            && e.subresource == subresource
    };
    let mut out = Vec::new();
    let mut found = false;
    for mut e in entries {
        let writes = is_writer(&e);
        found |= writes;
        // Most writes touch one entry: the others keep their tree as it is.
        let tree = e.fields_v1.as_ref().map(|f| &f.0);
        let loses = |p: &Path| tree.is_some_and(|t| owns(t, p));
        let gains = writes && !changed.is_empty();
        if !gains && !removed.iter().any(loses) && (writes || !changed.iter().any(loses)) {
            out.push(e);
            continue;
        }
        let mut owned = paths_of(e.fields_v1.as_ref());
        owned.retain(|p| !removed.contains(p));
        if writes {
            owned.extend(changed.iter().cloned());
        } else {
            owned.retain(|p| !changed.contains(p));
        }
        if gains {
            e.time = Some(now());
        }
        if !owned.is_empty() {
            e.fields_v1 = Some(FieldsV1(tree_of(&owned)));
            out.push(e);
        }
    }
    if !found && !changed.is_empty() {
        out.push(ManagedFieldsEntry {
            manager: Some(writer.manager.to_owned()),
            operation: Some("Update".into()),
            api_version: Some(api_version.into()),
            time: Some(now()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(FieldsV1(tree_of(changed))),
            subresource,
        });
    }
    // The API server's order: by operation, time (to the second), manager, apiVersion.
    out.sort_by(|a, b| {
        let key = |e: &ManagedFieldsEntry| {
            let secs = e.time.as_ref().map(|t| t.0.as_second());
            (
                e.operation.clone(),
                secs,
                e.manager.clone(),
                e.api_version.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    out
}

/// Now, to the second, as the API server writes an entry's time.
fn now() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// FieldsV1 of a set of paths: a node that is itself owned and has children gets `"."`.
fn tree_of(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for element in path.split(SEP) {
            let child = node
                .entry(element.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(m) = child else {
                unreachable!("every node is an object")
            };
            node = m;
        }
    }
    mark_owned_nodes(&mut root, paths, "");
    Value::Object(root)
}

fn mark_owned_nodes(node: &mut Map<String, Value>, owned: &BTreeSet<Path>, path: &str) {
    for (key, value) in node.iter_mut() {
        let path = child(path, key);
        if let Value::Object(m) = value
            && !m.is_empty()
        {
            mark_owned_nodes(m, owned, &path);
            if owned.contains(&path) {
                // First, as the API server sorts a node's keys.
                let children = std::mem::take(m);
                m.insert(".".into(), json!({}));
                m.extend(children);
            }
        }
    }
}

/// Whether a FieldsV1 tree owns `path` (a leaf there, or a node marked `"."`).
fn owns(tree: &Value, path: &str) -> bool {
    let mut node = tree;
    for element in path.split(SEP) {
        match node.get(element) {
            Some(n) => node = n,
            None => return false,
        }
    }
    node.as_object()
        .is_some_and(|m| m.is_empty() || m.contains_key("."))
}

/// The paths a FieldsV1 tree owns.
fn paths_of(fields: Option<&FieldsV1>) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    if let Some(FieldsV1(Value::Object(m))) = fields {
        collect(m, "", &mut out);
    }
    out
}

fn collect(node: &Map<String, Value>, path: &str, out: &mut BTreeSet<Path>) {
    for (key, value) in node {
        if key == "." {
            out.insert(path.to_owned());
            continue;
        }
        let path = child(path, key);
        match value {
            Value::Object(m) if !m.is_empty() => collect(m, &path, out),
            _ => {
                out.insert(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::Lease;

    use super::*;

    fn lease(spec: Value) -> Lease {
        serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": spec})).unwrap()
    }

    fn write(old: Option<&Lease>, spec: Value, manager: &str) -> Lease {
        let mut new = lease(spec);
        record(old, &mut new, manager);
        new
    }

    fn owned(l: &Lease) -> Vec<(String, Value)> {
        let entries = l.metadata.managed_fields.clone().unwrap_or_default();
        let fields = |e: ManagedFieldsEntry| e.fields_v1.map_or(Value::Null, |f| f.0);
        entries
            .into_iter()
            .map(|e| (e.manager.clone().unwrap_or_default(), fields(e)))
            .collect()
    }

    #[test]
    fn the_manager_is_the_field_manager_else_the_user_agents_product_else_unknown() {
        assert_eq!(manager_of(Some("sd"), Some("kubectl/v1.36")), "sd");
        assert_eq!(
            manager_of(Some(""), Some("kubectl/v1.36 (linux)")),
            "kubectl"
        );
        assert_eq!(
            manager_of(None, Some("buildcluster-worker")),
            "buildcluster-worker"
        );
        assert_eq!(manager_of(None, None), "unknown");
        assert_eq!(manager_of(None, Some("/x")), "unknown");
    }

    #[test]
    fn a_field_changed_by_another_writer_moves_to_it_and_removed_fields_are_nobodys() {
        let created = write(
            None,
            json!({"holderIdentity": "a", "leaseDurationSeconds": 15}),
            "w",
        );
        let spec = |f: Value| json!({"f:spec": f});
        assert_eq!(
            owned(&created),
            [(
                "w".into(),
                spec(json!({"f:holderIdentity": {}, "f:leaseDurationSeconds": {}}))
            )]
        );
        let taken = write(
            Some(&created),
            json!({"holderIdentity": "b", "leaseDurationSeconds": 15}),
            "x",
        );
        assert_eq!(
            owned(&taken),
            [
                ("w".into(), spec(json!({"f:leaseDurationSeconds": {}}))),
                ("x".into(), spec(json!({"f:holderIdentity": {}}))),
            ]
        );
        // Removing the only field `w` still owns leaves `w` nothing: its entry goes.
        let removed = write(Some(&taken), json!({"holderIdentity": "b"}), "x");
        assert_eq!(
            owned(&removed),
            [("x".into(), spec(json!({"f:holderIdentity": {}})))]
        );
        // A write that changes nothing changes no entry (not even its time).
        let same = write(Some(&removed), json!({"holderIdentity": "b"}), "y");
        assert_eq!(
            same.metadata.managed_fields,
            removed.metadata.managed_fields
        );
    }

    #[test]
    fn a_node_new_in_a_write_is_owned_itself_and_written_first() {
        let fields = tree_of(&BTreeSet::from(["f:a".to_owned(), child("f:a", "f:b")]));
        assert_eq!(
            serde_json::to_string(&fields).unwrap(),
            r#"{"f:a":{".":{},"f:b":{}}}"#
        );
    }
}
