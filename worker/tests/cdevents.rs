//! Every CDEvent the worker renders is valid for the CDEvents specification's own JSON Schemas
//! of release 0.5.1 (`schemas/cdevents/v0.5.1/`, copied unchanged from the cdevents/spec
//! repository), with `format` checked (`uri-reference`, `date-time`). The validator is shown to
//! work: it accepts the specification's conformance examples and refuses events that break
//! the schema.

mod corpus;

use buildcluster_worker::events::cdevents::{CdEventType, render};
use buildcluster_worker::events::{Failed, build_event, source};
use corpus::events::{build_events, full};
use corpus::schemas_dir;
use serde_json::{Value, json};

/// The schema file of each CDEvents type the worker publishes.
fn schema_file(ty: CdEventType) -> &'static str {
    match ty {
        CdEventType::TaskRunStarted => "taskrunstarted.json",
        CdEventType::TaskRunFinished => "taskrunfinished.json",
    }
}

fn read(relative: &str) -> Value {
    let path = schemas_dir().join("cdevents/v0.5.1").join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A validator for one event schema, with the `links/` schemas registered under their `$id`s
/// (the event schemas refer to them relatively), so nothing is retrieved.
fn validator(ty: CdEventType) -> jsonschema::Validator {
    let links_dir = schemas_dir().join("cdevents/v0.5.1/links");
    let mut resources = Vec::new();
    for entry in std::fs::read_dir(&links_dir).expect("links/") {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let schema = read(&format!("links/{name}"));
        let id = schema["$id"].as_str().expect("a $id").to_string();
        resources.push((id, schema));
    }
    assert_eq!(resources.len(), 8, "the release's eight link schemas");
    let registry = jsonschema::Registry::new()
        .extend(resources)
        .expect("ids are URIs")
        .prepare()
        .expect("the link schemas form a registry");
    jsonschema::options()
        .with_registry(&registry)
        .should_validate_formats(true)
        .build(&read(schema_file(ty)))
        .unwrap_or_else(|e| panic!("{} does not compile: {e}", schema_file(ty)))
}

fn errors(v: &jsonschema::Validator, event: &Value) -> String {
    v.iter_errors(event)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_cdevent_the_worker_renders_is_valid_for_the_specifications_schema() {
    let mut checked = 0;
    for queue in ["default", "Cluster A/ü%"] {
        for data in build_events() {
            let ty = data.event_type();
            let ev = build_event(&source(queue), data);
            let typed = ev.build.as_ref().expect("a build event is typed");
            let Some(cd) = render(typed) else {
                continue;
            };
            let event: Value = serde_json::from_slice(&cd.body).unwrap();
            let v = validator(cd.ty);
            assert!(
                v.is_valid(&event),
                "{} from {}: {}\n{event}",
                cd.ty.as_str(),
                ty.suffix(),
                errors(&v, &event)
            );
            assert_eq!(event["context"]["type"], cd.ty.as_str());
            checked += 1;
        }
    }
    // running, succeeded, failed, timed_out, launch_failed; two data shapes; two queues.
    assert_eq!(checked, 5 * 2 * 2);
}

#[test]
fn the_validator_accepts_the_specifications_conformance_examples() {
    for (ty, example) in [
        (CdEventType::TaskRunStarted, "taskrun_started.json"),
        (CdEventType::TaskRunFinished, "taskrun_finished.json"),
    ] {
        let event = read(&format!("conformance/{example}"));
        let v = validator(ty);
        assert!(v.is_valid(&event), "{example}: {}", errors(&v, &event));
    }
}

#[test]
fn the_validator_refuses_what_the_schema_forbids() {
    let failed = Failed {
        build: full(),
        reason: "ImagePullBackOff".into(),
        message: "the image node:99 cannot be pulled".into(),
        exit_code: -1,
    };
    let ev = build_event(&source("default"), failed);
    let cd = render(ev.build.as_ref().unwrap()).unwrap();
    let good: Value = serde_json::from_slice(&cd.body).unwrap();
    let v = validator(CdEventType::TaskRunFinished);
    assert!(v.is_valid(&good));
    type Mutation = (&'static str, fn(&mut Value));
    let mutations: [Mutation; 5] = [
        ("another type", |e| {
            e["context"]["type"] = json!("dev.cdevents.taskrun.started.0.3.0")
        }),
        ("no subject id", |e| {
            e["subject"].as_object_mut().unwrap().remove("id");
        }),
        ("a timestamp that is no date-time", |e| {
            e["context"]["timestamp"] = json!("yesterday")
        }),
        ("an unknown content field", |e| {
            e["subject"]["content"]["exitCode"] = json!(1)
        }),
        ("a source that is no URI reference", |e| {
            e["context"]["source"] = json!("buildcluster worker/a b")
        }),
    ];
    for (what, mutate) in mutations {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(!v.is_valid(&bad), "{what}: accepted\n{bad}");
    }
}
