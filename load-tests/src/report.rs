//! Results on disk: one JSON per scenario, a Markdown summary with the targets, SVG charts.

use std::fmt::Write as _;
use std::path::Path;

use crate::run::Outcome;
use crate::scenario::{Load, Target, Trouble};

/// The outage bound of the issue: breaker timeout x maxFailures + one retry delay (product
/// defaults: 10 s x 5 + 3 s).
pub const OUTAGE_BOUND_MS: f64 = 10_000.0 * 5.0 + 3_000.0;

/// One target of the benchmark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    /// What is asked.
    pub target: String,
    /// What was measured.
    pub figure: String,
    /// Met or not (`None`: its scenario did not run).
    pub met: Option<bool>,
}

fn find<'a>(all: &'a [Outcome], name: &str) -> Option<&'a Outcome> {
    all.iter().find(|o| o.scenario.name == name)
}

/// The targets of the issue, judged on this run.
pub fn verdicts(all: &[Outcome]) -> Vec<Verdict> {
    let mut v = Vec::new();
    match (find(all, "burst"), find(all, "burst-baseline")) {
        (Some(w), Some(b)) if b.throughput_per_s > 0.0 => {
            let ratio = w.throughput_per_s / b.throughput_per_s;
            v.push(Verdict {
                target:
                    "burst throughput >= 0.8 x baseline and >= 1,000 builds/s (0 ms API latency)"
                        .into(),
                figure: format!(
                    "{:.0} builds/s = {ratio:.2} x baseline {:.0} builds/s",
                    w.throughput_per_s, b.throughput_per_s
                ),
                met: Some(ratio >= 0.8 && w.throughput_per_s >= 1000.0),
            });
        }
        _ => v.push(Verdict {
            target: "burst throughput".into(),
            figure: "not run".into(),
            met: None,
        }),
    }
    for (name, what) in [
        (
            "burst-no-locks",
            "same, with the launch protocol in process (rabbitmq.buildLocks: false)",
        ),
        (
            "burst-launch-only",
            "same, like for like: protocol in process, lifecycle reporter off (the baseline's work)",
        ),
    ] {
        if let (Some(w), Some(b)) = (find(all, name), find(all, "burst-baseline"))
            && b.throughput_per_s > 0.0
        {
            let ratio = w.throughput_per_s / b.throughput_per_s;
            v.push(Verdict {
                target: what.into(),
                figure: format!(
                    "{:.0} builds/s = {ratio:.2} x baseline {:.0} builds/s",
                    w.throughput_per_s, b.throughput_per_s
                ),
                met: Some(ratio >= 0.8 && w.throughput_per_s >= 1000.0),
            });
        }
    }
    if let (Some(w), Some(b)) = (
        find(all, "burst-args"),
        find(all, "burst-baseline-pod-only"),
    ) && b.throughput_per_s > 0.0
    {
        let ratio = w.throughput_per_s / b.throughput_per_s;
        v.push(Verdict {
            target: "same, token on the command line vs the pod-only baseline".into(),
            figure: format!(
                "{:.0} builds/s = {ratio:.2} x baseline {:.0} builds/s",
                w.throughput_per_s, b.throughput_per_s
            ),
            met: Some(ratio >= 0.8 && w.throughput_per_s >= 1000.0),
        });
    }
    v.push(match find(all, "steady-200") {
        Some(o) => Verdict {
            target: "p99 publish -> build.launched < 50 ms at 200 builds/s steady".into(),
            figure: format!(
                "p99 {:.1} ms (p50 {:.1} ms, max {:.1} ms, {} builds)",
                o.launched_ms.p99, o.launched_ms.p50, o.launched_ms.max, o.launched
            ),
            met: Some(o.launched == o.published && o.launched_ms.p99 < 50.0),
        },
        None => Verdict {
            target: "p99 at 200 builds/s".into(),
            figure: "not run".into(),
            met: None,
        },
    });
    if let Some(o) = find(all, "memory") {
        v.push(Verdict {
            target: "worker peak RSS < 64 MiB with 1,000 builds in flight".into(),
            figure: format!(
                "peak {:.1} MiB (RSS {:.1} MiB with all 1,000 running)",
                o.cost.peak_rss_mib,
                o.cost.in_flight_rss_mib.unwrap_or(0.0)
            ),
            met: Some(o.running == o.published && o.cost.peak_rss_mib < 64.0),
        });
        let idle = o.cost.idle_rss_mib.unwrap_or(f64::NAN);
        v.push(Verdict {
            target: "worker RSS < 20 MiB idle".into(),
            figure: format!("{idle:.1} MiB"),
            met: Some(idle < 20.0),
        });
    }
    if let Some(o) = find(all, "memory-finished") {
        v.push(Verdict {
            target: format!(
                "worker peak RSS < 64 MiB with {} builds finished and their pods kept for podTTL",
                o.published
            ),
            figure: format!(
                "peak {:.1} MiB (RSS {:.1} MiB once all had finished)",
                o.cost.peak_rss_mib,
                o.cost.in_flight_rss_mib.unwrap_or(0.0)
            ),
            met: Some(o.launched == o.published && o.cost.peak_rss_mib < 64.0),
        });
    }
    if let Some(o) = find(all, "outage") {
        let during = o.during_trouble_ms.unwrap_or_default();
        v.push(Verdict {
            target: format!(
                "one-cluster outage: no build waits longer than {:.0} s (breaker timeout x maxFailures + one retry delay)",
                OUTAGE_BOUND_MS / 1000.0
            ),
            figure: format!(
                "longest wait {:.0} ms (p99 {:.0} ms) of {} builds published during and after the outage; {}/{} launched",
                during.max, during.p99, during.n, o.launched, o.published
            ),
            met: Some(o.launched == o.published && o.launched_ms.max <= OUTAGE_BOUND_MS),
        });
    }
    v
}

/// Everything the machine says about itself that matters for the figures.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cores().unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or_else(|| "?".into(), |k| format!("{:.0} GiB", k / 1024.0 / 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    format!(
        "{cores} cores ({cpu}), {mem} RAM, Linux {kernel}; RabbitMQ, kube-sim, the load generator and the workers all share these cores"
    )
}

/// Writes `<dir>/<scenario>.json`, `summary.md`, `summary.json` and the charts.
pub fn write(dir: &Path, all: &[Outcome], command: &str, date: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for o in all {
        std::fs::write(
            dir.join(format!("{}.json", o.scenario.name)),
            serde_json::to_string_pretty(o)? + "\n",
        )?;
    }
    let verdicts = verdicts(all);
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "date": date, "machine": machine(), "command": command, "targets": verdicts,
        }))? + "\n",
    )?;
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmark results\n");
    let _ = writeln!(md, "- Date: {date}");
    let _ = writeln!(md, "- Machine: {}", machine());
    let _ = writeln!(md, "- Command: `{command}`\n");
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| Target | Figure | Met |\n|---|---|---|");
    for v in &verdicts {
        let met = match v.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not run",
        };
        let _ = writeln!(md, "| {} | {} | {met} |", v.target, v.figure);
    }
    let _ = writeln!(md, "\n## Scenarios\n");
    let _ = writeln!(
        md,
        "| Scenario | What | Builds | Launched | Builds/s | Launch p50 / p99 / max (ms) | Running p99 (ms) | CPU ms/build | Peak RSS (MiB) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for o in all {
        let l = o.launched_ms;
        let running = if o.running_ms.n > 0 {
            format!("{:.0}", o.running_ms.p99)
        } else {
            "-".into()
        };
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} | {:.0} | {:.1} / {:.1} / {:.1} | {running} | {:.2} | {:.1} |",
            o.scenario.name,
            o.scenario.title,
            o.published,
            o.launched,
            o.throughput_per_s,
            l.p50,
            l.p99,
            l.max,
            o.cost.cpu_ms_per_build,
            o.cost.peak_rss_mib
        );
    }
    let _ = writeln!(
        md,
        "\nBuilds/s is measured between the first and the last `build.launched`. For bursts the \
         launch latency includes the time a build waited in the queue behind the others, so only \
         the throughput matters there.\n"
    );
    cpu_budget(&mut md, all);
    by_replicas(&mut md, all);
    let _ = writeln!(md, "## Charts\n");
    let _ = writeln!(md, "![throughput](throughput.svg)\n");
    std::fs::write(dir.join("throughput.svg"), throughput_svg(all))?;
    for o in all {
        if matches!(o.scenario.load, Load::Rate { .. }) {
            let file = format!("latency-{}.svg", o.scenario.name);
            std::fs::write(dir.join(&file), latency_svg(o))?;
            let _ = writeln!(md, "![{}]({file})\n", o.scenario.name);
        }
    }
    std::fs::write(dir.join("summary.md"), md)?;
    Ok(())
}

/// CPU milliseconds per build of a run, by process.
struct CpuSplit {
    /// The worker (or baseline) processes.
    consumer: f64,
    /// RabbitMQ.
    broker: f64,
    /// This process: kube-sim and the load generator.
    harness: f64,
}

impl CpuSplit {
    /// `None` when RabbitMQ does not run on this machine.
    fn of(o: &Outcome) -> Option<CpuSplit> {
        Some(CpuSplit {
            consumer: o.cost.cpu_ms_per_build,
            broker: o.cost.broker_cpu_ms_per_build?,
            harness: o.cost.harness_cpu_ms_per_build,
        })
    }

    fn total(&self) -> f64 {
        self.consumer + self.broker + self.harness
    }
}

/// Cores this process may run on.
fn cores() -> Option<usize> {
    std::thread::available_parallelism().ok().map(usize::from)
}

/// Where the machine's CPU goes per build in the bursts, and what that bounds: with every core
/// busy, throughput follows the CPU a build costs the whole machine.
fn cpu_budget(md: &mut String, all: &[Outcome]) {
    let bursts: Vec<_> = all
        .iter()
        .filter(|o| {
            // Only the runs that keep every core busy: a burst with no API latency whose pods
            // finish (the latency scenarios wait; the memory ones keep 1,000 pods running and
            // are mostly start-up).
            matches!(o.scenario.load, Load::Burst { .. })
                && o.scenario.api_latency_ms == 0
                && o.scenario.pod_runs_ms.is_some()
                && o.launched > 0
        })
        .filter_map(|o| Some((o, CpuSplit::of(o)?)))
        .collect();
    if bursts.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Where the CPU goes in the bursts\n");
    let _ = writeln!(
        md,
        "CPU milliseconds per launched build while the consumers ran, read from `/proc`: the \
         worker (or baseline) processes, RabbitMQ (`beam.smp`), and `bcw-load` itself (kube-sim \
         serving every API request and watch, and the event collector). Only the bursts without \
         API latency, which keep every core busy: there a build's share of the machine sets the \
         throughput.\n"
    );
    let _ = writeln!(
        md,
        "| Scenario | Builds/s | Consumers | RabbitMQ | kube-sim + load generator | All |\n|---|---|---|---|---|---|"
    );
    for (o, cpu) in &bursts {
        let _ = writeln!(
            md,
            "| `{}` | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            o.scenario.name,
            o.throughput_per_s,
            cpu.consumer,
            cpu.broker,
            cpu.harness,
            cpu.total()
        );
    }
    let _ = writeln!(md);
    for line in [bound(all), reporting(all)].into_iter().flatten() {
        let _ = writeln!(md, "{line}\n");
    }
}

/// CPU per build at one steady rate over 1, 2 and 4 replicas, and of nearly idle replicas:
/// what the pool's size costs, per build and per second.
fn by_replicas(md: &mut String, all: &[Outcome]) {
    let rows: Vec<_> = all
        .iter()
        .filter(|o| {
            let name = o.scenario.name;
            name == "steady-100" || name.starts_with("steady-100-") || name.starts_with("idle-")
        })
        .filter_map(|o| Some((o, CpuSplit::of(o)?)))
        .collect();
    if rows.len() < 2 {
        return;
    }
    let _ = writeln!(md, "## CPU by number of replicas\n");
    let _ = writeln!(
        md,
        "| Scenario | Replicas | Builds/s | Workers (all) ms/build | RabbitMQ ms/build | RabbitMQ ms per second |\n|---|---|---|---|---|---|"
    );
    for (o, cpu) in &rows {
        let replicas = match o.scenario.target {
            Target::Worker { replicas, .. } => replicas,
            Target::Baseline { .. } => 0,
        };
        let _ = writeln!(
            md,
            "| `{}` | {replicas} | {:.0} | {:.2} | {:.2} | {:.0} |",
            o.scenario.name,
            o.throughput_per_s,
            cpu.consumer,
            cpu.broker,
            cpu.broker * o.throughput_per_s
        );
    }
    let _ = writeln!(md);
}

/// An upper bound on what the default burst could reach against the baseline, from what
/// RabbitMQ and kube-sim spent per build in it: every core busy, and a worker that used no more
/// CPU than the baseline process (which does a strict subset of the worker's work).
fn bound(all: &[Outcome]) -> Option<String> {
    let base = find(all, "burst-baseline")?;
    let floor = CpuSplit::of(base)?.consumer;
    let defaults = CpuSplit::of(find(all, "burst")?)?;
    let cores = cores().unwrap_or(1) as f64;
    let per_build = defaults.broker + defaults.harness + floor;
    (per_build > 0.0 && base.throughput_per_s > 0.0).then(|| {
        let rate = cores * 1000.0 / per_build;
        format!(
            "In `burst` (the product's defaults), RabbitMQ and kube-sim with the load generator \
             used {:.2} ms of CPU per build. A worker that used no more CPU than the baseline \
             process ({floor:.2} ms per build), with all {cores:.0} cores busy, would launch at \
             most {rate:.0} builds/s = {:.2} x the baseline's {:.0} builds/s on this machine, at \
             these costs per build.",
            defaults.broker + defaults.harness,
            rate / base.throughput_per_s,
            base.throughput_per_s
        )
    })
}

/// What the least lifecycle reporting costs the baseline, against what the defaults cost.
fn reporting(all: &[Outcome]) -> Option<String> {
    let base = CpuSplit::of(find(all, "burst-baseline")?)?;
    let least = find(all, "burst-baseline-reporting")?;
    let reporting = CpuSplit::of(least)?;
    let defaults = CpuSplit::of(find(all, "burst")?)?;
    (base.consumer > 0.0 && base.broker > 0.0 && reporting.consumer > 0.0).then(|| {
        format!(
            "The least lifecycle reporting (`burst-baseline-reporting`: the baseline, a pod watch \
             and the same confirmed events) costs the baseline process {:.2} x its CPU per build \
             and RabbitMQ {:.2} x; the defaults' worker spends {:.2} x the baseline process's \
             ({:.2} x the reporting baseline's), RabbitMQ {:.2} x the baseline's.",
            reporting.consumer / base.consumer,
            reporting.broker / base.broker,
            defaults.consumer / base.consumer,
            defaults.consumer / reporting.consumer,
            defaults.broker / base.broker
        )
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Horizontal bars: builds/s of every burst scenario, baselines in grey.
fn throughput_svg(all: &[Outcome]) -> String {
    let bursts: Vec<&Outcome> = all
        .iter()
        .filter(|o| matches!(o.scenario.load, Load::Burst { .. }))
        .collect();
    let max = bursts
        .iter()
        .map(|o| o.throughput_per_s)
        .fold(1.0, f64::max);
    let (left, width, row) = (230.0, 520.0, 26.0);
    let height = 60.0 + row * bursts.len() as f64;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="820" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="20" font-size="15">Launch throughput, builds/s (burst scenarios; grey = baseline)</text>
"#
    );
    for (i, o) in bursts.iter().enumerate() {
        let y = 36.0 + row * i as f64;
        let w = width * o.throughput_per_s / max;
        let colour = if matches!(o.scenario.target, Target::Baseline { .. }) {
            "#9e9e9e"
        } else {
            "#1f77b4"
        };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{left}" y="{y}" width="{w:.1}" height="{}" fill="{colour}"/><text x="{}" y="{}">{:.0}</text>"#,
            left - 6.0,
            y + 14.0,
            esc(o.scenario.name),
            row - 6.0,
            left + w + 4.0,
            y + 14.0,
            o.throughput_per_s
        );
    }
    s.push_str("</svg>\n");
    s
}

/// p50 and p99 publish -> launched per second of publishing, with the fault window shaded.
fn latency_svg(o: &Outcome) -> String {
    let (x0, y0, w, h) = (60.0, 40.0, 700.0, 300.0);
    let secs = o.series.last().map_or(1, |s| s.t + 1).max(1) as f64;
    let top = o.series.iter().map(|s| s.latency.p99).fold(1.0, f64::max) * 1.1;
    let x = |t: f64| x0 + w * t / secs;
    let y = |ms: f64| y0 + h - h * ms / top;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="800" height="400" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="20" font-size="15">{}: publish -&gt; build.launched per second (ms)</text>
"#,
        esc(o.scenario.name)
    );
    if let Some(Trouble::Outage { at_s, for_s } | Trouble::Throttle { at_s, for_s }) =
        o.scenario.trouble
    {
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{y0}" width="{:.1}" height="{h}" fill="#ffdddd"/><text x="{:.1}" y="{}" fill="#b00">fault</text>"##,
            x(at_s),
            x(at_s + for_s) - x(at_s),
            x(at_s) + 4.0,
            y0 + 14.0
        );
    }
    let _ = writeln!(
        s,
        r#"<line x1="{x0}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{}" stroke="black"/>"#,
        y0 + h,
        x0 + w,
        y0 + h,
        y0 + h
    );
    for i in 0..=4 {
        let ms = top * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" text-anchor="end">{ms:.0}</text><line x1="{x0}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#eee"/>"##,
            x0 - 4.0,
            y(ms) + 4.0,
            y(ms),
            x0 + w,
            y(ms)
        );
        let t = secs * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{t:.0} s</text>"#,
            x(t),
            y0 + h + 16.0
        );
    }
    for (label, colour, pick) in [
        (
            "p50",
            "#1f77b4",
            (|s: &crate::run::Second| s.latency.p50) as fn(&_) -> f64,
        ),
        ("p99", "#d62728", |s: &crate::run::Second| s.latency.p99),
    ] {
        let points: Vec<String> = o
            .series
            .iter()
            .map(|sec| format!("{:.1},{:.1}", x(f64::from(sec.t) + 0.5), y(pick(sec))))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        let ly = if label == "p50" { 60.0 } else { 76.0 };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{ly}" fill="{colour}">{label}</text>"#,
            x0 + w - 30.0
        );
    }
    s.push_str("</svg>\n");
    s
}
