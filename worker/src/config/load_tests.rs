//! Loading from each source, spellings, unknown keys, type errors, and all problems at once.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::config::{QueueType, TokenDelivery, render_effective};

/// Loads `yaml` (as a file, when given) with `env` as the whole environment.
pub(crate) fn run(
    yaml: Option<&str>,
    env: &[(&str, &str)],
    compat: Compat,
) -> Result<Loaded, ConfigErrors> {
    let dir = tempfile::tempdir().unwrap();
    let path = yaml.map(|text| {
        let p = dir.path().join("config.yaml");
        std::fs::write(&p, text).unwrap();
        p
    });
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    load_with_notices(&LoadOptions { path, env, compat })
}

fn native(yaml: &str, env: &[(&str, &str)]) -> Settings {
    match run(Some(yaml), env, Compat::Native) {
        Ok(l) => l.settings,
        Err(e) => panic!("unexpected problems:\n{e}"),
    }
}

fn problems(yaml: Option<&str>, env: &[(&str, &str)]) -> Vec<String> {
    match run(yaml, env, Compat::Native) {
        Ok(_) => panic!("expected problems"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const MINIMAL: &str = "
executor:
  k8s:
    options:
      kubernetes:
        host: https://10.0.0.1:6443
";

/// The example of docs/interface.md §2 Configuration (its kubeconfig line is commented out there).
const CONTRACT_EXAMPLE: &str = r#"
rabbitmq:
  url: amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=20
  exchange: build
  queue: default
  queueType: quorum
  prefetchCount: 20
  messageReprocessLimit: 5
  retryDelays: [5s, 30s, 2m, 10m]
  maxWait: 1h
  declareTopology: true
events:
  exchange: build.events
httpd:
  host: 0.0.0.0
  port: 9464
executor:
  plugin: k8s
  k8s:
    weightage: 70
    exclusions: ["rhel6"]
    options:
      kubernetes:
        host: https://10.0.0.1:6443
        token: ""
        caFile: ""
        jobsNamespace: default
        serviceAccount: default
        automountServiceAccountToken: false
        privileged: false
        dockerFeatureEnabled: false
        runtimeClass: kata
        nodeSelectors: {}
        preferredNodeSelectors: {}
        annotations: {}
        podLabels: {}
        imagePullPolicy: Always
        imagePullSecretName: ""
        dnsPolicy: ClusterFirst
        terminationGracePeriodSeconds: 60
        buildTimeout: 90
        maxBuildTimeout: 120
        resources:
          cpu:    {micro: 0.5, low: 2, high: 6, turbo: 12, max: 12}
          memory: {micro: 1,   low: 2, high: 12, turbo: 16, max: 16}
        qps: 20
        burst: 30
      launchImage: screwdrivercd/launcher
      launchVersion: stable
      prefix: ""
      fusebox:
        breaker:
          timeout: 10000
          maxFailures: 5
          resetTimeout: 30000
      requestretry:
        retryDelay: 3000
        maxAttempts: 5
"#;

#[test]
fn the_contract_example_loads() {
    let s = native(CONTRACT_EXAMPLE, &[]);
    assert_eq!(s.rabbitmq.queue_type, QueueType::Quorum);
    assert_eq!(
        s.rabbitmq.retry_delays,
        [5, 30, 120, 600].map(Duration::from_secs)
    );
    assert_eq!(s.executor.plugin, "k8s");
    let k8s = s.executor.get("k8s").unwrap();
    assert_eq!(k8s.weightage, 70);
    assert_eq!(k8s.exclusions, ["rhel6"]);
    assert_eq!(k8s.options.kubernetes.runtime_class, "kata");
    assert_eq!(
        k8s.options.kubernetes.build_timeout,
        Duration::from_secs(90 * 60)
    );
    assert_eq!(k8s.options.kubernetes.resources.cpu.micro, 0.5);
    assert_eq!(
        k8s.options.fusebox.breaker.reset_timeout,
        Duration::from_secs(30)
    );
    assert_eq!(k8s.options.requestretry.retry_delay, Duration::from_secs(3));
}

#[test]
fn camel_and_snake_case_files_give_the_same_settings() {
    let camel = native(CONTRACT_EXAMPLE, &[]);
    let mut snake_yaml = CONTRACT_EXAMPLE.to_string();
    for (c, s) in [
        ("queueType", "queue_type"),
        ("prefetchCount", "prefetch_count"),
        ("retryDelays", "retry_delays"),
        ("jobsNamespace", "jobs_namespace"),
        ("runtimeClass", "runtime_class"),
        ("buildTimeout", "build_timeout"),
        ("maxBuildTimeout", "max_build_timeout"),
        ("launchImage", "launch_image"),
        ("resetTimeout", "reset_timeout"),
    ] {
        snake_yaml = snake_yaml.replace(c, s);
    }
    let snake = native(&snake_yaml, &[]);
    assert_eq!(render_effective(&camel), render_effective(&snake));
}

#[test]
fn the_environment_sets_values_with_double_underscores() {
    let s = native(
        MINIMAL,
        &[
            ("BCW_RABBITMQ__URL", "amqp://u:p@rabbit:5672/%2f"),
            ("BCW_EXECUTOR__K8S__WEIGHTAGE", "30"),
            (
                "BCW_EXECUTOR__K8S__OPTIONS__KUBERNETES__HOST",
                "https://k8s.example:6443",
            ),
            (
                "BCW_EXECUTOR__K8S__OPTIONS__KUBERNETES__TOKEN_DELIVERY",
                "args",
            ),
        ],
    );
    assert_eq!(
        s.rabbitmq.amqp_uri().unwrap().expose(),
        "amqp://u:p@rabbit:5672/%2f?heartbeat=20"
    );
    let k8s = s.executor.get("k8s").unwrap();
    assert_eq!(k8s.weightage, 30);
    assert_eq!(k8s.options.kubernetes.host, "https://k8s.example:6443");
    assert_eq!(k8s.options.kubernetes.token_delivery, TokenDelivery::Args);
}

#[test]
fn string_numbers_booleans_lists_and_durations_from_the_environment() {
    let s = native(
        MINIMAL,
        &[
            ("BCW_RABBITMQ__PREFETCHCOUNT", "7"),
            ("BCW_RABBITMQ__DECLARE_TOPOLOGY", "false"),
            ("BCW_EVENTS__ENABLED", "no"),
            ("BCW_RABBITMQ__RETRY_DELAYS", "1s, 2m,30"),
            ("BCW_RABBITMQ__MAX_WAIT", "15m"),
            ("BCW_EXECUTOR__K8S__OPTIONS__KUBERNETES__QPS", "2.5"),
            ("BCW_EXECUTOR__K8S__OPTIONS__KUBERNETES__PRIVILEGED", "TRUE"),
            ("BCW_EXECUTOR__K8S__OPTIONS__PREFIX", "0123-"),
        ],
    );
    assert_eq!(s.rabbitmq.prefetch_count, 7);
    assert!(!s.rabbitmq.declare_topology);
    assert!(!s.events.enabled);
    assert_eq!(
        s.rabbitmq.retry_delays,
        [1, 120, 30].map(Duration::from_secs)
    );
    assert_eq!(s.rabbitmq.max_wait, Duration::from_secs(900));
    let k = &s.executor.get("k8s").unwrap().options;
    assert_eq!(k.kubernetes.qps, 2.5);
    assert!(k.kubernetes.privileged);
    // Not parsed as a number first: the leading zero stays.
    assert_eq!(k.prefix, "0123-");
}

#[test]
fn json_maps_from_the_environment() {
    let s = native(
        MINIMAL,
        &[(
            "BCW_EXECUTOR__K8S__OPTIONS__KUBERNETES__NODE_SELECTORS",
            r#"{"dedicated": "ci", "kubernetes.io/arch": "amd64"}"#,
        )],
    );
    let k = &s.executor.get("k8s").unwrap().options.kubernetes;
    assert_eq!(k.node_selectors["kubernetes.io/arch"], "amd64");
    assert_eq!(k.node_selectors["dedicated"], "ci");
}

#[test]
fn the_environment_beats_the_file_whatever_the_spelling() {
    let yaml = format!("{MINIMAL}rabbitmq:\n  prefetchCount: 10\n  messageReprocessLimit: 2\n");
    let s = native(
        &yaml,
        &[
            ("BCW_RABBITMQ__PREFETCH_COUNT", "30"),
            ("BCW_RABBITMQ__MESSAGEREPROCESSLIMIT", "9"),
        ],
    );
    assert_eq!(s.rabbitmq.prefetch_count, 30);
    assert_eq!(s.rabbitmq.message_reprocess_limit, 9);
}

#[test]
fn an_environment_executor_key_finds_the_file_executor_it_spells() {
    let yaml = format!(
        "{MINIMAL}  k8s-sandbox:\n    options:\n      kubernetes:\n        host: https://sandbox\n"
    );
    let s = native(&yaml, &[("BCW_EXECUTOR__K8S_SANDBOX__WEIGHTAGE", "5")]);
    let names: Vec<&str> = s
        .executor
        .executors
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(names, ["k8s", "k8s-sandbox"]);
    assert_eq!(s.executor.get("k8s-sandbox").unwrap().weightage, 5);
}

#[test]
fn the_environment_alone_can_define_an_executor() {
    let s = match run(
        None,
        &[(
            "BCW_EXECUTOR__GPU__OPTIONS__KUBERNETES__HOST",
            "https://gpu:6443",
        )],
        Compat::Native,
    ) {
        Ok(l) => l.settings,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(s.executor.default_executor(), "gpu");
}

#[test]
fn executors_keep_their_configuration_order() {
    let yaml = "
executor:
  zeta: {options: {kubernetes: {host: 'https://z'}}}
  alpha: {options: {kubernetes: {host: 'https://a'}}}
  mid: {options: {kubernetes: {host: 'https://m'}}}
";
    let s = native(yaml, &[]);
    let names: Vec<&str> = s
        .executor
        .executors
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(names, ["zeta", "alpha", "mid"]);
    assert_eq!(s.executor.default_executor(), "zeta");
}

#[test]
fn cli_variables_and_foreign_variables_are_not_configuration() {
    let s = native(
        MINIMAL,
        &[
            ("BCW_LOG_LEVEL", "debug"),
            ("BCW_CONFIG", "/etc/bcw.yaml"),
            ("RABBITMQ_QUEUE", "ignored-in-native-mode"),
            ("PORT", "1"),
        ],
    );
    assert_eq!(s.rabbitmq.queue, "default");
    assert_eq!(s.httpd.port, 9464);
}

#[test]
fn an_empty_variable_sets_an_empty_value() {
    let yaml = format!("{MINIMAL}      prefix: beta-\n");
    assert_eq!(
        native(&yaml, &[])
            .executor
            .get("k8s")
            .unwrap()
            .options
            .prefix,
        "beta-"
    );
    let s = native(&yaml, &[("BCW_EXECUTOR__K8S__OPTIONS__PREFIX", "")]);
    assert_eq!(s.executor.get("k8s").unwrap().options.prefix, "");
}

#[test]
fn a_partial_tier_table_keeps_the_other_defaults() {
    let yaml = format!("{MINIMAL}        resources:\n          cpu: {{max: 16, turbo: '14'}}\n");
    let s = native(&yaml, &[]);
    let cpu = s
        .executor
        .get("k8s")
        .unwrap()
        .options
        .kubernetes
        .resources
        .cpu;
    assert_eq!(
        (cpu.micro, cpu.low, cpu.high, cpu.turbo, cpu.max),
        (0.5, 2.0, 6.0, 14.0, 16.0)
    );
}

#[test]
fn exclusion_from_the_file_is_replaced_by_exclusions_from_the_environment() {
    let yaml = format!("{MINIMAL}    exclusion: [rhel6]\n");
    assert_eq!(
        native(&yaml, &[]).executor.get("k8s").unwrap().exclusions,
        ["rhel6"]
    );
    let s = native(&yaml, &[("BCW_EXECUTOR__K8S__EXCLUSIONS", "centos,sles")]);
    assert_eq!(
        s.executor.get("k8s").unwrap().exclusions,
        ["centos", "sles"]
    );
}

#[test]
fn every_unknown_key_is_reported_with_its_full_path() {
    let yaml = format!(
        "{MINIMAL}        nodeSelector: {{a: b}}\n    weight: 3\nrabbitmq:\n  prefetchCont: 3\nmetrics:\n  port: 1\n"
    );
    let p = problems(
        Some(&yaml),
        &[("BCW_RABBITMQ__QUEUE_NAME", "x"), ("BCW_HTTPD__PROT", "1")],
    );
    assert_eq!(
        p,
        [
            "executor.k8s.options.kubernetes.nodeSelector: unknown key; did you mean nodeSelectors?",
            "executor.k8s.weight: unknown key",
            "rabbitmq.prefetchCont: unknown key; did you mean prefetchCount?",
            "metrics: unknown key",
            "BCW_HTTPD__PROT: unknown key; did you mean BCW_HTTPD__PORT?",
            "BCW_RABBITMQ__QUEUE_NAME: unknown key",
        ]
    );
}

#[test]
fn type_errors_are_reported_key_by_key_across_sections_and_executors() {
    let yaml = "
rabbitmq:
  port: seventy
  prefetchCount: many
  queueType: fifo
executor:
  a:
    weightage: heavy
    options:
      kubernetes:
        host: https://a
        privileged: maybe
  b:
    options:
      kubernetes:
        host: https://b
        resources: {cpu: {max: lots}}
lifecycle:
  leaseDuration: forever
";
    let p = problems(Some(yaml), &[]);
    let paths: Vec<&str> = p.iter().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "rabbitmq.port",
            "rabbitmq.prefetch_count",
            "rabbitmq.queue_type",
            "executor.a.weightage",
            "executor.a.options.kubernetes.privileged",
            "executor.b.options.kubernetes.resources.cpu.max",
            "lifecycle.lease_duration",
        ],
        "{p:#?}"
    );
    assert!(p[2].contains("unknown variant `fifo`"), "{}", p[2]);
}

#[test]
fn a_value_that_fails_to_type_does_not_cause_rules_about_its_default() {
    // Without care, the default max_build_timeout (120 min) would be reported as shorter than
    // build_timeout (150 min), a value relation the user never wrote.
    let yaml = format!("{MINIMAL}        buildTimeout: 150\n        maxBuildTimeout: soon\n");
    let p = problems(Some(&yaml), &[]);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].starts_with("executor.k8s.options.kubernetes.max_build_timeout: "));
}

#[test]
fn a_secret_of_the_wrong_type_is_not_echoed() {
    let yaml = format!("{MINIMAL}rabbitmq:\n  password: {{nested: hunter22}}\n");
    let p = problems(Some(&yaml), &[]);
    assert_eq!(p, ["rabbitmq.password: expected a string"]);
}

#[test]
fn all_problems_at_once() {
    let yaml = "
rabbitmq:
  prefetchCount: 0
  qeue: x
  port: x
executor:
  plugin: missing
  k8s:
    weightage: -1
    options:
      kubernetes:
        dnsPolicy: Sometimes
";
    let p = problems(Some(yaml), &[("BCW_EVENTS__ENABLED", "perhaps")]);
    assert_eq!(
        p,
        [
            "rabbitmq.qeue: unknown key; did you mean queue?",
            "rabbitmq.port: expected a number, got \"x\" (invalid digit found in string)",
            "events.enabled: expected a boolean, got \"perhaps\"",
            "rabbitmq.prefetch_count: must be at least 1",
            "executor.plugin: the default executor \"missing\" is not configured (executors: k8s)",
            "executor.k8s.weightage: -1 is negative",
            "executor.k8s.options.kubernetes.host: set host (the API server URL) or kubeconfig",
            "executor.k8s.options.kubernetes.dns_policy: \"Sometimes\" is not one of ClusterFirst, \
             ClusterFirstWithHostNet, Default",
        ]
    );
}

#[test]
fn a_missing_file_and_a_broken_file_are_problems() {
    let p = match load(&LoadOptions {
        path: Some("/nonexistent/bcw/config.yaml".into()),
        ..LoadOptions::default()
    }) {
        Ok(_) => panic!("loaded a missing file"),
        Err(e) => e.0,
    };
    assert_eq!(p[0].path, "/nonexistent/bcw/config.yaml");
    assert!(p[0].message.contains("not found"), "{}", p[0]);
    let p = problems(Some("rabbitmq: [unclosed\n"), &[]);
    assert!(p[0].contains("config.yaml"), "{p:?}");
    assert_eq!(p[0].lines().count(), 1);
}

#[test]
fn ignored_keys_are_accepted_with_a_notice() {
    let yaml = format!("{MINIMAL}rabbitmq:\n  queueOptions: {{durable: true}}\n");
    let loaded = run(Some(&yaml), &[], Compat::Native).unwrap();
    assert_eq!(loaded.notices.len(), 1);
    assert_eq!(loaded.notices[0].path, "rabbitmq.queueOptions");
    assert!(
        loaded.notices[0]
            .message
            .starts_with("accepted for compatibility and ignored")
    );
}

#[test]
fn compat_mode_names_parse_and_print() {
    assert_eq!("screwdriver".parse::<Compat>(), Ok(Compat::Screwdriver));
    assert_eq!("Native".parse::<Compat>(), Ok(Compat::Native));
    assert!("node".parse::<Compat>().is_err());
    assert_eq!(Compat::Screwdriver.to_string(), "screwdriver");
}

#[test]
fn load_options_never_print_environment_values() {
    let opts = LoadOptions {
        env: BTreeMap::from([("RABBITMQ_PASSWORD".to_string(), "hunter22".to_string())]),
        ..LoadOptions::default()
    };
    let shown = format!("{opts:?}");
    assert!(
        shown.contains("RABBITMQ_PASSWORD") && !shown.contains("hunter22"),
        "{shown}"
    );
}

#[test]
fn events_format_defaults_to_cloudevents_and_takes_both_spellings_and_the_environment() {
    use crate::config::EventsFormat;
    assert_eq!(
        native(MINIMAL, &[]).events.format,
        EventsFormat::Cloudevents
    );
    let camel = native(&format!("{MINIMAL}events:\n  format: cdevents\n"), &[]);
    assert_eq!(camel.events.format, EventsFormat::Cdevents);
    assert!(camel.events.format.cdevents() && !camel.events.format.all_cloudevents());
    let env = native(MINIMAL, &[("BCW_EVENTS__FORMAT", "both")]);
    assert_eq!(env.events.format, EventsFormat::Both);
    assert!(env.events.format.cdevents() && env.events.format.all_cloudevents());
    let p = problems(Some(&format!("{MINIMAL}events:\n  format: xml\n")), &[]);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with("events.format: ") && p[0].contains("unknown variant `xml`"),
        "{}",
        p[0]
    );
}
