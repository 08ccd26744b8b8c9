//! Leader election per executor through a `coordination.k8s.io/v1` Lease in its cluster, so that
//! exactly one replica at a time reports the executor's pod events.
//!
//! Expiry is judged by local observation, as client-go does: a Lease whose holder and renew
//! time have not changed for its whole duration, as seen by this replica's own clock, is
//! expired. Clock skew between replicas therefore cannot make two leaders. A leader that cannot
//! renew within two thirds of the duration steps down before anyone else may take over.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::handover::{ANNOTATION, Handover, Note};
use crate::cluster::{CallError, Cluster};
use crate::telemetry::metrics;

/// Election parameters.
#[derive(Debug, Clone)]
pub struct Election {
    /// Lease name.
    pub name: String,
    /// This replica's identity.
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
    /// How often the holder renews and others look.
    pub renew_every: Duration,
}

/// What this replica last saw of the lease.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    holder: Option<String>,
    renew: Option<String>,
    at: Instant,
}

/// Runs the election until `stop`, publishing `true` while this replica leads. On stop, a
/// leader releases the lease so another replica takes over at once, with its reporter's note
/// of what it published ([`Handover`]); a takeover hands the note it finds to the reporter.
pub async fn run(
    cluster: Cluster,
    election: Election,
    leading: watch::Sender<bool>,
    stop: CancellationToken,
    handover: Arc<Handover>,
) {
    let mut seen: Option<Seen> = None;
    let mut last_renew: Option<Instant> = None;
    let renew_deadline = election.duration.mul_f64(2.0 / 3.0);
    loop {
        // A step against a cluster that does not answer can take its calls' retries; shutdown
        // does not wait for them.
        let stepped = tokio::select! {
            _ = stop.cancelled() => break,
            r = step(&cluster, &election, &mut seen, &handover) => r,
        };
        let leader = match stepped {
            Ok(true) => {
                last_renew = Some(Instant::now());
                true
            }
            Ok(false) => false,
            Err(e) => {
                // Keep leading only while the last renewal is recent enough.
                let still =
                    *leading.borrow() && last_renew.is_some_and(|t| t.elapsed() < renew_deadline);
                if cluster.health().misconfigured() {
                    // Said once at ERROR with the fix; every renewal would repeat it.
                    debug!(executor = %cluster.executor, error = %e, still_leading = still, "lease renewal failed");
                } else {
                    warn!(executor = %cluster.executor, error = %e, still_leading = still, "lease renewal failed");
                }
                still
            }
        };
        if *leading.borrow() != leader {
            info!(executor = %cluster.executor, leader, "reporter role changed");
            metrics::reporter_leader(&cluster.executor, leader);
            let _ = leading.send(leader);
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(election.renew_every) => {}
        }
    }
    if *leading.borrow() {
        let _ = leading.send(false);
        metrics::reporter_leader(&cluster.executor, false);
        release(&cluster, &election, &handover).await;
    }
}

/// One round: returns whether this replica holds the lease now.
async fn step(
    cluster: &Cluster,
    e: &Election,
    seen: &mut Option<Seen>,
    handover: &Handover,
) -> Result<bool, CallError> {
    let now = now_micro();
    let Some(mut lease) = cluster.get_lease(&e.name).await? else {
        let fresh = Lease {
            metadata: ObjectMeta {
                name: Some(e.name.clone()),
                namespace: Some(cluster.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(e.identity.clone()),
                lease_duration_seconds: Some(e.duration.as_secs().max(1) as i32),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match cluster.create_lease(&fresh).await {
            Ok(_) => Ok(true),
            Err(CallError::AlreadyExists) => Ok(false),
            Err(err) => Err(err),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let Some(spec) = plan(spec, seen, e, now, Instant::now()) else {
        return Ok(false);
    };
    let taken_over = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        != Some(e.identity.as_str());
    // The note is for the next holder only: taken out of the Lease by whoever writes it next.
    let note = lease
        .metadata
        .annotations
        .as_mut()
        .and_then(|a| a.remove(ANNOTATION));
    lease.spec = Some(spec);
    match cluster.replace_lease(&lease).await {
        Ok(updated) => {
            if taken_over && let Some(note) = note.as_deref().and_then(Note::decode) {
                info!(executor = %cluster.executor, "took over the reporter with the previous holder's note of what it published");
                handover.found(note);
            }
            let s = updated.spec.unwrap_or_default();
            *seen = Some(Seen {
                holder: s.holder_identity,
                renew: s.renew_time.map(|t| t.0.to_string()),
                at: Instant::now(),
            });
            Ok(true)
        }
        Err(CallError::Conflict(_)) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Decides a round from the lease as read at `at`: `None` while another replica holds it,
/// else the spec to write (a renewal, or a takeover of a released or expired lease). `seen`
/// remembers when this replica last saw the holder or renew time change.
fn plan(
    mut spec: LeaseSpec,
    seen: &mut Option<Seen>,
    e: &Election,
    now: MicroTime,
    at: Instant,
) -> Option<LeaseSpec> {
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let renew = spec.renew_time.as_ref().map(|t| t.0.to_string());
    let changed = seen
        .as_ref()
        .is_none_or(|s| s.holder != holder || s.renew != renew);
    if changed {
        *seen = Some(Seen {
            holder: holder.clone(),
            renew,
            at,
        });
    }
    let duration = spec
        .lease_duration_seconds
        .map(|s| Duration::from_secs(s.max(1) as u64))
        .unwrap_or(e.duration);
    let mine = holder.as_deref() == Some(e.identity.as_str());
    // Judged on this replica's clock only: unchanged for the whole duration since it saw it.
    let expired = holder.is_none() || seen.as_ref().is_some_and(|s| at - s.at >= duration);
    if !mine && !expired {
        return None;
    }
    if !mine {
        spec.holder_identity = Some(e.identity.clone());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now);
    spec.lease_duration_seconds = Some(e.duration.as_secs().max(1) as i32);
    Some(spec)
}

/// Gives the lease up (holder cleared) so another replica can take it without waiting, with
/// the reporter's note for it.
async fn release(cluster: &Cluster, e: &Election, handover: &Handover) {
    let note = handover.note_to_leave().await;
    if let Ok(Some(mut lease)) = cluster.get_lease(&e.name).await {
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() == Some(e.identity.as_str()) {
            spec.holder_identity = None;
            spec.renew_time = Some(now_micro());
            lease.spec = Some(spec);
            if let Some(note) = note {
                lease
                    .metadata
                    .annotations
                    .get_or_insert_default()
                    .insert(ANNOTATION.to_owned(), note.encode());
            }
            match cluster.replace_lease(&lease).await {
                Ok(_) => info!(executor = %cluster.executor, "reporter lease released"),
                Err(err) => {
                    warn!(executor = %cluster.executor, error = %err, "could not release the reporter lease")
                }
            }
        }
    }
}

fn now_micro() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn election(identity: &str) -> Election {
        Election {
            name: "bcw-reporter-a".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }

    fn held_by(holder: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(3),
            ..Default::default()
        }
    }

    fn now() -> MicroTime {
        MicroTime("2026-12-06T12:00:00Z".parse().unwrap())
    }

    #[test]
    fn a_lease_another_replica_renews_is_left_alone() {
        let (e, t0) = (election("me"), Instant::now());
        let mut seen = None;
        let spec = held_by("other", "2026-12-06T11:59:55Z");
        assert_eq!(plan(spec, &mut seen, &e, now(), t0), None);
        // Renewed again later: still not ours, however long ago we first saw the holder.
        let spec = held_by("other", "2026-12-06T12:00:10Z");
        let later = t0 + Duration::from_secs(20);
        assert_eq!(plan(spec, &mut seen, &e, now(), later), None);
    }

    #[test]
    fn expiry_is_judged_by_this_replicas_clock_not_the_renew_time() {
        let (e, t0) = (election("me"), Instant::now());
        let mut seen = None;
        // A renew time an hour old (a holder whose clock is behind) is not expired on sight.
        let stale = held_by("other", "2026-12-06T11:00:00Z");
        assert_eq!(plan(stale.clone(), &mut seen, &e, now(), t0), None);
        let almost = t0 + Duration::from_secs(14);
        assert_eq!(plan(stale.clone(), &mut seen, &e, now(), almost), None);
        // Unchanged for the whole duration since first seen: taken over.
        let taken = plan(stale, &mut seen, &e, now(), t0 + Duration::from_secs(15)).unwrap();
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(now()));
        assert_eq!(taken.renew_time, Some(now()));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let (e, t0) = (election("me"), Instant::now());
        let mut released = held_by("other", "2026-12-06T11:59:59Z");
        released.holder_identity = None;
        let taken = plan(released, &mut None, &e, now(), t0).unwrap();
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_transitions, Some(4));
    }

    #[test]
    fn the_holder_renews_without_a_transition() {
        let (e, t0) = (election("me"), Instant::now());
        let mine = held_by("me", "2026-12-06T11:59:55Z");
        let renewed = plan(mine, &mut None, &e, now(), t0).unwrap();
        assert_eq!(renewed.holder_identity.as_deref(), Some("me"));
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.acquire_time, None);
        assert_eq!(renewed.renew_time, Some(now()));
        assert_eq!(renewed.lease_duration_seconds, Some(15));
    }
}
