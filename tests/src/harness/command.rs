//! The worker binary's operator commands (`check-config`, `enqueue`, `dead`), run as an
//! operator runs them: a configuration file, chosen environment, optional standard input.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use super::worker::worker_binary;

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Ran {
    /// Both streams, for failure messages and secret checks.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// The lines of standard output.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// Runs `buildcluster-worker <args> --config <config as a file>` with only `env` from the
/// test (no `BCW_` variable of the test process leaks in) and `stdin` piped in.
pub fn run(args: &[&str], config: Option<&Value>, env: &[(&str, &str)], stdin: &[u8]) -> Ran {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(worker_binary());
    for (k, _) in std::env::vars() {
        if k.starts_with("BCW_") || k.starts_with("RABBITMQ_") || k.starts_with("K8S_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args);
    if let Some(doc) = config {
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, serde_json::to_string_pretty(doc).unwrap()).expect("config");
        cmd.arg("--config").arg(path);
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the binary runs");
    // A command that does not read its input may be gone before it is written: not an error.
    let _ = child.stdin.take().expect("stdin").write_all(stdin);
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("the command ends");
    Ran {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}
