//! The physical limit: the least a worker must do per build, with the same crates and no logic.
//!
//! Consume with the same prefetch, create the same pod (and the token Secret when the worker
//! under comparison creates one) with kube-rs on the same `kube-sim`, publish one confirmed
//! event, ack. No routing, breaker, budget, retry, validation or lifecycle: whatever the worker
//! spends beyond this is the price of its logic.
//!
//! With `--report` it also does the least a lifecycle reporter can do: one pod watch per
//! cluster (kube-runtime's watcher on the worker's labels, decoding only the name and the
//! phase), a confirmed `build.running` per pod seen running and its outcome once it is done.
//! The reporter's own price is what the worker spends beyond that.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use buildcluster_worker::naming;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;

/// The baseline pipeline of the benchmark: the least a worker must do per build.
#[derive(Debug, clap::Parser)]
#[command(name = "bcw-baseline")]
pub struct BaselineArgs {
    /// Queue to consume (already declared and filled).
    #[arg(long)]
    pub queue: String,
    /// Events exchange.
    #[arg(long)]
    pub events: String,
    /// Consumer prefetch.
    #[arg(long)]
    pub prefetch: u16,
    /// API URLs of the clusters; a build goes to `clusters[buildId % n]`.
    #[arg(long, value_delimiter = ',')]
    pub clusters: Vec<String>,
    /// The pod to create (JSON, as the worker created it; the name is replaced per build).
    #[arg(long)]
    pub pod: PathBuf,
    /// Also create this Secret per build (JSON), as the worker does with `tokenDelivery: secret`.
    #[arg(long)]
    pub secret: Option<PathBuf>,
    /// AMQP URL.
    #[arg(long)]
    pub amqp: String,
    /// Also watch the pods and publish `build.running` and the outcome of each (the least
    /// lifecycle reporting).
    #[arg(long)]
    pub report: bool,
}

/// Runs until the process is killed.
pub async fn run(args: BaselineArgs) -> anyhow::Result<()> {
    let pod: Pod = serde_json::from_slice(&std::fs::read(&args.pod)?).context("pod template")?;
    let secret: Option<Secret> = match &args.secret {
        Some(p) => Some(serde_json::from_slice(&std::fs::read(p)?).context("secret template")?),
        None => None,
    };
    let mut clusters = Vec::new();
    for url in &args.clusters {
        let client = kube::Client::try_from(kube::Config::new(url.parse()?))?;
        clusters.push((
            Api::<Pod>::namespaced(client.clone(), "default"),
            Api::<Secret>::namespaced(client, "default"),
        ));
    }
    let conn = Connection::connect(&args.amqp, ConnectionProperties::default()).await?;
    let consume = conn.create_channel().await?;
    consume
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut deliveries = consume
        .basic_consume(
            ShortString::from(args.queue.as_str()),
            ShortString::from("baseline"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    if args.report {
        let selector = reporter_selector(&pod);
        for (pods, _) in &clusters {
            let watched = Api::<Phase>::namespaced(pods.clone().into_client(), "default");
            tokio::spawn(report(
                watched,
                selector.clone(),
                publish.clone(),
                args.events.clone(),
            ));
        }
    }
    let shared = Arc::new((clusters, pod, secret, publish, args.events));
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery?;
        let shared = shared.clone();
        tokio::spawn(async move {
            let (clusters, pod, secret, publish, events) = &*shared;
            let msg: serde_json::Value = match serde_json::from_slice(&delivery.data) {
                Ok(v) => v,
                Err(_) => return,
            };
            let id = msg["buildConfig"]["buildId"].as_u64().unwrap_or_default();
            let (pods, secrets) = &clusters[(id as usize) % clusters.len()];
            let name = format!("baseline-{id}");
            let mut pod = pod.clone();
            pod.metadata.name = Some(name.clone());
            if pods.create(&PostParams::default(), &pod).await.is_err() {
                return;
            }
            if let Some(secret) = secret {
                let mut secret = secret.clone();
                secret.metadata.name = Some(name.clone());
                secret.metadata.owner_references = None;
                if secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if publish_event(publish, events, "build.launched", id, &name)
                .await
                .is_some()
            {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
        });
    }
    Ok(())
}

/// The worker reporter's selector (managed-by and executor labels), read from the pod template.
fn reporter_selector(pod: &Pod) -> String {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    [naming::MANAGED_BY_LABEL, naming::EXECUTOR_LABEL]
        .iter()
        .filter_map(|k| labels.get(*k).map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(",")
}

/// Publishes a confirmed `build.running` once for every pod the watch shows running or done,
/// and its outcome (`build.succeeded`, `build.failed`) once it is done: the lifecycle events
/// the worker's reporter publishes.
async fn report(api: Api<Phase>, selector: String, publish: lapin::Channel, events: String) {
    use kube::runtime::{WatchStreamExt, watcher};
    let mut running = std::collections::HashSet::new();
    let mut done = std::collections::HashSet::new();
    let mut stream = watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(pod) = stream.next().await {
        let Ok(Phase { metadata, status }) = pod else {
            continue;
        };
        let Some(name) = metadata.name else { continue };
        let outcome = match status.phase.as_deref() {
            Some("Succeeded") => Some("build.succeeded"),
            Some("Failed") => Some("build.failed"),
            Some("Running") => None,
            _ => continue,
        };
        let mut types = Vec::new();
        if running.insert(name.clone()) {
            types.push("build.running");
        }
        if let Some(outcome) = outcome
            && done.insert(name.clone())
        {
            types.push(outcome);
        }
        if !types.is_empty() {
            tokio::spawn(publish_events(publish.clone(), events.clone(), name, types));
        }
    }
}

/// Publishes events of these types about one pod, in order, each confirmed.
async fn publish_events(
    publish: lapin::Channel,
    events: String,
    pod: String,
    types: Vec<&'static str>,
) {
    let id: u64 = pod
        .rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    for ty in types {
        let confirmed = publish_event(&publish, &events, ty, id, &pod).await;
        if !confirmed.is_some_and(|c| c.is_ack()) {
            return;
        }
    }
}

/// Publishes one persistent event about a build's pod; its confirmation, if the broker gave one.
async fn publish_event(
    publish: &lapin::Channel,
    events: &str,
    ty: &str,
    id: u64,
    pod: &str,
) -> Option<lapin::Confirmation> {
    let body = serde_json::to_vec(&json!({"type": ty, "data": {"buildId": id, "pod": pod}}))
        .unwrap_or_default();
    let confirm = publish
        .basic_publish(
            ShortString::from(events),
            ShortString::from(ty),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .ok()?;
    confirm.await.ok()
}

/// A pod as the least reporter reads it: its name and phase, everything else skipped.
#[derive(Clone, Debug, serde::Deserialize)]
struct Phase {
    #[serde(deserialize_with = "name_and_version")]
    metadata: kube::api::ObjectMeta,
    #[serde(default)]
    status: PhaseStatus,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
struct PhaseStatus {
    phase: Option<String>,
}

/// The watcher needs the name and the resource version; the rest of the metadata is skipped.
fn name_and_version<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<kube::api::ObjectMeta, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        name: Option<String>,
        resource_version: Option<String>,
    }
    let m = <Meta as serde::Deserialize>::deserialize(d)?;
    Ok(kube::api::ObjectMeta {
        name: m.name,
        resource_version: m.resource_version,
        ..Default::default()
    })
}

buildcluster_worker::slim_pod_resource!(Phase);
