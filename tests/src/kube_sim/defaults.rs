//! What the API server adds to a pod before validating it: defaulting (`SetDefaults_*`) and
//! the mutating admission plugins every cluster runs (ServiceAccount, Priority,
//! DefaultTolerationSeconds), and the QoS class of the initial status.
//!
//! Pure transformations of a typed pod; it never validates and never stores.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapProjection, Container, DownwardAPIProjection, DownwardAPIVolumeFile, KeyToPath,
    ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, PodStatus, ProjectedVolumeSource,
    ServiceAccountTokenProjection, Toleration, Volume, VolumeMount, VolumeProjection,
};

use super::quantity::Quantity;

const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Applies the defaults every decoded pod gets (`SetDefaults_Pod` and friends).
pub fn default_pod(pod: &mut Pod) {
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.restart_policy
        .get_or_insert_with(|| "Always".to_owned());
    spec.dns_policy
        .get_or_insert_with(|| "ClusterFirst".to_owned());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".to_owned());
    spec.security_context
        .get_or_insert_with(PodSecurityContext::default);
    spec.enable_service_links.get_or_insert(true);
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        default_container(c);
    }
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(s) = v.secret.as_mut() {
            s.default_mode.get_or_insert(0o644);
        }
        if let Some(c) = v.config_map.as_mut() {
            c.default_mode.get_or_insert(0o644);
        }
    }
}

/// The mutating admission every cluster runs on pod create: ServiceAccount (the token
/// volume `kube-api-access-<suffix>`), Priority and DefaultTolerationSeconds.
pub fn admit_pod(pod: &mut Pod, suffix: &str) {
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    // ServiceAccount admission.
    let sa = spec
        .service_account_name
        .get_or_insert_with(|| "default".to_owned())
        .clone();
    spec.service_account = Some(sa);
    if spec.automount_service_account_token != Some(false) {
        add_token_volume(spec, suffix);
    }
    // Priority admission.
    spec.priority.get_or_insert(0);
    spec.preemption_policy
        .get_or_insert_with(|| "PreemptLowerPriority".to_owned());
    // DefaultTolerationSeconds admission.
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let covered = tolerations.iter().any(|t| {
            (t.key.as_deref() == Some(key)
                || (t.key.is_none() && t.operator.as_deref() == Some("Exists")))
                && matches!(t.effect.as_deref(), None | Some("" | "NoExecute"))
        });
        if !covered {
            tolerations.push(Toleration {
                key: Some(key.to_owned()),
                operator: Some("Exists".to_owned()),
                effect: Some("NoExecute".to_owned()),
                toleration_seconds: Some(300),
                value: None,
            });
        }
    }
}

fn default_container(c: &mut Container) {
    c.termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".to_owned());
    c.termination_message_policy
        .get_or_insert_with(|| "File".to_owned());
    if c.image_pull_policy.is_none() {
        let image = c.image.as_deref().unwrap_or("");
        c.image_pull_policy = Some(default_pull_policy(image).to_owned());
    }
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".to_owned());
    }
    // The API server answers `resources: {}` for a container that names none.
    c.resources.get_or_insert_with(Default::default);
    // Limits without requests: the requests default to the limits.
    if let Some(r) = c.resources.as_mut()
        && let Some(limits) = r.limits.clone()
    {
        let requests = r.requests.get_or_insert_with(BTreeMap::new);
        for (k, v) in limits {
            requests.entry(k).or_insert(v);
        }
    }
}

/// `Always` for `:latest` or untagged images, else `IfNotPresent`.
pub fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn add_token_volume(spec: &mut PodSpec, suffix: &str) {
    let has_mount = |c: &Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == SA_MOUNT_PATH)
    };
    let name = format!("kube-api-access-{suffix}");
    let mount = VolumeMount {
        name: name.clone(),
        mount_path: SA_MOUNT_PATH.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let mut added = false;
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        if !has_mount(c) {
            c.volume_mounts
                .get_or_insert_with(Vec::new)
                .push(mount.clone());
            added = true;
        }
    }
    if !added {
        return;
    }
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name,
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o644),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        expiration_seconds: Some(3607),
                        path: "token".to_owned(),
                        audience: None,
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".to_owned(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".to_owned(),
                            path: "ca.crt".to_owned(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".to_owned(),
                            field_ref: Some(ObjectFieldSelector {
                                api_version: Some("v1".to_owned()),
                                field_path: "metadata.namespace".to_owned(),
                            }),
                            mode: None,
                            resource_field_ref: None,
                        }]),
                    }),
                    ..VolumeProjection::default()
                },
            ]),
        }),
        ..Volume::default()
    });
}

/// The QoS class the API server puts in the initial status.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let containers: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let (req, lim) = match &c.resources {
            Some(r) => (
                r.requests.clone().unwrap_or_default(),
                r.limits.clone().unwrap_or_default(),
            ),
            None => (BTreeMap::new(), BTreeMap::new()),
        };
        let nonzero =
            |m: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
             k: &str| {
                m.get(k)
                    .and_then(|q| Quantity::parse(&q.0).ok())
                    .is_some_and(|q| q.nanos() != 0)
            };
        for k in ["cpu", "memory"] {
            if nonzero(&req, k) || nonzero(&lim, k) {
                any = true;
            }
            let equal = match (req.get(k), lim.get(k)) {
                (Some(r), Some(l)) => Quantity::parse(&r.0).ok() == Quantity::parse(&l.0).ok(),
                (None, Some(_)) => true,
                _ => false,
            };
            if !nonzero(&lim, k) || !equal {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Rewrites every resource quantity into its canonical form, as storage does.
pub fn canonicalize_quantities(spec: &mut PodSpec) {
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        if let Some(r) = c.resources.as_mut() {
            for list in [r.limits.as_mut(), r.requests.as_mut()]
                .into_iter()
                .flatten()
            {
                for q in list.values_mut() {
                    if let Ok(parsed) = Quantity::parse(&q.0) {
                        q.0 = parsed.canonical();
                    }
                }
            }
        }
    }
}

/// The status a pod gets on create.
pub fn initial_status(spec: &PodSpec) -> PodStatus {
    PodStatus {
        phase: Some("Pending".to_owned()),
        qos_class: Some(qos_class(spec).to_owned()),
        ..PodStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as Q;

    use super::*;

    fn container(limits: &[(&str, &str)], requests: &[(&str, &str)]) -> Container {
        let map = |pairs: &[(&str, &str)]| {
            (!pairs.is_empty()).then(|| {
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Q((*v).to_owned())))
                    .collect()
            })
        };
        Container {
            name: "c".into(),
            image: Some("node:22".into()),
            resources: Some(ResourceRequirements {
                limits: map(limits),
                requests: map(requests),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        }
    }

    #[test]
    fn pull_policy_depends_on_the_tag() {
        assert_eq!(default_pull_policy("node"), "Always");
        assert_eq!(default_pull_policy("node:latest"), "Always");
        assert_eq!(default_pull_policy("node:22"), "IfNotPresent");
        assert_eq!(default_pull_policy("registry:5000/node"), "Always");
        assert_eq!(default_pull_policy("node@sha256:abc"), "IfNotPresent");
    }

    #[test]
    fn qos_classes() {
        let spec = |c: Container| PodSpec {
            containers: vec![c],
            ..PodSpec::default()
        };
        assert_eq!(qos_class(&spec(container(&[], &[]))), "BestEffort");
        assert_eq!(
            qos_class(&spec(container(&[("cpu", "2"), ("memory", "2Gi")], &[]))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&spec(container(
                &[("cpu", "2"), ("memory", "2Gi")],
                &[("cpu", "2000m"), ("memory", "2Gi")]
            ))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&spec(container(&[("cpu", "2")], &[("cpu", "1")]))),
            "Burstable"
        );
    }

    #[test]
    fn defaults_fill_what_the_client_left_out() {
        let mut pod = Pod {
            spec: Some(PodSpec {
                containers: vec![container(&[("cpu", "1")], &[])],
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        default_pod(&mut pod);
        admit_pod(&mut pod, "abcde");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(spec.service_account_name.as_deref(), Some("default"));
        assert_eq!(spec.tolerations.unwrap().len(), 2);
        let c = &spec.containers[0];
        assert_eq!(
            c.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0,
            "1"
        );
        assert_eq!(
            c.volume_mounts.as_ref().unwrap()[0].name,
            "kube-api-access-abcde"
        );
        assert_eq!(spec.volumes.unwrap()[0].name, "kube-api-access-abcde");
    }
}
