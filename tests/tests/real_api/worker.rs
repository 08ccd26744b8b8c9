//! Every kind of request the worker makes, with its own identity, answered by the real API
//! server, and every event it derives from real pod statuses.

use std::collections::BTreeSet;

use bcw_tests::harness::{
    EventTap, Knobs, Names, Rabbit, StartMsg, WorkerProcess, eventually, stop,
};
use buildcluster_worker::intake::BuildId;
use buildcluster_worker::naming::pod_name;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use serde_json::json;

use crate::support::{
    NS, RealExecutor, SOON, build_base, build_pods, client, config, pods, real_or_skip, reporting,
    unique,
};

async fn broker(tag: &str) -> (Rabbit, Names, EventTap) {
    let rabbit = Rabbit::connect().await;
    let names = Names::unique(tag);
    rabbit.declare_exchanges(&names).await;
    let tap = rabbit.tap(&names).await;
    (rabbit, names, tap)
}

async fn publish(rabbit: &Rabbit, names: &Names, msg: &serde_json::Value) {
    rabbit
        .publish_json(&names.exchange, &names.queue, msg)
        .await;
}

/// The one event of `ty` for `build`, waited for.
async fn event_of(tap: &EventTap, ty: &str, build: u64) -> bcw_tests::harness::Event {
    let what = format!("{ty} for build {build}");
    let evs = tap
        .wait(SOON, &what, |evs| {
            evs.iter().any(|e| e.ty == ty && e.build_id() == build)
        })
        .await;
    evs.into_iter()
        .find(|e| e.ty == ty && e.build_id() == build)
        .expect("present")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_launch_on_runc_and_kata_run_and_succeed_with_their_token_secret_owned_by_the_pod() {
    let real = real_or_skip!();
    let (rabbit, names, tap) = broker("real-launch").await;
    let (runc_ex, kata_ex) = (unique("rt-runc"), unique("rt-kata"));
    let executors = [
        RealExecutor::new(&runc_ex),
        RealExecutor::new(&kata_ex).runtime("kata"),
    ];
    let worker =
        WorkerProcess::spawn(&config(&names, &real.worker, &executors, &reporting()), &[]).await;
    let (runc, kata) = (build_base() + 1, build_base() + 2);
    publish(
        &rabbit,
        &names,
        &StartMsg::new(runc).pinned(&runc_ex).json(),
    )
    .await;
    publish(
        &rabbit,
        &names,
        &StartMsg::new(kata).pinned(&kata_ex).json(),
    )
    .await;
    for (build, executor) in [(runc, &runc_ex), (kata, &kata_ex)] {
        let launched = event_of(&tap, "build.launched", build).await;
        assert_eq!(launched.data["executor"], executor.as_str());
        assert_eq!(launched.data["namespace"], NS);
        event_of(&tap, "build.running", build).await;
        event_of(&tap, "build.succeeded", build).await;
    }
    let api = pods(&real).await;
    let secrets: Api<Secret> = Api::namespaced(client(&real.admin).await, NS);
    for (build, runtime) in [(runc, None), (kata, Some("kata"))] {
        let found = build_pods(&api, build).await;
        assert_eq!(found.len(), 1, "exactly one pod for build {build}");
        let pod = &found[0];
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.runtime_class_name.as_deref(), runtime);
        // Defaults the API server filled in, which the worker must tolerate on read-back.
        assert_eq!(spec.scheduler_name.as_deref(), Some("default-scheduler"));
        assert!(
            spec.node_name
                .as_deref()
                .unwrap_or("")
                .starts_with("kwok-node-")
        );
        assert_eq!(
            pod.status.as_ref().unwrap().phase.as_deref(),
            Some("Succeeded")
        );
        let managers: Vec<_> = pod
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|e| e.manager.as_deref())
            .collect();
        assert!(
            managers.contains(&"buildcluster-worker"),
            "the worker names itself as the pod's field manager: {managers:?}"
        );
        let name = pod.metadata.name.clone().unwrap();
        let secret = secrets
            .list(&kube::api::ListParams::default().labels(&format!("sdbuild={build}")))
            .await
            .unwrap()
            .items;
        assert_eq!(secret.len(), 1, "one token Secret for build {build}");
        let owners = secret[0]
            .metadata
            .owner_references
            .clone()
            .unwrap_or_default();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "Pod");
        assert_eq!(owners[0].name, name);
        assert_eq!(Some(&owners[0].uid), pod.metadata.uid.as_ref());
        assert_eq!(secret[0].immutable, Some(true));
    }
    let succeeded: Vec<u64> = tap
        .of("build.succeeded")
        .iter()
        .map(|e| e.build_id())
        .collect();
    assert_eq!(
        succeeded.len(),
        2,
        "one build.succeeded each: {succeeded:?}"
    );
    drop(worker);
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_deletes_the_pod_and_the_garbage_collector_deletes_its_token_secret() {
    let real = real_or_skip!();
    let (rabbit, names, tap) = broker("real-stop").await;
    let executors = [RealExecutor::new(&unique("rt-stop"))];
    let worker =
        WorkerProcess::spawn(&config(&names, &real.worker, &executors, &reporting()), &[]).await;
    let build = build_base() + 1;
    publish(
        &rabbit,
        &names,
        &StartMsg::new(build).image("sim/forever").json(),
    )
    .await;
    event_of(&tap, "build.running", build).await;
    let api = pods(&real).await;
    let pod = build_pods(&api, build)
        .await
        .pop()
        .expect("the build's pod");
    let secrets: Api<Secret> = Api::namespaced(client(&real.admin).await, NS);
    let secret_name = {
        let list = secrets
            .list(&kube::api::ListParams::default().labels(&format!("sdbuild={build}")))
            .await
            .unwrap();
        list.items[0].metadata.name.clone().unwrap()
    };
    publish(&rabbit, &names, &stop(build)).await;
    let stopped = event_of(&tap, "build.stopped", build).await;
    assert_eq!(stopped.data["deletedPods"], 1, "{:?}", stopped.data);
    // The pod goes once kwok (the kubelet) finished it; the Secret only through its owner
    // reference: the worker may not delete Secrets at all (the Role grants create and get).
    eventually(SOON, "the pod to be gone", || async {
        api.get_opt(pod.metadata.name.as_deref().unwrap())
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    eventually(
        SOON,
        "the garbage collector to delete the token Secret",
        || async {
            secrets
                .get_opt(&secret_name)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(
        tap.of("build.succeeded").is_empty(),
        "a stopped build does not succeed"
    );
    drop(worker);
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_pod_of_the_build_is_adopted_on_409_never_duplicated() {
    let real = real_or_skip!();
    let (rabbit, names, tap) = broker("real-adopt").await;
    let build = build_base() + 1;
    let executor = unique("rt-adopt");
    let name = pod_name("", BuildId(build));
    // A pod an earlier attempt created and never recorded, with the build's name and labels.
    let api = pods(&real).await;
    let leftover: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"sdbuild": build.to_string(),
            "app.kubernetes.io/managed-by": "buildcluster-worker",
            "buildcluster-worker/executor": executor}},
        "spec": {"containers": [{"name": "build", "image": "sim/forever"}], "restartPolicy": "Never"}
    }))
    .unwrap();
    api.create(&Default::default(), &leftover)
        .await
        .expect("leftover pod");
    let executors = [RealExecutor::new(&executor)];
    let worker =
        WorkerProcess::spawn(&config(&names, &real.worker, &executors, &reporting()), &[]).await;
    publish(&rabbit, &names, &StartMsg::new(build).json()).await;
    let launched = event_of(&tap, "build.launched", build).await;
    assert_eq!(launched.data["pod"], name.as_str());
    let found = build_pods(&api, build).await;
    assert_eq!(found.len(), 1, "adopted, not duplicated");
    assert_eq!(found[0].metadata.uid, {
        api.get(&name).await.unwrap().metadata.uid
    });
    publish(&rabbit, &names, &stop(build)).await;
    event_of(&tap, "build.stopped", build).await;
    drop(worker);
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_come_from_real_pod_statuses_as_failed_and_launch_failed() {
    let real = real_or_skip!();
    let (rabbit, names, tap) = broker("real-failures").await;
    let base = build_base();
    let executors = [RealExecutor::new(&unique("rt-fail"))
        .kubernetes(json!({"pendingTimeout": 3, "imagePullGracePeriod": 1, "podTTL": 600}))];
    let worker =
        WorkerProcess::spawn(&config(&names, &real.worker, &executors, &reporting()), &[]).await;
    let failed_to_start = [
        (base + 1u64, "sim/invalid-image", "InvalidImageName"),
        (
            base + 2,
            "sim/no-such-image",
            "ImagePullBackOff|ErrImagePull",
        ),
        (base + 3, "sim/config-error", "CreateContainerConfigError"),
        (base + 4, "sim/create-error", "CreateContainerError"),
        (base + 5, "sim/crash-loop", "CrashLoopBackOff"),
        (base + 6, "sim/init-fails", "InitContainerFailed"),
        (base + 7, "sim/unschedulable", "Unschedulable"),
    ];
    let failed = [
        (base + 11, "sim/exit-2", 2, "Error"),
        (base + 12, "sim/oom", 137, "OOMKilled"),
    ];
    for (id, image, _) in failed_to_start {
        publish(&rabbit, &names, &StartMsg::new(id).image(image).json()).await;
    }
    for (id, image, _, _) in failed {
        publish(&rabbit, &names, &StartMsg::new(id).image(image).json()).await;
    }
    for (id, image, reasons) in failed_to_start {
        let ev = event_of(&tap, "build.launch_failed", id).await;
        let got = ev.data["reason"].as_str().unwrap_or_default();
        assert!(
            reasons.split('|').any(|r| r == got),
            "{image}: reason {got}, expected {reasons}"
        );
        let msg = ev.data["message"].as_str().unwrap_or_default();
        assert!(msg.starts_with("Build failed to start"), "{image}: {msg}");
    }
    for (id, image, code, reason) in failed {
        let ev = event_of(&tap, "build.failed", id).await;
        assert_eq!(ev.data["exitCode"], code, "{image}");
        assert_eq!(ev.data["reason"], reason, "{image}");
    }
    // Pods that cannot start are deleted by the worker.
    let api = pods(&real).await;
    for (id, image, _) in failed_to_start {
        eventually(
            SOON,
            &format!("the pod of {image} to be deleted"),
            || async { build_pods(&api, id).await.is_empty().then_some(()) },
        )
        .await;
    }
    // Only the crash-looping build ever ran; nothing succeeded; one event each.
    let ran: BTreeSet<u64> = tap
        .of("build.running")
        .iter()
        .map(|e| e.build_id())
        .collect();
    assert!(
        ran.iter()
            .all(|id| [base + 5, base + 11, base + 12].contains(id)),
        "{ran:?}"
    );
    assert!(tap.of("build.succeeded").is_empty());
    assert_eq!(tap.of("build.launch_failed").len(), failed_to_start.len());
    drop(worker);
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_pods_are_garbage_collected_after_their_ttl() {
    let real = real_or_skip!();
    let (rabbit, names, tap) = broker("real-podttl").await;
    let executors = [RealExecutor::new(&unique("rt-ttl")).kubernetes(json!({"podTTL": 1}))];
    let worker =
        WorkerProcess::spawn(&config(&names, &real.worker, &executors, &reporting()), &[]).await;
    let build = build_base() + 1;
    publish(&rabbit, &names, &StartMsg::new(build).json()).await;
    event_of(&tap, "build.succeeded", build).await;
    let api = pods(&real).await;
    let secrets: Api<Secret> = Api::namespaced(client(&real.admin).await, NS);
    eventually(
        SOON,
        "the finished pod and its Secret to be collected",
        || async {
            let pods_left = build_pods(&api, build).await.len();
            let secrets_left = secrets
                .list(&kube::api::ListParams::default().labels(&format!("sdbuild={build}")))
                .await
                .unwrap()
                .items
                .len();
            (pods_left == 0 && secrets_left == 0).then_some(())
        },
    )
    .await;
    drop(worker);
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_reporter_by_lease_and_hand_over_when_it_stops() {
    let real = real_or_skip!();
    let (rabbit, names, tap) = broker("real-lease").await;
    let executor = unique("rt-lease");
    let executors = [RealExecutor::new(&executor)];
    let doc = config(&names, &real.worker, &executors, &reporting());
    let a = WorkerProcess::spawn(&doc, &[("HOSTNAME", "replica-a")]).await;
    let b = WorkerProcess::spawn(&doc, &[("HOSTNAME", "replica-b")]).await;
    let leases: Api<Lease> = Api::namespaced(client(&real.admin).await, NS);
    let holder = || async {
        leases
            .get_opt(&format!("buildcluster-worker-{executor}"))
            .await
            .unwrap()
            .and_then(|l| l.spec.and_then(|s| s.holder_identity))
    };
    let first = eventually(SOON, "a reporter to hold the Lease", || async {
        holder().await
    })
    .await;
    let base = build_base();
    for id in base + 1..=base + 4 {
        publish(&rabbit, &names, &StartMsg::new(id).json()).await;
    }
    tap.wait_count("build.succeeded", 4, SOON).await;
    // Two replicas, one reporter: so far every event exactly once.
    for ty in ["build.launched", "build.succeeded"] {
        let evs = tap.of(ty);
        let ids: BTreeSet<u64> = evs.iter().map(|e| e.build_id()).collect();
        assert_eq!(
            (ids.len(), evs.len()),
            (4, 4),
            "{ty} once per build with two replicas"
        );
    }
    // Stop the holder; the other replica takes the Lease over and reports from then on.
    let (holder_proc, other) = if first.starts_with("replica-a") {
        (a, b)
    } else {
        (b, a)
    };
    let mut holder_proc = holder_proc;
    holder_proc.signal(nix::sys::signal::Signal::SIGTERM);
    holder_proc.wait(SOON).await;
    let second = eventually(SOON, "the other replica to take the Lease", || async {
        holder().await.filter(|h| *h != first)
    })
    .await;
    let other_host = if first.starts_with("replica-a") {
        "replica-b"
    } else {
        "replica-a"
    };
    assert!(second.starts_with(other_host), "{first} -> {second}");
    for id in base + 11..=base + 12 {
        publish(&rabbit, &names, &StartMsg::new(id).json()).await;
    }
    tap.wait_count("build.succeeded", 6, SOON).await;
    // The new reporter may repeat an event the old one published (it cannot know), but
    // always with the same id, so consumers deduplicate.
    for ty in ["build.running", "build.succeeded"] {
        let mut by_build: std::collections::BTreeMap<u64, BTreeSet<String>> = Default::default();
        for e in tap.of(ty) {
            by_build
                .entry(e.build_id())
                .or_default()
                .insert(e.id.clone());
        }
        assert!(
            by_build.values().all(|ids| ids.len() == 1),
            "{ty}: one event id per build across the handover ({first} then {second}): {by_build:?}"
        );
    }
    drop(other);
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_runtime_class_is_refused_by_admission_and_dead_lettered() {
    let real = real_or_skip!();
    let (rabbit, names, tap) = broker("real-rc").await;
    let executors = [RealExecutor::new(&unique("rt-gvisor")).runtime("gvisor")];
    let build = build_base() + 1;
    let worker = WorkerProcess::spawn(
        &config(&names, &real.worker, &executors, &Knobs::default()),
        &[],
    )
    .await;
    publish(&rabbit, &names, &StartMsg::new(build).json()).await;
    let dead = event_of(&tap, "build.dead_lettered", build).await;
    assert_eq!(
        dead.data["reason"], "runtime_class_not_found",
        "{:?}",
        dead.data
    );
    let log = worker.log_text();
    assert!(
        log.lines().any(|l| l.contains("\"level\":\"ERROR\"")
            && l.contains("executor misconfigured")
            && l.contains("\"cause\":\"runtime_class_missing\"")
            && l.contains("gvisor")),
        "no loud log line naming the RuntimeClass:\n{log}"
    );
    assert!(build_pods(&pods(&real).await, build).await.is_empty());
    drop(worker);
    rabbit.cleanup(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_the_api_server_refuses_is_dead_lettered_as_invalid() {
    let real = real_or_skip!();
    let (rabbit, names, tap) = broker("real-invalid").await;
    // Pod annotations over the API server's 256 KiB limit for all of them: a rule only the
    // server holds (metadata.annotations: Too long).
    let big = "x".repeat(300 * 1024);
    let executors = [RealExecutor::new(&unique("rt-invalid"))
        .kubernetes(json!({"annotations": {"example.com/big": big}}))];
    let build = build_base() + 1;
    let worker = WorkerProcess::spawn(
        &config(&names, &real.worker, &executors, &Knobs::default()),
        &[],
    )
    .await;
    publish(&rabbit, &names, &StartMsg::new(build).json()).await;
    let dead = event_of(&tap, "build.dead_lettered", build).await;
    assert_eq!(dead.data["reason"], "invalid_pod", "{:?}", dead.data);
    assert!(tap.of("build.launched").is_empty());
    drop(worker);
    rabbit.cleanup(&names).await;
}

/// Issue 20: with the real API server's own answers, a missing jobs namespace is said once at
/// ERROR (for every build it refuses), naming the executor, the cause and the fix. The worker's
/// Role lives in its own namespace, so RBAC answers first (403 for the Lease, then for the
/// pods): one ERROR, the rest at WARN, and the fix names both remedies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_namespace_is_said_once_with_its_fix() {
    let real = real_or_skip!();
    let (rabbit, names, tap) = broker("real-ns").await;
    let name = unique("no-ns");
    let executors =
        [RealExecutor::new(&name).kubernetes(json!({"jobsNamespace": "no-such-namespace-bcw"}))];
    let worker = WorkerProcess::spawn(
        &config(&names, &real.worker, &executors, &Knobs::default()),
        &[],
    )
    .await;
    let base = build_base();
    for i in 1..=3 {
        publish(&rabbit, &names, &StartMsg::new(base + i).json()).await;
    }
    for i in 1..=3 {
        event_of(&tap, "build.dead_lettered", base + i).await;
    }
    let log = worker.log_text();
    bcw_tests::harness::assert_one_error(
        &log,
        &[
            &format!("\"executor\":\"{name}\""),
            "\"cause\":\"forbidden\"",
            "in namespace no-such-namespace-bcw (if that namespace does not exist, create it",
        ],
    );
    drop(worker);
    rabbit.cleanup(&names).await;
}

/// Issue 20: a token the real API server refuses (401) is said once at ERROR at start-up,
/// before any build, and not again when builds meet it; `/readyz` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_said_once_at_start_up() {
    let real = real_or_skip!();
    let (rabbit, names, tap) = broker("real-token").await;
    let name = unique("bad-token");
    let executors = [RealExecutor::new(&name).kubernetes(json!({"token": "not-a-valid-token"}))];
    let worker = WorkerProcess::spawn(
        &config(&names, &real.worker, &executors, &Knobs::default()),
        &[],
    )
    .await;
    let body = bcw_tests::harness::eventually(SOON, "/readyz to say why", || async {
        let (_, body) = worker.get("/readyz").await?;
        body.contains("misconfigured").then_some(body)
    })
    .await;
    assert!(body.contains("401"), "{body}");
    let build = build_base() + 1;
    publish(&rabbit, &names, &StartMsg::new(build).json()).await;
    event_of(&tap, "build.dead_lettered", build).await;
    let log = worker.log_text();
    bcw_tests::harness::assert_one_error(&log, &["\"cause\":\"unauthorized\"", &name]);
    assert!(
        !log.contains("not-a-valid-token"),
        "the token reached the log"
    );
    drop(worker);
    rabbit.cleanup(&names).await;
}
