//! Behaviour tests of the build pod: each checks one rule of the pod's shape.

use std::collections::BTreeMap;

use serde_json::json;

use super::fixtures::*;
use super::*;
use crate::config::{Resources, TokenDelivery};
use crate::intake::BuildId;

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
