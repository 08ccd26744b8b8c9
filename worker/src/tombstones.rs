//! Tombstones: builds this replica knows were stopped, so that a `start` that arrives after its
//! `stop` does not launch (Screwdriver issue #2598).
//!
//! Fed by the stops this replica handles and by every replica's `build.stopped` events.
//! Bounded in size and age: it is a fast path, not the only guard (a stop that found no pod is
//! also re-checked through the delay queues).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::intake::BuildId;

/// Builds remembered at most.
const CAPACITY: usize = 100_000;
/// How long a stop is remembered.
const TTL: Duration = Duration::from_secs(6 * 3600);

/// The set of stopped builds.
#[derive(Debug, Default)]
pub struct Tombstones {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    at: HashMap<BuildId, Instant>,
    order: VecDeque<(BuildId, Instant)>,
}

impl Tombstones {
    /// Remembers that `build` was stopped.
    pub fn insert(&self, build: BuildId) {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("tombstones lock poisoned");
        inner.at.insert(build, now);
        inner.order.push_back((build, now));
        while inner.order.len() > CAPACITY
            || inner
                .order
                .front()
                .is_some_and(|(_, t)| now.duration_since(*t) > TTL)
        {
            let Some((b, t)) = inner.order.pop_front() else {
                break;
            };
            if inner.at.get(&b) == Some(&t) {
                inner.at.remove(&b);
            }
        }
    }

    /// True when `build` was stopped (and not too long ago).
    pub fn contains(&self, build: BuildId) -> bool {
        let inner = self.inner.lock().expect("tombstones lock poisoned");
        inner
            .at
            .get(&build)
            .is_some_and(|t| Instant::now().duration_since(*t) <= TTL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn remembers_stops_for_a_while() {
        let t = Tombstones::default();
        assert!(!t.contains(BuildId(1)));
        t.insert(BuildId(1));
        assert!(t.contains(BuildId(1)));
        tokio::time::advance(TTL + Duration::from_secs(1)).await;
        assert!(!t.contains(BuildId(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn stays_bounded() {
        let t = Tombstones::default();
        for i in 0..(CAPACITY as u64 + 10) {
            t.insert(BuildId(i + 1));
        }
        assert!(!t.contains(BuildId(1)));
        assert!(t.contains(BuildId(CAPACITY as u64 + 10)));
        assert!(t.inner.lock().unwrap().at.len() <= CAPACITY);
    }
}
