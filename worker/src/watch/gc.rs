//! Garbage of one executor: when a finished pod is collected and when a pod is an orphan
//! (pure rules, used by [`super::plan`]), and the deletions themselves.

use std::time::Duration;

use tracing::{debug, warn};

use super::plan::{Clock, Deletion, Limits};
use crate::breaker::Admission;
use crate::cluster::Cluster;
use crate::telemetry::metrics;

/// The oldest a pod of a known build may be before it is an orphan.
pub fn lifetime(limits: &Limits) -> Duration {
    limits.max_build_timeout + limits.pending_timeout + limits.pod_ttl
}

/// How long ago a pod finished: by its containers' time when they said, else since its outcome
/// was published.
pub fn finished_for(
    finished_at: Option<i64>,
    published: tokio::time::Instant,
    clock: &Clock,
) -> Duration {
    finished_at.map_or_else(
        || clock.now.saturating_duration_since(published),
        |t| clock.since(t),
    )
}

/// Whether a pod that finished `finished_for` ago, whose launch was recorded `recorded_for` ago,
/// may be deleted now: once its `podTTL` passed and no create permitted before its record can
/// land on its name. If not, how long until it is worth another look.
pub fn collection(
    limits: &Limits,
    finished_for: Duration,
    recorded_for: Duration,
) -> Result<(), Duration> {
    let ttl_left = limits.pod_ttl.saturating_sub(finished_for);
    let busy_left = limits.busy_for.saturating_sub(recorded_for);
    if ttl_left.is_zero() && busy_left.is_zero() {
        Ok(())
    } else {
        Err(ttl_left.max(busy_left))
    }
}

/// Deletes a pod for `why`; true once deleted. A pod that cannot start or an orphan goes at
/// once (nothing in it is worth a grace period); a finished pod gets its grace period.
pub async fn delete(cluster: &Cluster, pod: &str, why: Deletion) -> bool {
    let grace = match why {
        Deletion::Orphan | Deletion::CannotStart => Some(0),
        Deletion::Collect => None,
    };
    if cluster
        .delete_pod(pod, grace, Admission::Guarded)
        .await
        .is_err()
    {
        return false;
    }
    match why {
        Deletion::Orphan => {
            warn!(%pod, "orphan pod collected");
            metrics::gc_deleted(&cluster.executor, "orphan");
        }
        Deletion::Collect => {
            debug!(%pod, "finished pod collected");
            metrics::gc_deleted(&cluster.executor, "finished");
        }
        Deletion::CannotStart => {}
    }
    true
}
