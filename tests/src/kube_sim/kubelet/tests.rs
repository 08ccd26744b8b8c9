//! Unit tests of the kubelet model.

use k8s_openapi::api::core::v1::{Container, ContainerState};

use super::containers::image_id;
use super::*;

fn spec(policy: &str, init: bool) -> PodSpec {
    let c = |n: &str, i: &str| Container {
        name: n.into(),
        image: Some(i.into()),
        ..Container::default()
    };
    PodSpec {
        containers: vec![c("build", "node:22")],
        init_containers: init.then(|| vec![c("launcher", "screwdrivercd/launcher:stable")]),
        restart_policy: Some(policy.into()),
        ..PodSpec::default()
    }
}

fn kubelet(script: Script, policy: &str, init: bool) -> Kubelet {
    let placement = Placement {
        node: "n1".into(),
        host_ip: "10.0.0.1".into(),
        pod_ip: "10.244.0.2".into(),
    };
    Kubelet::new(
        "p",
        "ns",
        "uid",
        &spec(policy, init),
        script,
        placement,
        Timestamp::now(),
    )
}

/// Runs the model until nothing more happens (or `max` steps), answering the steps taken.
fn run(k: &mut Kubelet, max: usize) -> Vec<Step> {
    let t = Timeline::fast();
    let mut steps = Vec::new();
    while let Some((_, s)) = k.next_step(&t) {
        if steps.len() == max {
            break;
        }
        k.apply(s, Timestamp::now());
        steps.push(s);
    }
    steps
}

fn build_state(k: &Kubelet) -> ContainerState {
    k.render().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
}

#[test]
fn normal_pod_walks_to_succeeded() {
    let mut k = kubelet(Script::Normal, "Never", true);
    assert_eq!(
        run(&mut k, 10),
        vec![Step::Schedule, Step::StartInit, Step::InitDone, Step::Exit]
    );
    let s = k.render();
    assert_eq!(s.phase.as_deref(), Some("Succeeded"));
    assert_eq!(
        build_state(&k).terminated.unwrap().reason.as_deref(),
        Some("Completed")
    );
    let ready = s
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason.as_deref(), Some("PodCompleted"));
}

#[test]
fn running_pod_is_ready_with_init_completed() {
    let mut k = kubelet(Script::RunForever, "Never", true);
    run(&mut k, 10);
    let s = k.render();
    assert_eq!(s.phase.as_deref(), Some("Running"));
    let conds = s.conditions.unwrap();
    assert!(conds.iter().all(|c| c.status == "True"), "{conds:?}");
    assert_eq!(
        s.init_container_statuses.unwrap()[0]
            .state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        0
    );
    assert!(s.start_time.is_some() && s.pod_ip.is_some() && s.host_ip.is_some());
}

#[test]
fn exit_scripts_fail_with_their_code_and_reason() {
    let mut k = kubelet(
        Script::Exit {
            code: 137,
            reason: "OOMKilled".into(),
        },
        "Never",
        true,
    );
    run(&mut k, 10);
    assert_eq!(k.render().phase.as_deref(), Some("Failed"));
    let t = build_state(&k).terminated.unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("OOMKilled")));
}

#[test]
fn image_pull_errors_alternate_and_stay_pending() {
    let mut k = kubelet(Script::ErrImagePull, "Never", true);
    run(&mut k, 5);
    let reasons: Vec<String> = (0..2)
        .map(|_| {
            let r = build_state(&k).waiting.unwrap().reason.unwrap();
            k.apply(Step::PullRetry, Timestamp::now());
            r
        })
        .collect();
    assert_eq!(reasons.len(), 2);
    assert_ne!(reasons[0], reasons[1]);
    assert!(
        reasons.contains(&"ImagePullBackOff".to_owned())
            && reasons.contains(&"ErrImagePull".to_owned())
    );
    assert_eq!(k.render().phase.as_deref(), Some("Pending"));
}

#[test]
fn blocking_scripts_wait_with_their_reason() {
    for (script, reason) in [
        (Script::InvalidImageName, "InvalidImageName"),
        (
            Script::CreateContainerConfigError { message: None },
            "CreateContainerConfigError",
        ),
        (
            Script::CreateContainerError {
                message: Some("boom".into()),
            },
            "CreateContainerError",
        ),
    ] {
        let mut k = kubelet(script, "Never", true);
        assert_eq!(run(&mut k, 10).last(), Some(&Step::InitDone));
        let w = build_state(&k).waiting.unwrap();
        assert_eq!(w.reason.as_deref(), Some(reason));
        assert!(w.message.is_some());
    }
}

#[test]
fn crash_loop_grows_the_restart_count() {
    let mut k = kubelet(Script::CrashLoopBackOff, "Never", false);
    run(&mut k, 9);
    let cs = &k.render().container_statuses.unwrap()[0];
    assert!(cs.restart_count >= 2, "{cs:?}");
    assert_eq!(
        cs.last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        1
    );
    assert_eq!(k.render().phase.as_deref(), Some("Running"));
}

#[test]
fn failing_init_container_fails_a_never_restart_pod() {
    let mut k = kubelet(Script::InitFails { code: 3 }, "Never", true);
    run(&mut k, 10);
    let s = k.render();
    assert_eq!(s.phase.as_deref(), Some("Failed"));
    assert_eq!(
        s.init_container_statuses.unwrap()[0]
            .state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        3
    );
    let init = s
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Initialized")
        .unwrap();
    assert_eq!(init.reason.as_deref(), Some("ContainersNotInitialized"));
}

#[test]
fn unschedulable_pods_stay_pending_without_start_time() {
    let mut k = kubelet(Script::Unschedulable { message: None }, "Never", true);
    assert_eq!(run(&mut k, 10), vec![Step::Unschedulable]);
    let s = k.render();
    let c = &s.conditions.unwrap()[0];
    assert_eq!(
        (c.type_.as_str(), c.status.as_str(), c.reason.as_deref()),
        ("PodScheduled", "False", Some("Unschedulable"))
    );
    assert!(s.start_time.is_none());
    assert!(!k.started());
}

#[test]
fn kill_marks_running_containers_and_the_pod_failed() {
    let mut k = kubelet(Script::RunForever, "Never", true);
    run(&mut k, 10);
    let mut s = k.render();
    kill(
        &mut s,
        Timestamp::now(),
        Some((
            "DeadlineExceeded",
            "Pod was active on the node longer than the specified deadline",
        )),
    );
    assert_eq!(s.phase.as_deref(), Some("Failed"));
    assert_eq!(s.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        s.container_statuses.unwrap()[0]
            .state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        137
    );
}

#[test]
fn images_are_normalized_like_containerd() {
    assert_eq!(normalize_image("node:22"), "docker.io/library/node:22");
    assert_eq!(
        normalize_image("screwdrivercd/launcher"),
        "docker.io/screwdrivercd/launcher:latest"
    );
    assert_eq!(normalize_image("quay.io/x/y:1"), "quay.io/x/y:1");
    assert!(image_id("node:22").starts_with("docker.io/library/node@sha256:"));
}
