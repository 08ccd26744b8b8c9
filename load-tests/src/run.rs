//! Runs one scenario: kube-sim clusters, worker (or baseline) processes, a publisher and an
//! event collector, and the samples of the consumers' CPU and memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bcw_tests::harness::rabbit::AMQP_URL;
use bcw_tests::harness::{
    ExecutorSpec, Knobs, Names, Rabbit, StartMsg, free_port, merge_json, settings_json,
};
use bcw_tests::kube_sim::{ClusterConfig, Fault, KubeSim, SimConfig, Timeline};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::procstat;
use crate::scenario::{Load, Scenario, Target, Trouble};

/// Clusters every scenario runs against (the first one takes the faults).
pub const CLUSTERS: [&str; 2] = ["east", "west"];

/// The command name of RabbitMQ's Erlang VM, whose CPU a run samples when it runs here.
const BROKER_PROCESS: &str = "beam.smp";

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Percentiles {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// From samples in seconds (nearest-rank).
    pub fn of(mut secs: Vec<f64>) -> Percentiles {
        if secs.is_empty() {
            return Percentiles::default();
        }
        secs.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = ((q * secs.len() as f64).ceil() as usize).clamp(1, secs.len());
            secs[rank - 1] * 1000.0
        };
        Percentiles {
            n: secs.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: secs[secs.len() - 1] * 1000.0,
        }
    }
}

/// One second of a run (by publish time for steady loads, by launch time for bursts).
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    /// Seconds since the first publish.
    pub t: u32,
    /// Builds launched in this second.
    pub launched: usize,
    /// Publish -> launched of the builds of this second.
    pub latency: Percentiles,
}

/// What the consumer processes cost.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Cost {
    /// CPU seconds (user + system) of all consumer processes during the run.
    pub cpu_s: f64,
    /// CPU milliseconds per launched build.
    pub cpu_ms_per_build: f64,
    /// RabbitMQ's CPU milliseconds per launched build over the same time (`beam.smp` on this
    /// machine); `None` when no such process runs here.
    pub broker_cpu_ms_per_build: Option<f64>,
    /// This process's CPU milliseconds per launched build over the same time: kube-sim (every
    /// API request and watch event), the event collector and, for steady loads, the publisher.
    pub harness_cpu_ms_per_build: f64,
    /// Largest peak RSS (`VmHWM`) of a consumer process, MiB.
    pub peak_rss_mib: f64,
    /// RSS after start-up with nothing to do, MiB (when measured).
    pub idle_rss_mib: Option<f64>,
    /// Of the idle RSS: anonymous memory and file pages (code), MiB.
    pub idle_rss_anon_file_mib: Option<(f64, f64)>,
    /// RSS once every build runs (when measured), MiB.
    pub in_flight_rss_mib: Option<f64>,
}

/// The result of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// What ran.
    pub scenario: Scenario,
    /// Builds published.
    pub published: usize,
    /// Builds that reached `build.launched`.
    pub launched: usize,
    /// Builds that reached `build.running`.
    pub running: usize,
    /// Builds launched per second between the first and the last launch.
    pub throughput_per_s: f64,
    /// Publish -> `build.launched`.
    pub launched_ms: Percentiles,
    /// Publish -> `build.running`.
    pub running_ms: Percentiles,
    /// Publish -> `build.launched` of the builds published while the fault lasted or after.
    pub during_trouble_ms: Option<Percentiles>,
    /// Consumer cost.
    pub cost: Cost,
    /// Per-second series.
    pub series: Vec<Second>,
    /// Wall time of the scenario (s).
    pub wall_s: f64,
}

/// Shared state of a benchmark run.
pub struct Bench {
    sim: KubeSim,
    rabbit: Rabbit,
    publish: Channel,
    bin_dir: PathBuf,
    templates: tempfile::TempDir,
    next_build: u64,
    epoch: Instant,
    /// Merged over every worker configuration (`--worker-config`).
    pub worker_extra: Value,
}

impl Bench {
    /// Starts kube-sim and connects to the broker.
    pub async fn start() -> anyhow::Result<Bench> {
        let timeline = Timeline {
            schedule_after: Duration::from_millis(10),
            start_after: Duration::from_millis(30),
            run_for: Some(Duration::from_secs(1)),
            terminate_after: Duration::from_millis(30),
            deadline_scale: 1.0,
        };
        let sim = KubeSim::start(SimConfig {
            clusters: CLUSTERS
                .iter()
                .map(|c| ClusterConfig::new(*c).with_timeline(timeline))
                .collect(),
            ..SimConfig::default()
        })
        .await?;
        let rabbit = Rabbit::connect().await;
        let publish = rabbit.channel().await;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let bin_dir = std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("binary directory")?;
        Ok(Bench {
            sim,
            rabbit,
            publish,
            bin_dir,
            templates: tempfile::tempdir()?,
            next_build: 1_000_000,
            epoch: Instant::now(),
            worker_extra: Value::Null,
        })
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// Stops everything.
    pub async fn shutdown(self) {
        self.sim.shutdown().await;
    }

    fn template(&self, token_secret: bool, what: &str) -> PathBuf {
        let mode = if token_secret { "secret" } else { "args" };
        self.templates.path().join(format!("{what}-{mode}.json"))
    }

    /// Runs a few builds through the worker in both token modes and keeps the pod and Secret
    /// it created, for the baseline to send the very same objects.
    pub async fn warm_up(&mut self) -> anyhow::Result<()> {
        for token_secret in [true, false] {
            let sc = Scenario {
                name: "warm-up",
                title: "warm-up",
                target: Target::Worker {
                    replicas: 1,
                    token_secret,
                    lifecycle: true,
                },
                load: Load::Burst { builds: 300 },
                prefetch: 100,
                api_latency_ms: 0,
                qps: 100_000.0,
                pod_runs_ms: Some(1_000),
                trouble: None,
                idle_memory: false,
                wait_finished: false,
                worker_extra: None,
            };
            self.run(&sc, false).await?;
            let cluster = self.sim.cluster(CLUSTERS[0]);
            let mut pod = serde_json::to_value(
                cluster
                    .pods()
                    .into_iter()
                    .next()
                    .context("the warm-up created no pod")?,
            )?;
            strip_server_fields(&mut pod);
            std::fs::write(self.template(token_secret, "pod"), pod.to_string())?;
            if token_secret {
                let mut secret = serde_json::to_value(
                    cluster
                        .secrets()
                        .into_iter()
                        .next()
                        .context("the warm-up created no Secret")?,
                )?;
                strip_server_fields(&mut secret);
                std::fs::write(self.template(true, "secret"), secret.to_string())?;
            }
            self.reset().await;
        }
        Ok(())
    }

    async fn reset(&self) {
        for c in CLUSTERS {
            self.sim.cluster(c).reset().await;
        }
    }

    fn worker_config(&self, names: &Names, sc: &Scenario) -> Value {
        let Target::Worker {
            token_secret,
            lifecycle,
            ..
        } = sc.target
        else {
            unreachable!("worker config for a baseline")
        };
        let executors: Vec<ExecutorSpec> = CLUSTERS
            .iter()
            .map(|c| ExecutorSpec::new(c, &self.sim.cluster(c).url()).weight(50))
            .collect();
        // The product's defaults for breaker and retries (docs/interface.md §2).
        let knobs = Knobs {
            prefetch: sc.prefetch,
            breaker_timeout_ms: 10_000,
            max_failures: 5,
            reset_timeout_ms: 30_000,
            retry_delay_ms: 3_000,
            max_attempts: 5,
            retry_delays: vec![5.0, 30.0, 120.0],
            reprocess_limit: 5,
            max_wait_s: 600,
            lifecycle,
            ..Knobs::default()
        };
        let mut doc = settings_json(names, &executors, &knobs);
        for c in CLUSTERS {
            let k = &mut doc["executor"][c]["options"]["kubernetes"];
            k["qps"] = json!(sc.qps);
            k["burst"] = json!(sc.qps as u64);
            k["tokenDelivery"] = json!(if token_secret { "secret" } else { "args" });
            k["imagePullGracePeriod"] = json!(30);
        }
        // Production lifecycle timings, not the tests' fast ones.
        doc["lifecycle"] = json!({"enabled": lifecycle});
        if let Some(extra) = sc.worker_extra {
            merge_json(
                &mut doc,
                &serde_json::from_str(extra).expect("scenario JSON is valid"),
            );
        }
        if !self.worker_extra.is_null() {
            merge_json(&mut doc, &self.worker_extra);
        }
        doc
    }

    /// Runs one scenario and returns what it measured.
    pub async fn run(&mut self, sc: &Scenario, verbose: bool) -> anyhow::Result<Outcome> {
        let wall = Instant::now();
        let names = Names::unique(&format!("load-{}", sc.name));
        self.rabbit.declare_exchanges(&names).await;
        // Every scenario starts on empty clusters (the previous one's pods are left until now
        // so the warm-up can copy them).
        self.reset().await;
        for c in CLUSTERS {
            let cluster = self.sim.cluster(c);
            cluster.set_latency(Duration::from_millis(sc.api_latency_ms));
            let mut t = cluster.timeline();
            t.run_for = sc.pod_runs_ms.map(Duration::from_millis);
            cluster.set_timeline(t);
        }
        let collector = Collector::start(
            self.rabbit.channel().await,
            &names,
            self.epoch,
            sc.wait_finished,
        )
        .await?;
        let first = self.next_build;
        let count = sc.load.builds();
        self.next_build += count as u64 + 1_000;
        let ids: Vec<u64> = (first..first + count as u64).collect();

        let mut consumers = Consumers::default();
        let mut idle_rss = None;
        let mut idle_split = None;
        match sc.target {
            Target::Worker { replicas, .. } => {
                let config = self.worker_config(&names, sc);
                if matches!(sc.load, Load::Burst { .. }) {
                    // The worker declares its topology; stop it, queue the burst, start again.
                    let mut w = Consumer::worker(&self.bin_dir, &config).await?;
                    if sc.idle_memory {
                        // Connected, consuming, reporter elected, nothing to do.
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        if let Some(r) = procstat::read(w.pid) {
                            idle_rss = Some(mib(r.rss));
                            idle_split = Some((mib(r.rss_anon), mib(r.rss_file)));
                        }
                    }
                    w.stop().await;
                    self.publish_burst(&names, &ids, &collector).await?;
                }
                for _ in 0..replicas {
                    consumers
                        .0
                        .push(Consumer::worker(&self.bin_dir, &config).await?);
                }
            }
            Target::Baseline {
                token_secret,
                reporting,
            } => {
                self.declare_plain_queue(&names).await?;
                self.publish_burst(&names, &ids, &collector).await?;
                let args = BaselineLaunch {
                    queue: names.queue.clone(),
                    events: names.events.clone(),
                    prefetch: sc.prefetch,
                    clusters: CLUSTERS.iter().map(|c| self.sim.cluster(c).url()).collect(),
                    pod: self.template(token_secret, "pod"),
                    secret: token_secret.then(|| self.template(true, "secret")),
                    report: reporting,
                };
                consumers
                    .0
                    .push(Consumer::baseline(&self.bin_dir, &args).await?);
            }
        }
        let cpu_before = consumers.cpu();
        let broker_before = procstat::cpu_of_named(BROKER_PROCESS);
        let harness_before = procstat::own_cpu();

        let trouble = sc.trouble.map(|t| self.spawn_trouble(t));
        if let Load::Rate { per_sec, secs } = sc.load {
            self.publish_rate(&names, &ids, per_sec, secs, &collector)
                .await?;
        }
        let expect_running = matches!(
            sc.target,
            Target::Worker {
                lifecycle: true,
                ..
            } | Target::Baseline {
                reporting: true,
                ..
            }
        ) && sc.pod_runs_ms.is_none();
        let limit = Duration::from_secs(120 + count as u64 / 50);
        let deadline = Instant::now() + limit;
        loop {
            let (launched, running, finished) = collector.counts();
            if verbose {
                eprint!(
                    "\r  {}: launched {launched}/{count} running {running} finished {finished}   ",
                    sc.name
                );
            }
            let done = launched >= count
                && (!expect_running || running >= count)
                && (!sc.wait_finished || finished >= count);
            if done {
                break;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "\n  {}: gave up after {limit:?} with {launched}/{count} launched",
                    sc.name
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if verbose {
            eprintln!();
        }
        let in_flight_rss = if expect_running || sc.wait_finished {
            tokio::time::sleep(Duration::from_secs(5)).await;
            consumers.rss_mib()
        } else {
            None
        };
        if let Some(t) = trouble {
            t.await?;
        }
        let cpu_s = consumers.cpu() - cpu_before;
        // RabbitMQ's CPU when it ran here throughout.
        let broker_s = procstat::cpu_of_named(BROKER_PROCESS)
            .zip(broker_before)
            .map(|(after, before)| after.saturating_sub(before).as_secs_f64());
        let harness_s = procstat::own_cpu()
            .saturating_sub(harness_before)
            .as_secs_f64();
        let peak_rss_mib = consumers.peak_rss_mib();
        consumers.stop().await;
        let per_build = |s: f64, c: usize| if c == 0 { 0.0 } else { s * 1000.0 / c as f64 };
        let outcome = collector.outcome(sc, &ids, self.trouble_window(sc), wall, |c| Cost {
            cpu_s,
            cpu_ms_per_build: per_build(cpu_s, c),
            broker_cpu_ms_per_build: broker_s.map(|s| per_build(s, c)),
            harness_cpu_ms_per_build: per_build(harness_s, c),
            peak_rss_mib,
            idle_rss_mib: idle_rss,
            idle_rss_anon_file_mib: idle_split,
            in_flight_rss_mib: in_flight_rss,
        });
        collector.stop().await;
        self.rabbit.cleanup(&names).await;
        Ok(outcome)
    }

    fn trouble_window(&self, sc: &Scenario) -> Option<(f64, f64)> {
        sc.trouble.map(|t| match t {
            Trouble::Outage { at_s, for_s } | Trouble::Throttle { at_s, for_s } => (at_s, for_s),
        })
    }

    fn spawn_trouble(&self, t: Trouble) -> tokio::task::JoinHandle<()> {
        let east = self.sim.cluster(CLUSTERS[0]);
        tokio::spawn(async move {
            match t {
                Trouble::Outage { at_s, for_s } => {
                    tokio::time::sleep(Duration::from_secs_f64(at_s)).await;
                    east.stop_listener().await;
                    tokio::time::sleep(Duration::from_secs_f64(for_s)).await;
                    east.start_listener().await;
                }
                Trouble::Throttle { at_s, for_s } => {
                    tokio::time::sleep(Duration::from_secs_f64(at_s)).await;
                    east.inject(
                        Fault::status(429)
                            .retry_after(1)
                            .rate(0.5)
                            .lasting(Duration::from_secs_f64(for_s)),
                    );
                    tokio::time::sleep(Duration::from_secs_f64(for_s)).await;
                }
            }
        })
    }

    /// The baseline's queue: durable quorum queue, as the worker's.
    async fn declare_plain_queue(&self, names: &Names) -> anyhow::Result<()> {
        let ch = self.rabbit.channel().await;
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare(
            ShortString::from(names.queue.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
        ch.queue_bind(
            ShortString::from(names.queue.as_str()),
            ShortString::from(names.exchange.as_str()),
            ShortString::from(names.queue.as_str()),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let _ = ch.close(200, "ok".into()).await;
        Ok(())
    }

    /// Publishes every build at once; confirms are awaited in windows so the broker is kept
    /// busy without an unbounded backlog.
    async fn publish_burst(
        &self,
        names: &Names,
        ids: &[u64],
        collector: &Collector,
    ) -> anyhow::Result<()> {
        for chunk in ids.chunks(500) {
            let mut confirms = Vec::with_capacity(chunk.len());
            for &id in chunk {
                collector.published(id, self.now());
                confirms.push(self.publish_one(names, id).await?);
            }
            for c in confirms {
                if !c.await?.is_ack() {
                    bail!("the broker refused a publish");
                }
            }
        }
        Ok(())
    }

    /// Publishes at a fixed rate; a late tick is caught up at once so the rate holds.
    async fn publish_rate(
        &self,
        names: &Names,
        ids: &[u64],
        per_sec: f64,
        _secs: f64,
        collector: &Collector,
    ) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<lapin::PublisherConfirm>();
        let waiter = tokio::spawn(async move {
            let mut refused = 0usize;
            while let Some(c) = rx.recv().await {
                if !matches!(c.await, Ok(conf) if conf.is_ack()) {
                    refused += 1;
                }
            }
            refused
        });
        for &id in ids {
            tick.tick().await;
            collector.published(id, self.now());
            tx.send(self.publish_one(names, id).await?)
                .map_err(|_| anyhow::anyhow!("confirm waiter ended"))?;
        }
        drop(tx);
        let refused = waiter.await?;
        if refused > 0 {
            bail!("the broker refused {refused} publishes");
        }
        Ok(())
    }

    async fn publish_one(&self, names: &Names, id: u64) -> anyhow::Result<lapin::PublisherConfirm> {
        let body = message(id);
        Ok(self
            .publish
            .basic_publish(
                ShortString::from(names.exchange.as_str()),
                ShortString::from(names.queue.as_str()),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type(ShortString::from("application/json")),
            )
            .await?)
    }
}

/// A realistic Screwdriver `start` message of about 2 KB: a JWT-sized build token, the usual
/// annotations and the fields queue-service sends.
pub fn message(id: u64) -> Vec<u8> {
    let token = jwt_sized_token(id);
    StartMsg::new(id)
        .field("token", json!(token))
        .field("sha", json!(format!("{:040x}", u128::from(id) * 7_919)))
        .field(
            "configPipelineSha",
            json!(format!("{:040x}", u128::from(id) * 104_729)),
        )
        .field("causeMessage", json!("Started by GitHub push by octocat"))
        .field("prParentJobId", json!(null))
        .annotation("screwdriver.cd/cpu", json!("HIGH"))
        .annotation("screwdriver.cd/ram", json!("HIGH"))
        .annotation("screwdriver.cd/timeout", json!(60))
        .annotation("screwdriver.cd/buildPeriodically", json!("H 4 * * *"))
        .annotation("screwdriver.cd/terminationGracePeriodSeconds", json!(90))
        .bytes()
}

/// A token shaped like Screwdriver's build JWT (RS256, ~1 KB).
fn jwt_sized_token(id: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut state = id.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut part = |len: usize| -> String {
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ALPHABET[(state >> 58) as usize] as char
            })
            .collect()
    };
    format!(
        "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{}.{}",
        part(760),
        part(342)
    )
}

fn strip_server_fields(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
            "ownerReferences",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.remove(k);
        }
    }
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("nodeName");
    }
}

/// Collects `build.launched` and `build.running` as they arrive.
struct Collector {
    state: Arc<Mutex<Times>>,
    task: tokio::task::JoinHandle<()>,
    channel: Channel,
}

#[derive(Default)]
struct Times {
    published: HashMap<u64, f64>,
    launched: HashMap<u64, f64>,
    running: HashMap<u64, f64>,
    finished: HashMap<u64, f64>,
}

impl Collector {
    async fn start(
        ch: Channel,
        names: &Names,
        epoch: Instant,
        finished: bool,
    ) -> anyhow::Result<Collector> {
        let q = ch
            .queue_declare(
                ShortString::from(""),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let keys: &[&str] = if finished {
            &["build.launched", "build.running", "build.succeeded"]
        } else {
            &["build.launched", "build.running"]
        };
        for key in keys {
            ch.queue_bind(
                q.name().clone(),
                ShortString::from(names.events.as_str()),
                ShortString::from(*key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        let mut deliveries = ch
            .basic_consume(
                q.name().clone(),
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let state = Arc::new(Mutex::new(Times::default()));
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(d)) = deliveries.next().await {
                let at = epoch.elapsed().as_secs_f64();
                let Ok(v) = serde_json::from_slice::<Value>(&d.data) else {
                    continue;
                };
                let Some(id) = v["data"]["buildId"].as_u64() else {
                    continue;
                };
                let mut t = s.lock().expect("collector lock");
                let map = match d.routing_key.as_str() {
                    "build.running" => &mut t.running,
                    "build.succeeded" => &mut t.finished,
                    _ => &mut t.launched,
                };
                map.entry(id).or_insert(at);
            }
        });
        Ok(Collector {
            state,
            task,
            channel: ch,
        })
    }

    fn published(&self, id: u64, at: f64) {
        self.state
            .lock()
            .expect("collector lock")
            .published
            .insert(id, at);
    }

    fn counts(&self) -> (usize, usize, usize) {
        let t = self.state.lock().expect("collector lock");
        (t.launched.len(), t.running.len(), t.finished.len())
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.channel.close(200, "ok".into()).await;
    }

    fn outcome(
        &self,
        sc: &Scenario,
        ids: &[u64],
        trouble: Option<(f64, f64)>,
        wall: Instant,
        cost: impl FnOnce(usize) -> Cost,
    ) -> Outcome {
        let t = self.state.lock().expect("collector lock");
        let start = ids
            .iter()
            .filter_map(|id| t.published.get(id))
            .copied()
            .fold(f64::INFINITY, f64::min);
        let mut launched_lat = Vec::new();
        let mut running_lat = Vec::new();
        let mut during = Vec::new();
        let mut launch_times = Vec::new();
        let burst = matches!(sc.load, Load::Burst { .. });
        let mut per_second: HashMap<u32, (usize, Vec<f64>)> = HashMap::new();
        for id in ids {
            let Some(&p) = t.published.get(id) else {
                continue;
            };
            if let Some(&l) = t.launched.get(id) {
                launched_lat.push(l - p);
                launch_times.push(l);
                if let Some((at, _)) = trouble
                    && p - start >= at
                {
                    during.push(l - p);
                }
                let sec = if burst { l - start } else { p - start };
                let e = per_second.entry(sec.max(0.0) as u32).or_default();
                e.0 += 1;
                e.1.push(l - p);
            }
            if let Some(&r) = t.running.get(id) {
                running_lat.push(r - p);
            }
        }
        launch_times.sort_by(f64::total_cmp);
        let throughput_per_s = match (launch_times.first(), launch_times.last()) {
            (Some(a), Some(b)) if b > a => (launch_times.len() - 1) as f64 / (b - a),
            _ => 0.0,
        };
        let mut series: Vec<Second> = per_second
            .into_iter()
            .map(|(t, (n, lat))| Second {
                t,
                launched: n,
                latency: Percentiles::of(lat),
            })
            .collect();
        series.sort_by_key(|s| s.t);
        let launched = launch_times.len();
        Outcome {
            scenario: sc.clone(),
            published: ids.len(),
            launched,
            running: running_lat.len(),
            throughput_per_s,
            launched_ms: Percentiles::of(launched_lat),
            running_ms: Percentiles::of(running_lat),
            during_trouble_ms: trouble.map(|_| Percentiles::of(during)),
            cost: cost(launched),
            series,
            wall_s: wall.elapsed().as_secs_f64(),
        }
    }
}

/// Consumer processes of a scenario.
#[derive(Default)]
struct Consumers(Vec<Consumer>);

impl Consumers {
    fn readings(&self) -> Vec<procstat::Reading> {
        self.0
            .iter()
            .filter_map(|c| procstat::read(c.pid))
            .collect()
    }

    fn cpu(&self) -> f64 {
        self.readings().iter().map(|r| r.cpu.as_secs_f64()).sum()
    }

    fn peak_rss_mib(&self) -> f64 {
        self.readings()
            .iter()
            .map(|r| mib(r.peak_rss))
            .fold(0.0, f64::max)
    }

    fn rss_mib(&self) -> Option<f64> {
        self.readings().iter().map(|r| mib(r.rss)).reduce(f64::max)
    }

    async fn stop(self) {
        for mut c in self.0 {
            c.stop().await;
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

struct BaselineLaunch {
    queue: String,
    events: String,
    prefetch: u16,
    clusters: Vec<String>,
    pod: PathBuf,
    secret: Option<PathBuf>,
    report: bool,
}

/// One worker or baseline process.
struct Consumer {
    child: Child,
    pid: u32,
    _dir: tempfile::TempDir,
}

impl Consumer {
    async fn worker(bin_dir: &Path, config: &Value) -> anyhow::Result<Consumer> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let mut doc = config.clone();
        doc["httpd"] = json!({"host": "127.0.0.1", "port": port});
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
        let log = std::fs::File::create(dir.path().join("worker.log"))?;
        let mut cmd = Command::new(bin_dir.join("buildcluster-worker"));
        for (k, _) in std::env::vars() {
            if k.starts_with("BCW_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .context("starting buildcluster-worker (cargo build --release first)")?;
        let pid = child.id().context("worker pid")?;
        let c = Consumer {
            child,
            pid,
            _dir: dir,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while bcw_tests::harness::worker::http_status(addr, "/readyz").await != Some(200) {
            if Instant::now() > deadline {
                bail!("the worker was not ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(c)
    }

    async fn baseline(bin_dir: &Path, a: &BaselineLaunch) -> anyhow::Result<Consumer> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new(bin_dir.join("bcw-baseline"));
        cmd.args(["--queue", &a.queue, "--events", &a.events])
            .args(["--prefetch", &a.prefetch.to_string()])
            .args(["--clusters", &a.clusters.join(",")])
            .arg("--pod")
            .arg(&a.pod)
            .args(["--amqp", AMQP_URL])
            .stdout(Stdio::null())
            .kill_on_drop(true);
        if let Some(s) = &a.secret {
            cmd.arg("--secret").arg(s);
        }
        if a.report {
            cmd.arg("--report");
        }
        let child = cmd.spawn().context("starting the baseline")?;
        let pid = child.id().context("baseline pid")?;
        Ok(Consumer {
            child,
            pid,
            _dir: dir,
        })
    }

    /// SIGTERM, then waits (SIGKILL after 30 s).
    async fn stop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_realistic_in_size() {
        let len = message(1_234_567).len();
        assert!((1_800..=2_600).contains(&len), "message is {len} bytes");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let p = Percentiles::of((1..=100).map(|i| f64::from(i) / 1000.0).collect());
        assert_eq!((p.n, p.p50, p.p99, p.max), (100, 50.0, 99.0, 100.0));
    }
}
