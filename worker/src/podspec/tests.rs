//! Snapshot tests of the build pod, and the dump of every snapshot object for
//! `kubernetes-validate`.

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use super::fixtures::{SCENARIOS, scenario, token_secret_example};

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

/// Writes every snapshot object as JSON into `$DUMP_PODS_DIR` when it is set, for the test
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
    if let Ok(dir) = std::env::var("DUMP_PODS_DIR") {
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir).expect("create dump dir");
        for (name, value) in &objects {
            let text = serde_json::to_string_pretty(value).expect("json");
            std::fs::write(dir.join(format!("{name}.json")), text).expect("write dump");
        }
    }
}
