//! The labels and annotations of a build pod.
//!
//! Labels follow executor-k8s (every value through Screwdriver's sanitising) plus the worker's
//! own; annotations carry what the watcher needs to report on the pod without the message. The
//! result is always syntactically valid, whatever the message says: a message-derived label
//! whose sanitised value is empty is left out, a message annotation is copied only when the
//! operator allow-listed its key, and its value is bounded.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Plan;
use crate::config::TokenDelivery;
use crate::naming;

/// Longest value of a message annotation copied onto the pod (bytes).
pub(crate) const MAX_MESSAGE_ANNOTATION_VALUE: usize = 4096;
/// Most bytes (keys and values) of message annotations copied onto one pod; Kubernetes allows
/// 256 KiB of annotations in all, and the rest is the operator's and the worker's.
pub(crate) const MAX_MESSAGE_ANNOTATIONS_TOTAL: usize = 64 * 1024;
/// Longest API URI recorded in the [`naming::ANN_API_URI`] annotation (bytes).
pub(crate) const MAX_API_URI: usize = 2048;
/// Annotation key domain that only the worker writes: a message can never set these.
const RESERVED_DOMAIN: &str = "buildcluster-worker/";

/// Labels the worker's own selectors depend on; `podLabels` cannot override them.
const IDENTITY_LABELS: [&str; 3] = [
    naming::BUILD_LABEL,
    naming::MANAGED_BY_LABEL,
    naming::EXECUTOR_LABEL,
];

/// `s` cut to at most `max` bytes on a character boundary.
pub(crate) fn bounded(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Inserts a label whose value is sanitised; an empty result is left out.
fn put_sanitised(labels: &mut BTreeMap<String, String>, key: &str, raw: &str) {
    let value = naming::sanitize_label_value(raw);
    if !value.is_empty() {
        labels.insert(key.to_string(), value);
    }
}

/// The pod's labels.
pub(crate) fn labels(plan: &Plan<'_>) -> BTreeMap<String, String> {
    let build = plan.build;
    let mut labels = BTreeMap::new();
    put_sanitised(&mut labels, "app", "screwdriver");
    put_sanitised(&mut labels, "tier", "builds");
    put_sanitised(&mut labels, naming::BUILD_LABEL, &plan.build_name);
    put_sanitised(&mut labels, naming::MANAGED_BY_LABEL, naming::MANAGED_BY);
    put_sanitised(&mut labels, naming::EXECUTOR_LABEL, plan.executor);
    let described = [
        ("screwdriver.cd/pipeline", build.pipeline_name.clone()),
        ("screwdriver.cd/job", build.job_name.clone()),
        ("screwdriver.cd/template_name", build.template_name.clone()),
        (
            "screwdriver.cd/template_version",
            build.template_version.clone(),
        ),
        (
            "screwdriver.cd/pr_number",
            build.pr_num.map(|n| n.to_string()),
        ),
        ("screwdriver.cd/cpu", Some(plan.cpu.cores_label())),
        ("screwdriver.cd/memory", Some(plan.memory.gib_label())),
        (
            "screwdriver.cd/disk",
            Some(plan.wanted.disk.clone().unwrap_or_else(|| "LOW".into())),
        ),
    ];
    for (key, value) in described {
        if let Some(value) = value {
            put_sanitised(&mut labels, key, &value);
        }
    }
    // The operator's labels win, as in Screwdriver, except over the labels the worker finds its
    // pods by. Values are sanitised as Screwdriver does; an invalid key (which the configuration
    // check refuses) is left out rather than making the pod invalid.
    for (key, value) in &plan.k8s.pod_labels {
        if naming::is_qualified_name(key) && !IDENTITY_LABELS.contains(&key.as_str()) {
            labels.insert(key.clone(), naming::sanitize_label_value(value));
        }
    }
    labels
}

/// A message annotation value as a string: strings as they are, anything else as compact JSON.
fn annotation_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The pod's annotations: allow-listed message annotations, then the operator's (which win),
/// then the worker's own (which nothing overrides).
pub(crate) fn annotations(plan: &Plan<'_>) -> BTreeMap<String, String> {
    let build = plan.build;
    let mut annotations = BTreeMap::new();
    let mut budget = MAX_MESSAGE_ANNOTATIONS_TOTAL;
    for key in plan.allow_list {
        if !naming::is_qualified_name(key) || key.starts_with(RESERVED_DOMAIN) {
            continue;
        }
        let Some(value) = build.annotations.raw().get(key) else {
            continue;
        };
        let text = annotation_text(value);
        let value = bounded(&text, MAX_MESSAGE_ANNOTATION_VALUE);
        let Some(rest) = budget.checked_sub(key.len() + value.len()) else {
            continue;
        };
        budget = rest;
        annotations.insert(key.clone(), value.to_string());
    }
    for (key, value) in &plan.k8s.annotations {
        if naming::is_qualified_name(key) {
            annotations.insert(key.clone(), value.clone());
        }
    }
    annotations.insert(naming::ANN_BUILD_ID.into(), build.build_id.to_string());
    match build.job_id {
        Some(job) => annotations.insert(naming::ANN_JOB_ID.into(), job.to_string()),
        None => annotations.remove(naming::ANN_JOB_ID),
    };
    annotations.insert(naming::ANN_ATTEMPT.into(), plan.attempt.to_string());
    annotations.insert(
        naming::ANN_API_URI.into(),
        bounded(&build.api_uri, MAX_API_URI).to_string(),
    );
    match plan.k8s.token_delivery {
        TokenDelivery::Secret => annotations.insert(
            naming::ANN_TOKEN_SECRET.into(),
            naming::token_secret_name(&plan.pod_name),
        ),
        TokenDelivery::Args => annotations.remove(naming::ANN_TOKEN_SECRET),
    };
    annotations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_cuts_on_a_character_boundary() {
        assert_eq!(bounded("héllo", 2), "h");
        assert_eq!(bounded("héllo", 3), "hé");
        assert_eq!(bounded("abc", 10), "abc");
        assert_eq!(bounded("", 0), "");
    }
}
