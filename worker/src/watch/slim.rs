//! What the reporter keeps of a pod, and reads from it.
//!
//! A tracked pod lives as long as its pod (until its TTL), so with thousands of builds the parts
//! the reporter never reads (env, volumes, the launcher's init container, most of the status)
//! would dominate the worker's memory: the watch deserialises only what it reads, and the rest
//! of the pod is dropped at once.

use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::naming;

/// A pod as the reporter's watch reads it: only the parts [`slim_spec`] keeps of the spec are
/// deserialised (the rest, env, volumes, init containers, is skipped without being built), and
/// converted at once into the [`Pod`] the reporter handles. Deserialising whole pods was about
/// 8 % of the worker's CPU in a burst (load-tests/README.md).
#[derive(Clone, Debug, serde::Deserialize)]
pub(super) struct WatchedPod {
    #[serde(deserialize_with = "watched_meta")]
    pub(super) metadata: kube::api::ObjectMeta,
    #[serde(default)]
    spec: Option<WatchedSpec>,
    #[serde(default)]
    status: Option<WatchedStatus>,
}

/// The status fields the reporter reads; the rest (addresses, QoS class, the conditions'
/// times, the containers' images, ids and resources) is skipped without being built.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchedStatus {
    phase: Option<String>,
    reason: Option<String>,
    message: Option<String>,
    conditions: Option<Vec<WatchedCondition>>,
    container_statuses: Option<Vec<WatchedContainerStatus>>,
    init_container_statuses: Option<Vec<WatchedContainerStatus>>,
}

#[derive(Clone, Debug, serde::Deserialize)]
struct WatchedCondition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
    reason: Option<String>,
    message: Option<String>,
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchedContainerStatus {
    name: String,
    state: Option<ContainerState>,
    last_state: Option<ContainerState>,
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    restart_count: i32,
    started: Option<bool>,
}

impl WatchedStatus {
    fn into_status(self) -> PodStatus {
        let containers = |list: Option<Vec<WatchedContainerStatus>>| {
            list.map(|l| {
                l.into_iter()
                    .map(|c| ContainerStatus {
                        name: c.name,
                        state: c.state,
                        last_state: c.last_state,
                        ready: c.ready,
                        restart_count: c.restart_count,
                        started: c.started,
                        ..Default::default()
                    })
                    .collect()
            })
        };
        PodStatus {
            phase: self.phase,
            reason: self.reason,
            message: self.message,
            conditions: self.conditions.map(|cs| {
                cs.into_iter()
                    .map(|c| PodCondition {
                        type_: c.type_,
                        status: c.status,
                        reason: c.reason,
                        message: c.message,
                        ..Default::default()
                    })
                    .collect()
            }),
            container_statuses: containers(self.container_statuses),
            init_container_statuses: containers(self.init_container_statuses),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchedSpec {
    #[serde(default)]
    containers: Vec<WatchedContainer>,
    #[serde(default)]
    node_name: Option<String>,
}

#[derive(Clone, Debug, serde::Deserialize)]
struct WatchedContainer {
    name: String,
    #[serde(default)]
    image: Option<String>,
}

/// The metadata the reporter and the watcher read. The API server adds `managedFields` to
/// every pod (one entry per writer: the worker, the scheduler, the kubelet), often larger than
/// the rest of the metadata; they are skipped, not built, as are owner references and the rest.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchedMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<std::collections::BTreeMap<String, String>>,
    annotations: Option<std::collections::BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
}

fn watched_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<kube::api::ObjectMeta, D::Error> {
    let m = <WatchedMeta as serde::Deserialize>::deserialize(d)?;
    Ok(kube::api::ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        labels: m.labels,
        annotations: m.annotations,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        ..Default::default()
    })
}

crate::slim_pod_resource!(WatchedPod);

impl WatchedPod {
    /// The pod the reporter keeps: its spec slimmed here, the rest by [`slim_with_spec`].
    pub(super) fn into_pod(self) -> Pod {
        let WatchedPod {
            metadata,
            spec,
            status,
        } = self;
        let spec = spec.map(|s| {
            slim_spec(
                s.containers.into_iter().map(|c| (c.name, c.image)),
                s.node_name,
            )
        });
        slim_with_spec(metadata, spec, status.map(WatchedStatus::into_status))
    }
}

/// The spec the reporter keeps: the first (build) container's name and image, and the node.
fn slim_spec(
    containers: impl Iterator<Item = (String, Option<String>)>,
    node_name: Option<String>,
) -> k8s_openapi::api::core::v1::PodSpec {
    k8s_openapi::api::core::v1::PodSpec {
        containers: containers
            .take(1)
            .map(|(name, image)| k8s_openapi::api::core::v1::Container {
                name,
                image,
                ..Default::default()
            })
            .collect(),
        node_name,
        ..Default::default()
    }
}

/// What the reporter keeps of a whole pod: the pod as its watch decodes and slims it.
#[cfg(test)]
fn slim(pod: Pod) -> Pod {
    let body = serde_json::to_vec(&pod).expect("a pod serialises");
    let watched: WatchedPod = serde_json::from_slice(&body).expect("the watch decodes a pod");
    watched.into_pod()
}

/// The kept pod around a spec and a status already slimmed ([`slim_spec`],
/// [`WatchedStatus::into_status`]): the worker's annotations and the metadata the reporter reads.
fn slim_with_spec(
    metadata: kube::api::ObjectMeta,
    spec: Option<k8s_openapi::api::core::v1::PodSpec>,
    status: Option<PodStatus>,
) -> Pod {
    let annotations = metadata.annotations.map(|a| {
        a.into_iter()
            .filter(|(k, _)| k.starts_with(naming::ANN_PREFIX))
            .collect()
    });
    Pod {
        metadata: kube::api::ObjectMeta {
            name: metadata.name,
            namespace: metadata.namespace,
            uid: metadata.uid,
            labels: metadata.labels,
            annotations,
            creation_timestamp: metadata.creation_timestamp,
            deletion_timestamp: metadata.deletion_timestamp,
            ..Default::default()
        },
        spec,
        status,
    }
}

/// True when the build container (the pod's first) started: it runs, or it ended after a start.
pub(super) fn build_container_ran(pod: &Pod) -> bool {
    let Some(name) = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.as_str())
    else {
        return false;
    };
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.name == name)
        .filter_map(|c| c.state.as_ref())
        .any(|st| {
            st.running.is_some()
                || st
                    .terminated
                    .as_ref()
                    .is_some_and(|t| t.started_at.is_some())
        })
}

/// Waiting reasons of every container of the pod.
pub(super) fn waiting_reasons(pod: &Pod) -> impl Iterator<Item = &str> {
    pod.status.iter().flat_map(|s| {
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
            .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.as_deref())
    })
}

/// When the build container finished (unix seconds).
pub(super) fn finished_at(pod: &Pod) -> Option<i64> {
    let build = pod.spec.as_ref()?.containers.first()?.name.clone();
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == build)?
        .state
        .as_ref()?
        .terminated
        .as_ref()?
        .finished_at
        .as_ref()
        .map(|t| t.0.as_second())
}

/// A whole build pod as the API serves it, for the tests of the reporter.
#[cfg(test)]
pub(super) fn full_pod(status: serde_json::Value, node: Option<&str>, deleting: bool) -> Pod {
    use serde_json::json;
    let mut meta = json!({
        "name": "42-abcde", "namespace": "builds", "uid": "u-1",
        "creationTimestamp": "2027-01-15T08:00:00Z",
        "labels": {"sdbuild": "beta-42", "app.kubernetes.io/managed-by": "buildcluster-worker"},
        "annotations": {"buildcluster-worker/build-id": "42", "buildcluster-worker/attempt": "2",
                        "buildcluster-worker/token-secret": "42-token", "screwdriver.cd/cpu": "HIGH"},
    });
    if deleting {
        meta["deletionTimestamp"] = json!("2027-01-15T08:05:00Z");
    }
    serde_json::from_value(json!({
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "initContainers": [{"name": "launcher", "image": "screwdrivercd/launcher:v6",
                                "command": ["/bin/sh", "-c", "cp -a /opt/sd/* /opt/launcher"]}],
            "containers": [
                {"name": "42", "image": "node:22", "command": ["/opt/sd/launcher_entrypoint.sh"],
                 "env": [{"name": "SD_BUILD_ID", "value": "42"}],
                 "volumeMounts": [{"name": "workspace", "mountPath": "/sd/workspace"}]},
                {"name": "dind", "image": "docker:dind"}],
            "volumes": [{"name": "workspace", "emptyDir": {}}],
        },
        "status": status,
    }))
    .unwrap()
}

/// The status of a build pod whose build succeeded, for the tests of the reporter.
#[cfg(test)]
pub(super) fn finished_status() -> serde_json::Value {
    serde_json::json!({"phase": "Succeeded", "containerStatuses": [{"name": "42", "image": "node:22",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "finishedAt": "2027-01-15T08:03:00Z"}}}]})
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::watch::assess::{Policy, assess};
    use serde_json::json;

    /// Statuses a build pod goes through; the Running one before the last two with every field the API server
    /// sets (addresses, conditions with their times, containers with ids and a restart).
    fn statuses() -> Vec<serde_json::Value> {
        vec![
            json!({"phase": "Pending"}),
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}]}),
            json!({"phase": "Pending", "containerStatuses": [{"name": "42", "ready": false, "restartCount": 0, "image": "x", "imageID": "", "state": {"waiting": {"reason": "InvalidImageName", "message": "bad"}}}]}),
            json!({"phase": "Pending", "initContainerStatuses": [{"name": "launcher", "ready": false, "restartCount": 0, "image": "x", "imageID": "", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}),
            json!({"phase": "Running", "containerStatuses": [{"name": "42", "ready": true, "restartCount": 0, "image": "x", "imageID": "", "state": {"running": {"startedAt": "2027-01-15T08:00:05Z"}}}]}),
            json!({"phase": "Running", "containerStatuses": [
            {"name": "42", "ready": false, "restartCount": 0, "image": "x", "imageID": "", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2027-01-15T08:03:00Z"}}},
            {"name": "dind", "ready": true, "restartCount": 0, "image": "x", "imageID": "", "state": {"running": {}}}]}),
            json!({"phase": "Succeeded", "containerStatuses": [{"name": "42", "ready": false, "restartCount": 0, "image": "x", "imageID": "", "state": {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": "2027-01-15T08:04:00Z"}}}]}),
            json!({"phase": "Running", "hostIP": "10.0.0.5", "hostIPs": [{"ip": "10.0.0.5"}],
               "podIP": "10.1.0.9", "podIPs": [{"ip": "10.1.0.9"}], "qosClass": "Burstable",
               "startTime": "2027-01-15T08:00:01Z",
               "conditions": [
                   {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2027-01-15T08:00:03Z"},
                   {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2027-01-15T08:00:04Z"},
                   {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": "containers with unready status: [42]", "lastProbeTime": null, "lastTransitionTime": "2027-01-15T08:00:04Z"},
                   {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2027-01-15T08:00:01Z"}],
               "initContainerStatuses": [{"name": "launcher", "ready": true, "restartCount": 0, "started": false,
                   "image": "screwdrivercd/launcher:v6", "imageID": "docker.io/screwdrivercd/launcher@sha256:ab", "containerID": "containerd://1",
                   "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": "2027-01-15T08:00:02Z", "finishedAt": "2027-01-15T08:00:03Z", "containerID": "containerd://1"}}}],
               "containerStatuses": [{"name": "42", "ready": false, "restartCount": 1, "started": true,
                   "image": "node:22", "imageID": "docker.io/library/node@sha256:cd", "containerID": "containerd://3",
                   "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": "2027-01-15T08:00:04Z", "finishedAt": "2027-01-15T08:01:00Z"}},
                   "state": {"running": {"startedAt": "2027-01-15T08:01:01Z"}},
                   "resources": {"requests": {"cpu": "2", "memory": "2Gi"}},
                   "volumeMounts": [{"name": "workspace", "mountPath": "/sd/workspace"}]}]}),
            json!({"phase": "Failed", "reason": "DeadlineExceeded", "message": "too long"}),
            json!({"phase": "Failed", "reason": "Evicted", "message": "low on memory", "containerStatuses": [
                {"name": "42", "ready": false, "restartCount": 0, "started": true, "image": "x", "imageID": "", "state": {}}]}),
        ]
    }

    #[test]
    fn a_pod_with_its_name_alone_is_watched() {
        let bare: WatchedPod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        let pod = bare.into_pod();
        assert_eq!(pod.metadata.name.as_deref(), Some("p"));
        assert_eq!((pod.spec, pod.status), (None, None));
    }

    #[test]
    fn the_watch_reads_what_it_needs_of_the_metadata_and_skips_managed_fields() {
        let mut full = full_pod(json!({"phase": "Running"}), Some("node-1"), true);
        full.metadata.resource_version = Some("812".into());
        let mut body = serde_json::to_value(&full).unwrap();
        // In the shape the API server gives them: one entry per writer, a tree of field names.
        body["metadata"]["managedFields"] = json!([
            {"manager": "buildcluster-worker", "operation": "Update", "apiVersion": "v1",
             "time": "2027-01-15T08:00:00Z", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                          "f:spec": {"f:containers": {"k:{\"name\":\"42\"}": {".": {}, "f:image": {}}}}}},
            {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "subresource": "status",
             "time": "2027-01-15T08:00:05Z", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:status": {"f:phase": {}}}}
        ]);
        body["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "u"}]);
        let watched: WatchedPod = serde_json::from_value(body).unwrap();
        let meta = &watched.metadata;
        assert_eq!(meta.managed_fields, None);
        assert_eq!(meta.owner_references, None);
        assert_eq!(meta.resource_version.as_deref(), Some("812"));
        for (read, want) in [
            (&meta.name, &full.metadata.name),
            (&meta.namespace, &full.metadata.namespace),
            (&meta.uid, &full.metadata.uid),
        ] {
            assert_eq!(read, want);
        }
        assert_eq!(meta.labels, full.metadata.labels);
        assert_eq!(meta.annotations, full.metadata.annotations);
        assert_eq!(meta.creation_timestamp, full.metadata.creation_timestamp);
        assert!(meta.deletion_timestamp.is_some());
        assert_eq!(watched.into_pod(), slim(full));
    }

    #[test]
    fn a_slim_pod_is_assessed_exactly_as_the_full_one() {
        let policy = Policy {
            grace: Duration::from_secs(30),
            pending_timeout: Duration::from_secs(600),
        };
        let created = "2027-01-15T08:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        for status in statuses() {
            for node in [None, Some("node-1")] {
                for deleting in [false, true] {
                    let full = full_pod(status.clone(), node, deleting);
                    let small = slim(full.clone());
                    for now in [created + 1, created + 601, created + 100_000] {
                        for age in [Duration::ZERO, Duration::from_secs(31)] {
                            assert_eq!(
                                assess(&small, now, |_| age, &policy),
                                assess(&full, now, |_| age, &policy),
                                "{status} node={node:?}"
                            );
                        }
                    }
                    assert_eq!(finished_at(&small), finished_at(&full));
                    assert_eq!(
                        waiting_reasons(&small).collect::<Vec<_>>(),
                        waiting_reasons(&full).collect::<Vec<_>>()
                    );
                    assert_eq!(
                        small.metadata.deletion_timestamp,
                        full.metadata.deletion_timestamp
                    );
                    assert_eq!(
                        small.spec.as_ref().unwrap().node_name,
                        full.spec.as_ref().unwrap().node_name
                    );
                }
            }
        }
    }

    #[test]
    fn a_slim_pod_keeps_the_worker_annotations_only() {
        let small = slim(full_pod(json!({"phase": "Pending"}), None, false));
        let ann = small.metadata.annotations.unwrap();
        assert_eq!(ann.len(), 3);
        assert_eq!(ann["buildcluster-worker/build-id"], "42");
        assert!(!ann.contains_key("screwdriver.cd/cpu"));
        assert_eq!(small.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(small.metadata.labels.unwrap()["sdbuild"], "beta-42");
        let spec = small.spec.unwrap();
        assert!(spec.init_containers.is_none() && spec.volumes.is_none());
        assert_eq!(spec.containers.len(), 1);
        assert!(spec.containers[0].env.is_none());
    }

    #[test]
    fn the_build_container_ran_when_it_runs_or_ended_after_a_start() {
        let with = |dind: serde_json::Value, build: serde_json::Value| {
            slim(full_pod(
                json!({"phase": "Succeeded", "containerStatuses": [
                    {"name": "dind", "ready": false, "restartCount": 0, "image": "d", "imageID": "", "state": dind},
                    {"name": "42", "ready": false, "restartCount": 0, "image": "n", "imageID": "", "state": build}]}),
                Some("node-1"),
                false,
            ))
        };
        let ended = json!({"terminated": {"exitCode": 0, "startedAt": "2027-01-15T08:00:05Z",
                                          "finishedAt": "2027-01-15T08:00:09Z"}});
        let never = json!({"terminated": {"exitCode": 128, "reason": "ContainerCannotRun"}});
        let running = json!({"running": {"startedAt": "2027-01-15T08:00:05Z"}});
        let waiting = json!({"waiting": {"reason": "ContainerCreating"}});
        assert!(build_container_ran(&with(waiting.clone(), ended)));
        assert!(build_container_ran(&with(waiting.clone(), running.clone())));
        assert!(!build_container_ran(&with(running.clone(), never)));
        // Another container running says nothing about the build container.
        assert!(!build_container_ran(&with(running, waiting)));
    }
}
