//! Bad input: whatever a producer sends, the decoder never panics, refuses with a bounded reason
//! and a sentence (never quoting the token), refuses oversized bodies without parsing them, and
//! whatever it accepts makes a valid build pod (names, labels, annotations, environment, paths)
//! that does not carry the token, or a cache path that stays under the cache root.

mod corpus;

use std::collections::BTreeMap;
use std::path::{Component, Path};

use buildcluster_worker::cache::{self, ClearOutcome};
use buildcluster_worker::config::{CacheSettings, EcosystemSettings, ExecutorConfig};
use buildcluster_worker::intake::{BuildId, Job, JobKind, Limits, Poison, PoisonReason, decode};
use buildcluster_worker::naming::{
    is_dns1123_label, is_dns1123_subdomain, is_label_value, is_qualified_name,
};
use buildcluster_worker::podspec::{PodInputs, build_pod, token_secret};
use corpus::{TOKEN, VALID};
use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use serde_json::{Value, json};

const MIB: usize = 1024 * 1024;
/// Every reason code a refusal may carry (the `x-bcw-reason` header, a metric label).
const REASONS: [&str; 9] = [
    "too_large",
    "invalid_json",
    "not_an_object",
    "missing_job",
    "unknown_job",
    "missing_config",
    "missing_field",
    "wrong_type",
    "invalid_value",
];

/// A refusal carries a known reason code and a sentence, and never the token.
fn check_refusal(p: &Poison, token: &str) -> Result<(), TestCaseError> {
    prop_assert!(REASONS.contains(&p.reason.as_str()), "{:?}", p.reason);
    prop_assert!(!p.detail.trim().is_empty(), "no detail for {:?}", p.reason);
    prop_assert!(
        token.is_empty() || !p.detail.contains(token),
        "the token is quoted: {}",
        p.detail
    );
    Ok(())
}

fn contract_example() -> Value {
    serde_json::from_str(VALID[0].1).expect("corpus")
}

// === bytes, depth and size ===

/// Bytes that look like JSON often enough to get past the first character.
fn jsonish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\"job\"",
        "\"start\"",
        "\"stop\"",
        "\"clear\"",
        "\"verify\"",
        "\"buildConfig\"",
        "\"cacheConfig\"",
        "\"buildId\"",
        "\"container\"",
        "\"apiUri\"",
        "\"token\"",
        "\"annotations\"",
        "1",
        "-1",
        "1e999",
        "0.5",
        "null",
        "true",
        "\\u0000",
        "\\ud800",
        "\u{feff}",
        " ",
        "\u{ff}",
    ]);
    prop::collection::vec(pieces, 0..64).prop_map(|ps| ps.concat().into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_bytes_give_a_job_or_a_reasoned_refusal(
        body in prop_oneof![prop::collection::vec(any::<u8>(), 0..512), jsonish_bytes()],
    ) {
        if let Err(p) = decode(&body, Limits::default()) {
            check_refusal(&p, "")?;
        }
    }
}

#[test]
fn deep_nesting_is_refused_as_invalid_json_without_overflowing_the_stack() {
    let depth = 100_000;
    let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    let unclosed = "{\"job\":".repeat(depth);
    for body in [arrays, objects, unclosed] {
        assert!(body.len() < MIB, "the body must reach the parser");
        let p = decode(body.as_bytes(), Limits::default()).unwrap_err();
        assert_eq!(p.reason, PoisonReason::InvalidJson, "{p}");
    }
    // Deep inside an otherwise valid message, too (serde_json stops at 128 levels).
    let mut message = contract_example();
    let deep: Value = serde_json::from_str(&format!("{}{}", "[".repeat(127), "]".repeat(127)))
        .expect("127 levels parse");
    message["buildConfig"]["annotations"]["example.com/deep"] = json!([deep]);
    let body = serde_json::to_vec(&message).unwrap();
    let p = decode(&body, Limits::default()).unwrap_err();
    assert_eq!(p.reason, PoisonReason::InvalidJson, "{p}");
}

#[test]
fn a_body_over_the_limit_is_refused_without_being_parsed() {
    // Not JSON at all, yet `too_large` and not `invalid_json`: the parser never saw it.
    let garbage = vec![b'{'; MIB + 1];
    let p = decode(&garbage, Limits::default()).unwrap_err();
    assert_eq!(p.reason, PoisonReason::TooLarge, "{p}");
    assert_eq!(p.job, JobKind::Unknown);
    assert!(
        p.detail.contains("1048577") && p.detail.contains("1048576"),
        "{}",
        p.detail
    );

    // A 5 MB JSON array: refused by the limit; with a higher limit the parser reads it and
    // refuses it for what it is.
    let huge = format!("[{}0]", "0,".repeat(5 * MIB / 2));
    assert!(huge.len() > 5 * MIB);
    assert_eq!(
        decode(huge.as_bytes(), Limits::default())
            .unwrap_err()
            .reason,
        PoisonReason::TooLarge
    );
    let roomy = Limits { max_bytes: 8 * MIB };
    assert_eq!(
        decode(huge.as_bytes(), roomy).unwrap_err().reason,
        PoisonReason::NotAnObject
    );
}

#[test]
fn the_limit_is_inclusive() {
    let mut body = serde_json::to_vec(&contract_example()).unwrap();
    body.resize(MIB, b' ');
    assert!(decode(&body, Limits::default()).is_ok());
    body.push(b' ');
    assert_eq!(
        decode(&body, Limits::default()).unwrap_err().reason,
        PoisonReason::TooLarge
    );
}

// === wrong types and bad ids, field by field ===

/// Values of the wrong JSON type for an id.
fn wrong_id_types() -> Vec<Value> {
    vec![
        json!(true),
        json!([]),
        json!({}),
        json!(1.5),
        json!("abc"),
        json!("1e3"),
        json!(""),
    ]
}

/// Ids of the right type but unusable: zero, negative, beyond 2^53-1.
fn bad_id_values() -> Vec<Value> {
    vec![
        json!(0),
        json!(-1),
        json!(i64::MIN),
        json!(9007199254740992u64),
        json!(u64::MAX),
        json!(1e20),
        json!(-0.0),
        json!("-7"),
        json!("0"),
        json!("99999999999999999999"),
    ]
}

#[test]
fn every_id_field_refuses_wrong_types_and_bad_values() {
    for job in ["start", "verify", "stop"] {
        for field in [
            "buildId",
            "jobId",
            "eventId",
            "pipelineId",
            "prNum",
            "prParentJobId",
        ] {
            if job == "stop" && !matches!(field, "buildId" | "jobId") {
                continue; // stop reads no other id
            }
            let cases = wrong_id_types()
                .into_iter()
                .map(|v| (v, PoisonReason::WrongType))
                .chain(
                    bad_id_values()
                        .into_iter()
                        .map(|v| (v, PoisonReason::InvalidValue)),
                );
            for (value, reason) in cases {
                let mut message = contract_example();
                message["job"] = json!(job);
                message["buildConfig"][field] = value.clone();
                let body = serde_json::to_vec(&message).unwrap();
                let p = decode(&body, Limits::default())
                    .expect_err(&format!("{job}.{field} = {value} was accepted"));
                assert_eq!(p.reason, reason, "{job}.{field} = {value}: {p}");
                assert_eq!(p.job.as_str(), job);
                let expected_build = (field != "buildId").then_some(BuildId(987654));
                assert_eq!(p.build_id, expected_build, "{job}.{field} = {value}");
                assert!(!p.detail.contains(TOKEN));
            }
        }
    }
}

#[test]
fn every_other_field_refuses_wrong_types() {
    let start_fields: &[(&str, &[Value])] = &[
        ("container", &[json!(22), json!(true), json!([]), json!({})]),
        (
            "apiUri",
            &[json!(1), json!(false), json!(["https://a.b"]), json!({})],
        ),
        (
            "token",
            &[json!(7), json!(true), json!([TOKEN]), json!({"t": TOKEN})],
        ),
        ("jobName", &[json!(true), json!([]), json!({})]),
        (
            "annotations",
            &[json!([]), json!("cpu=HIGH"), json!(5), json!(true)],
        ),
        ("pipeline", &[json!([]), json!("p"), json!(1)]),
        ("template", &[json!([]), json!("nodejs"), json!(2)]),
        ("isPR", &[json!(1), json!("yes"), json!([]), json!({})]),
    ];
    for job in ["start", "verify"] {
        for (field, values) in start_fields {
            for value in *values {
                let mut message = contract_example();
                message["job"] = json!(job);
                message["buildConfig"][*field] = value.clone();
                let body = serde_json::to_vec(&message).unwrap();
                let p = decode(&body, Limits::default())
                    .expect_err(&format!("{job}.{field} = {value} was accepted"));
                assert_eq!(p.reason, PoisonReason::WrongType, "{field} = {value}: {p}");
                assert_eq!(p.build_id, Some(BuildId(987654)));
                assert!(!p.detail.contains(TOKEN), "{}", p.detail);
            }
        }
    }
    for (path, value) in [
        (["pipeline", "name"], json!([])),
        (["pipeline", "scmContext"], json!({})),
        (["template", "name"], json!(true)),
        (["template", "version"], json!([1])),
    ] {
        let mut message = contract_example();
        message["buildConfig"][path[0]] = json!({});
        message["buildConfig"][path[0]][path[1]] = value.clone();
        let p = decode(&serde_json::to_vec(&message).unwrap(), Limits::default()).unwrap_err();
        assert_eq!(p.reason, PoisonReason::WrongType, "{path:?} = {value}: {p}");
    }
    for field in ["resource", "action", "scope", "pipelineId", "prefix", "id"] {
        for value in [json!(true), json!([]), json!({})] {
            let mut message: Value = serde_json::from_str(VALID[7].1).expect("clear corpus");
            message["cacheConfig"][field] = value.clone();
            let p = decode(&serde_json::to_vec(&message).unwrap(), Limits::default()).unwrap_err();
            assert_eq!(
                p.reason,
                PoisonReason::WrongType,
                "clear {field} = {value}: {p}"
            );
            assert_eq!(p.job, JobKind::Clear);
        }
    }
}

// === hostile strings that reach the pod ===

/// Strings a hostile producer might send: arbitrary Unicode with controls, shell and path
/// tricks, bidirectional marks, NUL, and very long strings.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::sample::select(vec![
            "$(rm -rf /)",
            "`id`",
            "'; echo pwned; '",
            "\"quoted\" and \\escaped\\",
            "../../etc/passwd",
            "..",
            "/",
            "\u{202e}gnp.exe",
            "\u{200f}rtl\u{200e}",
            "\0",
            "a\0b",
            "\u{feff}bom",
            "ä漢字🦀",
            "-leading",
            "trailing-",
            "UPPER.case",
            "${SD_TOKEN}",
            "$SD_TOKEN",
            "%s%n%x",
            "x=y",
            "screwdriver.cd/executor",
            "example.com/key",
            "",
        ])
        .prop_map(String::from),
        "[\\PC'\"\\\\$`;&|<>(){}\\[\\]*?~#!\\n\\t\\r\u{0}\u{202e}\u{200f} /:.=_A-Za-z0-9-]{0,80}",
        Just("x".repeat(10 * 1024)),
        ".{0,8}".prop_map(|s| format!("{s}{}", "é".repeat(5000))),
    ]
}

/// A hostile value of any JSON type (strings hostile).
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => hostile().prop_map(Value::String),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => prop::collection::btree_map(hostile(), hostile(), 0..3).prop_map(|m| json!(m)),
    ]
}

/// Text the decoder accepts for an optional text field: a hostile string, or a number.
fn hostile_text() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => hostile().prop_map(Value::String),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(Value::Null),
    ]
}

/// A container image the decoder accepts, with hostile characters in it.
fn hostile_image() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("node:22".to_string()),
        "[^\\s\\p{Cc}]{1,120}",
        Just(format!("registry.example.com/{}:1", "a".repeat(4000))),
    ]
}

/// An API URI the decoder accepts, with hostile characters in its path and query.
fn hostile_api() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9$()'*+,;=:@/?&._~!-]{0,60}",
        Just("$(curl$IFS'evil')/../..;id?x=$SD_TOKEN&y=$(id)".to_string()),
    ]
    .prop_map(|rest| format!("https://api.example.com/{rest}"))
}

#[derive(Debug, Clone)]
struct HostileStart {
    job: &'static str,
    strings: BTreeMap<&'static str, Value>,
    container: String,
    api_uri: String,
    token_tail: String,
    annotations: BTreeMap<String, Value>,
    pr_num: Option<u64>,
    message_api_on_command_line: bool,
}

fn hostile_start() -> impl Strategy<Value = HostileStart> {
    let text_fields = [
        "jobName",
        "pipelineName",
        "scmContext",
        "templateName",
        "templateVersion",
    ];
    let sd_keys = [
        "executor",
        "cpu",
        "ram",
        "disk",
        "diskSpeed",
        "timeout",
        "dockerEnabled",
        "dockerCpu",
        "dockerRam",
        "terminationGracePeriodSeconds",
    ];
    let sd = prop::collection::vec(hostile_value(), sd_keys.len()).prop_map(move |vs| {
        sd_keys
            .iter()
            .zip(vs)
            .map(|(k, v)| (format!("screwdriver.cd/{k}"), v))
            .collect::<BTreeMap<_, _>>()
    });
    (
        prop::sample::select(vec!["start", "verify"]),
        prop::collection::vec(hostile_text(), text_fields.len()),
        (
            prop_oneof![4 => hostile_image(), 1 => hostile()],
            prop_oneof![4 => hostile_api(), 1 => hostile()],
        ),
        "[^\\p{Cc}]{0,40}",
        (
            sd,
            prop::collection::btree_map(hostile(), hostile_value(), 0..4),
        ),
        (any::<Option<u32>>(), any::<bool>()),
    )
        .prop_map(
            move |(job, texts, (container, api_uri), token_tail, (sd, free), (pr, api_cmd))| {
                let mut annotations = sd;
                annotations.extend(free);
                HostileStart {
                    job,
                    strings: text_fields.iter().copied().zip(texts).collect(),
                    container,
                    api_uri,
                    token_tail,
                    annotations,
                    pr_num: pr.map(u64::from).filter(|n| *n > 0),
                    message_api_on_command_line: api_cmd,
                }
            },
        )
}

impl HostileStart {
    fn token(&self) -> String {
        format!("{TOKEN}{}", self.token_tail)
    }

    fn message(&self) -> Value {
        json!({"job": self.job, "buildConfig": {
            "buildId": 987654, "jobId": 4321, "eventId": 123456, "pipelineId": 1234,
            "jobName": self.strings["jobName"],
            "pipeline": {"id": 1234, "name": self.strings["pipelineName"],
                         "scmContext": self.strings["scmContext"]},
            "template": {"name": self.strings["templateName"],
                         "version": self.strings["templateVersion"]},
            "container": self.container, "apiUri": self.api_uri, "token": self.token(),
            "annotations": self.annotations, "isPR": self.pr_num.is_some(),
            "prNum": self.pr_num, "prParentJobId": 4000,
        }})
    }
}

/// An executor that puts every message-dependent feature in the pod: docker-in-docker, a disk
/// speed node selector, the disk cache, and pod annotations from the message.
fn executor() -> ExecutorConfig {
    let mut config = ExecutorConfig::default();
    let k = &mut config.options.kubernetes;
    k.host = "https://10.0.0.1:6443".into();
    k.jobs_namespace = "builds".into();
    k.docker_feature_enabled = true;
    k.resources.disk.speed = "example.com/disk-speed".into();
    k.node_selectors = BTreeMap::from([("dedicated".into(), "builds".into())]);
    config
}

/// Kubernetes' environment variable name rule (C identifier plus `-` and `.`), the strict form
/// every supported Kubernetes version accepts.
fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || matches!(b, b'_' | b'-' | b'.'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn is_clean_absolute_path(p: &str) -> bool {
    let path = Path::new(p);
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

fn check_pod(pod: &Pod, token: &str) -> Result<(), TestCaseError> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    prop_assert!(is_dns1123_subdomain(name), "pod name {:?}", name);
    let mut annotation_bytes = 0;
    for (k, v) in pod.metadata.labels.iter().flatten() {
        prop_assert!(is_qualified_name(k), "label key {:?}", k);
        prop_assert!(is_label_value(v), "label {:?}={:?}", k, v);
    }
    for (k, v) in pod.metadata.annotations.iter().flatten() {
        prop_assert!(is_qualified_name(k), "annotation key {:?}", k);
        annotation_bytes += k.len() + v.len();
    }
    prop_assert!(
        annotation_bytes <= 256 * 1024,
        "annotations: {} bytes",
        annotation_bytes
    );

    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| TestCaseError::fail("no spec"))?;
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    for v in spec.volumes.iter().flatten() {
        prop_assert!(is_dns1123_label(&v.name), "volume name {:?}", v.name);
        if let Some(h) = &v.host_path {
            prop_assert!(is_clean_absolute_path(&h.path), "hostPath {:?}", h.path);
        }
    }
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        prop_assert!(is_dns1123_label(&c.name), "container name {:?}", c.name);
        for e in c.env.iter().flatten() {
            prop_assert!(is_env_name(&e.name), "env name {:?}", e.name);
        }
        for m in c.volume_mounts.iter().flatten() {
            prop_assert!(
                volumes.contains(&m.name.as_str()),
                "mount of no volume {:?}",
                m.name
            );
            prop_assert!(
                is_clean_absolute_path(&m.mount_path),
                "mountPath {:?}",
                m.mount_path
            );
        }
    }
    for t in spec.tolerations.iter().flatten() {
        prop_assert!(is_qualified_name(t.key.as_deref().unwrap_or_default()));
        prop_assert!(is_label_value(t.value.as_deref().unwrap_or_default()));
    }

    let text = serde_json::to_string(pod).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(!text.contains(token), "the token is in the pod");
    prop_assert!(!text.contains(TOKEN), "the token is in the pod");
    let back: Pod = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, pod);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn hostile_strings_never_make_an_invalid_pod_or_leak_the_token(h in hostile_start()) {
        let body = serde_json::to_vec(&h.message()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let token = h.token();
        let build = match decode(&body, Limits::default()) {
            Ok(Job::Start(b) | Job::Verify(b)) => b,
            Ok(other) => return Err(TestCaseError::fail(format!("decoded as {:?}", other.kind()))),
            Err(p) => return check_refusal(&p, &token),
        };
        let config = executor();
        let mut ecosystem = EcosystemSettings::default();
        ecosystem.cache.strategy = "disk".into();
        ecosystem.cache.path = "/mnt/cache".into();
        if h.message_api_on_command_line {
            ecosystem.api = String::new();
        }
        let allow: Vec<String> = h.annotations.keys().cloned().collect();
        let pod = build_pod(&PodInputs {
            executor: "k8s",
            config: &config,
            ecosystem: &ecosystem,
            build: &build,
            attempt: 1,
            pod_annotation_allow_list: &allow,
        });
        check_pod(&pod, &token)?;
        let secret = token_secret(&pod, &build.token, "uid-1");
        let secret_name = secret.metadata.name.clone().unwrap_or_default();
        prop_assert!(is_dns1123_subdomain(&secret_name), "secret name {:?}", secret_name);
    }
}

// === clear: paths from the message ===

fn clear_message(prefix: &Value, scope: &Value, pipeline: &Value, id: &Value) -> Value {
    json!({"job": "clear", "cacheConfig": {"resource": "caches", "action": "delete",
        "prefix": prefix, "scope": scope, "pipelineId": pipeline, "id": id}})
}

fn hostile_segment() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => hostile().prop_map(Value::String),
        1 => prop::sample::select(vec!["..", ".", "/", "../..", "jobs/../..", "1/../../x", "pipelines", "jobs", "events", "beta-", "1234", "~", "%2e%2e"])
            .prop_map(|s| json!(s)),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        1 => Just(Value::Null),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn a_clear_path_never_leaves_the_cache_root(
        prefix in hostile_segment(),
        scope in hostile_segment(),
        pipeline in hostile_segment(),
        id in hostile_segment(),
    ) {
        let body = serde_json::to_vec(&clear_message(&prefix, &scope, &pipeline, &id))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let clear = match decode(&body, Limits::default()) {
            Ok(Job::Clear(c)) => c,
            Ok(other) => return Err(TestCaseError::fail(format!("decoded as {:?}", other.kind()))),
            Err(p) => return check_refusal(&p, ""),
        };
        let root = Path::new("/var/cache/sd");
        if let Ok(dir) = cache::cache_dir(root, &clear) {
            prop_assert!(dir.starts_with(root), "{}", dir.display());
            let below = dir.strip_prefix(root).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(below.components().count() >= 2, "{}", dir.display());
            prop_assert!(below.components().all(|c| matches!(c, Component::Normal(_))), "{}", dir.display());
        }
    }
}

#[tokio::test]
async fn hostile_clear_messages_remove_nothing_outside_the_root() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let keep = outside.path().join("1234/keep");
    std::fs::create_dir_all(&keep).unwrap();
    std::fs::create_dir_all(root.path().join("jobs/1234/1234")).unwrap();
    std::fs::create_dir_all(root.path().join("pipelines/1234")).unwrap();
    // A symlink inside the root that points outside it.
    std::os::unix::fs::symlink(outside.path(), root.path().join("events")).unwrap();
    let settings = CacheSettings {
        strategy: "disk".into(),
        path: root.path().display().to_string(),
        ..Default::default()
    };
    let outside_name = outside.path().display().to_string();
    let segments = [
        json!(".."),
        json!("../.."),
        json!(outside_name),
        json!(format!("../../{outside_name}")),
        json!("/"),
        json!("."),
        json!(""),
        json!("1234/.."),
        json!("\u{0}"),
        json!("events"),
        json!("keep"),
        json!(1234),
    ];
    let mut removed = 0;
    for prefix in [json!(null), json!(".."), json!("beta-")] {
        for scope in [
            json!("jobs"),
            json!("events"),
            json!("pipelines"),
            json!(".."),
        ] {
            for pipeline in &segments {
                for id in &segments {
                    let body =
                        serde_json::to_vec(&clear_message(&prefix, &scope, pipeline, id)).unwrap();
                    let Ok(Job::Clear(c)) = decode(&body, Limits::default()) else {
                        continue;
                    };
                    if let Ok(ClearOutcome::Removed(_)) = cache::clear(&settings, &c).await {
                        removed += 1;
                    }
                    assert!(
                        keep.exists(),
                        "{body:?} removed a directory outside the root"
                    );
                    assert!(outside.path().exists());
                }
            }
        }
    }
    // The two legitimate directories among them were removed: the test sees removals.
    assert_eq!(removed, 2);
    assert!(!root.path().join("jobs/1234/1234").exists());
    assert!(!root.path().join("pipelines/1234").exists());
}
