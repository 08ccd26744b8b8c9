//! Container validation (`validateContainers`, `validateInitContainers`,
//! `validateContainerCommon`): names, images, ports, env, volume mounts, pull policy and
//! resources.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{Container, ResourceRequirements};

use super::pod::validate_enum;
use super::{ErrorList, FieldError, is_dns1123_label, is_env_var_name, push_invalid};
use crate::kube_sim::quantity::Quantity;

pub(super) fn validate_containers(
    containers: &[Container],
    volumes: &HashSet<String>,
    errs: &mut ErrorList,
) {
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
            errs.push(FieldError::forbidden(
                format!("{path}.restartPolicy"),
                "may not be set for non-init containers",
            ));
        }
    }
}

pub(super) fn validate_init_containers(
    init: &[Container],
    regular: &[Container],
    volumes: &HashSet<String>,
    errs: &mut ErrorList,
) {
    let mut names: HashSet<String> = regular.iter().map(|c| c.name.clone()).collect();
    for (i, c) in init.iter().enumerate() {
        let path = format!("spec.initContainers[{i}]");
        validate_container_common(c, &path, volumes, errs);
        let restart_always = match c.restart_policy.as_deref() {
            None => false,
            Some("Always") => true,
            Some(other) => {
                errs.push(FieldError::not_supported(
                    format!("{path}.restartPolicy"),
                    other,
                    &["Always"],
                ));
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

fn validate_container_common(
    c: &Container,
    path: &str,
    volumes: &HashSet<String>,
    errs: &mut ErrorList,
) {
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
            errs.push(FieldError::invalid_int(
                format!("{pp}.containerPort"),
                i64::from(p.container_port),
                "must be between 1 and 65535, inclusive",
            ));
        }
        match p.protocol.as_deref().unwrap_or("") {
            "" => errs.push(FieldError::required(format!("{pp}.protocol"), "")),
            "TCP" | "UDP" | "SCTP" => {}
            other => errs.push(FieldError::not_supported(
                format!("{pp}.protocol"),
                other,
                &["SCTP", "TCP", "UDP"],
            )),
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
            let sources = [
                from.field_ref.is_some(),
                from.resource_field_ref.is_some(),
                from.config_map_key_ref.is_some(),
                from.secret_key_ref.is_some(),
            ]
            .into_iter()
            .filter(|s| *s)
            .count();
            let vf = format!("{path}.env[{i}].valueFrom");
            if sources == 0 {
                errs.push(FieldError::invalid(vf, "", "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"));
            } else if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
                errs.push(FieldError::invalid(
                    vf,
                    "",
                    "may not be specified when `value` is not empty",
                ));
            } else if sources > 1 {
                errs.push(FieldError::invalid(
                    vf,
                    "",
                    "may not have more than one field specified at a time",
                ));
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
            errs.push(FieldError::invalid(
                format!("{mp}.mountPath"),
                &m.mount_path,
                "must be unique",
            ));
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
    let parse_all = |list: &Option<
        BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
                     kind: &str,
                     errs: &mut ErrorList| {
        let mut out = BTreeMap::new();
        for (name, q) in list.iter().flatten() {
            let fp = format!("{path}.{kind}[{name}]");
            if !name.contains('/') && !is_standard_container_resource(name) {
                errs.push(FieldError::invalid(
                    fp.clone(),
                    name,
                    "must be a standard resource for containers",
                ));
            }
            // Quantities were parsed at decode time; unparsable ones never reach validation.
            if let Ok(parsed) = Quantity::parse(&q.0) {
                if parsed.is_negative() {
                    errs.push(FieldError::invalid(
                        fp,
                        parsed.canonical(),
                        "must be greater than or equal to 0",
                    ));
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
                errs.push(FieldError::invalid(
                    format!("{path}.requests"),
                    req.canonical(),
                    format!("must be equal to {name} limit of {}", limit.canonical()),
                ));
            } else if req > limit {
                errs.push(FieldError::invalid(
                    format!("{path}.requests"),
                    req.canonical(),
                    format!(
                        "must be less than or equal to {name} limit of {}",
                        limit.canonical()
                    ),
                ));
            }
        }
    }
}
