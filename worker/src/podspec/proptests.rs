//! Property tests: hostile message fields never make an invalid pod, and never escape their
//! shell quoting.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::fixtures::{example_build, runc_executor};
use super::shell::{RUN_SH, split_words};
use super::*;
use crate::config::TokenDelivery;
use crate::intake::{Annotations, BuildId};
use crate::naming::{is_dns1123_label, is_dns1123_subdomain, is_label_value, is_qualified_name};
use crate::secret::Secret as SecretValue;

/// Strings a hostile producer might send: arbitrary Unicode, or dense in the characters that
/// matter to labels, YAML and shells.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\PC'\"\\\\$`;&|<>(){}\\[\\]*?~#!\\n\\t\\r /:.=_A-Za-z0-9-]{0,120}",
        "[-_.]{0,3}[a-zA-Z0-9]{60,90}[-_.]{0,3}",
        Just(String::new()),
    ]
}

/// An annotation value: any JSON shape, strings hostile.
fn hostile_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        hostile().prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<bool>().prop_map(Value::Bool),
        prop::collection::btree_map(hostile(), hostile(), 0..3).prop_map(|m| json!(m)),
        Just(Value::Null),
    ]
}

const ALLOWED: [&str; 3] = ["example.com/free-text", "buildcluster-worker/attempt", "x"];

#[derive(Debug, Clone)]
struct Hostile {
    build_id: u64,
    job_name: String,
    pipeline_name: String,
    template_name: String,
    template_version: String,
    container: String,
    api_uri: String,
    token: String,
    pr_num: Option<u64>,
    annotations: BTreeMap<String, Value>,
    args_delivery: bool,
    disk_cache: bool,
}

fn hostile_build() -> impl Strategy<Value = Hostile> {
    let keys = [
        "cpu",
        "ram",
        "disk",
        "diskSpeed",
        "timeout",
        "terminationGracePeriodSeconds",
        "dockerEnabled",
        "dockerCpu",
        "dockerRam",
    ];
    let sd_annotations =
        prop::collection::vec(hostile_json(), keys.len()).prop_map(move |values| {
            keys.iter()
                .zip(values)
                .map(|(k, v)| (format!("screwdriver.cd/{k}"), v))
                .collect::<BTreeMap<_, _>>()
        });
    let free = prop::collection::vec(hostile_json(), ALLOWED.len());
    (
        (1u64..(1 << 53), hostile(), hostile(), hostile(), hostile()),
        (hostile(), hostile(), hostile(), any::<Option<u64>>()),
        (sd_annotations, free, any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (build_id, job_name, pipeline_name, template_name, template_version),
                (container, api_uri, token, pr_num),
                (mut annotations, free, args_delivery, disk_cache),
            )| {
                annotations.extend(ALLOWED.iter().map(|k| k.to_string()).zip(free));
                Hostile {
                    build_id,
                    job_name,
                    pipeline_name,
                    template_name,
                    template_version,
                    container,
                    api_uri,
                    token,
                    pr_num,
                    annotations,
                    args_delivery,
                    disk_cache,
                }
            },
        )
}

fn make_pod(h: &Hostile) -> (Pod, StartBuild) {
    let build = StartBuild {
        build_id: BuildId(h.build_id),
        job_name: Some(h.job_name.clone()),
        pipeline_name: Some(h.pipeline_name.clone()),
        template_name: Some(h.template_name.clone()),
        template_version: Some(h.template_version.clone()),
        container: h.container.clone(),
        api_uri: h.api_uri.clone(),
        token: SecretValue::new(h.token.clone()),
        pr_num: h.pr_num,
        annotations: Annotations::new(h.annotations.clone()),
        ..example_build()
    };
    let mut config = runc_executor();
    let k = &mut config.options.kubernetes;
    k.docker_feature_enabled = true;
    k.resources.disk.speed = "example.com/disk-speed".into();
    k.node_selectors = BTreeMap::from([("dedicated".into(), "builds".into())]);
    k.token_delivery = if h.args_delivery {
        TokenDelivery::Args
    } else {
        TokenDelivery::Secret
    };
    let mut eco = EcosystemSettings::default();
    if h.disk_cache {
        eco.cache.strategy = "disk".into();
        eco.cache.path = "/mnt/cache".into();
    }
    let allow: Vec<String> = ALLOWED.iter().map(|k| k.to_string()).collect();
    let pod = build_pod(&PodInputs {
        executor: "k8s",
        config: &config,
        ecosystem: &eco,
        build: &build,
        attempt: 1,
        pod_annotation_allow_list: &allow,
    });
    (pod, build)
}

fn check_metadata(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Result<(), TestCaseError> {
    for (k, v) in labels {
        prop_assert!(is_qualified_name(k), "label key {:?}", k);
        prop_assert!(is_label_value(v), "label {:?}={:?}", k, v);
    }
    let mut total = 0;
    for (k, v) in annotations {
        prop_assert!(is_qualified_name(k), "annotation key {:?}", k);
        total += k.len() + v.len();
    }
    prop_assert!(total <= 256 * 1024, "annotations too large: {}", total);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn hostile_messages_make_valid_pods(h in hostile_build()) {
        let (pod, build) = make_pod(&h);

        // Names.
        let name = pod.metadata.name.clone().unwrap_or_default();
        prop_assert!(is_dns1123_subdomain(&name), "pod name {:?}", name);
        let spec = pod.spec.clone().unwrap_or_default();
        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            prop_assert!(is_dns1123_label(&c.name), "container name {:?}", c.name);
        }
        for v in spec.volumes.iter().flatten() {
            prop_assert!(is_dns1123_label(&v.name), "volume name {:?}", v.name);
        }

        // Labels and annotations.
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        check_metadata(&labels, &annotations)?;
        prop_assert_eq!(labels.get("sdbuild"), Some(&h.build_id.to_string()));
        prop_assert_eq!(annotations.get(naming::ANN_ATTEMPT).map(String::as_str), Some("1"));

        // Scheduling values are label values.
        for t in spec.tolerations.iter().flatten() {
            prop_assert!(is_qualified_name(t.key.as_deref().unwrap_or_default()));
            prop_assert!(is_label_value(t.value.as_deref().unwrap_or_default()));
        }

        // What is sent is what was built.
        let json = serde_json::to_value(&pod).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: Pod = serde_json::from_value(json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &pod);

        // The command line gives back exactly the intended words.
        let args = spec.containers[0].args.clone().unwrap_or_default();
        prop_assert_eq!(args.len(), 1);
        let env = BTreeMap::from([(TOKEN_ENV, "from-the-secret")]);
        let words = split_words(&args[0], &env).map_err(TestCaseError::fail)?;
        let token = if h.args_delivery { h.token.replace('\0', "") } else { "from-the-secret".into() };
        let eco = EcosystemSettings::default();
        prop_assert_eq!(&words[0], RUN_SH);
        prop_assert_eq!(&words[1], &token);
        let urls = [eco.api, eco.store];
        prop_assert_eq!(&words[2..4], urls.as_slice());
        prop_assert_eq!(&words[5], &h.build_id.to_string());
        prop_assert_eq!(words.len(), if h.disk_cache { 15 } else { 7 });

        // The token Secret is valid too.
        let secret = token_secret(&pod, &build.token, "uid");
        let secret_name = secret.metadata.name.clone().unwrap_or_default();
        prop_assert!(is_dns1123_subdomain(&secret_name), "secret name {:?}", secret_name);
        check_metadata(
            &secret.metadata.labels.clone().unwrap_or_default(),
            &secret.metadata.annotations.clone().unwrap_or_default(),
        )?;
    }

    #[test]
    fn a_secret_delivered_token_never_appears_in_the_pod(
        h in hostile_build(),
        token in "[A-Za-z0-9_-]{24,48}\\.[A-Za-z0-9_-]{24,48}",
    ) {
        let h = Hostile { token: token.clone(), args_delivery: false, ..h };
        let (pod, _) = make_pod(&h);
        let text = serde_json::to_string(&pod).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!text.contains(&token));
    }
}
