//! `bcw-load`: the load generator and benchmark of buildcluster-worker.
//!
//! `bcw-load bench` runs the standard scenarios against the release build of the worker and a
//! baseline pipeline, back to back on this machine, and writes `load-tests/results/`: one JSON
//! per scenario, `summary.md` (figures and targets) and SVG charts. The baseline pipeline is
//! `bcw-baseline`, started by `bench` as a process of its own.

mod procstat;
mod report;
mod run;
mod scenario;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Load generator and benchmark of buildcluster-worker.
#[derive(Debug, Parser)]
#[command(name = "bcw-load", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs scenarios and writes their results.
    Bench {
        /// Only these scenarios (comma separated); default: the standard set.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Multiplies build counts and durations (0.1 for a quick look).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Where results go.
        #[arg(long, default_value = "load-tests/results")]
        out: PathBuf,
        /// JSON merged over every worker configuration (for what-if runs).
        #[arg(long)]
        worker_config: Option<String>,
        /// Skips the warm-up (only for scenarios without a baseline).
        #[arg(long)]
        no_warm_up: bool,
        /// Lists the scenarios and exits.
        #[arg(long)]
        list: bool,
    },
}

/// kube-sim and the load generator share the machine with the consumers they measure: mimalloc
/// makes their share smaller (load-tests/README.md). The consumers, the worker and
/// `bcw-baseline`, run on the worker's allocator (jemalloc).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Bench {
            only,
            scale,
            out,
            worker_config,
            no_warm_up,
            list,
        } => {
            let all = scenario::standard(scale);
            if list {
                for s in &all {
                    println!("{:<26} {}", s.name, s.title);
                }
                return Ok(());
            }
            let unknown: Vec<&String> = only
                .iter()
                .filter(|n| !all.iter().any(|s| s.name == n.as_str()))
                .collect();
            if !unknown.is_empty() {
                anyhow::bail!("unknown scenarios: {unknown:?} (see --list)");
            }
            let chosen: Vec<_> = all
                .into_iter()
                .filter(|s| only.is_empty() || only.iter().any(|n| n == s.name))
                .collect();
            let mut bench = run::Bench::start().await?;
            if let Some(extra) = worker_config {
                bench.worker_extra = serde_json::from_str(&extra)?;
            }
            if !no_warm_up {
                eprintln!("warm-up (also records the pod and Secret the baseline sends)");
                bench.warm_up().await?;
            }
            let mut outcomes = Vec::new();
            for s in &chosen {
                eprintln!("scenario {}: {}", s.name, s.title);
                let o = bench.run(s, true).await?;
                eprintln!(
                    "  {} builds, {} launched, {:.0} builds/s, launch p50 {:.1} ms p99 {:.1} ms, CPU {:.2} ms/build (RabbitMQ {}, kube-sim and load generator {:.2}), peak RSS {:.1} MiB, {:.0} s",
                    o.published,
                    o.launched,
                    o.throughput_per_s,
                    o.launched_ms.p50,
                    o.launched_ms.p99,
                    o.cost.cpu_ms_per_build,
                    o.cost
                        .broker_cpu_ms_per_build
                        .map_or("-".into(), |b| format!("{b:.2}")),
                    o.cost.harness_cpu_ms_per_build,
                    o.cost.peak_rss_mib,
                    o.wall_s
                );
                outcomes.push(o);
            }
            bench.shutdown().await;
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            let date = jiff::Zoned::now().strftime("%Y-%m-%d %H:%M %Z").to_string();
            report::write(&out, &outcomes, &command, &date)?;
            for v in report::verdicts(&outcomes) {
                let met = match v.met {
                    Some(true) => "met",
                    Some(false) => "NOT MET",
                    None => "not run",
                };
                println!("{met:>8}  {}: {}", v.target, v.figure);
            }
            println!("results in {}", out.display());
            Ok(())
        }
    }
}
