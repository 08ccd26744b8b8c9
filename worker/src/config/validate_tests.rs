//! One test per validation rule, plus one with many problems at once.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::config::ExecutorConfig;
use crate::intake::BuildId;
use crate::naming::{build_label_value, pod_name};
use crate::secret::Secret;

/// The smallest valid configuration: defaults plus one executor with a host.
fn valid() -> Settings {
    let mut s = Settings::default();
    let mut k8s = ExecutorConfig::default();
    k8s.options.kubernetes.host = "https://10.0.0.1:6443".into();
    s.executor.executors.push(("k8s".into(), k8s));
    s
}

fn block(s: &mut Settings) -> &mut ExecutorConfig {
    &mut s.executor.executors[0].1
}

fn kube(s: &mut Settings) -> &mut KubernetesOptions {
    &mut s.executor.executors[0].1.options.kubernetes
}

/// Asserts that `s` breaks exactly one rule, at `path`, and returns the message.
fn only(s: &Settings, path: &str) -> String {
    let issues = s.validate();
    assert_eq!(
        issues.len(),
        1,
        "expected one issue at {path}, got {issues:#?}"
    );
    assert_eq!(issues[0].path, path, "{issues:#?}");
    issues[0].message.clone()
}

fn paths(s: &Settings) -> Vec<String> {
    s.validate().into_iter().map(|i| i.path).collect()
}

const KUBE: &str = "executor.k8s.options.kubernetes";

#[test]
fn the_baseline_is_valid() {
    assert_eq!(valid().validate(), vec![]);
}

#[test]
fn no_executors() {
    let mut s = valid();
    s.executor.executors.clear();
    assert_eq!(only(&s, "executor"), "no executors configured");
}

#[test]
fn a_default_executor_that_does_not_exist() {
    let mut s = valid();
    s.executor.plugin = "k8s-vm".into();
    let m = only(&s, "executor.plugin");
    assert!(
        m.contains("\"k8s-vm\" is not configured (executors: k8s)"),
        "{m}"
    );
}

#[test]
fn the_default_executor_is_plugin_or_else_the_first() {
    let mut s = valid();
    s.executor
        .executors
        .push(("second".into(), s.executor.executors[0].1.clone()));
    assert_eq!(s.executor.default_executor(), "k8s");
    s.executor.plugin = "second".into();
    assert_eq!(s.executor.default_executor(), "second");
    assert_eq!(ExecutorSettings::default().default_executor(), "");
}

#[test]
fn a_negative_weight() {
    let mut s = valid();
    block(&mut s).weightage = -1;
    assert_eq!(only(&s, "executor.k8s.weightage"), "-1 is negative");
}

#[test]
fn an_exclusion_that_is_not_a_regex() {
    let mut s = valid();
    block(&mut s).exclusions = vec!["rhel[6".into(), "^RHEL".into()];
    let m = only(&s, "executor.k8s.exclusions[0]");
    assert_eq!(
        m,
        "\"rhel[6\" is not a valid regular expression: unclosed character class"
    );
    assert!(!m.contains('\n'));
}

#[test]
fn prefetch_count_zero() {
    let mut s = valid();
    s.rabbitmq.prefetch_count = 0;
    only(&s, "rabbitmq.prefetch_count");
}

#[test]
fn breaker_values_of_zero_one_issue_each() {
    let mut s = valid();
    let b = &mut block(&mut s).options.fusebox.breaker;
    b.timeout = Duration::ZERO;
    b.max_failures = 0;
    b.reset_timeout = Duration::ZERO;
    assert_eq!(
        paths(&s),
        [
            "executor.k8s.options.fusebox.breaker.timeout",
            "executor.k8s.options.fusebox.breaker.max_failures",
            "executor.k8s.options.fusebox.breaker.reset_timeout",
        ]
    );
}

#[test]
fn retry_values_of_zero_one_issue_each() {
    let mut s = valid();
    let r = &mut block(&mut s).options.requestretry;
    r.retry_delay = Duration::ZERO;
    r.max_attempts = 0;
    assert_eq!(
        paths(&s),
        [
            "executor.k8s.options.requestretry.retry_delay",
            "executor.k8s.options.requestretry.max_attempts",
        ]
    );
}

#[test]
fn status_update_breaker_and_retry_of_zero() {
    let mut s = valid();
    s.status_updates.breaker.max_failures = 0;
    s.status_updates.retry.max_attempts = 0;
    assert_eq!(
        paths(&s),
        [
            "status_updates.breaker.max_failures",
            "status_updates.retry.max_attempts"
        ]
    );
}

#[test]
fn an_executor_without_host_or_kubeconfig() {
    let mut s = valid();
    kube(&mut s).host.clear();
    assert_eq!(
        only(&s, &format!("{KUBE}.host")),
        "set host (the API server URL) or kubeconfig"
    );
}

#[test]
fn a_host_that_is_not_an_http_url() {
    for bad in [
        "kubernetes.default",
        "ftp://k8s",
        "https://",
        "https://exa mple",
    ] {
        let mut s = valid();
        kube(&mut s).host = bad.into();
        only(&s, &format!("{KUBE}.host"));
    }
    let mut s = valid();
    kube(&mut s).host = "http://127.0.0.1:8080".into();
    assert_eq!(s.validate(), vec![]);
}

#[test]
fn a_kubeconfig_that_does_not_exist() {
    let mut s = valid();
    kube(&mut s).host.clear();
    kube(&mut s).kubeconfig = "/nonexistent/bcw/kubeconfig".into();
    only(&s, &format!("{KUBE}.kubeconfig"));
    let file = tempfile::NamedTempFile::new().unwrap();
    kube(&mut s).kubeconfig = file.path().display().to_string();
    assert_eq!(s.validate(), vec![]);
}

#[test]
fn a_ca_file_that_does_not_exist() {
    let mut s = valid();
    kube(&mut s).ca_file = "/nonexistent/bcw/ca.pem".into();
    only(&s, &format!("{KUBE}.ca_file"));
}

#[test]
fn a_ca_file_that_is_a_directory() {
    let mut s = valid();
    let dir = tempfile::tempdir().unwrap();
    kube(&mut s).ca_file = dir.path().display().to_string();
    assert!(only(&s, &format!("{KUBE}.ca_file")).ends_with("is not a file"));
}

#[test]
fn a_token_file_that_does_not_exist() {
    let mut s = valid();
    kube(&mut s).token_file = "/nonexistent/bcw/token".into();
    only(&s, &format!("{KUBE}.token_file"));
}

#[test]
fn token_and_token_file_together() {
    let mut s = valid();
    let file = tempfile::NamedTempFile::new().unwrap();
    kube(&mut s).token_file = file.path().display().to_string();
    kube(&mut s).token = Secret::new("t");
    only(&s, &format!("{KUBE}.token_file"));
}

#[test]
fn a_password_file_that_does_not_exist() {
    let mut s = valid();
    s.rabbitmq.password_file = Some("/nonexistent/bcw/password".into());
    only(&s, "rabbitmq.password_file");
}

#[test]
fn message_reprocess_limit_zero() {
    let mut s = valid();
    s.rabbitmq.message_reprocess_limit = 0;
    only(&s, "rabbitmq.message_reprocess_limit");
}

#[test]
fn empty_retry_delays() {
    let mut s = valid();
    s.rabbitmq.retry_delays.clear();
    only(&s, "rabbitmq.retry_delays");
}

#[test]
fn empty_queue_and_exchange_names() {
    let mut s = valid();
    s.rabbitmq.queue = " ".into();
    s.rabbitmq.exchange = String::new();
    assert_eq!(paths(&s), ["rabbitmq.exchange", "rabbitmq.queue"]);
}

#[test]
fn an_enabled_retry_queue_without_a_name() {
    let mut s = valid();
    s.rabbitmq.retry_queue_enabled = true;
    only(&s, "rabbitmq.retry_queue");
    s.rabbitmq.retry_queue = "sdRetryQueue".into();
    assert_eq!(s.validate(), vec![]);
}

#[test]
fn an_empty_events_exchange_while_events_are_enabled() {
    let mut s = valid();
    s.events.exchange.clear();
    only(&s, "events.exchange");
    s.events.enabled = false;
    assert_eq!(s.validate(), vec![]);
}

#[test]
fn a_prefix_that_would_make_invalid_pod_names() {
    for bad in ["Beta-", "-beta", "beta_", "beta.", "abcdefghijklmnopqrstu"] {
        let mut s = valid();
        block(&mut s).options.prefix = bad.into();
        only(&s, "executor.k8s.options.prefix");
    }
    for good in ["", "beta-", "b", "pr-1-", "abcdefghijklmnopqrst"] {
        let mut s = valid();
        block(&mut s).options.prefix = good.into();
        assert_eq!(s.validate(), vec![], "{good:?}");
    }
}

#[test]
fn a_jobs_namespace_that_is_not_a_dns_label() {
    let mut s = valid();
    kube(&mut s).jobs_namespace = "CI_builds".into();
    only(&s, &format!("{KUBE}.jobs_namespace"));
}

#[test]
fn a_runtime_class_that_is_not_a_dns_subdomain() {
    let mut s = valid();
    kube(&mut s).runtime_class = "Kata Containers".into();
    only(&s, &format!("{KUBE}.runtime_class"));
    kube(&mut s).runtime_class = "kata.example.com".into();
    assert_eq!(s.validate(), vec![]);
}

#[test]
fn a_service_account_or_pull_secret_that_is_not_a_name() {
    let mut s = valid();
    kube(&mut s).service_account = String::new();
    kube(&mut s).image_pull_secret_name = "My Secret".into();
    assert_eq!(
        paths(&s),
        [
            format!("{KUBE}.service_account"),
            format!("{KUBE}.image_pull_secret_name")
        ]
    );
}

#[test]
fn invalid_pod_label_keys_and_values() {
    let mut s = valid();
    kube(&mut s).pod_labels = BTreeMap::from([
        ("network-egress".into(), "restricted".into()),
        ("bad key".into(), "x".into()),
        ("ok".into(), "bad value!".into()),
    ]);
    assert_eq!(
        paths(&s),
        [
            format!("{KUBE}.pod_labels.bad key"),
            format!("{KUBE}.pod_labels.ok")
        ]
    );
}

#[test]
fn invalid_node_selectors() {
    let mut s = valid();
    kube(&mut s).node_selectors = BTreeMap::from([("dedicated".into(), "-ci".into())]);
    only(&s, &format!("{KUBE}.node_selectors.dedicated"));
}

#[test]
fn invalid_preferred_node_selectors() {
    let mut s = valid();
    kube(&mut s).preferred_node_selectors = BTreeMap::from([("/zone".into(), "a".into())]);
    only(&s, &format!("{KUBE}.preferred_node_selectors./zone"));
}

#[test]
fn invalid_annotation_keys() {
    let mut s = valid();
    kube(&mut s).annotations = BTreeMap::from([
        ("io.kubernetes.cri.untrusted-workload".into(), "true".into()),
        ("not a key".into(), "anything goes here".into()),
    ]);
    only(&s, &format!("{KUBE}.annotations.not a key"));
}

#[test]
fn an_unknown_image_pull_policy() {
    let mut s = valid();
    kube(&mut s).image_pull_policy = "always".into();
    let m = only(&s, &format!("{KUBE}.image_pull_policy"));
    assert_eq!(m, "\"always\" is not one of Always, IfNotPresent, Never");
}

#[test]
fn dns_policy_none_is_refused_with_the_reason() {
    let mut s = valid();
    kube(&mut s).dns_policy = "None".into();
    let m = only(&s, &format!("{KUBE}.dns_policy"));
    assert!(m.contains("needs a dnsConfig"), "{m}");
}

#[test]
fn an_unknown_dns_policy() {
    let mut s = valid();
    kube(&mut s).dns_policy = "ClusterLast".into();
    only(&s, &format!("{KUBE}.dns_policy"));
}

#[test]
fn qps_that_is_not_positive() {
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let mut s = valid();
        kube(&mut s).qps = bad;
        only(&s, &format!("{KUBE}.qps"));
    }
}

#[test]
fn burst_zero() {
    let mut s = valid();
    kube(&mut s).burst = 0;
    only(&s, &format!("{KUBE}.burst"));
}

#[test]
fn a_negative_termination_grace_period() {
    let mut s = valid();
    kube(&mut s).termination_grace_period_seconds = -5;
    only(&s, &format!("{KUBE}.termination_grace_period_seconds"));
}

#[test]
fn a_build_timeout_of_zero() {
    let mut s = valid();
    kube(&mut s).build_timeout = Duration::ZERO;
    only(&s, &format!("{KUBE}.build_timeout"));
}

#[test]
fn a_max_build_timeout_below_the_build_timeout() {
    let mut s = valid();
    kube(&mut s).max_build_timeout = Duration::from_secs(60 * 60);
    let m = only(&s, &format!("{KUBE}.max_build_timeout"));
    assert_eq!(m, "1h is shorter than build_timeout (1h 30m)");
}

#[test]
fn tier_values_that_are_not_positive() {
    let mut s = valid();
    kube(&mut s).resources.cpu.micro = 0.0;
    kube(&mut s).resources.memory.max = -1.0;
    let p = paths(&s);
    assert!(p.contains(&format!("{KUBE}.resources.cpu.micro")), "{p:?}");
    assert!(p.contains(&format!("{KUBE}.resources.memory.max")), "{p:?}");
}

#[test]
fn a_tier_above_max() {
    let mut s = valid();
    kube(&mut s).resources.cpu.turbo = 16.0;
    assert_eq!(
        only(&s, &format!("{KUBE}.resources.cpu.turbo")),
        "16 is above max (12)"
    );
}

#[test]
fn a_plugin_name_that_is_not_served() {
    let mut s = valid();
    block(&mut s).plugin_name = "jenkins".into();
    assert_eq!(
        only(&s, "executor.k8s.plugin_name"),
        "\"jenkins\" is not one of k8s, k8s-vm"
    );
    block(&mut s).plugin_name = "k8s-vm".into();
    assert_eq!(s.validate(), vec![]);
}

#[test]
fn an_executor_name_that_cannot_be_a_label_value() {
    let mut s = valid();
    s.executor.executors[0].0 = "k8s sandbox".into();
    only(&s, "executor.k8s sandbox");
}

#[test]
fn an_empty_launch_image_or_version() {
    let mut s = valid();
    block(&mut s).options.launch_image.clear();
    block(&mut s).options.launch_version.clear();
    assert_eq!(
        paths(&s),
        [
            "executor.k8s.options.launch_image",
            "executor.k8s.options.launch_version"
        ]
    );
}

#[test]
fn a_lease_renew_interval_not_below_the_lease_duration() {
    let mut s = valid();
    s.lifecycle.lease_renew_interval = s.lifecycle.lease_duration;
    only(&s, "lifecycle.lease_renew_interval");
}

#[test]
fn a_resync_interval_of_zero() {
    let mut s = valid();
    s.lifecycle.resync_interval = Duration::ZERO;
    only(&s, "lifecycle.resync_interval");
}

#[test]
fn max_message_bytes_zero() {
    let mut s = valid();
    s.intake.max_message_bytes = 0;
    only(&s, "intake.max_message_bytes");
}

#[test]
fn an_annotation_allow_list_entry_that_is_not_a_key() {
    let mut s = valid();
    s.intake.pod_annotation_allow_list = vec!["screwdriver.cd/owner".into(), "bad key".into()];
    only(&s, "intake.pod_annotation_allow_list[1]");
}

#[test]
fn an_unparsable_rabbitmq_url() {
    let mut s = valid();
    s.rabbitmq.url = Some(Secret::new("amqp://guest:sekrit@host:99999/%2f"));
    let m = only(&s, "rabbitmq.url");
    assert!(!m.contains("sekrit"), "{m}");
    s.rabbitmq.url = Some(Secret::new("https://host/"));
    only(&s, "rabbitmq.url");
}

#[test]
fn a_screwdriver_form_that_cannot_make_a_uri() {
    let mut s = valid();
    s.rabbitmq.protocol = "mqtt".into();
    only(&s, "rabbitmq.protocol");
    let mut s = valid();
    s.rabbitmq.host.clear();
    only(&s, "rabbitmq.host");
    let mut s = valid();
    s.rabbitmq.username.clear();
    only(&s, "rabbitmq.username");
}

#[test]
fn a_heartbeat_that_is_not_a_number() {
    let mut s = valid();
    s.rabbitmq
        .connect_options
        .insert("heartbeatIntervalInSeconds".into(), "often".into());
    only(&s, "rabbitmq.connect_options.heartbeatIntervalInSeconds");
}

#[test]
fn amqps_with_an_unreadable_ca_file() {
    let mut s = valid();
    s.rabbitmq.ca_file = "/nonexistent/bcw/rabbit-ca.pem".into();
    // Plain amqp does not use the CA file.
    assert_eq!(s.validate(), vec![]);
    s.rabbitmq.protocol = "amqps".into();
    only(&s, "rabbitmq.ca_file");
    s.rabbitmq.protocol = "amqp".into();
    s.rabbitmq.url = Some(Secret::new("amqps://u:p@host:5671/%2f"));
    only(&s, "rabbitmq.ca_file");
}

#[test]
fn a_status_update_ca_file_that_does_not_exist() {
    let mut s = valid();
    s.status_updates.ca_file = "/nonexistent/bcw/api-ca.pem".into();
    only(&s, "status_updates.ca_file");
}

#[test]
fn many_problems_are_all_listed() {
    let mut s = valid();
    s.rabbitmq.prefetch_count = 0;
    s.rabbitmq.queue.clear();
    s.executor.plugin = "nope".into();
    block(&mut s).weightage = -3;
    block(&mut s).exclusions = vec!["(".into()];
    kube(&mut s).dns_policy = "x".into();
    kube(&mut s).resources.memory.high = 99.0;
    let mut second = ExecutorConfig {
        plugin_name: "docker".into(),
        ..ExecutorConfig::default()
    };
    second.options.fusebox.breaker.max_failures = 0;
    s.executor.executors.push(("second".into(), second));
    s.intake.max_message_bytes = 0;
    assert_eq!(
        paths(&s),
        [
            "rabbitmq.queue",
            "rabbitmq.prefetch_count",
            "executor.plugin",
            "executor.k8s.weightage",
            "executor.k8s.exclusions[0]",
            &format!("{KUBE}.dns_policy"),
            &format!("{KUBE}.resources.memory.high"),
            "executor.second.plugin_name",
            "executor.second.options.fusebox.breaker.max_failures",
            "executor.second.options.kubernetes.host",
            "intake.max_message_bytes",
        ]
    );
}

proptest! {
    /// Every prefix the rule accepts makes valid pod names and `sdbuild` label values.
    #[test]
    fn accepted_prefixes_make_valid_names(prefix in "[a-z0-9-]{0,24}", id in 1u64..(1u64 << 53)) {
        if valid_prefix(&prefix) {
            let name = pod_name(&prefix, BuildId(id));
            prop_assert!(crate::naming::is_dns1123_label(&name), "{}", name);
            prop_assert!(is_label_value(&build_label_value(&prefix, BuildId(id))));
        }
    }
}
