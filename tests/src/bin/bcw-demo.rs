//! `bcw-demo`: the main job on a laptop. Starts kube-sim with two clusters (runc and Kata)
//! (or, with `--real`, uses the real control plane of `scripts/control-plane up`, whose
//! kubeconfigs it reads from ADMIN_KUBECONFIG and WORKER_KUBECONFIG), runs the real worker binary against the local RabbitMQ with a two-executor configuration
//! (weights 30/70, `rhel6` excluded from Kata), publishes sample builds, prints every lifecycle
//! event as it arrives, then a summary, and stops everything it started.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use bcw_tests::harness::{Event, ExecutorSpec, Knobs, Names, Rabbit, StartMsg, settings_json};
use clap::Parser;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Runs the demo.
#[derive(Debug, Parser)]
#[command(name = "bcw-demo", about)]
struct Args {
    /// Ordinary builds to launch (besides the special ones).
    #[arg(long, default_value_t = 12)]
    builds: u64,
    /// How long each simulated build runs, in seconds (kube-sim only: kwok runs them 1 s).
    #[arg(long, default_value_t = 3.0)]
    run_seconds: f64,
    /// Run on the real control plane (WORKER_KUBECONFIG, namespace `builds`) instead of
    /// kube-sim; both executors use the worker's own identity there.
    #[arg(long)]
    real: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(PathBuf::from)
        .context("binary directory")?;
    let started = Instant::now();
    let dir = tempfile::tempdir()?;

    // 1. Two simulated clusters, or the real control plane.
    let mut sim = None;
    let mut control = None;
    let url: Box<dyn Fn(&str) -> String>;
    if args.real {
        let worker_kubeconfig = std::env::var("WORKER_KUBECONFIG")
            .context("--real needs WORKER_KUBECONFIG (scripts/demo --real sets it)")?;
        println!(
            "▶ real control plane: executors `runc` and `kata` (RuntimeClass kata) in namespace builds"
        );
        println!("  worker identity: {worker_kubeconfig}");
        url = Box::new(|_| String::new());
    } else {
        println!("▶ starting kube-sim: clusters `runc` and `kata` (RuntimeClass kata)");
        let mut child = Command::new(bin_dir.join("kube-sim"))
            .args(["--cluster", "runc", "--cluster", "kata:kata"])
            .args([
                "--run-for-ms",
                &((args.run_seconds * 1000.0) as u64).to_string(),
            ])
            .args(["--schedule-after-ms", "300", "--start-after-ms", "700"])
            .arg("--kubeconfig-dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting kube-sim (build it with cargo build -p bcw-tests)")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("kube-sim stdout")?)
            .read_line(&mut line)
            .await?;
        let info: Value = serde_json::from_str(&line).context("kube-sim's first line")?;
        let urls = info["clusters"].clone();
        url = Box::new(move |c: &str| urls[c]["url"].as_str().unwrap_or_default().to_string());
        let client =
            bcw_tests::kube_sim::ControlClient::new(info["control"].as_str().unwrap_or_default());
        client
            .add_script(
                "kata",
                &bcw_tests::kube_sim::ScriptRule::new(
                    "^registry.example/broken",
                    bcw_tests::kube_sim::Script::InvalidImageName,
                )?,
            )
            .await?;
        client
            .add_script(
                "runc",
                &bcw_tests::kube_sim::ScriptRule::new(
                    "^registry.example/broken",
                    bcw_tests::kube_sim::Script::InvalidImageName,
                )?,
            )
            .await?;
        println!("  runc → {}\n  kata → {}", url("runc"), url("kata"));
        sim = Some(child);
        control = Some(client);
    }

    // 2. The worker, with the demo's two executors.
    let rabbit = Rabbit::connect().await;
    let names = Names::unique("demo");
    rabbit.declare_exchanges(&names).await;
    let tap = rabbit.tap(&names).await;
    let executors = vec![
        ExecutorSpec::new("runc", &url("runc")).weight(30),
        ExecutorSpec::new("kata", &url("kata"))
            .weight(70)
            .runtime("kata")
            .exclude("rhel6"),
    ];
    let knobs = Knobs {
        lifecycle: true,
        extra: json!({"executor": {
            "runc": {"options": {"kubernetes": {"podTTL": 5, "imagePullGracePeriod": 2}}},
            "kata": {"options": {"kubernetes": {"podTTL": 5, "imagePullGracePeriod": 2}}}}}),
        ..Knobs::default()
    };
    let mut config = settings_json(&names, &executors, &knobs);
    config["httpd"] = json!({"host": "127.0.0.1", "port": 0});
    if args.real {
        // The worker's own identity (the shipped Role) in the control plane's `builds`.
        let kubeconfig = std::env::var("WORKER_KUBECONFIG").unwrap_or_default();
        for e in ["runc", "kata"] {
            let k = &mut config["executor"][e]["options"]["kubernetes"];
            if let Some(obj) = k.as_object_mut() {
                obj.remove("host");
                obj.insert("kubeconfig".into(), json!(kubeconfig));
                obj.insert("jobsNamespace".into(), json!("builds"));
            }
        }
    }
    let config_path = dir.path().join("worker.yaml");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;
    let log_path = dir.path().join("worker.log");
    println!(
        "▶ starting buildcluster-worker (weights runc 30 / kata 70, rhel6 excluded from kata)"
    );
    println!(
        "  config {}\n  logs   {}",
        config_path.display(),
        log_path.display()
    );
    let mut worker = Command::new(bin_dir.join("buildcluster-worker"))
        .args(["run", "--config"])
        .arg(&config_path)
        .stderr(Stdio::from(std::fs::File::create(&log_path)?))
        .kill_on_drop(true)
        .spawn()
        .context("starting buildcluster-worker")?;
    wait_consuming(&rabbit, &names).await?;

    // 3. Sample builds, published as a producer would: `buildcluster-worker enqueue`.
    let first = 1000u64;
    let mut expected = BTreeMap::new();
    println!(
        "▶ publishing {} builds, a pinned one, a broken image, a poison message, and a stop\n",
        args.builds + 3
    );
    let mut builds = Vec::new();
    for i in 0..args.builds {
        let id = first + i;
        let image = match i % 4 {
            0 => "registry.example/rhel6:latest",
            1 => "node:22",
            2 => "golang:1.24",
            _ => "python:3.13",
        };
        builds.push(StartMsg::new(id).image(image).json());
        expected.insert(id, "build.succeeded");
    }
    let pinned = first + 100;
    builds.push(StartMsg::new(pinned).pinned("runc").json());
    expected.insert(pinned, "build.succeeded");
    let broken = first + 101;
    builds.push(
        StartMsg::new(broken)
            .image(if args.real {
                // kwok's image convention for an invalid image (control-plane/stages).
                "sim/invalid-image:tag"
            } else {
                "registry.example/broken:tag"
            })
            .json(),
    );
    expected.insert(broken, "build.launch_failed");
    let stopped = first + 102;
    builds.push(
        StartMsg::new(stopped)
            .image(if args.real { "sim/forever" } else { "node:22" })
            .json(),
    );
    expected.insert(stopped, "build.stopped");
    let builds_path = dir.path().join("builds.ndjson");
    let lines: Vec<String> = builds.iter().map(Value::to_string).collect();
    std::fs::write(&builds_path, lines.join("\n"))?;
    let worker_bin = bin_dir.join("buildcluster-worker");
    enqueue(&worker_bin, &config_path, &[builds_path.as_os_str()]).await?;
    // The one message `enqueue` refuses (that is its point), published raw.
    rabbit
        .publish_bytes(
            &names.exchange,
            &names.queue,
            b"{\"job\": \"start\", \"buildConfig\": {\"buildId\": 1199}}",
            Default::default(),
        )
        .await;
    expected.insert(1199, "build.dead_lettered");

    // 4. Print events as they come, stop one running build, wait for every build to end.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut shown = 0;
    let mut stop_sent = false;
    loop {
        let events = tap.all();
        for e in &events[shown..] {
            print_event(started, e);
        }
        shown = events.len();
        if !stop_sent
            && events
                .iter()
                .any(|e| e.ty == "build.running" && e.build_id() == stopped)
        {
            println!("  ↳ publishing a stop for build {stopped}");
            let id = stopped.to_string();
            enqueue(
                &worker_bin,
                &config_path,
                &[
                    "--job".as_ref(),
                    "stop".as_ref(),
                    "--build-id".as_ref(),
                    id.as_ref(),
                ],
            )
            .await?;
            stop_sent = true;
        }
        let done = expected
            .iter()
            .all(|(id, ty)| events.iter().any(|e| e.build_id() == *id && e.ty == *ty));
        if done {
            break;
        }
        if Instant::now() > deadline {
            println!("\n✗ timed out waiting for every build to end");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 5. Summary.
    let events = tap.all();
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_executor: BTreeMap<String, usize> = BTreeMap::new();
    let mut rhel_on_kata = 0;
    for e in &events {
        *by_type.entry(e.ty.as_str()).or_default() += 1;
        if e.ty == "build.launched" {
            let ex = e.data["executor"].as_str().unwrap_or("?").to_string();
            let id = e.build_id();
            if id >= first
                && id < first + args.builds
                && (id - first).is_multiple_of(4)
                && ex == "kata"
            {
                rhel_on_kata += 1;
            }
            *by_executor.entry(ex).or_default() += 1;
        }
    }
    let mut creates = 0;
    if let Some(control) = &control {
        for c in ["runc", "kata"] {
            creates += control.create_log(c).await?.len();
        }
    }
    println!("\n── summary ({:.1} s) ──", started.elapsed().as_secs_f64());
    for (ty, n) in &by_type {
        println!("  {ty:<24} {n}");
    }
    println!("  launched per executor    {by_executor:?}");
    println!("  rhel6 builds on kata     {rhel_on_kata} (must be 0)");
    if control.is_some() {
        println!(
            "  pods ever created        {creates} for {} launched builds",
            by_type.get("build.launched").copied().unwrap_or(0)
        );
    }
    let ok = expected
        .iter()
        .all(|(id, ty)| events.iter().any(|e| e.build_id() == *id && e.ty == *ty))
        && rhel_on_kata == 0;

    // 6. Stop everything: SIGTERM drains the worker.
    println!("\n▶ SIGTERM to the worker (graceful drain)");
    signal(&worker, nix::sys::signal::Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(40), worker.wait()).await??;
    println!("  worker exited: {status}");
    if let Some(mut sim) = sim {
        signal(&sim, nix::sys::signal::Signal::SIGTERM);
        let _ = tokio::time::timeout(Duration::from_secs(10), sim.wait()).await;
    }
    rabbit.cleanup(&names).await;
    if !ok {
        bail!(
            "the demo did not end as expected; see the worker log at {}",
            log_path.display()
        );
    }
    println!("✔ done");
    Ok(())
}

/// Runs `buildcluster-worker enqueue --config <config> <args>`, which prints one line per
/// message it got confirmed.
async fn enqueue(
    worker: &std::path::Path,
    config: &std::path::Path,
    args: &[&std::ffi::OsStr],
) -> anyhow::Result<()> {
    let out = Command::new(worker)
        .arg("enqueue")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .await
        .context("running buildcluster-worker enqueue")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  {line}");
    }
    if !out.status.success() {
        bail!(
            "buildcluster-worker enqueue failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn wait_consuming(rabbit: &Rabbit, names: &Names) -> anyhow::Result<()> {
    // A consumer, not merely the queue: the worker binds the queue after declaring it, and a
    // build published in between would be unroutable (the first builds of a run went missing).
    for _ in 0..300 {
        if rabbit.consumers(&names.queue).await.unwrap_or(0) > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the worker did not consume its queue within 30 s")
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
    }
}

fn print_event(started: Instant, e: &Event) {
    let d = &e.data;
    let s = |k: &str| d[k].as_str().map(String::from);
    let detail = match e.ty.as_str() {
        "build.launched" | "build.running" | "build.succeeded" => {
            format!(
                "→ {:<5} pod {}",
                s("executor").unwrap_or_default(),
                s("pod").unwrap_or_default()
            )
        }
        "build.failed" => format!("exit {} {}", d["exitCode"], s("reason").unwrap_or_default()),
        "build.launch_failed" | "build.dead_lettered" | "build.retrying" => {
            format!(
                "{}: {}",
                s("reason").unwrap_or_default(),
                s("message").unwrap_or_default()
            )
        }
        "build.stopped" => format!("{} pod(s) deleted", d["deletedPods"]),
        "cluster.breaker_opened" | "cluster.breaker_closed" => {
            format!("executor {}", s("executor").unwrap_or_default())
        }
        _ => String::new(),
    };
    let subject = if e.ty.starts_with("build.") {
        format!("build {}", d["buildId"])
    } else {
        String::new()
    };
    println!(
        "[{:>6.2}s] {:<22} {:<11} {}",
        started.elapsed().as_secs_f64(),
        e.ty,
        subject,
        detail
    );
}
