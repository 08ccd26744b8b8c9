//! buildcluster-worker: consumes CI build messages from RabbitMQ and launches build pods on
//! Kubernetes clusters.
//!
//! # Layout
//!
//! A message travels one way through these modules:
//!
//! ```text
//! broker message -> intake (decode, validate) -> routing (weights, exclusions, breakers)
//!   -> launch (pod spec, kube calls with retry) -> watch (pod phases) -> events (confirmed) -> ack
//! ```
//!
//! - [`app`]: the worker wired together, run until shutdown and drained.
//! - [`config`]: the configuration tree, its loading and validation.
//! - [`secret`]: a string that never reaches logs, events or metrics.
//! - [`intake`]: the Screwdriver wire format, decoded into typed jobs or refused as poison.
//! - [`naming`]: pod names, labels and annotation keys, and Kubernetes syntax rules.
//! - [`podspec`]: the build pod (Screwdriver executor-k8s parity) and its token Secret.
//! - [`routing`]: which executor a build goes to (annotation, weights, exclusions, default),
//!   as a deterministic per-build preference order.
//! - [`protocol`]: whether, where and when a build's pod may be created, once across every
//!   executor and replica (the sequencer and its ledger; the decisions are the pure state
//!   machines of the `bcw-protocol` crate).
//! - [`launch`]: `start`, `stop` and `verify` against the clusters, driving the protocol.
//! - [`dispatch`]: one delivery from bytes to ack: decode, carry out, make durable, settle.
//! - [`cluster`]: an executor's Kubernetes API as typed calls, each through its breaker, budget,
//!   deadline and retry.
//! - [`outbound`]: the one call path of every outbound request (cluster calls, status
//!   updates): breaker permit, budget, send deadline, retries on backoff or `Retry-After`.
//! - [`breaker`]: the long-lived circuit breaker per executor (pure state machine + shared wrapper).
//! - [`backoff`]: exponential backoff with full jitter, and `Retry-After` parsing.
//! - [`budget`]: the per-cluster client-side request budget (`qps`/`burst`).
//! - [`events`]: lifecycle CloudEvents and their deterministic ids.
//! - [`broker`]: RabbitMQ as transport: connection supervisor, topology, consuming, confirmed
//!   publishing, streams.
//! - [`status`]: build status updates to the Screwdriver API.
//! - [`health`]: readiness flags behind `/readyz`.
//! - [`telemetry`]: metric names and recording functions, log set-up.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`cache`]: `clear` messages (disk cache removal), path-safe.
//! - [`watch`]: pod watching, failure classification, reporting, garbage collection.
//!
//! Beside the path of a build:
//!
//! - [`preflight`]: whether the configuration reaches the broker, every executor and the
//!   Screwdriver API, with typed findings and fixes (`check-config --connect`, start-up).
//! - [`ops`]: the operator commands besides `run` (`check-config --connect`, `enqueue`,
//!   `dead`).
#![forbid(unsafe_code)]

pub mod app;
pub mod backoff;
pub mod breaker;
pub mod broker;
pub mod budget;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod events;
pub mod health;
pub mod http;
pub mod intake;
pub mod launch;
pub mod naming;
pub mod ops;
pub mod outbound;
pub mod podspec;
pub mod preflight;
pub mod protocol;
pub mod routing;
pub mod secret;
pub mod status;
pub mod telemetry;
pub mod watch;
