//! Integration tests, chaos suite and the simulated Kubernetes API (kube-sim) of
//! buildcluster-worker.
#![forbid(unsafe_code)]

pub mod kube_sim;
