//! Fault injection as a kube client experiences it.

use std::time::Duration;

use bcw_tests::kube_sim::{Fault, Timeline, Verb};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use tokio::time::Instant;

use crate::support::{NS, api_error, build_pod, client, client_with_timeout, raw, start_one};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_faults_with_count_then_recovery() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    a.inject(
        Fault::status(500)
            .on_verbs([Verb::Create])
            .on_resources(["pods"])
            .count(2),
    );
    for _ in 0..2 {
        let s = api_error(
            pods.create(&PostParams::default(), &build_pod("c", "node:22"))
                .await,
        );
        assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
    }
    assert!(a.pods().is_empty(), "a failed create creates nothing");
    pods.list(&ListParams::default())
        .await
        .expect("other verbs are not affected");
    pods.create(&PostParams::default(), &build_pod("c", "node:22"))
        .await
        .expect("the third create goes through");
    let codes: Vec<Option<u16>> = a
        .request_log()
        .iter()
        .filter(|r| r.verb == "create")
        .map(|r| r.code)
        .collect();
    assert_eq!(codes, [Some(500), Some(500), Some(201)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_carries_retry_after() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    a.inject(Fault::status(429).retry_after(7).count(2));
    let (code, headers, body) = raw(
        &a,
        "GET",
        &format!("/api/v1/namespaces/{NS}/pods"),
        "application/json",
        "",
    )
    .await;
    assert_eq!(code, 429);
    assert_eq!(headers.get("retry-after").unwrap(), "7");
    assert_eq!(body["reason"], "TooManyRequests");
    assert_eq!(body["details"]["retryAfterSeconds"], 7);
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    let s = api_error(pods.list(&ListParams::default()).await);
    assert_eq!(
        s.code, 429,
        "kube's retry is off, so the client sees the 429"
    );
    assert_eq!(s.details.unwrap().retry_after_seconds, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_slows_requests_down() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    a.inject(
        Fault::latency(Duration::from_millis(300))
            .on_verbs([Verb::List])
            .count(1),
    );
    let started = Instant::now();
    pods.list(&ListParams::default()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    a.set_latency(Duration::from_millis(200));
    let started = Instant::now();
    pods.get_opt("x").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "cluster-wide latency applies to every request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_request_is_cut_by_the_client_timeout() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    a.inject(Fault::hang().on_verbs([Verb::Get]).count(1));
    let pods: Api<Pod> = Api::namespaced(client_with_timeout(&a, Duration::from_millis(300)), NS);
    let started = Instant::now();
    let err = pods
        .get("x")
        .await
        .expect_err("the request never gets an answer");
    assert!(
        !matches!(err, kube::Error::Api(_)),
        "a transport error, not a Status: {err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let hung = a
        .request_log()
        .into_iter()
        .find(|r| r.verb == "get")
        .unwrap();
    assert_eq!(hung.code, None, "the log shows it unanswered");
    assert!(
        pods.get_opt("x").await.unwrap().is_none(),
        "the next request is answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_listener_refuses_connections_until_started() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    pods.list(&ListParams::default()).await.unwrap();
    a.stop_listener().await;
    let err = pods
        .list(&ListParams::default())
        .await
        .expect_err("nobody listens");
    assert!(!matches!(err, kube::Error::Api(_)), "{err:?}");
    assert!(
        tokio::net::TcpStream::connect(a.url().trim_start_matches("http://"))
            .await
            .is_err(),
        "connections are refused"
    );
    a.start_listener().await;
    pods.list(&ListParams::default())
        .await
        .expect("served again on the same port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_commit_faults_create_the_pod_anyway() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    a.inject(
        Fault::status(504)
            .on_verbs([Verb::Create])
            .after_commit()
            .count(1),
    );
    let s = api_error(
        pods.create(&PostParams::default(), &build_pod("ambiguous", "node:22"))
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (504, "Timeout"));
    assert!(
        pods.get_opt("ambiguous").await.unwrap().is_some(),
        "the write happened"
    );
    assert_eq!(a.create_log().len(), 1);
    let again = api_error(
        pods.create(&PostParams::default(), &build_pod("ambiguous", "node:22"))
            .await,
    );
    assert!(again.is_already_exists());

    // A hang after commit: the pod exists although the client never heard back.
    a.inject(
        Fault::hang()
            .on_verbs([Verb::Create])
            .after_commit()
            .count(1),
    );
    let slow: Api<Pod> = Api::namespaced(client_with_timeout(&a, Duration::from_millis(300)), NS);
    slow.create(&PostParams::default(), &build_pod("hung", "node:22"))
        .await
        .expect_err("no answer");
    assert!(a.pod(NS, "hung").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_and_duration_are_deterministic() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    a.inject(
        Fault::status(503)
            .rate(0.5)
            .lasting(Duration::from_secs(60)),
    );
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        outcomes.push(pods.list(&ListParams::default()).await.is_ok());
    }
    assert_eq!(outcomes, [true, false, true, false, true, false]);
    a.clear_faults();
    assert!(pods.list(&ListParams::default()).await.is_ok());
}
