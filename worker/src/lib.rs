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
//! - [`podspec`]: the build pod (executor-k8s parity) and the token Secret, built without I/O.
#![forbid(unsafe_code)]

pub mod config;
pub mod intake;
pub mod naming;
pub mod podspec;
pub mod secret;
