//! `check-config --connect`: every preflight check, one line each, then a count.

use std::process::ExitCode;

use crate::config::Settings;
use crate::preflight::{self, Status};

/// Runs the checks and prints them; exit 2 when any failed, 0 otherwise (warnings included).
pub async fn run(settings: &Settings) -> ExitCode {
    let lines = preflight::run_all(settings).await;
    for line in &lines {
        println!("{line}");
    }
    let count = |s: Status| lines.iter().filter(|l| l.status == s).count();
    let (failed, warned) = (count(Status::Fail), count(Status::Warn));
    println!(
        "{} checks: {} ok, {failed} failed, {warned} warnings, {} skipped",
        lines.len(),
        count(Status::Pass),
        count(Status::Skip)
    );
    if failed > 0 {
        super::invalid()
    } else {
        ExitCode::SUCCESS
    }
}
