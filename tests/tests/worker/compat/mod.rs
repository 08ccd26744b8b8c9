//! Issue 5: the Screwdriver drop-in, proven. The original buildcluster-queue-worker's message
//! shapes, played against a fake Screwdriver API that records every call, with the worker's own
//! topology (`declareTopology: true`) and with the administrator's (`X`, `Xdlr`, `XRetry`,
//! `XRetrydlr`; `declareTopology: false`), including a worker configured only through the
//! original's environment variables.

mod admin;
mod check_config;
mod messages;
mod status;

use bcw_tests::harness::{ApiCall, FakeApi, Knobs, TOKEN};
use buildcluster_worker::broker::headers::{as_i64, as_string};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

/// Status updates on, with a fast retry and a breaker that no test trips by accident.
pub fn status_updates() -> Value {
    json!({"statusUpdates": {
        "enabled": true,
        "breaker": {"timeout": 1000, "maxFailures": 100, "resetTimeout": 1000},
        "retry": {"retryDelay": 20, "maxAttempts": 3},
    }})
}

/// Knobs of a worker that sends status updates, plus `extra` on top.
pub fn knobs_with(extra: Value) -> Knobs {
    let mut doc = status_updates();
    merge(&mut doc, &extra);
    Knobs {
        extra: doc,
        ..Knobs::default()
    }
}

/// Merges `from` into `into` (objects key by key, anything else replaced).
pub fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// The FAILURE updates the API received about `build`.
pub fn failures(api: &FakeApi, build: u64) -> Vec<ApiCall> {
    api.calls_for(build)
        .into_iter()
        .filter(ApiCall::is_failure)
        .collect()
}

/// Asserts that a call is a `PUT /v4/builds/<build>` carrying the build token as bearer.
pub fn assert_put_with_token(call: &ApiCall, build: u64) {
    assert_eq!(call.method, "PUT", "{call:?}");
    assert_eq!(call.path, format!("/v4/builds/{build}"), "{call:?}");
    assert_eq!(
        call.authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str()),
        "the update must carry the build's own token"
    );
}

/// A header of a dead-lettered copy, as text.
pub fn header(table: &FieldTable, key: &str) -> Option<String> {
    let v: &AMQPValue = table.inner().get(key)?;
    as_string(v).or_else(|| as_i64(v).map(|n| n.to_string()))
}
