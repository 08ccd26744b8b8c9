//! Leases (optimistic concurrency), Secrets (stringData, garbage collection), managedFields.

use bcw_tests::kube_sim::Timeline;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Resource;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use crate::support::{NS, api_error, build_pod, client, eventually, phase, start_one};

fn lease(name: &str, holder: &str) -> Lease {
    serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_update_with_optimistic_concurrency() {
    let (_sim, a) = start_one(Timeline::fast()).await;
    let leases: Api<Lease> = Api::namespaced(client(&a), NS);
    let created = leases
        .create(&PostParams::default(), &lease("leader", "w1"))
        .await
        .unwrap();
    let mut mine = leases.get("leader").await.unwrap();
    assert_eq!(
        mine.metadata.resource_version,
        created.metadata.resource_version
    );

    mine.spec.as_mut().unwrap().holder_identity = Some("w2".into());
    let updated = leases
        .replace("leader", &PostParams::default(), &mine)
        .await
        .unwrap();
    assert_ne!(
        updated.metadata.resource_version,
        mine.metadata.resource_version
    );
    assert_eq!(updated.spec.unwrap().holder_identity.as_deref(), Some("w2"));

    // A writer with the old resourceVersion loses.
    let stale = api_error(
        leases
            .replace("leader", &PostParams::default(), &mine)
            .await,
    );
    assert!(stale.is_conflict());
    assert_eq!(stale.reason, "Conflict");
    assert_eq!(
        stale.message,
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"leader\": the object has been modified; please apply your changes to the latest version and try again"
    );
    // Leases do not allow unconditional updates.
    let mut blind = lease("leader", "w3");
    blind.metadata.resource_version = None;
    let invalid = api_error(
        leases
            .replace("leader", &PostParams::default(), &blind)
            .await,
    );
    assert_eq!(invalid.code, 422);
    assert!(
        invalid.message.ends_with(
            "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
        ),
        "{}",
        invalid.message
    );
    // ... but PUT may create one.
    let fresh = leases
        .replace("other", &PostParams::default(), &lease("other", "w1"))
        .await
        .unwrap();
    assert!(fresh.metadata.uid.is_some());
    let gone = leases
        .delete("other", &DeleteParams::default())
        .await
        .unwrap();
    assert!(gone.right().expect("leases answer a Status").is_success());
    let bad = api_error(
        leases
            .create(&PostParams::default(), &{
                let mut l = lease("bad", "w1");
                l.spec.as_mut().unwrap().lease_duration_seconds = Some(0);
                l
            })
            .await,
    );
    assert_eq!(
        bad.details.unwrap().causes[0].field,
        "spec.leaseDurationSeconds"
    );
}

fn owned_secret(name: &str, owner: &Pod) -> Secret {
    let owner_ref = owner.controller_owner_ref(&()).unwrap();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "ownerReferences": [owner_ref]},
        "stringData": {"token": "s3cret"}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_follow_their_pod() {
    let (_sim, a) = start_one(Timeline::fast().running_for(None)).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    let secrets: Api<Secret> = Api::namespaced(client(&a), NS);
    let pod = pods
        .create(&PostParams::default(), &build_pod("owner", "node:22"))
        .await
        .unwrap();
    let secret = secrets
        .create(&PostParams::default(), &owned_secret("owner-token", &pod))
        .await
        .unwrap();
    assert!(secret.string_data.is_none(), "stringData is write-only");
    assert_eq!(secret.data.unwrap()["token"].0, b"s3cret");
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));

    pods.delete("owner", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually("the secret to be collected", || async {
        a.secrets().is_empty().then_some(())
    })
    .await;

    // Orphaning keeps the dependent, without the reference.
    let pod = pods
        .create(&PostParams::default(), &build_pod("owner2", "node:22"))
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &owned_secret("kept", &pod))
        .await
        .unwrap();
    pods.delete("owner2", &DeleteParams::orphan().grace_period(0))
        .await
        .unwrap();
    let kept = secrets.get("kept").await.expect("orphaned, not deleted");
    assert!(kept.metadata.owner_references.is_none());

    // A Secret whose owner is already gone is collected right away.
    secrets
        .create(&PostParams::default(), &owned_secret("dangling", &pod))
        .await
        .unwrap();
    assert!(secrets.get_opt("dangling").await.unwrap().is_none());
    let deleted = secrets
        .delete("kept", &DeleteParams::default())
        .await
        .unwrap()
        .right()
        .expect("a Status");
    assert_eq!(deleted.details.unwrap().name, "kept");
}

/// As the API server's field manager keeps them: the creator's entry (everything it set, the
/// scheduler's binding not among it), then the kubelet's status writes (conditions by type,
/// the scheduler's `PodScheduled` not among them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_pod_carries_the_managed_fields_of_its_creator_and_its_kubelet() {
    let (_sim, a) = start_one(Timeline::fast().running_for(None)).await;
    let pods: Api<Pod> = Api::namespaced(client(&a), NS);
    let pp = PostParams {
        field_manager: Some("buildcluster-worker".into()),
        ..Default::default()
    };
    let created = pods.create(&pp, &build_pod("mf", "node:22")).await.unwrap();
    let entries = created.metadata.managed_fields.clone().unwrap_or_default();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].manager.as_deref(), Some("buildcluster-worker"));
    assert_eq!(entries[0].operation.as_deref(), Some("Update"));
    let running = eventually("the pod to run", || async {
        a.pod(NS, "mf").filter(|p| phase(p) == "Running")
    })
    .await;
    let entries = running.metadata.managed_fields.unwrap_or_default();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let fields = |i: usize| serde_json::to_value(&entries[i].fields_v1).unwrap();
    let creator = fields(0);
    assert!(
        creator.pointer("/f:spec/f:containers").is_some(),
        "{creator}"
    );
    assert!(creator.pointer("/f:spec/f:nodeName").is_none(), "{creator}");
    assert!(creator.get("f:status").is_none(), "{creator}");
    assert_eq!(entries[1].manager.as_deref(), Some("kubelet"));
    assert_eq!(entries[1].subresource.as_deref(), Some("status"));
    let status = fields(1);
    assert_eq!(status.pointer("/f:status/f:phase"), Some(&json!({})));
    assert_eq!(
        status.pointer("/f:status/f:containerStatuses"),
        Some(&json!({}))
    );
    let conditions = status.pointer("/f:status/f:conditions").unwrap();
    assert!(
        conditions.get(r#"k:{"type":"Ready"}"#).is_some(),
        "{status}"
    );
    assert!(
        conditions.get(r#"k:{"type":"PodScheduled"}"#).is_none(),
        "{status}"
    );
    assert!(status.get("f:spec").is_none(), "{status}");
}
