//! Fuzz target: any bytes through `intake::decode`; a decoded `start`/`verify` is built into a
//! pod and its token Secret, a decoded `clear` into a cache path, and each is checked for what
//! the worker promises (docs/interface.md §3 and §6): no panic, a refusal always has a reason
//! and a sentence, every name, label and annotation key is valid Kubernetes syntax, the pod
//! serialises and reads back, and a cache path never leaves the cache root.
#![no_main]

use std::collections::BTreeMap;
use std::path::{Component, Path};

use buildcluster_worker::cache;
use buildcluster_worker::config::{EcosystemSettings, ExecutorConfig};
use buildcluster_worker::intake::{Job, Limits, decode};
use buildcluster_worker::naming::{
    is_dns1123_label, is_dns1123_subdomain, is_label_value, is_qualified_name,
};
use buildcluster_worker::podspec::{PodInputs, build_pod, token_secret};
use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;

fn executor() -> ExecutorConfig {
    let mut config = ExecutorConfig::default();
    let k = &mut config.options.kubernetes;
    k.host = "https://10.0.0.1:6443".into();
    k.docker_feature_enabled = true;
    k.resources.disk.speed = "example.com/disk-speed".into();
    k.node_selectors = BTreeMap::from([("dedicated".into(), "builds".into())]);
    config
}

fn check_pod(pod: &Pod) {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    assert!(is_dns1123_subdomain(name), "pod name {name:?}");
    for (k, v) in pod.metadata.labels.iter().flatten() {
        assert!(
            is_qualified_name(k) && is_label_value(v),
            "label {k:?}={v:?}"
        );
    }
    let mut bytes = 0;
    for (k, v) in pod.metadata.annotations.iter().flatten() {
        assert!(is_qualified_name(k), "annotation key {k:?}");
        bytes += k.len() + v.len();
    }
    assert!(bytes <= 256 * 1024, "annotations of {bytes} bytes");
    let spec = pod.spec.as_ref().expect("a pod has a spec");
    for v in spec.volumes.iter().flatten() {
        assert!(is_dns1123_label(&v.name), "volume {:?}", v.name);
    }
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        assert!(is_dns1123_label(&c.name), "container {:?}", c.name);
        for e in c.env.iter().flatten() {
            assert!(
                !e.name.is_empty()
                    && e.name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
                    && !e.name.as_bytes()[0].is_ascii_digit(),
                "env {:?}",
                e.name
            );
        }
    }
    let text = serde_json::to_string(pod).expect("the pod serialises");
    let back: Pod = serde_json::from_str(&text).expect("the pod reads back");
    assert_eq!(&back, pod);
}

fuzz_target!(|data: &[u8]| {
    match decode(data, Limits::default()) {
        Ok(Job::Start(build) | Job::Verify(build)) => {
            let config = executor();
            let mut ecosystem = EcosystemSettings::default();
            ecosystem.cache.strategy = "disk".into();
            ecosystem.cache.path = "/mnt/cache".into();
            // Allow-list every message annotation key, so hostile keys reach the pod builder.
            let allow: Vec<String> = build.annotations.raw().keys().cloned().collect();
            let pod = build_pod(&PodInputs {
                executor: "k8s",
                config: &config,
                ecosystem: &ecosystem,
                build: &build,
                attempt: 1,
                pod_annotation_allow_list: &allow,
            });
            check_pod(&pod);
            let secret = token_secret(&pod, &build.token, "uid");
            let name = secret.metadata.name.unwrap_or_default();
            assert!(is_dns1123_subdomain(&name), "secret {name:?}");
        }
        Ok(Job::Clear(clear)) => {
            let root = Path::new("/var/cache/sd");
            if let Ok(dir) = cache::cache_dir(root, &clear) {
                let below = dir.strip_prefix(root).expect("the path starts at the root");
                assert!(
                    below
                        .components()
                        .all(|c| matches!(c, Component::Normal(_)))
                );
            }
        }
        Ok(Job::Stop(_)) => {}
        Err(poison) => {
            assert!(!poison.reason.as_str().is_empty());
            assert!(!poison.detail.trim().is_empty());
        }
    }
});
