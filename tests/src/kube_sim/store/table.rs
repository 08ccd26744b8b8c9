//! One resource's objects: entries, indexes (labels, owners, uids) and watch history.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

use super::{Key, ResourceKind, StoredObject};
use crate::kube_sim::selector::{FieldSelector, LabelSelector};

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
        self.fields
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when the entry passes the selectors (and is in `ns` when given).
    pub fn matches(
        &self,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> bool {
        ns.is_none_or(|ns| self.key.0 == ns)
            && labels.matches(&self.labels)
            && fields.matches(|f| self.field(f))
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

/// A stored object and its serialized entry.
#[derive(Clone, Debug)]
pub struct Slot<K> {
    /// The typed object, without its managedFields (they live in `entry` only: as typed trees
    /// they cost tens of KiB per pod, as JSON a few).
    pub obj: K,
    /// What lists and watches serve.
    pub entry: Arc<Entry>,
}

impl<K: StoredObject> Slot<K> {
    /// The whole object, managedFields included (to change and store again, or hand out).
    pub fn object(&self) -> K {
        let mut obj = self.obj.clone();
        obj.metadata_mut().managed_fields = managed_fields_of(&self.entry.json);
        obj
    }
}

/// The managedFields of an object's JSON, the rest skipped.
fn managed_fields_of(json: &[u8]) -> Option<Vec<ManagedFieldsEntry>> {
    #[derive(serde::Deserialize)]
    struct Object {
        metadata: Meta,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        managed_fields: Option<Vec<ManagedFieldsEntry>>,
    }
    serde_json::from_slice::<Object>(json)
        .ok()
        .and_then(|o| o.metadata.managed_fields)
}

/// All objects of one resource, with their indexes and watch history.
#[derive(Debug)]
pub struct Table<K> {
    pub(super) objects: BTreeMap<Key, Slot<K>>,
    by_label: HashMap<(String, String), BTreeSet<Key>>,
    by_owner: HashMap<String, BTreeSet<Key>>,
    by_uid: HashMap<String, Key>,
    history: VecDeque<Arc<Event>>,
    floor: u64,
}

impl<K> Table<K> {
    pub(super) fn new(floor: u64) -> Self {
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
        self.by_owner
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Events after `rv`, or `Err(floor)` when `rv` is older than the history reaches.
    pub fn events_since(&self, rv: u64) -> Result<Vec<Arc<Event>>, u64> {
        if rv < self.floor {
            return Err(self.floor);
        }
        let start = self.history.partition_point(|e| e.rv() <= rv);
        Ok(self.history.iter().skip(start).cloned().collect())
    }

    pub(super) fn unindex(&mut self, key: &Key, entry: &Entry, owners: &[String]) {
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

    pub(super) fn index(&mut self, key: &Key, entry: &Entry, owners: &[String]) {
        for (k, v) in &entry.labels {
            self.by_label
                .entry((k.clone(), v.clone()))
                .or_default()
                .insert(key.clone());
        }
        for o in owners {
            self.by_owner
                .entry(o.clone())
                .or_default()
                .insert(key.clone());
        }
        self.by_uid.insert(entry.uid.clone(), key.clone());
    }

    pub(super) fn forget_history(&mut self, floor: u64) {
        self.history.clear();
        self.floor = floor;
    }

    pub(super) fn record(&mut self, event: Arc<Event>, limit: usize) {
        self.history.push_back(event);
        while self.history.len() > limit {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.rv();
            }
        }
    }
}

pub(super) fn owner_uids(meta: &ObjectMeta) -> Vec<String> {
    meta.owner_references
        .iter()
        .flatten()
        .map(|o| o.uid.clone())
        .collect()
}

pub(super) fn entry_of<K: StoredObject>(obj: &K, rv: u64) -> Entry {
    let meta = obj.metadata();
    Entry {
        kind: K::RESOURCE,
        key: (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        ),
        uid: meta.uid.clone().unwrap_or_default(),
        rv,
        labels: meta.labels.clone().unwrap_or_default(),
        fields: obj.fields(),
        json: Bytes::from(serde_json::to_vec(obj).unwrap_or_default()),
    }
}
