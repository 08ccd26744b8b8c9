//! Issue 20: `enqueue` with the real binary: messages from a file, standard input or flags,
//! checked against `schemas/messages/` (and the worker's decoder) before anything is sent,
//! published persistent, mandatory and confirmed, one line each; the worker launches them.

use bcw_tests::harness::command::{Ran, run};
use bcw_tests::harness::{
    ExecutorSpec, InProcessWorker, Knobs, Names, Rabbit, StartMsg, TOKEN, settings, settings_json,
};
use bcw_tests::kube_sim::{ClusterConfig, KubeSim, SimConfig, Timeline};
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use serde_json::{Value, json};

use crate::support::{SOON, broker};

/// The pool's queue, bound as the worker binds it, without a worker.
async fn bound_queue(rabbit: &Rabbit, names: &Names) {
    let ch = rabbit.channel().await;
    ch.queue_declare(
        ShortString::from(names.queue.as_str()),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .expect("queue");
    ch.queue_bind(
        ShortString::from(names.queue.as_str()),
        ShortString::from(names.exchange.as_str()),
        ShortString::from(names.queue.as_str()),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
}

fn config(names: &Names) -> Value {
    settings_json(
        names,
        &[ExecutorSpec::new("a", "http://127.0.0.1:9")],
        &Knobs::default(),
    )
}

fn enqueue(names: &Names, args: &[&str], stdin: &[u8]) -> Ran {
    let mut all = vec!["enqueue"];
    all.extend_from_slice(args);
    run(&all, Some(&config(names)), &[], stdin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_a_file_and_from_standard_input_are_sent_confirmed_one_line_each() {
    let (rabbit, names, _tap) = broker("enqueue-file").await;
    bound_queue(&rabbit, &names).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("builds.json");
    let array = json!([
        StartMsg::new(11).json(),
        StartMsg::new(12).image("golang:1.24").json()
    ]);
    std::fs::write(&file, array.to_string()).unwrap();
    let ran = enqueue(&names, &[file.to_str().unwrap()], b"");
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert_eq!(
        ran.lines(),
        [
            format!(
                "sent   start build 11 ({} #1): exchange {:?}, key {:?}, confirmed",
                file.display(),
                names.exchange,
                names.queue
            ),
            format!(
                "sent   start build 12 ({} #2): exchange {:?}, key {:?}, confirmed",
                file.display(),
                names.exchange,
                names.queue
            ),
        ]
    );
    let lines = format!(
        "{}\n{}\n",
        bcw_tests::harness::stop(11),
        json!({"job": "clear", "cacheConfig": {"resource": "caches",
            "action": "delete", "scope": "pipelines", "pipelineId": "1234"}})
    );
    let ran = enqueue(&names, &["-"], lines.as_bytes());
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(
        ran.stdout.contains("sent   stop build 11 (stdin #1)"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("sent   clear (stdin #2)"),
        "{}",
        ran.stdout
    );
    assert!(!ran.all().contains(TOKEN), "a token was printed");
    let got = rabbit.drain(&names.queue).await;
    let jobs: Vec<(String, Value)> = got
        .iter()
        .map(|(props, body)| {
            assert_eq!(*props.delivery_mode(), Some(2), "persistent");
            assert_eq!(
                props.content_type().as_ref().unwrap().as_str(),
                "application/json"
            );
            let v: Value = serde_json::from_slice(body).unwrap();
            (
                v["job"].as_str().unwrap().to_string(),
                v["buildConfig"]["buildId"].clone(),
            )
        })
        .collect();
    assert_eq!(
        jobs,
        [
            ("start".into(), json!(11)),
            ("start".into(), json!(12)),
            ("stop".into(), json!(11)),
            ("clear".into(), Value::Null)
        ]
    );
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_message_and_nothing_is_sent() {
    let (rabbit, names, _tap) = broker("enqueue-bad").await;
    bound_queue(&rabbit, &names).await;
    let good = StartMsg::new(21).json();
    let mut bad = StartMsg::new(22).json();
    bad["buildConfig"]
        .as_object_mut()
        .unwrap()
        .remove("container");
    bad["buildConfig"]["token"] = json!(12345678);
    let input = format!("{good}\n{bad}\nnot json at all\n");
    let ran = enqueue(&names, &["-"], input.as_bytes());
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert!(ran.stderr.starts_with("nothing sent"), "{}", ran.stderr);
    assert!(ran.stderr.contains("stdin: not JSON"), "{}", ran.stderr);
    let ran = enqueue(&names, &["-"], format!("{good}\n{bad}\n").as_bytes());
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert!(
        ran.stderr
            .contains("stdin #2: at /buildConfig: \"container\" is a required property"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("stdin #2: at /buildConfig/token"),
        "{}",
        ran.stderr
    );
    assert!(
        !ran.all().contains("12345678") && !ran.all().contains(TOKEN),
        "a token was printed"
    );
    // Flags that cannot make a message, and files mixed with flags.
    let ran = enqueue(&names, &["--build-id", "5"], b"");
    assert_eq!(
        (ran.code, ran.stderr.contains("a start needs --image")),
        (Some(2), true),
        "{}",
        ran.all()
    );
    let ran = enqueue(&names, &["-", "--build-id", "5"], b"");
    assert!(ran.stderr.contains("not both"), "{}", ran.all());
    assert_eq!(
        rabbit.depth(&names.queue).await,
        Some(0),
        "nothing was sent"
    );
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_message_is_an_error_and_stops_the_rest() {
    let (rabbit, names, _tap) = broker("enqueue-noroute").await;
    // The exchange exists, no queue is bound to it.
    let input = format!(
        "{}\n{}\n",
        StartMsg::new(31).json(),
        StartMsg::new(32).json()
    );
    let ran = enqueue(&names, &["-"], input.as_bytes());
    assert_eq!(ran.code, Some(1), "{}", ran.all());
    assert!(
        ran.stderr
            .contains("FAILED start build 31 (stdin #1): the message was returned unroutable"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("1 later messages not sent"),
        "{}",
        ran.stderr
    );
    assert!(ran.stdout.is_empty(), "{}", ran.stdout);
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_enqueued_from_flags_is_launched_by_the_worker() {
    let sim = KubeSim::start(SimConfig {
        clusters: vec![ClusterConfig::new("a").with_timeline(Timeline::fast())],
        ..Default::default()
    })
    .await
    .unwrap();
    let (rabbit, names, tap) = broker("enqueue-run").await;
    let specs = [ExecutorSpec::new("a", &sim.cluster("a").url())];
    let worker = InProcessWorker::start(settings(&names, &specs, &Knobs::default())).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let doc = settings_json(&names, &specs, &Knobs::default());
    let ran = run(
        &[
            "enqueue",
            "--build-id",
            "41",
            "--image",
            "node:22",
            "--annotation",
            "screwdriver.cd/executor=a",
            "--annotation",
            "screwdriver.cd/ram=2",
            "--token-file",
            token.to_str().unwrap(),
        ],
        Some(&doc),
        &[],
        b"",
    );
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(
        ran.stdout.starts_with("sent   start build 41 (flags)"),
        "{}",
        ran.stdout
    );
    let launched = tap.wait_count("build.launched", 1, SOON).await;
    assert_eq!(
        (launched[0].build_id(), launched[0].data["executor"].clone()),
        (41, json!("a"))
    );
    let ran = run(
        &["enqueue", "--job", "stop", "--build-id", "41"],
        Some(&doc),
        &[],
        b"",
    );
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    tap.wait_count("build.stopped", 1, SOON).await;
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
}

#[test]
fn enqueue_help_shows_examples() {
    let ran = run(&["enqueue", "--help"], None, &[], b"");
    assert_eq!(ran.code, Some(0));
    assert!(
        ran.stdout.contains("Examples:") && ran.stdout.contains("--token-file build.jwt"),
        "{}",
        ran.stdout
    );
}
