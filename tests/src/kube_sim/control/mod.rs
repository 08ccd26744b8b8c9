//! The control API of a running kube-sim: JSON over HTTP to inject faults, add scripts,
//! change timelines and read the logs of each cluster, plus a thin client for it.
//!
//! Owns only the mapping between HTTP and [`super::ClusterHandle`]; it never changes objects
//! except through the handle.

mod client;
mod server;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use client::ControlClient;
pub(crate) use server::{cluster_table, serve};

/// How to reach one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its kubeconfig file.
    pub kubeconfig: PathBuf,
}
