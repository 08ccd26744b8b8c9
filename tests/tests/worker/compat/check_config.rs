//! `buildcluster-worker check-config --compat screwdriver` on the original's own
//! `config/default.yaml` and environment variables: the effective configuration, secrets
//! masked, or every problem at once (the real binary).

use std::process::{Command, Output};

use bcw_tests::harness::worker_binary;
use serde_json::{Value, json};

/// The original's shipped `config/default.yaml`.
const ORIGINAL_DEFAULT_YAML: &str = include_str!("original-default.yaml");
const PASSWORD: &str = "rabbit-pw-sentinel-51c2";
const K8S_TOKEN: &str = "k8s-token-sentinel-9d7e";

/// Runs `check-config --compat screwdriver --config <yaml>` with exactly this environment.
fn check_config(yaml: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("default.yaml");
    std::fs::write(&path, yaml).unwrap();
    Command::new(worker_binary())
        .env_clear()
        .envs(env.iter().copied())
        .args(["check-config", "--compat", "screwdriver", "--config"])
        .arg(&path)
        .output()
        .expect("the binary runs")
}

#[test]
fn the_original_default_yaml_and_environment_give_the_effective_configuration_masked() {
    // An operator's copy that also uses the router's spelling `exclusions` on one block.
    let yaml = ORIGINAL_DEFAULT_YAML.replace(
        "  k8s-vm:\n    pluginName: k8s-vm\n",
        "  k8s-vm:\n    pluginName: k8s-vm\n    exclusions: ['centos6']\n",
    );
    assert_ne!(
        yaml, ORIGINAL_DEFAULT_YAML,
        "the fixture has a k8s-vm block"
    );
    let out = check_config(
        &yaml,
        &[
            ("RABBITMQ_USERNAME", "sd"),
            ("RABBITMQ_PASSWORD", PASSWORD),
            ("RABBITMQ_HOST", "rabbit.example"),
            ("RABBITMQ_QUEUE", "ClusterA"),
            ("RABBITMQ_RETRYQUEUE", "ClusterARetry"),
            ("RABBITMQ_RETRYQUEUE_ENABLED", "yes"),
            ("WEIGHT_K8S", "30"),
            ("K8S_HOST", "k8s.example:6443"),
            ("K8S_TOKEN", K8S_TOKEN),
            ("DOCKER_FEATURE_ENABLED", "false"),
            ("K8S_AUTOMOUNT_SERVICE_ACCOUNT_TOKEN", "true"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for secret in [PASSWORD, K8S_TOKEN] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "a secret is printed"
        );
    }
    let effective: Value = serde_saphyr::from_str(&stdout).expect("the output is YAML");
    let at = |p: &str| effective.pointer(p).cloned().unwrap_or(Value::Null);
    assert_eq!(at("/rabbitmq/username"), json!("sd"));
    assert_eq!(at("/rabbitmq/password"), json!("***"));
    assert_eq!(at("/rabbitmq/host"), json!("rabbit.example"));
    assert_eq!(at("/rabbitmq/queue"), json!("ClusterA"));
    assert_eq!(at("/rabbitmq/retry_queue"), json!("ClusterARetry"));
    assert_eq!(at("/rabbitmq/retry_queue_enabled"), json!(true));
    assert_eq!(at("/rabbitmq/prefetch_count"), json!(20));
    assert_eq!(at("/rabbitmq/message_reprocess_limit"), json!(3));
    // What the original did, unless told otherwise: the admin's topology, no events, updates.
    assert_eq!(at("/rabbitmq/declare_topology"), json!(false));
    assert_eq!(at("/events/enabled"), json!(false));
    assert_eq!(at("/status_updates/enabled"), json!(true));
    assert_eq!(at("/executor/plugin"), json!("k8s-vm"));
    assert_eq!(at("/executor/k8s/weightage"), json!(30));
    assert_eq!(at("/executor/k8s-sandbox/weightage"), json!(0));
    // `exclusion` (default.yaml's spelling) and `exclusions` (the router's) both apply.
    assert_eq!(at("/executor/k8s/exclusions"), json!(["rhel6"]));
    assert_eq!(at("/executor/k8s-vm/exclusions"), json!(["centos6"]));
    for block in ["k8s", "k8s-sandbox", "k8s-vm"] {
        let k = format!("/executor/{block}/options/kubernetes");
        assert_eq!(
            at(&format!("{k}/host")),
            json!("https://k8s.example:6443"),
            "{block}"
        );
        assert_eq!(at(&format!("{k}/token")), json!("***"), "{block}");
    }
    let k8s = "/executor/k8s/options/kubernetes";
    // String booleans mean what they say.
    assert_eq!(at(&format!("{k8s}/docker_feature_enabled")), json!(false));
    assert_eq!(
        at(&format!("{k8s}/automount_service_account_token")),
        json!(true)
    );
}

#[test]
fn problems_in_the_original_variables_are_all_listed_without_their_values() {
    let out = check_config(
        ORIGINAL_DEFAULT_YAML,
        &[
            ("RABBITMQ_PASSWORD", PASSWORD),
            ("RABBITMQ_PREFETCH_COUNT", "lots"),
            ("K8S_POD_LABELS", "{not json"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("prefetch_count"), "{stdout}");
    assert!(stdout.contains("K8S_POD_LABELS"), "{stdout}");
    assert!(!stdout.contains(PASSWORD));
    assert!(
        !stdout.contains("{not json"),
        "a JSON value is never quoted"
    );
}
