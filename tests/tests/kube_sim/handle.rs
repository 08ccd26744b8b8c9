//! What tests do through the ClusterHandle: node loss, reset, namespaces, preconditions.

use bcw_tests::kube_sim::{ClusterConfig, Fault, Timeline, Verb};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{
    Api, DeleteParams, ListParams, PostParams, Preconditions, WatchEvent, WatchParams,
};
use serde_json::json;

use crate::support::{NS, api_error, build_pod, client, eventually, start, start_one};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_loss_deletes_the_pod_at_once() {
    let (_sim, a) = start_one(Timeline::fast().running_for(None)).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    let created = pods
        .create(&PostParams::default(), &build_pod("lost", "node:22"))
        .await
        .unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    let mut w = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    eventually("the pod to run", || async {
        a.pod(NS, "lost")
            .filter(|p| crate::support::phase(p) == "Running")
    })
    .await;
    assert!(a.delete_pod_now(NS, "lost"));
    assert!(!a.delete_pod_now(NS, "lost"), "already gone");
    loop {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let WatchEvent::Deleted(p) = ev {
            assert_eq!(p.metadata.name.as_deref(), Some("lost"));
            assert!(
                p.metadata.deletion_timestamp.is_none(),
                "no graceful deletion happened"
            );
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_returns_to_the_configured_state() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    pods.create(&PostParams::default(), &build_pod("old", "node:22"))
        .await
        .unwrap();
    a.inject(Fault::status(500).on_verbs([Verb::List]));
    a.set_timeline(Timeline::fast().running_for(None));
    a.stop_listener().await;
    a.reset().await;
    assert!(a.pods().is_empty() && a.create_log().is_empty() && a.request_log().is_empty());
    assert_eq!(a.timeline(), Timeline::fast());
    // A new client: the old one's pooled connection was cut with the listener.
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "listening, without faults"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_must_exist_when_configured() {
    let sim = start(vec![ClusterConfig {
        namespaces: Some(vec![NS.into()]),
        ..ClusterConfig::new("a")
    }])
    .await;
    let a = sim.cluster("a");
    let elsewhere: Api<Pod> = Api::namespaced(client(&a), "nowhere");
    let s = api_error(
        elsewhere
            .create(&PostParams::default(), &build_pod("p", "node:22"))
            .await,
    );
    assert!(s.is_not_found());
    assert_eq!(s.message, "namespaces \"nowhere\" not found");
    let here: Api<Pod> = Api::namespaced(client(&a), NS);
    here.create(&PostParams::default(), &build_pod("p", "node:22"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_preconditions_and_pod_updates() {
    let (_sim, a) = start_one(Timeline::fast().running_for(None)).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    let p = pods
        .create(&PostParams::default(), &build_pod("pre", "node:22"))
        .await
        .unwrap();
    assert_eq!(p.metadata.generation, Some(1));
    let wrong = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("other".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let s = api_error(pods.delete("pre", &wrong).await);
    assert!(s.is_conflict());
    assert!(
        s.message
            .contains("Precondition failed: UID in precondition: other"),
        "{}",
        s.message
    );

    // Labels may change; the spec may not (beyond images and the deadline). Once Running the
    // kubelet leaves the pod alone, so these updates do not race its status writes.
    eventually("the pod to run", || async {
        a.pod(NS, "pre")
            .filter(|p| crate::support::phase(p) == "Running")
    })
    .await;
    let mut current = pods.get("pre").await.unwrap();
    current
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("extra".into(), "yes".into());
    let relabelled = pods
        .replace("pre", &PostParams::default(), &current)
        .await
        .unwrap();
    assert_eq!(relabelled.metadata.labels.unwrap()["extra"], "yes");
    let mut changed = pods.get("pre").await.unwrap();
    changed.spec.as_mut().unwrap().restart_policy = Some("Always".into());
    let s = api_error(pods.replace("pre", &PostParams::default(), &changed).await);
    assert!(s.is_invalid());
    assert_eq!(s.details.unwrap().causes[0].field, "spec");

    let right = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: p.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    pods.delete("pre", &right).await.unwrap();
    assert!(a.pod(NS, "pre").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_validation_and_immutability() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    let secrets: Api<Secret> = Api::namespaced(client(&a), NS);
    let bad: Secret = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "bad"}, "type": "kubernetes.io/dockerconfigjson", "stringData": {"bad key": "x"}}))
    .unwrap();
    let s = api_error(secrets.create(&PostParams::default(), &bad).await);
    let fields: Vec<String> = s
        .details
        .unwrap()
        .causes
        .into_iter()
        .map(|c| c.field)
        .collect();
    assert_eq!(fields, ["data[bad key]", "data[.dockerconfigjson]"]);
    let frozen: Secret = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "frozen"}, "immutable": true, "data": {"k": "dg=="}}))
    .unwrap();
    let mut stored = secrets
        .create(&PostParams::default(), &frozen)
        .await
        .unwrap();
    stored
        .data
        .as_mut()
        .unwrap()
        .insert("k".into(), k8s_openapi::ByteString(b"w".to_vec()));
    let s = api_error(
        secrets
            .replace("frozen", &PostParams::default(), &stored)
            .await,
    );
    assert_eq!(s.details.unwrap().causes[0].field, "data");
    assert_eq!(a.secrets().len(), 1);
}
