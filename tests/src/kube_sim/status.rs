//! `Status` failure bodies exactly as the Kubernetes API server writes them.
//!
//! Owns every error answer of the simulated API (code, reason, message, details) and the
//! group/resource names that appear in them. Pure data: it never decides when an error
//! happens, only how it reads.

use std::fmt;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::validation::FieldError;

/// A group and resource, printed like apimachinery's `GroupResource.String()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupResource {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// Plural resource name.
    pub resource: &'static str,
}

impl fmt::Display for GroupResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// One error answer of the API server.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `reason` of the Status (empty = omitted).
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// `details` of the Status, when the server sends them.
    pub details: Option<Box<Value>>,
    /// `Retry-After` header, in seconds.
    pub retry_after: Option<u32>,
}

fn resource_details(gr: GroupResource, name: &str) -> Value {
    let mut d = Map::new();
    d.insert("name".into(), json!(name));
    if !gr.group.is_empty() {
        d.insert("group".into(), json!(gr.group));
    }
    d.insert("kind".into(), json!(gr.resource));
    Value::Object(d)
}

impl ApiError {
    fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.to_owned(),
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// 404 `pods "x" not found`.
    pub fn not_found(gr: GroupResource, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{gr} {name:?} not found"))
            .with_details(resource_details(gr, name))
    }

    /// 404 for a namespace that does not exist.
    pub fn namespace_not_found(ns: &str) -> Self {
        Self::not_found(
            GroupResource {
                group: "",
                resource: "namespaces",
            },
            ns,
        )
    }

    /// 409 `pods "x" already exists`.
    pub fn already_exists(gr: GroupResource, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{gr} {name:?} already exists"),
        )
        .with_details(resource_details(gr, name))
    }

    /// 409 `Operation cannot be fulfilled on ...`.
    pub fn conflict(gr: GroupResource, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {gr} {name:?}: {why}"),
        )
        .with_details(resource_details(gr, name))
    }

    /// 409 for a stale `metadata.resourceVersion` on update.
    pub fn stale_update(gr: GroupResource, name: &str) -> Self {
        Self::conflict(
            gr,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 403 `pods "x" is forbidden: ...`.
    pub fn forbidden(gr: GroupResource, name: &str, why: &str) -> Self {
        let message = if name.is_empty() {
            format!("{gr} is forbidden: {why}")
        } else {
            format!("{gr} {name:?} is forbidden: {why}")
        };
        Self::new(403, "Forbidden", message).with_details(resource_details(gr, name))
    }

    /// 422 `Pod "x" is invalid: ...` with one cause per field error.
    pub fn invalid(group: &str, kind: &str, name: &str, errs: &[FieldError]) -> Self {
        let qualified = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        // apimachinery's aggregate: duplicates dropped, one error alone, several in brackets.
        let mut seen: Vec<String> = Vec::new();
        for e in errs {
            let s = e.to_string();
            if !seen.contains(&s) {
                seen.push(s);
            }
        }
        let message = match seen.len() {
            0 => format!("{qualified} {name:?} is invalid"),
            1 => format!("{qualified} {name:?} is invalid: {}", seen[0]),
            _ => format!("{qualified} {name:?} is invalid: [{}]", seen.join(", ")),
        };
        let causes: Vec<Value> = errs
            .iter()
            .map(|e| json!({"reason": e.kind.as_str(), "message": e.body(), "field": e.field}))
            .collect();
        let mut d = Map::new();
        d.insert("name".into(), json!(name));
        if !group.is_empty() {
            d.insert("group".into(), json!(group));
        }
        d.insert("kind".into(), json!(kind));
        d.insert("causes".into(), Value::Array(causes));
        Self::new(422, "Invalid", message).with_details(Value::Object(d))
    }

    /// 400 BadRequest with the given message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 400 for a body that cannot be decoded as the resource's kind.
    pub fn undecodable(kind: &str, version: &str, why: impl fmt::Display) -> Self {
        Self::bad_request(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: {why}"
        ))
    }

    /// 404 for a path that no API serves.
    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    /// 405 for a method the path does not support.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .with_details(json!({}))
    }

    /// 410 Expired (a too old resource version or continue token).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413 for a body over the server's limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 415 for a patch type the server does not accept.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type}) - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json"
            ),
        )
    }

    /// 500 `Internal error occurred: ...`.
    pub fn internal(why: &str) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {why}"),
        )
        .with_details(json!({"causes": [{"message": why}]}))
    }

    /// 504 for a resource version the server has not reached yet.
    pub fn too_large_resource_version(requested: u64, current: u64) -> Self {
        let mut e = Self::new(504, "Timeout", format!("Timeout: Too large resource version: {requested}, current: {current}"))
            .with_details(json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1
            }));
        e.retry_after = Some(1);
        e
    }

    /// An injected failure: the usual reason and message of `code`, unless overridden.
    pub fn injected(
        code: u16,
        reason: Option<&str>,
        message: Option<&str>,
        retry_after: Option<u32>,
    ) -> Self {
        let (default_reason, default_message) = match code {
            400 => ("BadRequest", "the server rejected our request for an unknown reason".to_owned()),
            401 => ("Unauthorized", "Unauthorized".to_owned()),
            403 => ("Forbidden", "forbidden: the request was rejected".to_owned()),
            404 => ("NotFound", "the server could not find the requested resource".to_owned()),
            405 => ("MethodNotAllowed", "the server does not allow this method on the requested resource".to_owned()),
            409 => ("Conflict", "the server reported a conflict".to_owned()),
            410 => ("Gone", "the requested resource is no longer available".to_owned()),
            422 => ("Invalid", "the server rejected our request due to an error in our request".to_owned()),
            429 => ("TooManyRequests", "Too many requests, please try again later.".to_owned()),
            500 => ("InternalError", "Internal error occurred: simulated failure".to_owned()),
            503 => ("ServiceUnavailable", "the server is currently unable to handle the request".to_owned()),
            504 => (
                "Timeout",
                "Timeout: request did not complete within requested timeout - context deadline exceeded".to_owned(),
            ),
            _ => ("", format!("an error on the server ({code}) has prevented the request from succeeding")),
        };
        let mut e = Self::new(
            code,
            reason.unwrap_or(default_reason),
            message.map_or(default_message, str::to_owned),
        );
        let mut details = Map::new();
        if code == 500 {
            details.insert("causes".into(), json!([{"message": "simulated failure"}]));
        }
        if let Some(secs) = retry_after {
            details.insert("retryAfterSeconds".into(), json!(secs));
            e.retry_after = Some(secs);
        }
        if !details.is_empty() {
            e.details = Some(Box::new(Value::Object(details)));
        }
        e
    }

    /// The Status object.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), json!("Status"));
        m.insert("apiVersion".into(), json!("v1"));
        m.insert("metadata".into(), json!({}));
        m.insert("status".into(), json!("Failure"));
        m.insert("message".into(), json!(self.message));
        if !self.reason.is_empty() {
            m.insert("reason".into(), json!(self.reason));
        }
        if let Some(d) = &self.details {
            m.insert("details".into(), (**d).clone());
        }
        m.insert("code".into(), json!(self.code));
        Value::Object(m)
    }

    /// The Status object as JSON bytes.
    pub fn to_json(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(&self.to_value()).unwrap_or_default())
    }
}

/// The `Status` a successful delete of a resource without `ReturnDeletedObject` answers.
pub fn delete_success(gr: GroupResource, name: &str, uid: &str) -> Value {
    let mut d = Map::new();
    d.insert("name".into(), json!(name));
    if !gr.group.is_empty() {
        d.insert("group".into(), json!(gr.group));
    }
    d.insert("kind".into(), json!(gr.resource));
    d.insert("uid".into(), json!(uid));
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": Value::Object(d)})
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: GroupResource = GroupResource {
        group: "",
        resource: "pods",
    };
    const LEASES: GroupResource = GroupResource {
        group: "coordination.k8s.io",
        resource: "leases",
    };

    #[test]
    fn not_found_reads_like_the_api_server() {
        let v = ApiError::not_found(PODS, "x").to_value();
        assert_eq!(
            v,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                   "message":"pods \"x\" not found","reason":"NotFound",
                   "details":{"name":"x","kind":"pods"},"code":404})
        );
    }

    #[test]
    fn grouped_resources_carry_their_group() {
        let e = ApiError::stale_update(LEASES, "l");
        assert_eq!(
            e.message,
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"l\": the object has been modified; please apply your changes to the latest version and try again"
        );
        assert_eq!(e.to_value()["details"]["group"], "coordination.k8s.io");
    }

    #[test]
    fn retry_after_goes_into_details_and_header() {
        let e = ApiError::injected(429, None, None, Some(3));
        assert_eq!(e.reason, "TooManyRequests");
        assert_eq!(e.retry_after, Some(3));
        assert_eq!(e.to_value()["details"]["retryAfterSeconds"], 3);
    }
}
