//! Secret and Lease validation.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;

use super::{
    ErrorList, FieldError, is_config_map_key, push_invalid, validate_object_meta,
    validate_update_meta,
};

/// Largest total size of a Secret's data.
const MAX_SECRET_SIZE: usize = 1024 * 1024;

/// Validates a Secret on create, or on update when `old` is given.
pub fn validate_secret(secret: &Secret, old: Option<&Secret>) -> ErrorList {
    let mut errs = ErrorList::new();
    match old {
        Some(old) => validate_update_meta(&secret.metadata, &old.metadata, &mut errs),
        None => validate_object_meta(&secret.metadata, &mut errs),
    }
    let mut total = 0;
    for (key, value) in secret.data.iter().flatten() {
        push_invalid(
            &mut errs,
            &format!("data[{key}]"),
            key,
            is_config_map_key(key),
        );
        total += value.0.len();
    }
    if total > MAX_SECRET_SIZE {
        errs.push(FieldError::too_long("data", MAX_SECRET_SIZE));
    }
    let has = |k: &str| secret.data.as_ref().is_some_and(|d| d.contains_key(k));
    let required: &[&str] = match secret.type_.as_deref().unwrap_or("Opaque") {
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        _ => &[],
    };
    for k in required.iter().filter(|k| !has(k)) {
        errs.push(FieldError::required(format!("data[{k}]"), ""));
    }
    if let Some(old) = old {
        if secret.type_ != old.type_ {
            errs.push(FieldError::invalid(
                "type",
                secret.type_.clone().unwrap_or_default(),
                "field is immutable",
            ));
        }
        if old.immutable == Some(true) {
            if secret.immutable != Some(true) {
                errs.push(FieldError::forbidden(
                    "immutable",
                    "field is immutable when `immutable` is set",
                ));
            }
            if secret.data != old.data {
                errs.push(FieldError::forbidden(
                    "data",
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }
    errs
}

/// Validates a Lease on create, or on update when `old` is given.
pub fn validate_lease(lease: &Lease, old: Option<&Lease>) -> ErrorList {
    let mut errs = ErrorList::new();
    match old {
        Some(old) => validate_update_meta(&lease.metadata, &old.metadata, &mut errs),
        None => validate_object_meta(&lease.metadata, &mut errs),
    }
    if let Some(spec) = &lease.spec {
        if let Some(d) = spec.lease_duration_seconds.filter(|d| *d <= 0) {
            errs.push(FieldError::invalid_int(
                "spec.leaseDurationSeconds",
                i64::from(d),
                "must be greater than 0",
            ));
        }
        if let Some(t) = spec.lease_transitions.filter(|t| *t < 0) {
            errs.push(FieldError::invalid_int(
                "spec.leaseTransitions",
                i64::from(t),
                "must be greater than or equal to 0",
            ));
        }
        if spec
            .preferred_holder
            .as_deref()
            .is_some_and(|p| !p.is_empty())
            && spec.strategy.as_deref().unwrap_or("").is_empty()
        {
            errs.push(FieldError::forbidden(
                "spec.preferredHolder",
                "may only be specified if `strategy` is defined",
            ));
        }
    }
    errs
}
