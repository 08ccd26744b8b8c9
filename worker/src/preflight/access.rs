//! The Kubernetes permissions the worker needs in an executor's jobs namespace, and the
//! SelfSubjectAccessReview that asks the API server whether its identity has one.
//!
//! Pure: the list follows what `cluster` calls (and `deploy/base/role.yaml` grants, which a
//! test holds equal to it); building the review and reading its answer never touch the network.

use serde_json::{Value, json};

use crate::config::{ExecutorConfig, Settings, TokenDelivery};

/// One (API group, resource, verb) the worker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Resource (plural).
    pub resource: &'static str,
    /// RBAC verb.
    pub verb: &'static str,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{} {}", self.verb, self.resource)
        } else {
            write!(f, "{} {}.{}", self.verb, self.resource, self.group)
        }
    }
}

const fn access(group: &'static str, resource: &'static str, verb: &'static str) -> Access {
    Access {
        group,
        resource,
        verb,
    }
}

/// What the worker calls on pods whatever the configuration: launch (create), adopt after a
/// 409 (get), find a build's pods (list), stop (deletecollection), remove a pod whose stop came
/// during its launch (delete).
const PODS: [Access; 5] = [
    access("", "pods", "create"),
    access("", "pods", "get"),
    access("", "pods", "list"),
    access("", "pods", "delete"),
    access("", "pods", "deletecollection"),
];
/// The reporter: one pod watch per executor behind a Lease.
const LIFECYCLE: [Access; 4] = [
    access("", "pods", "watch"),
    access("coordination.k8s.io", "leases", "get"),
    access("coordination.k8s.io", "leases", "create"),
    access("coordination.k8s.io", "leases", "update"),
];
/// The build token Secret (`tokenDelivery: secret`): created with the pod, read back by the
/// reporter for status updates.
const TOKEN_SECRET: [Access; 2] = [
    access("", "secrets", "create"),
    access("", "secrets", "get"),
];

/// The permissions the worker needs for this executor with these settings.
pub fn required(settings: &Settings, executor: &ExecutorConfig) -> Vec<Access> {
    let mut needed = PODS.to_vec();
    if settings.lifecycle.enabled {
        needed.extend(LIFECYCLE);
    }
    if executor.options.kubernetes.token_delivery == TokenDelivery::Secret {
        needed.extend(TOKEN_SECRET);
    }
    needed
}

/// The body of a SelfSubjectAccessReview asking for `access` in `namespace`.
pub fn review(namespace: &str, access: Access) -> Value {
    json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "namespace": namespace,
            "group": access.group,
            "resource": access.resource,
            "verb": access.verb,
        }},
    })
}

/// Reads a review's answer: `Some(true)` allowed, `Some(false)` not, `None` unreadable.
pub fn allowed(answer: &Value) -> Option<bool> {
    answer.pointer("/status/allowed")?.as_bool()
}

/// Where the reviews are posted.
pub const REVIEW_PATH: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// (group, resource, verb) granted by the shipped Role.
    fn role_grants() -> BTreeSet<(String, String, String)> {
        let text = include_str!("../../../deploy/base/role.yaml");
        let role: Value = serde_saphyr::from_str(text).expect("role.yaml parses");
        let mut grants = BTreeSet::new();
        for rule in role["rules"].as_array().expect("rules") {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        grants.insert((
                            group.as_str().unwrap().to_string(),
                            resource.as_str().unwrap().to_string(),
                            verb.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
        grants
    }

    fn as_set(needed: &[Access]) -> BTreeSet<(String, String, String)> {
        needed
            .iter()
            .map(|a| (a.group.into(), a.resource.into(), a.verb.into()))
            .collect()
    }

    #[test]
    fn with_everything_on_the_worker_needs_exactly_what_the_shipped_role_grants() {
        let settings = Settings::default();
        assert!(settings.lifecycle.enabled);
        let executor = ExecutorConfig::default();
        let needed = required(&settings, &executor);
        assert_eq!(as_set(&needed), role_grants());
        assert_eq!(needed.len(), as_set(&needed).len(), "no verb asked twice");
    }

    #[test]
    fn without_the_reporter_or_the_token_secret_less_is_needed() {
        let mut settings = Settings::default();
        settings.lifecycle.enabled = false;
        let mut executor = ExecutorConfig::default();
        executor.options.kubernetes.token_delivery = TokenDelivery::Args;
        let needed: Vec<String> = required(&settings, &executor)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            needed,
            [
                "create pods",
                "get pods",
                "list pods",
                "delete pods",
                "deletecollection pods"
            ]
        );
    }

    #[test]
    fn a_review_asks_for_one_verb_in_the_namespace_and_its_answer_is_read() {
        let body = review("builds", access("coordination.k8s.io", "leases", "update"));
        assert_eq!(body["kind"], "SelfSubjectAccessReview");
        assert_eq!(
            body["spec"]["resourceAttributes"],
            json!({"namespace": "builds", "group": "coordination.k8s.io", "resource": "leases", "verb": "update"})
        );
        assert_eq!(allowed(&json!({"status": {"allowed": true}})), Some(true));
        assert_eq!(
            allowed(&json!({"status": {"allowed": false, "reason": "no RBAC policy matched"}})),
            Some(false)
        );
        assert_eq!(allowed(&json!({"kind": "Status"})), None);
    }
}
