//! The shape of the configuration tree, as the loader needs it to recognise keys.
//!
//! Owns the list of canonical key names per level (mirroring `model.rs`; a test keeps the two in
//! step), which levels are structs (keys matched ignoring case, `_` and `-`), which are maps whose
//! keys are data, and the "did you mean" search. It never looks at values and never does I/O.

/// What sits below one key.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Node {
    /// A struct: its keys are matched against these fields.
    Struct(&'static [Field]),
    /// A map whose keys are data (node selectors, annotations): kept untouched.
    Map,
    /// A scalar, a list or an opaque structure (lifecycle hooks): kept untouched.
    Leaf,
    /// `executor:`: `plugin` plus one block per executor, the block's key being its name.
    Executors,
    /// A key of Screwdriver's layout that the worker accepts and does not act on.
    Ignored,
}

/// One field of a struct.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    /// The canonical (snake_case) name, as in `model.rs`.
    pub name: &'static str,
    /// Other spellings that mean this field (besides case, `_` and `-` variants).
    pub aliases: &'static [&'static str],
    /// What is below it.
    pub node: Node,
}

const fn f(name: &'static str, node: Node) -> Field {
    Field {
        name,
        aliases: &[],
        node,
    }
}

const fn leaf(name: &'static str) -> Field {
    f(name, Node::Leaf)
}

use Node::{Executors, Ignored, Map, Struct};

const BREAKER: &[Field] = &[leaf("timeout"), leaf("max_failures"), leaf("reset_timeout")];
const REQUEST_RETRY: &[Field] = &[leaf("retry_delay"), leaf("max_attempts")];
const TIERS: &[Field] = &[
    leaf("micro"),
    leaf("low"),
    leaf("high"),
    leaf("turbo"),
    leaf("max"),
];
const DISK: &[Field] = &[leaf("space"), leaf("speed")];
const RESOURCES: &[Field] = &[
    f("cpu", Struct(TIERS)),
    f("memory", Struct(TIERS)),
    f("disk", Struct(DISK)),
];
const CACHE: &[Field] = &[
    leaf("strategy"),
    leaf("path"),
    leaf("compress"),
    leaf("md5check"),
    leaf("max_size_mb"),
    leaf("max_go_threads"),
];
const ECOSYSTEM: &[Field] = &[
    leaf("ui"),
    leaf("api"),
    leaf("store"),
    leaf("pushgateway_url"),
    f("cache", Struct(CACHE)),
];
const KUBERNETES: &[Field] = &[
    leaf("host"),
    leaf("kubeconfig"),
    leaf("context"),
    leaf("token"),
    leaf("token_file"),
    leaf("ca_file"),
    leaf("insecure_skip_tls_verify"),
    leaf("jobs_namespace"),
    leaf("service_account"),
    leaf("automount_service_account_token"),
    leaf("privileged"),
    leaf("docker_feature_enabled"),
    leaf("runtime_class"),
    f("node_selectors", Map),
    f("preferred_node_selectors", Map),
    f("annotations", Map),
    f("pod_labels", Map),
    leaf("image_pull_policy"),
    leaf("image_pull_secret_name"),
    leaf("dns_policy"),
    leaf("termination_grace_period_seconds"),
    leaf("build_timeout"),
    leaf("max_build_timeout"),
    f("resources", Struct(RESOURCES)),
    leaf("qps"),
    leaf("burst"),
    leaf("lifecycle_hooks"),
    leaf("volume_mounts"),
    leaf("build_secrets"),
    // Screwdriver's default.yaml misspells it `buildSecretFile`; both spellings are accepted
    // (docs/interface.md §2.4).
    Field {
        name: "build_secrets_file",
        aliases: &["buildSecretFile"],
        node: Node::Leaf,
    },
    leaf("pod_status_query_delay"),
    leaf("base_image"),
    leaf("token_delivery"),
    leaf("pending_timeout"),
    leaf("image_pull_grace_period"),
    leaf("pod_ttl"),
    leaf("create_lands_within"),
];
const OPTIONS: &[Field] = &[
    f("kubernetes", Struct(KUBERNETES)),
    leaf("launch_image"),
    leaf("launch_version"),
    leaf("prefix"),
    f("fusebox", Struct(&[f("breaker", Struct(BREAKER))])),
    f("requestretry", Struct(REQUEST_RETRY)),
    leaf("sd_hab_enabled"),
    f("ecosystem", Struct(ECOSYSTEM)),
];
/// One executor block (`executor.<name>`).
pub(crate) const EXECUTOR: &[Field] = &[
    leaf("plugin_name"),
    leaf("weightage"),
    // Screwdriver's shipped default.yaml says `exclusion`, its router reads `exclusions`.
    Field {
        name: "exclusions",
        aliases: &["exclusion"],
        node: Node::Leaf,
    },
    f("options", Struct(OPTIONS)),
];
const RABBITMQ: &[Field] = &[
    leaf("url"),
    leaf("protocol"),
    leaf("username"),
    leaf("password"),
    leaf("password_file"),
    leaf("host"),
    leaf("port"),
    leaf("vhost"),
    f("connect_options", Map),
    leaf("ca_file"),
    leaf("exchange"),
    leaf("queue"),
    leaf("queue_type"),
    leaf("prefetch_count"),
    leaf("message_reprocess_limit"),
    leaf("retry_delays"),
    leaf("max_wait"),
    leaf("declare_topology"),
    leaf("retry_queue"),
    leaf("retry_queue_enabled"),
    leaf("init_timeout"),
    leaf("stop_rechecks"),
    leaf("build_locks"),
    f("queue_options", Ignored),
];
const LIFECYCLE: &[Field] = &[
    leaf("enabled"),
    leaf("lease_duration"),
    leaf("lease_renew_interval"),
    leaf("resync_interval"),
];
const STATUS_UPDATES: &[Field] = &[
    leaf("enabled"),
    f("breaker", Struct(BREAKER)),
    f("retry", Struct(REQUEST_RETRY)),
    leaf("ca_file"),
];

/// The whole tree.
pub(crate) const ROOT: Node = Struct(&[
    f("rabbitmq", Struct(RABBITMQ)),
    f(
        "events",
        Struct(&[leaf("enabled"), leaf("exchange"), leaf("format")]),
    ),
    f("httpd", Struct(&[leaf("host"), leaf("port"), leaf("uri")])),
    f("executor", Executors),
    f("ecosystem", Struct(ECOSYSTEM)),
    f(
        "intake",
        Struct(&[leaf("max_message_bytes"), leaf("pod_annotation_allow_list")]),
    ),
    f("lifecycle", Struct(LIFECYCLE)),
    f("status_updates", Struct(STATUS_UPDATES)),
    f("shutdown", Struct(&[leaf("drain_timeout")])),
]);

/// A key reduced to what matching compares: lowercase, without `_` and `-`
/// (`prefetchCount`, `prefetch_count`, `PREFETCHCOUNT` and `prefetch-count` are all `prefetchcount`).
pub(crate) fn fold(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The field of `fields` that `key` names, if any.
pub(crate) fn find(fields: &'static [Field], key: &str) -> Option<&'static Field> {
    let k = fold(key);
    fields
        .iter()
        .find(|fd| fold(fd.name) == k || fd.aliases.iter().any(|a| fold(a) == k))
}

/// `prefetch_count` -> `prefetchCount`: the Screwdriver spelling of a canonical name.
pub(crate) fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Edit distance between two short strings (keys), counting a swap of two neighbours as one
/// edit (optimal string alignment), for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The known key closest to an unknown one: a sibling within a small edit distance, or else a
/// field of the same name deeper down (a key put one level too high), as a relative path.
pub(crate) fn suggest(fields: &'static [Field], key: &str) -> Option<String> {
    let k = fold(key);
    let limit = if k.len() <= 4 { 1 } else { 2 };
    let sibling = fields
        .iter()
        .map(|fd| (edit_distance(&k, &fold(fd.name)), fd.name))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name.to_string());
    sibling.or_else(|| nested(fields, &k, 3))
}

fn nested(fields: &'static [Field], folded: &str, depth: usize) -> Option<String> {
    if depth == 0 {
        return None;
    }
    fields.iter().find_map(|fd| match fd.node {
        Node::Struct(sub) => {
            if let Some(hit) = sub.iter().find(|s| fold(s.name) == folded) {
                Some(format!("{}.{}", fd.name, hit.name))
            } else {
                nested(sub, folded, depth - 1).map(|p| format!("{}.{p}", fd.name))
            }
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_makes_camel_snake_and_env_spellings_equal() {
        assert_eq!(fold("prefetchCount"), "prefetchcount");
        assert_eq!(fold("prefetch_count"), "prefetchcount");
        assert_eq!(fold("PREFETCH-COUNT"), "prefetchcount");
        assert_eq!(
            camel("termination_grace_period_seconds"),
            "terminationGracePeriodSeconds"
        );
        assert_eq!(camel("md5check"), "md5check");
    }

    #[test]
    fn aliases_are_found() {
        assert_eq!(find(EXECUTOR, "exclusion").unwrap().name, "exclusions");
        assert_eq!(find(EXECUTOR, "pluginName").unwrap().name, "plugin_name");
        assert!(find(EXECUTOR, "plugin").is_none());
    }

    #[test]
    fn suggestions_prefer_close_siblings_then_misplaced_keys() {
        let Node::Struct(root) = ROOT else {
            unreachable!()
        };
        let Node::Struct(rabbit) = root[0].node else {
            unreachable!()
        };
        assert_eq!(
            suggest(rabbit, "prefetchCont").as_deref(),
            Some("prefetch_count")
        );
        assert_eq!(suggest(rabbit, "qeue").as_deref(), Some("queue"));
        assert_eq!(suggest(rabbit, "zzzzzzzz"), None);
        assert_eq!(
            suggest(EXECUTOR, "jobsNamespace").as_deref(),
            Some("options.kubernetes.jobs_namespace")
        );
    }

    /// Someone adding a field to `model.rs` must add it here too, or it could never be set.
    #[test]
    fn the_schema_matches_the_model() {
        use crate::config::{EcosystemSettings, ExecutorConfig, Settings};
        let mut s = Settings::default();
        let mut block = ExecutorConfig::default();
        block.options.ecosystem = Some(EcosystemSettings::default());
        s.executor.executors.push(("k8s".into(), block));
        let v = serde_json::to_value(&s).unwrap();
        let Node::Struct(root) = ROOT else {
            unreachable!()
        };
        let mut diffs = Vec::new();
        compare(root, &v, "", &mut diffs);
        assert!(diffs.is_empty(), "{diffs:#?}");
    }

    fn compare(fields: &[Field], v: &serde_json::Value, path: &str, diffs: &mut Vec<String>) {
        let Some(obj) = v.as_object() else {
            diffs.push(format!("{path}: a struct in the schema, not in the model"));
            return;
        };
        for k in obj.keys() {
            if !fields.iter().any(|f| f.name == k) {
                diffs.push(format!("{path}{k}: in the model, not in the schema"));
            }
        }
        for f in fields {
            let here = format!("{path}{}", f.name);
            match (f.node, obj.get(f.name)) {
                (Node::Ignored, None) => {}
                (Node::Ignored, Some(_)) => {
                    diffs.push(format!("{here}: ignored, yet in the model"))
                }
                (_, None) => diffs.push(format!("{here}: in the schema, not in the model")),
                (Node::Struct(sub), Some(child)) => compare(sub, child, &format!("{here}."), diffs),
                (Node::Executors, Some(child)) => compare(
                    EXECUTOR,
                    &child["executors"][0][1],
                    "executor.<name>.",
                    diffs,
                ),
                (Node::Map, Some(child)) if !child.is_object() => {
                    diffs.push(format!("{here}: a map in the schema, not in the model"))
                }
                (Node::Leaf, Some(child)) if child.is_object() => diffs.push(format!(
                    "{here}: a struct in the model, a leaf in the schema"
                )),
                _ => {}
            }
        }
    }

    #[test]
    fn edit_distance_counts_a_swap_as_one_edit() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
        assert_eq!(edit_distance("prot", "port"), 1);
    }

    proptest::proptest! {
        #[test]
        fn edit_distance_is_a_symmetric_bounded_measure(a in "[a-z]{0,12}", b in "[a-z]{0,12}") {
            let d = edit_distance(&a, &b);
            proptest::prop_assert_eq!(d, edit_distance(&b, &a));
            proptest::prop_assert!(d <= a.len().max(b.len()));
            proptest::prop_assert_eq!(d == 0, a == b);
        }
    }
}
