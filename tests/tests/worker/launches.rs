//! The launches stream: a record of every create about to be sent (for builds with more than
//! one candidate executor), read by every replica, so that a later copy of a build looks where
//! an earlier one may have created its pod: after a replica restart, and when a create lands
//! late (its replica lost its build lock with the create on the wire).

use bcw_tests::harness::{ExecutorSpec, InProcessWorker, Knobs, StartMsg, eventually, settings};
use bcw_tests::kube_sim::{Fault, Verb};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::support::{
    SOON, broker, build_of, build_preferring, creates, queue_drained, running_forever, two_clusters,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_after_a_launch_adopts_a_late_duplicate_where_it_was_launched() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("launchrestart").await;
    let (a, b) = (sim.cluster("runc"), sim.cluster("kata"));
    let executors = vec![
        ExecutorSpec::new("a", &a.url()).weight(50),
        ExecutorSpec::new("b", &b.url()).weight(50),
    ];
    let trip = build_preferring(&executors, &names, "a", 1000);
    let build = build_preferring(&executors, &names, "a", trip + 1);
    // One failure opens A's breaker for a long while in the first replica (a 429: the create
    // was not carried out, so the build moves on at once).
    let knobs = Knobs {
        max_failures: 1,
        reset_timeout_ms: 120_000,
        ..Knobs::default()
    };
    a.inject(
        Fault::status(429)
            .on_verbs([Verb::Create])
            .on_resources(["pods"]),
    );
    let first = InProcessWorker::start(settings(&names, &executors, &knobs)).await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(trip).json())
        .await;
    tap.wait(SOON, "A's breaker to open", |evs| {
        evs.iter()
            .any(|e| e.ty == "cluster.breaker_opened" && e.data["executor"] == "a")
    })
    .await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(build).json())
        .await;
    tap.wait_count("build.launched", 2, SOON).await;
    assert_eq!(creates(&b).get(&build), Some(&1), "failed over to B");
    first.stop().await.expect("clean shutdown");

    // A is healthy again. A replica that never saw the launch takes a late duplicate: its
    // first choice is A, but the launches stream says B.
    a.clear_faults();
    let second = InProcessWorker::start(settings(&names, &executors, &Knobs::default())).await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(build).json())
        .await;
    tap.wait(SOON, "the duplicate's build.launched", |evs| {
        evs.iter()
            .filter(|e| e.ty == "build.launched" && e.build_id() == build)
            .count()
            == 2
    })
    .await;
    queue_drained(&rabbit, &names).await;
    assert_eq!(creates(&a).get(&build), None, "launched a second time on A");
    assert_eq!(creates(&b).get(&build), Some(&1));
    let launched: Vec<_> = tap
        .of("build.launched")
        .into_iter()
        .filter(|e| e.build_id() == build)
        .collect();
    assert!(launched.iter().all(|e| e.data["executor"] == "b"));
    assert_eq!(
        launched[0].id, launched[1].id,
        "the adopted launch has the same event id"
    );
    second.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_create_that_lands_late_is_adopted_instead_of_doubled_elsewhere() {
    let sim = two_clusters(running_forever()).await;
    let (a, b) = (sim.cluster("runc"), sim.cluster("kata"));
    let executors = vec![
        ExecutorSpec::new("a", &a.url()).weight(50),
        ExecutorSpec::new("b", &b.url()).weight(50),
    ];

    // The pod another replica would send to B: made by a worker that knows only B, then
    // removed, to be sent again later by the test ("the create on the wire").
    let (rabbit0, names0, tap0) = broker("latecreate0").await;
    let build = build_preferring(&executors, &names0, "a", 2000);
    let only_b =
        InProcessWorker::start(settings(&names0, &executors[1..], &Knobs::default())).await;
    rabbit0
        .publish_json(
            &names0.exchange,
            &names0.queue,
            &StartMsg::new(build).json(),
        )
        .await;
    tap0.wait_count("build.launched", 1, SOON).await;
    only_b.stop().await.expect("clean shutdown");
    rabbit0.cleanup(&names0).await;
    let mut pod = b
        .pods()
        .into_iter()
        .find(|p| build_of(p) == build)
        .expect("the pod");
    let (ns, name) = (
        pod.metadata.namespace.clone().unwrap(),
        pod.metadata.name.clone().unwrap(),
    );
    assert!(b.delete_pod_now(&ns, &name));
    pod.metadata.uid = None;
    pod.metadata.resource_version = None;
    pod.metadata.creation_timestamp = None;
    pod.metadata.managed_fields = None;
    pod.status = None;
    b.clear_logs();

    // Another replica recorded its create on B (and lost its lock with the create on the
    // wire). A replica whose first choice is A takes a copy of the build.
    let (rabbit, names, tap) = broker("latecreate").await;
    let knobs = Knobs {
        breaker_timeout_ms: 8000,
        ..Knobs::default()
    };
    // (A first start declares the stream; the record is then read when the worker connects.)
    InProcessWorker::start(settings(&names, &executors, &knobs))
        .await
        .stop()
        .await
        .expect("clean shutdown");
    rabbit
        .publish_json(
            "",
            &format!("{}.launches", names.queue),
            &json!({"buildId": build, "executor": "b"}),
        )
        .await;
    let worker = InProcessWorker::start(settings(&names, &executors, &knobs)).await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(build).json())
        .await;
    // It looks on B first (the record), finds nothing yet; then the create lands.
    eventually(
        SOON,
        "the worker to look on B (or to create on A)",
        || async {
            (creates(&a).contains_key(&build)
                || b.request_log()
                    .iter()
                    .any(|r| r.resource == "pods" && matches!(r.verb.as_str(), "list" | "get")))
            .then_some(())
        },
    )
    .await;
    assert_eq!(
        creates(&a).get(&build),
        None,
        "created on A without looking on B"
    );
    Api::<Pod>::namespaced(b.client(), &ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("the late create lands");
    let launched = tap.wait_count("build.launched", 1, SOON).await;
    queue_drained(&rabbit, &names).await;
    assert_eq!(launched[0].data["executor"], "b", "{:?}", launched[0].data);
    assert_eq!(creates(&a).get(&build), None, "launched a second time on A");
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

/// Every body on the launches stream up to now, read from its start.
async fn stream_bodies(rabbit: &bcw_tests::harness::Rabbit, stream: &str) -> Vec<Vec<u8>> {
    use futures::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    use lapin::types::{AMQPValue, FieldTable, ShortString};

    let channel = rabbit.channel().await;
    channel
        .basic_qos(1000, BasicQosOptions::default())
        .await
        .expect("qos");
    // The end of what the stream holds now: a marker of the test's own.
    rabbit
        .publish_json("", stream, &json!({"marker": "end"}))
        .await;
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = channel
        .basic_consume(
            ShortString::from(stream),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .expect("consume the stream");
    let mut bodies = Vec::new();
    loop {
        let d = tokio::time::timeout(SOON, consumer.next())
            .await
            .expect("the stream delivers up to the marker")
            .expect("the consumer is open")
            .expect("a delivery");
        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
        if d.data == br#"{"marker":"end"}"# {
            return bodies;
        }
        bodies.push(d.data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_in_a_burst_are_recorded_in_groups_each_before_its_create() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("launchgroups").await;
    let executors = crate::support::weighted_pair(&sim);
    const BUILDS: u64 = 60;
    // A first start declares the queue and the stream.
    InProcessWorker::start(settings(&names, &executors, &Knobs::default()))
        .await
        .stop()
        .await
        .expect("clean shutdown");
    for build in 5000..5000 + BUILDS {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(build).json())
            .await;
    }
    // Queued before the worker starts: it takes prefetchCount (20) at once.
    let worker = InProcessWorker::start(settings(&names, &executors, &Knobs::default())).await;
    let launched = tap
        .wait_count("build.launched", BUILDS as usize, SOON)
        .await;
    queue_drained(&rabbit, &names).await;
    worker.stop().await.expect("clean shutdown");

    // (Empty bodies are the replicas' own catch-up markers.)
    let bodies: Vec<_> = stream_bodies(&rabbit, &format!("{}.launches", names.queue))
        .await
        .into_iter()
        .filter(|b| !b.is_empty())
        .collect();
    let mut records = std::collections::BTreeSet::new();
    let mut count = 0;
    for body in &bodies {
        let v: serde_json::Value = serde_json::from_slice(body).expect("JSON");
        let group = match v {
            serde_json::Value::Array(items) => items,
            one => vec![one],
        };
        for r in group {
            if let (Some(b), Some(e)) = (r["buildId"].as_u64(), r["executor"].as_str()) {
                records.insert((b, e.to_string()));
                count += 1;
            }
        }
    }
    // Each launch was recorded on the executor it went to (its create was recorded first).
    for e in &launched {
        let executor = e.data["executor"].as_str().expect("executor").to_string();
        assert!(
            records.contains(&(e.build_id(), executor.clone())),
            "build {} launched on {executor} without a record",
            e.build_id()
        );
    }
    let creates: usize = sim
        .clusters()
        .iter()
        .map(|c| creates(c).values().sum::<usize>())
        .sum();
    assert_eq!(count, creates, "one record per create");
    // Launched 20 at a time, the records gathered while an append awaited its confirm.
    assert!(
        bodies.len() < count,
        "{count} records in {} stream messages: none grouped",
        bodies.len()
    );
    println!("{count} records in {} stream messages", bodies.len());
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}
