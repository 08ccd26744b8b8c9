//! Watches as kube-runtime's watcher and raw `Api::watch` see them.

use std::time::Duration;

use bcw_tests::kube_sim::{ClusterConfig, Timeline};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::support::{NS, build_pod, client, phase, start, start_one};

/// The next item of a stream, failing the test after 10 s.
async fn next<S: Stream + Unpin>(s: &mut S) -> S::Item {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("no event within 10 s")
        .expect("stream ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_a_pod_walk_through_its_phases() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    let mut events = watcher(
        pods.clone(),
        watcher::Config::default().labels("sdbuild=walk"),
    )
    .default_backoff()
    .boxed();
    assert!(matches!(
        next(&mut events).await.unwrap(),
        watcher::Event::Init
    ));
    assert!(matches!(
        next(&mut events).await.unwrap(),
        watcher::Event::InitDone
    ));
    pods.create(&PostParams::default(), &build_pod("walk", "node:22"))
        .await
        .unwrap();
    let mut phases: Vec<String> = Vec::new();
    let mut saw_running_container = false;
    let mut saw_node = false;
    loop {
        let watcher::Event::Apply(p) = next(&mut events).await.unwrap() else {
            continue;
        };
        saw_node |= p.spec.as_ref().unwrap().node_name.is_some();
        if phase(&p) == "Running" {
            let cs = &p
                .status
                .as_ref()
                .unwrap()
                .container_statuses
                .as_ref()
                .unwrap()[0];
            saw_running_container |= cs.state.as_ref().unwrap().running.is_some() && cs.ready;
        }
        if phases.last().map(String::as_str) != Some(phase(&p)) {
            phases.push(phase(&p).to_owned());
        }
        if phase(&p) == "Succeeded" {
            let init = &p
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
                    .reason
                    .as_deref(),
                Some("Completed")
            );
            break;
        }
    }
    assert_eq!(phases, ["Pending", "Running", "Succeeded"]);
    assert!(saw_node && saw_running_container);
    pods.delete("walk", &DeleteParams::default()).await.unwrap();
    loop {
        if let watcher::Event::Delete(p) = next(&mut events).await.unwrap() {
            assert_eq!(p.metadata.name.as_deref(), Some("walk"));
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_410_makes_the_watcher_relist() {
    let (_sim, a) = start_one(Timeline::fast().running_for(None)).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    pods.create(&PostParams::default(), &build_pod("before", "node:22"))
        .await
        .unwrap();
    let mut events = watcher(pods.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut inits = 0;
    loop {
        match next(&mut events).await.unwrap() {
            watcher::Event::Init => inits += 1,
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    // The watcher opens its watch (from the list's resourceVersion) on the next poll: by
    // then the history is gone and the new pod exists.
    a.compact();
    pods.create(&PostParams::default(), &build_pod("after", "node:22"))
        .await
        .unwrap();
    let mut relisted_after = false;
    let mut expired = false;
    loop {
        match next(&mut events).await {
            Ok(watcher::Event::Init) => inits += 1,
            Ok(watcher::Event::InitApply(p)) if p.metadata.name.as_deref() == Some("after") => {
                relisted_after = true
            }
            Ok(watcher::Event::InitDone) if inits == 2 => break,
            Ok(_) => {}
            Err(watcher::Error::WatchError(s)) if s.code == 410 => expired = true,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(expired, "the watch answered 410 Expired");
    assert!(relisted_after, "the new pod arrives through the relist");
    let lists = a
        .request_log()
        .iter()
        .filter(|r| r.verb == "list" && r.resource == "pods")
        .count();
    assert_eq!(lists, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_old_resource_version_is_an_expired_error_event() {
    let slow = Timeline {
        schedule_after: Duration::from_millis(300),
        start_after: Duration::from_secs(5),
        ..Timeline::fast()
    };
    let sim = start(vec![ClusterConfig {
        history_limit: 2,
        ..ClusterConfig::new("a").with_timeline(slow)
    }])
    .await;
    let a = sim.cluster("a");
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    let first = pods
        .create(&PostParams::default(), &build_pod("h0", "node:22"))
        .await
        .unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    // Resuming right after the create replays what happened since.
    let mut resumed = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    assert!(
        matches!(next(&mut resumed).await.unwrap(), WatchEvent::Modified(_)),
        "the scheduler's update follows"
    );
    // Enough writes push the create out of the history.
    for i in 1..4 {
        pods.create(
            &PostParams::default(),
            &build_pod(&format!("h{i}"), "node:22"),
        )
        .await
        .unwrap();
    }
    let mut old = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match next(&mut old).await.unwrap() {
        WatchEvent::Error(s) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
            assert!(
                s.message
                    .starts_with(&format!("too old resource version: {rv} (")),
                "{}",
                s.message
            );
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_lists_end_with_the_initial_events_bookmark() {
    let (_sim, a) = start_one(Timeline::fast().running_for(None)).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    pods.create(&PostParams::default(), &build_pod("s1", "node:22"))
        .await
        .unwrap();
    let mut events = watcher(pods.clone(), watcher::Config::default().streaming_lists())
        .default_backoff()
        .boxed();
    assert!(matches!(
        next(&mut events).await.unwrap(),
        watcher::Event::Init
    ));
    let watcher::Event::InitApply(p) = next(&mut events).await.unwrap() else {
        panic!("the existing pod comes first")
    };
    assert_eq!(p.metadata.name.as_deref(), Some("s1"));
    assert!(matches!(
        next(&mut events).await.unwrap(),
        watcher::Event::InitDone
    ));
    assert!(
        a.request_log().iter().all(|r| r.verb != "list"),
        "a streaming list needs no list request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_and_objects_leaving_the_selector() {
    let sim = start(vec![ClusterConfig {
        bookmark_interval: Duration::from_millis(50),
        ..ClusterConfig::new("a").with_timeline(Timeline::fast().running_for(None))
    }])
    .await;
    let a = sim.cluster("a");
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    pods.create(&PostParams::default(), &build_pod("b1", "node:22"))
        .await
        .unwrap();
    let mut w = pods
        .watch(&WatchParams::default().labels("tier=builds"), "0")
        .await
        .unwrap()
        .boxed();
    assert!(
        matches!(next(&mut w).await.unwrap(), WatchEvent::Added(_)),
        "synthetic ADDED for what exists"
    );
    loop {
        if let WatchEvent::Bookmark(b) = next(&mut w).await.unwrap() {
            assert!(!b.metadata.resource_version.is_empty());
            break;
        }
    }
    // Relabelling the pod out of the selector is a DELETED for this watch.
    pods.patch(
        "b1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tier": "gone"}}})),
    )
    .await
    .unwrap();
    loop {
        if let WatchEvent::Deleted(p) = next(&mut w).await.unwrap() {
            assert_eq!(
                p.metadata.labels.unwrap()["tier"],
                "builds",
                "the last state the watch could see"
            );
            break;
        }
    }
}
