//! The launch protocol on the real broker (docs/protocol.md): one sequencer among the
//! replicas, its decisions recorded in the ledger and read back by the next one, a later copy
//! of a build sent where the build is placed, and nothing on the connection ending silently.

use bcw_protocol::Record;
use bcw_protocol::wire::LedgerEntry;
use bcw_tests::harness::{
    InProcessWorker, Knobs, StartMsg, WorkerProcess, eventually, settings, settings_json,
};
use bcw_tests::kube_sim::{Fault, Verb};
use buildcluster_worker::protocol::sequencer::{APPEND_GAP, BUSY_GROUP};
use serde_json::json;

use crate::support::{
    SOON, breaker_opened, broker, build_of, build_preferring, creates, even_pair, queue_drained,
    running_forever, two_clusters,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_after_a_launch_adopts_a_late_duplicate_where_it_was_launched() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("launchrestart").await;
    let (a, b, executors) = even_pair(&sim);
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
    breaker_opened(&tap, "a").await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(build).json())
        .await;
    tap.wait_count("build.launched", 2, SOON).await;
    assert_eq!(creates(&b).get(&build), Some(&1), "failed over to B");
    first.stop().await.expect("clean shutdown");

    // A is healthy again. A replica that never saw the launch takes a late duplicate: its
    // first choice is A, but the ledger (read back by this replica, now the sequencer) says B.
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
async fn a_placement_recorded_by_an_earlier_sequencer_sends_a_later_copy_there() {
    let sim = two_clusters(running_forever()).await;
    let (a, b, executors) = even_pair(&sim);
    let (rabbit, names, tap) = broker("placedearlier").await;
    let build = build_preferring(&executors, &names, "a", 2000);
    // (A first start declares the ledger.)
    InProcessWorker::start(settings(&names, &executors, &Knobs::default()))
        .await
        .stop()
        .await
        .expect("clean shutdown");
    // An earlier sequencer (epoch 77) permitted a create on B; its replica then died with the
    // create on the wire.
    let ledger = format!("{}.ledger", names.queue);
    let marker = LedgerEntry::Marker {
        epoch: 77,
        marker: "earlier".into(),
    };
    let placed = LedgerEntry::Records {
        epoch: 77,
        records: vec![Record::Placed {
            build,
            exec: "b".to_string(),
        }],
        at: None,
    };
    for entry in [marker, placed] {
        rabbit
            .publish_bytes("", &ledger, &entry.encode(), Default::default())
            .await;
    }
    let worker = InProcessWorker::start(settings(&names, &executors, &Knobs::default())).await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(build).json())
        .await;
    let launched = tap.wait_count("build.launched", 1, SOON).await;
    queue_drained(&rabbit, &names).await;
    assert_eq!(launched[0].data["executor"], "b", "{:?}", launched[0].data);
    assert_eq!(
        creates(&a).get(&build),
        None,
        "created on its first choice, A"
    );
    assert_eq!(creates(&b).get(&build), Some(&1));
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_launched_build_whose_executor_cannot_be_looked_at_is_acknowledged_not_dead_lettered()
 {
    let sim = two_clusters(running_forever()).await;
    let (a, b, executors) = even_pair(&sim);
    let (rabbit, names, _tap) = broker("launchedunseen").await;
    let build = build_preferring(&executors, &names, "b", 3000);
    // maxWait is short: a copy that waited for A would be dead-lettered within seconds.
    let knobs = Knobs {
        max_wait_s: 1,
        retry_delays: vec![0.2],
        lifecycle: false,
        ..Knobs::default()
    };
    // (A first start declares the ledger.)
    InProcessWorker::start(settings(&names, &executors, &knobs))
        .await
        .stop()
        .await
        .expect("clean shutdown");
    // An earlier sequencer recorded the build launched on A; A now fails every pod list.
    let ledger = format!("{}.ledger", names.queue);
    let entries = [
        LedgerEntry::Marker {
            epoch: 77,
            marker: "earlier".into(),
        },
        LedgerEntry::Records {
            epoch: 77,
            records: vec![
                Record::Placed {
                    build,
                    exec: "a".to_string(),
                },
                Record::Launched {
                    build,
                    exec: "a".to_string(),
                },
            ],
            at: None,
        },
    ];
    for entry in entries {
        rabbit
            .publish_bytes("", &ledger, &entry.encode(), Default::default())
            .await;
    }
    a.inject(
        Fault::status(500)
            .on_verbs([Verb::List])
            .on_resources(["pods"]),
    );
    let worker = WorkerProcess::spawn(&settings_json(&names, &executors, &knobs), &[]).await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(build).json())
        .await;
    eventually(SOON, "the copy to end as a duplicate", || async {
        let (_, body) = worker.get("/metrics").await?;
        body.lines()
            .any(|l| {
                l.starts_with("bcw_messages_total{")
                    && l.contains(r#"job="start""#)
                    && l.contains(r#"outcome="duplicate""#)
            })
            .then_some(())
    })
    .await;
    queue_drained(&rabbit, &names).await;
    assert_eq!(
        rabbit.depth(&names.dead()).await,
        Some(0),
        "nothing dead-lettered"
    );
    assert_eq!(creates(&a).get(&build), None, "no second pod on A");
    assert_eq!(creates(&b).get(&build), None, "no pod on B");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

/// Every entry on a stream up to now, read from its start.
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
async fn a_burst_records_each_placement_before_its_create_and_each_launch_in_groups() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("ledgergroups").await;
    let executors = crate::support::weighted_pair(&sim);
    const BUILDS: u64 = 60;
    // A first start declares the queue and the ledger.
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

    let mut placed = std::collections::BTreeSet::new();
    let mut noted = std::collections::BTreeSet::new();
    let (mut appends, mut records, mut busy) = (0, 0, 0);
    // (epoch, at, records) of the previous append.
    let mut previous: Option<(u32, u64, usize)> = None;
    for body in stream_bodies(&rabbit, &format!("{}.ledger", names.queue)).await {
        let Some(LedgerEntry::Records {
            records: rs,
            epoch,
            at: Some(at),
        }) = LedgerEntry::decode(&body)
        else {
            continue;
        };
        // After an append of a busy group, the sequencer's next starts APPEND_GAP later at
        // least, by its own clock. (Each decision of this burst records one record.)
        if let Some((e, last, n)) =
            previous.filter(|(e, _, n)| *e == epoch && *n as u64 >= BUSY_GROUP)
        {
            busy += 1;
            assert!(
                at - last >= APPEND_GAP.as_millis() as u64,
                "epoch {e}: an append of {n} records at {last} ms, the next at {at} ms"
            );
        }
        previous = Some((epoch, at, rs.len()));
        // (The sequencer's ticks append its clock alone.)
        if rs.is_empty() {
            continue;
        }
        appends += 1;
        records += rs.len();
        for r in rs {
            match r {
                Record::Placed { build, exec } => assert!(placed.insert((build, exec))),
                Record::Launched { build, exec } => assert!(noted.insert((build, exec))),
                Record::Stopped { .. } => panic!("nothing was stopped"),
            }
        }
    }
    // Each launch went where its placement was recorded (before its create was sent), and
    // its launch was recorded too.
    for e in &launched {
        let at = (
            e.build_id(),
            e.data["executor"].as_str().unwrap().to_string(),
        );
        assert!(placed.contains(&at), "{at:?} launched without a placement");
        assert!(
            noted.contains(&at),
            "{at:?} launched without a launch record"
        );
    }
    let creates: usize = sim
        .clusters()
        .iter()
        .map(|c| creates(c).values().sum::<usize>())
        .sum();
    assert_eq!(placed.len(), creates, "one placement per create");
    // Decided 20 at a time: the records of a round go out in one append.
    assert!(
        appends < records,
        "{records} records in {appends} appends: none grouped"
    );
    assert!(
        busy > 0,
        "no append followed a busy group: the gap was not exercised"
    );
    println!("{records} records in {appends} ledger appends");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

/// The value of a gauge in a worker's Prometheus text (0 when absent).
async fn gauge(worker: &WorkerProcess, name: &str) -> f64 {
    let (_, text) = worker.get("/metrics").await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_is_the_sequencer_and_another_takes_over_when_it_is_killed() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("sequencer").await;
    let executors = crate::support::weighted_pair(&sim);
    let doc = settings_json(&names, &executors, &Knobs::default());
    let first = WorkerProcess::spawn(&doc, &[]).await;
    let second = WorkerProcess::spawn(&doc, &[]).await;
    for build in 7000..7010 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(build).json())
            .await;
    }
    tap.wait_count("build.launched", 10, SOON).await;
    let metric = "bcw_protocol_sequencer";
    let (s1, s2) = (gauge(&first, metric).await, gauge(&second, metric).await);
    assert_eq!(s1 + s2, 1.0, "exactly one sequencer: {s1} and {s2}");
    // Kill the sequencer: the other replica's consumer becomes active, reads the ledger, and
    // answers; a late duplicate of a launched build is not launched again.
    let (mut sequencer, other) = if s1 == 1.0 {
        (first, second)
    } else {
        (second, first)
    };
    sequencer.signal(nix::sys::signal::Signal::SIGKILL);
    sequencer.wait(SOON).await;
    for build in 7000..7020 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(build).json())
            .await;
    }
    // The late duplicates adopt their pods (announcing them again, same ids); the new builds
    // launch.
    tap.wait(SOON, "20 builds launched, 10 of them twice", |evs| {
        let launched: Vec<_> = evs.iter().filter(|e| e.ty == "build.launched").collect();
        let builds: std::collections::BTreeSet<u64> =
            launched.iter().map(|e| e.build_id()).collect();
        launched.len() >= 30 && builds.len() == 20
    })
    .await;
    queue_drained(&rabbit, &names).await;
    eventually(SOON, "the other replica to be the sequencer", || async {
        (gauge(&other, metric).await == 1.0).then_some(())
    })
    .await;
    for c in sim.clusters() {
        for (build, n) in creates(c) {
            assert_eq!(n, 1, "build {build} created {n} times on {}", c.name());
        }
    }
    let builds: std::collections::BTreeSet<u64> = sim
        .clusters()
        .iter()
        .flat_map(|c| c.pods().into_iter().map(|p| build_of(&p)))
        .collect();
    assert_eq!(builds.len(), 20, "every build has a pod, one each");
    assert!(
        std::fs::read_to_string(&other.log)
            .unwrap_or_default()
            .contains("this replica is the sequencer"),
        "the survivor says it took over"
    );
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_claims_consumer_ends_the_session_instead_of_stopping_silently() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("claimslost").await;
    let executors = crate::support::weighted_pair(&sim);
    let worker =
        WorkerProcess::spawn(&settings_json(&names, &executors, &Knobs::default()), &[]).await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(8000).json())
        .await;
    tap.wait_count("build.launched", 1, SOON).await;
    // The broker cancels every consumer of a deleted queue.
    let channel = rabbit.channel().await;
    channel
        .queue_delete(
            format!("{}.claims", names.queue).as_str().into(),
            Default::default(),
        )
        .await
        .expect("delete the claims queue");
    // The worker reconnects (declaring the queue again) and goes on launching.
    eventually(SOON, "the worker to notice and reconnect", || async {
        std::fs::read_to_string(&worker.log)
            .unwrap_or_default()
            .contains("claims consumer cancelled")
            .then_some(())
    })
    .await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(8001).json())
        .await;
    tap.wait_count("build.launched", 2, SOON).await;
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}
