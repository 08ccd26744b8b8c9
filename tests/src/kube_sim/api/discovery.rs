//! Non-resource endpoints: `/version`, health checks and the discovery documents.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::json;

use super::{Resp, error, json, text};
use crate::kube_sim::cluster::ClusterInner;
use crate::kube_sim::status::ApiError;

/// Answers a path that is not a resource request.
pub fn handle(cluster: &Arc<ClusterInner>, method: &Method, path: &str) -> Resp {
    if method != Method::GET && method != Method::HEAD {
        return error(&ApiError::method_not_allowed());
    }
    match path.trim_end_matches('/') {
        "/healthz" | "/readyz" | "/livez" => text(StatusCode::OK, "ok"),
        "/version" => json(
            StatusCode::OK,
            serde_json::to_vec(&json!({
                "major": "1", "minor": "33",
                "emulationMajor": "1", "emulationMinor": "33",
                "minCompatibilityMajor": "1", "minCompatibilityMinor": "32",
                "gitVersion": "v1.33.0-kube-sim",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.24.2", "compiler": "gc", "platform": "linux/amd64"
            }))
            .unwrap_or_default(),
        ),
        "/api" => json(
            StatusCode::OK,
            serde_json::to_vec(&json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": cluster.listener.addr().to_string()}]
            }))
            .unwrap_or_default(),
        ),
        "/apis" => json(
            StatusCode::OK,
            serde_json::to_vec(&json!({
                "kind": "APIGroupList", "apiVersion": "v1",
                "groups": [{"name": "coordination.k8s.io",
                            "versions": [{"groupVersion": "coordination.k8s.io/v1", "version": "v1"}],
                            "preferredVersion": {"groupVersion": "coordination.k8s.io/v1", "version": "v1"}}]
            }))
            .unwrap_or_default(),
        ),
        "/api/v1" => json(StatusCode::OK, resource_list("v1", &[("pods", "Pod", true), ("pods/status", "Pod", false), ("secrets", "Secret", true)])),
        "/apis/coordination.k8s.io/v1" => json(StatusCode::OK, resource_list("coordination.k8s.io/v1", &[("leases", "Lease", true)])),
        _ => error(&ApiError::path_not_found()),
    }
}

fn resource_list(group_version: &str, resources: &[(&str, &str, bool)]) -> Vec<u8> {
    let items: Vec<_> = resources
        .iter()
        .map(|(name, kind, full)| {
            let verbs = if *full {
                json!(["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"])
            } else {
                json!(["get"])
            };
            json!({"name": name, "singularName": "", "namespaced": true, "kind": kind, "verbs": verbs})
        })
        .collect();
    serde_json::to_vec(&json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": items}))
        .unwrap_or_default()
}
