//! Workers under test: in process (fast, many per test) or as real processes (signals, logs,
//! metrics, kills).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use buildcluster_worker::config::Settings;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A worker running inside the test process.
#[derive(Debug)]
pub struct InProcessWorker {
    shutdown: CancellationToken,
    join: JoinHandle<anyhow::Result<()>>,
    /// Its HTTP address.
    pub http: SocketAddr,
}

impl InProcessWorker {
    /// Starts a worker; returns once it listens (not necessarily consuming yet).
    pub async fn start(settings: Settings) -> InProcessWorker {
        super::init_logs();
        let shutdown = CancellationToken::new();
        let (tx, rx) = oneshot::channel();
        let join = tokio::spawn(buildcluster_worker::app::run(
            settings,
            None,
            shutdown.clone(),
            Some(tx),
        ));
        let started = match rx.await {
            Ok(s) => s,
            Err(_) => panic!("worker failed to start: {:?}", join.await),
        };
        let w = InProcessWorker {
            shutdown,
            join,
            http: started.http,
        };
        w.wait_ready().await;
        w
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let addr = self.http;
        super::eventually(
            Duration::from_secs(30),
            "the worker to be ready",
            || async move { (http_status(addr, "/readyz").await == Some(200)).then_some(()) },
        )
        .await;
    }

    /// Graceful shutdown (as SIGTERM does); returns the worker's result.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.join.await.expect("worker task")
    }

    /// Abrupt end: the task is dropped mid-flight, like a crash (unacked messages return).
    pub fn kill(self) {
        self.join.abort();
    }
}

/// The worker binary built by cargo next to the test binaries.
pub fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = profile_dir.join("buildcluster-worker");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p buildcluster-worker)",
        bin.display()
    );
    // A binary older than the worker's sources would test yesterday's code.
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../worker/src");
    if let (Some(built), Some(newest)) = (built, newest_mtime(&src)) {
        assert!(
            newest <= built,
            "{} is older than worker/src: rebuild it (cargo build -p buildcluster-worker)",
            bin.display()
        );
    }
    bin
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else if path.extension().is_some_and(|e| e == "rs" || e == "yaml") {
            entry.metadata().and_then(|m| m.modified()).ok()
        } else {
            None
        };
        newest = newest.max(t);
    }
    newest
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A worker running as a real process of the real binary.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
    /// Its HTTP address.
    pub http: SocketAddr,
    /// Where its stderr (the JSON logs) goes.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl WorkerProcess {
    /// Starts `buildcluster-worker run --config <doc>` with extra environment variables.
    pub async fn spawn(config: &Value, env: &[(&str, &str)]) -> WorkerProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut doc = config.clone();
        doc["httpd"] = serde_json::json!({"host": "127.0.0.1", "port": port});
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).expect("write config");
        let log = dir.path().join("worker.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(worker_binary());
        // Only the test decides the worker's configuration: no BCW_ variable leaks in.
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
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn worker");
        let w = WorkerProcess {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _dir: dir,
        };
        w.wait_ready().await;
        w
    }

    /// Waits until `/readyz` answers 200; on time out, fails with the end of the worker's log.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while http_status(self.http, "/readyz").await != Some(200) {
            if tokio::time::Instant::now() >= deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let mut tail: Vec<&str> = log.lines().rev().take(40).collect();
                tail.reverse();
                panic!(
                    "timed out after 30s waiting for the worker process to be ready; its log ends:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!(
                "worker did not exit within {timeout:?}; its log:\n{}",
                self.log_text()
            ),
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path of its HTTP server: (status, body).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http, path).await
    }
}

/// Status of `GET path` on a local HTTP server.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).await.map(|(s, _)| s)
}

/// `GET path` with a tiny HTTP/1.1 client: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}
