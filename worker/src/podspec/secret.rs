//! The Secret that carries a build's token to its pod (`TokenDelivery::Secret`).
//!
//! The pod reads the token through an environment variable from this Secret, so the token is
//! never part of the pod spec that anyone with `get pods` can read. The Secret is owned by the
//! pod: Kubernetes deletes it with the pod. Its `Debug` output shows the token bytes, so a value
//! returned here must never be logged. Pure code.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::naming;
use crate::secret::Secret as SecretValue;

/// The key of the token in the Secret.
pub const TOKEN_SECRET_KEY: &str = "token";
/// The build container's environment variable holding the token (a shell identifier: the
/// `run.sh` command line refers to it as `"$SD_TOKEN"`).
pub const TOKEN_ENV: &str = "SD_TOKEN";

/// The Secret carrying the build token (TokenDelivery::Secret), owned by the pod.
///
/// `pod` is the pod as built by [`build_pod`](super::build_pod) (its name, namespace and
/// identity labels are copied); `pod_uid` is the uid the API server gave it, for the owner
/// reference that lets Kubernetes delete the Secret with the pod. The Secret is immutable.
pub fn token_secret(pod: &Pod, token: &SecretValue, pod_uid: &str) -> Secret {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let labels: BTreeMap<String, String> = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| {
            [
                naming::BUILD_LABEL,
                naming::MANAGED_BY_LABEL,
                naming::EXECUTOR_LABEL,
            ]
            .contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let annotations: BTreeMap<String, String> = pod
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() == naming::ANN_BUILD_ID)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(naming::token_secret_name(&pod_name)),
            namespace: pod.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod_name,
                uid: pod_uid.into(),
                controller: None,
                block_owner_deletion: None,
            }]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            TOKEN_SECRET_KEY.to_string(),
            ByteString(token.expose().as_bytes().to_vec()),
        )])),
        immutable: Some(true),
        type_: Some("Opaque".into()),
        string_data: None,
    }
}
