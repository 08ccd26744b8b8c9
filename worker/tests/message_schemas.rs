//! The message schemas of `schemas/messages/` against the decoder (`intake::decode`): every
//! corpus message the decoder accepts is valid for the schema, every one it refuses is invalid,
//! and mutated messages are judged the same way by both, except for the two deliberate
//! disagreements listed in [`deliberate_disagreement`] (and in `schemas/README.md`).

mod corpus;

use buildcluster_worker::intake::{Limits, Poison, PoisonReason, decode};
use corpus::{INVALID, MESSAGE_SCHEMA_BASE, VALID, read_schema, schema_accepts, schema_errors};
use proptest::prelude::*;
use serde_json::{Value, json};

/// JavaScript's `Number.MAX_SAFE_INTEGER`, the largest id.
const MAX_ID: u64 = (1 << 53) - 1;

fn decodes(body: &[u8]) -> Result<(), Poison> {
    decode(body, Limits::default()).map(|_| ())
}

/// A refusal the schema cannot predict, by design. Each is a case where the schema accepts and
/// the decoder refuses (never the other way round):
///
/// 1. `apiUri` must parse as an http(s) URI with a host (the `http` crate's parser). The schema
///    checks the shape `http(s)://<authority>...` with no whitespace or control characters,
///    which is a superset: `https://a^b` or `https://h:port` pass the pattern and are refused.
/// 2. `container` may be at most 4096 bytes of UTF-8 after trimming; JSON Schema counts
///    characters, so a long non-ASCII image name can pass the schema and be refused.
fn deliberate_disagreement(message: &Value, poison: &Poison) -> Option<&'static str> {
    if poison.reason != PoisonReason::InvalidValue {
        return None;
    }
    if poison
        .detail
        .starts_with("buildConfig.apiUri is not an http(s) URI")
    {
        return Some("apiUri is parsed as a URI");
    }
    let container = message["buildConfig"]["container"].as_str()?.trim();
    (poison
        .detail
        .starts_with("buildConfig.container is not an image reference")
        && container.len() > 4096
        && container.chars().count() <= 4096)
        .then_some("container length is counted in bytes")
}

#[test]
fn the_schemas_are_valid_2020_12_schemas_with_their_file_names_as_ids() {
    for name in [
        "start.schema.json",
        "stop.schema.json",
        "clear.schema.json",
        "message.schema.json",
    ] {
        let schema = read_schema(&format!("messages/{name}"));
        jsonschema::meta::validate(&schema)
            .unwrap_or_else(|e| panic!("{name} is not a valid schema: {e}"));
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        assert_eq!(schema["$id"], format!("{MESSAGE_SCHEMA_BASE}{name}"));
        assert!(
            schema["description"].is_string(),
            "{name} has no description"
        );
        // Each schema compiles on its own too (with its siblings registered).
        corpus::message_validator(name);
    }
}

#[test]
fn every_valid_corpus_message_is_valid_for_the_schema_and_decodes() {
    for (name, body) in VALID {
        let body = body.as_bytes();
        assert!(
            schema_accepts(body),
            "{name}: refused by the schema:\n{}",
            schema_errors(body)
        );
        if let Err(p) = decodes(body) {
            panic!("{name}: refused by the decoder: {p}");
        }
    }
}

#[test]
fn every_invalid_corpus_message_is_invalid_for_the_schema_and_refused_with_its_reason() {
    for (name, reason, body) in INVALID {
        assert!(!schema_accepts(body), "{name}: accepted by the schema");
        match decodes(body) {
            Ok(()) => panic!("{name}: accepted by the decoder"),
            Err(p) => assert_eq!(p.reason, *reason, "{name}: {p}"),
        }
    }
}

#[test]
fn the_corpus_covers_every_kind_of_poison_the_schema_can_see() {
    use PoisonReason::*;
    for reason in [
        InvalidJson,
        NotAnObject,
        MissingJob,
        UnknownJob,
        MissingConfig,
        MissingField,
        WrongType,
        InvalidValue,
    ] {
        assert!(
            INVALID.iter().any(|(_, r, _)| *r == reason),
            "no corpus message for {reason:?}"
        );
    }
}

#[test]
fn the_size_limit_is_not_part_of_the_schema() {
    // `too_large` is a transport limit: the schema accepts the message, the decoder refuses it
    // unparsed. The message schema's description states the limit instead.
    let body = VALID[0].1.as_bytes();
    assert!(schema_accepts(body));
    let limits = Limits {
        max_bytes: body.len() - 1,
    };
    assert_eq!(
        decode(body, limits).unwrap_err().reason,
        PoisonReason::TooLarge
    );
    let description = read_schema("messages/message.schema.json")["description"].to_string();
    assert!(description.contains("1 MiB"), "{description}");
}

#[test]
fn the_deliberate_disagreements_exist_and_go_one_way() {
    let start = |container: &str, api: &str| {
        json!({"job": "start", "buildConfig": {"buildId": 1, "container": container,
            "apiUri": api, "token": "t"}})
    };
    for message in [
        start("node:22", "https://a^b"),
        start("node:22", "https://[::1"),
        start(&"é".repeat(3000), "https://a.b"),
    ] {
        let body = serde_json::to_vec(&message).unwrap();
        assert!(schema_accepts(&body), "{message}");
        let poison = decodes(&body).unwrap_err();
        assert!(
            deliberate_disagreement(&message, &poison).is_some(),
            "{poison}"
        );
    }
}

#[test]
fn schema_and_decoder_agree_on_ids_at_every_digit_boundary() {
    // Each digit of 2^53-1 raised and lowered, the powers of ten, and their neighbours: the
    // numbers at the edges of every branch of the schema's digit-string range pattern.
    let max = MAX_ID.to_string();
    let mut numbers: Vec<u64> = (0..=19)
        .flat_map(|k| {
            let p = 10u64.pow(k);
            [p - 1, p, p + 1]
        })
        .collect();
    numbers.extend((MAX_ID - 3)..=(MAX_ID + 3));
    for (i, _) in max.char_indices() {
        for d in '0'..='9' {
            let mut digits = max.clone();
            digits.replace_range(i..=i, &d.to_string());
            numbers.extend(digits.parse::<u64>());
        }
    }
    for n in numbers {
        for id in [
            json!(n),
            json!(n.to_string()),
            json!(format!("000{n}")),
            json!(format!(" \u{85}{n}\t")),
            json!(format!("{n:0>20}")),
            json!(format!("{n:0>21}")),
        ] {
            let mut message: Value = serde_json::from_str(VALID[0].1).expect("corpus");
            message["buildConfig"]["buildId"] = id;
            agree(&message).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

#[test]
fn the_api_uri_pattern_accepts_every_uri_the_decoder_accepts() {
    // Every ASCII character, and a few others, first in the authority, in the host, in the
    // path and in the query: the pattern may be looser than the decoder, never stricter.
    let others = ['\u{85}', '\u{a0}', 'é', '\u{3000}'];
    for c in (0u8..=127).map(char::from).chain(others) {
        for uri in [
            format!("https://{c}api.example"),
            format!("https://api{c}.example"),
            format!("http://api.example/{c}x"),
            format!("HTTPS://api.example/x?{c}=1"),
            format!("https://api.example{c}"),
        ] {
            let message = json!({"job": "start", "buildConfig": {"buildId": 1,
                "container": "node:22", "apiUri": uri, "token": "t"}});
            agree(&message).unwrap_or_else(|e| panic!("{uri:?}: {e}"));
        }
    }
}

// === property tests ===

/// Paths (object keys from the root) that the decoder reads; mutations also target these when
/// a message lacks them.
const READ_PATHS: &[&[&str]] = &[
    &["job"],
    &["buildConfig"],
    &["cacheConfig"],
    &["buildConfig", "buildId"],
    &["buildConfig", "jobId"],
    &["buildConfig", "jobName"],
    &["buildConfig", "eventId"],
    &["buildConfig", "pipelineId"],
    &["buildConfig", "pipeline"],
    &["buildConfig", "pipeline", "id"],
    &["buildConfig", "pipeline", "name"],
    &["buildConfig", "pipeline", "scmContext"],
    &["buildConfig", "container"],
    &["buildConfig", "apiUri"],
    &["buildConfig", "token"],
    &["buildConfig", "annotations"],
    &["buildConfig", "isPR"],
    &["buildConfig", "prNum"],
    &["buildConfig", "prParentJobId"],
    &["buildConfig", "template"],
    &["buildConfig", "template", "name"],
    &["buildConfig", "template", "version"],
    &["cacheConfig", "resource"],
    &["cacheConfig", "action"],
    &["cacheConfig", "prefix"],
    &["cacheConfig", "scope"],
    &["cacheConfig", "id"],
    &["cacheConfig", "pipelineId"],
];

/// One change to a valid message.
#[derive(Debug, Clone)]
enum Mutation {
    /// Remove the key at a path (from the message's own paths and [`READ_PATHS`]).
    Drop(prop::sample::Index),
    /// Set the key at a path (its parent must be an object).
    Set(prop::sample::Index, Value),
    /// Replace the whole message.
    Root(Value),
}

/// Characters where the decoder's and the schema's ideas of whitespace and control characters
/// could part: C0/C1 controls, NEL, NBSP, BOM, line separators, and some ordinary ones.
fn edge_char() -> impl Strategy<Value = char> {
    prop::sample::select(vec![
        ' ', '\t', '\n', '\r', '\u{b}', '\u{c}', '\0', '\u{7}', '\u{1f}', '\u{7f}', '\u{85}',
        '\u{9f}', '\u{a0}', '\u{1680}', '\u{2003}', '\u{200b}', '\u{2028}', '\u{3000}', '\u{feff}',
        'é', '🦀', 'a', 'Z', '0', '9', '-', ':', '/', '@', '.', '?', '#', '[', ']', '^', '%',
    ])
}

fn edge_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(edge_char(), 0..max).prop_map(|cs| cs.into_iter().collect())
}

/// Values a producer might put anywhere: every JSON type, ids at and around their limits,
/// digit strings, boolean spellings, URI and image shapes, hostile and huge strings.
fn interesting_value() -> impl Strategy<Value = Value> {
    let numbers = prop_oneof![
        prop::sample::select(vec![
            json!(0),
            json!(1),
            json!(-1),
            json!(MAX_ID),
            json!(MAX_ID + 1),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.5),
            json!(42.0),
            json!(-0.0),
            json!(1e3),
            json!(9007199254740992.0),
            json!(1e300),
        ]),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e20f64..1e20).prop_map(Value::from),
    ];
    let strings = prop_oneof![
        "[ \t\u{85}\u{a0}]{0,2}-?0{0,3}[0-9]{0,22}[ \t\u{85}\u{feff}]{0,2}",
        prop::sample::select(vec![
            "9007199254740991",
            "9007199254740992",
            "0",
            "00000000000000000001",
            "000000000000000000001",
            "true",
            "False",
            "yes",
            "",
            "start",
            "verify",
            "stop",
            "clear",
            "caches",
            "delete",
            "..",
            "node:22",
            "https://api.screwdriver.cd",
        ])
        .prop_map(String::from),
        "(https?|HTTPS?|ftp)(://)?[a-z.:@\\[\\]/?#^% ]{0,12}",
        (edge_string(3), edge_string(8), edge_string(3)).prop_map(|(a, b, c)| format!("{a}{b}{c}")),
        (edge_string(2), edge_string(6)).prop_map(|(a, b)| format!("{a}https://{b}")),
        ".{0,40}",
        prop::sample::select(vec![4095usize, 4096, 4097])
            .prop_flat_map(|n| (Just(n), prop::sample::select(vec!["a", "é", " "])))
            .prop_map(|(n, c)| format!("x{}", c.repeat(n))),
    ]
    .prop_map(Value::String);
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        numbers,
        strings.clone(),
        strings.clone(),
        prop::collection::vec(strings.clone(), 0..2).prop_map(Value::Array),
        prop::collection::btree_map("[a-z]{1,3}|id|name|version", strings, 0..3)
            .prop_map(|m| json!(m)),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => any::<prop::sample::Index>().prop_map(Mutation::Drop),
        8 => (any::<prop::sample::Index>(), interesting_value()).prop_map(|(i, v)| Mutation::Set(i, v)),
        1 => interesting_value().prop_map(Mutation::Root),
    ]
}

/// Every object-key path of `value` down to `depth`, plus [`READ_PATHS`].
fn paths(value: &Value) -> Vec<Vec<String>> {
    fn walk(value: &Value, prefix: &mut Vec<String>, depth: usize, out: &mut Vec<Vec<String>>) {
        let Value::Object(map) = value else { return };
        for (k, v) in map {
            prefix.push(k.clone());
            out.push(prefix.clone());
            if depth > 1 {
                walk(v, prefix, depth - 1, out);
            }
            prefix.pop();
        }
    }
    let mut out: Vec<Vec<String>> = READ_PATHS
        .iter()
        .map(|p| p.iter().map(|s| s.to_string()).collect())
        .collect();
    walk(value, &mut Vec::new(), 3, &mut out);
    out
}

/// The parent object of `path`, when every step is an object.
fn parent<'a>(
    value: &'a mut Value,
    path: &[String],
) -> Option<(&'a mut serde_json::Map<String, Value>, String)> {
    let (last, init) = path.split_last()?;
    let mut at = value;
    for key in init {
        at = at.as_object_mut()?.get_mut(key)?;
    }
    Some((at.as_object_mut()?, last.clone()))
}

fn apply(message: &mut Value, m: &Mutation) {
    match m {
        Mutation::Drop(i) => {
            let all = paths(message);
            if let Some((obj, key)) = parent(message, &all[i.index(all.len())]) {
                obj.shift_remove(&key);
            }
        }
        Mutation::Set(i, v) => {
            let all = paths(message);
            if let Some((obj, key)) = parent(message, &all[i.index(all.len())]) {
                obj.insert(key, v.clone());
            }
        }
        Mutation::Root(v) => *message = v.clone(),
    }
}

fn valid_message() -> impl Strategy<Value = Value> {
    prop::sample::select(VALID.to_vec()).prop_map(|(_, body)| {
        serde_json::from_str::<Value>(body).expect("the valid corpus is JSON")
    })
}

fn agree(message: &Value) -> Result<(), TestCaseError> {
    let body = serde_json::to_vec(message).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let schema = schema_accepts(&body);
    match (schema, decodes(&body)) {
        (true, Ok(())) | (false, Err(_)) => Ok(()),
        (true, Err(p)) if deliberate_disagreement(message, &p).is_some() => Ok(()),
        (true, Err(p)) => Err(TestCaseError::fail(format!(
            "the schema accepts but the decoder refuses ({p}): {message}"
        ))),
        (false, Ok(())) => Err(TestCaseError::fail(format!(
            "the decoder accepts but the schema refuses:\n{}\n{message}",
            schema_errors(&body)
        ))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn schema_and_decoder_agree_on_mutated_messages(
        message in valid_message(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut message = message;
        for m in &mutations {
            apply(&mut message, m);
        }
        agree(&message)?;
    }

    #[test]
    fn schema_and_decoder_agree_on_every_id_spelling(
        n in prop_oneof![
            1u64..=u64::MAX,
            (MAX_ID - 4)..(MAX_ID + 4),
            9_000_000_000_000_000u64..9_010_000_000_000_000,
            0u64..1000,
        ],
        spelling in 0..4usize,
        zeros in 0..8usize,
        pad in "[ \t\u{85}\u{a0}\u{feff}]{0,2}",
        negative in any::<bool>(),
        field in prop::sample::select(vec!["buildId", "jobId", "eventId", "pipelineId", "prNum", "prParentJobId"]),
    ) {
        let digits = format!("{}{}{n}", if negative { "-" } else { "" }, "0".repeat(zeros));
        let id = match spelling {
            0 => json!(n),
            1 => serde_json::from_str::<Value>(&digits).unwrap_or(Value::Null),
            2 => json!(n as f64),
            _ => json!(format!("{pad}{digits}{pad}")),
        };
        let mut message: Value = serde_json::from_str(VALID[0].1).expect("corpus");
        message["buildConfig"][field] = id;
        agree(&message)?;
    }
    #[test]
    fn schema_and_decoder_agree_on_strings_with_edge_characters(
        field in prop::sample::select(vec!["container", "apiUri", "token", "isPR", "buildId", "jobId", "jobName"]),
        core in prop::sample::select(vec!["node:22", "https://api.screwdriver.cd", "HTTP://h:8080/x", "tok.en", "true", "FALSE", "42", "9007199254740991"]),
        pre in edge_string(3),
        inner in prop::option::of(edge_char()),
        post in edge_string(3),
        at in any::<prop::sample::Index>(),
    ) {
        let mut core = core.to_string();
        if let Some(c) = inner {
            let boundaries: Vec<usize> = (0..=core.len()).filter(|i| core.is_char_boundary(*i)).collect();
            core.insert(boundaries[at.index(boundaries.len())], c);
        }
        let mut message: Value = serde_json::from_str(VALID[0].1).expect("corpus");
        message["buildConfig"][field] = json!(format!("{pre}{core}{post}"));
        agree(&message)?;
    }
}
