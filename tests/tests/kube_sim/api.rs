//! Core API semantics: CRUD, error Status bodies, validation, selectors, pagination.

use std::collections::BTreeSet;

use bcw_tests::kube_sim::{Script, ScriptRule, Timeline};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use crate::support::{NS, api_error, build_pod, client, eventually, raw, start_one};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_list_delete_and_deletecollection() {
    let (_sim, a) = start_one(Timeline::fast().running_for(None)).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    let created = pods
        .create(&PostParams::default(), &build_pod("p1", "node:22"))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(
        meta.uid.is_some() && meta.creation_timestamp.is_some() && meta.resource_version.is_some()
    );
    assert_eq!(meta.namespace.as_deref(), Some(NS));
    // The launcher init container has no limits, so the pod is not Guaranteed (as in k8s).
    assert_eq!(
        created.status.as_ref().unwrap().qos_class.as_deref(),
        Some("Burstable")
    );
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(
        spec.dns_policy.as_deref(),
        Some("ClusterFirst"),
        "defaults are applied"
    );
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );

    let got = pods.get("p1").await.unwrap();
    assert_eq!(got.metadata.uid, meta.uid);
    pods.create(&PostParams::default(), &build_pod("p2", "node:22"))
        .await
        .unwrap();
    let names: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["p1", "p2"]);
    let all: Api<Pod> = Api::all(client(&a));
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );

    // Deleting with grace 0 removes at once and answers the pod.
    let deleted = pods
        .delete("p1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert_eq!(
        deleted
            .left()
            .expect("pods answer the deleted object")
            .metadata
            .uid,
        meta.uid
    );
    assert!(pods.get_opt("p1").await.unwrap().is_none());

    pods.create(&PostParams::default(), &build_pod("p3", "node:22"))
        .await
        .unwrap();
    let deleted = pods
        .delete_collection(
            &DeleteParams::default().grace_period(0),
            &ListParams::default().labels("app=screwdriver"),
        )
        .await
        .unwrap();
    let list = deleted
        .left()
        .expect("deletecollection answers the deleted items");
    let mut names: Vec<String> = list
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["p2", "p3"]);
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_read_like_the_api_server() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    pods.create(&PostParams::default(), &build_pod("dup", "node:22"))
        .await
        .unwrap();

    let exists = api_error(
        pods.create(&PostParams::default(), &build_pod("dup", "node:22"))
            .await,
    );
    assert!(exists.is_already_exists());
    assert_eq!(
        (exists.code, exists.message.as_str()),
        (409, "pods \"dup\" already exists")
    );

    let missing = api_error(pods.get("nope").await);
    assert!(missing.is_not_found());
    assert_eq!(missing.message, "pods \"nope\" not found");
    assert_eq!(missing.details.as_ref().unwrap().kind, "pods");
    assert!(api_error(pods.delete("nope", &DeleteParams::default()).await).is_not_found());

    let mut qemu = build_pod("vm", "node:22");
    qemu.spec.as_mut().unwrap().runtime_class_name = Some("kata-qemu".into());
    let forbidden = api_error(pods.create(&PostParams::default(), &qemu).await);
    assert!(forbidden.is_forbidden());
    assert_eq!(
        forbidden.message,
        "pods \"vm\" is forbidden: pod rejected: RuntimeClass \"kata-qemu\" not found"
    );
    let mut kata = build_pod("vm", "node:22");
    kata.spec.as_mut().unwrap().runtime_class_name = Some("kata".into());
    pods.create(&PostParams::default(), &kata)
        .await
        .expect("a known runtime class is admitted");

    // A body that is not a pod, and a quantity that does not parse, are 400s.
    let (code, _, body) = raw(
        &a,
        "POST",
        &format!("/api/v1/namespaces/{NS}/pods"),
        "application/json",
        "{",
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));
    let bad_quantity = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"q"},
        "spec":{"containers":[{"name":"c","image":"i","resources":{"limits":{"cpu":"2 cores"}}}]}});
    let (code, _, body) = raw(
        &a,
        "POST",
        &format!("/api/v1/namespaces/{NS}/pods"),
        "application/json",
        &bad_quantity.to_string(),
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("quantities must match the regular expression"),
        "{body}"
    );
    // An object with resourceVersion set cannot be created.
    let mut with_rv = build_pod("rv", "node:22");
    with_rv.metadata.resource_version = Some("5".into());
    assert_eq!(
        api_error(pods.create(&PostParams::default(), &with_rv).await).code,
        500
    );
    // Paths nobody serves.
    let (code, _, body) = raw(
        &a,
        "GET",
        "/api/v1/namespaces/builds/configmaps",
        "application/json",
        "",
    )
    .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (
            404,
            Some("the server could not find the requested resource")
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_pods_list_every_cause() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    let bad: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "Bad_Name", "labels": {"bad key": "ok"}},
        "spec": {
            "restartPolicy": "Sometimes",
            "activeDeadlineSeconds": 0,
            "initContainers": [{"name": "build", "image": "launcher"}],
            "containers": [{"name": "build", "image": "",
                            "env": [{"name": "A=B", "value": "x"}],
                            "volumeMounts": [{"name": "missing", "mountPath": "/m"}],
                            "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "2"}}}],
            "tolerations": [{"key": "k", "operator": "Maybe"}]
        }
    }))
    .unwrap();
    let s = api_error(pods.create(&PostParams::default(), &bad).await);
    assert!(s.is_invalid());
    assert_eq!(s.code, 422);
    assert!(
        s.message.starts_with("Pod \"Bad_Name\" is invalid: ["),
        "{}",
        s.message
    );
    let causes = &s.details.as_ref().unwrap().causes;
    let fields: BTreeSet<(&str, &str)> = causes
        .iter()
        .map(|c| (c.field.as_str(), c.reason.as_str()))
        .collect();
    for expected in [
        ("metadata.name", "FieldValueInvalid"),
        ("metadata.labels", "FieldValueInvalid"),
        ("spec.restartPolicy", "FieldValueNotSupported"),
        ("spec.activeDeadlineSeconds", "FieldValueInvalid"),
        ("spec.initContainers[0].name", "FieldValueDuplicate"),
        ("spec.containers[0].image", "FieldValueRequired"),
        ("spec.containers[0].env[0].name", "FieldValueInvalid"),
        (
            "spec.containers[0].volumeMounts[0].name",
            "FieldValueNotFound",
        ),
        ("spec.containers[0].resources.requests", "FieldValueInvalid"),
        ("spec.tolerations[0].operator", "FieldValueNotSupported"),
    ] {
        assert!(
            fields.contains(&expected),
            "missing cause {expected:?} in {fields:?}"
        );
    }
    let requests = causes
        .iter()
        .find(|c| c.field == "spec.containers[0].resources.requests")
        .unwrap();
    assert_eq!(
        requests.message,
        "Invalid value: \"2\": must be less than or equal to cpu limit of 1"
    );
    assert!(a.pods().is_empty(), "an invalid pod is not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_and_field_selectors() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    a.add_script(ScriptRule::new("pending", Script::Unschedulable { message: None }).unwrap());
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    for (name, tier, build) in [
        ("a1", "builds", "1"),
        ("a2", "builds", "2"),
        ("a3", "web", "3"),
    ] {
        let mut p = build_pod(name, "pending");
        let labels = p.metadata.labels.as_mut().unwrap();
        labels.insert("tier".into(), tier.into());
        labels.insert("sdbuild".into(), build.into());
        if name == "a3" {
            labels.insert("canary".into(), "true".into());
        }
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let names = |sel: &'static str| {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels(sel)).await.unwrap();
            list.items
                .into_iter()
                .map(|p| p.metadata.name.unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names("tier=builds").await, ["a1", "a2"]);
    assert_eq!(names("tier==builds,sdbuild=2").await, ["a2"]);
    assert_eq!(names("tier!=builds").await, ["a3"]);
    assert_eq!(names("sdbuild in (1,3)").await, ["a1", "a3"]);
    assert_eq!(names("sdbuild notin (1,3)").await, ["a2"]);
    assert_eq!(names("canary").await, ["a3"]);
    assert_eq!(names("!canary").await, ["a1", "a2"]);
    assert_eq!(names("app=screwdriver,tier in (web)").await, ["a3"]);
    assert!(names("tier=nothing").await.is_empty());

    let by_field = pods
        .list(&ListParams::default().fields("metadata.name=a2"))
        .await
        .unwrap();
    assert_eq!(by_field.items.len(), 1);
    let pending = pods
        .list(&ListParams::default().fields("status.phase=Pending,spec.nodeName="))
        .await
        .unwrap();
    assert_eq!(
        pending.items.len(),
        3,
        "unschedulable pods are Pending without a node"
    );
    let bad = api_error(
        pods.list(&ListParams::default().fields("spec.image=x"))
            .await,
    );
    assert_eq!(
        (bad.code, bad.message.as_str()),
        (400, "field label not supported: spec.image")
    );
    let bad = api_error(pods.list(&ListParams::default().labels("tier in (")).await);
    assert_eq!(bad.code, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_paginate_with_continue_tokens() {
    let (_sim, a) = start_one(Timeline::fast().running_for(None)).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    for i in 0..5 {
        pods.create(
            &PostParams::default(),
            &build_pod(&format!("p{i}"), "node:22"),
        )
        .await
        .unwrap();
    }
    let first = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let rv = first.metadata.resource_version.clone();
    let mut token = first.metadata.continue_.clone().expect("more pages");
    let mut names: Vec<String> = first
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    loop {
        let page = pods
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version, rv,
            "every page answers the first page's resourceVersion"
        );
        names.extend(page.items.iter().map(|p| p.metadata.name.clone().unwrap()));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(t) => token = t,
            None => break,
        }
    }
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);
    // After a compaction the token is too old.
    a.compact();
    let expired = api_error(
        pods.list(
            &ListParams::default()
                .limit(2)
                .continue_token(&first.metadata.continue_.unwrap()),
        )
        .await,
    );
    assert_eq!((expired.code, expired.reason.as_str()), (410, "Expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_deletion_of_a_running_pod() {
    let (_sim, a) = start_one(Timeline::fast().running_for(None)).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    pods.create(&PostParams::default(), &build_pod("run", "node:22"))
        .await
        .unwrap();
    eventually("the pod to run", || async {
        a.pod(NS, "run")
            .filter(|p| crate::support::phase(p) == "Running")
    })
    .await;
    let marked = pods
        .delete("run", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("a terminating pod is answered");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(30));
    assert!(
        pods.get_opt("run").await.unwrap().is_some(),
        "still there while terminating"
    );
    eventually("the pod to go", || async {
        a.pod(NS, "run").is_none().then_some(())
    })
    .await;

    // A pod that is not scheduled goes at once, whatever the grace period.
    a.add_script(ScriptRule::new("nowhere", Script::Unschedulable { message: None }).unwrap());
    pods.create(&PostParams::default(), &build_pod("pending", "nowhere"))
        .await
        .unwrap();
    pods.delete("pending", &DeleteParams::default().grace_period(60))
        .await
        .unwrap();
    assert!(a.pod(NS, "pending").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_file_connects() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    let kubeconfig = Kubeconfig::read_from(a.kubeconfig_path()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );
    let pods: Api<Pod> = Api::default_namespaced(client);
    pods.create(
        &PostParams::default(),
        &build_pod("via-kubeconfig", "node:22"),
    )
    .await
    .unwrap();
    assert_eq!(
        a.create_log()[0].namespace,
        "default",
        "the kubeconfig context sets the namespace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_records_rbac_verbs() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    pods.create(&PostParams::default(), &build_pod("v", "node:22"))
        .await
        .unwrap();
    pods.get("v").await.unwrap();
    pods.list(&ListParams::default()).await.unwrap();
    let _ = pods.get("missing").await;
    pods.delete("v", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    pods.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    let seen: Vec<(String, String, Option<u16>)> = a
        .request_log()
        .into_iter()
        .map(|r| (r.verb, r.resource, r.code))
        .collect();
    let expect = |v: &str, code: u16| ("".to_owned() + v, "pods".to_owned(), Some(code));
    assert_eq!(
        seen,
        [
            expect("create", 201),
            expect("get", 200),
            expect("list", 200),
            expect("get", 404),
            expect("delete", 200),
            expect("deletecollection", 200)
        ]
    );
}
