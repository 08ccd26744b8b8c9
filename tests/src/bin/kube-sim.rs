//! `kube-sim`: runs simulated Kubernetes clusters until SIGTERM/SIGINT.
//!
//! Clusters come from `--cluster NAME[:RUNTIMECLASS,...]` flags and/or a JSON/YAML config file
//! (a `SimConfig`). Once every cluster listens, one JSON line goes to stdout:
//! `{"control":"http://127.0.0.1:P","clusters":{"a":{"url":...,"kubeconfig":...}}}`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bcw_tests::kube_sim::{ClusterConfig, KubeSim, SimConfig, Timeline};
use clap::Parser;
use serde_json::json;

/// Simulated Kubernetes API servers for buildcluster-worker tests.
#[derive(Parser, Debug)]
#[command(name = "kube-sim", version, about)]
struct Args {
    /// A JSON or YAML file holding a SimConfig (clusters, control_port, kubeconfig_dir).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A cluster: NAME or NAME:RUNTIMECLASS,RUNTIMECLASS (repeatable).
    #[arg(long = "cluster", value_name = "NAME[:RC,...]")]
    clusters: Vec<String>,
    /// Port of the first --cluster; the next ones follow (0 = any free ports).
    #[arg(long, default_value_t = 0)]
    port_base: u16,
    /// Port of the control API (0 = any free port).
    #[arg(long)]
    control_port: Option<u16>,
    /// Directory for the kubeconfig files (default: a temporary directory).
    #[arg(long)]
    kubeconfig_dir: Option<PathBuf>,
    /// Creation to scheduled, in ms (for --cluster clusters).
    #[arg(long)]
    schedule_after_ms: Option<u64>,
    /// Scheduled to running, in ms.
    #[arg(long)]
    start_after_ms: Option<u64>,
    /// How long build containers run, in ms.
    #[arg(long, conflicts_with = "run_forever")]
    run_for_ms: Option<u64>,
    /// Build containers run until their pod is deleted.
    #[arg(long)]
    run_forever: bool,
    /// Graceful termination of a running pod, in ms.
    #[arg(long)]
    terminate_after_ms: Option<u64>,
    /// Multiplier of activeDeadlineSeconds (1.0 = real seconds).
    #[arg(long)]
    deadline_scale: Option<f64>,
    /// Watch events kept per resource.
    #[arg(long)]
    history_limit: Option<usize>,
}

fn timeline(args: &Args) -> Timeline {
    let mut t = Timeline::default();
    if let Some(ms) = args.schedule_after_ms {
        t.schedule_after = Duration::from_millis(ms);
    }
    if let Some(ms) = args.start_after_ms {
        t.start_after = Duration::from_millis(ms);
    }
    if let Some(ms) = args.run_for_ms {
        t.run_for = Some(Duration::from_millis(ms));
    }
    if args.run_forever {
        t.run_for = None;
    }
    if let Some(ms) = args.terminate_after_ms {
        t.terminate_after = Duration::from_millis(ms);
    }
    if let Some(s) = args.deadline_scale {
        t.deadline_scale = s;
    }
    t
}

fn config(args: &Args) -> anyhow::Result<SimConfig> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            if path.extension().is_some_and(|e| e == "json") {
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?
            } else {
                serde_saphyr::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?
            }
        }
        None => SimConfig::default(),
    };
    let timeline = timeline(args);
    for (i, spec) in args.clusters.iter().enumerate() {
        let (name, classes) = spec.split_once(':').unwrap_or((spec.as_str(), ""));
        let mut c = ClusterConfig::new(name)
            .with_runtime_classes(classes.split(',').filter(|c| !c.is_empty()))
            .with_timeline(timeline);
        if args.port_base != 0 {
            c.port = args
                .port_base
                .checked_add(u16::try_from(i)?)
                .context("--port-base too high")?;
        }
        if let Some(h) = args.history_limit {
            c.history_limit = h;
        }
        cfg.clusters.push(c);
    }
    if let Some(p) = args.control_port {
        cfg.control_port = p;
    }
    if let Some(d) = &args.kubeconfig_dir {
        cfg.kubeconfig_dir = Some(d.clone());
    }
    if cfg.clusters.is_empty() {
        bail!("no clusters: give --cluster NAME or a --config file");
    }
    Ok(cfg)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sim = KubeSim::start(config(&args)?).await?;
    println!(
        "{}",
        json!({"control": sim.control_url(), "clusters": sim.cluster_table()})
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    sim.shutdown().await;
    Ok(())
}
