//! Pod validation (`ValidatePodCreate`, `ValidatePodUpdate`) for the fields a build pod uses.
//!
//! Runs on the defaulted object, as the real server does: a missing `restartPolicy` has
//! already become `Always` here, so only values a client wrote can fail.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements, Toleration, Volume};
use serde_json::Value;

use super::{ErrorList, FieldError, is_dns1123_label, is_dns1123_subdomain, is_env_var_name, is_label_value, is_qualified_name, push_invalid, validate_object_meta, validate_update_meta};
use crate::kube_sim::quantity::Quantity;

/// Validates a pod on create.
pub fn validate_pod_create(pod: &Pod) -> ErrorList {
    let mut errs = ErrorList::new();
    validate_object_meta(&pod.metadata, &mut errs);
    let default_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    validate_pod_spec(spec, &mut errs);
    if spec.ephemeral_containers.as_ref().is_some_and(|e| !e.is_empty()) {
        errs.push(FieldError::forbidden("spec.ephemeralContainers", "cannot be set on create"));
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
    for (a, n) in allowed.init_containers.iter_mut().flatten().zip(new_spec.init_containers.iter().flatten()) {
        a.image.clone_from(&n.image);
    }
    allowed.active_deadline_seconds = new_spec.active_deadline_seconds;
    if new_spec.tolerations.as_ref().map_or(0, Vec::len) >= old_spec.tolerations.as_ref().map_or(0, Vec::len) {
        allowed.tolerations.clone_from(&new_spec.tolerations);
    }
    if serde_json::to_value(&allowed).ok() != serde_json::to_value(new_spec).ok() {
        errs.push(FieldError::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
    if let (Some(old_ads), new_ads) = (old_spec.active_deadline_seconds, new_spec.active_deadline_seconds) {
        match new_ads {
            None => errs.push(FieldError::invalid_raw("spec.activeDeadlineSeconds", "nil", "must not update activeDeadlineSeconds to nil")),
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
        errs.push(FieldError::required("spec.terminationGracePeriodSeconds", ""));
    }
    let volumes = validate_volumes(spec.volumes.as_deref().unwrap_or_default(), errs);
    validate_containers(&spec.containers, &volumes, errs);
    validate_init_containers(spec.init_containers.as_deref().unwrap_or_default(), &spec.containers, &volumes, errs);
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
            errs.push(FieldError::required(format!("spec.imagePullSecrets[{i}].name"), ""));
        }
    }
    if let Some(sa) = spec.service_account_name.as_deref().filter(|s| !s.is_empty()) {
        push_invalid(errs, "spec.serviceAccountName", sa, is_dns1123_subdomain(sa));
    }
    if let Some(node) = spec.node_name.as_deref().filter(|s| !s.is_empty()) {
        push_invalid(errs, "spec.nodeName", node, is_dns1123_subdomain(node));
    }
    if let Some(ads) = spec.active_deadline_seconds
        && !(1..=i64::from(i32::MAX)).contains(&ads)
    {
        errs.push(FieldError::invalid_int("spec.activeDeadlineSeconds", ads, "must be between 1 and 2147483647, inclusive"));
    }
    if let Some(hostname) = spec.hostname.as_deref().filter(|s| !s.is_empty()) {
        push_invalid(errs, "spec.hostname", hostname, is_dns1123_label(hostname));
    }
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        validate_toleration(t, &format!("spec.tolerations[{i}]"), errs);
    }
    if let Some(pc) = spec.priority_class_name.as_deref().filter(|s| !s.is_empty()) {
        push_invalid(errs, "spec.priorityClassName", pc, is_dns1123_subdomain(pc));
    }
    if let Some(rc) = spec.runtime_class_name.as_deref() {
        push_invalid(errs, "spec.runtimeClassName", rc, is_dns1123_subdomain(rc));
    }
}

fn validate_enum(errs: &mut ErrorList, field: &str, value: Option<&str>, allowed: &[&str]) {
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
            Ok(Value::Object(m)) => m.keys().filter(|k| k.as_str() != "name").cloned().collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        match sources.as_slice() {
            [] => el.push(FieldError::required(path.clone(), "must specify a volume type")),
            [_] => {}
            [_, rest @ ..] => {
                for extra in rest {
                    el.push(FieldError::forbidden(format!("{path}.{extra}"), "may not specify more than 1 volume type"));
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

fn validate_containers(containers: &[Container], volumes: &HashSet<String>, errs: &mut ErrorList) {
    if containers.is_empty() {
        errs.push(FieldError::required("spec.containers", ""));
        return;
    }
    let mut names = HashSet::new();
    for (i, c) in containers.iter().enumerate() {
        let path = format!("spec.containers[{i}]");
        validate_container_common(c, &path, volumes, errs);
        if !names.insert(c.name.clone()) {
            errs.push(FieldError::duplicate(format!("{path}.name"), &c.name));
        }
        if c.restart_policy.is_some() {
            errs.push(FieldError::forbidden(format!("{path}.restartPolicy"), "may not be set for non-init containers"));
        }
    }
}

fn validate_init_containers(init: &[Container], regular: &[Container], volumes: &HashSet<String>, errs: &mut ErrorList) {
    let mut names: HashSet<String> = regular.iter().map(|c| c.name.clone()).collect();
    for (i, c) in init.iter().enumerate() {
        let path = format!("spec.initContainers[{i}]");
        validate_container_common(c, &path, volumes, errs);
        let restart_always = match c.restart_policy.as_deref() {
            None => false,
            Some("Always") => true,
            Some(other) => {
                errs.push(FieldError::not_supported(format!("{path}.restartPolicy"), other, &["Always"]));
                false
            }
        };
        if names.contains(&c.name) {
            errs.push(FieldError::duplicate(format!("{path}.name"), &c.name));
        } else if !c.name.is_empty() {
            names.insert(c.name.clone());
        }
        if !restart_always {
            for (set, field) in [
                (c.lifecycle.is_some(), "lifecycle"),
                (c.liveness_probe.is_some(), "livenessProbe"),
                (c.readiness_probe.is_some(), "readinessProbe"),
                (c.startup_probe.is_some(), "startupProbe"),
            ] {
                if set {
                    errs.push(FieldError::forbidden(
                        format!("{path}.{field}"),
                        "may not be set for init containers without restartPolicy=Always",
                    ));
                }
            }
        }
    }
}

fn validate_container_common(c: &Container, path: &str, volumes: &HashSet<String>, errs: &mut ErrorList) {
    let name_path = format!("{path}.name");
    if c.name.is_empty() {
        errs.push(FieldError::required(name_path, ""));
    } else {
        push_invalid(errs, &name_path, &c.name, is_dns1123_label(&c.name));
    }
    if c.image.as_deref().unwrap_or("").is_empty() {
        errs.push(FieldError::required(format!("{path}.image"), ""));
    }
    validate_enum(
        errs,
        &format!("{path}.terminationMessagePolicy"),
        c.termination_message_policy.as_deref(),
        &["File", "FallbackToLogsOnError"],
    );
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        if p.container_port == 0 {
            errs.push(FieldError::required(format!("{pp}.containerPort"), ""));
        } else if !(1..=65535).contains(&p.container_port) {
            errs.push(FieldError::invalid_int(format!("{pp}.containerPort"), i64::from(p.container_port), "must be between 1 and 65535, inclusive"));
        }
        match p.protocol.as_deref().unwrap_or("") {
            "" => errs.push(FieldError::required(format!("{pp}.protocol"), "")),
            "TCP" | "UDP" | "SCTP" => {}
            other => errs.push(FieldError::not_supported(format!("{pp}.protocol"), other, &["SCTP", "TCP", "UDP"])),
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        let name_path = format!("{path}.env[{i}].name");
        if e.name.is_empty() {
            errs.push(FieldError::required(name_path, ""));
        } else {
            push_invalid(errs, &name_path, &e.name, is_env_var_name(&e.name));
        }
        if let Some(from) = &e.value_from {
            let sources = [from.field_ref.is_some(), from.resource_field_ref.is_some(), from.config_map_key_ref.is_some(), from.secret_key_ref.is_some()]
                .into_iter()
                .filter(|s| *s)
                .count();
            let vf = format!("{path}.env[{i}].valueFrom");
            if sources == 0 {
                errs.push(FieldError::invalid(vf, "", "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"));
            } else if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
                errs.push(FieldError::invalid(vf, "", "may not be specified when `value` is not empty"));
            } else if sources > 1 {
                errs.push(FieldError::invalid(vf, "", "may not have more than one field specified at a time"));
            }
        }
    }
    let mut mount_paths = HashSet::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mp = format!("{path}.volumeMounts[{i}]");
        if m.name.is_empty() {
            errs.push(FieldError::required(format!("{mp}.name"), ""));
        }
        if !volumes.contains(&m.name) {
            errs.push(FieldError::not_found(format!("{mp}.name"), &m.name));
        }
        if m.mount_path.is_empty() {
            errs.push(FieldError::required(format!("{mp}.mountPath"), ""));
        }
        if !mount_paths.insert(m.mount_path.clone()) {
            errs.push(FieldError::invalid(format!("{mp}.mountPath"), &m.mount_path, "must be unique"));
        }
    }
    validate_enum(
        errs,
        &format!("{path}.imagePullPolicy"),
        c.image_pull_policy.as_deref(),
        &["Always", "IfNotPresent", "Never"],
    );
    if let Some(r) = &c.resources {
        validate_resources(r, &format!("{path}.resources"), errs);
    }
}

fn is_standard_container_resource(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-")
}

fn validate_resources(r: &ResourceRequirements, path: &str, errs: &mut ErrorList) {
    let parse_all = |list: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>, kind: &str, errs: &mut ErrorList| {
        let mut out = BTreeMap::new();
        for (name, q) in list.iter().flatten() {
            let fp = format!("{path}.{kind}[{name}]");
            if !name.contains('/') && !is_standard_container_resource(name) {
                errs.push(FieldError::invalid(fp.clone(), name, "must be a standard resource for containers"));
            }
            // Quantities were parsed at decode time; unparsable ones never reach validation.
            if let Ok(parsed) = Quantity::parse(&q.0) {
                if parsed.is_negative() {
                    errs.push(FieldError::invalid(fp, parsed.canonical(), "must be greater than or equal to 0"));
                }
                out.insert(name.clone(), parsed);
            }
        }
        out
    };
    let limits = parse_all(&r.limits, "limits", errs);
    let requests = parse_all(&r.requests, "requests", errs);
    for (name, req) in &requests {
        if let Some(limit) = limits.get(name) {
            // apimachinery IsOvercommitAllowed: native resources other than hugepages.
            let native = !name.contains('/') || name.contains("kubernetes.io/");
            let overcommit = native && !name.starts_with("hugepages-");
            if req != limit && !overcommit {
                errs.push(FieldError::invalid(format!("{path}.requests"), req.canonical(), format!("must be equal to {name} limit of {}", limit.canonical())));
            } else if req > limit {
                errs.push(FieldError::invalid(
                    format!("{path}.requests"),
                    req.canonical(),
                    format!("must be less than or equal to {name} limit of {}", limit.canonical()),
                ));
            }
        }
    }
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
                errs.push(FieldError::invalid(format!("{path}.operator"), value, msgs.join(";")));
            }
        }
        "Exists" => {
            if !value.is_empty() {
                errs.push(FieldError::invalid_raw(format!("{path}.operator"), format!("{t:?}"), "value must be empty when `operator` is 'Exists'"));
            }
        }
        other => errs.push(FieldError::not_supported(format!("{path}.operator"), other, &["Equal", "Exists"])),
    }
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty())
        && !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute")
    {
        errs.push(FieldError::not_supported(format!("{path}.effect"), effect, &["NoSchedule", "PreferNoSchedule", "NoExecute"]));
    }
}
