//! Drives pods through time: one task per pod plays the kubelet model's steps on the
//! cluster's timeline, enforces `activeDeadlineSeconds`, and finishes graceful deletions.
//!
//! Owns the sleeping and the status writes; the rules of what happens live in `kubelet`.
//! A driver stops as soon as its pod is gone, replaced (another uid) or being deleted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use tokio::time::{Instant, sleep_until};

use super::cluster::{ClusterInner, lock};
use super::kubelet::{Kubelet, Step, kill};
use super::managed;
use super::request::Propagation;
use super::store::Key;

struct DriverGuard(Arc<ClusterInner>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.0.drivers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts the kubelet of a freshly created pod. `active_deadline` is the pod's
/// `activeDeadlineSeconds`.
pub fn spawn_driver(
    cluster: Arc<ClusterInner>,
    key: Key,
    uid: String,
    kubelet: Kubelet,
    active_deadline: Option<i64>,
) {
    cluster.drivers.fetch_add(1, Ordering::Relaxed);
    let guard = DriverGuard(cluster.clone());
    tokio::spawn(async move {
        drive(&cluster, &key, &uid, kubelet, active_deadline).await;
        drop(guard);
    });
}

async fn drive(
    cluster: &Arc<ClusterInner>,
    key: &Key,
    uid: &str,
    mut kubelet: Kubelet,
    active_deadline: Option<i64>,
) {
    let mut last = Instant::now();
    let mut deadline: Option<Instant> = None;
    loop {
        let timeline = cluster.timeline();
        let next = kubelet.next_step(&timeline).map(|(d, s)| (last + d, s));
        let (at, step) = match (next, deadline) {
            (Some((t, _)), Some(dl)) if dl <= t => (dl, None),
            (Some((t, s)), _) => (t, Some(s)),
            (None, Some(dl)) => (dl, None),
            (None, None) => return,
        };
        tokio::select! {
            () = sleep_until(at) => {}
            () = cluster.shutdown.cancelled() => return,
        }
        last = at;
        let now = Timestamp::now();
        let mut store = lock(&cluster.store);
        let Some(slot) = store.table::<Pod>().get(key) else {
            return;
        };
        if slot.obj.metadata.uid.as_deref() != Some(uid)
            || slot.obj.metadata.deletion_timestamp.is_some()
        {
            return;
        }
        let mut pod = slot.object();
        let before = pod.status.clone();
        let Some(step) = step else {
            // The kubelet's active deadline: kill everything, the pod fails.
            kill(
                pod.status.get_or_insert_with(Default::default),
                now,
                Some((
                    "DeadlineExceeded",
                    "Pod was active on the node longer than the specified deadline",
                )),
            );
            managed::record_kubelet_status(before.as_ref(), &mut pod);
            store.put(pod);
            return;
        };
        let was_started = kubelet.started();
        kubelet.apply(step, now);
        if step == Step::Schedule
            && let Some(spec) = pod.spec.as_mut()
        {
            spec.node_name = Some(kubelet.placement().node.clone());
        }
        let qos = pod.status.as_ref().and_then(|s| s.qos_class.clone());
        let mut status = kubelet.render();
        status.qos_class = qos;
        pod.status = Some(status);
        // The scheduler's binding bypasses the field manager; the kubelet's writes do not.
        if step != Step::Schedule {
            managed::record_kubelet_status(before.as_ref(), &mut pod);
        }
        store.put(pod);
        drop(store);
        if !was_started
            && kubelet.started()
            && let Some(ads) = active_deadline
        {
            let secs = (ads as f64 * timeline.deadline_scale).max(0.0);
            deadline = Some(at + Duration::from_secs_f64(secs));
        }
        if kubelet.is_terminal() {
            return;
        }
    }
}

/// Finishes a graceful deletion after `after`: the kubelet kills the containers (MODIFIED),
/// then the pod is removed (DELETED) and its dependents collected.
pub fn spawn_termination(cluster: Arc<ClusterInner>, key: Key, uid: String, after: Duration) {
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(after) => {}
            () = cluster.shutdown.cancelled() => return,
        }
        let mut store = lock(&cluster.store);
        let Some(slot) = store.table::<Pod>().get(&key) else {
            return;
        };
        if slot.obj.metadata.uid.as_deref() != Some(uid.as_str()) {
            return;
        }
        let mut pod = slot.object();
        let before = pod.status.clone();
        if let Some(status) = pod.status.as_mut()
            && status.start_time.is_some()
        {
            kill(status, Timestamp::now(), None);
            managed::record_kubelet_status(before.as_ref(), &mut pod);
            store.put(pod);
        }
        let propagation = lock(&cluster.deletions)
            .get(&uid)
            .copied()
            .unwrap_or(Propagation::Background);
        cluster.remove_pod(&mut store, &key, propagation);
    });
}
