//! A thin client of the control API, for driving a kube-sim that runs as another process.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::{Pod, Secret};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::ClusterInfo;
use crate::kube_sim::cluster::{CreateRecord, RequestRecord};
use crate::kube_sim::config::Timeline;
use crate::kube_sim::faults::{Fault, FaultId};
use crate::kube_sim::script::ScriptRule;

/// Client of a kube-sim control API (`http://127.0.0.1:PORT`).
#[derive(Clone, Debug)]
pub struct ControlClient {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl ControlClient {
    /// A client of the control API at `base_url`.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base: base_url.into().trim_end_matches('/').to_owned(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let uri = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method.clone()).uri(&uri);
        let payload = match body {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&v)?)
            }
            None => Bytes::new(),
        };
        let resp = self
            .http
            .request(req.body(Full::new(payload))?)
            .await
            .with_context(|| format!("{method} {uri}"))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "{method} {uri}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok((status, bytes))
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let (_, body) = self.call(Method::GET, path, None).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    async fn post(&self, path: &str, body: Option<serde_json::Value>) -> anyhow::Result<()> {
        self.call(Method::POST, path, body).await.map(|_| ())
    }

    fn value<T: Serialize>(v: &T) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::to_value(v)?)
    }

    /// The clusters and how to reach them.
    pub async fn clusters(&self) -> anyhow::Result<BTreeMap<String, ClusterInfo>> {
        self.get_json("/clusters").await
    }

    /// Injects a fault into `cluster`.
    pub async fn inject(&self, cluster: &str, fault: &Fault) -> anyhow::Result<FaultId> {
        let (_, body) = self
            .call(
                Method::POST,
                &format!("/clusters/{cluster}/faults"),
                Some(Self::value(fault)?),
            )
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        Ok(FaultId(
            v["id"].as_u64().context("no fault id in the answer")?,
        ))
    }

    /// Removes one fault.
    pub async fn remove_fault(&self, cluster: &str, id: FaultId) -> anyhow::Result<()> {
        self.call(
            Method::DELETE,
            &format!("/clusters/{cluster}/faults/{}", id.0),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Removes every fault of `cluster`.
    pub async fn clear_faults(&self, cluster: &str) -> anyhow::Result<()> {
        self.call(Method::DELETE, &format!("/clusters/{cluster}/faults"), None)
            .await
            .map(|_| ())
    }

    /// Adds a failure script.
    pub async fn add_script(&self, cluster: &str, rule: &ScriptRule) -> anyhow::Result<()> {
        self.post(
            &format!("/clusters/{cluster}/scripts"),
            Some(Self::value(rule)?),
        )
        .await
    }

    /// Removes every failure script.
    pub async fn clear_scripts(&self, cluster: &str) -> anyhow::Result<()> {
        self.call(
            Method::DELETE,
            &format!("/clusters/{cluster}/scripts"),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Sets the latency added to every request.
    pub async fn set_latency(&self, cluster: &str, latency: Duration) -> anyhow::Result<()> {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.post(
            &format!("/clusters/{cluster}/latency"),
            Some(json!({"ms": ms})),
        )
        .await
    }

    /// Replaces the pod timeline.
    pub async fn set_timeline(&self, cluster: &str, timeline: &Timeline) -> anyhow::Result<()> {
        self.post(
            &format!("/clusters/{cluster}/timeline"),
            Some(Self::value(timeline)?),
        )
        .await
    }

    /// Every successful pod create.
    pub async fn create_log(&self, cluster: &str) -> anyhow::Result<Vec<CreateRecord>> {
        self.get_json(&format!("/clusters/{cluster}/creates")).await
    }

    /// Every request.
    pub async fn request_log(&self, cluster: &str) -> anyhow::Result<Vec<RequestRecord>> {
        self.get_json(&format!("/clusters/{cluster}/requests"))
            .await
    }

    /// Empties the request and create logs.
    pub async fn clear_logs(&self, cluster: &str) -> anyhow::Result<()> {
        self.call(
            Method::DELETE,
            &format!("/clusters/{cluster}/requests"),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Every pod.
    pub async fn pods(&self, cluster: &str) -> anyhow::Result<Vec<Pod>> {
        self.get_json(&format!("/clusters/{cluster}/pods")).await
    }

    /// Every secret.
    pub async fn secrets(&self, cluster: &str) -> anyhow::Result<Vec<Secret>> {
        self.get_json(&format!("/clusters/{cluster}/secrets")).await
    }

    /// Refuses connections until [`Self::start_listener`].
    pub async fn stop_listener(&self, cluster: &str) -> anyhow::Result<()> {
        self.post(&format!("/clusters/{cluster}/listener/stop"), None)
            .await
    }

    /// Serves again.
    pub async fn start_listener(&self, cluster: &str) -> anyhow::Result<()> {
        self.post(&format!("/clusters/{cluster}/listener/start"), None)
            .await
    }

    /// Forces watchers to relist (410 on resume).
    pub async fn compact(&self, cluster: &str) -> anyhow::Result<()> {
        self.post(&format!("/clusters/{cluster}/compact"), None)
            .await
    }

    /// Back to the configured state.
    pub async fn reset(&self, cluster: &str) -> anyhow::Result<()> {
        self.post(&format!("/clusters/{cluster}/reset"), None).await
    }

    /// Removes a pod at once (node loss).
    pub async fn delete_pod_now(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        self.post(
            &format!("/clusters/{cluster}/pods/{namespace}/{name}/delete-now"),
            None,
        )
        .await
    }
}
