//! Issue 20: `events.format: cdevents` (and `both`) publishes the build lifecycle as CDEvents
//! `taskRun` events, valid for the specification's own JSON Schemas of release 0.5.1, in
//! CloudEvents binary mode (`cloudEvents:*` headers), next to the CloudEvents the replicas
//! read from each other.

use std::path::PathBuf;

use bcw_tests::harness::{Event, ExecutorSpec, InProcessWorker, Knobs, StartMsg, settings};
use bcw_tests::kube_sim::{ClusterConfig, KubeSim, Script, ScriptRule, SimConfig, Timeline};
use buildcluster_worker::broker::headers::as_string;
use serde_json::{Value, json};

use crate::support::{SOON, broker, queue_drained};

const STARTED: &str = "dev.cdevents.taskrun.started.0.3.0";
const FINISHED: &str = "dev.cdevents.taskrun.finished.0.3.0";

fn cdevents_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas/cdevents/v0.5.1"
    ))
}

fn read(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(&path).expect("schema file")).expect("JSON")
}

/// The specification's schema of `ty`, its link schemas registered, formats checked.
fn validator(ty: &str) -> jsonschema::Validator {
    let file = match ty {
        STARTED => "taskrunstarted.json",
        FINISHED => "taskrunfinished.json",
        other => panic!("no schema for {other}"),
    };
    let links: Vec<(String, Value)> = std::fs::read_dir(cdevents_dir().join("links"))
        .expect("links/")
        .map(|e| {
            let schema = read(e.unwrap().path());
            (schema["$id"].as_str().unwrap().to_string(), schema)
        })
        .collect();
    let registry = jsonschema::Registry::new()
        .extend(links)
        .unwrap()
        .prepare()
        .unwrap();
    jsonschema::options()
        .with_registry(&registry)
        .should_validate_formats(true)
        .build(&read(cdevents_dir().join(file)))
        .unwrap()
}

fn header(e: &Event, key: &str) -> Option<String> {
    e.properties
        .headers()
        .as_ref()?
        .inner()
        .get(key)
        .and_then(as_string)
}

/// Checks one CDEvent as it arrived: valid for its schema, binary-mode headers, ids agree.
fn check_cdevent(e: &Event) {
    let v = validator(&e.ty);
    let errors: Vec<String> = v.iter_errors(&e.raw).map(|x| x.to_string()).collect();
    assert!(errors.is_empty(), "{}: {errors:?}\n{}", e.ty, e.raw);
    assert_eq!(
        e.raw["context"]["type"],
        e.ty.as_str(),
        "routing key = type"
    );
    assert_eq!(e.content_type.as_deref(), Some("application/json"));
    let id = e.raw["context"]["id"].as_str().unwrap();
    assert_eq!(e.message_id.as_deref(), Some(id));
    assert_eq!(header(e, "cloudEvents:id").as_deref(), Some(id));
    assert_eq!(
        header(e, "cloudEvents:type").as_deref(),
        Some(e.ty.as_str())
    );
    assert_eq!(header(e, "cloudEvents:specversion").as_deref(), Some("1.0"));
    assert_eq!(
        header(e, "cloudEvents:subject").as_deref(),
        e.raw["subject"]["id"].as_str()
    );
    assert_eq!(
        header(e, "cloudEvents:time").as_deref(),
        e.raw["context"]["timestamp"].as_str()
    );
}

fn subject(e: &Event) -> String {
    e.raw["subject"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn sim() -> KubeSim {
    let sim = KubeSim::start(SimConfig {
        clusters: vec![ClusterConfig::new("a").with_timeline(Timeline::fast())],
        ..Default::default()
    })
    .await
    .expect("kube-sim starts");
    sim.cluster("a")
        .add_script(ScriptRule::new("^sim/broken", Script::InvalidImageName).unwrap());
    sim
}

fn knobs(format: &str) -> Knobs {
    Knobs {
        lifecycle: true,
        extra: json!({
            "events": {"format": format},
            "executor": {"a": {"options": {"kubernetes": {"imagePullGracePeriod": 1}}}},
        }),
        ..Knobs::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdevents_are_task_runs_valid_for_the_specification_and_the_only_events() {
    let sim = sim().await;
    let (rabbit, names, tap) = broker("cdevents").await;
    let a = ExecutorSpec::new("a", &sim.cluster("a").url());
    let worker = InProcessWorker::start(settings(&names, &[a], &knobs("cdevents"))).await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(71).json())
        .await;
    rabbit
        .publish_json(
            &names.exchange,
            &names.queue,
            &StartMsg::new(72).image("sim/broken:1").json(),
        )
        .await;
    let finished = tap.wait_count(FINISHED, 2, SOON).await;
    queue_drained(&rabbit, &names).await;

    let outcome = |build: &str| -> Value {
        finished
            .iter()
            .find(|e| subject(e) == build)
            .map(|e| e.raw["subject"]["content"].clone())
            .unwrap_or_else(|| panic!("no taskrun.finished for build {build}"))
    };
    assert_eq!(outcome("71")["outcome"], "success");
    assert_eq!(outcome("72")["outcome"], "error");
    let errors = outcome("72")["errors"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(errors.contains("InvalidImageName"), "{errors}");
    let started = tap.of(STARTED);
    assert_eq!(
        started.iter().map(subject).collect::<Vec<_>>(),
        ["71"],
        "the build that ran started; the one that could not start did not"
    );
    for e in started.iter().chain(&finished) {
        check_cdevent(e);
    }
    // No CloudEvents at all with format cdevents (replicas read none).
    for ty in [
        "build.launched",
        "build.running",
        "build.succeeded",
        "build.launch_failed",
    ] {
        assert!(tap.of(ty).is_empty(), "{ty} published with format cdevents");
    }
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_formats_publish_each_occurrence_once_in_each_standard() {
    let sim = sim().await;
    let (rabbit, names, tap) = broker("cdevents-both").await;
    let a = ExecutorSpec::new("a", &sim.cluster("a").url());
    let worker = InProcessWorker::start(settings(&names, &[a], &knobs("both"))).await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(81).json())
        .await;
    tap.wait_count(FINISHED, 1, SOON).await;
    tap.wait_count("build.succeeded", 1, SOON).await;
    queue_drained(&rabbit, &names).await;
    for (cloud, cd) in [("build.running", STARTED), ("build.succeeded", FINISHED)] {
        let c = tap.of(cloud);
        let d = tap.of(cd);
        assert_eq!((c.len(), d.len()), (1, 1), "{cloud} / {cd}");
        check_cdevent(&d[0]);
        assert_eq!(c[0].build_id(), 81);
        assert_eq!(subject(&d[0]), "81");
        assert_eq!(d[0].raw["customData"], c[0].data, "the same occurrence");
        assert_eq!(d[0].raw["context"]["timestamp"], c[0].raw["time"]);
        assert_ne!(d[0].raw["context"]["id"], c[0].raw["id"]);
    }
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
}
