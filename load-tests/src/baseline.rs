//! The physical limit: the least a worker must do per build, with the same crates and no logic.
//!
//! Consume with the same prefetch, create the same pod (and the token Secret when the worker
//! under comparison creates one) with kube-rs on the same `kube-sim`, publish one confirmed
//! event, ack. No routing, breaker, budget, retry, validation or lifecycle: whatever the worker
//! spends beyond this is the price of its logic.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
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
            let body = serde_json::to_vec(
                &json!({"type": "build.launched", "data": {"buildId": id, "pod": name}}),
            )
            .unwrap_or_default();
            let confirm = publish
                .basic_publish(
                    ShortString::from(events.as_str()),
                    ShortString::from("build.launched"),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await;
            if let Ok(confirm) = confirm
                && confirm.await.is_ok()
            {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
        });
    }
    Ok(())
}
