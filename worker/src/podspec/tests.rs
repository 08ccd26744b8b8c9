//! Snapshot and behaviour tests of the build pod, and the pod dump for `kubernetes-validate`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use serde_json::{Value, json};

use super::*;
use crate::config::{Resources, TokenDelivery};
use crate::intake::{Annotations, BuildId};
use crate::secret::Secret as SecretValue;

// === fixtures ===

/// The build of the contract's example message.
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

/// A plain runc executor with the contract's defaults.
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

fn with_annotations(v: Value) -> StartBuild {
    StartBuild {
        annotations: annotations(v),
        ..example_build()
    }
}

fn spec(pod: &Pod) -> &PodSpec {
    pod.spec.as_ref().expect("spec")
}

fn build_container(pod: &Pod) -> &Container {
    &spec(pod).containers[0]
}

fn env<'a>(pod: &'a Pod, name: &str) -> Option<&'a EnvVar> {
    build_container(pod)
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
}

fn limits(c: &Container) -> (String, String) {
    let l = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .expect("limits");
    (l["cpu"].0.clone(), l["memory"].0.clone())
}

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

// === snapshot scenarios ===

/// Every snapshot scenario; the dump test writes each of them.
const SCENARIOS: &[&str] = &[
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

fn kata_executor() -> ExecutorConfig {
    let mut config = runc_executor();
    config.options.kubernetes.runtime_class = "kata".into();
    config
}

fn disk_cache_ecosystem() -> EcosystemSettings {
    let mut eco = EcosystemSettings::default();
    eco.cache.strategy = "disk".into();
    eco.cache.path = "/mnt/sdcache".into();
    eco.cache.compress = true;
    eco
}

fn every_option_executor() -> ExecutorConfig {
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

fn every_option_build() -> StartBuild {
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

fn scenario(name: &str) -> Pod {
    let none: &[String] = &[];
    match name {
        "runc" => pod(&runc_executor(), &example_build(), none),
        "kata" => pod(&kata_executor(), &example_build(), none),
        "tier_micro" => pod(
            &runc_executor(),
            &with_annotations(
                json!({"screwdriver.cd/cpu": "MICRO", "screwdriver.cd/ram": "MICRO"}),
            ),
            none,
        ),
        "tier_high" => pod(
            &runc_executor(),
            &with_annotations(json!({"screwdriver.cd/cpu": "HIGH", "screwdriver.cd/ram": "HIGH"})),
            none,
        ),
        "tier_turbo" => pod(
            &runc_executor(),
            &with_annotations(
                json!({"screwdriver.cd/cpu": "TURBO", "screwdriver.cd/ram": "TURBO"}),
            ),
            none,
        ),
        "integers" => pod(
            &runc_executor(),
            &with_annotations(json!({"screwdriver.cd/cpu": 4, "screwdriver.cd/ram": 6})),
            none,
        ),
        "integers_above_max" => pod(
            &runc_executor(),
            &with_annotations(json!({"screwdriver.cd/cpu": 64, "screwdriver.cd/ram": 100})),
            none,
        ),
        "timeout_above_max" => pod(
            &runc_executor(),
            &with_annotations(json!({"screwdriver.cd/timeout": 600})),
            none,
        ),
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

fn token_secret_example() -> k8s_openapi::api::core::v1::Secret {
    let build = example_build();
    token_secret(
        &scenario("runc"),
        &build.token,
        "7b0e2f2a-9c1d-4e5f-8a6b-0c1d2e3f4a5b",
    )
}

#[test]
fn snapshot_runc() {
    insta::assert_json_snapshot!("runc", scenario("runc"));
}

#[test]
fn snapshot_kata() {
    insta::assert_json_snapshot!("kata", scenario("kata"));
}

#[test]
fn snapshot_tiers() {
    for name in ["tier_micro", "tier_high", "tier_turbo"] {
        insta::assert_json_snapshot!(name, scenario(name));
    }
}

#[test]
fn snapshot_integers() {
    insta::assert_json_snapshot!("integers", scenario("integers"));
    insta::assert_json_snapshot!("integers_above_max", scenario("integers_above_max"));
}

#[test]
fn snapshot_timeout_above_max() {
    insta::assert_json_snapshot!("timeout_above_max", scenario("timeout_above_max"));
}

#[test]
fn snapshot_node_selectors() {
    insta::assert_json_snapshot!("node_selectors", scenario("node_selectors"));
}

#[test]
fn snapshot_pr_disk_cache() {
    insta::assert_json_snapshot!("pr_disk_cache", scenario("pr_disk_cache"));
}

#[test]
fn snapshot_every_option() {
    insta::assert_json_snapshot!("every_option", scenario("every_option"));
}

#[test]
fn snapshot_token_secret() {
    insta::assert_json_snapshot!("token_secret", token_secret_example());
}

/// Writes every snapshot object as JSON into `$BCW_DUMP_PODS_DIR` when it is set, for the test
/// script's `kubernetes-validate --strict`. Always checks that each one survives a JSON round
/// trip unchanged (what the API client will send is what was built).
#[test]
fn dump_pods_for_kubernetes_validate() {
    let mut objects: Vec<(String, Value)> = Vec::new();
    for name in SCENARIOS {
        let pod = scenario(name);
        let value = serde_json::to_value(&pod).expect("pod serialises");
        let back: Pod = serde_json::from_value(value.clone()).expect("pod deserialises");
        assert_eq!(back, pod, "{name} changes in a JSON round trip");
        objects.push((format!("pod-{name}"), value));
    }
    let secret = token_secret_example();
    let value = serde_json::to_value(&secret).expect("secret serialises");
    assert_eq!(
        serde_json::from_value::<k8s_openapi::api::core::v1::Secret>(value.clone()).unwrap(),
        secret
    );
    objects.push(("secret-token".into(), value));
    if let Ok(dir) = std::env::var("BCW_DUMP_PODS_DIR") {
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir).expect("create dump dir");
        for (name, value) in &objects {
            let text = serde_json::to_string_pretty(value).expect("json");
            std::fs::write(dir.join(format!("{name}.json")), text).expect("write dump");
        }
    }
}

// === behaviour ===

#[test]
fn name_labels_and_namespace_identify_the_build() {
    let p = scenario("runc");
    assert_eq!(
        p.metadata.name.as_deref(),
        Some(naming::pod_name("", BuildId(987654)).as_str())
    );
    assert_eq!(p, scenario("runc"), "deterministic");
    assert_eq!(p.metadata.namespace.as_deref(), Some("builds"));
    assert_eq!(label(&p, "app"), Some("screwdriver"));
    assert_eq!(label(&p, "tier"), Some("builds"));
    assert_eq!(label(&p, "sdbuild"), Some("987654"));
    assert_eq!(
        label(&p, naming::MANAGED_BY_LABEL),
        Some("buildcluster-worker")
    );
    assert_eq!(label(&p, naming::EXECUTOR_LABEL), Some("k8s"));
    assert_eq!(
        label(&p, "screwdriver.cd/pipeline"),
        Some("screwdriver-cd.example")
    );
    assert_eq!(label(&p, "screwdriver.cd/cpu"), Some("6"));
    assert_eq!(label(&p, "screwdriver.cd/memory"), Some("8"));
    assert_eq!(label(&p, "screwdriver.cd/disk"), Some("LOW"));
    assert_eq!(label(&p, "screwdriver.cd/pr_number"), None);
    assert_eq!(build_container(&p).name, "987654");
    assert_eq!(
        spec(&p).init_containers.as_ref().unwrap()[0].name,
        "launcher-987654"
    );
}

#[test]
fn pod_spec_basics() {
    let p = scenario("runc");
    let s = spec(&p);
    assert_eq!(s.restart_policy.as_deref(), Some("Never"));
    assert_eq!(s.runtime_class_name, None);
    assert_eq!(s.automount_service_account_token, Some(false));
    assert_eq!(s.termination_grace_period_seconds, Some(60));
    assert_eq!(s.active_deadline_seconds, Some(3600));
    assert_eq!(s.dns_policy.as_deref(), Some("ClusterFirst"));
    assert_eq!(s.image_pull_secrets, None);
    assert_eq!(s.node_selector, None);
    assert_eq!(s.tolerations, None);
    assert_eq!(s.affinity, None);
    assert_eq!(s.containers.len(), 1);
    assert_eq!(
        spec(&scenario("kata")).runtime_class_name.as_deref(),
        Some("kata")
    );
}

#[test]
fn resources_are_requests_and_limits_from_the_tiers() {
    let cases = [
        ("tier_micro", "500m", "1Gi"),
        ("tier_high", "6000m", "12Gi"),
        ("tier_turbo", "12000m", "16Gi"),
        ("integers", "4000m", "6Gi"),
        ("integers_above_max", "12000m", "16Gi"),
    ];
    for (name, cpu, memory) in cases {
        let p = scenario(name);
        let c = build_container(&p);
        assert_eq!(limits(c), (cpu.to_string(), memory.to_string()), "{name}");
        let r = c.resources.as_ref().unwrap();
        assert_eq!(r.requests, r.limits, "{name}");
    }
    // No annotation: LOW.
    let p = pod(&runc_executor(), &with_annotations(json!({})), &[]);
    assert_eq!(limits(build_container(&p)), ("2000m".into(), "2Gi".into()));
}

#[test]
fn timeout_above_max_is_capped_in_deadline_and_command() {
    let p = scenario("timeout_above_max");
    assert_eq!(spec(&p).active_deadline_seconds, Some(120 * 60));
    assert!(build_container(&p).args.as_ref().unwrap()[0].contains(" '120' '987654' "));
    let default = pod(&runc_executor(), &with_annotations(json!({})), &[]);
    assert_eq!(spec(&default).active_deadline_seconds, Some(90 * 60));
}

#[test]
fn secret_delivery_keeps_the_token_out_of_the_pod() {
    let build = example_build();
    let p = pod(&runc_executor(), &build, &[]);
    let text = serde_json::to_string(&p).unwrap();
    assert!(!text.contains(build.token.expose()));
    let var = env(&p, TOKEN_ENV).expect("SD_TOKEN");
    let secret_ref = var
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("secretKeyRef");
    let pod_name = p.metadata.name.clone().unwrap();
    assert_eq!(secret_ref.name, naming::token_secret_name(&pod_name));
    assert_eq!(secret_ref.key, TOKEN_SECRET_KEY);
    assert_eq!(
        annotation(&p, naming::ANN_TOKEN_SECRET),
        Some(naming::token_secret_name(&pod_name).as_str())
    );
    let args = &build_container(&p).args.as_ref().unwrap()[0];
    let env_map = BTreeMap::from([("SD_TOKEN", "the-token")]);
    let words = shell::split_words(args, &env_map).unwrap();
    assert_eq!(words[0], "/opt/sd/run.sh");
    assert_eq!(words[1], "the-token");
}

#[test]
fn args_delivery_puts_the_token_on_the_command_line() {
    let mut config = runc_executor();
    config.options.kubernetes.token_delivery = TokenDelivery::Args;
    let build = example_build();
    let p = pod(&config, &build, &[]);
    assert!(env(&p, TOKEN_ENV).is_none());
    assert_eq!(annotation(&p, naming::ANN_TOKEN_SECRET), None);
    let args = &build_container(&p).args.as_ref().unwrap()[0];
    let words = shell::split_words(args, &BTreeMap::new()).unwrap();
    let eco = EcosystemSettings::default();
    assert_eq!(
        words,
        [
            "/opt/sd/run.sh",
            build.token.expose(),
            eco.api.as_str(),
            eco.store.as_str(),
            "60",
            "987654",
            eco.ui.as_str()
        ]
    );
}

#[test]
fn worker_annotations_describe_the_attempt() {
    let p = scenario("pr_disk_cache");
    assert_eq!(annotation(&p, naming::ANN_BUILD_ID), Some("987654"));
    assert_eq!(annotation(&p, naming::ANN_JOB_ID), Some("5555"));
    assert_eq!(annotation(&p, naming::ANN_ATTEMPT), Some("2"));
    assert_eq!(
        annotation(&p, naming::ANN_API_URI),
        Some("https://api.screwdriver.cd")
    );
}

#[test]
fn message_annotations_need_the_allow_list_and_cannot_touch_the_worker_domain() {
    let long = "x".repeat(10_000);
    let build = with_annotations(json!({
        "example.com/team": "ci",
        "example.com/size": {"a": 1},
        "example.com/long": long,
        "example.com/secret": "not listed",
        "buildcluster-worker/attempt": "99",
        "bad key!": "x"
    }));
    let allow: Vec<String> = [
        "example.com/team",
        "example.com/size",
        "example.com/long",
        "buildcluster-worker/attempt",
        "bad key!",
    ]
    .map(String::from)
    .to_vec();
    let p = pod(&runc_executor(), &build, &allow);
    assert_eq!(annotation(&p, "example.com/team"), Some("ci"));
    assert_eq!(annotation(&p, "example.com/size"), Some("{\"a\":1}"));
    assert_eq!(
        annotation(&p, "example.com/long").map(str::len),
        Some(metadata::MAX_MESSAGE_ANNOTATION_VALUE)
    );
    assert_eq!(annotation(&p, "example.com/secret"), None);
    assert_eq!(annotation(&p, naming::ANN_ATTEMPT), Some("1"));
    assert_eq!(annotation(&p, "bad key!"), None);
}

#[test]
fn operator_labels_and_annotations_win_except_identity() {
    let p = scenario("every_option");
    assert_eq!(label(&p, "team"), Some("ci.platform"));
    assert_eq!(label(&p, "sdbuild"), Some("beta-987654"));
    assert_eq!(label(&p, naming::EXECUTOR_LABEL), Some("k8s-sandbox"));
    assert_eq!(
        annotation(&p, "io.kubernetes.cri.untrusted-workload"),
        Some("true")
    );
    assert_eq!(annotation(&p, "example.com/cost-center"), Some("build-42"));
    assert_eq!(annotation(&p, "example.com/not-allowed"), None);
}

#[test]
fn scheduling_takes_disk_speed_and_selectors() {
    let p = scenario("every_option");
    let s = spec(&p);
    let tolerations = s.tolerations.as_ref().unwrap();
    let keys: Vec<_> = tolerations.iter().map(|t| t.key.clone().unwrap()).collect();
    assert_eq!(keys, ["screwdriver.cd/diskSpeed", "dedicated"]);
    assert_eq!(tolerations[0].value.as_deref(), Some("fast"));
    let node = s.affinity.as_ref().unwrap().node_affinity.as_ref().unwrap();
    let required = node
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap();
    assert_eq!(required.node_selector_terms.len(), 1);
    assert_eq!(
        required.node_selector_terms[0]
            .match_expressions
            .as_ref()
            .unwrap()
            .len(),
        2
    );
    let preferred = node
        .preferred_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap();
    assert_eq!(preferred[0].weight, 100);
}

#[test]
fn dind_needs_the_feature_and_a_true_annotation() {
    let mut config = runc_executor();
    let on = with_annotations(json!({"screwdriver.cd/dockerEnabled": true}));
    let off = with_annotations(json!({"screwdriver.cd/dockerEnabled": "false"}));
    assert_eq!(spec(&pod(&config, &on, &[])).containers.len(), 1);
    config.options.kubernetes.docker_feature_enabled = true;
    assert_eq!(spec(&pod(&config, &off, &[])).containers.len(), 1);
    let p = pod(&config, &on, &[]);
    let s = spec(&p);
    assert_eq!(s.containers.len(), 2);
    let dind = &s.containers[1];
    assert_eq!(dind.name, "dind");
    assert_eq!(dind.image.as_deref(), Some("docker:20.10-dind"));
    assert_eq!(
        dind.security_context.as_ref().unwrap().privileged,
        Some(true)
    );
    assert_eq!(limits(dind), ("2000m".into(), "2Gi".into()));
    assert_eq!(
        env(&p, "DOCKER_HOST").and_then(|e| e.value.as_deref()),
        Some("tcp://localhost:2376")
    );
    let names: Vec<_> = s
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert!(names.contains(&"dind-storage"));
}

#[test]
fn pr_jobs_read_the_parent_job_cache_read_only() {
    let p = scenario("pr_disk_cache");
    let volumes = spec(&p).volumes.clone().unwrap();
    let path = |name: &str| {
        volumes
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.host_path.clone())
            .map(|h| (h.path, h.type_))
    };
    let dir = Some("DirectoryOrCreate".to_string());
    assert_eq!(
        path("sd-pipeline-cache"),
        Some(("/mnt/sdcache/pipelines/1234".into(), dir.clone()))
    );
    assert_eq!(
        path("sd-job-cache"),
        Some(("/mnt/sdcache/jobs/1234/4321".into(), dir.clone()))
    );
    assert_eq!(
        path("sd-event-cache"),
        Some(("/mnt/sdcache/events/1234/123456".into(), dir.clone()))
    );
    assert_eq!(
        path("screwdriver"),
        Some(("/opt/screwdriver/sdlauncher/stable".into(), dir))
    );
    let mounts = build_container(&p).volume_mounts.clone().unwrap();
    let ro = |name: &str| {
        mounts
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.read_only == Some(true))
    };
    assert_eq!(ro("sd-pipeline-cache"), Some(true));
    assert_eq!(ro("sd-job-cache"), Some(true));
    assert_eq!(ro("sd-event-cache"), Some(false));
    let words = shell::split_words(
        &build_container(&p).args.as_ref().unwrap()[0],
        &BTreeMap::from([("SD_TOKEN", "t")]),
    )
    .unwrap();
    assert_eq!(words.len(), 15);
    assert_eq!(words[7], "disk");
    let init = &spec(&p).init_containers.as_ref().unwrap()[0];
    assert!(init.command.as_ref().unwrap()[2].contains("chmod -R 777"));
}

#[test]
fn cache_levels_without_ids_get_empty_directories() {
    let build = StartBuild {
        pipeline_id: None,
        ..example_build()
    };
    let p = build_pod(&PodInputs {
        executor: "k8s",
        config: &runc_executor(),
        ecosystem: &disk_cache_ecosystem(),
        build: &build,
        attempt: 1,
        pod_annotation_allow_list: &[],
    });
    for v in spec(&p).volumes.iter().flatten() {
        if v.name.starts_with("sd-") && v.name.ends_with("-cache") {
            assert!(v.host_path.is_none() && v.empty_dir.is_some(), "{}", v.name);
        }
    }
}

#[test]
fn executor_ecosystem_overrides_the_global_one() {
    let mut config = runc_executor();
    config.options.kubernetes.token_delivery = TokenDelivery::Args;
    config.options.ecosystem = Some(EcosystemSettings {
        api: "https://api.internal".into(),
        pushgateway_url: "http://pushgateway:9091".into(),
        ..EcosystemSettings::default()
    });
    let p = pod(&config, &example_build(), &[]);
    assert!(build_container(&p).args.as_ref().unwrap()[0].contains("'https://api.internal'"));
    assert_eq!(
        env(&p, "SD_PUSHGATEWAY_URL").and_then(|e| e.value.as_deref()),
        Some("http://pushgateway:9091")
    );
}

#[test]
fn every_option_pod_carries_every_option() {
    let p = scenario("every_option");
    let s = spec(&p);
    let c = build_container(&p);
    assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert!(c.lifecycle.as_ref().unwrap().pre_stop.is_some());
    assert_eq!(
        s.image_pull_secrets.as_ref().unwrap()[0].name,
        "registry-creds"
    );
    assert_eq!(s.service_account_name.as_deref(), Some("builder"));
    assert_eq!(s.automount_service_account_token, Some(true));
    assert_eq!(s.termination_grace_period_seconds, Some(120));
    assert_eq!(s.active_deadline_seconds, Some(45 * 60));
    assert_eq!(label(&p, "screwdriver.cd/disk"), Some("HIGH"));
    let sshca = env(&p, "SSHCA").unwrap().value_from.clone().unwrap();
    assert_eq!(sshca.secret_key_ref.unwrap().name, "sd-ssh-ca");
    let names: Vec<_> = s
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert!(names.contains(&"kvm") && names.contains(&"npmrc"));
    assert_eq!(limits(&s.containers[1]), ("6000m".into(), "1Gi".into()));
    assert_eq!(
        s.init_containers.as_ref().unwrap()[0].image.as_deref(),
        Some("screwdrivercd/launcher:v6.0.200")
    );
}

#[test]
fn token_secret_is_owned_by_the_pod() {
    let p = scenario("runc");
    let s = token_secret_example();
    let pod_name = p.metadata.name.clone().unwrap();
    assert_eq!(s.metadata.name, Some(naming::token_secret_name(&pod_name)));
    assert_eq!(s.metadata.namespace.as_deref(), Some("builds"));
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        (
            "Pod",
            pod_name.as_str(),
            "7b0e2f2a-9c1d-4e5f-8a6b-0c1d2e3f4a5b"
        )
    );
    let labels = s.metadata.labels.as_ref().unwrap();
    assert_eq!(labels.get("sdbuild").map(String::as_str), Some("987654"));
    assert_eq!(labels.get("app"), None);
    assert_eq!(
        s.data.as_ref().unwrap()[TOKEN_SECRET_KEY].0,
        example_build().token.expose().as_bytes()
    );
    assert_eq!(s.immutable, Some(true));
}

#[test]
fn broken_tier_tables_do_not_break_the_pod() {
    let mut config = runc_executor();
    config.options.kubernetes.resources = Resources {
        cpu: crate::config::Tiers {
            micro: f64::NAN,
            low: -1.0,
            high: 0.0,
            turbo: f64::INFINITY,
            max: f64::NAN,
        },
        ..Resources::default()
    };
    for cpu in [json!("MICRO"), json!("LOW"), json!("TURBO"), json!(5)] {
        let p = pod(
            &config,
            &with_annotations(json!({"screwdriver.cd/cpu": cpu})),
            &[],
        );
        let (cpu, _) = limits(build_container(&p));
        assert!(cpu.ends_with('m') && cpu != "0m", "{cpu}");
    }
}
