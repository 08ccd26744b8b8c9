//! Failure scripts and deadlines: the statuses a kubelet would write.

use std::collections::BTreeSet;

use bcw_tests::kube_sim::{ClusterHandle, Script, ScriptRule, Timeline};
use k8s_openapi::api::core::v1::{ContainerState, Pod};
use kube::api::{Api, PostParams};

use crate::support::{NS, build_pod, build_status, client, eventually, phase, start_one};

fn script(a: &ClusterHandle, image: &str, s: Script) {
    a.add_script(ScriptRule::new(&format!("^{image}"), s).unwrap());
}

async fn create(a: &ClusterHandle, name: &str, image: &str) {
    let pods: Api<Pod> = Api::namespaced(client(a), NS);
    pods.create(&PostParams::default(), &build_pod(name, image))
        .await
        .unwrap();
}

/// Waits until the pod's build container state passes `f`.
async fn build_state_where(
    a: &ClusterHandle,
    name: &str,
    f: impl Fn(&Pod, &ContainerState) -> bool,
) -> Pod {
    eventually(&format!("pod {name}"), || async {
        let p = a.pod(NS, name)?;
        let state = build_status(&p)?.state.clone()?;
        f(&p, &state).then_some(p)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_succeed_or_fail_with_their_code() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    script(
        &a,
        "fails",
        Script::Exit {
            code: 1,
            reason: "Error".into(),
        },
    );
    script(
        &a,
        "oom",
        Script::Exit {
            code: 137,
            reason: "OOMKilled".into(),
        },
    );
    create(&a, "ok", "node:22").await;
    create(&a, "fails", "fails:1").await;
    create(&a, "oom", "oom:1").await;
    for (name, want_phase, code, reason) in [
        ("ok", "Succeeded", 0, "Completed"),
        ("fails", "Failed", 1, "Error"),
        ("oom", "Failed", 137, "OOMKilled"),
    ] {
        let p = build_state_where(&a, name, |p, s| {
            s.terminated.is_some() && phase(p) != "Running"
        })
        .await;
        assert_eq!(phase(&p), want_phase, "{name}");
        let t = build_status(&p)
            .unwrap()
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(
            (t.exit_code, t.reason.as_deref()),
            (code, Some(reason)),
            "{name}"
        );
        assert!(t.started_at.is_some() && t.finished_at.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_and_config_errors_keep_the_pod_pending() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    script(&a, "INVALID", Script::InvalidImageName);
    script(
        &a,
        "config",
        Script::CreateContainerConfigError { message: None },
    );
    script(
        &a,
        "runtime",
        Script::CreateContainerError {
            message: Some("boom".into()),
        },
    );
    for (name, image) in [
        ("invalid", "INVALID"),
        ("config", "config:1"),
        ("runtime", "runtime:1"),
    ] {
        create(&a, name, image).await;
    }
    for (name, reason) in [
        ("invalid", "InvalidImageName"),
        ("config", "CreateContainerConfigError"),
        ("runtime", "CreateContainerError"),
    ] {
        let p = build_state_where(&a, name, |_, s| {
            s.waiting
                .as_ref()
                .is_some_and(|w| w.reason.as_deref() == Some(reason))
        })
        .await;
        assert_eq!(phase(&p), "Pending");
        let w = build_status(&p)
            .unwrap()
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert!(!w.message.unwrap_or_default().is_empty());
        let init = &p
            .status
            .as_ref()
            .unwrap()
            .init_container_statuses
            .as_ref()
            .unwrap()[0];
        assert!(
            init.state.as_ref().unwrap().terminated.is_some(),
            "the launcher ran first"
        );
    }
    let runtime = a.pod(NS, "runtime").unwrap();
    assert_eq!(
        build_status(&runtime)
            .unwrap()
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap()
            .message
            .as_deref(),
        Some("boom")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_errors_alternate_with_back_off() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    script(&a, "nosuch", Script::ErrImagePull);
    create(&a, "pull", "nosuch/image:1").await;
    let mut seen = BTreeSet::new();
    eventually("both pull reasons", || {
        let p = a.pod(NS, "pull");
        if let Some(w) = p
            .as_ref()
            .and_then(build_status)
            .and_then(|c| c.state.clone())
            .and_then(|s| s.waiting)
        {
            if w.reason.as_deref() == Some("ErrImagePull") {
                assert!(
                    w.message
                        .clone()
                        .unwrap()
                        .contains("failed to pull and unpack image \"docker.io/nosuch/image:1\"")
                );
            }
            seen.insert(w.reason.unwrap_or_default());
        }
        let done = seen.contains("ErrImagePull") && seen.contains("ImagePullBackOff");
        async move { done.then_some(()) }
    })
    .await;
    assert_eq!(phase(&a.pod(NS, "pull").unwrap()), "Pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loops_restart_and_init_failures_fail() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    script(&a, "crash", Script::CrashLoopBackOff);
    script(&a, "badinit", Script::InitFails { code: 2 });
    create(&a, "crash", "crash:1").await;
    create(&a, "badinit", "badinit:1").await;
    let p = build_state_where(&a, "crash", |p, s| {
        build_status(p).is_some_and(|c| c.restart_count >= 2)
            && s.waiting
                .as_ref()
                .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
    })
    .await;
    let last = build_status(&p)
        .unwrap()
        .last_state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(last.exit_code, 1);

    let failed = eventually("init failure", || async {
        a.pod(NS, "badinit").filter(|p| phase(p) == "Failed")
    })
    .await;
    let init = &failed
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        2
    );
    let build = build_status(&failed).unwrap().state.clone().unwrap();
    assert_eq!(
        build.waiting.unwrap().reason.as_deref(),
        Some("PodInitializing"),
        "the build container never started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pods_and_pods_that_run_forever() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    script(&a, "huge", Script::Unschedulable { message: None });
    script(&a, "daemon", Script::RunForever);
    create(&a, "huge", "huge:1").await;
    create(&a, "daemon", "daemon:1").await;
    create(&a, "normal", "node:22").await;
    eventually("the normal pod to finish", || async {
        a.pod(NS, "normal").filter(|p| phase(p) == "Succeeded")
    })
    .await;
    assert_eq!(
        phase(&a.pod(NS, "daemon").unwrap()),
        "Running",
        "it outlives run_for"
    );
    let huge = a.pod(NS, "huge").unwrap();
    assert_eq!(phase(&huge), "Pending");
    assert!(huge.spec.unwrap().node_name.is_none());
    let cond = &huge.status.unwrap().conditions.unwrap()[0];
    assert_eq!(
        (
            cond.type_.as_str(),
            cond.status.as_str(),
            cond.reason.as_deref()
        ),
        ("PodScheduled", "False", Some("Unschedulable"))
    );
    assert_eq!(
        cond.message.as_deref(),
        Some(
            "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_deadline_fails_running_pods_only() {
    let timeline = Timeline {
        deadline_scale: 0.1,
        ..Timeline::fast().running_for(None)
    };
    let (_sim, a) = start_one(timeline).await;
    script(&a, "huge", Script::Unschedulable { message: None });
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    for (name, image) in [("slow", "node:22"), ("never", "huge:1")] {
        let mut p = build_pod(name, image);
        p.spec.as_mut().unwrap().active_deadline_seconds = Some(1);
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let p = eventually("the deadline", || async {
        a.pod(NS, "slow").filter(|p| phase(p) == "Failed")
    })
    .await;
    let status = p.status.unwrap();
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        status.message.as_deref(),
        Some("Pod was active on the node longer than the specified deadline")
    );
    let t = status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(t.exit_code, 137);
    // The kubelet enforces the deadline, so a pod that never got a node never times out.
    assert_eq!(phase(&a.pod(NS, "never").unwrap()), "Pending");
}
