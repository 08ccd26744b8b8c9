//! `buildcluster-worker`: the command line (docs/interface.md §1). Only wiring lives here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use buildcluster_worker::config::{self, Compat, LoadOptions, Settings};
use buildcluster_worker::ops;
use buildcluster_worker::telemetry::{logging, metrics};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// jemalloc, as `.cargo/config.toml` configures it (two arenas, freed pages returned within a
/// second): a tenth to a seventh less CPU per build than glibc's allocator, within the same
/// memory targets (load-tests/README.md, "jemalloc for the worker and the baseline").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Consumes CI build messages from RabbitMQ and launches build pods on Kubernetes clusters.
#[derive(Debug, Parser)]
#[command(name = "buildcluster-worker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "json",
        env = "BCW_LOG_FORMAT"
    )]
    log_format: logging::LogFormat,
    /// Log level or filter (overrides RUST_LOG), e.g. `info` or `buildcluster_worker=debug`.
    #[arg(long, global = true, env = "BCW_LOG_LEVEL")]
    log_level: Option<String>,
    /// Read the original buildcluster-queue-worker's configuration (`screwdriver`).
    #[arg(long, global = true, env = "BCW_COMPAT", default_value = "native")]
    compat: Compat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the worker until SIGTERM/SIGINT, then drain and exit 0.
    Run {
        /// Configuration file (YAML); the environment may provide everything instead.
        #[arg(long, env = "BCW_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Load and validate the configuration, print every problem (exit 2) or the effective
    /// configuration with secrets masked (exit 0); with --connect, also check the broker, every
    /// executor and the Screwdriver API, one line per check (exit 2 when one fails).
    #[command(after_help = CHECK_CONFIG_EXAMPLES)]
    CheckConfig {
        /// Configuration file (YAML).
        #[arg(long, env = "BCW_CONFIG")]
        config: Option<PathBuf>,
        /// Also connect: broker (login, vhost, layout), every executor (TLS, token, version,
        /// namespace, RuntimeClass, permissions), the Screwdriver API when updates are on.
        #[arg(long)]
        connect: bool,
    },
    /// Publish start, stop or clear messages (from files, standard input or flags), checked
    /// against schemas/ first, confirmed by the broker, one line per message.
    Enqueue {
        /// Configuration file (YAML): the broker, exchange and queue to publish to.
        #[arg(long, env = "BCW_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: Box<ops::enqueue::EnqueueArgs>,
    },
    /// The dead letters of <queue>.dead: list, show, replay, purge.
    #[command(after_help = ops::dead::EXAMPLES)]
    Dead {
        /// Configuration file (YAML): the broker and queue whose dead letters to read.
        #[arg(long, env = "BCW_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: ops::dead::DeadCommand,
    },
}

const CHECK_CONFIG_EXAMPLES: &str = "\
Examples:
  buildcluster-worker check-config --config worker.yaml
  buildcluster-worker check-config --connect --config worker.yaml
  buildcluster-worker check-config --connect --compat screwdriver   # the original's variables";

fn main() -> ExitCode {
    // One TLS provider for the whole process (lapin and kube both use rustls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    match cli.command {
        Command::CheckConfig { config, connect } => {
            let opts = LoadOptions {
                path: config,
                env,
                compat: cli.compat,
            };
            check_config(&opts, connect)
        }
        Command::Enqueue { config, args } => match settings_for(config, env, cli.compat) {
            Ok(settings) => on_runtime(ops::enqueue::run(&args, &settings)),
            Err(code) => code,
        },
        Command::Dead { config, command } => match settings_for(config, env, cli.compat) {
            Ok(settings) => on_runtime(ops::dead::run(&command, &settings)),
            Err(code) => code,
        },
        Command::Run { config } => {
            logging::init(cli.log_format, cli.log_level.as_deref());
            let opts = LoadOptions {
                path: config,
                env,
                compat: cli.compat,
            };
            run(&opts)
        }
    }
}

/// `check-config`: the effective configuration, or (`--connect`) every check against what it
/// names; exit 2 with every problem.
fn check_config(opts: &LoadOptions, connect: bool) -> ExitCode {
    match config::load(opts) {
        Ok(settings) if connect => on_runtime(ops::check::run(&settings)),
        Ok(settings) => {
            print!("{}", config::render_effective(&settings));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            println!("configuration is invalid ({} problems):", errors.0.len());
            for issue in &errors.0 {
                println!("  {issue}");
            }
            ExitCode::from(2)
        }
    }
}

/// `run`: the worker until SIGTERM or SIGINT; exit 2 for an invalid configuration.
fn run(opts: &LoadOptions) -> ExitCode {
    let loaded = match config::load_with_notices(opts) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("configuration is invalid ({} problems):", errors.0.len());
            for issue in &errors.0 {
                eprintln!("  {issue}");
            }
            return ExitCode::from(2);
        }
    };
    for notice in &loaded.notices {
        tracing::info!(key = %notice.path, "{}", notice.message);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let handle = match metrics::install() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(error = %e, "metrics recorder not installed");
                None
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        match buildcluster_worker::app::run(loaded.settings, handle, shutdown, None).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "worker stopped");
                ExitCode::FAILURE
            }
        }
    })
}

/// The validated configuration for an operator command, or exit 2 with every problem.
fn settings_for(
    path: Option<PathBuf>,
    env: BTreeMap<String, String>,
    compat: Compat,
) -> Result<Settings, ExitCode> {
    config::load(&LoadOptions { path, env, compat }).map_err(|errors| {
        eprintln!("configuration is invalid ({} problems):", errors.0.len());
        for issue in &errors.0 {
            eprintln!("  {issue}");
        }
        ExitCode::from(2)
    })
}

/// Runs an operator command on a runtime of its own.
fn on_runtime(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
