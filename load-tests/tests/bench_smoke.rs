//! The benchmark end to end at a tiny scale: `bcw-load bench` starts its kube-sim, runs the
//! baseline and the worker (the debug binaries beside it) against the local RabbitMQ, and
//! writes the per-scenario JSON, the summary and the charts. Figures are not judged here (they
//! belong to the benchmark); what is checked is that every build published was measured.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} was not written: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

#[test]
fn a_small_bench_measures_every_build_and_writes_its_report() {
    let worker = Path::new(env!("CARGO_BIN_EXE_bcw-load"))
        .parent()
        .expect("binary directory")
        .join("buildcluster-worker");
    assert!(
        worker.exists(),
        "{} is missing: cargo build --workspace first",
        worker.display()
    );
    let out = tempfile::tempdir().expect("temp dir");
    let status = Command::new(env!("CARGO_BIN_EXE_bcw-load"))
        .args([
            "bench",
            "--only",
            "burst-baseline,burst-baseline-reporting,burst",
            "--scale",
            "0.0025",
        ])
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("bcw-load runs");
    assert!(status.success(), "bcw-load bench failed: {status}");

    for name in ["burst-baseline", "burst-baseline-reporting", "burst"] {
        let r = read_json(&out.path().join(format!("{name}.json")));
        assert_eq!(r["scenario"]["name"], name);
        // The scale's floor: 50 builds per scenario, every one launched and timed.
        assert_eq!(r["published"], 50, "{name}: {r}");
        assert_eq!(r["launched"], 50, "{name}: {r}");
        assert_eq!(r["launched_ms"]["n"], 50, "{name}: {r}");
        assert!(
            r["throughput_per_s"].as_f64().unwrap_or(0.0) > 0.0,
            "{name}: {r}"
        );
        // The consumer's CPU was sampled from /proc, and RabbitMQ's (it runs on this machine)
        // and the harness's own beside it.
        assert!(
            r["cost"]["cpu_s"].as_f64().unwrap_or(0.0) > 0.0,
            "{name}: {r}"
        );
        assert!(
            r["cost"]["broker_cpu_ms_per_build"].as_f64().is_some(),
            "{name}: RabbitMQ's CPU was not sampled: {r}"
        );
        assert!(
            r["cost"]["harness_cpu_ms_per_build"]
                .as_f64()
                .unwrap_or(0.0)
                > 0.0,
            "{name}: {r}"
        );
    }
    let summary = read_json(&out.path().join("summary.json"));
    let burst_target = summary["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| {
            t["target"]
                .as_str()
                .unwrap_or("")
                .starts_with("burst throughput")
        })
        .cloned()
        .expect("the burst target is reported");
    assert!(
        burst_target["figure"]
            .as_str()
            .unwrap_or("")
            .contains("x baseline"),
        "{burst_target}"
    );
    let md = std::fs::read_to_string(out.path().join("summary.md")).expect("summary.md");
    assert!(md.contains("| `burst-baseline` |") && md.contains("| `burst` |"));
    // The CPU budget: every burst's split, and the most a worker as cheap as the baseline
    // could reach at those costs.
    let budget = md
        .split("## Where the CPU goes in the bursts")
        .nth(1)
        .expect("the CPU budget section");
    assert!(
        budget.contains("| `burst-baseline` |") && budget.contains("| `burst` |"),
        "{budget}"
    );
    assert!(
        budget.contains("A worker that used no more CPU than the baseline process"),
        "{budget}"
    );
    // And what the least lifecycle reporting costs the baseline, beside the defaults.
    assert!(
        budget.contains("| `burst-baseline-reporting` |")
            && budget.contains("The least lifecycle reporting"),
        "{budget}"
    );
    let svg = std::fs::read_to_string(out.path().join("throughput.svg")).expect("chart");
    assert!(svg.contains("<svg") && svg.contains("</svg>"), "not an SVG");
}
