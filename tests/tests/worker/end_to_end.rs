//! Issue 2: one build end to end, at volume, with redelivery.

use std::collections::{BTreeMap, BTreeSet};

use bcw_tests::harness::{InProcessWorker, Knobs, StartMsg, eventually, settings, stop};
use serde_json::json;

use crate::support::{
    SOON, broker, build_of, live_pods, queue_drained, running_forever, two_clusters, weighted_pair,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_builds_launch_by_weight_then_stop() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("e2e").await;
    let worker =
        InProcessWorker::start(settings(&names, &weighted_pair(&sim), &Knobs::default())).await;

    let rhel = |id: u64| id.is_multiple_of(10);
    for id in 1..=200u64 {
        let msg = if rhel(id) {
            StartMsg::new(id).image("registry.example/rhel6:latest")
        } else {
            StartMsg::new(id)
        };
        rabbit
            .publish_json(&names.exchange, &names.queue, &msg.json())
            .await;
    }
    let launched = tap.wait_count("build.launched", 200, SOON).await;

    // Exactly one pod per build, ever.
    let (runc, kata) = (sim.cluster("runc"), sim.cluster("kata"));
    let mut created: BTreeMap<u64, usize> = BTreeMap::new();
    for rec in runc.create_log().iter().chain(kata.create_log().iter()) {
        *created
            .entry(rec.labels["sdbuild"].parse().unwrap())
            .or_default() += 1;
    }
    assert_eq!(created.len(), 200);
    assert!(
        created.values().all(|n| *n == 1),
        "a build got more than one pod"
    );
    let (runc_pods, kata_pods) = (live_pods(&runc), live_pods(&kata));
    assert_eq!(runc_pods.len() + kata_pods.len(), 200);

    // Split by weight (30/70), deterministic per build: 180 non-rhel6 builds share it, the 20
    // rhel6 builds can only go to runc.
    let non_rhel_on_kata = kata_pods.len();
    let share = non_rhel_on_kata as f64 / 180.0;
    println!(
        "split: runc {} pods, kata {} pods ({:.1} % of the 180 builds kata may take)",
        runc_pods.len(),
        non_rhel_on_kata,
        share * 100.0
    );
    assert!(
        (0.55..=0.85).contains(&share),
        "kata got {non_rhel_on_kata}/180 ({share:.2}), expected about 0.70"
    );
    for pod in &kata_pods {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.runtime_class_name.as_deref(), Some("kata"));
        assert!(
            !spec.containers[0]
                .image
                .as_deref()
                .unwrap()
                .contains("rhel6"),
            "rhel6 image on kata"
        );
        assert!(!rhel(build_of(pod)));
    }
    for pod in &runc_pods {
        assert_eq!(pod.spec.as_ref().unwrap().runtime_class_name, None);
    }

    // 200 distinct event ids, each equal to the AMQP message id, with the documented shape (docs/interface.md §4).
    let ids: BTreeSet<_> = launched.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 200);
    for e in &launched {
        assert_eq!(e.message_id.as_deref(), Some(e.id.as_str()));
        assert_eq!(
            e.content_type.as_deref(),
            Some("application/cloudevents+json")
        );
        assert_eq!(e.raw["type"], "dev.buildcluster.build.launched");
        assert_eq!(e.data["attempt"], 1);
        assert_eq!(e.data["namespace"], "default");
        let executor = e.data["executor"].as_str().unwrap();
        assert!(executor == "runc" || executor == "kata");
    }
    queue_drained(&rabbit, &names).await;

    // 200 stops remove every pod.
    for id in 1..=200u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &stop(id))
            .await;
    }
    let stopped = tap.wait_count("build.stopped", 200, SOON).await;
    let stopped_ids: BTreeSet<u64> = stopped.iter().map(|e| e.build_id()).collect();
    assert_eq!(stopped_ids.len(), 200);
    assert!(stopped.iter().all(|e| e.data["deletedPods"] == json!(1)));
    eventually(SOON, "every pod to be gone", || async {
        (runc.pods().is_empty() && kata.pods().is_empty()).then_some(())
    })
    .await;

    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_start_yields_one_pod_and_the_same_event_id() {
    let sim = two_clusters(running_forever()).await;
    let (rabbit, names, tap) = broker("redeliver").await;
    let worker =
        InProcessWorker::start(settings(&names, &weighted_pair(&sim), &Knobs::default())).await;

    let msg = StartMsg::new(777);
    rabbit
        .publish_json(&names.exchange, &names.queue, &msg.json())
        .await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &msg.json())
        .await;
    let launched = tap.wait_count("build.launched", 2, SOON).await;
    assert_eq!(
        launched[0].id, launched[1].id,
        "a redelivery publishes the same event id"
    );

    let creates: usize = ["runc", "kata"]
        .iter()
        .map(|c| sim.cluster(c).create_log().len())
        .sum();
    assert_eq!(
        creates, 1,
        "the second delivery adopted the pod instead of creating another"
    );
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}
