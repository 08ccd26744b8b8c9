//! Test fixtures of the build pod: the example build of docs/interface.md §3, executors, and
//! the named scenarios that the snapshot tests record and the dump writes out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use serde_json::{Value, json};

use super::*;
use crate::config::TokenDelivery;
use crate::intake::{Annotations, BuildId};
use crate::secret::Secret as SecretValue;

// === fixtures ===

/// The build of the example message of docs/interface.md §3.
pub(super) fn example_build() -> StartBuild {
    StartBuild {
        build_id: BuildId(987654),
        job_id: Some(4321),
        job_name: Some("main".into()),
        event_id: Some(123456),
        pipeline_id: Some(1234),
        pipeline_name: Some("screwdriver-cd/example".into()),
        scm_context: Some("github:github.com".into()),
        container: "node:22".into(),
        api_uri: "https://api.screwdriver.cd".into(),
        token: SecretValue::new("eyJhbGciOiJSUzI1NiJ9.build-token"),
        annotations: annotations(json!({
            "screwdriver.cd/cpu": "HIGH",
            "screwdriver.cd/ram": 8,
            "screwdriver.cd/timeout": 60,
            "screwdriver.cd/executor": "k8s"
        })),
        is_pr: false,
        pr_num: None,
        pr_parent_job_id: None,
        template_name: Some("nodejs".into()),
        template_version: Some("2.0.1".into()),
    }
}

pub(super) fn annotations(v: Value) -> Annotations {
    Annotations::new(serde_json::from_value(v).unwrap_or_default())
}

/// A plain runc executor with the documented defaults (docs/interface.md §2.4).
pub(super) fn runc_executor() -> ExecutorConfig {
    let mut config = ExecutorConfig::default();
    config.options.kubernetes.host = "https://10.0.0.1:6443".into();
    config.options.kubernetes.jobs_namespace = "builds".into();
    config
}

pub(super) fn pod(executor: &ExecutorConfig, build: &StartBuild, allow: &[String]) -> Pod {
    build_pod(&PodInputs {
        executor: "k8s",
        config: executor,
        ecosystem: &EcosystemSettings::default(),
        build,
        attempt: 1,
        pod_annotation_allow_list: allow,
    })
}

pub(super) fn with_annotations(v: Value) -> StartBuild {
    StartBuild {
        annotations: annotations(v),
        ..example_build()
    }
}

pub(super) fn spec(pod: &Pod) -> &PodSpec {
    pod.spec.as_ref().expect("spec")
}

pub(super) fn build_container(pod: &Pod) -> &Container {
    &spec(pod).containers[0]
}

pub(super) fn env<'a>(pod: &'a Pod, name: &str) -> Option<&'a EnvVar> {
    build_container(pod)
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
}

pub(super) fn limits(c: &Container) -> (String, String) {
    let l = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .expect("limits");
    (l["cpu"].0.clone(), l["memory"].0.clone())
}

pub(super) fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

pub(super) fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

// === snapshot scenarios ===

/// Every snapshot scenario; the dump test writes each of them.
pub(super) const SCENARIOS: &[&str] = &[
    "runc",
    "kata",
    "tier_micro",
    "tier_high",
    "tier_turbo",
    "integers",
    "integers_above_max",
    "timeout_above_max",
    "node_selectors",
    "pr_disk_cache",
    "every_option",
];

pub(super) fn kata_executor() -> ExecutorConfig {
    let mut config = runc_executor();
    config.options.kubernetes.runtime_class = "kata".into();
    config
}

pub(super) fn disk_cache_ecosystem() -> EcosystemSettings {
    let mut eco = EcosystemSettings::default();
    eco.cache.strategy = "disk".into();
    eco.cache.path = "/mnt/sdcache".into();
    eco.cache.compress = true;
    eco
}

pub(super) fn every_option_executor() -> ExecutorConfig {
    let mut config = runc_executor();
    config.options.prefix = "beta-".into();
    config.options.launch_version = "v6.0.200".into();
    let k = &mut config.options.kubernetes;
    k.privileged = true;
    k.docker_feature_enabled = true;
    k.automount_service_account_token = true;
    k.service_account = "builder".into();
    k.image_pull_policy = "IfNotPresent".into();
    k.image_pull_secret_name = "registry-creds".into();
    k.dns_policy = "Default".into();
    k.token_delivery = TokenDelivery::Args;
    k.resources.disk.speed = "screwdriver.cd/diskSpeed".into();
    k.node_selectors = BTreeMap::from([("dedicated".into(), "builds".into())]);
    k.preferred_node_selectors = BTreeMap::from([("zone".into(), "us-east-1a".into())]);
    k.pod_labels = BTreeMap::from([
        ("team".into(), "ci/platform".into()),
        ("sdbuild".into(), "hijacked".into()),
    ]);
    k.annotations =
        BTreeMap::from([("io.kubernetes.cri.untrusted-workload".into(), "true".into())]);
    k.volume_mounts = json!([
        {"name": "kvm", "mountPath": "/dev/kvm", "path": "/dev/kvm", "type": "CharDevice", "readOnly": false},
        {"name": "certs", "mountPath": "/etc/ssl/certs", "path": "/etc/ssl/certs", "readOnly": true}
    ]);
    k.build_secrets = json!([
        {"secret_env": "SSHCA", "secret_name": "sd-ssh-ca", "secret_key": "private"}
    ]);
    k.build_secrets_file = json!([
        {"name": "npmrc", "mountPath": "/etc/npmrc", "secretName": "sd-npmrc", "readOnly": true}
    ]);
    k.lifecycle_hooks = json!({"preStop": {"exec": {"command": ["/bin/sh", "-c", "sleep 5"]}}});
    config
}

pub(super) fn every_option_build() -> StartBuild {
    StartBuild {
        annotations: annotations(json!({
            "screwdriver.cd/cpu": "TURBO",
            "screwdriver.cd/ram": "HIGH",
            "screwdriver.cd/disk": "HIGH",
            "screwdriver.cd/diskSpeed": "FAST",
            "screwdriver.cd/timeout": 45,
            "screwdriver.cd/terminationGracePeriodSeconds": 120,
            "screwdriver.cd/dockerEnabled": true,
            "screwdriver.cd/dockerCpu": "HIGH",
            "screwdriver.cd/dockerRam": "MICRO",
            "example.com/cost-center": "build-42",
            "example.com/not-allowed": "dropped"
        })),
        ..example_build()
    }
}

/// The annotations of the scenarios that differ from the example only by them.
fn scenario_annotations(name: &str) -> Option<serde_json::Value> {
    Some(match name {
        "tier_micro" => json!({"screwdriver.cd/cpu": "MICRO", "screwdriver.cd/ram": "MICRO"}),
        "tier_high" => json!({"screwdriver.cd/cpu": "HIGH", "screwdriver.cd/ram": "HIGH"}),
        "tier_turbo" => json!({"screwdriver.cd/cpu": "TURBO", "screwdriver.cd/ram": "TURBO"}),
        "integers" => json!({"screwdriver.cd/cpu": 4, "screwdriver.cd/ram": 6}),
        "integers_above_max" => json!({"screwdriver.cd/cpu": 64, "screwdriver.cd/ram": 100}),
        "timeout_above_max" => json!({"screwdriver.cd/timeout": 600}),
        _ => return None,
    })
}

pub(super) fn scenario(name: &str) -> Pod {
    let none: &[String] = &[];
    if let Some(annotations) = scenario_annotations(name) {
        return pod(&runc_executor(), &with_annotations(annotations), none);
    }
    match name {
        "runc" => pod(&runc_executor(), &example_build(), none),
        "kata" => pod(&kata_executor(), &example_build(), none),
        "node_selectors" => {
            let mut config = runc_executor();
            let k = &mut config.options.kubernetes;
            k.node_selectors = BTreeMap::from([
                ("dedicated".into(), "screwdriver".into()),
                ("node.kubernetes.io/pool".into(), "builds".into()),
            ]);
            k.preferred_node_selectors = BTreeMap::from([
                ("topology.kubernetes.io/zone".into(), "us-east-1a".into()),
                ("disktype".into(), "ssd".into()),
            ]);
            pod(&config, &example_build(), none)
        }
        "pr_disk_cache" => {
            let build = StartBuild {
                job_id: Some(5555),
                job_name: Some("PR-42:main".into()),
                is_pr: true,
                pr_num: Some(42),
                pr_parent_job_id: Some(4321),
                ..example_build()
            };
            build_pod(&PodInputs {
                executor: "k8s",
                config: &runc_executor(),
                ecosystem: &disk_cache_ecosystem(),
                build: &build,
                attempt: 2,
                pod_annotation_allow_list: none,
            })
        }
        "every_option" => build_pod(&PodInputs {
            executor: "k8s-sandbox",
            config: &every_option_executor(),
            ecosystem: &disk_cache_ecosystem(),
            build: &every_option_build(),
            attempt: 3,
            pod_annotation_allow_list: &["example.com/cost-center".to_string()],
        }),
        other => panic!("no scenario {other}"),
    }
}

pub(super) fn token_secret_example() -> k8s_openapi::api::core::v1::Secret {
    let build = example_build();
    token_secret(
        &scenario("runc"),
        &build.token,
        "7b0e2f2a-9c1d-4e5f-8a6b-0c1d2e3f4a5b",
    )
}
