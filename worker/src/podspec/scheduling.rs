//! Where a build pod may run, exactly as Screwdriver's executor-k8s decides it.
//!
//! Each required node selector (the `diskSpeed` selector first, then `nodeSelectors`) becomes
//! both a `NoSchedule` toleration and an `In` expression of the one required node-affinity
//! term, so dedicated, tainted build nodes are both allowed and demanded. `preferredNodeSelectors`
//! form one preferred term of weight 100. `spec.nodeSelector` is never used. Pure code.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PreferredSchedulingTerm, Toleration,
};

use crate::naming;

/// Weight of the preferred node-affinity term (Screwdriver's value).
const PREFERRED_WEIGHT: i32 = 100;

/// The tolerations and node affinity of a build pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Scheduling {
    /// `spec.tolerations`, when any.
    pub tolerations: Option<Vec<Toleration>>,
    /// `spec.affinity`, when any.
    pub affinity: Option<Affinity>,
}

/// The required selectors of a build: the `diskSpeed` annotation's value on the configured
/// disk-speed node label (sanitised: it comes from the message), then the configured
/// `nodeSelectors`, which win on the same key as in Screwdriver. Configured values are used as
/// written: the configuration check validates them, and silently dropping a selector could
/// move builds onto nodes they must not use.
pub(crate) fn required_selectors(
    node_selectors: &BTreeMap<String, String>,
    disk_speed_label: &str,
    disk_speed: Option<&str>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    if let Some(speed) = disk_speed.map(naming::sanitize_label_value)
        && !disk_speed_label.is_empty()
        && !speed.is_empty()
        && !node_selectors.contains_key(disk_speed_label)
    {
        out.push((disk_speed_label.to_string(), speed));
    }
    out.extend(node_selectors.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

fn expression(key: &str, value: &str) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.to_string(),
        operator: "In".into(),
        values: Some(vec![value.to_string()]),
    }
}

/// Tolerations and affinity for the required and preferred selectors.
pub(crate) fn scheduling(
    required: &[(String, String)],
    preferred: &BTreeMap<String, String>,
) -> Scheduling {
    let tolerations: Vec<Toleration> = required
        .iter()
        .map(|(key, value)| Toleration {
            key: Some(key.clone()),
            value: Some(value.clone()),
            effect: Some("NoSchedule".into()),
            operator: Some("Equal".into()),
            toleration_seconds: None,
        })
        .collect();
    let required_term = (!required.is_empty()).then(|| NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions: Some(required.iter().map(|(k, v)| expression(k, v)).collect()),
            match_fields: None,
        }],
    });
    let preferred_terms = (!preferred.is_empty()).then(|| {
        vec![PreferredSchedulingTerm {
            weight: PREFERRED_WEIGHT,
            preference: NodeSelectorTerm {
                match_expressions: Some(preferred.iter().map(|(k, v)| expression(k, v)).collect()),
                match_fields: None,
            },
        }]
    });
    let affinity = (required_term.is_some() || preferred_terms.is_some()).then_some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: required_term,
            preferred_during_scheduling_ignored_during_execution: preferred_terms,
        }),
        pod_affinity: None,
        pod_anti_affinity: None,
    });
    Scheduling {
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        affinity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nothing_configured_means_nothing_set() {
        assert_eq!(scheduling(&[], &BTreeMap::new()), Scheduling::default());
    }

    #[test]
    fn each_required_selector_is_a_toleration_and_an_expression_of_one_term() {
        let required = required_selectors(&map(&[("a", "1"), ("b", "2")]), "", None);
        let s = scheduling(&required, &BTreeMap::new());
        let tolerations = s.tolerations.unwrap();
        assert_eq!(tolerations.len(), 2);
        assert_eq!(tolerations[0].effect.as_deref(), Some("NoSchedule"));
        assert_eq!(tolerations[0].operator.as_deref(), Some("Equal"));
        let node = s.affinity.unwrap().node_affinity.unwrap();
        let terms = node
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        let exprs = terms[0].match_expressions.clone().unwrap();
        assert_eq!(exprs, [expression("a", "1"), expression("b", "2")]);
        assert!(
            node.preferred_during_scheduling_ignored_during_execution
                .is_none()
        );
    }

    #[test]
    fn preferred_selectors_are_one_term_of_weight_100() {
        let s = scheduling(&[], &map(&[("zone", "a"), ("ssd", "true")]));
        assert!(s.tolerations.is_none());
        let node = s.affinity.unwrap().node_affinity.unwrap();
        let terms = node
            .preferred_during_scheduling_ignored_during_execution
            .unwrap();
        assert_eq!(terms.len(), 1);
        assert_eq!(terms[0].weight, 100);
        assert_eq!(
            terms[0]
                .preference
                .match_expressions
                .as_ref()
                .unwrap()
                .len(),
            2
        );
        assert!(
            node.required_during_scheduling_ignored_during_execution
                .is_none()
        );
    }

    #[test]
    fn disk_speed_comes_first_sanitised_and_only_when_configured() {
        let sel = map(&[("pool", "builds")]);
        assert_eq!(
            required_selectors(&sel, "disk.speed", Some("fast ssd")),
            [
                ("disk.speed".to_string(), "fast.ssd".to_string()),
                ("pool".to_string(), "builds".to_string())
            ]
        );
        assert_eq!(required_selectors(&sel, "", Some("fast")).len(), 1);
        assert_eq!(required_selectors(&sel, "disk.speed", Some("!!!")).len(), 1);
        // The configured selector wins on the same key.
        let same = map(&[("disk.speed", "slow")]);
        assert_eq!(
            required_selectors(&same, "disk.speed", Some("fast")),
            [("disk.speed".to_string(), "slow".to_string())]
        );
    }
}
