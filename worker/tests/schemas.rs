//! The event JSON Schemas of `schemas/events/` are generated from the Rust types (schemars) and
//! must never drift from them: this test regenerates them and fails when the checked-in files
//! differ. Every event the worker builds is valid for the envelope schema, for the general
//! `build-event-data.schema.json`, and for the data schema of its own type.
//!
//! To update the files after changing an event type:
//! `BCW_UPDATE_SCHEMAS=1 cargo test -p buildcluster-worker --test schemas`

mod corpus;

use buildcluster_worker::events::{
    BuildEventData, CloudEvent, ClusterEventData, DeadLettered, EventType, Failed, LaunchFailed,
    Launched, Retrying, Running, Stopped, Succeeded, TimedOut, Verified, build_event,
    cluster_event, source,
};
use corpus::events::{build_events, sparse};
use corpus::schemas_dir;
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

/// Base of the event schemas' `$id`s.
const EVENT_SCHEMA_BASE: &str = "https://buildcluster.dev/schemas/events/";
const UPDATE_COMMAND: &str =
    "BCW_UPDATE_SCHEMAS=1 cargo test -p buildcluster-worker --test schemas";

/// The schema of `T` as the worker serialises it (the serialize contract: a field that is always
/// written is required, even when it may be null).
fn schema_of<T: JsonSchema>() -> Map<String, Value> {
    let schema = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<T>();
    match schema.to_value() {
        Value::Object(map) => map,
        other => panic!("a struct's schema is an object, got {other}"),
    }
}

/// `schema` with its `$id`, and its keys in reading order: `$schema`, `$id`, `title`,
/// `description`, then the rest as generated.
fn with_id(schema: Map<String, Value>, file: &str) -> Value {
    let mut rest = schema;
    rest.insert("$id".into(), json!(format!("{EVENT_SCHEMA_BASE}{file}")));
    let mut out = Map::new();
    for key in ["$schema", "$id", "title", "description"] {
        if let Some(value) = rest.shift_remove(key) {
            out.insert(key.into(), value);
        }
    }
    out.extend(rest);
    Value::Object(out)
}

/// The schema of the `data` of a `build.*` type, from its data type; `None` for other types.
fn data_schema(ty: EventType) -> Option<Map<String, Value>> {
    Some(match ty {
        EventType::BuildLaunched => schema_of::<Launched>(),
        EventType::BuildRunning => schema_of::<Running>(),
        EventType::BuildLaunchFailed => schema_of::<LaunchFailed>(),
        EventType::BuildRetrying => schema_of::<Retrying>(),
        EventType::BuildDeadLettered => schema_of::<DeadLettered>(),
        EventType::BuildStopped => schema_of::<Stopped>(),
        EventType::BuildSucceeded => schema_of::<Succeeded>(),
        EventType::BuildFailed => schema_of::<Failed>(),
        EventType::BuildTimedOut => schema_of::<TimedOut>(),
        EventType::BuildVerified => schema_of::<Verified>(),
        EventType::BreakerOpened | EventType::BreakerClosed => return None,
    })
}

/// The file of a type's data schema: its routing key, then `.data.schema.json`.
fn data_file(ty: EventType) -> String {
    format!("{}.data.schema.json", ty.suffix())
}

/// The data schemas of every `build.*` type: (file, schema), titled by their type.
fn data_schemas() -> Vec<(String, Value)> {
    EventType::ALL
        .into_iter()
        .filter_map(|ty| {
            let mut schema = data_schema(ty)?;
            schema.insert("title".into(), json!(format!("{} data", ty.full())));
            let file = data_file(ty);
            Some((file.clone(), with_id(schema, &file)))
        })
        .collect()
}

fn types(prefix: &str) -> Vec<String> {
    EventType::ALL
        .into_iter()
        .filter(|t| t.suffix().starts_with(prefix))
        .map(EventType::full)
        .collect()
}

/// The CloudEvents envelope: the fields of [`CloudEvent`], with the values the worker always
/// writes pinned, `type` limited to [`EventType::ALL`], and `data` checked against the schema of
/// its type's family.
fn envelope() -> Value {
    let mut schema = schema_of::<CloudEvent<ClusterEventData>>();
    schema.shift_remove("$defs");
    schema.insert("title".into(), json!("CloudEvent"));
    schema.insert(
        "description".into(),
        json!(
            "A lifecycle event of buildcluster-worker: CloudEvents 1.0 in structured JSON mode \
             (content-type application/cloudevents+json), published persistent to the topic \
             exchange `events.exchange` with routing key = `type` without `dev.buildcluster.`. \
             For one build each type is published once per attempt; consumers may deduplicate \
             by `id`."
        ),
    );
    let properties = schema
        .get_mut("properties")
        .and_then(Value::as_object_mut)
        .expect("CloudEvent has properties");
    properties["specversion"]["const"] = json!("1.0");
    properties["id"]["description"] = json!(
        "Deterministic: a build event's id is derived from (buildId, type, attempt), so a \
         redelivery publishes the same id. Also the AMQP message_id."
    );
    properties["id"]["format"] = json!("uuid");
    properties["type"]["enum"] = json!(EventType::ALL.map(EventType::full));
    properties["time"]["format"] = json!("date-time");
    properties["datacontenttype"]["const"] = json!("application/json");
    properties["data"] = json!({
        "description": "The payload: build-event-data.schema.json for `dev.buildcluster.build.*`, \
                        and the schema of its own type, <type without dev.buildcluster.>.data.schema.json; \
                        cluster-event-data.schema.json for `dev.buildcluster.cluster.*`.",
        "type": "object",
    });
    let mut all_of = vec![
        json!({"if": {"properties": {"type": {"enum": types("build.")}}},
               "then": {"properties": {"data": {"$ref": "build-event-data.schema.json"}}}}),
        json!({"if": {"properties": {"type": {"enum": types("cluster.")}}},
               "then": {"properties": {"data": {"$ref": "cluster-event-data.schema.json"}}}}),
    ];
    all_of.extend(EventType::ALL.into_iter().filter_map(|ty| {
        data_schema(ty)?;
        Some(json!({"if": {"properties": {"type": {"const": ty.full()}}},
                    "then": {"properties": {"data": {"$ref": data_file(ty)}}}}))
    }));
    schema.insert("allOf".into(), Value::Array(all_of));
    with_id(schema, "cloudevent.schema.json")
}

/// The event schemas as generated from the code: (file name under `schemas/events/`, schema).
fn generated() -> Vec<(String, Value)> {
    let mut schemas = vec![
        (
            "build-event-data.schema.json".to_string(),
            with_id(
                schema_of::<BuildEventData>(),
                "build-event-data.schema.json",
            ),
        ),
        (
            "cluster-event-data.schema.json".to_string(),
            with_id(
                schema_of::<ClusterEventData>(),
                "cluster-event-data.schema.json",
            ),
        ),
        ("cloudevent.schema.json".to_string(), envelope()),
    ];
    schemas.extend(data_schemas());
    schemas
}

fn pretty(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema serialises");
    text.push('\n');
    text
}

#[test]
fn event_schemas_match_the_rust_types() {
    let dir = schemas_dir().join("events");
    let update = std::env::var("BCW_UPDATE_SCHEMAS").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for (file, schema) in generated() {
        let path = dir.join(&file);
        let want = pretty(&schema);
        if update {
            std::fs::create_dir_all(&dir).expect("create schemas/events");
            std::fs::write(&path, &want).expect("write the schema");
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/events/{{{}}} differ from the Rust types; regenerate them with\n    {UPDATE_COMMAND}\nand commit the result",
        stale.join(",")
    );
}

#[test]
fn every_event_schema_file_is_generated() {
    // A renamed or removed type must not leave its old schema behind for consumers to find.
    let files: Vec<String> = generated().into_iter().map(|(file, _)| file).collect();
    for entry in std::fs::read_dir(schemas_dir().join("events")).expect("schemas/events") {
        let name = entry.expect("a directory entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            files.iter().any(|f| *f == name),
            "schemas/events/{name} is generated by nothing; remove it"
        );
    }
}

// The tests below use the generated schemas, which the test above holds equal to the files (so
// that they pass while the files are being regenerated).

#[test]
fn the_event_schemas_are_valid_2020_12_schemas() {
    for (file, schema) in generated() {
        jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(schema["$id"], format!("{EVENT_SCHEMA_BASE}{file}"));
    }
}

/// A validator for `schema`, with every generated event schema registered under its `$id`.
fn validator(schema: &Value) -> jsonschema::Validator {
    let resources: Vec<(String, Value)> = generated()
        .into_iter()
        .map(|(file, schema)| (format!("{EVENT_SCHEMA_BASE}{file}"), schema))
        .collect();
    let registry = jsonschema::Registry::new()
        .extend(resources)
        .expect("schema ids are URIs")
        .prepare()
        .expect("the event schemas form a registry");
    jsonschema::options()
        .with_registry(&registry)
        .build(schema)
        .expect("the schema compiles")
}

fn envelope_validator() -> jsonschema::Validator {
    validator(&envelope())
}

/// The validator of one generated file.
fn file_validator(file: &str) -> jsonschema::Validator {
    let (_, schema) = generated()
        .into_iter()
        .find(|(f, _)| f == file)
        .unwrap_or_else(|| panic!("{file} is generated"));
    validator(&schema)
}

fn errors(validator: &jsonschema::Validator, event: &Value) -> String {
    validator
        .iter_errors(event)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_event_the_worker_builds_is_valid_for_the_envelope() {
    let validator = envelope_validator();
    let queue = source("default");
    let opened = ClusterEventData {
        executor: "k8s".into(),
        failures: 5,
        open_for_seconds: Some(30.0),
        trip: Some(1),
    };
    let closed = ClusterEventData {
        executor: "k8s-vm".into(),
        ..Default::default()
    };
    let mut bodies: Vec<Vec<u8>> = build_events()
        .into_iter()
        .map(|e| build_event(&queue, e).body)
        .collect();
    for ty in [EventType::BreakerOpened, EventType::BreakerClosed] {
        bodies.push(cluster_event(&queue, "replica-0", 1, ty, opened.clone()).body);
        bodies.push(cluster_event(&queue, "replica-0", 2, ty, closed.clone()).body);
    }
    for body in bodies {
        let event: Value = serde_json::from_slice(&body).expect("events are JSON");
        assert!(
            validator.is_valid(&event),
            "{}: {}\n{event}",
            event["type"],
            errors(&validator, &event)
        );
    }
}

#[test]
fn every_build_event_is_valid_for_the_general_data_schema_and_its_types() {
    let general = file_validator("build-event-data.schema.json");
    for event in build_events() {
        let ty = event.event_type();
        let own = file_validator(&data_file(ty));
        let body: Value = serde_json::from_slice(&build_event(&source("default"), event).body)
            .expect("events are JSON");
        let data = &body["data"];
        assert!(
            general.is_valid(data),
            "{}: {}",
            ty.suffix(),
            errors(&general, data)
        );
        assert!(
            own.is_valid(data),
            "{}: {}",
            ty.suffix(),
            errors(&own, data)
        );
    }
}

#[test]
fn the_envelope_refuses_what_the_worker_never_publishes() {
    let validator = envelope_validator();
    let launched = build_event("buildcluster-worker/default", Launched::new(sparse()));
    let good: Value = serde_json::from_slice(&launched.body).unwrap();
    assert!(validator.is_valid(&good), "{}", errors(&validator, &good));
    type Mutation = (&'static str, fn(&mut Value));
    let mutations: [Mutation; 9] = [
        ("an unknown type", |e| {
            e["type"] = json!("dev.buildcluster.build.exploded")
        }),
        ("another spec version", |e| e["specversion"] = json!("0.3")),
        ("a build event with cluster data", |e| {
            e["type"] = json!("dev.buildcluster.build.failed");
            e["data"] = json!({"executor": "k8s", "failures": 1});
        }),
        ("a cluster event with build data", |e| {
            e["type"] = json!("dev.buildcluster.cluster.breaker_opened");
        }),
        ("build data without its always-written fields", |e| {
            e["data"].as_object_mut().unwrap().remove("reason");
        }),
        ("a build.failed without reason and exit code", |e| {
            e["type"] = json!("dev.buildcluster.build.failed");
        }),
        ("a build.retrying without retryInSeconds", |e| {
            e["type"] = json!("dev.buildcluster.build.retrying");
            e["data"]["reason"] = json!("unavailable");
            e["data"]["message"] = json!("the cluster did not answer");
        }),
        ("a build.stopped without deletedPods", |e| {
            e["type"] = json!("dev.buildcluster.build.stopped");
        }),
        ("a build.verified with an unknown state", |e| {
            e["type"] = json!("dev.buildcluster.build.verified");
            e["data"]["state"] = json!("exploded");
        }),
    ];
    for (name, mutate) in mutations {
        let mut event = good.clone();
        mutate(&mut event);
        assert!(!validator.is_valid(&event), "{name} was accepted: {event}");
    }
}
