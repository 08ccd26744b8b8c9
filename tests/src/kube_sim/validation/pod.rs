//! Pod validation (`ValidatePodCreate`, `ValidatePodUpdate`) for the fields a build pod uses.
//!
//! Runs on the defaulted object, as the real server does: a missing `restartPolicy` has
//! already become `Always` here, so only values a client wrote can fail.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Pod, PodSpec, Toleration, Volume};
use serde_json::Value;

use super::container::{validate_containers, validate_init_containers};
use super::{
    ErrorList, FieldError, is_dns1123_label, is_dns1123_subdomain, is_label_value,
    is_qualified_name, push_invalid, validate_object_meta, validate_update_meta,
};

/// Validates a pod on create.
pub fn validate_pod_create(pod: &Pod) -> ErrorList {
    let mut errs = ErrorList::new();
    validate_object_meta(&pod.metadata, &mut errs);
    let default_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    validate_pod_spec(spec, &mut errs);
    if spec
        .ephemeral_containers
        .as_ref()
        .is_some_and(|e| !e.is_empty())
    {
        errs.push(FieldError::forbidden(
            "spec.ephemeralContainers",
            "cannot be set on create",
        ));
    }
    errs
}

/// Validates a pod update: metadata, spec and the fields a running pod may change.
pub fn validate_pod_update(new: &Pod, old: &Pod) -> ErrorList {
    let mut errs = ErrorList::new();
    validate_update_meta(&new.metadata, &old.metadata, &mut errs);
    let default_spec = PodSpec::default();
    let new_spec = new.spec.as_ref().unwrap_or(&default_spec);
    let old_spec = old.spec.as_ref().unwrap_or(&default_spec);
    validate_pod_spec(new_spec, &mut errs);
    // Only images, activeDeadlineSeconds and added tolerations may change on a pod.
    let mut allowed = old_spec.clone();
    for (a, n) in allowed.containers.iter_mut().zip(&new_spec.containers) {
        a.image.clone_from(&n.image);
    }
    for (a, n) in allowed
        .init_containers
        .iter_mut()
        .flatten()
        .zip(new_spec.init_containers.iter().flatten())
    {
        a.image.clone_from(&n.image);
    }
    allowed.active_deadline_seconds = new_spec.active_deadline_seconds;
    if new_spec.tolerations.as_ref().map_or(0, Vec::len)
        >= old_spec.tolerations.as_ref().map_or(0, Vec::len)
    {
        allowed.tolerations.clone_from(&new_spec.tolerations);
    }
    if serde_json::to_value(&allowed).ok() != serde_json::to_value(new_spec).ok() {
        errs.push(FieldError::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
    if let (Some(old_ads), new_ads) = (
        old_spec.active_deadline_seconds,
        new_spec.active_deadline_seconds,
    ) {
        match new_ads {
            None => errs.push(FieldError::invalid_raw(
                "spec.activeDeadlineSeconds",
                "nil",
                "must not update activeDeadlineSeconds to nil",
            )),
            Some(n) if n > old_ads => errs.push(FieldError::invalid_int(
                "spec.activeDeadlineSeconds",
                n,
                "must be less than or equal to previous value",
            )),
            Some(_) => {}
        }
    }
    errs
}

fn validate_pod_spec(spec: &PodSpec, errs: &mut ErrorList) {
    if spec.termination_grace_period_seconds.is_none() {
        errs.push(FieldError::required(
            "spec.terminationGracePeriodSeconds",
            "",
        ));
    }
    let volumes = validate_volumes(spec.volumes.as_deref().unwrap_or_default(), errs);
    validate_containers(&spec.containers, &volumes, errs);
    validate_init_containers(
        spec.init_containers.as_deref().unwrap_or_default(),
        &spec.containers,
        &volumes,
        errs,
    );
    validate_enum(
        errs,
        "spec.restartPolicy",
        spec.restart_policy.as_deref(),
        &["Always", "OnFailure", "Never"],
    );
    validate_enum(
        errs,
        "spec.dnsPolicy",
        spec.dns_policy.as_deref(),
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
    );
    for (k, v) in spec.node_selector.iter().flatten() {
        push_invalid(errs, "spec.nodeSelector", k, is_qualified_name(k));
        push_invalid(errs, "spec.nodeSelector", v, is_label_value(v));
    }
    for (i, s) in spec.image_pull_secrets.iter().flatten().enumerate() {
        if s.name.is_empty() {
            errs.push(FieldError::required(
                format!("spec.imagePullSecrets[{i}].name"),
                "",
            ));
        }
    }
    if let Some(sa) = spec
        .service_account_name
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        push_invalid(
            errs,
            "spec.serviceAccountName",
            sa,
            is_dns1123_subdomain(sa),
        );
    }
    if let Some(node) = spec.node_name.as_deref().filter(|s| !s.is_empty()) {
        push_invalid(errs, "spec.nodeName", node, is_dns1123_subdomain(node));
    }
    if let Some(ads) = spec.active_deadline_seconds
        && !(1..=i64::from(i32::MAX)).contains(&ads)
    {
        errs.push(FieldError::invalid_int(
            "spec.activeDeadlineSeconds",
            ads,
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    if let Some(hostname) = spec.hostname.as_deref().filter(|s| !s.is_empty()) {
        push_invalid(errs, "spec.hostname", hostname, is_dns1123_label(hostname));
    }
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        validate_toleration(t, &format!("spec.tolerations[{i}]"), errs);
    }
    if let Some(pc) = spec
        .priority_class_name
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        push_invalid(errs, "spec.priorityClassName", pc, is_dns1123_subdomain(pc));
    }
    if let Some(rc) = spec.runtime_class_name.as_deref() {
        push_invalid(errs, "spec.runtimeClassName", rc, is_dns1123_subdomain(rc));
    }
}

pub(super) fn validate_enum(
    errs: &mut ErrorList,
    field: &str,
    value: Option<&str>,
    allowed: &[&str],
) {
    match value.unwrap_or("") {
        "" => errs.push(FieldError::required(field, "")),
        v if allowed.contains(&v) => {}
        v => errs.push(FieldError::not_supported(field, v, allowed)),
    }
}

/// Validates volumes; answers the names of the valid ones (mounts may only name those).
fn validate_volumes(volumes: &[Volume], errs: &mut ErrorList) -> HashSet<String> {
    let mut names = HashSet::new();
    for (i, vol) in volumes.iter().enumerate() {
        let path = format!("spec.volumes[{i}]");
        let mut el = ErrorList::new();
        // A volume has exactly one source besides its name.
        let sources = match serde_json::to_value(vol) {
            Ok(Value::Object(m)) => m
                .keys()
                .filter(|k| k.as_str() != "name")
                .cloned()
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        match sources.as_slice() {
            [] => el.push(FieldError::required(
                path.clone(),
                "must specify a volume type",
            )),
            [_] => {}
            [_, rest @ ..] => {
                for extra in rest {
                    el.push(FieldError::forbidden(
                        format!("{path}.{extra}"),
                        "may not specify more than 1 volume type",
                    ));
                }
            }
        }
        let name_path = format!("{path}.name");
        if vol.name.is_empty() {
            el.push(FieldError::required(name_path.clone(), ""));
        } else {
            push_invalid(&mut el, &name_path, &vol.name, is_dns1123_label(&vol.name));
        }
        if names.contains(&vol.name) {
            el.push(FieldError::duplicate(name_path, &vol.name));
        }
        if el.is_empty() {
            names.insert(vol.name.clone());
        } else {
            errs.extend(el);
        }
    }
    names
}

fn validate_toleration(t: &Toleration, path: &str, errs: &mut ErrorList) {
    let key = t.key.as_deref().unwrap_or("");
    let operator = t.operator.as_deref().unwrap_or("");
    let value = t.value.as_deref().unwrap_or("");
    if !key.is_empty() {
        push_invalid(errs, &format!("{path}.key"), key, is_qualified_name(key));
    }
    if key.is_empty() && operator != "Exists" {
        errs.push(FieldError::invalid(
            format!("{path}.operator"),
            operator,
            "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
        ));
    }
    if t.toleration_seconds.is_some() && t.effect.as_deref() != Some("NoExecute") {
        errs.push(FieldError::invalid(
            format!("{path}.effect"),
            t.effect.clone().unwrap_or_default(),
            "effect must be 'NoExecute' when `tolerationSeconds` is set",
        ));
    }
    match operator {
        "Equal" | "" => {
            let msgs = is_label_value(value);
            if !msgs.is_empty() {
                errs.push(FieldError::invalid(
                    format!("{path}.operator"),
                    value,
                    msgs.join(";"),
                ));
            }
        }
        "Exists" => {
            if !value.is_empty() {
                errs.push(FieldError::invalid_raw(
                    format!("{path}.operator"),
                    format!("{t:?}"),
                    "value must be empty when `operator` is 'Exists'",
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            format!("{path}.operator"),
            other,
            &["Equal", "Exists"],
        )),
    }
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty())
        && !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute")
    {
        errs.push(FieldError::not_supported(
            format!("{path}.effect"),
            effect,
            &["NoSchedule", "PreferNoSchedule", "NoExecute"],
        ));
    }
}
