//! Readiness of the replica: connected to the broker, consuming, and not draining.
//!
//! Written by the broker supervisor and the shutdown sequence, read by `/readyz`. Liveness
//! (`/healthz`) needs no state: a process that answers is alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Shared readiness flags.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<Flags>);

#[derive(Debug, Default)]
struct Flags {
    consuming: AtomicBool,
    draining: AtomicBool,
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
