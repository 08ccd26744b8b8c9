//! Readiness of the replica: connected to the broker, consuming, and not draining; and what
//! `/readyz` says besides: every executor that cannot take builds, and why, and the builds
//! waiting in this replica for one.
//!
//! Written by the broker supervisor and the shutdown sequence, read by `/readyz`. Liveness
//! (`/healthz`) needs no state: a process that answers is alive.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::cluster::{Cluster, ExecutorState};

/// Shared readiness flags.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<Flags>);

#[derive(Debug, Default)]
struct Flags {
    consuming: AtomicBool,
    draining: AtomicBool,
    /// Builds held in memory waiting for an executor.
    waiting: AtomicUsize,
    executors: OnceLock<Vec<Cluster>>,
}

/// Why the replica is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// Not (yet, or no longer) connected and consuming.
    NotConsuming,
    /// Draining after SIGTERM.
    Draining,
}

impl Readiness {
    /// The broker connection is up and the consumer registered (or not).
    pub fn set_consuming(&self, consuming: bool) {
        self.0.consuming.store(consuming, Ordering::SeqCst);
    }

    /// Shutdown started: never ready again.
    pub fn set_draining(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
    }

    /// True once shutdown started.
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst)
    }

    /// The executors `/readyz` reports on.
    pub fn watch_executors(&self, clusters: Vec<Cluster>) {
        let _ = self.0.executors.set(clusters);
    }

    /// A build starts (`true`) or stops (`false`) waiting in memory for an executor.
    pub fn build_waiting(&self, waiting: bool) {
        let now = if waiting {
            self.0.waiting.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.0.waiting.fetch_sub(1, Ordering::SeqCst) - 1
        };
        crate::telemetry::metrics::builds_waiting(now);
    }

    /// The lines `/readyz` adds after its first: each executor that cannot take builds and
    /// why, and the builds waiting here for one.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for cluster in self.0.executors.get().into_iter().flatten() {
            match ExecutorState::of(cluster) {
                ExecutorState::Usable => {}
                ExecutorState::Unreachable => notes.push(format!(
                    "executor {}: unreachable (circuit breaker open)",
                    cluster.executor
                )),
                ExecutorState::Misconfigured => notes.extend(cluster.health().describe()),
            }
        }
        let waiting = self.0.waiting.load(Ordering::SeqCst);
        if waiting > 0 {
            notes.push(format!(
                "{waiting} build(s) waiting in this replica for an executor (each returned to the broker within {}s)",
                crate::dispatch::HOLD_AT_MOST.as_secs()
            ));
        }
        notes
    }

    /// `Ok` when ready.
    pub fn check(&self) -> Result<(), NotReady> {
        if self.0.draining.load(Ordering::SeqCst) {
            Err(NotReady::Draining)
        } else if !self.0.consuming.load(Ordering::SeqCst) {
            Err(NotReady::NotConsuming)
        } else {
            Ok(())
        }
    }
}
