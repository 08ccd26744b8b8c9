//! Issue 4: one watch per cluster behind a Lease, failures to start classified, completions
//! reported once, stops without orphans, garbage collection, verify.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bcw_tests::harness::{
    ExecutorSpec, InProcessWorker, Knobs, StartMsg, WorkerProcess, eventually, settings,
    settings_json, stop,
};
use bcw_tests::kube_sim::{
    ClusterConfig, Fault, KubeSim, Script, ScriptRule, SimConfig, Timeline, Verb,
};
use serde_json::json;

use crate::support::{SOON, broker, live_pods, queue_drained, running_forever};

/// One cluster `a` with this timeline.
async fn one_cluster(timeline: Timeline) -> KubeSim {
    KubeSim::start(SimConfig {
        clusters: vec![ClusterConfig::new("a").with_timeline(timeline)],
        ..Default::default()
    })
    .await
    .expect("kube-sim starts")
}

fn reporting(extra: serde_json::Value) -> Knobs {
    let mut doc = json!({
        "executor": {"a": {"options": {"kubernetes": {"pendingTimeout": 2, "imagePullGracePeriod": 1, "podTTL": 600}}}},
    });
    merge(&mut doc, &extra);
    Knobs {
        lifecycle: true,
        extra: doc,
        ..Knobs::default()
    }
}

fn merge(into: &mut serde_json::Value, from: &serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_to_start_is_reported_once_with_its_reason_and_the_pod_removed() {
    let sim = one_cluster(Timeline::fast()).await;
    let a = sim.cluster("a");
    let cases: Vec<(&str, Script, &str)> = vec![
        (
            "sim/invalid-image",
            Script::InvalidImageName,
            "InvalidImageName",
        ),
        (
            "sim/no-such-image",
            Script::ErrImagePull,
            "ImagePullBackOff|ErrImagePull",
        ),
        (
            "sim/config-error",
            Script::CreateContainerConfigError { message: None },
            "CreateContainerConfigError",
        ),
        (
            "sim/create-error",
            Script::CreateContainerError { message: None },
            "CreateContainerError",
        ),
        (
            "sim/crash-loop",
            Script::CrashLoopBackOff,
            "CrashLoopBackOff",
        ),
        (
            "sim/init-fails",
            Script::InitFails { code: 3 },
            "InitContainerFailed",
        ),
        (
            "sim/unschedulable",
            Script::Unschedulable { message: None },
            "Unschedulable",
        ),
    ];
    for (image, script, _) in &cases {
        a.add_script(ScriptRule::new(&format!("^{image}"), script.clone()).unwrap());
    }
    let (rabbit, names, tap) = broker("failstart").await;
    let worker = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &reporting(json!({})),
    ))
    .await;
    for (i, (image, _, _)) in cases.iter().enumerate() {
        rabbit
            .publish_json(
                &names.exchange,
                &names.queue,
                &StartMsg::new(100 + i as u64).image(image).json(),
            )
            .await;
    }
    tap.wait_count("build.launch_failed", cases.len(), SOON)
        .await;
    // Nothing more arrives for them (exactly one each), and every pod is gone.
    eventually(SOON, "the failed pods to be deleted", || async {
        a.pods().is_empty().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failed = tap.of("build.launch_failed");
    assert_eq!(
        failed.len(),
        cases.len(),
        "exactly one build.launch_failed per build"
    );
    for (i, (image, _, reason)) in cases.iter().enumerate() {
        let ev = failed
            .iter()
            .find(|e| e.build_id() == 100 + i as u64)
            .unwrap_or_else(|| panic!("no event for {image}"));
        let got = ev.data["reason"].as_str().unwrap();
        assert!(
            reason.split('|').any(|r| r == got),
            "{image}: reason {got}, expected {reason}"
        );
        let msg = ev.data["message"].as_str().unwrap();
        assert!(msg.starts_with("Build failed to start"), "{image}: {msg}");
        assert_eq!(ev.data["executor"], "a");
    }
    // Only the crash-looping build ever ran (its container starts before it crashes).
    let ran: BTreeSet<u64> = tap
        .of("build.running")
        .iter()
        .map(|e| e.build_id())
        .collect();
    assert!(
        ran.iter().all(|id| *id == 104),
        "builds that never started reported running: {ran:?}"
    );
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_builds_report_their_outcome_once_with_exit_code_and_reason() {
    // activeDeadlineSeconds (3,600 s for the messages' 60 min timeout) scaled to about 2 s.
    let sim = one_cluster(Timeline {
        deadline_scale: 0.0006,
        ..Timeline::fast()
    })
    .await;
    let a = sim.cluster("a");
    let cases: Vec<(&str, Script)> = vec![
        (
            "sim/oom",
            Script::Exit {
                code: 137,
                reason: "OOMKilled".into(),
            },
        ),
        (
            "sim/error",
            Script::Exit {
                code: 2,
                reason: "Error".into(),
            },
        ),
        ("sim/forever", Script::RunForever),
    ];
    for (image, script) in &cases {
        a.add_script(ScriptRule::new(&format!("^{image}"), script.clone()).unwrap());
    }
    let (rabbit, names, tap) = broker("outcomes").await;
    let worker = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &reporting(json!({})),
    ))
    .await;
    for (id, image) in [
        (301u64, "sim/oom"),
        (302, "sim/error"),
        (303, "sim/forever"),
        (304, "node:22"),
    ] {
        rabbit
            .publish_json(
                &names.exchange,
                &names.queue,
                &StartMsg::new(id).image(image).json(),
            )
            .await;
    }
    tap.wait_count("build.failed", 2, SOON).await;
    tap.wait_count("build.timed_out", 1, SOON).await;
    tap.wait_count("build.succeeded", 1, SOON).await;
    // Room for a duplicate to show (the reporter re-evaluates every second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcome = |ty: &str| -> BTreeMap<u64, serde_json::Value> {
        let evs = tap.of(ty);
        let map: BTreeMap<u64, serde_json::Value> =
            evs.iter().map(|e| (e.build_id(), e.data.clone())).collect();
        assert_eq!(map.len(), evs.len(), "{ty} published once per build");
        map
    };
    let failed = outcome("build.failed");
    assert_eq!(failed.keys().copied().collect::<Vec<_>>(), [301, 302]);
    assert_eq!(failed[&301]["exitCode"], 137);
    assert_eq!(failed[&301]["reason"], "OOMKilled");
    assert_eq!(failed[&302]["exitCode"], 2);
    assert_eq!(failed[&302]["reason"], "Error");
    let timed_out = outcome("build.timed_out");
    assert_eq!(timed_out.keys().copied().collect::<Vec<_>>(), [303]);
    let succeeded = outcome("build.succeeded");
    assert_eq!(succeeded.keys().copied().collect::<Vec<_>>(), [304]);
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_is_launched_runs_and_succeeds_once_each_with_three_replicas() {
    let sim = one_cluster(Timeline {
        run_for: Some(Duration::from_millis(800)),
        ..Timeline::fast()
    })
    .await;
    let a = sim.cluster("a");
    // The launcher creates the build's token Secret after the pod and only then publishes
    // build.launched: a slow Secret create makes every pod run, and finish, before its launch
    // is announced, whichever replica launched it and whichever reports.
    a.inject(
        Fault::latency(Duration::from_millis(1200))
            .on_verbs([Verb::Create])
            .on_resources(["secrets"]),
    );
    let (rabbit, names, tap) = broker("threereplicas").await;
    let s = settings(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &reporting(json!({})),
    );
    let workers = [
        InProcessWorker::start(s.clone()).await,
        InProcessWorker::start(s.clone()).await,
        InProcessWorker::start(s).await,
    ];
    for id in 1..=30u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    tap.wait_count("build.succeeded", 30, SOON).await;
    // Room for a late duplicate to show (a reporter re-evaluates every second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = tap.all();
    for id in 1..=30u64 {
        // Once each, in order, without deduplicating: the reporter waits until the launch of a
        // pod is on the stream (from its own process, or seen on the events exchange).
        let seq: Vec<&str> = events
            .iter()
            .filter(|e| e.build_id() == id && e.ty.starts_with("build."))
            .map(|e| e.ty.as_str())
            .collect();
        assert_eq!(
            seq,
            ["build.launched", "build.running", "build.succeeded"],
            "build {id}"
        );
    }
    let ids: BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "no event published twice");
    // One reporter: exactly one holder of the executor's Lease.
    let leases = a.leases();
    assert_eq!(leases.len(), 1);
    assert!(leases[0].spec.as_ref().unwrap().holder_identity.is_some());
    for w in workers {
        w.stop().await.expect("clean shutdown");
    }
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_reporter_hands_over_within_the_lease_duration_and_loses_no_completion() {
    let sim = one_cluster(Timeline {
        run_for: Some(Duration::from_secs(4)),
        ..Timeline::fast()
    })
    .await;
    let a = sim.cluster("a");
    let (rabbit, names, tap) = broker("handover").await;
    // Lease 3 s, renewed every second (Knobs defaults).
    let doc = settings_json(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &reporting(json!({})),
    );
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(WorkerProcess::spawn(&doc, &[]).await);
    }
    for id in 1..=20u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    tap.wait_count("build.running", 20, SOON).await;

    // Find the leader by its metric and kill it.
    let mut leader = None;
    for (i, r) in replicas.iter().enumerate() {
        let (_, body) = r.get("/metrics").await.expect("metrics");
        if body
            .lines()
            .any(|l| l.starts_with("bcw_reporter_leader{") && l.ends_with(" 1"))
        {
            leader = Some(i);
        }
    }
    let leader = leader.expect("one replica reports");
    let holder_before = a.leases()[0].spec.clone().unwrap().holder_identity;
    let killed_at = tokio::time::Instant::now();
    replicas[leader].signal(nix::sys::signal::Signal::SIGKILL);
    let took = eventually(SOON, "another replica to take the lease", || async {
        let now = a.leases()[0].spec.clone().unwrap().holder_identity;
        (now.is_some() && now != holder_before).then(|| killed_at.elapsed())
    })
    .await;
    assert!(
        took <= Duration::from_secs(3 + 2),
        "hand-over took {took:?}, lease duration is 3 s"
    );

    // Every build still gets its completion.
    tap.wait_count("build.succeeded", 20, SOON).await;
    let ids: BTreeSet<u64> = tap
        .of("build.succeeded")
        .iter()
        .map(|e| e.build_id())
        .collect();
    assert_eq!(ids.len(), 20);
    // A hand-over may repeat an event, never with a different id.
    let mut by_build: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for e in tap.of("build.succeeded") {
        by_build
            .entry(e.build_id())
            .or_default()
            .insert(e.id.clone());
    }
    assert!(by_build.values().all(|ids| ids.len() == 1));
    for (i, mut r) in replicas.into_iter().enumerate() {
        if i != leader {
            r.signal(nix::sys::signal::Signal::SIGTERM);
            assert!(r.wait(Duration::from_secs(30)).await.success());
        }
    }
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_hands_the_reporter_over_without_publishing_events_again() {
    let sim = one_cluster(Timeline {
        run_for: Some(Duration::from_secs(3)),
        ..Timeline::fast()
    })
    .await;
    let a = sim.cluster("a");
    let (rabbit, names, tap) = broker("rolling").await;
    let s = settings(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &reporting(json!({})),
    );
    let old = InProcessWorker::start(s.clone()).await;
    for id in 1..=10u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    tap.wait_count("build.running", 10, SOON).await;
    let holder = |a: &bcw_tests::kube_sim::ClusterHandle| {
        a.leases()[0].spec.clone().unwrap().holder_identity
    };
    let old_holder = holder(&a);
    // The new version starts, then the old one stops: it releases the Lease with its note.
    let new = InProcessWorker::start(s).await;
    old.stop().await.expect("clean shutdown");
    eventually(SOON, "the new replica to take the Lease", || async {
        let now = holder(&a);
        (now.is_some() && now != old_holder).then_some(())
    })
    .await;
    let annotations = a.leases()[0]
        .metadata
        .annotations
        .clone()
        .unwrap_or_default();
    assert!(
        !annotations.contains_key("buildcluster-worker/reported"),
        "the note is taken out of the Lease by the replica that took it: {annotations:?}"
    );
    // A build launched after the takeover is reported after the first list's pods were looked
    // at (one watch, in order).
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(11).json())
        .await;
    tap.wait_count("build.succeeded", 11, SOON).await;
    for id in 1..=11u64 {
        for ty in ["build.launched", "build.running", "build.succeeded"] {
            let n = tap.of(ty).iter().filter(|e| e.build_id() == id).count();
            assert_eq!(n, 1, "build {id}: {ty} published {n} times");
        }
    }
    new.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_after_a_stop_does_not_launch_a_late_start_of_that_build() {
    let sim = one_cluster(running_forever()).await;
    let a = sim.cluster("a");
    let (rabbit, names, tap) = broker("stoplate").await;
    // No re-checks: only the knowledge of the stop can keep the late start from launching.
    let knobs = Knobs {
        extra: json!({"rabbitmq": {"stopRechecks": 0}}),
        ..Knobs::default()
    };
    let s = settings(&names, &[ExecutorSpec::new("a", &a.url())], &knobs);
    let first = InProcessWorker::start(s.clone()).await;
    for id in [77u64, 78] {
        rabbit
            .publish_json(&names.exchange, &names.queue, &stop(id))
            .await;
    }
    tap.wait_count("build.stopped", 2, SOON).await;
    first.stop().await.expect("clean shutdown");

    // A replica that was not running when the builds were stopped takes their late starts.
    let second = InProcessWorker::start(s).await;
    for id in [77u64, 78, 79] {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    tap.wait_count("build.launched", 1, SOON).await;
    queue_drained(&rabbit, &names).await;
    let created: Vec<String> = a.create_log().into_iter().map(|r| r.name).collect();
    assert_eq!(created.len(), 1, "only build 79 launched: {created:?}");
    assert!(created[0].starts_with("79-"), "{created:?}");
    let launched: Vec<u64> = tap
        .of("build.launched")
        .iter()
        .map(|e| e.build_id())
        .collect();
    assert_eq!(launched, [79]);
    second.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_overtakes_its_start_leaves_no_pod() {
    let sim = one_cluster(Timeline {
        run_for: None,
        ..Timeline::fast()
    })
    .await;
    let a = sim.cluster("a");
    let (rabbit, names, tap) = broker("stopfirst").await;
    // One message at a time: the stop is handled before its start, which must not launch.
    let knobs = Knobs {
        prefetch: 1,
        retry_delays: vec![0.3],
        ..Knobs::default()
    };
    let worker = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &knobs,
    ))
    .await;
    for id in 1..=10u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &stop(id))
            .await;
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    tap.wait_count("build.stopped", 10, SOON).await;
    queue_drained(&rabbit, &names).await;
    assert!(
        a.create_log().is_empty(),
        "a start for a stopped build launched"
    );
    assert!(tap.of("build.launched").is_empty());
    worker.stop().await.expect("clean shutdown");

    // Two replicas racing, many at once: whatever the order, no pod is left at the end.
    let knobs = Knobs {
        prefetch: 20,
        retry_delays: vec![0.3],
        ..Knobs::default()
    };
    let s = settings(&names, &[ExecutorSpec::new("a", &a.url())], &knobs);
    let (w1, w2) = (
        InProcessWorker::start(s.clone()).await,
        InProcessWorker::start(s).await,
    );
    for id in 101..=140u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &stop(id))
            .await;
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    // Stops re-check through the delay queue (3 times by default), so late pods are removed.
    eventually(SOON, "every stop and its re-checks to finish", || async {
        let idle = rabbit.depth(&names.queue).await == Some(0)
            && rabbit.depth(&format!("{}.retry.1", names.queue)).await == Some(0);
        (idle && live_pods(&a).is_empty() && tap.of("build.stopped").len() >= 50).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        live_pods(&a).is_empty(),
        "orphan pods: {:?}",
        live_pods(&a)
            .iter()
            .map(|p| p.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    w1.stop().await.expect("clean shutdown");
    w2.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_pods_and_orphans_are_collected() {
    let sim = one_cluster(Timeline {
        run_for: Some(Duration::from_millis(200)),
        ..Timeline::fast()
    })
    .await;
    let a = sim.cluster("a");
    let (rabbit, names, tap) = broker("gc").await;
    let knobs = reporting(
        json!({"executor": {"a": {"options": {"kubernetes": {"podTTL": 1, "pendingTimeout": 2}}}}}),
    );
    let worker = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &knobs,
    ))
    .await;
    for id in 1..=5u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    tap.wait_count("build.succeeded", 5, SOON).await;
    eventually(
        SOON,
        "finished pods to be collected after their TTL",
        || async { a.pods().is_empty().then_some(()) },
    )
    .await;

    // A pod of ours that no build knows about (no build annotation, no sdbuild label).
    let client = kube::Client::try_from(kube::Config::new(a.url().parse().unwrap())).unwrap();
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, "default");
    let orphan: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "stray", "labels": {"app.kubernetes.io/managed-by": "buildcluster-worker", "buildcluster-worker/executor": "a"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "Never"}
    }))
    .unwrap();
    api.create(&Default::default(), &orphan).await.unwrap();
    eventually(
        SOON,
        "the orphan to be collected past the pending deadline",
        || async { a.pods().is_empty().then_some(()) },
    )
    .await;
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_duplicate_of_a_finished_and_collected_build_is_not_launched_again() {
    let sim = one_cluster(Timeline {
        run_for: Some(Duration::from_millis(200)),
        ..Timeline::fast()
    })
    .await;
    let a = sim.cluster("a");
    let (rabbit, names, tap) = broker("latedup").await;
    let knobs = reporting(json!({"executor": {"a": {"options": {"kubernetes": {"podTTL": 1}}}}}));
    let worker = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &knobs,
    ))
    .await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(61).json())
        .await;
    tap.wait_count("build.succeeded", 1, SOON).await;
    eventually(SOON, "the finished pod to be collected", || async {
        a.pods().is_empty().then_some(())
    })
    .await;
    // The producer publishes the start again, long after: its pod's name is free.
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(61).json())
        .await;
    queue_drained(&rabbit, &names).await;
    worker.stop().await.expect("clean shutdown");
    assert_eq!(
        a.create_log().len(),
        1,
        "the build was launched a second time"
    );
    assert!(a.pods().is_empty());
    assert_eq!(
        tap.of("build.launched").len(),
        1,
        "a second launch was announced"
    );
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_answers_with_the_build_state() {
    let sim = one_cluster(Timeline {
        run_for: None,
        ..Timeline::fast()
    })
    .await;
    let a = sim.cluster("a");
    let (rabbit, names, tap) = broker("verify").await;
    let worker = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &Knobs::default(),
    ))
    .await;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(61).json())
        .await;
    tap.wait_count("build.launched", 1, SOON).await;
    eventually(SOON, "the pod to run", || async {
        a.pods()
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .then_some(())
    })
    .await;
    rabbit
        .publish_json(
            &names.exchange,
            &names.queue,
            &StartMsg::new(61).job("verify").json(),
        )
        .await;
    rabbit
        .publish_json(
            &names.exchange,
            &names.queue,
            &StartMsg::new(62).job("verify").json(),
        )
        .await;
    let verified = tap.wait_count("build.verified", 2, SOON).await;
    let state =
        |id: u64| verified.iter().find(|e| e.build_id() == id).unwrap().data["state"].clone();
    assert_eq!(state(61), "running");
    assert_eq!(state(62), "missing");
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}

/// A stopping worker lets its reporter finish the pods it is evaluating, then closes the broker
/// connection: no event the reporter was sending fails for want of a connection (a worker
/// stopped at the end of a 20,000-build burst used to log 143 such failures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_sends_its_reporters_last_events_before_it_disconnects() {
    let sim = one_cluster(Timeline::fast()).await;
    let a = sim.cluster("a");
    let (rabbit, names, tap) = broker("lastwords").await;
    let doc = settings_json(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &reporting(json!({})),
    );
    let mut worker = WorkerProcess::spawn(&doc, &[]).await;
    for id in 1..=300u64 {
        rabbit
            .publish_json(&names.exchange, &names.queue, &StartMsg::new(id).json())
            .await;
    }
    // Stopped mid-stream: pods are starting, running and finishing while it drains.
    tap.wait_count("build.succeeded", 20, SOON).await;
    worker.signal(nix::sys::signal::Signal::SIGTERM);
    let status = worker.wait(Duration::from_secs(60)).await;
    let log = worker.log_text();
    assert!(status.success(), "{status}\n{log}");
    let lines: Vec<&str> = log.lines().collect();
    let at = |needle: &str| -> Vec<usize> {
        lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains(needle))
            .map(|(i, _)| i)
            .collect()
    };
    let closed = at("\"broker connection closed\"");
    let stopped = at("\"stopped reporting for this executor\"");
    assert_eq!(closed.len(), 1, "{log}");
    assert_eq!(stopped.len(), 1, "one reporter, stopped once: {log}");
    assert!(
        stopped[0] < closed[0],
        "the reporter stopped after the connection closed:\n{log}"
    );
    let failed = at("event not confirmed");
    assert!(
        failed.is_empty(),
        "events failed while stopping: {:?}",
        failed.iter().map(|&i| lines[i]).collect::<Vec<_>>()
    );
    rabbit.cleanup(&names).await;
    sim.shutdown().await;
}
