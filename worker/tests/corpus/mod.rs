//! The message corpus shared by the schema and bad-input tests: messages the worker must accept
//! (the example of docs/interface.md §3, Screwdriver's messages and their variants), messages it
//! must refuse (one or more per kind of poison), and the JSON Schemas of `schemas/messages/`
//! loaded into a validator; and build events of every type ([`events`]).
//!
//! Test support only: it decides nothing about the worker's behaviour, it only lists inputs.

#![allow(dead_code)] // Each test crate uses a different part of the corpus.

pub mod events;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use buildcluster_worker::intake::PoisonReason;
use serde_json::Value;

/// Base of the message schemas' `$id`s.
pub const MESSAGE_SCHEMA_BASE: &str = "https://buildcluster.dev/schemas/messages/";

/// The token every corpus message carries; tests check that it never leaks.
pub const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.corpus-build-token-7f3a9c";

/// The repository's `schemas/` directory.
pub fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the worker crate sits in the workspace")
        .join("schemas")
}

/// A JSON file of `schemas/`, parsed.
pub fn read_schema(relative: &str) -> Value {
    let path = schemas_dir().join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A validator for `schemas/messages/<file>`, with the sibling schemas registered under their
/// `$id`s so that cross-file `$ref`s resolve without any retrieval.
pub fn message_validator(file: &str) -> jsonschema::Validator {
    let siblings: Vec<(String, Value)> = [
        "start.schema.json",
        "stop.schema.json",
        "clear.schema.json",
        "message.schema.json",
    ]
    .into_iter()
    .map(|name| {
        (
            format!("{MESSAGE_SCHEMA_BASE}{name}"),
            read_schema(&format!("messages/{name}")),
        )
    })
    .collect();
    let registry = jsonschema::Registry::new()
        .extend(siblings)
        .expect("schema ids are URIs")
        .prepare()
        .expect("the message schemas form a registry");
    jsonschema::options()
        .with_registry(&registry)
        .build(&read_schema(&format!("messages/{file}")))
        .unwrap_or_else(|e| panic!("{file} does not compile: {e}"))
}

/// The validator of `message.schema.json`, built once per test binary.
pub fn message_schema() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| message_validator("message.schema.json"))
}

/// Whether `body` is a JSON document that `message.schema.json` accepts.
pub fn schema_accepts(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| message_schema().is_valid(&v))
}

/// The schema's errors for `body`, one line each (for failure messages).
pub fn schema_errors(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => message_schema()
            .iter_errors(&v)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("not JSON: {e}"),
    }
}

/// Messages the worker accepts: (name, body). Bodies are raw text so that number spellings
/// (`1e3`, `42.0`) reach the decoder exactly as a producer writes them.
pub const VALID: &[(&str, &str)] = &[
    (
        "contract example",
        r#"{"job": "start", "buildConfig": {"buildId": 987654, "jobId": 4321, "jobName": "main",
  "eventId": 123456, "pipelineId": 1234,
  "pipeline": {"id": 1234, "name": "screwdriver-cd/example", "scmContext": "github:github.com"},
  "container": "node:22", "apiUri": "https://api.screwdriver.cd", "token": "eyJhbGciOiJSUzI1NiJ9.corpus-build-token-7f3a9c",
  "annotations": {"screwdriver.cd/cpu": "HIGH", "screwdriver.cd/ram": 8,
                  "screwdriver.cd/timeout": 60, "screwdriver.cd/executor": "k8s"},
  "isPR": false, "prNum": null, "blockedBy": [4321], "freezeWindows": []}}"#,
    ),
    (
        "Screwdriver reference start",
        r#"{"job":"start","buildConfig":{"buildId":987654,"eventId":123456,"jobId":4321,"jobName":"main","jobState":"ENABLED",
 "jobArchived":false,"annotations":{"screwdriver.cd/cpu":"HIGH","screwdriver.cd/ram":8,"screwdriver.cd/timeout":60,
 "screwdriver.cd/executor":"k8s","screwdriver.cd/buildCluster":"ClusterA"},"blockedBy":[4321],"pipelineId":1234,
 "pipeline":{"id":1234,"name":"screwdriver-cd/example","scmContext":"github:github.com","configPipelineId":null},
 "freezeWindows":["* * ? * 1"],"apiUri":"https://api.screwdriver.cd","container":"node:22","isPR":false,
 "template":{"id":77,"name":"nodejs","namespace":"sd","fullName":"sd/nodejs","version":"2.0.1"},
 "token":"eyJhbGciOiJSUzI1NiJ9.corpus-build-token-7f3a9c"}}"#,
    ),
    (
        "Screwdriver reference PR build",
        r#"{"job":"start","buildConfig":{"buildId":987655,"eventId":123457,"jobId":4322,"jobName":"PR-42:main",
 "annotations":{"screwdriver.cd/executor":"k8s"},"pipelineId":1234,
 "pipeline":{"id":1234,"name":"screwdriver-cd/example","scmContext":"github:github.com"},
 "apiUri":"https://api.screwdriver.cd","container":"node:22","isPR":true,"prNum":42,"prParentJobId":4321,
 "token":"eyJhbGciOiJSUzI1NiJ9.corpus-build-token-7f3a9c"}}"#,
    ),
    (
        "verify carries the start buildConfig",
        r#"{"job":"verify","buildConfig":{"buildId":987654,"jobId":4321,"container":"node:22",
 "apiUri":"https://api.screwdriver.cd","token":"eyJhbGciOiJSUzI1NiJ9.corpus-build-token-7f3a9c"}}"#,
    ),
    (
        "Screwdriver reference stop",
        r#"{"job":"stop","buildConfig":{"buildId":987654,"jobId":4321,"jobName":"main","pipelineId":1234,"annotations":{"screwdriver.cd/executor":"k8s"},
 "blockedBy":[4321],"freezeWindows":[],"apiUri":"https://api.screwdriver.cd","container":"node:22","token":"eyJ...","eventId":123456,
 "pipeline":{"id":1234,"name":"screwdriver-cd/example","scmContext":"github:github.com"},"isPR":false}}"#,
    ),
    (
        "stop without a stored config",
        r#"{"job":"stop","buildConfig":{"buildId":987654,"jobId":4321,"jobName":"main"}}"#,
    ),
    (
        "stop with an unusable apiUri and token",
        r#"{"job":"stop","buildConfig":{"buildId":7,"apiUri":42,"token":["x"]}}"#,
    ),
    (
        "Screwdriver reference clear",
        r#"{"job":"clear","cacheConfig":{"resource":"caches","action":"delete","prefix":"beta-","scope":"jobs","id":4321,
 "pipelineId":"1234","buildClusters":["ClusterA","ClusterB"]}}"#,
    ),
    (
        "clear of a pipeline cache without prefix or id",
        r#"{"job":"clear","cacheConfig":{"resource":"caches","action":"delete","scope":"pipelines","pipelineId":1234,"prefix":null}}"#,
    ),
    (
        "string ids, as Joi converts them",
        r#"{"job":"start","buildConfig":{"buildId":"987654","jobId":" 4321 ","eventId":"0123456","pipelineId":"9007199254740991",
 "prNum":"42","container":"node:22","apiUri":"https://api.screwdriver.cd","token":"eyJhbGciOiJSUzI1NiJ9.corpus-build-token-7f3a9c"}}"#,
    ),
    (
        "integral numbers spelled as floats",
        r#"{"job":"start","buildConfig":{"buildId":9.87654e5,"jobId":4321.0,"pipelineId":9007199254740991,
 "container":"node:22","apiUri":"https://api.screwdriver.cd","token":"eyJhbGciOiJSUzI1NiJ9.corpus-build-token-7f3a9c"}}"#,
    ),
    (
        "beta annotations",
        r#"{"job":"start","buildConfig":{"buildId":5,"container":"node:22","apiUri":"https://api.screwdriver.cd",
 "token":"eyJhbGciOiJSUzI1NiJ9.corpus-build-token-7f3a9c",
 "annotations":{"beta.screwdriver.cd/executor":"k8s-vm","beta.screwdriver.cd/cpu":"turbo","beta.screwdriver.cd/ram":"12",
 "beta.screwdriver.cd/dockerEnabled":"true","example.com/free-text":{"any":["shape"]}}}}"#,
    ),
    (
        "nulls for every optional field",
        r#"{"job":"start","buildConfig":{"buildId":6,"jobId":null,"jobName":null,"eventId":null,"pipelineId":null,
 "pipeline":null,"annotations":null,"isPR":null,"prNum":null,"prParentJobId":null,"template":null,
 "container":"node:22","apiUri":"https://api.screwdriver.cd","token":"eyJhbGciOiJSUzI1NiJ9.corpus-build-token-7f3a9c"}}"#,
    ),
    (
        "pipeline id only inside pipeline",
        r#"{"job":"start","buildConfig":{"buildId":8,"pipeline":{"id":"1234","name":1234,"scmContext":null},
 "container":"node:22","apiUri":"https://api.screwdriver.cd","token":"eyJhbGciOiJSUzI1NiJ9.corpus-build-token-7f3a9c"}}"#,
    ),
    (
        "pipeline.id is not read when pipelineId is given",
        r#"{"job":"start","buildConfig":{"buildId":9,"pipelineId":1234,"pipeline":{"id":"not read"},
 "container":"node:22","apiUri":"https://api.screwdriver.cd","token":"eyJhbGciOiJSUzI1NiJ9.corpus-build-token-7f3a9c"}}"#,
    ),
    (
        "isPR as a string, text fields as numbers, padded values",
        r#"{"job":"start","buildConfig":{"buildId":10,"isPR":"TRUE","jobName":42,"template":{"name":"nodejs","version":2},
 "container":"  registry.example.com:5000/team/node@sha256:0123456789abcdef  ","apiUri":" HTTP://localhost:8080/ ",
 "token":" eyJhbGciOiJSUzI1NiJ9.corpus-build-token-7f3a9c "}}"#,
    ),
    (
        "unknown fields everywhere",
        r#"{"job":"start","extra":{"deep":[1,2,3]},"buildConfig":{"buildId":11,"provider":{"name":"aws"},
 "buildClusterName":"ClusterA","container":"node:22","apiUri":"https://api.screwdriver.cd",
 "token":"eyJhbGciOiJSUzI1NiJ9.corpus-build-token-7f3a9c"},"cacheConfig":"ignored for start"}"#,
    ),
];

/// Messages the worker refuses: (name, expected reason, body).
pub const INVALID: &[(&str, PoisonReason, &[u8])] = &[
    ("not JSON", PoisonReason::InvalidJson, b"{not json"),
    ("truncated JSON", PoisonReason::InvalidJson, br#"{"job":"stop","buildConfig":{"buildId":7}"#),
    ("not UTF-8", PoisonReason::InvalidJson, b"{\"job\":\"st\xffop\"}"),
    ("empty body", PoisonReason::InvalidJson, b""),
    ("a number too large for JSON parsers", PoisonReason::InvalidJson, br#"{"job":"stop","buildConfig":{"buildId":1e400}}"#),
    ("an array", PoisonReason::NotAnObject, b"[1, 2]"),
    ("a string", PoisonReason::NotAnObject, br#""start""#),
    ("null", PoisonReason::NotAnObject, b"null"),
    ("no job", PoisonReason::MissingJob, br#"{"buildConfig":{"buildId":7}}"#),
    ("job is a number", PoisonReason::MissingJob, br#"{"job":5,"buildConfig":{"buildId":7}}"#),
    ("job is null", PoisonReason::MissingJob, br#"{"job":null,"buildConfig":{"buildId":7}}"#),
    ("unknown job", PoisonReason::UnknownJob, br#"{"job":"launch","buildConfig":{"buildId":7}}"#),
    ("job names are case-sensitive", PoisonReason::UnknownJob, br#"{"job":"STOP","buildConfig":{"buildId":7}}"#),
    ("start without buildConfig", PoisonReason::MissingConfig, br#"{"job":"start"}"#),
    ("stop with a null buildConfig", PoisonReason::MissingConfig, br#"{"job":"stop","buildConfig":null}"#),
    ("verify with an array buildConfig", PoisonReason::MissingConfig, br#"{"job":"verify","buildConfig":[]}"#),
    ("clear with buildConfig instead of cacheConfig", PoisonReason::MissingConfig, br#"{"job":"clear","buildConfig":{"buildId":7}}"#),
    ("start without buildId", PoisonReason::MissingField, br#"{"job":"start","buildConfig":{"container":"node:22","apiUri":"https://a.b","token":"t"}}"#),
    ("start with a null container", PoisonReason::MissingField, br#"{"job":"start","buildConfig":{"buildId":7,"container":null,"apiUri":"https://a.b","token":"t"}}"#),
    ("start without apiUri", PoisonReason::MissingField, br#"{"job":"start","buildConfig":{"buildId":7,"container":"node:22","token":"t"}}"#),
    ("verify without token", PoisonReason::MissingField, br#"{"job":"verify","buildConfig":{"buildId":7,"container":"node:22","apiUri":"https://a.b"}}"#),
    ("stop without buildId", PoisonReason::MissingField, br#"{"job":"stop","buildConfig":{"jobId":4321}}"#),
    ("clear without scope", PoisonReason::MissingField, br#"{"job":"clear","cacheConfig":{"resource":"caches","action":"delete","pipelineId":"1"}}"#),
    ("clear with a null pipelineId", PoisonReason::MissingField, br#"{"job":"clear","cacheConfig":{"resource":"caches","action":"delete","scope":"pipelines","pipelineId":null}}"#),
    ("buildId is an object", PoisonReason::WrongType, br#"{"job":"stop","buildConfig":{"buildId":{"id":1}}}"#),
    ("buildId is fractional", PoisonReason::WrongType, br#"{"job":"stop","buildConfig":{"buildId":7.5}}"#),
    ("buildId is a word", PoisonReason::WrongType, br#"{"job":"stop","buildConfig":{"buildId":"seven"}}"#),
    ("buildId has more than 20 digits", PoisonReason::WrongType, br#"{"job":"stop","buildConfig":{"buildId":"000000000000000000007"}}"#),
    ("buildId is a boolean", PoisonReason::WrongType, br#"{"job":"stop","buildConfig":{"buildId":true}}"#),
    ("container is a number", PoisonReason::WrongType, br#"{"job":"start","buildConfig":{"buildId":7,"container":22,"apiUri":"https://a.b","token":"t"}}"#),
    ("apiUri is a list", PoisonReason::WrongType, br#"{"job":"start","buildConfig":{"buildId":7,"container":"node:22","apiUri":["https://a.b"],"token":"t"}}"#),
    ("token is a number", PoisonReason::WrongType, br#"{"job":"start","buildConfig":{"buildId":7,"container":"node:22","apiUri":"https://a.b","token":7}}"#),
    ("jobId is a word", PoisonReason::WrongType, br#"{"job":"start","buildConfig":{"buildId":7,"jobId":"main","container":"node:22","apiUri":"https://a.b","token":"t"}}"#),
    ("annotations is a list", PoisonReason::WrongType, br#"{"job":"start","buildConfig":{"buildId":7,"annotations":[],"container":"node:22","apiUri":"https://a.b","token":"t"}}"#),
    ("pipeline is a string", PoisonReason::WrongType, br#"{"job":"start","buildConfig":{"buildId":7,"pipeline":"p","container":"node:22","apiUri":"https://a.b","token":"t"}}"#),
    ("pipeline.id is a word when it is read", PoisonReason::WrongType, br#"{"job":"start","buildConfig":{"buildId":7,"pipeline":{"id":"p"},"container":"node:22","apiUri":"https://a.b","token":"t"}}"#),
    ("pipeline.name is a list", PoisonReason::WrongType, br#"{"job":"start","buildConfig":{"buildId":7,"pipeline":{"name":[]},"container":"node:22","apiUri":"https://a.b","token":"t"}}"#),
    ("isPR is a number", PoisonReason::WrongType, br#"{"job":"start","buildConfig":{"buildId":7,"isPR":1,"container":"node:22","apiUri":"https://a.b","token":"t"}}"#),
    ("isPR is yes", PoisonReason::WrongType, br#"{"job":"start","buildConfig":{"buildId":7,"isPR":"yes","container":"node:22","apiUri":"https://a.b","token":"t"}}"#),
    ("jobName is an object", PoisonReason::WrongType, br#"{"job":"start","buildConfig":{"buildId":7,"jobName":{},"container":"node:22","apiUri":"https://a.b","token":"t"}}"#),
    ("template is a number", PoisonReason::WrongType, br#"{"job":"start","buildConfig":{"buildId":7,"template":3,"container":"node:22","apiUri":"https://a.b","token":"t"}}"#),
    ("template.version is a boolean", PoisonReason::WrongType, br#"{"job":"start","buildConfig":{"buildId":7,"template":{"version":true},"container":"node:22","apiUri":"https://a.b","token":"t"}}"#),
    ("stop jobId is a list", PoisonReason::WrongType, br#"{"job":"stop","buildConfig":{"buildId":7,"jobId":[1]}}"#),
    ("clear scope is a boolean", PoisonReason::WrongType, br#"{"job":"clear","cacheConfig":{"resource":"caches","action":"delete","scope":true,"pipelineId":"1"}}"#),
    ("clear prefix is an object", PoisonReason::WrongType, br#"{"job":"clear","cacheConfig":{"resource":"caches","action":"delete","prefix":{},"scope":"jobs","pipelineId":"1","id":"2"}}"#),
    ("negative buildId", PoisonReason::InvalidValue, br#"{"job":"stop","buildConfig":{"buildId":-4}}"#),
    ("zero buildId", PoisonReason::InvalidValue, br#"{"job":"stop","buildConfig":{"buildId":0}}"#),
    ("buildId above 2^53-1", PoisonReason::InvalidValue, br#"{"job":"stop","buildConfig":{"buildId":9007199254740992}}"#),
    ("buildId of 2^64", PoisonReason::InvalidValue, br#"{"job":"stop","buildConfig":{"buildId":18446744073709551616}}"#),
    ("negative string buildId", PoisonReason::InvalidValue, br#"{"job":"stop","buildConfig":{"buildId":"-5"}}"#),
    ("string buildId above 2^53-1", PoisonReason::InvalidValue, br#"{"job":"stop","buildConfig":{"buildId":"9007199254740992"}}"#),
    ("negative prNum", PoisonReason::InvalidValue, br#"{"job":"start","buildConfig":{"buildId":7,"prNum":-1,"container":"node:22","apiUri":"https://a.b","token":"t"}}"#),
    ("empty container", PoisonReason::InvalidValue, br#"{"job":"start","buildConfig":{"buildId":7,"container":"  ","apiUri":"https://a.b","token":"t"}}"#),
    ("container with a space", PoisonReason::InvalidValue, br#"{"job":"start","buildConfig":{"buildId":7,"container":"node 22","apiUri":"https://a.b","token":"t"}}"#),
    ("container with NUL", PoisonReason::InvalidValue, br#"{"job":"start","buildConfig":{"buildId":7,"container":"node:22\u0000","apiUri":"https://a.b","token":"t"}}"#),
    ("apiUri is not a URI", PoisonReason::InvalidValue, br#"{"job":"start","buildConfig":{"buildId":7,"container":"node:22","apiUri":"not a uri","token":"t"}}"#),
    ("apiUri is ftp", PoisonReason::InvalidValue, br#"{"job":"start","buildConfig":{"buildId":7,"container":"node:22","apiUri":"ftp://a.b","token":"t"}}"#),
    ("apiUri has no host", PoisonReason::InvalidValue, br#"{"job":"start","buildConfig":{"buildId":7,"container":"node:22","apiUri":"https:///path","token":"t"}}"#),
    ("blank token", PoisonReason::InvalidValue, br#"{"job":"start","buildConfig":{"buildId":7,"container":"node:22","apiUri":"https://a.b","token":" \u2003 "}}"#),
    ("token with a control character", PoisonReason::InvalidValue, br#"{"job":"verify","buildConfig":{"buildId":7,"container":"node:22","apiUri":"https://a.b","token":"tok\u0007en"}}"#),
];
