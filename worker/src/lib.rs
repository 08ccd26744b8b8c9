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
//! - [`config`]: the configuration tree, its loading and validation.
//! - [`secret`]: a string that never reaches logs, events or metrics.
//! - [`intake`]: the Screwdriver wire format, decoded into typed jobs or refused as poison.
//! - [`naming`]: pod names, labels and annotation keys, and Kubernetes syntax rules.
//! - [`routing`]: which executors a build may go to, best first (pin, weights, exclusions).
//! - [`breaker`]: the long-lived circuit breaker of each executor's cluster.
//! - [`backoff`]: exponential backoff with full jitter for call retries, and `Retry-After`.
//! - [`budget`]: the client-side request budget (`qps`/`burst`) of each cluster.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod config;
pub mod intake;
pub mod naming;
pub mod routing;
pub mod secret;
