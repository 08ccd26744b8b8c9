//! The worker, wired: executors, router, launcher, dispatcher, broker supervisor, reporters,
//! breaker signals and the HTTP server, run until `shutdown` and then drained.
//!
//! Dependencies and the shutdown signal are injected (`run(settings, metrics, shutdown)`), so
//! tests run whole workers in process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::breaker::Transition;
use crate::broker::{self, BrokerOptions, Companion, Publisher, Topology};
use crate::cluster::{BreakerSignal, Cluster, ExecutorState};
use crate::config::Settings;
use crate::dispatch::{Dispatcher, Policy};
use crate::events::{ClusterEventData, EventType, cluster_event};
use crate::health::Readiness;
use crate::intake::Limits;
use crate::launch::{self, Executor, Launcher};
use crate::protocol::client::Protocol;
use crate::protocol::sequencer::{self, Service};
use crate::routing::Router;
use crate::status::StatusUpdater;
use crate::telemetry::metrics;
use crate::watch::handover::Handover;
use crate::watch::lease::{self, Election};
use crate::watch::reporter::Reporter;

/// What a caller may learn once the worker listens.
#[derive(Debug, Clone)]
pub struct Started {
    /// Address of the HTTP server.
    pub http: SocketAddr,
    /// This replica's identity (Lease holder, connection name).
    pub identity: String,
}

/// Longest wait for the background tasks (reporters, lease holders, the HTTP server) to stop.
const BACKGROUND_STOP: Duration = Duration::from_secs(10);

/// Stops the background tasks (reporters, lease holders, breaker signals, the HTTP server): a
/// reporter finishes the batch it is working on (its events confirmed) and releases its lease.
async fn stop_background(background: CancellationToken, tasks: TaskTracker) {
    background.cancel();
    tasks.close();
    if tokio::time::timeout(BACKGROUND_STOP, tasks.wait())
        .await
        .is_err()
    {
        warn!("background tasks did not stop in time");
    }
}

/// Runs a worker until `shutdown` is cancelled, then drains and returns.
pub async fn run(
    settings: Settings,
    metrics_handle: Option<PrometheusHandle>,
    shutdown: CancellationToken,
    started: Option<oneshot::Sender<Started>>,
) -> anyhow::Result<()> {
    let identity = identity();
    let readiness = Readiness::default();
    let tasks = TaskTracker::new();
    let background = CancellationToken::new();

    let http_addr =
        serve_http(&settings, &readiness, metrics_handle, (&tasks, &background)).await?;

    let (signals_tx, signals_rx) = mpsc::unbounded_channel();
    let executors = connect_executors(&settings, signals_tx).await?;
    let router = Router::from_settings(&settings.executor)
        .map_err(|problems| anyhow::anyhow!(problems.join("; ")))?;
    let (publisher, control) = Publisher::new(
        settings
            .events
            .enabled
            .then(|| settings.events.exchange.clone()),
    );
    let publisher = publisher.with_format(settings.events.format);
    let status = settings
        .status_updates
        .enabled
        .then(|| StatusUpdater::new(&settings.status_updates))
        .transpose()
        .map_err(|e| anyhow::anyhow!("status updates: {e}"))?;
    let topology = Topology::from_settings(&settings);
    let (companion, protocol) = launch_protocol(&topology, &executors);
    let shared = Shared {
        identity: identity.clone(),
        publisher,
        source: crate::events::source(&topology.queue),
        status,
        protocol,
    };

    let background_of = (&tasks, &background);
    start_background(&settings, &executors, &shared, signals_rx, background_of);
    readiness.watch_executors(executors.values().map(|e| e.cluster.clone()).collect());
    let dispatcher = dispatcher(&settings, router, executors, shared, topology.clone());
    let dispatcher = Arc::new(dispatcher.with_readiness(readiness.clone()));
    let options = broker_options(&settings, topology, &identity)?;
    if let Some(tx) = started {
        let _ = tx.send(Started {
            http: http_addr,
            identity: identity.clone(),
        });
    }

    tasks.spawn(drain_signal(
        readiness.clone(),
        shutdown.clone(),
        background.clone(),
    ));
    // Once builds are drained, the reporters finish what they are sending and release their
    // leases, and the rest stops, while the broker connection is still up.
    let result = broker::run(
        options,
        dispatcher,
        control,
        companion,
        readiness,
        shutdown.clone(),
        stop_background(background.clone(), tasks.clone()),
    )
    .await;
    // Without a connection at the end (or on a broker problem) that did not run.
    if !background.is_cancelled() {
        stop_background(background, tasks).await;
    }
    result.map(|_| info!("drained; bye")).map_err(|e| {
        error!(error = %e, "broker problem");
        e.into()
    })
}

/// Serves `/healthz`, `/readyz` and `/metrics` as a background task; returns its address.
async fn serve_http(
    settings: &Settings,
    readiness: &Readiness,
    metrics_handle: Option<PrometheusHandle>,
    (tasks, background): (&TaskTracker, &CancellationToken),
) -> anyhow::Result<SocketAddr> {
    let (host, port) = (&settings.httpd.host, settings.httpd.port);
    let listener = crate::http::bind(host, port)
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let address = listener.local_addr()?;
    tasks.spawn(crate::http::serve(
        listener,
        readiness.clone(),
        metrics_handle,
        background.clone(),
    ));
    info!(%address, "serving /healthz, /readyz and /metrics");
    Ok(address)
}

/// Every executor's cluster client (no request is made yet), its breaker gauge at closed.
async fn connect_executors(
    settings: &Settings,
    signals: mpsc::UnboundedSender<BreakerSignal>,
) -> anyhow::Result<Arc<BTreeMap<String, Executor>>> {
    let mut executors = BTreeMap::new();
    for (name, config) in &settings.executor.executors {
        let cluster = Cluster::connect(name, config, signals.clone())
            .await
            .with_context(|| format!("executor {name}"))?;
        metrics::breaker_state(name, 0.0);
        let config = config.clone();
        executors.insert(name.clone(), Executor { cluster, config });
    }
    Ok(Arc::new(executors))
}

/// The background work besides serving: breaker signals, and per executor the reporter behind
/// its Lease (or, with the reporter off, one look at start-up).
fn start_background(
    settings: &Settings,
    executors: &Arc<BTreeMap<String, Executor>>,
    shared: &Shared,
    signals: mpsc::UnboundedReceiver<BreakerSignal>,
    (tasks, background): (&TaskTracker, &CancellationToken),
) {
    tasks.spawn(breaker_signals(
        signals,
        shared.publisher.clone(),
        shared.source.clone(),
        shared.identity.clone(),
        executors.clone(),
        (background.clone(), tasks.clone()),
    ));
    if settings.lifecycle.enabled {
        start_reporters(settings, executors, shared, (tasks, background));
    } else {
        look_at_start(executors, (tasks, background));
    }
}

/// The dispatcher: every delivery decoded, launched through the executors, settled.
fn dispatcher(
    settings: &Settings,
    router: Router,
    executors: Arc<BTreeMap<String, Executor>>,
    shared: Shared,
    topology: Topology,
) -> Dispatcher {
    let launcher = Launcher::new(
        router,
        executors,
        settings.ecosystem.clone(),
        settings.intake.pod_annotation_allow_list.clone(),
        shared.protocol,
    );
    Dispatcher::new(
        launcher,
        shared.publisher,
        topology,
        policy(settings),
        shared.status,
    )
}

/// What the reporters, the breaker signals and the dispatcher share.
struct Shared {
    identity: String,
    publisher: Publisher,
    /// `source` of the events.
    source: String,
    status: Option<Arc<StatusUpdater>>,
    protocol: Protocol,
}

/// Per executor, the Lease election and the reporter it gates, as background tasks.
fn start_reporters(
    settings: &Settings,
    executors: &BTreeMap<String, Executor>,
    shared: &Shared,
    (tasks, background): (&TaskTracker, &CancellationToken),
) {
    for (name, ex) in executors {
        metrics::reporter_leader(name, false);
        let (leading_tx, leading_rx) = watch::channel(false);
        let election = Election {
            name: lease_name(name),
            identity: shared.identity.clone(),
            duration: settings.lifecycle.lease_duration,
            renew_every: settings.lifecycle.lease_renew_interval,
        };
        let handover = Arc::new(Handover::default());
        tasks.spawn(lease::run(
            ex.cluster.clone(),
            election,
            leading_tx,
            background.clone(),
            handover.clone(),
        ));
        let reporter = Reporter {
            cluster: ex.cluster.clone(),
            config: ex.config.clone(),
            publisher: shared.publisher.clone(),
            source: shared.source.clone(),
            status: shared.status.clone(),
            resync: settings.lifecycle.resync_interval,
            protocol: shared.protocol.clone(),
            busy_for: ex.busy_for(),
            handover,
        };
        tasks.spawn(reporter.run(leading_rx, background.clone()));
    }
}

/// Without the reporter's Lease nothing calls a cluster until the first build: one read at
/// start-up (of a pod that never exists; `get pods` is a verb every set-up grants) shows a
/// misconfigured executor (TLS, host, credentials, Role) at once.
fn look_at_start(
    executors: &BTreeMap<String, Executor>,
    (tasks, background): (&TaskTracker, &CancellationToken),
) {
    for ex in executors.values() {
        let (cluster, stop) = (ex.cluster.clone(), background.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = cluster.get_pod("buildcluster-worker-start-up-check") => {}
            }
        });
    }
}

/// The message policy of the configuration.
fn policy(settings: &Settings) -> Policy {
    Policy {
        limits: Limits {
            max_bytes: settings.intake.max_message_bytes,
        },
        reprocess_limit: settings.rabbitmq.message_reprocess_limit,
        max_wait: settings.rabbitmq.max_wait,
        cache: settings.ecosystem.cache.clone(),
    }
}

/// How to reach the broker: its URI, CA bundle, this replica's connection name, the layout.
fn broker_options(
    settings: &Settings,
    topology: Topology,
    identity: &str,
) -> anyhow::Result<BrokerOptions> {
    let ca_pem = if settings.rabbitmq.ca_file.is_empty() {
        None
    } else {
        Some(
            std::fs::read_to_string(&settings.rabbitmq.ca_file)
                .with_context(|| format!("rabbitmq.caFile {}", settings.rabbitmq.ca_file))?,
        )
    };
    let uri = settings
        .rabbitmq
        .amqp_uri()
        .map_err(|issue| anyhow::anyhow!("{issue}"))?;
    Ok(BrokerOptions {
        uri,
        ca_pem,
        connection_name: format!("buildcluster-worker@{identity}"),
        topology,
        prefetch: settings.rabbitmq.prefetch_count,
        drain_timeout: settings.shutdown.drain_timeout,
    })
}

/// Turns `/readyz` to draining when shutdown is asked for.
async fn drain_signal(
    readiness: Readiness,
    shutdown: CancellationToken,
    background: CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => {
            readiness.set_draining();
            info!("shutdown requested: draining");
        }
        _ = background.cancelled() => {}
    }
}

/// The launch protocol (docs/protocol.md): the sequencer on the broker, or, without the claims
/// queue (`rabbitmq.buildLocks: false`), decisions in this process only.
fn launch_protocol(
    topology: &Topology,
    executors: &BTreeMap<String, Executor>,
) -> (Option<Arc<dyn Companion>>, Protocol) {
    let busy = launch::busy_windows(executors);
    match (&topology.claims_queue, &topology.ledger_stream) {
        (Some(claims), Some(ledger)) => {
            let names = sequencer::Names {
                claims: claims.clone(),
                ledger: ledger.clone(),
            };
            let (service, protocol) = Service::new(names, busy);
            (Some(service as Arc<dyn Companion>), protocol)
        }
        _ => (None, Protocol::local(busy)),
    }
}

/// Metrics, logs and `cluster.*` events for every breaker transition; also keeps the state
/// gauge current when an open period ends without a call.
async fn breaker_signals(
    mut rx: mpsc::UnboundedReceiver<BreakerSignal>,
    publisher: Publisher,
    source: String,
    identity: String,
    executors: Arc<BTreeMap<String, Executor>>,
    (stop, tasks): (CancellationToken, TaskTracker),
) {
    let mut sequence = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let signal = tokio::select! {
            _ = stop.cancelled() => return,
            s = rx.recv() => match s { Some(s) => s, None => return },
            _ = tick.tick() => {
                for (name, ex) in executors.iter() {
                    if ex.cluster.poll_breaker().is_some() {
                        info!(executor = %name, "breaker half-open: the next call probes the cluster");
                    }
                    let breaker = ex.cluster.breaker_state();
                    metrics::breaker_state(name, breaker.as_gauge());
                    metrics::executor_state(name, ExecutorState::of(&ex.cluster));
                }
                continue;
            }
        };
        let executor = signal.executor.clone();
        metrics::breaker_state(&executor, signal.transition.state().as_gauge());
        let (ty, data) = match signal.transition {
            Transition::Opened {
                consecutive_failures,
                open_for,
                trip,
            } => {
                metrics::breaker_tripped(&executor);
                warn!(executor = %executor, consecutive_failures, ?open_for, trip, "breaker opened");
                (
                    EventType::BreakerOpened,
                    ClusterEventData {
                        executor: executor.clone(),
                        failures: consecutive_failures,
                        open_for_seconds: Some(open_for.as_secs_f64()),
                        trip: Some(trip),
                    },
                )
            }
            Transition::HalfOpened => {
                info!(executor = %executor, "breaker half-open: the next call probes the cluster");
                continue;
            }
            Transition::Closed => {
                info!(executor = %executor, "breaker closed");
                (
                    EventType::BreakerClosed,
                    ClusterEventData {
                        executor: executor.clone(),
                        failures: 0,
                        ..Default::default()
                    },
                )
            }
        };
        sequence += 1;
        let ev = cluster_event(&source, &identity, sequence, ty, data);
        let publisher = publisher.clone();
        tasks.spawn(async move {
            if let Err(e) = publisher.publish_event(&ev).await {
                warn!(error = %e, "breaker event not published");
            }
        });
    }
}

/// The reporter Lease of an executor: a valid object name derived from the executor's name.
pub fn lease_name(executor: &str) -> String {
    const PREFIX: &str = "buildcluster-worker-";
    let cleaned: String = executor
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches('-');
    if cleaned == executor && PREFIX.len() + cleaned.len() <= 63 {
        return format!("{PREFIX}{cleaned}");
    }
    // Distinct executors must not share a Lease after cleaning: add a hash of the real name.
    let short: String = cleaned.chars().take(30).collect();
    let short = short.trim_matches('-');
    let h = crate::naming::fnv1a64(executor.as_bytes()) as u32;
    if short.is_empty() {
        format!("{PREFIX}{h:08x}")
    } else {
        format!("{PREFIX}{short}-{h:08x}")
    }
}

/// This replica's identity: the pod name (`HOSTNAME`) plus a random suffix, so a restarted
/// replica with the same name is a new holder.
fn identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_valid_and_distinct() {
        assert_eq!(lease_name("k8s"), "buildcluster-worker-k8s");
        let a = lease_name("K8s_Sandbox");
        let b = lease_name("k8s-sandbox");
        assert_ne!(a, b);
        for n in [a, b, lease_name("__"), lease_name(&"x".repeat(300))] {
            assert!(crate::naming::is_dns1123_label(&n), "{n}");
        }
    }
}
