//! Watch streams: newline-delimited `{"type":...,"object":...}` events over a chunked
//! response, with the watch cache's semantics.
//!
//! Owns how a watch starts (synthetic ADDED for the current state, resuming after a
//! resourceVersion from the history, or a streaming list ending in an `initial-events-end`
//! BOOKMARK), how events are filtered (an object leaving the selector is DELETED for this
//! watch), bookmarks, timeouts and the 410 Expired answer. It never changes objects.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, sleep_until};

use super::api::{Resp, json_stream};
use super::cluster::{ClusterInner, lock};
use super::request::ListOptions;
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{Entry, Event, EventType, ResourceKind};
use super::validation::FieldError;

/// Longest the server waits for a resourceVersion it has not reached yet.
const TOO_LARGE_WAIT: Duration = Duration::from_secs(3);
/// Watch timeout when the client sets none (the API server picks 30-60 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// What a watch filters on.
pub struct Filter {
    /// Namespace of a namespaced watch.
    pub ns: Option<String>,
    /// labelSelector.
    pub labels: LabelSelector,
    /// fieldSelector.
    pub fields: FieldSelector,
}

impl Filter {
    fn passes(&self, e: &Entry) -> bool {
        e.matches(self.ns.as_deref(), &self.labels, &self.fields)
    }

    /// The event this watch sees for a change, if any.
    fn convert(&self, ev: &Event) -> Option<Bytes> {
        let cur = ev.typ != EventType::Deleted && self.passes(&ev.object);
        let prev = ev.prev.as_ref().is_some_and(|p| self.passes(p));
        match (cur, prev) {
            (true, false) => Some(frame("ADDED", &ev.object.json)),
            (true, true) => Some(frame("MODIFIED", &ev.object.json)),
            (false, true) if ev.typ == EventType::Deleted => {
                Some(frame("DELETED", &ev.object.json))
            }
            (false, true) => {
                // The object left the selector: this watch sees it deleted, in its old state
                // at the new resourceVersion.
                let prev = ev.prev.as_ref()?;
                let mut v: serde_json::Value = serde_json::from_slice(&prev.json).ok()?;
                v["metadata"]["resourceVersion"] = serde_json::json!(ev.rv().to_string());
                Some(frame("DELETED", &serde_json::to_vec(&v).ok()?))
            }
            (false, false) => None,
        }
    }
}

fn frame(typ: &str, object: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(object.len() + 32);
    b.put_slice(b"{\"type\":\"");
    b.put_slice(typ.as_bytes());
    b.put_slice(b"\",\"object\":");
    b.put_slice(object);
    b.put_slice(b"}\n");
    b.freeze()
}

fn bookmark(kind: ResourceKind, rv: u64, initial_end: bool) -> Bytes {
    frame(
        "BOOKMARK",
        &serde_json::to_vec(&kind.bookmark(rv, initial_end)).unwrap_or_default(),
    )
}

fn error_frame(e: &ApiError) -> Bytes {
    frame("ERROR", &e.to_json())
}

enum Start {
    /// Synthetic ADDED for the current state (rv unset or "0"); `initial_end` adds the
    /// streaming-list BOOKMARK after them.
    Current { initial_end: bool },
    /// Events after this resourceVersion.
    After(u64),
}

/// Serves a watch of `kind`.
pub async fn serve(
    cluster: Arc<ClusterInner>,
    kind: ResourceKind,
    filter: Filter,
    opts: &ListOptions,
) -> Result<Resp, ApiError> {
    let start = start_of(opts)?;
    if let Start::After(rv) = start {
        wait_for_rv(&cluster, rv).await;
    }
    let timeout = opts
        .timeout_seconds
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let (tx, rx_body) = mpsc::channel::<Bytes>(256);
    let mut initial = Vec::new();
    let mut end_after_initial = false;
    let (events, stop, start_rv) = {
        let store = lock(&cluster.store);
        let (events, stop) = store.subscribe();
        let current = store.rv();
        match start {
            Start::Current { initial_end } => {
                for e in select_all(&store, kind, &filter) {
                    initial.push(frame("ADDED", &e.json));
                }
                if initial_end {
                    initial.push(bookmark(kind, current, true));
                }
                (events, stop, current)
            }
            Start::After(rv) if rv > current => {
                initial.push(error_frame(&ApiError::too_large_resource_version(
                    rv, current,
                )));
                end_after_initial = true;
                (events, stop, current)
            }
            Start::After(rv) => match store.events_since(kind, rv) {
                Ok(history) => {
                    initial.extend(history.iter().filter_map(|ev| filter.convert(ev)));
                    (events, stop, current)
                }
                Err(floor) => {
                    initial.push(error_frame(&ApiError::expired(format!(
                        "too old resource version: {rv} ({floor})"
                    ))));
                    end_after_initial = true;
                    (events, stop, current)
                }
            },
        }
    };
    let bookmark_every = opts.bookmarks.then_some(cluster.config.bookmark_interval);
    let shutdown = cluster.shutdown.clone();
    tokio::spawn(async move {
        for f in initial {
            if tx.send(f).await.is_err() {
                return;
            }
        }
        if end_after_initial {
            return;
        }
        pump(
            kind,
            filter,
            events,
            tx,
            stop,
            shutdown,
            start_rv,
            timeout,
            bookmark_every,
        )
        .await;
    });
    Ok(json_stream(rx_body))
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    kind: ResourceKind,
    filter: Filter,
    mut events: broadcast::Receiver<Arc<Event>>,
    tx: mpsc::Sender<Bytes>,
    stop: tokio_util::sync::CancellationToken,
    shutdown: tokio_util::sync::CancellationToken,
    start_rv: u64,
    timeout: Duration,
    bookmark_every: Option<Duration>,
) {
    let deadline = Instant::now() + timeout;
    // The last resourceVersion this watch has seen everything up to.
    let mut seen = start_rv;
    let far = deadline + Duration::from_secs(3600);
    let mut next_bookmark = bookmark_every.map_or(far, |d| Instant::now() + d);
    loop {
        tokio::select! {
            received = events.recv() => match received {
                Ok(ev) => {
                    if ev.rv() <= start_rv {
                        continue;
                    }
                    seen = seen.max(ev.rv());
                    if ev.object.kind != kind {
                        continue;
                    }
                    if let Some(f) = filter.convert(&ev)
                        && tx.send(f).await.is_err()
                    {
                        return;
                    }
                }
                // Too slow to keep up (or the cluster is gone): end the watch; the client
                // resumes from its last resourceVersion.
                Err(_) => return,
            },
            () = sleep_until(next_bookmark), if bookmark_every.is_some() => {
                if tx.send(bookmark(kind, seen, false)).await.is_err() {
                    return;
                }
                next_bookmark = bookmark_every.map_or(far, |d| Instant::now() + d);
            }
            () = sleep_until(deadline) => {
                if bookmark_every.is_some() {
                    let _ = tx.send(bookmark(kind, seen, false)).await;
                }
                return;
            }
            () = stop.cancelled() => return,
            () = shutdown.cancelled() => return,
            () = tx.closed() => return,
        }
    }
}

fn select_all(store: &super::store::Store, kind: ResourceKind, filter: &Filter) -> Vec<Arc<Entry>> {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Pod, Secret};
    let ns = filter.ns.as_deref();
    match kind {
        ResourceKind::Pods => store
            .table::<Pod>()
            .select(ns, &filter.labels, &filter.fields, None)
            .cloned()
            .collect(),
        ResourceKind::Secrets => store
            .table::<Secret>()
            .select(ns, &filter.labels, &filter.fields, None)
            .cloned()
            .collect(),
        ResourceKind::Leases => store
            .table::<Lease>()
            .select(ns, &filter.labels, &filter.fields, None)
            .cloned()
            .collect(),
    }
}

fn start_of(opts: &ListOptions) -> Result<Start, ApiError> {
    if opts.send_initial_events == Some(true) {
        let mut errs = Vec::new();
        if opts.resource_version_match.as_deref() != Some("NotOlderThan") {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !opts.bookmarks {
            errs.push(FieldError::forbidden(
                "allowWatchBookmarks",
                "sendInitialEvents requires setting allowWatchBookmarks to true",
            ));
        }
        if !errs.is_empty() {
            return Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", &errs));
        }
    } else if opts.resource_version_match.is_some() {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            &[FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            )],
        ));
    }
    let initial_end = opts.send_initial_events == Some(true);
    match opts.resource_version.as_deref() {
        None | Some("" | "0") => Ok(Start::Current { initial_end }),
        Some(rv) if initial_end => {
            // A streaming list from a given resourceVersion still starts with the state.
            rv.parse::<u64>().map_err(|_| invalid_rv(rv))?;
            Ok(Start::Current { initial_end })
        }
        Some(rv) => rv.parse().map(Start::After).map_err(|_| invalid_rv(rv)),
    }
}

fn invalid_rv(rv: &str) -> ApiError {
    ApiError::bad_request(format!("invalid resource version: {rv:?}"))
}

/// Waits (briefly) until the cluster reaches `rv`, as the watch cache does.
pub async fn wait_for_rv(cluster: &ClusterInner, rv: u64) {
    let until = Instant::now() + TOO_LARGE_WAIT;
    while lock(&cluster.store).rv() < rv && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A response body from a channel of frames.
pub fn body_of(rx: mpsc::Receiver<Bytes>) -> axum::body::Body {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    axum::body::Body::from_stream(stream)
}
