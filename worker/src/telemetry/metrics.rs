//! Metric names, buckets, the Prometheus recorder, and one recording function per occurrence.

use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// `bcw_messages_total{job, outcome}`.
pub const MESSAGES_TOTAL: &str = "bcw_messages_total";
/// `bcw_inflight_builds`.
pub const INFLIGHT_BUILDS: &str = "bcw_inflight_builds";
/// `bcw_launch_duration_seconds{executor}`: message received to pod created.
pub const LAUNCH_DURATION: &str = "bcw_launch_duration_seconds";
/// `bcw_kube_requests_total{executor, verb, code}`.
pub const KUBE_REQUESTS_TOTAL: &str = "bcw_kube_requests_total";
/// `bcw_kube_request_duration_seconds{executor, verb}`.
pub const KUBE_REQUEST_DURATION: &str = "bcw_kube_request_duration_seconds";
/// `bcw_breaker_state{executor}`: 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "bcw_breaker_state";
/// `bcw_executor_state{executor}`: 0 usable, 1 unreachable (breaker open), 2 misconfigured.
pub const EXECUTOR_STATE: &str = "bcw_executor_state";
/// `bcw_builds_waiting`: builds held in this replica's memory while no executor can take them.
pub const BUILDS_WAITING: &str = "bcw_builds_waiting";
/// `bcw_breaker_trips_total{executor}`.
pub const BREAKER_TRIPS_TOTAL: &str = "bcw_breaker_trips_total";
/// `bcw_retries_total{executor, reason}`.
pub const RETRIES_TOTAL: &str = "bcw_retries_total";
/// `bcw_dead_letters_total{reason}`.
pub const DEAD_LETTERS_TOTAL: &str = "bcw_dead_letters_total";
/// `bcw_queue_messages{queue}`: ready messages.
pub const QUEUE_MESSAGES: &str = "bcw_queue_messages";
/// `bcw_queue_consumers{queue}`.
pub const QUEUE_CONSUMERS: &str = "bcw_queue_consumers";
/// `bcw_events_published_total{type}`.
pub const EVENTS_PUBLISHED_TOTAL: &str = "bcw_events_published_total";
/// `bcw_budget_wait_seconds{executor}`: time spent waiting for the client-side budget.
pub const BUDGET_WAIT: &str = "bcw_budget_wait_seconds";
/// `bcw_runtime_class_rejections_total{executor}`: pods refused for an unknown RuntimeClass.
pub const RUNTIME_CLASS_REJECTIONS_TOTAL: &str = "bcw_runtime_class_rejections_total";
/// `bcw_launch_failures_total{executor, reason}`: builds whose pod could not start.
pub const LAUNCH_FAILURES_TOTAL: &str = "bcw_launch_failures_total";
/// `bcw_build_completions_total{executor, outcome}`: succeeded / failed / timed_out.
pub const BUILD_COMPLETIONS_TOTAL: &str = "bcw_build_completions_total";
/// `bcw_pod_start_duration_seconds{executor}`: pod created to build container running.
pub const POD_START_DURATION: &str = "bcw_pod_start_duration_seconds";
/// `bcw_gc_pods_deleted_total{executor, kind}`: finished / orphan.
pub const GC_PODS_DELETED_TOTAL: &str = "bcw_gc_pods_deleted_total";
/// `bcw_reporter_leader{executor}`: 1 while this replica reports for that executor.
pub const REPORTER_LEADER: &str = "bcw_reporter_leader";
/// `bcw_broker_connected`: 1 while connected and consuming.
pub const BROKER_CONNECTED: &str = "bcw_broker_connected";
/// `bcw_broker_reconnects_total`.
pub const BROKER_RECONNECTS_TOTAL: &str = "bcw_broker_reconnects_total";
/// `bcw_status_updates_total{outcome}`: Screwdriver API build updates.
pub const STATUS_UPDATES_TOTAL: &str = "bcw_status_updates_total";
/// 1 while this replica is the launch protocol's sequencer.
pub const PROTOCOL_SEQUENCER: &str = "bcw_protocol_sequencer";
/// Questions the sequencer answered, by answer.
pub const PROTOCOL_ANSWERS_TOTAL: &str = "bcw_protocol_answers_total";

/// Buckets of latency histograms (seconds): launch, kube calls, budget waits.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets of pod start times (seconds).
const POD_START_BUCKETS: &[f64] = &[0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// Every metric name, for tests and the dashboard check.
pub const ALL: &[&str] = &[
    MESSAGES_TOTAL,
    INFLIGHT_BUILDS,
    LAUNCH_DURATION,
    KUBE_REQUESTS_TOTAL,
    KUBE_REQUEST_DURATION,
    BREAKER_STATE,
    EXECUTOR_STATE,
    BUILDS_WAITING,
    BREAKER_TRIPS_TOTAL,
    RETRIES_TOTAL,
    DEAD_LETTERS_TOTAL,
    QUEUE_MESSAGES,
    QUEUE_CONSUMERS,
    EVENTS_PUBLISHED_TOTAL,
    BUDGET_WAIT,
    RUNTIME_CLASS_REJECTIONS_TOTAL,
    LAUNCH_FAILURES_TOTAL,
    BUILD_COMPLETIONS_TOTAL,
    POD_START_DURATION,
    GC_PODS_DELETED_TOTAL,
    REPORTER_LEADER,
    BROKER_CONNECTED,
    BROKER_RECONNECTS_TOTAL,
    STATUS_UPDATES_TOTAL,
    PROTOCOL_SEQUENCER,
    PROTOCOL_ANSWERS_TOTAL,
];

/// Builds the Prometheus recorder with explicit buckets for every histogram (never summaries).
pub fn prometheus_builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(LAUNCH_DURATION.into()), LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(KUBE_REQUEST_DURATION.into()), LATENCY_BUCKETS)
        })
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BUDGET_WAIT.into()), LATENCY_BUCKETS))
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(POD_START_DURATION.into()), POD_START_BUCKETS)
        })
        .expect("bucket lists are not empty")
}

/// Installs the process-wide recorder and describes every metric. Call once, in `main`.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = prometheus_builder().install_recorder()?;
    describe();
    Ok(handle)
}

/// HELP lines.
pub fn describe() {
    describe_intake_and_clusters();
    describe_lifecycle_and_broker();
}

fn describe_intake_and_clusters() {
    describe_counter!(MESSAGES_TOTAL, "Messages handled, by job type and outcome.");
    describe_gauge!(
        INFLIGHT_BUILDS,
        "Messages being handled right now by this replica."
    );
    describe_histogram!(
        LAUNCH_DURATION,
        Unit::Seconds,
        "Message received to pod created (or adopted)."
    );
    describe_counter!(
        KUBE_REQUESTS_TOTAL,
        "Kubernetes API requests, by executor, RBAC verb and HTTP status code."
    );
    describe_histogram!(
        KUBE_REQUEST_DURATION,
        Unit::Seconds,
        "Kubernetes API request latency."
    );
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state per executor: 0 closed, 1 half-open, 2 open."
    );
    describe_gauge!(
        EXECUTOR_STATE,
        "Executor state: 0 usable, 1 unreachable (breaker open), 2 misconfigured (see the ERROR log and /readyz)."
    );
    describe_gauge!(
        BUILDS_WAITING,
        "Builds held in this replica's memory while no executor can take them (administrator's layout)."
    );
    describe_counter!(BREAKER_TRIPS_TOTAL, "Times an executor's breaker opened.");
    describe_counter!(RETRIES_TOTAL, "Retries, by executor and reason.");
    describe_counter!(DEAD_LETTERS_TOTAL, "Messages dead-lettered, by reason.");
    describe_gauge!(QUEUE_MESSAGES, "Ready messages in the queue (sampled).");
    describe_gauge!(QUEUE_CONSUMERS, "Consumers of the queue (sampled).");
    describe_counter!(
        EVENTS_PUBLISHED_TOTAL,
        "Lifecycle events published and confirmed, by type."
    );
    describe_histogram!(
        BUDGET_WAIT,
        Unit::Seconds,
        "Time a Kubernetes request waited for the client-side budget."
    );
    describe_counter!(
        RUNTIME_CLASS_REJECTIONS_TOTAL,
        "Pods refused because the executor's RuntimeClass does not exist (a configuration error)."
    );
}

fn describe_lifecycle_and_broker() {
    describe_counter!(
        LAUNCH_FAILURES_TOTAL,
        "Builds whose pod could not start, by Kubernetes reason."
    );
    describe_counter!(
        BUILD_COMPLETIONS_TOTAL,
        "Build pods that finished, by outcome."
    );
    describe_histogram!(
        POD_START_DURATION,
        Unit::Seconds,
        "Pod created to build container running."
    );
    describe_counter!(
        GC_PODS_DELETED_TOTAL,
        "Pods deleted by garbage collection (finished past their TTL, or orphans)."
    );
    describe_gauge!(
        REPORTER_LEADER,
        "1 while this replica holds the reporter Lease of the executor."
    );
    describe_gauge!(
        BROKER_CONNECTED,
        "1 while connected to the broker and consuming."
    );
    describe_counter!(BROKER_RECONNECTS_TOTAL, "Broker reconnections.");
    describe_counter!(
        STATUS_UPDATES_TOTAL,
        "Build status updates sent to the Screwdriver API, by outcome."
    );
    describe_gauge!(
        PROTOCOL_SEQUENCER,
        "1 while this replica is the launch protocol's sequencer (the claims queue's active consumer)."
    );
    describe_counter!(
        PROTOCOL_ANSWERS_TOTAL,
        "Questions the sequencer answered, by answer (go, wait, look, ...)."
    );
}

/// A message finished handling.
pub fn message_handled(job: &'static str, outcome: &'static str) {
    counter!(MESSAGES_TOTAL, "job" => job, "outcome" => outcome).increment(1);
}

/// Messages in flight changed.
pub fn inflight(delta: f64) {
    gauge!(INFLIGHT_BUILDS).increment(delta);
}

/// A pod was created or adopted.
pub fn launched(executor: &str, since_received: Duration) {
    histogram!(LAUNCH_DURATION, "executor" => executor.to_string())
        .record(since_received.as_secs_f64());
}

/// One Kubernetes request finished (code "timeout" / "error" when there was no HTTP status).
pub fn kube_request(executor: &str, verb: &'static str, code: &str, took: Duration) {
    counter!(KUBE_REQUESTS_TOTAL, "executor" => executor.to_string(), "verb" => verb, "code" => code.to_string()).increment(1);
    histogram!(KUBE_REQUEST_DURATION, "executor" => executor.to_string(), "verb" => verb)
        .record(took.as_secs_f64());
}

/// The budget made a request wait.
pub fn budget_wait(executor: &str, waited: Duration) {
    histogram!(BUDGET_WAIT, "executor" => executor.to_string()).record(waited.as_secs_f64());
}

/// A breaker's state (0 closed, 1 half-open, 2 open).
pub fn breaker_state(executor: &str, value: f64) {
    gauge!(BREAKER_STATE, "executor" => executor.to_string()).set(value);
}

/// An executor's state now.
pub fn executor_state(executor: &str, state: crate::cluster::ExecutorState) {
    gauge!(EXECUTOR_STATE, "executor" => executor.to_string()).set(state.as_gauge());
}

/// The number of builds held in memory waiting for an executor.
pub fn builds_waiting(count: usize) {
    gauge!(BUILDS_WAITING).set(count as f64);
}

/// A breaker opened.
pub fn breaker_tripped(executor: &str) {
    counter!(BREAKER_TRIPS_TOTAL, "executor" => executor.to_string()).increment(1);
}

/// A retry (of a call, or of a message through a delay queue).
pub fn retried(executor: &str, reason: &str) {
    counter!(RETRIES_TOTAL, "executor" => executor.to_string(), "reason" => reason.to_string())
        .increment(1);
}

/// A message was dead-lettered.
pub fn dead_lettered(reason: &str) {
    counter!(DEAD_LETTERS_TOTAL, "reason" => reason.to_string()).increment(1);
}

/// A queue was sampled.
pub fn queue_sampled(queue: &str, messages: u32, consumers: u32) {
    gauge!(QUEUE_MESSAGES, "queue" => queue.to_string()).set(f64::from(messages));
    gauge!(QUEUE_CONSUMERS, "queue" => queue.to_string()).set(f64::from(consumers));
}

/// An event was published and confirmed.
pub fn event_published(ty: &'static str) {
    counter!(EVENTS_PUBLISHED_TOTAL, "type" => ty).increment(1);
}

/// A pod was refused for an unknown RuntimeClass.
pub fn runtime_class_rejected(executor: &str) {
    counter!(RUNTIME_CLASS_REJECTIONS_TOTAL, "executor" => executor.to_string()).increment(1);
}

/// A build's pod could not start.
pub fn launch_failed(executor: &str, reason: &str) {
    counter!(LAUNCH_FAILURES_TOTAL, "executor" => executor.to_string(), "reason" => reason.to_string()).increment(1);
}

/// A build pod finished.
pub fn build_completed(executor: &str, outcome: &'static str) {
    counter!(BUILD_COMPLETIONS_TOTAL, "executor" => executor.to_string(), "outcome" => outcome)
        .increment(1);
}

/// A build container was seen running.
pub fn pod_started(executor: &str, since_created: Duration) {
    histogram!(POD_START_DURATION, "executor" => executor.to_string())
        .record(since_created.as_secs_f64());
}

/// Garbage collection deleted a pod.
pub fn gc_deleted(executor: &str, kind: &'static str) {
    counter!(GC_PODS_DELETED_TOTAL, "executor" => executor.to_string(), "kind" => kind)
        .increment(1);
}

/// This replica gained or lost the reporter role of an executor.
pub fn reporter_leader(executor: &str, leader: bool) {
    gauge!(REPORTER_LEADER, "executor" => executor.to_string()).set(if leader { 1.0 } else { 0.0 });
}

/// Broker connection state.
pub fn broker_connected(connected: bool) {
    gauge!(BROKER_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}

/// The broker connection was re-established.
pub fn broker_reconnected() {
    counter!(BROKER_RECONNECTS_TOTAL).increment(1);
}

/// A Screwdriver API status update finished.
pub fn status_update(outcome: &'static str) {
    counter!(STATUS_UPDATES_TOTAL, "outcome" => outcome).increment(1);
}

/// This replica became, or stopped being, the sequencer.
pub fn protocol_sequencer(active: bool) {
    gauge!(PROTOCOL_SEQUENCER).set(if active { 1.0 } else { 0.0 });
}

/// The sequencer answered a question.
pub fn protocol_answer(answer: &'static str) {
    counter!(PROTOCOL_ANSWERS_TOTAL, "answer" => answer).increment(1);
}
