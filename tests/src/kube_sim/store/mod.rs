//! The object store of one simulated cluster: pods, secrets and leases, the cluster-wide
//! resourceVersion counter, the bounded per-resource watch history and the fan-out of watch
//! events.
//!
//! Every write goes through here so that each one gets the next resourceVersion, is
//! serialized once, lands in the history and reaches every open watch in order. It never
//! validates input and never speaks HTTP; callers hold its mutex only for short, synchronous
//! sections.

mod kinds;
mod table;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use kinds::{ResourceKind, StoredObject};
pub use table::{Entry, Event, EventType, Slot, Table};
use table::{entry_of, owner_uids};

/// `(namespace, name)` of an object.
pub type Key = (String, String);

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
        obj.metadata_mut().managed_fields = None;
        let key = entry.key.clone();
        let owners = owner_uids(obj.metadata());
        let table = K::table_mut(self);
        let prev = table.objects.remove(&key);
        if let Some(p) = &prev {
            let old_owners = owner_uids(p.obj.metadata());
            table.unindex(&key, &p.entry, &old_owners);
        }
        table.index(&key, &entry, &owners);
        table.objects.insert(
            key,
            Slot {
                obj,
                entry: entry.clone(),
            },
        );
        let typ = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        let event = Arc::new(Event {
            typ,
            object: entry.clone(),
            prev: prev.map(|p| p.entry),
        });
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
        let mut last = slot.object();
        last.metadata_mut().resource_version = Some(rv.to_string());
        let event = Arc::new(Event {
            typ: EventType::Deleted,
            object: Arc::new(entry_of(&last, rv)),
            prev: Some(slot.entry),
        });
        self.publish::<K>(event);
        Some(last)
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
