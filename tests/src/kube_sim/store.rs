//! The object store of one simulated cluster: pods, secrets and leases, the cluster-wide
//! resourceVersion counter, the bounded per-resource watch history and the fan-out of watch
//! events.
//!
//! Every write goes through here so that each one gets the next resourceVersion, is
//! serialized once, lands in the history and reaches every open watch in order. It never
//! validates input and never speaks HTTP; callers hold its mutex only for short, synchronous
//! sections.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::selector::{FieldSelector, LabelSelector};
use super::status::GroupResource;

/// `(namespace, name)` of an object.
pub type Key = (String, String);

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
            Self::Pods => GroupResource { group: "", resource: "pods" },
            Self::Secrets => GroupResource { group: "", resource: "secrets" },
            Self::Leases => GroupResource { group: "coordination.k8s.io", resource: "leases" },
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
        let mut v = json!({"kind": self.kind(), "apiVersion": self.api_version(), "metadata": meta});
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

/// A stored object as watches and lists see it: serialized once, with what selectors need.
#[derive(Debug)]
pub struct Entry {
    /// Resource of the object.
    pub kind: ResourceKind,
    /// Namespace and name.
    pub key: Key,
    /// metadata.uid.
    pub uid: String,
    /// metadata.resourceVersion.
    pub rv: u64,
    /// metadata.labels.
    pub labels: BTreeMap<String, String>,
    /// Values of the resource's field labels.
    pub fields: Vec<(&'static str, String)>,
    /// The object as JSON.
    pub json: Bytes,
}

impl Entry {
    /// The value of a field label.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// True when the entry passes the selectors (and is in `ns` when given).
    pub fn matches(&self, ns: Option<&str>, labels: &LabelSelector, fields: &FieldSelector) -> bool {
        ns.is_none_or(|ns| self.key.0 == ns) && labels.matches(&self.labels) && fields.matches(|f| self.field(f))
    }
}

/// ADDED, MODIFIED or DELETED.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// A new object.
    Added,
    /// A changed object.
    Modified,
    /// A removed object (the entry carries the deletion's resourceVersion).
    Deleted,
}

/// One change, as the watch cache keeps it.
#[derive(Debug)]
pub struct Event {
    /// What happened.
    pub typ: EventType,
    /// The object after the change (for DELETED: its last state at the deletion's rv).
    pub object: Arc<Entry>,
    /// The object before the change.
    pub prev: Option<Arc<Entry>>,
}

impl Event {
    /// resourceVersion of the change.
    pub fn rv(&self) -> u64 {
        self.object.rv
    }
}

/// The typed objects the store keeps.
pub trait StoredObject: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize + Clone + Send + Sync + 'static {
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
    [("metadata.name", m.name.clone().unwrap_or_default()), ("metadata.namespace", m.namespace.clone().unwrap_or_default())]
}

impl StoredObject for Pod {
    const RESOURCE: ResourceKind = ResourceKind::Pods;
    fn fields(&self) -> Vec<(&'static str, String)> {
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        let mut f = meta_fields(&self.metadata).to_vec();
        f.extend([
            ("spec.nodeName", spec.and_then(|s| s.node_name.clone()).unwrap_or_default()),
            ("spec.restartPolicy", spec.and_then(|s| s.restart_policy.clone()).unwrap_or_default()),
            ("spec.schedulerName", spec.and_then(|s| s.scheduler_name.clone()).unwrap_or_default()),
            ("spec.serviceAccountName", spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default()),
            ("spec.hostNetwork", spec.and_then(|s| s.host_network).unwrap_or(false).to_string()),
            ("status.phase", status.and_then(|s| s.phase.clone()).unwrap_or_default()),
            ("status.podIP", status.and_then(|s| s.pod_ip.clone()).unwrap_or_default()),
            ("status.nominatedNodeName", status.and_then(|s| s.nominated_node_name.clone()).unwrap_or_default()),
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

/// A stored object and its serialized entry.
#[derive(Clone, Debug)]
pub struct Slot<K> {
    /// The typed object.
    pub obj: K,
    /// What lists and watches serve.
    pub entry: Arc<Entry>,
}

/// All objects of one resource, with their indexes and watch history.
#[derive(Debug)]
pub struct Table<K> {
    objects: BTreeMap<Key, Slot<K>>,
    by_label: HashMap<(String, String), BTreeSet<Key>>,
    by_owner: HashMap<String, BTreeSet<Key>>,
    by_uid: HashMap<String, Key>,
    history: VecDeque<Arc<Event>>,
    floor: u64,
}

impl<K> Table<K> {
    fn new(floor: u64) -> Self {
        Self {
            objects: BTreeMap::new(),
            by_label: HashMap::new(),
            by_owner: HashMap::new(),
            by_uid: HashMap::new(),
            history: VecDeque::new(),
            floor,
        }
    }

    /// The object at `key`.
    pub fn get(&self, key: &Key) -> Option<&Slot<K>> {
        self.objects.get(key)
    }

    /// The key of the object with this uid.
    pub fn key_of_uid(&self, uid: &str) -> Option<&Key> {
        self.by_uid.get(uid)
    }

    /// The oldest resourceVersion a watch may resume from.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Every object, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Slot<K>> {
        self.objects.values()
    }

    /// Entries in key order after `after`, in `ns` when given, passing the selectors. An
    /// equality requirement of the label selector narrows the scan through the label index.
    pub fn select<'a>(
        &'a self,
        ns: Option<&'a str>,
        labels: &'a LabelSelector,
        fields: &'a FieldSelector,
        after: Option<&'a Key>,
    ) -> Box<dyn Iterator<Item = &'a Arc<Entry>> + 'a> {
        let lower = match after {
            Some(k) => Bound::Excluded(k.clone()),
            None => match ns {
                Some(ns) => Bound::Included((ns.to_owned(), String::new())),
                None => Bound::Unbounded,
            },
        };
        let pairs = labels.required_pairs();
        let keep = move |e: &&Arc<Entry>| e.matches(ns, labels, fields);
        if !pairs.is_empty() {
            let smallest = pairs
                .iter()
                .map(|(k, v)| self.by_label.get(&((*k).to_owned(), (*v).to_owned())))
                .min_by_key(|s| s.map_or(0, BTreeSet::len));
            let Some(Some(keys)) = smallest else {
                return Box::new(std::iter::empty());
            };
            return Box::new(
                keys.range((lower, Bound::Unbounded))
                    .filter_map(|k| self.objects.get(k).map(|s| &s.entry))
                    .filter(keep),
            );
        }
        let iter = self.objects.range((lower, Bound::Unbounded));
        Box::new(
            iter.take_while(move |(k, _)| ns.is_none_or(|ns| k.0 == ns))
                .map(|(_, s)| &s.entry)
                .filter(keep),
        )
    }

    /// Keys of objects with an ownerReference to `uid`.
    pub fn owned_by(&self, uid: &str) -> Vec<Key> {
        self.by_owner.get(uid).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// Events after `rv`, or `Err(floor)` when `rv` is older than the history reaches.
    pub fn events_since(&self, rv: u64) -> Result<Vec<Arc<Event>>, u64> {
        if rv < self.floor {
            return Err(self.floor);
        }
        let start = self.history.partition_point(|e| e.rv() <= rv);
        Ok(self.history.iter().skip(start).cloned().collect())
    }

    fn unindex(&mut self, key: &Key, entry: &Entry, owners: &[String]) {
        for (k, v) in &entry.labels {
            let pair = (k.clone(), v.clone());
            if let Some(set) = self.by_label.get_mut(&pair) {
                set.remove(key);
                if set.is_empty() {
                    self.by_label.remove(&pair);
                }
            }
        }
        for o in owners {
            if let Some(set) = self.by_owner.get_mut(o) {
                set.remove(key);
                if set.is_empty() {
                    self.by_owner.remove(o);
                }
            }
        }
        self.by_uid.remove(&entry.uid);
    }

    fn index(&mut self, key: &Key, entry: &Entry, owners: &[String]) {
        for (k, v) in &entry.labels {
            self.by_label.entry((k.clone(), v.clone())).or_default().insert(key.clone());
        }
        for o in owners {
            self.by_owner.entry(o.clone()).or_default().insert(key.clone());
        }
        self.by_uid.insert(entry.uid.clone(), key.clone());
    }

    fn forget_history(&mut self, floor: u64) {
        self.history.clear();
        self.floor = floor;
    }

    fn record(&mut self, event: Arc<Event>, limit: usize) {
        self.history.push_back(event);
        while self.history.len() > limit {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.rv();
            }
        }
    }
}

fn owner_uids(meta: &ObjectMeta) -> Vec<String> {
    meta.owner_references.iter().flatten().map(|o| o.uid.clone()).collect()
}

fn entry_of<K: StoredObject>(obj: &K, rv: u64) -> Entry {
    let meta = obj.metadata();
    Entry {
        kind: K::RESOURCE,
        key: (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default()),
        uid: meta.uid.clone().unwrap_or_default(),
        rv,
        labels: meta.labels.clone().unwrap_or_default(),
        fields: obj.fields(),
        json: Bytes::from(serde_json::to_vec(obj).unwrap_or_default()),
    }
}

/// The state of one cluster's API.
#[derive(Debug)]
pub struct Store {
    rv: u64,
    pods: Table<Pod>,
    secrets: Table<Secret>,
    leases: Table<Lease>,
    history_limit: usize,
    events: broadcast::Sender<Arc<Event>>,
    watch_stop: CancellationToken,
}

/// Capacity of the event fan-out; a watch that falls further behind is closed, as the API
/// server closes watchers that cannot keep up.
const FANOUT_CAPACITY: usize = 8192;

impl Store {
    /// An empty store whose history keeps `history_limit` events per resource.
    pub fn new(history_limit: usize) -> Self {
        let (events, _) = broadcast::channel(FANOUT_CAPACITY);
        let rv = 1;
        Self {
            rv,
            pods: Table::new(rv),
            secrets: Table::new(rv),
            leases: Table::new(rv),
            history_limit: history_limit.max(1),
            events,
            watch_stop: CancellationToken::new(),
        }
    }

    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// The table of `K`.
    pub fn table<K: StoredObject>(&self) -> &Table<K> {
        K::table(self)
    }

    /// A receiver of every future event, and the token that closes watches on compaction.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<Event>>, CancellationToken) {
        (self.events.subscribe(), self.watch_stop.clone())
    }

    /// Events of `kind` after `rv`, or `Err(floor)` when they are no longer kept.
    pub fn events_since(&self, kind: ResourceKind, rv: u64) -> Result<Vec<Arc<Event>>, u64> {
        match kind {
            ResourceKind::Pods => self.pods.events_since(rv),
            ResourceKind::Secrets => self.secrets.events_since(rv),
            ResourceKind::Leases => self.leases.events_since(rv),
        }
    }

    fn publish<K: StoredObject>(&mut self, event: Arc<Event>) {
        let limit = self.history_limit;
        K::table_mut(self).record(event.clone(), limit);
        // No receiver is fine: nobody watches.
        let _ = self.events.send(event);
    }

    /// Stores `obj` (new or replacing the object with its key) with the next
    /// resourceVersion, and tells the watches. Answers the stored entry.
    pub fn put<K: StoredObject>(&mut self, mut obj: K) -> Arc<Entry> {
        self.rv += 1;
        let rv = self.rv;
        obj.metadata_mut().resource_version = Some(rv.to_string());
        let entry = Arc::new(entry_of(&obj, rv));
        let key = entry.key.clone();
        let owners = owner_uids(obj.metadata());
        let table = K::table_mut(self);
        let prev = table.objects.remove(&key);
        if let Some(p) = &prev {
            let old_owners = owner_uids(p.obj.metadata());
            table.unindex(&key, &p.entry, &old_owners);
        }
        table.index(&key, &entry, &owners);
        table.objects.insert(key, Slot { obj, entry: entry.clone() });
        let typ = if prev.is_some() { EventType::Modified } else { EventType::Added };
        let event = Arc::new(Event { typ, object: entry.clone(), prev: prev.map(|p| p.entry) });
        self.publish::<K>(event);
        entry
    }

    /// Removes the object at `key`, telling the watches (the DELETED object carries the
    /// deletion's resourceVersion). Answers the removed object as last stored.
    pub fn remove<K: StoredObject>(&mut self, key: &Key) -> Option<K> {
        let table = K::table_mut(self);
        let slot = table.objects.remove(key)?;
        let owners = owner_uids(slot.obj.metadata());
        table.unindex(key, &slot.entry, &owners);
        self.rv += 1;
        let rv = self.rv;
        let mut last = slot.obj.clone();
        last.metadata_mut().resource_version = Some(rv.to_string());
        let event = Arc::new(Event { typ: EventType::Deleted, object: Arc::new(entry_of(&last, rv)), prev: Some(slot.entry) });
        self.publish::<K>(event);
        Some(slot.obj)
    }

    /// Forgets the watch history (as an etcd compaction plus a watch-cache restart would):
    /// the resourceVersion moves on, every open watch ends, and resuming from any earlier
    /// resourceVersion answers 410 Expired.
    pub fn compact(&mut self) {
        self.rv += 1;
        let rv = self.rv;
        self.pods.forget_history(rv);
        self.secrets.forget_history(rv);
        self.leases.forget_history(rv);
        self.close_watches();
    }

    /// Ends every open watch (clients resume from their last resourceVersion).
    pub fn close_watches(&mut self) {
        self.watch_stop.cancel();
        self.watch_stop = CancellationToken::new();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn secret(ns: &str, name: &str, labels: &[(&str, &str)], owner: Option<&str>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                uid: Some(format!("uid-{ns}-{name}")),
                labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>()),
                owner_references: owner.map(|o| {
                    vec![OwnerReference { api_version: "v1".into(), kind: "Pod".into(), name: "p".into(), uid: o.into(), ..OwnerReference::default() }]
                }),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        }
    }

    fn names(store: &Store, ns: Option<&str>, sel: &str) -> Vec<String> {
        let labels = LabelSelector::parse(sel).unwrap();
        let fields = FieldSelector::default();
        store.table::<Secret>().select(ns, &labels, &fields, None).map(|e| e.key.1.clone()).collect()
    }

    #[test]
    fn every_write_gets_the_next_resource_version() {
        let mut s = Store::new(10);
        let a = s.put(secret("ns", "a", &[], None));
        let b = s.put(secret("ns", "b", &[], None));
        assert_eq!(b.rv, a.rv + 1);
        s.remove::<Secret>(&("ns".into(), "a".into())).unwrap();
        assert_eq!(s.rv(), b.rv + 1);
        let events = s.events_since(ResourceKind::Secrets, a.rv).unwrap();
        assert_eq!(events.iter().map(|e| e.typ).collect::<Vec<_>>(), vec![EventType::Added, EventType::Deleted]);
    }

    #[test]
    fn label_index_and_namespace_scans_agree_with_a_full_scan() {
        let mut s = Store::new(10);
        s.put(secret("a", "x", &[("build", "1")], None));
        s.put(secret("a", "y", &[("build", "2")], None));
        s.put(secret("b", "z", &[("build", "1")], None));
        assert_eq!(names(&s, None, "build=1"), vec!["x", "z"]);
        assert_eq!(names(&s, Some("a"), "build=1"), vec!["x"]);
        assert_eq!(names(&s, Some("a"), ""), vec!["x", "y"]);
        assert_eq!(names(&s, None, "build=3"), Vec::<String>::new());
        assert_eq!(names(&s, None, "build!=1"), vec!["y"]);
        // relabelling moves the object in the index
        s.put(secret("a", "x", &[("build", "2")], None));
        assert_eq!(names(&s, None, "build=1"), vec!["z"]);
    }

    #[test]
    fn history_is_bounded_and_answers_too_old() {
        let mut s = Store::new(2);
        let first = s.put(secret("ns", "a", &[], None));
        s.put(secret("ns", "b", &[], None));
        s.put(secret("ns", "c", &[], None));
        assert!(s.events_since(ResourceKind::Secrets, first.rv - 1).is_err());
        assert_eq!(s.events_since(ResourceKind::Secrets, first.rv).unwrap().len(), 2);
        s.compact();
        assert_eq!(s.events_since(ResourceKind::Secrets, first.rv + 2).unwrap_err(), s.rv());
    }

    #[test]
    fn owner_index_finds_dependents() {
        let mut s = Store::new(10);
        s.put(secret("ns", "tok", &[], Some("pod-uid")));
        assert_eq!(s.table::<Secret>().owned_by("pod-uid"), vec![("ns".to_owned(), "tok".to_owned())]);
        s.remove::<Secret>(&("ns".into(), "tok".into()));
        assert!(s.table::<Secret>().owned_by("pod-uid").is_empty());
    }
}
