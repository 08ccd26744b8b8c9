//! Screwdriver-shaped messages for tests.

use serde_json::{Value, json};

/// The build token every test message carries: long and unique, so a grep of logs, events and
/// metrics for it cannot match anything by accident.
pub const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJidWlsZC10b2tlbi1zZW50aW5lbC03ZjNhOWMifQ.c2VudGluZWwtc2lnbmF0dXJlLTQ4MjkxNzM";

/// A `start` message, built up with chained calls.
#[derive(Debug, Clone)]
pub struct StartMsg {
    body: Value,
}

impl StartMsg {
    /// A realistic start for `build_id` (the example of docs/interface.md §3).
    pub fn new(build_id: u64) -> Self {
        Self {
            body: json!({"job": "start", "buildConfig": {
                "buildId": build_id, "jobId": 4321, "jobName": "main", "eventId": 123456,
                "pipelineId": 1234,
                "pipeline": {"id": 1234, "name": "screwdriver-cd/example", "scmContext": "github:github.com"},
                "container": "node:22", "apiUri": "https://api.screwdriver.cd", "token": TOKEN,
                "annotations": {}, "isPR": false, "prNum": null, "blockedBy": [4321], "freezeWindows": []}}),
        }
    }

    /// Sets the container image.
    pub fn image(mut self, image: &str) -> Self {
        self.body["buildConfig"]["container"] = json!(image);
        self
    }

    /// Sets one annotation.
    pub fn annotation(mut self, key: &str, value: Value) -> Self {
        self.body["buildConfig"]["annotations"][key] = value;
        self
    }

    /// Pins the build to an executor.
    pub fn pinned(self, executor: &str) -> Self {
        self.annotation("screwdriver.cd/executor", json!(executor))
    }

    /// Sets the API URI.
    pub fn api(mut self, uri: &str) -> Self {
        self.body["buildConfig"]["apiUri"] = json!(uri);
        self
    }

    /// Sets any buildConfig field.
    pub fn field(mut self, key: &str, value: Value) -> Self {
        self.body["buildConfig"][key] = value;
        self
    }

    /// Changes the job (`verify` uses the same buildConfig).
    pub fn job(mut self, job: &str) -> Self {
        self.body["job"] = json!(job);
        self
    }

    /// The JSON body.
    pub fn json(&self) -> Value {
        self.body.clone()
    }

    /// The bytes of the body.
    pub fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body).expect("serialisable")
    }
}

/// A `stop` message as queue-service sends it (with the stored start config).
pub fn stop(build_id: u64) -> Value {
    json!({"job": "stop", "buildConfig": {"buildId": build_id, "jobId": 4321, "jobName": "main",
        "apiUri": "https://api.screwdriver.cd", "token": TOKEN, "container": "node:22"}})
}
