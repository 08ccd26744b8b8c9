//! Status updates to the Screwdriver API: FAILURE for a build that cannot launch (once, with
//! the build token), the reporter's scheduled / waiting / broken-pod updates, and how API
//! answers are treated (403/404 final, 500 and slowness retried then given up).

use std::time::Duration;

use bcw_tests::harness::{
    AdminTopology, ExecutorSpec, FakeApi, InProcessWorker, Reply, StartMsg, eventually, settings,
};
use bcw_tests::kube_sim::{ClusterConfig, Fault, KubeSim, Script, ScriptRule, SimConfig, Verb};
use serde_json::json;

use super::{assert_put_with_token, failures, header, knobs_with};
use crate::support::{SOON, broker, running_forever};

async fn one_cluster() -> KubeSim {
    KubeSim::start(SimConfig {
        clusters: vec![ClusterConfig::new("a").with_timeline(running_forever())],
        ..Default::default()
    })
    .await
    .expect("kube-sim starts")
}

/// The cluster refuses every build pod as invalid (422), as an admission webhook would.
fn refuse_pods(sim: &KubeSim) {
    sim.cluster("a").inject(
        Fault::status(422)
            .on_verbs([Verb::Create])
            .on_resources(["pods"]),
    );
}

/// A build the cluster refuses gets exactly one FAILURE with a sentence and the build token,
/// and its message is parked in `<queue>.dead` (both topologies; with the administrator's,
/// only because the administrator created `X.dead`).
async fn refused_build_fails_once(admin: bool) {
    let sim = one_cluster().await;
    refuse_pods(&sim);
    let api = FakeApi::start().await;
    let (rabbit, names, tap) = broker(if admin { "sdrefadm" } else { "sdrefnat" }).await;
    let topology = AdminTopology::for_names(&names);
    let extra = if admin {
        topology.declare(&rabbit).await;
        topology.declare_dead_queue(&rabbit).await;
        json!({"rabbitmq": {"declareTopology": false}})
    } else {
        json!({})
    };
    let worker = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &sim.cluster("a").url())],
        &knobs_with(extra),
    ))
    .await;
    rabbit
        .publish_json(
            &names.exchange,
            &names.queue,
            &StartMsg::new(8001).api(&api.url()).json(),
        )
        .await;
    tap.wait_count("build.dead_lettered", 1, SOON).await;
    api.wait_for_build(8001, 1, SOON).await;
    // Nothing more comes: no retry of an update the API accepted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls = api.calls_for(8001);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].is_failure());
    assert_put_with_token(&calls[0], 8001);
    let text = calls[0].status_message().unwrap();
    assert!(
        text.starts_with("Build failed to start: the cluster refused the build pod"),
        "{text}"
    );
    let dead = rabbit.drain(&names.dead()).await;
    assert_eq!(dead.len(), 1);
    let h = dead[0].0.headers().clone().unwrap_or_default();
    assert_eq!(header(&h, "x-bcw-reason").as_deref(), Some("invalid_pod"));
    assert_eq!(rabbit.depth(&names.queue).await, Some(0));
    if admin {
        assert_eq!(rabbit.depth(&topology.dlr).await, Some(0));
    }
    worker.stop().await.expect("clean shutdown");
    topology.cleanup(&rabbit).await;
    rabbit.cleanup(&names).await;
    api.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_the_cluster_refuses_gets_one_failure_update_native_topology() {
    refused_build_fails_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_the_cluster_refuses_gets_one_failure_update_admin_topology() {
    refused_build_fails_once(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reporter_tells_the_api_about_scheduled_waiting_and_broken_pods_once_each() {
    let sim = one_cluster().await;
    let a = sim.cluster("a");
    a.add_script(
        ScriptRule::new(
            "^sim/unschedulable",
            Script::Unschedulable { message: None },
        )
        .unwrap(),
    );
    a.add_script(ScriptRule::new("^sim/invalid-image", Script::InvalidImageName).unwrap());
    // The token Secret is created after the pod: let the watch see the pods scheduled (and
    // broken) well before their token can be read.
    a.inject(
        Fault::latency(Duration::from_millis(1500))
            .on_verbs([Verb::Create])
            .on_resources(["secrets"]),
    );
    let api = FakeApi::start().await;
    let (rabbit, names, tap) = broker("sdreport").await;
    let mut knobs = knobs_with(
        json!({"executor": {"a": {"options": {"kubernetes": {"pendingTimeout": 600, "imagePullGracePeriod": 1}}}}}),
    );
    knobs.lifecycle = true;
    let worker = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &a.url())],
        &knobs,
    ))
    .await;
    for msg in [
        StartMsg::new(9001),
        StartMsg::new(9002).image("sim/unschedulable"),
        StartMsg::new(9003).image("sim/invalid-image"),
    ] {
        rabbit
            .publish_json(&names.exchange, &names.queue, &msg.api(&api.url()).json())
            .await;
    }
    tap.wait_count("build.launched", 3, SOON).await;
    tap.wait_count("build.running", 1, SOON).await;
    tap.wait_count("build.launch_failed", 1, SOON).await;
    // "Waiting for resources" comes after a few seconds of waiting for a node.
    api.wait(SOON, "an update for each build", |calls| {
        [9001, 9002, 9003]
            .iter()
            .all(|b| calls.iter().any(|c| c.build_id() == Some(*b)))
    })
    .await;
    // Resyncs run every second: three more seconds would repeat anything not sent once.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let scheduled = api.calls_for(9001);
    assert_eq!(scheduled.len(), 1, "{scheduled:?}");
    assert_put_with_token(&scheduled[0], 9001);
    assert!(scheduled[0].is_scheduled_stats(), "{:?}", scheduled[0].body);
    assert_eq!(
        scheduled[0].status_message(),
        None,
        "a scheduled build's message is not touched"
    );
    let node = a
        .pods()
        .iter()
        .find(|p| p.metadata.labels.as_ref().unwrap()["sdbuild"] == "9001")
        .and_then(|p| p.spec.as_ref()?.node_name.clone())
        .expect("the running pod has a node");
    assert_eq!(scheduled[0].body["stats"]["hostname"], json!(node));
    let pull_start = scheduled[0].body["stats"]["imagePullStartTime"]
        .as_str()
        .unwrap();
    // The pull started when the pod was scheduled, not when its token became readable.
    let pull_start: jiff::Timestamp = pull_start.parse().unwrap();
    let late = scheduled[0].received.duration_since(pull_start);
    assert!(
        late >= jiff::SignedDuration::from_secs(1),
        "imagePullStartTime is {late:?} before the update, the token came 1.5 s late"
    );

    let waiting = api.calls_for(9002);
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_put_with_token(&waiting[0], 9002);
    assert_eq!(
        waiting[0].body,
        json!({"statusMessage": "Waiting for resources to be available."})
    );

    // The broken pod was scheduled too (its stats may come first); one FAILURE.
    let broken = failures(&api, 9003);
    assert_eq!(broken.len(), 1, "{:?}", api.calls_for(9003));
    assert_put_with_token(&broken[0], 9003);
    let text = broken[0].status_message().unwrap();
    assert!(
        text.starts_with("Build failed to start") && text.contains("sim/invalid-image"),
        "{text}"
    );
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    api.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refusals_are_final_and_outages_are_retried_then_given_up_without_failing_the_message()
{
    let sim = one_cluster().await;
    refuse_pods(&sim);
    let api = FakeApi::start().await;
    // Builds 1 and 2 are finished or gone, 3 meets an API outage, 4 a slow API (the timeout is
    // 1 s), 5 a healthy one, 6 is throttled once with Retry-After, 7 refused for good.
    api.reply(8101, Reply::status(403));
    api.reply(8102, Reply::status(404));
    api.reply(8103, Reply::status(500));
    api.reply(8104, Reply::slow(Duration::from_secs(3)));
    api.replies(8106, vec![Reply::retry_after(429, 2), Reply::status(200)]);
    api.reply(8107, Reply::status(400));
    let (rabbit, names, tap) = broker("sdapierr").await;
    let worker = InProcessWorker::start(settings(
        &names,
        &[ExecutorSpec::new("a", &sim.cluster("a").url())],
        &knobs_with(json!({})),
    ))
    .await;
    for id in 8101..=8107u64 {
        rabbit
            .publish_json(
                &names.exchange,
                &names.queue,
                &StartMsg::new(id).api(&api.url()).json(),
            )
            .await;
    }
    // Every message is settled as it would be with a healthy API.
    tap.wait_count("build.dead_lettered", 7, SOON).await;
    eventually(SOON, "every message to be dead-lettered", || async {
        (rabbit.depth(&names.dead()).await == Some(7)).then_some(())
    })
    .await;
    let throttled = eventually(SOON, "the throttled update to be sent again", || async {
        let calls = failures(&api, 8106);
        (calls.len() == 2).then_some(calls)
    })
    .await;
    assert!(
        throttled[1].at - throttled[0].at >= Duration::from_millis(1900),
        "the API's Retry-After (2 s) was not honoured: {:?}",
        throttled[1].at - throttled[0].at
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let count = |id: u64| failures(&api, id).len();
    assert_eq!(count(8101), 1, "403 means finished: no retry");
    assert_eq!(count(8102), 1, "404 means gone: no retry");
    assert_eq!(count(8103), 3, "500 is retried up to maxAttempts");
    assert_eq!(count(8104), 3, "a timeout is retried up to maxAttempts");
    assert_eq!(count(8105), 1);
    assert_eq!(count(8106), 2, "429 is retried once the API allows");
    assert_eq!(count(8107), 1, "a 400 would be refused again: no retry");
    for call in api.calls() {
        assert_put_with_token(&call, call.build_id().unwrap());
    }
    assert_eq!(rabbit.depth(&names.queue).await, Some(0));
    worker.stop().await.expect("clean shutdown");
    rabbit.cleanup(&names).await;
    api.shutdown().await;
    sim.shutdown().await;
}
