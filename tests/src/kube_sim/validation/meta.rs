//! `ObjectMeta` validation (apimachinery `ValidateObjectMeta` and `ValidateObjectMetaUpdate`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    ErrorList, FieldError, is_dns1123_subdomain, is_label_value, is_qualified_name, push_invalid,
};

/// Total size of annotation keys and values the server accepts.
const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// Validates the metadata of an object on create: name (DNS-1123 subdomain), generateName,
/// labels, annotations (keys and total size) and owner references.
pub fn validate_object_meta(meta: &ObjectMeta, errs: &mut ErrorList) {
    if let Some(generate) = meta.generate_name.as_deref().filter(|g| !g.is_empty()) {
        // A prefix may end with a dash: the generated suffix follows it.
        let masked = match generate.strip_suffix('-') {
            Some(head) => format!("{head}a"),
            None => generate.to_owned(),
        };
        push_invalid(
            errs,
            "metadata.generateName",
            generate,
            is_dns1123_subdomain(&masked),
        );
    }
    match meta.name.as_deref().unwrap_or("") {
        "" => errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )),
        name => push_invalid(errs, "metadata.name", name, is_dns1123_subdomain(name)),
    }
    if let Some(generation) = meta.generation.filter(|g| *g < 0) {
        errs.push(FieldError::invalid_int(
            "metadata.generation",
            generation,
            "must be greater than or equal to 0",
        ));
    }
    for (k, v) in meta.labels.iter().flatten() {
        push_invalid(errs, "metadata.labels", k, is_qualified_name(k));
        push_invalid(errs, "metadata.labels", v, is_label_value(v));
    }
    if let Some(annotations) = &meta.annotations {
        for k in annotations.keys() {
            push_invalid(
                errs,
                "metadata.annotations",
                k,
                is_qualified_name(&k.to_lowercase()),
            );
        }
        let total: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total > TOTAL_ANNOTATION_SIZE_LIMIT {
            errs.push(FieldError::too_long(
                "metadata.annotations",
                TOTAL_ANNOTATION_SIZE_LIMIT,
            ));
        }
    }
    let mut controllers = Vec::new();
    for (i, owner) in meta.owner_references.iter().flatten().enumerate() {
        let path = format!("metadata.ownerReferences[{i}]");
        let version = owner.api_version.rsplit('/').next().unwrap_or("");
        if version.is_empty() {
            errs.push(FieldError::invalid(
                format!("{path}.apiVersion"),
                &owner.api_version,
                "version must not be empty",
            ));
        }
        if owner.kind.is_empty() {
            errs.push(FieldError::invalid(
                format!("{path}.kind"),
                &owner.kind,
                "must not be empty",
            ));
        }
        if owner.name.is_empty() {
            errs.push(FieldError::invalid(
                format!("{path}.name"),
                &owner.name,
                "must not be empty",
            ));
        }
        if owner.uid.is_empty() {
            errs.push(FieldError::invalid(
                format!("{path}.uid"),
                &owner.uid,
                "must not be empty",
            ));
        }
        if owner.controller == Some(true) {
            controllers.push(format!("{}/{}", owner.kind, owner.name));
        }
    }
    if controllers.len() > 1 {
        errs.push(FieldError::invalid_raw(
            "metadata.ownerReferences",
            "[]v1.OwnerReference{...}",
            format!(
                "Only one reference can have Controller set to true. Found \"true\" in references for {} and {}",
                controllers[0], controllers[1]
            ),
        ));
    }
    for (i, f) in meta.finalizers.iter().flatten().enumerate() {
        push_invalid(
            errs,
            &format!("metadata.finalizers[{i}]"),
            f,
            is_qualified_name(f),
        );
    }
}

/// Validates metadata on update: the create rules plus immutability of the system fields.
pub fn validate_update_meta(new: &ObjectMeta, old: &ObjectMeta, errs: &mut ErrorList) {
    validate_object_meta(new, errs);
    if new.uid != old.uid {
        errs.push(FieldError::invalid(
            "metadata.uid",
            new.uid.clone().unwrap_or_default(),
            "field is immutable",
        ));
    }
    if new.creation_timestamp != old.creation_timestamp {
        let shown = new
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        errs.push(FieldError::invalid_raw(
            "metadata.creationTimestamp",
            shown,
            "field is immutable",
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn missing_name_is_required() {
        let mut errs = Vec::new();
        validate_object_meta(&ObjectMeta::default(), &mut errs);
        assert_eq!(
            errs[0].to_string(),
            "metadata.name: Required value: name or generateName is required"
        );
    }

    #[test]
    fn bad_label_key_and_value_are_both_reported_on_metadata_labels() {
        let mut m = meta("ok");
        m.labels = Some(BTreeMap::from([(
            "bad key".to_owned(),
            "bad value".to_owned(),
        )]));
        let mut errs = Vec::new();
        validate_object_meta(&m, &mut errs);
        assert_eq!(errs.len(), 2);
        assert!(errs.iter().all(|e| e.field == "metadata.labels"));
    }

    #[test]
    fn annotations_over_256k_are_too_long() {
        let mut m = meta("ok");
        m.annotations = Some(BTreeMap::from([(
            "a".to_owned(),
            "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT),
        )]));
        let mut errs = Vec::new();
        validate_object_meta(&m, &mut errs);
        assert_eq!(
            errs[0].to_string(),
            "metadata.annotations: Too long: must have at most 262144 bytes"
        );
    }
}
