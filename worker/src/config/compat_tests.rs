//! The original worker's configuration: its defaults, its file layout, every one of its
//! environment variables.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::config::load::{Compat, Loaded};
use crate::config::{ConfigErrors, Settings, render_effective};

fn run(yaml: Option<&str>, env: &[(&str, &str)]) -> Result<Loaded, ConfigErrors> {
    crate::config::load::tests::run(yaml, env, Compat::Screwdriver)
}

fn screwdriver(yaml: Option<&str>, env: &[(&str, &str)]) -> Settings {
    match run(yaml, env) {
        Ok(l) => l.settings,
        Err(e) => panic!("unexpected problems:\n{e}"),
    }
}

fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

#[test]
fn the_original_defaults_load_as_the_original_worker_read_them() {
    let loaded = run(None, &[]).unwrap();
    assert!(loaded.notices.is_empty(), "{:?}", loaded.notices);
    let s = loaded.settings;
    let names: Vec<&str> = s
        .executor
        .executors
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(names, ["k8s", "k8s-sandbox", "k8s-vm"]);
    assert_eq!(s.executor.default_executor(), "k8s-vm");
    for (name, block) in &s.executor.executors {
        assert_eq!(block.weightage, 0, "{name}");
        let k = &block.options.kubernetes;
        assert_eq!(k.host, "https://kubernetes.default", "{name}");
        assert_eq!(k.resources.cpu.micro, 1.0, "{name}");
        assert_eq!(k.resources.memory.high, 12.0, "{name}");
        assert_eq!(k.build_timeout, minutes(90), "{name}");
        assert_eq!(k.max_build_timeout, minutes(120), "{name}");
        assert_eq!(k.termination_grace_period_seconds, 60, "{name}");
        assert_eq!(block.options.launch_image, "screwdrivercd/launcher");
        assert_eq!(
            block.options.fusebox.breaker.timeout,
            Duration::from_secs(10)
        );
        assert_eq!(
            block.options.requestretry.retry_delay,
            Duration::from_secs(3)
        );
        assert_eq!(block.options.requestretry.max_attempts, 5);
    }
    assert_eq!(s.executor.get("k8s").unwrap().exclusions, ["rhel6"]);
    assert_eq!(s.executor.get("k8s-sandbox").unwrap().plugin_name, "k8s");
    assert_eq!(s.executor.get("k8s-vm").unwrap().plugin_name, "k8s-vm");

    let r = &s.rabbitmq;
    assert_eq!((r.username.as_str(), r.password.expose()), ("foo", "bar"));
    assert_eq!(
        (r.host.as_str(), r.port, r.vhost.as_str()),
        ("127.0.0.1", 5672, "/screwdriver")
    );
    assert_eq!(r.queue, "test");
    assert_eq!(r.prefetch_count, 20);
    assert_eq!(r.message_reprocess_limit, 3);
    assert_eq!(r.retry_queue, "sdRetryQueue");
    assert!(!r.retry_queue_enabled);
    assert_eq!(r.exchange, "build");
    assert_eq!(r.init_timeout, minutes(5));
    assert_eq!(
        r.amqp_uri().unwrap().expose(),
        "amqp://foo:bar@127.0.0.1:5672/screwdriver?heartbeat=20"
    );
    assert_eq!(s.httpd.port, 80);
    assert_eq!(s.ecosystem.cache.max_go_threads, 10_000);
    // The original touched nothing on the broker and reported to the API.
    assert!(!r.declare_topology);
    assert!(!s.events.enabled);
    assert!(s.status_updates.enabled);
}

#[test]
fn the_original_default_yaml_as_the_file_changes_nothing() {
    let base = render_effective(&screwdriver(None, &[]));
    let with_file = render_effective(&screwdriver(Some(SCREWDRIVER_DEFAULTS), &[]));
    assert_eq!(base, with_file);
}

#[test]
fn every_key_of_the_original_default_yaml_is_known_in_native_mode_too() {
    // Only the schemeless cluster hosts, which mean https:// in Screwdriver mode, are problems.
    let problems =
        match crate::config::load::tests::run(Some(SCREWDRIVER_DEFAULTS), &[], Compat::Native) {
            Ok(_) => panic!("schemeless hosts accepted in native mode"),
            Err(e) => e.0,
        };
    let paths: Vec<&str> = problems.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "executor.k8s.options.kubernetes.host",
            "executor.k8s-sandbox.options.kubernetes.host",
            "executor.k8s-vm.options.kubernetes.host",
        ],
        "{problems:#?}"
    );
}

/// One distinct value for every variable of the original's mapping.
const EVERY_VARIABLE: &[(&str, &str)] = &[
    ("RABBITMQ_PROTOCOL", "amqps"),
    ("RABBITMQ_USERNAME", "sd-user"),
    ("RABBITMQ_PASSWORD", "sd-pass"),
    ("RABBITMQ_HOST", "rabbit.example"),
    ("RABBITMQ_PORT", "5671"),
    ("RABBITMQ_VIRTUAL_HOST", "/builds"),
    (
        "RABBITMQ_CONNECT_OPTIONS",
        r#"{"json": true, "heartbeatIntervalInSeconds": 45}"#,
    ),
    ("RABBITMQ_QUEUE", "cluster-a"),
    ("RABBITMQ_PREFETCH_COUNT", "8"),
    ("RABBITMQ_MSG_REPROCESS_LIMIT", "4"),
    ("RABBITMQ_RETRYQUEUE", "retryQ"),
    ("RABBITMQ_RETRYQUEUE_ENABLED", "yes"),
    ("RABBITMQ_EXCHANGE", "builds"),
    ("RABBITMQ_BUILD_INIT_TIMEOUT", "7"),
    ("PORT", "8080"),
    ("HOST", "127.0.0.1"),
    ("URI", "https://worker.example"),
    ("ECOSYSTEM_UI", "https://ui.example"),
    ("ECOSYSTEM_API", "https://api.example"),
    ("ECOSYSTEM_STORE", "https://store.example"),
    ("ECOSYSTEM_PUSHGATEWAY_URL", "https://push.example"),
    ("CACHE_STRATEGY", "disk"),
    ("CACHE_PATH", "/cache"),
    ("CACHE_COMPRESS", "true"),
    ("CACHE_MD5CHECK", "true"),
    ("CACHE_MAX_SIZE_MB", "512"),
    ("CACHE_MAX_GO_THREADS", "64"),
    ("EXECUTOR_PLUGIN", "k8s"),
    ("WEIGHT_K8S", "30"),
    ("K8S_EXECUTOR_EXCLUSION", r#"["centos"]"#),
    ("WEIGHT_K8S_VM", "70"),
    ("K8S_HOST", "10.1.2.3:6443"),
    ("K8S_SECURITYCONTEXT_PRIVILEGED", "true"),
    ("K8S_TOKEN", "k8s-token"),
    ("K8S_JOBS_NAMESPACE", "builds"),
    ("K8S_SERVICE_ACCOUNT_NAME", "builder"),
    ("K8S_POD_DNS_POLICY", "Default"),
    ("K8S_POD_IMAGE_PULL_POLICY", "IfNotPresent"),
    ("K8S_AUTOMOUNT_SERVICE_ACCOUNT_TOKEN", "true"),
    ("DOCKER_FEATURE_ENABLED", "true"),
    ("K8S_CPU_MICRO", "0.25"),
    ("K8S_CPU_LOW", "1"),
    ("K8S_CPU_HIGH", "4"),
    ("K8S_CPU_TURBO", "8"),
    ("K8S_CPU_MAX", "10"),
    ("K8S_MEMORY_MICRO", "0.5"),
    ("K8S_MEMORY_LOW", "3"),
    ("K8S_MEMORY_HIGH", "8"),
    ("K8S_MEMORY_TURBO", "12"),
    ("K8S_MEMORY_MAX", "14"),
    ("K8S_BUILD_TIMEOUT", "45"),
    ("K8S_MAX_BUILD_TIMEOUT", "60"),
    ("TERMINATION_GRACE_PERIOD_SECONDS", "90"),
    (
        "K8S_LIFECYCLE_HOOKS",
        r#"{"preStop": {"exec": {"command": ["sleep", "5"]}}}"#,
    ),
    ("K8S_POD_LABELS", r#"{"network-egress": "restricted"}"#),
    ("K8S_NODE_SELECTORS", r#"{"dedicated": "ci"}"#),
    ("K8S_PREFERRED_NODE_SELECTORS", r#"{"zone": "a"}"#),
    ("K8S_SANDBOX_NODE_SELECTORS", r#"{"dedicated": "sandbox"}"#),
    ("K8S_SANDBOX_PREFERRED_NODE_SELECTORS", r#"{"zone": "b"}"#),
    (
        "K8S_ANNOTATIONS",
        r#"{"io.kubernetes.cri.untrusted-workload": "true"}"#,
    ),
    ("K8S_RUNTIME_CLASS", "kata"),
    ("K8S_IMAGE_PULL_SECRET_NAME", "regcred"),
    (
        "K8S_VOLUME_MOUNTS",
        r#"[{"name": "kvm", "mountPath": "/dev/kvm", "path": "/dev/kvm"}]"#,
    ),
    ("K8S_POD_STATUSQUERY_DELAY", "500"),
    (
        "K8S_SECRETS",
        r#"[{"secret_env": "A", "secret_name": "s", "secret_key": "k"}]"#,
    ),
    (
        "K8S_SECRETS_FILE",
        r#"[{"name": "f", "mountPath": "/f", "secretName": "s"}]"#,
    ),
    ("K8S_BASE_IMAGE", "vm-base"),
    ("K8S_DISK_LABEL", "disk-space"),
    ("K8S_DISK_SPEED_LABEL", "disk-speed"),
    ("K8S_VM_BUILD_TIMEOUT", "30"),
    ("K8S_VM_MAX_BUILD_TIMEOUT", "40"),
    ("K8S_VM_NODE_SELECTORS", r#"{"dedicated": "vm"}"#),
    ("K8S_VM_PREFERRED_NODE_SELECTORS", r#"{"zone": "c"}"#),
    ("LAUNCH_IMAGE", "registry.example/launcher"),
    ("LAUNCH_VERSION", "v6"),
    ("EXECUTOR_PREFIX", "sd-"),
    ("CIRCUIT_TIMEOUT", "15000"),
    ("REQUEST_RETRYDELAY", "2000"),
    ("REQUEST_MAXATTEMPTS", "3"),
    ("SD_HAB_ENABLED", "false"),
];

#[test]
fn the_mapping_test_covers_every_variable() {
    let tested: BTreeSet<&str> = EVERY_VARIABLE.iter().map(|(k, _)| *k).collect();
    let mapped: BTreeSet<&str> = screwdriver_env_vars().collect();
    assert_eq!(tested, mapped);
}

#[test]
fn every_screwdriver_variable_lands_where_the_original_put_it() {
    let s = screwdriver(None, EVERY_VARIABLE);
    let r = &s.rabbitmq;
    assert_eq!(
        r.amqp_uri().unwrap().expose(),
        "amqps://sd-user:sd-pass@rabbit.example:5671/builds?heartbeat=45"
    );
    assert_eq!(r.connect_options["json"], json!(true));
    assert_eq!(r.queue, "cluster-a");
    assert_eq!(r.prefetch_count, 8);
    assert_eq!(r.message_reprocess_limit, 4);
    assert_eq!(r.retry_queue, "retryQ");
    assert!(r.retry_queue_enabled);
    assert_eq!(r.exchange, "builds");
    assert_eq!(r.init_timeout, minutes(7));
    assert_eq!((s.httpd.host.as_str(), s.httpd.port), ("127.0.0.1", 8080));
    assert_eq!(s.httpd.uri, "https://worker.example");
    let e = &s.ecosystem;
    assert_eq!(
        [
            e.ui.as_str(),
            e.api.as_str(),
            e.store.as_str(),
            e.pushgateway_url.as_str()
        ],
        [
            "https://ui.example",
            "https://api.example",
            "https://store.example",
            "https://push.example"
        ]
    );
    let c = &e.cache;
    assert_eq!((c.strategy.as_str(), c.path.as_str()), ("disk", "/cache"));
    assert!(c.compress && c.md5check);
    assert_eq!((c.max_size_mb, c.max_go_threads), (512, 64));

    assert_eq!(s.executor.plugin, "k8s");
    let k8s = s.executor.get("k8s").unwrap();
    let sandbox = s.executor.get("k8s-sandbox").unwrap();
    let vm = s.executor.get("k8s-vm").unwrap();
    assert_eq!(
        (k8s.weightage, sandbox.weightage, vm.weightage),
        (30, 0, 70)
    );
    assert_eq!(k8s.exclusions, ["centos"]);

    for (name, b) in [("k8s", k8s), ("k8s-sandbox", sandbox), ("k8s-vm", vm)] {
        let k = &b.options.kubernetes;
        assert_eq!(k.host, "https://10.1.2.3:6443", "{name}");
        assert!(k.privileged, "{name}");
        assert_eq!(k.token.expose(), "k8s-token", "{name}");
        assert_eq!(k.jobs_namespace, "builds", "{name}");
        let cpu = k.resources.cpu;
        assert_eq!(
            [cpu.micro, cpu.low, cpu.high, cpu.turbo, cpu.max],
            [0.25, 1.0, 4.0, 8.0, 10.0]
        );
        let mem = k.resources.memory;
        assert_eq!(
            [mem.micro, mem.low, mem.high, mem.turbo, mem.max],
            [0.5, 3.0, 8.0, 12.0, 14.0]
        );
        let o = &b.options;
        assert_eq!(o.launch_image, "registry.example/launcher", "{name}");
        assert_eq!(o.launch_version, "v6", "{name}");
        assert_eq!(o.prefix, "sd-", "{name}");
        assert_eq!(o.fusebox.breaker.timeout, Duration::from_secs(15), "{name}");
        assert_eq!(o.requestretry.retry_delay, Duration::from_secs(2), "{name}");
        assert_eq!(o.requestretry.max_attempts, 3, "{name}");
    }
    for (name, b) in [("k8s", k8s), ("k8s-sandbox", sandbox)] {
        let k = &b.options.kubernetes;
        assert_eq!(k.service_account, "builder", "{name}");
        assert!(k.automount_service_account_token, "{name}");
        assert!(k.docker_feature_enabled, "{name}");
        assert_eq!(k.build_timeout, minutes(45), "{name}");
        assert_eq!(k.max_build_timeout, minutes(60), "{name}");
        assert_eq!(k.termination_grace_period_seconds, 90, "{name}");
        assert_eq!(
            k.lifecycle_hooks["preStop"]["exec"]["command"],
            json!(["sleep", "5"])
        );
        assert_eq!(k.pod_labels["network-egress"], "restricted", "{name}");
        assert_eq!(
            k.annotations["io.kubernetes.cri.untrusted-workload"],
            "true"
        );
        assert_eq!(k.runtime_class, "kata", "{name}");
        assert_eq!(k.image_pull_secret_name, "regcred", "{name}");
        assert_eq!(k.volume_mounts[0]["mountPath"], json!("/dev/kvm"), "{name}");
        assert!(!k.pod_status_query_delay.is_null(), "{name}");
        assert!(!b.options.sd_hab_enabled, "{name}");
    }
    let k = &k8s.options.kubernetes;
    assert_eq!(k.dns_policy, "Default");
    assert_eq!(k.image_pull_policy, "IfNotPresent");
    assert_eq!(k.node_selectors["dedicated"], "ci");
    assert_eq!(k.preferred_node_selectors["zone"], "a");
    assert_eq!(k.build_secrets[0]["secret_env"], json!("A"));
    assert_eq!(k.build_secrets_file[0]["secretName"], json!("s"));
    let k = &sandbox.options.kubernetes;
    assert_eq!(k.node_selectors["dedicated"], "sandbox");
    assert_eq!(k.preferred_node_selectors["zone"], "b");
    assert_eq!(
        k.dns_policy, "ClusterFirst",
        "K8S_POD_DNS_POLICY is the k8s block's only"
    );
    let k = &vm.options.kubernetes;
    assert_eq!(k.node_selectors["dedicated"], "vm");
    assert_eq!(k.preferred_node_selectors["zone"], "c");
    assert_eq!(k.base_image, "vm-base");
    assert_eq!(k.resources.disk.space, "disk-space");
    assert_eq!(k.resources.disk.speed, "disk-speed");
    assert_eq!(k.build_timeout, minutes(30));
    assert_eq!(k.max_build_timeout, minutes(40));
    assert!(
        vm.options.sd_hab_enabled,
        "SD_HAB_ENABLED is not mapped for k8s-vm"
    );
}

#[test]
fn string_weights_and_string_booleans_work() {
    let s = screwdriver(
        None,
        &[
            ("WEIGHT_K8S", " 25 "),
            ("K8S_SECURITYCONTEXT_PRIVILEGED", "on"),
            // The original counted this string as enabled; it means what it says here.
            ("DOCKER_FEATURE_ENABLED", "false"),
            ("RABBITMQ_RETRYQUEUE_ENABLED", "Y"),
        ],
    );
    let k8s = s.executor.get("k8s").unwrap();
    assert_eq!(k8s.weightage, 25);
    assert!(k8s.options.kubernetes.privileged);
    assert!(!k8s.options.kubernetes.docker_feature_enabled);
    assert!(s.rabbitmq.retry_queue_enabled);
}

#[test]
fn a_json_variable_that_is_not_json_is_a_problem_without_its_value() {
    let e = run(None, &[("K8S_NODE_SELECTORS", "dedicated=top-secret")]).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].path, "K8S_NODE_SELECTORS");
    assert!(e.0[0].message.starts_with("not valid JSON"));
    assert!(!e.to_string().contains("top-secret"));
}

#[test]
fn a_value_that_does_not_parse_is_a_problem_not_nan() {
    let e = run(None, &[("RABBITMQ_PREFETCH_COUNT", "lots")]).unwrap_err();
    assert_eq!(e.0[0].path, "rabbitmq.prefetch_count");
}

#[test]
fn screwdriver_variables_are_ignored_in_native_mode() {
    let yaml = "executor: {k8s: {options: {kubernetes: {host: 'https://k'}}}}";
    let s = match crate::config::load::tests::run(
        Some(yaml),
        &[
            ("RABBITMQ_QUEUE", "q"),
            ("WEIGHT_K8S", "9"),
            ("K8S_NODE_SELECTORS", "bad json"),
        ],
        Compat::Native,
    ) {
        Ok(l) => l.settings,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(s.rabbitmq.queue, "default");
    assert_eq!(s.executor.get("k8s").unwrap().weightage, 0);
}

#[test]
fn bcw_variables_win_over_screwdriver_variables_and_the_file_sits_between() {
    let yaml = "rabbitmq:\n  queue: from-file\n  prefetchCount: 11\nexecutor:\n  k8s:\n    weightage: '5'\n";
    let s = screwdriver(
        Some(yaml),
        &[
            ("RABBITMQ_QUEUE", "from-sd-env"),
            ("BCW_RABBITMQ__QUEUE", "from-bcw-env"),
            ("BCW_EXECUTOR__K8S_VM__WEIGHTAGE", "2"),
        ],
    );
    assert_eq!(s.rabbitmq.queue, "from-bcw-env");
    assert_eq!(s.rabbitmq.prefetch_count, 11);
    assert_eq!(s.executor.get("k8s").unwrap().weightage, 5);
    assert_eq!(s.executor.get("k8s-vm").unwrap().weightage, 2);
    // The rest of the original defaults stay.
    assert_eq!(s.executor.get("k8s").unwrap().exclusions, ["rhel6"]);
    assert_eq!(s.executor.default_executor(), "k8s-vm");
}

#[test]
fn connect_options_as_a_json_string_work_from_the_file() {
    let yaml =
        "rabbitmq:\n  connectOptions: '{\"json\": true, \"heartbeatIntervalInSeconds\": 33}'\n";
    let s = screwdriver(Some(yaml), &[]);
    assert!(
        s.rabbitmq
            .amqp_uri()
            .unwrap()
            .expose()
            .ends_with("?heartbeat=33")
    );
}

#[test]
fn the_exclusion_variable_accepts_json_or_a_plain_list() {
    for raw in [r#"["centos", "sles"]"#, "centos,sles"] {
        let s = screwdriver(None, &[("K8S_EXECUTOR_EXCLUSION", raw)]);
        assert_eq!(
            s.executor.get("k8s").unwrap().exclusions,
            ["centos", "sles"],
            "{raw}"
        );
    }
}

#[test]
fn an_init_timeout_of_zero_means_five_minutes() {
    let s = screwdriver(None, &[("RABBITMQ_BUILD_INIT_TIMEOUT", "0")]);
    assert_eq!(s.rabbitmq.init_timeout, minutes(5));
    let s = screwdriver(Some("rabbitmq:\n  initTimeout: 0\n"), &[]);
    assert_eq!(s.rabbitmq.init_timeout, minutes(5));
}

#[test]
fn an_empty_variable_counts_as_unset() {
    let s = screwdriver(None, &[("RABBITMQ_QUEUE", ""), ("WEIGHT_K8S", "")]);
    assert_eq!(s.rabbitmq.queue, "test");
    assert_eq!(s.executor.get("k8s").unwrap().weightage, 0);
}

#[test]
fn cluster_hosts_without_a_scheme_mean_https_and_explicit_schemes_stay() {
    let s = screwdriver(
        Some(
            "executor:\n  k8s:\n    options:\n      kubernetes:\n        host: http://127.0.0.1:8080\n",
        ),
        &[],
    );
    assert_eq!(
        s.executor.get("k8s").unwrap().options.kubernetes.host,
        "http://127.0.0.1:8080"
    );
    assert_eq!(
        s.executor.get("k8s-vm").unwrap().options.kubernetes.host,
        "https://kubernetes.default"
    );
}

#[test]
fn jenkins_is_accepted_and_ignored_with_a_notice() {
    let yaml =
        "executor:\n  jenkins:\n    options:\n      jenkins: {host: jenkins.default, port: 8080}\n";
    let loaded = run(
        Some(yaml),
        &[
            ("WEIGHT_JENKINS", "10"),
            ("EXECUTOR_JENKINS_HOST", "j"),
            ("RABBITMQ_QUEUE_OPTIONS", "{}"),
        ],
    )
    .unwrap();
    let paths: Vec<&str> = loaded.notices.iter().map(|n| n.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "executor.jenkins",
            "EXECUTOR_JENKINS_HOST",
            "RABBITMQ_QUEUE_OPTIONS",
            "WEIGHT_JENKINS"
        ]
    );
    assert!(loaded.settings.executor.get("jenkins").is_none());
}

#[test]
fn every_dropped_key_of_the_ignored_list_has_its_reason() {
    for key in IGNORED.iter().filter(|k| !k.canonical.is_empty()) {
        let notice = ignored_reason(key.canonical);
        assert!(notice.ends_with(key.reason), "{}", key.key);
    }
    assert!(ignored_reason("no.such.key").ends_with("not used by this worker"));
}
