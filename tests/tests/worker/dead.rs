//! Issue 20: `dead list|show|replay|purge` with the real binary, in the worker's layout
//! (`<queue>.dead`, dead letters the worker made) and in the administrator's (`X.dead` when it
//! exists). Reading never loses a message; a replay is confirmed before its dead letter goes.

use std::time::Duration;

use bcw_tests::harness::command::{Ran, run};
use bcw_tests::harness::{
    AdminTopology, ExecutorSpec, InProcessWorker, Knobs, Names, Rabbit, StartMsg, TOKEN,
    eventually, settings, settings_json,
};
use bcw_tests::kube_sim::{ClusterConfig, KubeSim, SimConfig, Timeline};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Value, json};

use crate::compat::header;
use crate::support::{SOON, broker};

async fn sim() -> KubeSim {
    KubeSim::start(SimConfig {
        clusters: vec![ClusterConfig::new("a").with_timeline(Timeline::fast())],
        ..Default::default()
    })
    .await
    .expect("kube-sim starts")
}

fn specs(sim: &KubeSim) -> Vec<ExecutorSpec> {
    vec![ExecutorSpec::new("a", &sim.cluster("a").url())]
}

/// The worker declares its topology (and leaves it), as a deployment that has run once.
async fn declared(names: &Names, sim: &KubeSim) {
    let worker = InProcessWorker::start(settings(names, &specs(sim), &Knobs::default())).await;
    worker.stop().await.expect("clean shutdown");
}

fn dead(doc: &Value, args: &[&str]) -> Ran {
    let mut all = vec!["dead"];
    all.extend_from_slice(args);
    run(&all, Some(doc), &[], b"")
}

fn json_rows(ran: &Ran) -> Vec<Value> {
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    serde_json::from_str::<Vec<Value>>(&ran.stdout)
        .unwrap_or_else(|e| panic!("not a JSON array ({e}):\n{}", ran.stdout))
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Headers like those the worker writes on a dead letter, `age` ago (none when `None`).
fn worker_headers(reason: &str, attempts: i64, age: Option<Duration>) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-bcw-reason".into(), long(reason));
    t.insert("x-bcw-error".into(), long("the sentence about it"));
    t.insert("x-bcw-attempts".into(), AMQPValue::LongLongInt(attempts));
    t.insert("x-bcw-attempt".into(), AMQPValue::LongLongInt(attempts));
    t.insert("x-bcw-waiting-since".into(), AMQPValue::LongLongInt(1));
    t.insert("x-bcw-executors".into(), long("a"));
    if let Some(age) = age {
        let at = jiff::Timestamp::now().as_millisecond() - age.as_millis() as i64;
        t.insert("x-bcw-dead-at".into(), AMQPValue::LongLongInt(at));
    }
    t
}

async fn park(rabbit: &Rabbit, queue: &str, body: &Value, headers: FieldTable) {
    let props = BasicProperties::default().with_headers(headers);
    rabbit
        .publish_bytes("", queue, body.to_string().as_bytes(), props)
        .await;
}

async fn depth_is(rabbit: &Rabbit, queue: &str, n: u32) {
    eventually(SOON, &format!("{queue} to hold {n}"), || async {
        (rabbit.depth(queue).await == Some(n)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_worker_dead_lettered_is_listed_and_shown_and_stays() {
    let sim = sim().await;
    let (rabbit, names, _tap) = broker("dead-list").await;
    let worker = InProcessWorker::start(settings(&names, &specs(&sim), &Knobs::default())).await;
    rabbit
        .publish_bytes(
            &names.exchange,
            &names.queue,
            b"{not json",
            Default::default(),
        )
        .await;
    for id in [51, 52] {
        let mut msg = StartMsg::new(id).json();
        msg["buildConfig"]
            .as_object_mut()
            .unwrap()
            .remove("container");
        rabbit
            .publish_json(&names.exchange, &names.queue, &msg)
            .await;
    }
    depth_is(&rabbit, &names.dead(), 3).await;
    worker.stop().await.expect("clean shutdown");
    let doc = settings_json(&names, &specs(&sim), &Knobs::default());

    let rows = json_rows(&dead(&doc, &["list", "--output", "json"]));
    // The worker handles messages at once: they die in any order.
    let mut summary: Vec<(Value, Value, Value, Value)> = rows
        .iter()
        .map(|r| {
            (
                r["reason"].clone(),
                r["buildId"].clone(),
                r["attempts"].clone(),
                r["by"].clone(),
            )
        })
        .collect();
    summary.sort_by_key(|s| s.1.as_u64());
    assert_eq!(
        summary,
        [
            (
                json!("invalid_json"),
                Value::Null,
                json!(1),
                json!("worker")
            ),
            (
                json!("missing_container"),
                json!(51),
                json!(1),
                json!("worker")
            ),
            (
                json!("missing_container"),
                json!(52),
                json!(1),
                json!("worker")
            ),
        ]
    );
    assert!(
        rows.iter()
            .all(|r| r["ageSeconds"].as_u64().is_some_and(|a| a < 600)),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .filter(|r| r["reason"] == "missing_container")
            .all(|r| r["error"].as_str().unwrap().contains("container")),
        "{rows:?}"
    );

    let text = dead(&doc, &["list", "--reason", "missing_container"]);
    assert_eq!(text.code, Some(0), "{}", text.all());
    assert!(text.lines()[0].starts_with("POS"), "{}", text.stdout);
    assert!(
        text.stdout.contains("2 of 3 dead letters read match"),
        "{}",
        text.stdout
    );
    assert!(
        text.lines()
            .iter()
            .any(|l| l.contains(" 51 ") && l.contains("missing_container")),
        "{}",
        text.stdout
    );

    let show = dead(&doc, &["show", "51", "--output", "json"]);
    let shown = json_rows(&show);
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0]["headers"]["x-bcw-reason"], "missing_container");
    assert_eq!(shown[0]["body"]["buildConfig"]["token"], "***");
    assert!(!show.all().contains(TOKEN), "the build token was printed");
    let none = dead(&doc, &["show", "999"]);
    assert_eq!(none.code, Some(1), "{}", none.all());
    assert!(
        none.stderr.contains("no dead letter of build 999"),
        "{}",
        none.stderr
    );
    assert_eq!(
        rabbit.depth(&names.dead()).await,
        Some(3),
        "reading removed nothing"
    );
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_confirmed_then_removed_with_its_attempts_reset() {
    let sim = sim().await;
    let (rabbit, names, _tap) = broker("dead-replay").await;
    declared(&names, &sim).await;
    let doc = settings_json(&names, &specs(&sim), &Knobs::default());
    let gave_up = StartMsg::new(61).json();
    park(
        &rabbit,
        &names.dead(),
        &gave_up,
        worker_headers("no_executor", 5, Some(Duration::from_secs(60))),
    )
    .await;
    park(
        &rabbit,
        &names.dead(),
        &StartMsg::new(62).json(),
        worker_headers("missing_container", 1, None),
    )
    .await;

    let refused = dead(&doc, &["replay"]);
    assert_eq!(refused.code, Some(2), "{}", refused.all());
    assert!(refused.stderr.contains("--all"), "{}", refused.stderr);
    let dry = dead(&doc, &["replay", "--reason", "no_executor", "--dry-run"]);
    assert_eq!(dry.code, Some(0), "{}", dry.all());
    assert!(
        dry.stdout.contains(&format!(
            "would replay #1 start build 61 (no_executor) to exchange {:?} with key {:?}",
            names.exchange, names.queue
        )),
        "{}",
        dry.stdout
    );
    assert_eq!(
        (
            rabbit.depth(&names.dead()).await,
            rabbit.depth(&names.queue).await
        ),
        (Some(2), Some(0))
    );

    let replayed = dead(&doc, &["replay", "--reason", "no_executor"]);
    assert_eq!(replayed.code, Some(0), "{}", replayed.all());
    assert!(
        replayed
            .stdout
            .contains("replayed #1 start build 61 (no_executor)"),
        "{}",
        replayed.stdout
    );
    assert!(replayed.stdout.contains("confirmed"), "{}", replayed.stdout);
    depth_is(&rabbit, &names.dead(), 1).await;
    let back = rabbit.drain(&names.queue).await;
    assert_eq!(back.len(), 1);
    let (props, body) = &back[0];
    assert_eq!(
        serde_json::from_slice::<Value>(body).unwrap(),
        gave_up,
        "the body as it was"
    );
    let headers = props.headers().clone().unwrap_or_default();
    for gone in [
        "x-bcw-reason",
        "x-bcw-error",
        "x-bcw-attempts",
        "x-bcw-attempt",
        "x-bcw-dead-at",
        "x-bcw-waiting-since",
    ] {
        assert!(
            header(&headers, gone).is_none(),
            "{gone} kept on the replay"
        );
    }
    assert_eq!(
        header(&headers, "x-bcw-executors").as_deref(),
        Some("a"),
        "where a pod may be"
    );

    // A replay that cannot be routed is not removed: nothing is lost.
    let ch = rabbit.channel().await;
    ch.queue_unbind(
        ShortString::from(names.queue.as_str()),
        ShortString::from(names.exchange.as_str()),
        ShortString::from(names.queue.as_str()),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let failed = dead(&doc, &["replay", "--all"]);
    assert_eq!(failed.code, Some(1), "{}", failed.all());
    assert!(
        failed
            .stderr
            .contains("not replayed: the message was returned unroutable"),
        "{}",
        failed.stderr
    );
    assert_eq!(rabbit.depth(&names.dead()).await, Some(1));
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ages_filter_and_a_purge_asks_unless_told_yes() {
    let sim = sim().await;
    let (rabbit, names, _tap) = broker("dead-purge").await;
    declared(&names, &sim).await;
    let doc = settings_json(&names, &specs(&sim), &Knobs::default());
    let hours = |h: u64| Some(Duration::from_secs(h * 3600));
    park(
        &rabbit,
        &names.dead(),
        &StartMsg::new(71).json(),
        worker_headers("no_executor", 5, hours(2)),
    )
    .await;
    park(
        &rabbit,
        &names.dead(),
        &StartMsg::new(72).json(),
        worker_headers("no_executor", 5, Some(Duration::from_secs(60))),
    )
    .await;
    park(
        &rabbit,
        &names.dead(),
        &StartMsg::new(73).json(),
        worker_headers("no_executor", 5, None),
    )
    .await;
    let ids = |ran: &Ran| -> Vec<u64> {
        json_rows(ran)
            .iter()
            .map(|r| r["buildId"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        ids(&dead(
            &doc,
            &["list", "--older-than", "1h", "--output", "json"]
        )),
        [71]
    );
    assert_eq!(
        ids(&dead(
            &doc,
            &["list", "--newer-than", "1h", "--output", "json"]
        )),
        [72]
    );
    assert_eq!(
        ids(&dead(
            &doc,
            &["list", "--build-id", "73", "--output", "json"]
        )),
        [73]
    );

    let asked = dead(&doc, &["purge", "--older-than", "1h"]);
    assert_eq!(asked.code, Some(2), "{}", asked.all());
    assert!(
        asked.stderr.contains("refusing to purge without --yes"),
        "{}",
        asked.stderr
    );
    assert_eq!(rabbit.depth(&names.dead()).await, Some(3));
    let purged = dead(&doc, &["purge", "--older-than", "1h", "--yes"]);
    assert_eq!(purged.code, Some(0), "{}", purged.all());
    assert!(
        purged
            .stdout
            .contains(&format!("removed 1 dead letters from {}", names.dead())),
        "{}",
        purged.stdout
    );
    depth_is(&rabbit, &names.dead(), 2).await;
    assert_eq!(ids(&dead(&doc, &["list", "--output", "json"])), [72, 73]);
    let all = dead(&doc, &["purge", "--all", "--yes"]);
    assert_eq!(all.code, Some(0), "{}", all.all());
    depth_is(&rabbit, &names.dead(), 0).await;
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_queue_is_read_up_to_the_limit_and_nothing_is_lost() {
    let sim = sim().await;
    let (rabbit, names, _tap) = broker("dead-large").await;
    declared(&names, &sim).await;
    let doc = settings_json(&names, &specs(&sim), &Knobs::default());
    for id in 0..250 {
        park(
            &rabbit,
            &names.dead(),
            &StartMsg::new(1000 + id).json(),
            worker_headers("no_executor", 5, None),
        )
        .await;
    }
    let limited = dead(&doc, &["list", "--limit", "100", "--output", "json"]);
    let rows = json_rows(&limited);
    assert_eq!(rows.len(), 100);
    assert_eq!(
        (rows[0]["buildId"].clone(), rows[99]["buildId"].clone()),
        (json!(1000), json!(1099)),
        "the oldest first"
    );
    assert!(
        limited
            .stderr
            .contains("read the oldest 100 of 250 dead letters"),
        "{}",
        limited.stderr
    );
    assert_eq!(
        json_rows(&dead(&doc, &["list", "--output", "json"])).len(),
        250
    );
    assert_eq!(
        rabbit.depth(&names.dead()).await,
        Some(250),
        "every message is back"
    );
    rabbit.cleanup(&names).await;
}

/// An `x-death` entry as RabbitMQ writes it.
fn death(queue: &str, reason: &str) -> AMQPValue {
    let mut e = FieldTable::default();
    e.insert("queue".into(), long(queue));
    e.insert("reason".into(), long(reason));
    e.insert("count".into(), AMQPValue::LongLongInt(3));
    e.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![long(queue)])),
    );
    AMQPValue::FieldTable(e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_administrators_layout_uses_x_dead_when_it_exists_and_says_why_not_otherwise() {
    let (rabbit, names, _tap) = broker("dead-admin").await;
    let admin = AdminTopology::for_names(&names);
    admin.declare(&rabbit).await;
    let env = [
        ("RABBITMQ_USERNAME", "guest"),
        ("RABBITMQ_PASSWORD", "guest"),
        ("RABBITMQ_HOST", "127.0.0.1"),
        ("RABBITMQ_VIRTUAL_HOST", "/"),
        ("RABBITMQ_EXCHANGE", names.exchange.as_str()),
        ("RABBITMQ_QUEUE", names.queue.as_str()),
        ("RABBITMQ_RETRYQUEUE", admin.retry.as_str()),
        ("RABBITMQ_RETRYQUEUE_ENABLED", "true"),
        ("K8S_HOST", "http://127.0.0.1:9"),
    ];
    let compat = |args: &[&str]| {
        let mut all = vec!["dead"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--compat", "screwdriver"]);
        run(&all, None, &env, b"")
    };
    let missing = compat(&["list"]);
    assert_eq!(missing.code, Some(1), "{}", missing.all());
    assert!(
        missing.stderr.contains("nothing was kept")
            && missing.stderr.contains("Declare a durable queue"),
        "{}",
        missing.stderr
    );

    admin.declare_dead_queue(&rabbit).await;
    let mut verify = worker_headers("no_executor", 3, None);
    verify.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            death(&admin.retry_dlr, "expired"),
            death(&admin.retry, "rejected"),
        ])),
    );
    let mut start = worker_headers("invalid_pod", 3, None);
    start.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            death(&admin.dlr, "expired"),
            death(&admin.queue, "rejected"),
        ])),
    );
    park(
        &rabbit,
        &admin.dead(),
        &StartMsg::new(81).job("verify").json(),
        verify,
    )
    .await;
    park(&rabbit, &admin.dead(), &StartMsg::new(82).json(), start).await;
    let listed = compat(&["list"]);
    assert_eq!(listed.code, Some(0), "{}", listed.all());
    assert!(
        listed.stdout.contains("2 of 2 dead letters read match"),
        "{}",
        listed.stdout
    );
    let replayed = compat(&["replay", "--all"]);
    assert_eq!(replayed.code, Some(0), "{}", replayed.all());
    assert!(
        replayed
            .stdout
            .contains(&format!("with key {:?}", admin.retry)),
        "{}",
        replayed.stdout
    );
    depth_is(&rabbit, &admin.dead(), 0).await;
    let on_verify = rabbit.drain(&admin.retry).await;
    let on_main = rabbit.drain(&admin.queue).await;
    assert_eq!(
        (on_verify.len(), on_main.len()),
        (1, 1),
        "each went back where it came from"
    );
    let headers = on_main[0].0.headers().clone().unwrap_or_default();
    assert!(
        !header_present(&headers, "x-death"),
        "the administrator's attempt count (x-death) is reset"
    );
    admin.cleanup(&rabbit).await;
    rabbit.cleanup(&names).await;
}

fn header_present(t: &FieldTable, key: &str) -> bool {
    t.inner().contains_key(key)
}

#[test]
fn dead_help_shows_examples() {
    let ran = run(&["dead", "--help"], None, &[], b"");
    assert_eq!(ran.code, Some(0));
    assert!(
        ran.stdout
            .contains("dead replay --config worker.yaml --reason no_executor --dry-run"),
        "{}",
        ran.stdout
    );
    let ran = run(&["dead", "purge", "--help"], None, &[], b"");
    assert!(
        ran.stdout.contains("Example:") && ran.stdout.contains("--yes"),
        "{}",
        ran.stdout
    );
}
