//! The chaos suite (issue 8): two worker replicas as real processes against the real RabbitMQ
//! and two kube-sim clusters, while replicas are SIGKILLed and restarted, broker connections are
//! cut, one cluster fails, hangs and throttles for windows of time, some messages are published
//! twice, some builds are stopped and poison messages are mixed in. At the end every invariant is
//! checked and printed as a figure.
//!
//! A second scenario aims at the riskiest case for the launch protocol: cluster `a` holds pod
//! creates three times longer than the client's call timeout and then carries them out, while
//! 30 % of the builds are published twice and replicas are killed mid-create.
//!
//! Short form (part of `./scripts/test`): 300 builds each. Long form: `./scripts/chaos` runs
//! 10,000 (`CHAOS_BUILDS`, `CHAOS_SEED` select the size and the random sequence,
//! `CHAOS_SCENARIO=mixed|held` the scenario).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bcw_tests::harness::{
    ExecutorSpec, Knobs, Names, Rabbit, StartMsg, TcpProxy, WorkerProcess, eventually,
    settings_json, stop,
};
use bcw_tests::kube_sim::{
    ClusterConfig, ClusterHandle, Fault, KubeSim, SimConfig, Timeline, Verb,
};
use nix::sys::signal::Signal;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use tokio::time::Instant;

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Poison bodies, each with the reason it must be dead-lettered with.
fn poison(i: u64) -> (Vec<u8>, &'static str) {
    match i % 4 {
        0 => (b"{\"job\": \"start\",".to_vec(), "invalid_json"),
        1 => (
            serde_json::to_vec(&json!({"job": "reboot", "buildConfig": {"buildId": 1}})).unwrap(),
            "unknown_job",
        ),
        2 => (
            serde_json::to_vec(&json!({"job": "start", "buildConfig": {"buildId": -5}})).unwrap(),
            "invalid_build_id",
        ),
        _ => (
            serde_json::to_vec(&json!({"job": "start"})).unwrap(),
            "missing_config",
        ),
    }
}

struct Figures {
    kills: u32,
    cuts: u32,
    windows: BTreeMap<&'static str, u32>,
}

/// The call timeout of the chaos workers.
const CALL_TIMEOUT: Duration = Duration::from_millis(1000);

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Cluster `a` fails, hangs and throttles; 5 % of the builds are published twice.
    Mixed,
    /// Cluster `a` holds creates three call timeouts and then carries them out; 30 % of the
    /// builds are published twice.
    HeldCreates,
}

impl Scenario {
    fn from_env() -> Option<Scenario> {
        match std::env::var("CHAOS_SCENARIO").ok()?.as_str() {
            "held" => Some(Scenario::HeldCreates),
            _ => Some(Scenario::Mixed),
        }
    }

    /// Percent of the builds published twice.
    fn duplicates(self) -> u32 {
        match self {
            Scenario::Mixed => 5,
            Scenario::HeldCreates => 30,
        }
    }

    /// A fault for cluster `a`, with the name it is counted under.
    fn fault(self, rng: &mut impl rand::Rng) -> (&'static str, Fault) {
        match (self, rng.random_range(0..3)) {
            (Scenario::HeldCreates, _) => (
                "held",
                Fault::latency(CALL_TIMEOUT * 3)
                    .on_verbs([Verb::Create])
                    .on_resources(["pods"]),
            ),
            (Scenario::Mixed, 0) => ("fail", Fault::status(500)),
            (Scenario::Mixed, 1) => ("hang", Fault::hang()),
            (Scenario::Mixed, _) => ("throttle", Fault::status(429).retry_after(1)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_nothing_lost_nothing_launched_twice() {
    if Scenario::from_env().is_some_and(|s| s != Scenario::Mixed) {
        return;
    }
    chaos(Scenario::Mixed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_held_creates_carried_out_late_never_double_a_build() {
    if Scenario::from_env().is_some_and(|s| s != Scenario::HeldCreates) {
        return;
    }
    chaos(Scenario::HeldCreates).await;
}

async fn chaos(scenario: Scenario) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builds = env_u64("CHAOS_BUILDS", 300);
    let seed = env_u64("CHAOS_SEED", 7);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let sim = KubeSim::start(SimConfig {
        clusters: vec![
            ClusterConfig::new("a").with_timeline(Timeline {
                run_for: Some(Duration::from_millis(300)),
                ..Timeline::fast()
            }),
            ClusterConfig::new("b").with_timeline(Timeline {
                run_for: Some(Duration::from_millis(300)),
                ..Timeline::fast()
            }),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let (a, b) = (sim.cluster("a"), sim.cluster("b"));
    let rabbit = Rabbit::connect().await;
    let names = Names::unique("chaos");
    rabbit.declare_exchanges(&names).await;
    let tap = rabbit.tap(&names).await;
    let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;

    let executors = vec![
        ExecutorSpec::new("a", &a.url()).weight(50),
        ExecutorSpec::new("b", &b.url()).weight(50),
    ];
    let knobs = Knobs {
        lifecycle: true,
        breaker_timeout_ms: CALL_TIMEOUT.as_millis() as u64,
        // H: a create lands within this, or never; above what cluster `a` holds one.
        create_lands_within_s: 5,
        max_failures: 3,
        reset_timeout_ms: 500,
        retry_delay_ms: 50,
        max_attempts: 3,
        retry_delays: vec![0.5, 1.0],
        // Attempts are only used up by real failures; with failure windows of a few seconds a
        // build may meet several, so give it room (the default delays are minutes, not seconds).
        reprocess_limit: 20,
        extra: json!({
            "executor": {
                "a": {"options": {"kubernetes": {"podTTL": 120}}},
                "b": {"options": {"kubernetes": {"podTTL": 120}}},
            },
        }),
        ..Knobs::default()
    };
    let mut doc = settings_json(&names, &executors, &knobs);
    doc["rabbitmq"]["url"] = json!(proxy.amqp_url());
    let mut replicas = vec![
        WorkerProcess::spawn(&doc, &[]).await,
        WorkerProcess::spawn(&doc, &[]).await,
    ];
    // Panics seen in the replicas' logs (a killed replica's log is read before it restarts).
    let mut panics = 0usize;
    // Every replica's log, killed ones included: a double launch is explained from them.
    let mut logs = String::new();

    // Plan the traffic: valid builds, some twice, some stopped, poison in between.
    let mut stopped = BTreeSet::new();
    let mut duplicated = 0u64;
    let mut duplicated_ids = BTreeSet::new();
    let mut poisons: Vec<&'static str> = Vec::new();
    let mut figures = Figures {
        kills: 0,
        cuts: 0,
        windows: BTreeMap::new(),
    };
    let publish_every = Duration::from_millis(env_u64("CHAOS_PUBLISH_MS", 20));
    let mut next_chaos = Instant::now() + Duration::from_millis(800);
    let mut fault_until: Option<Instant> = None;
    for id in 1..=builds {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
        if rng.random_range(0..100) < scenario.duplicates() {
            rabbit
                .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
                .await;
            duplicated += 1;
            duplicated_ids.insert(id);
        }
        if rng.random_range(0..100) < 5 {
            rabbit
                .publish_json(&names.exchange, &names.queue, &stop(id))
                .await;
            stopped.insert(id);
        }
        if rng.random_range(0..100) < 2 {
            let (body, reason) = poison(poisons.len() as u64);
            rabbit
                .publish_bytes(
                    &names.exchange,
                    &names.queue,
                    &body,
                    // Producers may set a message id; the dead-letter copy keeps it.
                    lapin::BasicProperties::default().with_message_id(
                        lapin::types::ShortString::from(format!("poison-{}", poisons.len())),
                    ),
                )
                .await;
            poisons.push(reason);
        }
        // Chaos, roughly every second.
        if Instant::now() >= next_chaos {
            next_chaos = Instant::now() + Duration::from_millis(rng.random_range(600..1400));
            if fault_until.is_some_and(|t| Instant::now() >= t) {
                a.clear_faults();
                fault_until = None;
            }
            match rng.random_range(0..5) {
                0 | 1 => {
                    let victim = rng.random_range(0..replicas.len());
                    replicas[victim].signal(Signal::SIGKILL);
                    let _ = replicas[victim].wait(Duration::from_secs(10)).await;
                    let log = replicas[victim].log_text();
                    panics += panics_in(&log);
                    logs.push_str(&log);
                    replicas[victim] = WorkerProcess::spawn(&doc, &[]).await;
                    figures.kills += 1;
                }
                2 => {
                    proxy.cut();
                    figures.cuts += 1;
                }
                _ if fault_until.is_none() => {
                    let (kind, fault) = scenario.fault(&mut rng);
                    a.inject(fault);
                    fault_until =
                        Some(Instant::now() + Duration::from_millis(rng.random_range(1000..3000)));
                    *figures.windows.entry(kind).or_default() += 1;
                }
                _ => {}
            }
        }
        tokio::time::sleep(publish_every).await;
    }
    // The short form must still reach the minimum amount of chaos.
    while figures.kills < 5 {
        let victim = figures.kills as usize % replicas.len();
        replicas[victim].signal(Signal::SIGKILL);
        let _ = replicas[victim].wait(Duration::from_secs(10)).await;
        let log = replicas[victim].log_text();
        panics += panics_in(&log);
        logs.push_str(&log);
        replicas[victim] = WorkerProcess::spawn(&doc, &[]).await;
        figures.kills += 1;
    }
    a.clear_faults();

    // Wait until every build reached its end and the queues are quiet.
    let valid: BTreeSet<u64> = (1..=builds).collect();
    let settle = Duration::from_secs(60 + builds / 20);
    let deadline = Instant::now() + settle;
    loop {
        let events = tap.all();
        let launched: BTreeSet<u64> = events
            .iter()
            .filter(|e| e.ty == "build.launched")
            .map(|e| e.build_id())
            .collect();
        let pending: Vec<u64> = valid
            .iter()
            .filter(|id| !launched.contains(id) && !stopped.contains(id))
            .copied()
            .collect();
        let depths = [
            rabbit.depth(&names.queue).await,
            rabbit.depth(&format!("{}.retry.1", names.queue)).await,
            rabbit.depth(&format!("{}.retry.2", names.queue)).await,
        ];
        if pending.is_empty() && depths.iter().all(|d| *d == Some(0)) {
            break;
        }
        if Instant::now() >= deadline {
            // Say what is stuck before failing: the builds, the queues, the workers' words.
            println!(
                "not settled after {settle:?}: {} builds without launch or stop (first: {:?}), queue depths (main, retry.1, retry.2) {depths:?}",
                pending.len(),
                &pending[..pending.len().min(10)]
            );
            for r in &replicas {
                logs.push_str(&r.log_text());
            }
            for id in pending.iter().take(3) {
                let tags = [format!("\"buildId\":{id},"), format!("\"buildId\":{id}}}")];
                for line in logs
                    .lines()
                    .filter(|l| tags.iter().any(|t| l.contains(t)))
                    .take(40)
                {
                    println!("    build {id} log {line}");
                }
            }
            dump_logs(seed, &logs);
            panic!("timed out after {settle:?} waiting for every build to reach its end");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Stopped builds' pods go away; the reporters deliver what is left to report.
    eventually(
        Duration::from_secs(60),
        "stopped builds' pods to be gone",
        || async {
            let left: Vec<u64> = live_builds(&a)
                .into_iter()
                .chain(live_builds(&b))
                .filter(|id| stopped.contains(id))
                .collect();
            left.is_empty().then_some(())
        },
    )
    .await;

    // Invariants.
    let mut pods_per_build: BTreeMap<u64, usize> = BTreeMap::new();
    for rec in a.create_log().into_iter().chain(b.create_log()) {
        *pods_per_build
            .entry(rec.labels["sdbuild"].parse().unwrap())
            .or_default() += 1;
    }
    let twice: Vec<u64> = pods_per_build
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    let never: Vec<u64> = valid
        .iter()
        .filter(|id| !stopped.contains(id) && !pods_per_build.contains_key(id))
        .copied()
        .collect();
    let events = tap.all();
    let launched: BTreeSet<u64> = events
        .iter()
        .filter(|e| e.ty == "build.launched")
        .map(|e| e.build_id())
        .collect();
    let lost: Vec<u64> = valid
        .iter()
        .filter(|id| !launched.contains(id) && !stopped.contains(id))
        .copied()
        .collect();
    let leftovers: Vec<u64> = live_builds(&a)
        .into_iter()
        .chain(live_builds(&b))
        .filter(|id| stopped.contains(id))
        .collect();
    let mut ids: BTreeMap<(u64, String, u64), BTreeSet<String>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.ty.starts_with("build.")) {
        let attempt = e.data["attempt"].as_u64().unwrap_or_default();
        ids.entry((e.build_id(), e.ty.clone(), attempt))
            .or_default()
            .insert(e.id.clone());
    }
    let id_conflicts = ids.values().filter(|s| s.len() > 1).count();
    let dead = rabbit.drain(&names.dead()).await;
    let dead_reasons: Vec<String> = dead
        .iter()
        .map(|(p, _)| {
            match p
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-bcw-reason").cloned())
            {
                Some(lapin::types::AMQPValue::LongString(s)) => {
                    String::from_utf8_lossy(s.as_bytes()).into_owned()
                }
                _ => String::new(),
            }
        })
        .collect();
    // Every poison message is in the dead-letter queue; a poison message whose ack was lost
    // (a kill or a cut right after its dead-letter copy was confirmed) is there twice, with the
    // same message id: at-least-once, as everything else.
    let mut published: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &poisons {
        *published.entry(p).or_default() += 1;
    }
    let mut dead_by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &dead_reasons {
        *dead_by_reason.entry(r.as_str()).or_default() += 1;
    }
    let missing_poison: Vec<&str> = published
        .iter()
        .filter(|(r, n)| dead_by_reason.get(*r).copied().unwrap_or(0) < **n)
        .map(|(r, _)| *r)
        .collect();
    let unexpected_dead: Vec<&str> = dead_by_reason
        .keys()
        .filter(|r| !published.contains_key(*r))
        .copied()
        .collect();
    let dead_ids: BTreeSet<String> = dead
        .iter()
        .filter_map(|(p, _)| p.message_id().as_ref().map(|m| m.as_str().to_string()))
        .collect();
    let orphans: usize = [&a, &b]
        .iter()
        .map(|c| c.pods().iter().filter(|p| sdbuild(p).is_none()).count())
        .sum();

    println!(
        "chaos figures ({scenario:?}, seed {seed}, {:.0} s)",
        started.elapsed().as_secs_f64()
    );
    println!("  valid builds                 {builds}");
    println!("  duplicated start messages    {duplicated}");
    println!("  stops                        {}", stopped.len());
    println!("  poison messages              {}", poisons.len());
    println!("  replica SIGKILLs + restarts  {}", figures.kills);
    println!("  broker connection cuts       {}", figures.cuts);
    println!("  cluster fault windows        {:?}", figures.windows);
    println!(
        "  pods created                 {}",
        pods_per_build.values().sum::<usize>()
    );
    println!("  builds with two pods         {}", twice.len());
    println!("  builds lost                  {}", lost.len());
    println!("  valid builds never launched  {}", never.len());
    println!(
        "  pods left that should not be {}",
        leftovers.len() + orphans
    );
    for r in &replicas {
        let log = r.log_text();
        panics += panics_in(&log);
        logs.push_str(&log);
    }
    println!("  (build, type, attempt) with two ids {id_conflicts}");
    println!("  panics in the workers' logs  {panics}");
    println!(
        "  dead letters                 {} (poison published: {}, distinct message ids: {})",
        dead.len(),
        poisons.len(),
        dead_ids.len()
    );

    for id in &twice {
        println!(
            "  build {id}: start published twice {}, stopped {}",
            duplicated_ids.contains(id),
            stopped.contains(id)
        );
        let tags = [format!("\"buildId\":{id},"), format!("\"buildId\":{id}}}")];
        for line in logs.lines().filter(|l| tags.iter().any(|t| l.contains(t))) {
            println!("    log {line}");
        }
        for (name, c) in [("a", &a), ("b", &b)] {
            for r in c
                .create_log()
                .iter()
                .filter(|r| r.labels["sdbuild"] == id.to_string())
            {
                println!("    created on {name} at {} uid {}", r.time, r.uid);
            }
        }
        for e in events.iter().filter(|e| e.build_id() == *id) {
            println!(
                "    {} attempt {} {} {}",
                e.ty, e.data["attempt"], e.data["executor"], e.data["reason"]
            );
        }
    }
    if !missing_poison.is_empty() || !unexpected_dead.is_empty() {
        dump_logs(seed, &logs);
        for (p, body) in &dead {
            println!(
                "  dead letter: {:?} {}",
                p.headers(),
                String::from_utf8_lossy(&body[..body.len().min(120)])
            );
        }
    }
    assert_eq!(panics, 0, "a worker panicked (see its log)");
    assert!(twice.is_empty(), "builds launched twice: {twice:?}");
    assert!(lost.is_empty(), "builds lost: {lost:?}");
    assert!(never.is_empty(), "builds never launched: {never:?}");
    assert!(
        leftovers.is_empty() && orphans == 0,
        "pods left of stopped builds: {leftovers:?}, orphans: {orphans}"
    );
    assert_eq!(
        id_conflicts, 0,
        "an event was published with two different ids"
    );
    assert!(
        missing_poison.is_empty(),
        "poison messages missing from the dead-letter queue: {missing_poison:?}"
    );
    assert!(
        unexpected_dead.is_empty(),
        "valid messages dead-lettered: {unexpected_dead:?}"
    );
    assert_eq!(
        dead_ids.len(),
        poisons.len(),
        "each poison message has one dead-letter id, duplicates included"
    );

    for mut r in replicas {
        r.signal(Signal::SIGTERM);
        let _ = r.wait(Duration::from_secs(40)).await;
    }
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

fn sdbuild(p: &k8s_openapi::api::core::v1::Pod) -> Option<u64> {
    p.metadata.labels.as_ref()?.get("sdbuild")?.parse().ok()
}

/// Builds with a pod that is not being deleted.
fn live_builds(c: &ClusterHandle) -> Vec<u64> {
    c.pods()
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(sdbuild)
        .collect()
}

/// Panics a worker's log shows (the Rust runtime writes them to stderr, which is the log).
fn panics_in(log: &str) -> usize {
    log.matches("panicked at").count()
}

/// Writes every worker's log where a failed run can be read after it.
fn dump_logs(seed: u64, logs: &str) {
    let dump = std::env::temp_dir().join(format!("bcw-chaos-{seed}.log"));
    let _ = std::fs::write(&dump, logs);
    println!("  every worker's log: {}", dump.display());
}
