//! What an HTTP request means to the API server: RBAC verb, resource, namespace, name and
//! subresource (the apiserver's `RequestInfo`), and the list/watch/delete query options.
//!
//! Pure parsing; it never looks at the store.

use std::collections::HashMap;

use http::Method;
use serde::Serialize;

use super::faults::Verb;
use super::status::ApiError;
use super::store::ResourceKind;

/// The parsed target of a resource request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestInfo {
    /// RBAC verb.
    pub verb: Verb,
    /// The resource as named in the path (also for resources the sim does not serve).
    pub resource: String,
    /// The served resource, when it is one.
    #[serde(skip)]
    pub kind: Option<ResourceKind>,
    /// Subresource (`status`), if any.
    pub subresource: Option<String>,
    /// Namespace from the path.
    pub namespace: Option<String>,
    /// Object name from the path.
    pub name: Option<String>,
}

fn kind_of(group: &str, resource: &str) -> Option<ResourceKind> {
    match (group, resource) {
        ("", "pods") => Some(ResourceKind::Pods),
        ("", "secrets") => Some(ResourceKind::Secrets),
        ("coordination.k8s.io", "leases") => Some(ResourceKind::Leases),
        _ => None,
    }
}

impl RequestInfo {
    /// Parses a resource path (`/api/v1/...`, `/apis/<group>/<version>/...`); `None` for
    /// anything else (discovery, health, unknown paths).
    pub fn parse(method: &Method, path: &str, query: &Query) -> Option<Self> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match segs.as_slice() {
            ["api", "v1", rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => return None,
        };
        let (namespace, resource, name, sub) = match rest {
            ["namespaces", ns, resource, tail @ ..] => {
                let (name, sub) = match tail {
                    [] => (None, None),
                    [name] => (Some(*name), None),
                    [name, sub] => (Some(*name), Some(*sub)),
                    _ => return None,
                };
                (Some(*ns), *resource, name, sub)
            }
            [resource] if *resource != "namespaces" => (None, *resource, None, None),
            _ => return None,
        };
        let watch = query.flag("watch").unwrap_or(false);
        let verb = match (method.as_str(), name.is_some()) {
            ("GET" | "HEAD", _) if watch => Verb::Watch,
            ("GET" | "HEAD", true) => Verb::Get,
            ("GET" | "HEAD", false) => Verb::List,
            ("POST", _) => Verb::Create,
            ("PUT", _) => Verb::Update,
            ("PATCH", _) => Verb::Patch,
            ("DELETE", true) => Verb::Delete,
            ("DELETE", false) => Verb::Deletecollection,
            _ => return None,
        };
        Some(Self {
            verb,
            resource: resource.to_owned(),
            kind: kind_of(group, resource),
            subresource: sub.map(str::to_owned),
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
        })
    }
}

/// The query string, decoded.
#[derive(Clone, Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    /// Decodes `a=b&c=d` (form encoding, as client-go and kube-rs send it).
    pub fn parse(raw: Option<&str>) -> Self {
        let mut map = HashMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(decode(k), decode(v));
        }
        Self(map)
    }

    /// A raw value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A boolean the way Go's `strconv.ParseBool` reads it; `None` when absent or malformed.
    pub fn flag(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
            _ => None,
        }
    }

    /// A boolean; a malformed value is a 400.
    pub fn bool(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(false),
            Some(v) => self.flag(key).ok_or_else(|| {
                ApiError::bad_request(format!("strconv.ParseBool: parsing {v:?}: invalid syntax"))
            }),
        }
    }

    /// An integer; a malformed value is a 400.
    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("strconv.ParseInt: parsing {v:?}: invalid syntax"))
            }),
        }
    }
}

fn decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Options of a list or watch.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// `labelSelector`.
    pub label_selector: String,
    /// `fieldSelector`.
    pub field_selector: String,
    /// `limit` (0 = no limit).
    pub limit: usize,
    /// `continue`.
    pub continue_token: Option<String>,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`.
    pub resource_version_match: Option<String>,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `timeoutSeconds`.
    pub timeout_seconds: Option<u64>,
    /// `sendInitialEvents`.
    pub send_initial_events: Option<bool>,
}

impl ListOptions {
    /// Reads the options from the query string.
    pub fn from_query(q: &Query) -> Result<Self, ApiError> {
        let limit = q.int("limit")?.unwrap_or(0);
        let timeout = q.int("timeoutSeconds")?;
        let send_initial_events = match q.get("sendInitialEvents") {
            None | Some("") => None,
            Some(_) => Some(q.bool("sendInitialEvents")?),
        };
        Ok(Self {
            label_selector: q.get("labelSelector").unwrap_or("").to_owned(),
            field_selector: q.get("fieldSelector").unwrap_or("").to_owned(),
            limit: usize::try_from(limit.max(0)).unwrap_or(usize::MAX),
            continue_token: q
                .get("continue")
                .filter(|c| !c.is_empty())
                .map(str::to_owned),
            resource_version: q.get("resourceVersion").map(str::to_owned),
            resource_version_match: q
                .get("resourceVersionMatch")
                .filter(|c| !c.is_empty())
                .map(str::to_owned),
            bookmarks: q.bool("allowWatchBookmarks")?,
            timeout_seconds: timeout.map(|t| u64::try_from(t.max(0)).unwrap_or(0)),
            send_initial_events,
        })
    }
}

/// How dependents are handled when their owner goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents are deleted by the garbage collector after the owner.
    Background,
    /// Dependents are deleted before the owner (treated like Background here).
    Foreground,
    /// Dependents lose their ownerReference and stay.
    Orphan,
}

/// `DeleteOptions` from the query and the body (the body wins).
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// `gracePeriodSeconds`.
    pub grace_period: Option<i64>,
    /// `propagationPolicy` (or the legacy `orphanDependents`).
    pub propagation: Option<Propagation>,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `preconditions.uid`.
    pub precondition_uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub precondition_rv: Option<String>,
}

fn propagation(s: &str) -> Result<Propagation, ApiError> {
    match s {
        "Background" => Ok(Propagation::Background),
        "Foreground" => Ok(Propagation::Foreground),
        "Orphan" => Ok(Propagation::Orphan),
        other => Err(ApiError::invalid(
            "meta.k8s.io",
            "DeleteOptions",
            "",
            &[super::validation::FieldError::not_supported(
                "propagationPolicy",
                other,
                &["Foreground", "Background", "Orphan", "nil"],
            )],
        )),
    }
}

impl DeleteOptions {
    /// Reads the options from the query string and an optional JSON body.
    pub fn parse(q: &Query, body: &[u8]) -> Result<Self, ApiError> {
        let mut o = Self {
            grace_period: q.int("gracePeriodSeconds")?,
            propagation: q
                .get("propagationPolicy")
                .filter(|p| !p.is_empty())
                .map(propagation)
                .transpose()?,
            dry_run: q.get("dryRun") == Some("All"),
            ..Self::default()
        };
        if q.flag("orphanDependents") == Some(true) && o.propagation.is_none() {
            o.propagation = Some(Propagation::Orphan);
        }
        if body.iter().any(|b| !b.is_ascii_whitespace()) {
            let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
            })?;
            if let Some(g) = v.get("gracePeriodSeconds").filter(|g| !g.is_null()) {
                o.grace_period = Some(g.as_i64().ok_or_else(|| {
                    ApiError::bad_request("gracePeriodSeconds must be an integer")
                })?);
            }
            if let Some(p) = v.get("propagationPolicy").and_then(|p| p.as_str()) {
                o.propagation = Some(propagation(p)?);
            }
            if v.get("orphanDependents")
                .and_then(serde_json::Value::as_bool)
                == Some(true)
                && o.propagation.is_none()
            {
                o.propagation = Some(Propagation::Orphan);
            }
            if let Some(d) = v.get("dryRun").and_then(|d| d.as_array()) {
                o.dry_run = d.iter().any(|x| x == "All");
            }
            if let Some(p) = v.get("preconditions") {
                o.precondition_uid = p.get("uid").and_then(|u| u.as_str()).map(str::to_owned);
                o.precondition_rv = p
                    .get("resourceVersion")
                    .and_then(|u| u.as_str())
                    .map(str::to_owned);
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: Method, path_and_query: &str) -> Option<RequestInfo> {
        let (path, q) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        RequestInfo::parse(&method, path, &Query::parse(Some(q)))
    }

    #[test]
    fn verbs_follow_the_apiserver_rules() {
        let v = |m: Method, p: &str| info(m, p).unwrap().verb;
        assert_eq!(v(Method::GET, "/api/v1/namespaces/ns/pods"), Verb::List);
        assert_eq!(
            v(Method::GET, "/api/v1/namespaces/ns/pods?watch=1"),
            Verb::Watch
        );
        assert_eq!(v(Method::GET, "/api/v1/pods?watch=true"), Verb::Watch);
        assert_eq!(v(Method::GET, "/api/v1/namespaces/ns/pods/p"), Verb::Get);
        assert_eq!(v(Method::POST, "/api/v1/namespaces/ns/pods"), Verb::Create);
        assert_eq!(
            v(
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l"
            ),
            Verb::Update
        );
        assert_eq!(
            v(Method::DELETE, "/api/v1/namespaces/ns/pods/p"),
            Verb::Delete
        );
        assert_eq!(
            v(Method::DELETE, "/api/v1/namespaces/ns/pods"),
            Verb::Deletecollection
        );
        let s = info(Method::GET, "/api/v1/namespaces/ns/pods/p/status").unwrap();
        assert_eq!(s.subresource.as_deref(), Some("status"));
        assert_eq!(s.kind, Some(ResourceKind::Pods));
        assert_eq!(
            info(Method::GET, "/api/v1/namespaces/ns/configmaps")
                .unwrap()
                .kind,
            None
        );
        assert!(info(Method::GET, "/version").is_none());
    }

    #[test]
    fn query_values_are_form_decoded() {
        let q = Query::parse(Some(
            "labelSelector=a%3Db%2Cc+in+%28x%29&limit=5&watch=true",
        ));
        assert_eq!(q.get("labelSelector"), Some("a=b,c in (x)"));
        assert_eq!(q.int("limit").unwrap(), Some(5));
        assert!(q.bool("watch").unwrap());
        assert!(Query::parse(Some("limit=x")).int("limit").is_err());
    }

    #[test]
    fn delete_options_body_overrides_query() {
        let q = Query::parse(Some("gracePeriodSeconds=30"));
        let o = DeleteOptions::parse(
            &q,
            br#"{"gracePeriodSeconds":0,"propagationPolicy":"Orphan","preconditions":{"uid":"u"}}"#,
        )
        .unwrap();
        assert_eq!(o.grace_period, Some(0));
        assert_eq!(o.propagation, Some(Propagation::Orphan));
        assert_eq!(o.precondition_uid.as_deref(), Some("u"));
        assert!(
            DeleteOptions::parse(&Query::default(), br#"{"propagationPolicy":"Sometimes"}"#)
                .is_err()
        );
    }
}
