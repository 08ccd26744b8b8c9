//! Test support: a real RabbitMQ, workers in process or as real processes, message builders.
//!
//! Every test gets its own exchange and queue names ([`Names::unique`]) so tests run in
//! parallel and [`Rabbit::cleanup`] removes what they created.

pub mod admin;
pub mod command;
pub mod fake_api;
pub mod kube_front;
pub mod messages;
pub mod proxy;
pub mod rabbit;
pub mod settings;
pub mod tls;
pub mod worker;

pub use admin::AdminTopology;
pub use fake_api::{ApiCall, FakeApi, Reply};
pub use messages::{StartMsg, TOKEN, stop};
pub use proxy::TcpProxy;
pub use rabbit::{AMQP_URL, Event, EventTap, Names, Rabbit};
pub use settings::{ExecutorSpec, Knobs, merge_json, settings, settings_json};
pub use worker::{InProcessWorker, WorkerProcess, free_port, worker_binary};

use std::time::Duration;

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ERROR lines of a worker's JSON log.
pub fn error_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .collect()
}

/// Panics unless `line` contains every one of `parts`.
pub fn assert_mentions(line: &str, parts: &[&str]) {
    for part in parts {
        assert!(line.contains(part), "no {part:?} in {line}");
    }
}

/// Panics unless `log` has exactly one ERROR line and it contains every one of `parts`.
pub fn assert_one_error(log: &str, parts: &[&str]) {
    let errors = error_lines(log);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_mentions(errors[0], parts);
}

/// Installs a test log subscriber once (output captured per test by the harness).
pub fn init_logs() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
