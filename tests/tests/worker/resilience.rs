//! Issue 3: breaker per cluster, call retry, failover without duplicates, dead letters.

use std::collections::BTreeSet;
use std::time::Duration;

use bcw_tests::harness::{
    ExecutorSpec, InProcessWorker, Knobs, StartMsg, WorkerProcess, eventually, settings,
    settings_json, stop,
};
use bcw_tests::kube_sim::{ClusterHandle, Fault, KubeSim, Verb};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;

use crate::support::{
    SOON, breaker_opened, broker, build_preferring, creates, even_pair, running_forever,
    two_clusters,
};

/// Makes every pod create on `c` fail with 503, a failure worth retrying.
fn fail_pod_creates(c: &ClusterHandle) {
    c.inject(
        Fault::status(503)
            .on_verbs([Verb::Create])
            .on_resources(["pods"]),
    );
}

/// Requests of a verb on pods that a cluster received.
fn pod_requests(c: &ClusterHandle, verb: &str) -> usize {
    c.request_log()
        .iter()
        .filter(|r| r.resource == "pods" && r.verb == verb)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_build_never_gets_a_second_pod_while_its_first_cluster_is_down() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("killed").await;
    let executors = vec![
        ExecutorSpec::new("a", &sim.cluster("runc").url()).weight(50),
        ExecutorSpec::new("b", &sim.cluster("kata").url()).weight(50),
    ];
    let (a, b) = (sim.cluster("runc"), sim.cluster("kata"));
    let build = build_preferring(&executors, &names, "a", 1000);
    let knobs = Knobs {
        breaker_timeout_ms: 500,
        max_failures: 2,
        reset_timeout_ms: 500,
        ..Knobs::default()
    };
    // The first replica waits long on each call, so it is still busy when it is killed.
    let slow = Knobs {
        breaker_timeout_ms: 20_000,
        ..Knobs::default()
    };
    let doc = settings_json(&names, &executors, &slow);

    // The first replica creates the pod on A, then hangs creating its token Secret: it dies
    // there, after the create and before the ack.
    a.inject(
        Fault::hang()
            .on_verbs([Verb::Create])
            .on_resources(["secrets"]),
    );
    let first = WorkerProcess::spawn(&doc, &[]).await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(build).json())
        .await;
    eventually(SOON, "the pod to exist on A", || async {
        (creates(&a).get(&build) == Some(&1)).then_some(())
    })
    .await;
    first.signal(nix::sys::signal::Signal::SIGKILL);

    // A goes down; a new replica gets the redelivered message and A's breaker opens.
    a.clear_faults();
    a.inject(Fault::status(503));
    let second = InProcessWorker::start(settings(&names, &executors, &knobs)).await;
    tap.wait(SOON, "the build to wait for A", |evs| {
        evs.iter()
            .any(|e| e.ty == "build.retrying" && e.data["reason"] == "unconfirmed")
    })
    .await;
    breaker_opened(&tap, "a").await;
    // Several rounds of waiting later, B still has nothing.
    eventually(SOON, "a few retry rounds", || async {
        (pod_requests(&a, "list") >= 3).then_some(())
    })
    .await;
    assert!(
        creates(&b).is_empty(),
        "the build was launched a second time on B"
    );
    assert!(tap.of("build.launched").is_empty());

    // A answers again: the pod is found and adopted.
    a.clear_faults();
    let launched = tap.wait_count("build.launched", 1, SOON).await;
    assert_eq!(launched[0].data["executor"], "a");
    assert_eq!(creates(&a).get(&build), Some(&1));
    assert!(creates(&b).is_empty());
    second.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cluster_trips_its_breaker_builds_move_and_it_recovers() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("trip").await;
    let (a, b, executors) = even_pair(&sim);
    let knobs = Knobs {
        max_failures: 5,
        reset_timeout_ms: 300,
        ..Knobs::default()
    };
    a.inject(
        Fault::status(500)
            .on_verbs([Verb::Create])
            .on_resources(["pods"]),
    );
    let worker = InProcessWorker::start(settings(&names, &executors, &knobs)).await;

    for id in 1..=40u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    let launched = tap.wait_count("build.launched", 40, SOON).await;
    let opened = tap.of("cluster.breaker_opened");
    assert!(!opened.is_empty(), "A's breaker opened");
    assert!(opened.iter().all(|e| e.data["executor"] == "a"));
    assert_eq!(
        opened[0].data["failures"],
        json!(5),
        "it opened after maxFailures consecutive failures"
    );
    assert!(creates(&a).is_empty());
    assert_eq!(creates(&b).len(), 40, "every build moved to B");
    assert!(launched.iter().all(|e| e.data["executor"] == "b"));

    // The fault clears: one probe closes the breaker and A gets its share again.
    a.clear_faults();
    for id in 101..=140u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    tap.wait_count("build.launched", 80, SOON).await;
    tap.wait(SOON, "A's breaker to close", |evs| {
        evs.iter()
            .any(|e| e.ty == "cluster.breaker_closed" && e.data["executor"] == "a")
    })
    .await;
    let on_a = creates(&a).len();
    assert!(
        (8..=32).contains(&on_a),
        "A got {on_a} of the last 40 builds, expected about half"
    );

    // Every build: exactly one pod, exactly one build.launched event.
    let mut all = creates(&a);
    for (k, v) in creates(&b) {
        *all.entry(k).or_default() += v;
    }
    assert_eq!(all.len(), 80);
    assert!(all.values().all(|n| *n == 1), "a build got two pods");
    let launched: Vec<u64> = tap
        .of("build.launched")
        .iter()
        .map(|e| e.build_id())
        .collect();
    assert_eq!(launched.len(), 80);
    assert_eq!(launched.iter().collect::<BTreeSet<_>>().len(), 80);
    assert!(
        rabbit.depth(&names.dead()).await == Some(0),
        "nothing lost to the dead-letter queue"
    );
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_with_retry_after_is_waited_out() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("throttle").await;
    let a = sim.cluster("runc");
    let executors = vec![ExecutorSpec::new("a", &a.url())];
    let knobs = Knobs {
        max_attempts: 3,
        ..Knobs::default()
    };
    a.inject(
        Fault::status(429)
            .retry_after(1)
            .on_verbs([Verb::Create])
            .on_resources(["pods"])
            .count(2),
    );
    let worker = InProcessWorker::start(settings(&names, &executors, &knobs)).await;
    let sent = tokio::time::Instant::now();
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(5).json())
        .await;
    tap.wait_count("build.launched", 1, SOON).await;
    // Two throttled creates, each waited out for its Retry-After of 1 s, then the third works.
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "Retry-After was not honoured"
    );
    assert_eq!(
        pod_requests(&a, "create"),
        3,
        "one create per attempt: 2 throttled + 1 accepted"
    );
    assert_eq!(creates(&a).len(), 1);
    assert!(
        tap.of("build.retrying").is_empty(),
        "the call retry absorbed the throttling"
    );
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_slower_than_the_breaker_timeout_is_cut_off_and_counted() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("slow").await;
    let a = sim.cluster("runc");
    let executors = vec![ExecutorSpec::new("a", &a.url())];
    // One failure opens the breaker, so its opening proves the slow call counted as one.
    let knobs = Knobs {
        breaker_timeout_ms: 300,
        max_failures: 1,
        reset_timeout_ms: 300,
        ..Knobs::default()
    };
    a.inject(
        Fault::hang()
            .on_verbs([Verb::Create])
            .on_resources(["pods"])
            .count(1),
    );
    let worker = InProcessWorker::start(settings(&names, &executors, &knobs)).await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(9).json())
        .await;
    let opened = tap
        .wait(SOON, "the breaker to open on the slow call", |evs| {
            evs.iter().any(|e| e.ty == "cluster.breaker_opened")
        })
        .await;
    let opened: Vec<_> = opened
        .iter()
        .filter(|e| e.ty == "cluster.breaker_opened")
        .collect();
    assert_eq!(opened[0].data["failures"], json!(1));
    // The build still launches, once.
    tap.wait_count("build.launched", 1, SOON).await;
    assert_eq!(creates(&a).len(), 1);
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

/// Creates that time out keep a cluster's breaker open while it answers reads: the looks and
/// deletions the protocol needs there still go through (one at a time), so a build placed
/// there moves on after its busy window and a stop of another is settled, instead of both
/// waiting for the breaker until `maxWait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_holding_creates_with_its_breaker_open_still_lets_builds_move_and_stops_settle() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("heldopen").await;
    let (a, b, executors) = even_pair(&sim);
    let moved = build_preferring(&executors, &names, "a", 1000);
    let stopped = build_preferring(&executors, &names, "a", moved + 1);
    // One timeout opens A's breaker for longer than the test waits: nothing closes it.
    let knobs = Knobs {
        breaker_timeout_ms: 300,
        max_failures: 1,
        reset_timeout_ms: 120_000,
        retry_delays: vec![0.5],
        ..Knobs::default()
    };
    a.inject(
        Fault::hang()
            .on_verbs([Verb::Create])
            .on_resources(["pods"]),
    );
    let worker = WorkerProcess::spawn(&settings_json(&names, &executors, &knobs), &[]).await;
    for id in [moved, stopped] {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    breaker_opened(&tap, "a").await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &stop(stopped))
        .await;

    let launched = tap.wait_count("build.launched", 1, SOON).await;
    assert_eq!(launched[0].build_id(), moved);
    assert_eq!(launched[0].data["executor"], "b");
    // The stop is settled (acknowledged), not waiting in the delay queue for A to answer.
    eventually(SOON, "the stop to be settled", || async {
        let (_, body) = worker.get("/metrics").await?;
        body.lines()
            .any(|l| {
                l.starts_with("bcw_messages_total{")
                    && l.contains(r#"job="stop""#)
                    && l.contains(r#"outcome="stopped""#)
            })
            .then_some(())
    })
    .await;
    assert_eq!(tap.of("build.stopped")[0].build_id(), stopped);
    assert!(
        pod_requests(&a, "list") >= 1 && pod_requests(&a, "deletecollection") >= 1,
        "the look and the deletion reached A"
    );
    assert!(
        tap.of("cluster.breaker_closed").is_empty(),
        "A's breaker stayed open throughout"
    );
    assert_eq!(creates(&b).get(&stopped), None, "the stopped build moved");
    assert_eq!(rabbit.depth(&names.dead()).await, Some(0));
    drop(worker);
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_pod_is_dead_lettered_at_once_without_retry() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("invalid").await;
    let a = sim.cluster("runc");
    a.inject(
        Fault::status(422)
            .with_reason(
                "Invalid",
                "Pod \"x\" is invalid: spec.containers[0].image: Required value",
            )
            .on_verbs([Verb::Create])
            .on_resources(["pods"]),
    );
    let worker = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &Knobs::default(),
    ))
    .await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(11).json())
        .await;
    let dead = tap.wait_count("build.dead_lettered", 1, SOON).await;
    assert_eq!(dead[0].data["reason"], "invalid_pod");
    assert_eq!(pod_requests(&a, "create"), 1, "a 422 is never retried");
    let msgs = rabbit.drain(&names.dead()).await;
    assert_eq!(msgs.len(), 1);
    let headers = msgs[0].0.headers().clone().unwrap_or_default();
    assert_eq!(
        header(&headers, "x-bcw-reason").as_deref(),
        Some("invalid_pod")
    );
    assert!(
        header(&headers, "x-bcw-error")
            .unwrap()
            .contains("Required value")
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&msgs[0].1).unwrap()["buildConfig"]["buildId"],
        11
    );
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_cluster_down_builds_wait_without_using_attempts_then_launch() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("alldown").await;
    let (a, b, executors) = even_pair(&sim);
    let knobs = Knobs {
        reprocess_limit: 2,
        retry_delays: vec![0.5, 1.0],
        reset_timeout_ms: 500,
        max_failures: 2,
        ..Knobs::default()
    };
    a.stop_listener().await;
    b.stop_listener().await;
    let worker = InProcessWorker::start(settings(&names, &executors, &knobs)).await;
    for id in 1..=10u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    // Far more rounds than messageReprocessLimit (2) pass while both clusters are down.
    tap.wait(SOON, "every build to be waiting", |evs| {
        evs.iter()
            .filter(|e| e.ty == "build.retrying")
            .map(|e| e.build_id())
            .collect::<BTreeSet<_>>()
            .len()
            == 10
    })
    .await;
    eventually(SOON, "several rounds through the delay queues", || async {
        let opened = tap.of("cluster.breaker_opened").len();
        (opened >= 6).then_some(())
    })
    .await;
    assert_eq!(
        rabbit.depth(&names.dead()).await,
        Some(0),
        "nothing was dead-lettered"
    );
    assert!(tap.of("build.dead_lettered").is_empty());

    a.start_listener().await;
    b.start_listener().await;
    tap.wait_count("build.launched", 10, SOON).await;
    let total = creates(&a).len() + creates(&b).len();
    assert_eq!(total, 10);
    assert_eq!(rabbit.depth(&names.dead()).await, Some(0));
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_build_waits_for_its_executor_instead_of_moving() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("pinned").await;
    let (a, b, executors) = even_pair(&sim);
    let knobs = Knobs {
        reset_timeout_ms: 300,
        max_failures: 2,
        retry_delays: vec![0.5],
        ..Knobs::default()
    };
    a.inject(Fault::status(503));
    let worker = InProcessWorker::start(settings(&names, &executors, &knobs)).await;
    rabbit
        .publish_json(
            &names.exchange,
            &names.queue,
            &StartMsg::new(21).pinned("a").json(),
        )
        .await;
    tap.wait(SOON, "the pinned build to wait", |evs| {
        evs.iter().any(|e| e.ty == "build.retrying")
    })
    .await;
    eventually(SOON, "a few rounds", || async {
        (a.request_log().len() >= 4).then_some(())
    })
    .await;
    assert!(creates(&b).is_empty(), "a pinned build must not move");
    a.clear_faults();
    let launched = tap.wait_count("build.launched", 1, SOON).await;
    assert_eq!(launched[0].data["executor"], "a");
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_failures_use_up_attempts_then_dead_letter() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("exhaust").await;
    let a = sim.cluster("runc");
    // A breaker that never opens: every attempt reaches the cluster and fails.
    let knobs = Knobs {
        max_failures: 1000,
        max_attempts: 2,
        reprocess_limit: 3,
        retry_delays: vec![0.3],
        ..Knobs::default()
    };
    fail_pod_creates(&a);
    let worker = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &knobs,
    ))
    .await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(31).json())
        .await;
    let dead = tap.wait_count("build.dead_lettered", 1, SOON).await;
    assert_eq!(dead[0].data["attempt"], 3);
    let retrying: Vec<u64> = tap
        .of("build.retrying")
        .iter()
        .map(|e| e.data["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(
        retrying,
        vec![1, 2],
        "one build.retrying per attempt before the last"
    );
    // 3 message attempts x 2 call attempts each.
    assert_eq!(pod_requests(&a, "create"), 6);
    let msgs = rabbit.drain(&names.dead()).await;
    let headers = msgs[0].0.headers().clone().unwrap_or_default();
    assert_eq!(header(&headers, "x-bcw-attempts").as_deref(), Some("3"));
    assert_eq!(
        header(&headers, "x-bcw-reason").as_deref(),
        Some("unavailable")
    );
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

/// A retry copy that no queue takes (its delay queue deleted under the worker) counts as a
/// failure: the build goes back to its queue, neither acknowledged nor dead-lettered, and
/// launches once a replica has declared the delay queue again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_copy_no_queue_takes_leaves_the_build_in_its_queue() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("nocopy").await;
    let a = sim.cluster("runc");
    // A breaker that never opens: every delivery reaches the cluster and fails.
    let knobs = Knobs {
        max_failures: 1000,
        max_attempts: 1,
        reprocess_limit: 10,
        retry_delays: vec![0.3],
        ..Knobs::default()
    };
    let executors = [ExecutorSpec::new("a", &a.url())];
    fail_pod_creates(&a);
    let worker = InProcessWorker::start(settings(&names, &executors, &knobs)).await;
    let delay_queue = format!("{}.retry.1", names.queue);
    let channel = rabbit.channel().await;
    channel
        .queue_delete(delay_queue.as_str().into(), Default::default())
        .await
        .expect("delete the delay queue");
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(41).json())
        .await;
    eventually(
        SOON,
        "several attempts whose copies nobody takes",
        || async { (pod_requests(&a, "create") >= 3).then_some(()) },
    )
    .await;
    worker.stop().await.expect("clean shutdown");
    assert!(tap.of("build.dead_lettered").is_empty());
    assert_eq!(rabbit.depth(&names.dead()).await, Some(0));
    assert_eq!(rabbit.depth(&delay_queue).await, None, "still deleted");
    eventually(SOON, "the build back in its queue", || async {
        (rabbit.depth(&names.queue).await == Some(1)).then_some(())
    })
    .await;

    a.clear_faults();
    let worker = InProcessWorker::start(settings(&names, &executors, &knobs)).await;
    let launched = tap.wait_count("build.launched", 1, SOON).await;
    assert_eq!(launched[0].build_id(), 41);
    assert_eq!(rabbit.depth(&names.dead()).await, Some(0));
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_distinct_reasons_among_valid_ones() {
    let sim = KubeSim::start(bcw_tests::kube_sim::SimConfig {
        clusters: vec![
            bcw_tests::kube_sim::ClusterConfig::new("a").with_timeline(running_forever()),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let (rabbit, names, tap) = broker("poison").await;
    let a = sim.cluster("a");
    let knobs = Knobs {
        extra: json!({"intake": {"maxMessageBytes": 65536}}),
        ..Knobs::default()
    };
    let worker = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &knobs,
    ))
    .await;

    let good = |id: u64| StartMsg::new(id).json();
    let mut bad: Vec<(&str, Vec<u8>)> = vec![
        ("invalid_json", b"{\"job\": \"start\", ".to_vec()),
        ("not_an_object", b"[1, 2, 3]".to_vec()),
        (
            "missing_job",
            serde_json::to_vec(&json!({"buildConfig": {"buildId": 1}})).unwrap(),
        ),
        (
            "unknown_job",
            serde_json::to_vec(&json!({"job": "launch", "buildConfig": {"buildId": 901}})).unwrap(),
        ),
        (
            "missing_config",
            serde_json::to_vec(&json!({"job": "start"})).unwrap(),
        ),
        (
            "missing_build_id",
            serde_json::to_vec(&{
                let mut m = good(0);
                m["buildConfig"].as_object_mut().unwrap().remove("buildId");
                m
            })
            .unwrap(),
        ),
        (
            "wrong_type_build_id",
            serde_json::to_vec(&{
                let mut m = good(0);
                m["buildConfig"]["buildId"] = json!([1]);
                m
            })
            .unwrap(),
        ),
        (
            "invalid_build_id",
            serde_json::to_vec(&{
                let mut m = good(0);
                m["buildConfig"]["buildId"] = json!(-3);
                m
            })
            .unwrap(),
        ),
        (
            "missing_container",
            serde_json::to_vec(&{
                let mut m = good(905);
                m["buildConfig"]
                    .as_object_mut()
                    .unwrap()
                    .remove("container");
                m
            })
            .unwrap(),
        ),
        (
            "invalid_api_uri",
            serde_json::to_vec(&StartMsg::new(906).api("not a uri").json()).unwrap(),
        ),
        (
            "missing_token",
            serde_json::to_vec(&{
                let mut m = good(907);
                m["buildConfig"].as_object_mut().unwrap().remove("token");
                m
            })
            .unwrap(),
        ),
    ];
    let mut huge = good(908);
    huge["buildConfig"]["padding"] = json!("x".repeat(70_000));
    bad.push(("too_large", serde_json::to_vec(&huge).unwrap()));

    for (i, (_, body)) in bad.iter().enumerate() {
        rabbit
            .publish_json(&names.exchange, &names.queue, &good(i as u64 + 1))
            .await;
        rabbit
            .publish_bytes(
                &names.exchange,
                &names.queue,
                body,
                BasicProperties::default(),
            )
            .await;
    }
    tap.wait_count("build.launched", bad.len(), SOON).await;
    eventually(
        SOON,
        "every poison message in the dead-letter queue",
        || async { (rabbit.depth(&names.dead()).await == Some(bad.len() as u32)).then_some(()) },
    )
    .await;
    let dead = rabbit.drain(&names.dead()).await;
    let mut reasons = BTreeSet::new();
    for (props, body) in &dead {
        let h = props.headers().clone().unwrap_or_default();
        let reason = header(&h, "x-bcw-reason").expect("reason header");
        let error = header(&h, "x-bcw-error").expect("error header");
        assert!(!error.trim().is_empty());
        let expected = bad
            .iter()
            .find(|(r, _)| *r == reason)
            .unwrap_or_else(|| panic!("unexpected reason {reason}"));
        assert_eq!(&expected.1, body, "the dead letter keeps the original body");
        reasons.insert(reason);
    }
    assert_eq!(
        reasons.len(),
        bad.len(),
        "every kind has its own reason: {reasons:?}"
    );
    // A build.dead_lettered event for those whose build id could be read.
    let evs: BTreeSet<u64> = tap
        .of("build.dead_lettered")
        .iter()
        .map(|e| e.build_id())
        .collect();
    assert!(evs.contains(&901) && evs.contains(&905) && evs.contains(&906) && evs.contains(&907));
    assert_eq!(creates(&a).len(), bad.len());
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

fn header(table: &FieldTable, key: &str) -> Option<String> {
    match table.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}
