//! Integration tests, chaos suite and the simulated Kubernetes API (kube-sim) of
//! buildcluster-worker.
//!
//! - [`kube_sim`]: a real HTTP server speaking the Kubernetes API subset the worker uses.
//! - [`harness`]: test support (RabbitMQ, workers in process and as processes, messages).
#![forbid(unsafe_code)]

pub mod harness;
pub mod kube_sim;
