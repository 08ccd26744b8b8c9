//! `dead list|show|replay|purge`: the dead letters of `<queue>.dead`.
//!
//! In the worker's own layout the worker declares `<queue>.dead` and parks there every message
//! that gave up or was poison, with `x-bcw-reason`, `x-bcw-error`, `x-bcw-attempts` and
//! `x-bcw-dead-at` (RabbitMQ adds what its quorum delivery limit drops, with `x-death`). In the
//! administrator's layout the same queue is used when an administrator created it; without
//! it nothing is kept (such a build got a FAILURE status), and `dead` says so. A replay is
//! confirmed by the broker before its dead letter is removed: a crash in between replays it
//! twice at worst, which the idempotent launch absorbs.

mod browse;
mod letter;
mod output;

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

pub use browse::{Browse, BrowseError};
pub use letter::{DeadBy, DeadLetter, Filter, replay_properties, replay_route};

use super::publish::Confirmed;
use crate::broker::Topology;
use crate::config::Settings;

/// Examples shown by `dead --help`.
pub const EXAMPLES: &str = "\
Examples:
  buildcluster-worker dead list --config worker.yaml
  buildcluster-worker dead list --config worker.yaml --reason no_executor --older-than 1h --output json
  buildcluster-worker dead show --config worker.yaml 987654
  buildcluster-worker dead replay --config worker.yaml --reason no_executor --dry-run
  buildcluster-worker dead replay --config worker.yaml --build-id 987654
  buildcluster-worker dead purge --config worker.yaml --reason invalid_json --yes
  buildcluster-worker dead list --compat screwdriver      # the administrator's layout: X.dead";

/// The `dead` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DeadCommand {
    /// List dead letters: reason, error, attempts, build id, age.
    #[command(
        after_help = "Example:\n  buildcluster-worker dead list --config worker.yaml --reason no_executor --output json"
    )]
    List {
        /// Which ones.
        #[command(flatten)]
        filter: FilterArgs,
        /// `text` (a table) or `json` (an array).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        /// How many to read at most.
        #[command(flatten)]
        scan: ScanArgs,
    },
    /// Show every dead letter of one build: headers and body (the build token masked).
    #[command(after_help = "Example:\n  buildcluster-worker dead show --config worker.yaml 987654")]
    Show {
        /// The build.
        build_id: u64,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        /// How many to read at most.
        #[command(flatten)]
        scan: ScanArgs,
    },
    /// Publish dead letters again to the exchange with their routing key, attempts reset;
    /// each is removed once the broker confirmed its copy.
    #[command(
        after_help = "Example:\n  buildcluster-worker dead replay --config worker.yaml --reason no_executor --dry-run"
    )]
    Replay {
        /// Which ones.
        #[command(flatten)]
        filter: FilterArgs,
        /// Every dead letter (needed when no filter is given).
        #[arg(long)]
        all: bool,
        /// Say what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// How many to read at most.
        #[command(flatten)]
        scan: ScanArgs,
    },
    /// Remove dead letters for good (asks first, unless --yes).
    #[command(
        after_help = "Example:\n  buildcluster-worker dead purge --config worker.yaml --reason invalid_json --yes"
    )]
    Purge {
        /// Which ones.
        #[command(flatten)]
        filter: FilterArgs,
        /// Every dead letter (needed when no filter is given).
        #[arg(long)]
        all: bool,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        /// How many to read at most.
        #[command(flatten)]
        scan: ScanArgs,
    },
}

/// The filters every subcommand takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Only this reason (`no_executor`, `missing_field`, `delivery_limit`, ...).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only this build.
    #[arg(long)]
    pub build_id: Option<u64>,
    /// Only those dead for longer than this (`30m`, `2h`, `3d`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
    /// Only those dead for less than this.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub newer_than: Option<Duration>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            reason: self.reason.clone(),
            build_id: self.build_id,
            older_than: self.older_than,
            newer_than: self.newer_than,
        }
    }
}

/// How far a browse reads.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ScanArgs {
    /// Read at most this many dead letters (the oldest first).
    #[arg(long, default_value_t = 10_000)]
    pub limit: usize,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// For programs.
    Json,
}

/// Runs a `dead` subcommand: 0 done, 1 broker trouble or a missing queue, 2 bad arguments.
pub async fn run(command: &DeadCommand, settings: &Settings) -> ExitCode {
    if let DeadCommand::Replay { filter, all, .. } | DeadCommand::Purge { filter, all, .. } =
        command
        && filter.filter().is_empty()
        && !all
    {
        eprintln!(
            "say which dead letters: --reason, --build-id, --older-than, --newer-than, or --all"
        );
        return super::invalid();
    }
    let topology = Topology::from_settings(settings);
    let connection =
        match crate::preflight::broker::connect(&settings.rabbitmq, "buildcluster-worker dead")
            .await
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return super::failed();
            }
        };
    let limit = match command {
        DeadCommand::List { scan, .. }
        | DeadCommand::Show { scan, .. }
        | DeadCommand::Replay { scan, .. }
        | DeadCommand::Purge { scan, .. } => scan.limit,
    };
    let code = match Browse::open(&connection, &topology.dead_queue, limit).await {
        Ok(browse) => {
            note_partial(&browse);
            let code = act(command, &browse, &connection, &topology).await;
            browse.release().await;
            code
        }
        Err(BrowseError::Missing(queue)) => {
            eprintln!("{}", missing_queue(&queue, &topology));
            super::failed()
        }
        Err(e) => {
            eprintln!("cannot read {}: {e}", topology.dead_queue);
            super::failed()
        }
    };
    let _ = connection.close(200, "done".into()).await;
    code
}

/// Returns after which `dead` warns: RabbitMQ 4 gives quorum queues a delivery limit of 20
/// unless one is set, and a queue without a dead-letter target drops a message past it.
const RETURNS_WARNING: u32 = 10;

fn note_partial(browse: &Browse) {
    let read = browse.held.len();
    if u32::try_from(read).unwrap_or(u32::MAX) < browse.in_queue {
        eprintln!(
            "read the oldest {read} of {} dead letters (raise --limit to read more)",
            browse.in_queue
        );
    }
    let returns = browse.held.iter().filter_map(|h| h.letter.returns).max();
    if let Some(n) = returns.filter(|n| *n >= RETURNS_WARNING) {
        eprintln!(
            "warning: a dead letter has been handed out and returned {n} times (each reading returns it); a quorum queue with a delivery limit (RabbitMQ 4: 20 unless set) drops a message past it: replay or purge what you have read"
        );
    }
}

/// What to say when the dead-letter queue does not exist, by layout.
fn missing_queue(queue: &str, topology: &Topology) -> String {
    if topology.declare {
        format!(
            "queue {queue:?} does not exist: the worker declares it at start with this configuration (rabbitmq.queue {:?}); has a worker run with it yet?",
            topology.queue
        )
    } else {
        format!(
            "queue {queue:?} does not exist. With the administrator's layout (declareTopology: false) the worker parks refused messages only in a queue of that name; without it, a build that gave up got a FAILURE status and its message was acknowledged, so nothing was kept. Declare a durable queue {queue:?} to keep them from now on."
        )
    }
}

async fn act(
    command: &DeadCommand,
    browse: &Browse,
    connection: &lapin::Connection,
    topology: &Topology,
) -> ExitCode {
    let now = jiff::Timestamp::now().as_millisecond();
    match command {
        DeadCommand::List { filter, output, .. } => {
            let matched = matching(browse, &filter.filter(), now);
            output::list(browse, &matched, *output, now);
            ExitCode::SUCCESS
        }
        DeadCommand::Show {
            build_id, output, ..
        } => {
            let filter = Filter {
                build_id: Some(*build_id),
                ..Filter::default()
            };
            let matched = matching(browse, &filter, now);
            if matched.is_empty() {
                eprintln!(
                    "no dead letter of build {build_id} in {}",
                    topology.dead_queue
                );
                return super::failed();
            }
            output::show(browse, &matched, *output, now);
            ExitCode::SUCCESS
        }
        DeadCommand::Replay {
            filter, dry_run, ..
        } => {
            let matched = matching(browse, &filter.filter(), now);
            replay(browse, &matched, connection, topology, *dry_run).await
        }
        DeadCommand::Purge { filter, yes, .. } => {
            let matched = matching(browse, &filter.filter(), now);
            purge(browse, &matched, &topology.dead_queue, *yes).await
        }
    }
}

/// Indices of the held dead letters the filter selects.
fn matching(browse: &Browse, filter: &Filter, now_ms: i64) -> Vec<usize> {
    browse
        .held
        .iter()
        .enumerate()
        .filter(|(_, h)| filter.matches(&h.letter, now_ms))
        .map(|(i, _)| i)
        .collect()
}

async fn replay(
    browse: &Browse,
    matched: &[usize],
    connection: &lapin::Connection,
    topology: &Topology,
    dry_run: bool,
) -> ExitCode {
    let publisher = if dry_run {
        None
    } else {
        match Confirmed::open(connection).await {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("nothing replayed: cannot open a channel: {e}");
                return super::failed();
            }
        }
    };
    for (done, &i) in matched.iter().enumerate() {
        let held = &browse.held[i];
        let (exchange, key) = replay_route(topology, &held.delivery.properties);
        let what = output::describe(&held.letter);
        let Some(publisher) = &publisher else {
            println!("would replay {what} to exchange {exchange:?} with key {key:?}");
            continue;
        };
        let props = replay_properties(&held.delivery.properties);
        let sent = publisher
            .publish(&exchange, &key, &held.delivery.data, props)
            .await;
        // Removed only once its copy is confirmed: a crash in between replays it twice.
        let removed = match sent {
            Ok(()) => browse.remove(i).await.map_err(|e| format!("replayed, but not removed from the dead letters ({e}); it may be replayed again")),
            Err(e) => Err(format!("not replayed: {e}")),
        };
        match removed {
            Ok(()) => {
                println!("replayed {what} to exchange {exchange:?} with key {key:?}, confirmed")
            }
            Err(e) => {
                eprintln!(
                    "FAILED {what}: {e}; {} left as they were",
                    matched.len() - done - 1
                );
                return super::failed();
            }
        }
    }
    let verb = if dry_run { "would replay" } else { "replayed" };
    println!("{verb} {} dead letters", matched.len());
    ExitCode::SUCCESS
}

async fn purge(browse: &Browse, matched: &[usize], queue: &str, yes: bool) -> ExitCode {
    if matched.is_empty() {
        println!("no dead letter matches; nothing removed");
        return ExitCode::SUCCESS;
    }
    if !yes {
        match confirm(&format!(
            "Remove {} dead letters from {queue} for good?",
            matched.len()
        )) {
            Ok(true) => {}
            Ok(false) => {
                println!("nothing removed");
                return ExitCode::SUCCESS;
            }
            Err(why) => {
                eprintln!("{why}");
                return super::invalid();
            }
        }
    }
    for &i in matched {
        if let Err(e) = browse.remove(i).await {
            eprintln!(
                "FAILED to remove {}: {e}",
                output::describe(&browse.held[i].letter)
            );
            return super::failed();
        }
    }
    println!("removed {} dead letters from {queue}", matched.len());
    ExitCode::SUCCESS
}

/// Asks on the terminal; refuses when there is none to ask on.
fn confirm(question: &str) -> Result<bool, String> {
    if !std::io::stdin().is_terminal() {
        return Err(
            "refusing to purge without --yes: standard input is not a terminal to ask on".into(),
        );
    }
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}
