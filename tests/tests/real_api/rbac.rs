//! RBAC as the real API server enforces it: the shipped Role is enough, and a Role missing a
//! verb the worker needs makes the worker say so clearly.

use std::path::{Path, PathBuf};

use bcw_tests::harness::{Knobs, Names, Rabbit, StartMsg, WorkerProcess};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

use crate::support::{Real, RealExecutor, SOON, build_base, client, config, real_or_skip, unique};

fn shipped(file: &str) -> Value {
    let path = format!("{}/../deploy/base/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_saphyr::from_str(&std::fs::read_to_string(&path).expect("deploy/base file"))
        .expect("YAML")
}

/// A namespace where the worker's ServiceAccount is bound to the shipped Role with `verb` on
/// `resource` taken out; returns the namespace and a kubeconfig with that account's token.
async fn namespace_without(
    real: &Real,
    resource: &str,
    verb: &str,
    dir: &Path,
) -> (String, PathBuf) {
    let admin = client(&real.admin).await;
    let ns = unique("rt-rbac");
    let pp = PostParams::default();
    Api::<Namespace>::all(admin.clone())
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .expect("namespace");
    let sa: ServiceAccount = serde_json::from_value(shipped("serviceaccount.yaml")).unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(&pp, &sa)
        .await
        .expect("sa");
    let mut role = shipped("role.yaml");
    for rule in role["rules"].as_array_mut().unwrap() {
        if rule["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == resource)
        {
            rule["verbs"].as_array_mut().unwrap().retain(|v| v != verb);
        }
    }
    let role: Role = serde_json::from_value(role).unwrap();
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&pp, &role)
        .await
        .expect("role");
    let mut binding = shipped("rolebinding.yaml");
    binding["subjects"][0]["namespace"] = json!(ns);
    let binding: RoleBinding = serde_json::from_value(binding).unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&pp, &binding)
        .await
        .expect("rolebinding");
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"expirationSeconds": 3600}})).unwrap();
    let token: TokenRequest = Api::<ServiceAccount>::namespaced(admin, &ns)
        .create_subresource("token", "buildcluster-worker", &pp, &request)
        .await
        .expect("token");
    let mut kubeconfig: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&real.worker).unwrap()).unwrap();
    kubeconfig["users"][0]["user"]["token"] = json!(token.status.unwrap().token);
    kubeconfig["contexts"][0]["context"]["namespace"] = json!(ns);
    let path = dir.join("kubeconfig.json");
    std::fs::write(&path, serde_json::to_vec(&kubeconfig).unwrap()).unwrap();
    (ns, path)
}

/// One build started by a worker whose identity has the shipped Role less `verb` on
/// `resource` (nothing less when `verb` is empty) in a namespace of its own.
struct Outcome {
    ns: String,
    events: Vec<bcw_tests::harness::Event>,
    log: String,
}

async fn start_one_build(real: &Real, resource: &str, verb: &str) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let (ns, kubeconfig) = namespace_without(real, resource, verb, dir.path()).await;
    let rabbit = Rabbit::connect().await;
    let names = Names::unique("real-rbac");
    rabbit.declare_exchanges(&names).await;
    let tap = rabbit.tap(&names).await;
    let executor = unique("rt-rbac");
    let mut doc = config(
        &names,
        &kubeconfig,
        &[RealExecutor::new(&executor)],
        &Knobs::default(),
    );
    doc["executor"][&executor]["options"]["kubernetes"]["jobsNamespace"] = json!(ns);

    // The worker refuses the build as a configuration error, once, loudly, without retrying.
    let worker = WorkerProcess::spawn(&doc, &[]).await;
    let build = build_base() + 1;
    rabbit
        .publish_json(&names.exchange, &names.queue, &StartMsg::new(build).json())
        .await;
    let events = tap
        .wait(SOON, "the build launched or dead-lettered", |evs| {
            evs.iter()
                .any(|e| e.ty == "build.dead_lettered" || e.ty == "build.launched")
        })
        .await;
    let log = worker.log_text();
    drop(worker);
    rabbit.cleanup(&names).await;
    Outcome { ns, events, log }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_role_launches_a_build() {
    let real = real_or_skip!();
    let out = start_one_build(&real, "", "").await;
    assert!(
        out.events.iter().any(|e| e.ty == "build.launched"),
        "{:?}\n{}",
        out.events.iter().map(|e| &e.data).collect::<Vec<_>>(),
        out.log
    );
    assert!(!out.log.contains("forbidden"), "{}", out.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_pod_create_is_reported_as_forbidden_naming_what_is_missing() {
    let real = real_or_skip!();
    let out = start_one_build(&real, "pods", "create").await;
    let (ns, log) = (out.ns, out.log);
    let dead = out
        .events
        .iter()
        .find(|e| e.ty == "build.dead_lettered")
        .expect("the build is dead-lettered");
    assert_eq!(
        dead.data["reason"], "executor_misconfigured",
        "{:?}",
        dead.data
    );
    // The API server's own sentence: who may not do what where.
    let message = dead.data["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cannot create resource \"pods\"") && message.contains(&ns),
        "{message}"
    );
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") && l.contains("forbidden"))
        .collect();
    assert!(
        loud.iter()
            .any(|l| l.contains("pods") && l.contains("create") && l.contains(&ns)),
        "no ERROR line naming the verb, resource and namespace:\n{log}"
    );
    assert!(out.events.iter().all(|e| e.ty != "build.launched"));
}
