//! CPU time and memory of a process, read from `/proc` (Linux).

use std::time::Duration;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// User + system CPU time so far.
    pub cpu: Duration,
    /// Resident set size now (bytes).
    pub rss: u64,
    /// Peak resident set size so far (`VmHWM`, bytes).
    pub peak_rss: u64,
    /// Of the RSS now: anonymous memory (heap, stacks), bytes.
    pub rss_anon: u64,
    /// Of the RSS now: pages of files (the executable's code), bytes.
    pub rss_file: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` when the process is gone.
pub fn read(pid: u32) -> Option<Reading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let cpu = parse_cpu(&stat)?;
    Some(Reading {
        cpu,
        rss: status_kib(&status, "VmRSS:")? * 1024,
        peak_rss: status_kib(&status, "VmHWM:")? * 1024,
        rss_anon: status_kib(&status, "RssAnon:").unwrap_or(0) * 1024,
        rss_file: status_kib(&status, "RssFile:").unwrap_or(0) * 1024,
    })
}

/// Processes whose command name (`/proc/<pid>/comm`) is `name`: RabbitMQ's Erlang VM is
/// `beam.smp`.
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .collect()
}

/// CPU time so far of every process named `name`; `None` when there is none.
pub fn cpu_of_named(name: &str) -> Option<Duration> {
    let pids = pids_named(name);
    (!pids.is_empty()).then(|| {
        pids.into_iter()
            .filter_map(|pid| {
                parse_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
            })
            .sum()
    })
}

/// CPU time so far of this process (every thread).
pub fn own_cpu() -> Duration {
    read(std::process::id()).map_or(Duration::ZERO, |r| r.cpu)
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ); 100 on every Linux platform that
/// exists in practice, and fixed in the kernel's ABI.
const USER_HZ: u64 = 100;

/// `utime + stime` from a `/proc/<pid>/stat` line (the command name may contain spaces and
/// parentheses, so fields are counted after the last `)`).
fn parse_cpu(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the line, utime 14, stime 15 => indices 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_read_after_a_name_with_spaces_and_parentheses() {
        let line =
            "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1 1 1";
        assert_eq!(parse_cpu(line), Some(Duration::from_millis(3000)));
    }

    #[test]
    fn processes_are_found_by_command_name() {
        let own = std::fs::read_to_string("/proc/self/comm").expect("own comm");
        assert!(pids_named(own.trim_end()).contains(&std::process::id()));
        assert!(pids_named("no-such-process-name").is_empty());
        assert_eq!(cpu_of_named("no-such-process-name"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let r = read(std::process::id()).expect("own /proc entry");
        assert!(r.rss > 0 && r.peak_rss >= r.rss);
    }
}
