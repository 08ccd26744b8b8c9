//! The build pod: everything the Kubernetes executor creates for one build, field for field
//! compatible with Screwdriver's executor-k8s (docs/interface.md §6 Pods), plus the Secret that
//! carries the build token.
//!
//! Owns the shape of the pod: names, labels, annotations, scheduling, resources, containers,
//! the launcher command lines and volumes. It never talks to the network, never reads the clock
//! or the environment, and never panics: every message field is treated as hostile, so what
//! reaches a label, an annotation, a name or a shell word is sanitised, bounded or quoted here.
//!
//! # Layout
//!
//! - `resources`: CPU and memory tiers, the build timeout, the grace period.
//! - `metadata`: labels and annotations.
//! - `scheduling`: tolerations and node affinity.
//! - `containers`: the build container, the launcher init container, the DinD sidecar.
//! - `shell`: the `run.sh` command line and the launcher script, quoted.
//! - `volumes`: volumes and mounts, the disk cache.
//! - `options`: the operator's free-form options (`volumeMounts`, `buildSecrets`, ...).
//! - `secret`: the token Secret.
//!
//! # Differences from executor-k8s (improvements)
//!
//! - The pod name is deterministic ([`naming::pod_name`]), so a redelivery adopts its pod.
//! - CPU and memory are requests as well as limits; `ram: MAX` means `memory.max`.
//! - `activeDeadlineSeconds` enforces the build timeout.
//! - The token travels in a Secret by default, not on the command line.
//! - Every value in the build command line is shell-quoted.
//! - `type: DirectoryOrCreate` sits under `hostPath`, where Kubernetes reads it.
//! - The worker's own labels and annotations identify the pod's executor, build and attempt.

mod containers;
mod metadata;
mod options;
mod resources;
mod scheduling;
mod secret;
mod shell;
mod volumes;

#[cfg(test)]
mod behaviour_tests;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use options::check_options;
pub use secret::{TOKEN_ENV, TOKEN_SECRET_KEY, token_secret};

use k8s_openapi::api::core::v1::{LocalObjectReference, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::config::{EcosystemSettings, ExecutorConfig, ExecutorOptions, KubernetesOptions};
use crate::intake::{ResourceAnnotations, StartBuild};
use crate::naming;
use resources::{BuildTimeout, Cpu, Memory};
use volumes::DiskCache;

/// Everything a build pod is made from.
#[derive(Debug, Clone, Copy)]
pub struct PodInputs<'a> {
    /// The executor's name (label `buildcluster-worker/executor`).
    pub executor: &'a str,
    /// The executor's configuration block.
    pub config: &'a ExecutorConfig,
    /// The global ecosystem settings; `config.options.ecosystem` overrides them when set.
    pub ecosystem: &'a EcosystemSettings,
    /// The build, as decoded from its message.
    pub build: &'a StartBuild,
    /// The attempt of the message (annotation `buildcluster-worker/attempt`).
    pub attempt: u32,
    /// Message annotation keys copied onto the pod (`intake.podAnnotationAllowList`).
    pub pod_annotation_allow_list: &'a [String],
}

/// The values derived once from the inputs that several parts of the pod share.
#[derive(Debug)]
struct Plan<'a> {
    executor: &'a str,
    options: &'a ExecutorOptions,
    k8s: &'a KubernetesOptions,
    ecosystem: &'a EcosystemSettings,
    build: &'a StartBuild,
    attempt: u32,
    allow_list: &'a [String],
    /// The build's resource annotations, typed.
    wanted: ResourceAnnotations,
    /// `<prefix><buildId>`: the build container's name and the `sdbuild` label.
    build_name: String,
    pod_name: String,
    cpu: Cpu,
    memory: Memory,
    timeout: BuildTimeout,
    grace_seconds: i64,
    /// The DinD sidecar's size, when it runs.
    dind: Option<(Cpu, Memory)>,
    disk_cache: Option<DiskCache<'a>>,
}

impl<'a> Plan<'a> {
    fn new(inputs: &PodInputs<'a>) -> Self {
        let options = &inputs.config.options;
        let k8s = &options.kubernetes;
        let ecosystem = options.ecosystem.as_ref().unwrap_or(inputs.ecosystem);
        let build = inputs.build;
        let wanted = build.annotations.resources();
        let tables = &k8s.resources;
        let dind = (k8s.docker_feature_enabled && wanted.docker_enabled).then(|| {
            (
                Cpu::from_tier(wanted.docker_cpu, &tables.cpu),
                Memory::from_tier(wanted.docker_ram, &tables.memory),
            )
        });
        Self {
            executor: inputs.executor,
            options,
            k8s,
            ecosystem,
            build,
            attempt: inputs.attempt,
            allow_list: inputs.pod_annotation_allow_list,
            build_name: naming::build_label_value(&options.prefix, build.build_id),
            pod_name: naming::pod_name(&options.prefix, build.build_id),
            cpu: Cpu::from_tier(wanted.cpu, &tables.cpu),
            memory: Memory::from_tier(wanted.ram, &tables.memory),
            timeout: BuildTimeout::new(
                wanted.timeout_minutes,
                k8s.build_timeout,
                k8s.max_build_timeout,
            ),
            grace_seconds: resources::grace_period_seconds(
                k8s.termination_grace_period_seconds,
                wanted.termination_grace_period_seconds,
            ),
            dind,
            disk_cache: DiskCache::of(&ecosystem.cache, options, build),
            wanted,
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The build pod of `inputs.build` on executor `inputs.executor`.
///
/// Deterministic: the same inputs give the same pod, name included. With
/// `TokenDelivery::Secret` (the default) the pod expects the Secret made by [`token_secret`].
pub fn build_pod(inputs: &PodInputs<'_>) -> Pod {
    let plan = Plan::new(inputs);
    let k8s = plan.k8s;
    let required = scheduling::required_selectors(
        &k8s.node_selectors,
        &k8s.resources.disk.speed,
        plan.wanted.disk_speed.as_deref(),
    );
    let placement = scheduling::scheduling(&required, &k8s.preferred_node_selectors);
    let mut containers = vec![containers::build_container(&plan)];
    containers.extend(containers::dind_container(&plan));
    Pod {
        metadata: ObjectMeta {
            name: Some(plan.pod_name.clone()),
            namespace: non_empty(&k8s.jobs_namespace),
            labels: Some(metadata::labels(&plan)),
            annotations: Some(metadata::annotations(&plan)),
            ..Default::default()
        },
        spec: Some(PodSpec {
            runtime_class_name: non_empty(&k8s.runtime_class),
            service_account_name: non_empty(&k8s.service_account),
            automount_service_account_token: Some(k8s.automount_service_account_token),
            termination_grace_period_seconds: Some(plan.grace_seconds),
            active_deadline_seconds: Some(plan.timeout.deadline_seconds()),
            restart_policy: Some("Never".into()),
            dns_policy: non_empty(&k8s.dns_policy),
            image_pull_secrets: non_empty(&k8s.image_pull_secret_name)
                .map(|name| vec![LocalObjectReference { name }]),
            tolerations: placement.tolerations,
            affinity: placement.affinity,
            init_containers: Some(vec![containers::launcher_container(&plan)]),
            containers,
            volumes: Some(volumes::volumes(&plan)),
            ..Default::default()
        }),
        status: None,
    }
}
