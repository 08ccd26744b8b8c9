//! Unit tests of the store.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::*;
use crate::kube_sim::selector::{FieldSelector, LabelSelector};

fn secret(ns: &str, name: &str, labels: &[(&str, &str)], owner: Option<&str>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            uid: Some(format!("uid-{ns}-{name}")),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            owner_references: owner.map(|o| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: "p".into(),
                    uid: o.into(),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    }
}

fn names(store: &Store, ns: Option<&str>, sel: &str) -> Vec<String> {
    let labels = LabelSelector::parse(sel).unwrap();
    let fields = FieldSelector::default();
    store
        .table::<Secret>()
        .select(ns, &labels, &fields, None)
        .map(|e| e.key.1.clone())
        .collect()
}

#[test]
fn every_write_gets_the_next_resource_version() {
    let mut s = Store::new(10);
    let a = s.put(secret("ns", "a", &[], None));
    let b = s.put(secret("ns", "b", &[], None));
    assert_eq!(b.rv, a.rv + 1);
    s.remove::<Secret>(&("ns".into(), "a".into())).unwrap();
    assert_eq!(s.rv(), b.rv + 1);
    let events = s.events_since(ResourceKind::Secrets, a.rv).unwrap();
    assert_eq!(
        events.iter().map(|e| e.typ).collect::<Vec<_>>(),
        vec![EventType::Added, EventType::Deleted]
    );
}

#[test]
fn label_index_and_namespace_scans_agree_with_a_full_scan() {
    let mut s = Store::new(10);
    s.put(secret("a", "x", &[("build", "1")], None));
    s.put(secret("a", "y", &[("build", "2")], None));
    s.put(secret("b", "z", &[("build", "1")], None));
    assert_eq!(names(&s, None, "build=1"), vec!["x", "z"]);
    assert_eq!(names(&s, Some("a"), "build=1"), vec!["x"]);
    assert_eq!(names(&s, Some("a"), ""), vec!["x", "y"]);
    assert_eq!(names(&s, None, "build=3"), Vec::<String>::new());
    assert_eq!(names(&s, None, "build!=1"), vec!["y"]);
    // relabelling moves the object in the index
    s.put(secret("a", "x", &[("build", "2")], None));
    assert_eq!(names(&s, None, "build=1"), vec!["z"]);
}

#[test]
fn history_is_bounded_and_answers_too_old() {
    let mut s = Store::new(2);
    let first = s.put(secret("ns", "a", &[], None));
    s.put(secret("ns", "b", &[], None));
    s.put(secret("ns", "c", &[], None));
    assert!(s.events_since(ResourceKind::Secrets, first.rv - 1).is_err());
    assert_eq!(
        s.events_since(ResourceKind::Secrets, first.rv)
            .unwrap()
            .len(),
        2
    );
    s.compact();
    assert_eq!(
        s.events_since(ResourceKind::Secrets, first.rv + 2)
            .unwrap_err(),
        s.rv()
    );
}

#[test]
fn owner_index_finds_dependents() {
    let mut s = Store::new(10);
    s.put(secret("ns", "tok", &[], Some("pod-uid")));
    assert_eq!(
        s.table::<Secret>().owned_by("pod-uid"),
        vec![("ns".to_owned(), "tok".to_owned())]
    );
    s.remove::<Secret>(&("ns".into(), "tok".into()));
    assert!(s.table::<Secret>().owned_by("pod-uid").is_empty());
}
