//! The shape of the configuration tree, as the loader needs it to recognise keys.
//!
//! Derived once from the typed model (`model.rs`) through its JSON Schema (schemars), so that a
//! field added to the model is a key the loader accepts, and no key is listed twice: a model
//! struct is a level whose keys are matched ignoring case, `_` and `-`; a map's keys are data;
//! `executor:` holds `plugin` and one block per executor; anything else is a value. A field's
//! other spellings are its `x-aliases`; the keys of Screwdriver's layout that the worker accepts
//! and drops come from `compat::IGNORED`. Also the "did you mean" search. It never looks at values
//! and never does I/O.

use std::sync::LazyLock;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value};

use super::compat::IGNORED;
use super::model::Settings;

/// What sits below one key.
#[derive(Debug)]
pub(crate) enum Node {
    /// A struct: its keys are matched against these fields.
    Struct(Vec<Field>),
    /// A map whose keys are data (node selectors, annotations): kept untouched.
    Map,
    /// A scalar, a list or an opaque structure (lifecycle hooks): kept untouched.
    Leaf,
    /// `executor:`: `plugin` plus one block per executor, the block's key being its name.
    Executors {
        /// The keys that are not executor names (`plugin`).
        named: Vec<Field>,
        /// One executor block (`executor.<name>`).
        block: Box<Node>,
    },
    /// A key of Screwdriver's layout that the worker accepts and does not act on.
    Ignored,
}

/// One field of a struct.
#[derive(Debug)]
pub(crate) struct Field {
    /// The canonical (snake_case) name, as in `model.rs`.
    pub name: String,
    /// Other spellings that mean this field (besides case, `_` and `-` variants).
    pub aliases: Vec<String>,
    /// Given under two of its spellings in one place, both lists apply rather than that being a
    /// problem (`exclusion` and `exclusions`).
    pub joins_spellings: bool,
    /// What is below it.
    pub node: Node,
}

/// The whole tree, derived on first use.
static ROOT: LazyLock<Node> = LazyLock::new(derive);

/// The fields of the root (`rabbitmq`, `executor`, ...).
pub(crate) fn root() -> &'static [Field] {
    match &*ROOT {
        Node::Struct(fields) => fields,
        _ => unreachable!("the model's root is a struct"),
    }
}

/// The model's JSON Schema (doc comments as descriptions), and its definitions: what the key
/// tree and the key reference (`super::reference`) are both read from.
pub(super) fn model_schema() -> (Value, Map<String, Value>) {
    let schema = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<Settings>()
        .to_value();
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    (schema, defs)
}

/// The tree of `Settings`: its schema, walked.
fn derive() -> Node {
    let (schema, defs) = model_schema();
    let mut root = node_of(&schema, &defs);
    add_ignored(&mut root);
    root
}

/// The node a schema describes. A struct of the model denies unknown fields, which its schema
/// says as `additionalProperties: false`; that is what makes it a level of checked keys (and
/// keeps a `Duration`, whose schema has properties too, a value). Named keys plus a schema for
/// every other key is the layout `ExecutorSettings` declares for `executor:`.
fn node_of(schema: &Value, defs: &Map<String, Value>) -> Node {
    let schema = resolve(schema, defs);
    let properties = schema.get("properties").and_then(Value::as_object);
    match (properties, schema.get("additionalProperties")) {
        (Some(props), Some(Value::Bool(false))) => Node::Struct(fields(props, defs)),
        (Some(props), Some(block @ Value::Object(_))) => Node::Executors {
            named: fields(props, defs),
            block: Box::new(node_of(block, defs)),
        },
        (None, Some(Value::Bool(true) | Value::Object(_))) => Node::Map,
        _ => Node::Leaf,
    }
}

fn fields(properties: &Map<String, Value>, defs: &Map<String, Value>) -> Vec<Field> {
    properties
        .iter()
        .map(|(name, schema)| Field {
            name: name.clone(),
            aliases: schema
                .get("x-aliases")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            joins_spellings: schema.get("x-join-spellings") == Some(&Value::Bool(true)),
            node: node_of(schema, defs),
        })
        .collect()
}

/// The schema itself, behind a `$ref` to its definition and without the `null` of an `Option`.
pub(super) fn resolve<'a>(schema: &'a Value, defs: &'a Map<String, Value>) -> &'a Value {
    if let Some(name) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        return defs.get(name).map_or(schema, |def| resolve(def, defs));
    }
    let is_null = |s: &&Value| s.get("type").and_then(Value::as_str) == Some("null");
    let alternatives = ["anyOf", "oneOf"]
        .iter()
        .find_map(|k| schema.get(*k).and_then(Value::as_array));
    if let Some(alternatives) = alternatives {
        let mut some = alternatives.iter().filter(|s| !is_null(s));
        if let (Some(only), None) = (some.next(), some.next()) {
            return resolve(only, defs);
        }
    }
    schema
}

/// Adds the keys of `compat::IGNORED` that the model has no field for (`rabbitmq.queue_options`)
/// as ignored fields of their struct. Entries whose key is a model field (kept for
/// compatibility) or an executor block (`executor.jenkins`, matched by its plugin) add nothing.
fn add_ignored(root: &mut Node) {
    for path in IGNORED
        .iter()
        .map(|k| k.canonical)
        .filter(|c| !c.is_empty())
    {
        let segments: Vec<&str> = path.split('.').collect();
        let Some((last, parents)) = segments.split_last() else {
            continue;
        };
        if let Some(fields) = struct_at(root, parents)
            && !fields.iter().any(|f| f.name == *last)
        {
            fields.push(Field {
                name: (*last).to_string(),
                aliases: Vec::new(),
                joins_spellings: false,
                node: Node::Ignored,
            });
        }
    }
}

/// The fields of the struct at this canonical path, if it is one.
fn struct_at<'a>(node: &'a mut Node, path: &[&str]) -> Option<&'a mut Vec<Field>> {
    let Node::Struct(fields) = node else {
        return None;
    };
    match path.split_first() {
        None => Some(fields),
        Some((first, rest)) => {
            let field = fields.iter_mut().find(|f| f.name == *first)?;
            struct_at(&mut field.node, rest)
        }
    }
}

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
        .find(|fd| fold(&fd.name) == k || fd.aliases.iter().any(|a| fold(a) == k))
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
        .map(|fd| (edit_distance(&k, &fold(&fd.name)), fd.name.as_str()))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name.to_string());
    sibling.or_else(|| nested(fields, &k, 3))
}

fn nested(fields: &'static [Field], folded: &str, depth: usize) -> Option<String> {
    if depth == 0 {
        return None;
    }
    fields.iter().find_map(|fd| match &fd.node {
        Node::Struct(sub) => {
            if let Some(hit) = sub.iter().find(|s| fold(&s.name) == folded) {
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

    /// The node at a canonical path; `*` stands for an executor's name.
    fn at(path: &str) -> &'static Node {
        let mut fields = root();
        let mut node: Option<&'static Node> = None;
        for segment in path.split('.') {
            let next: &'static Node = match node {
                Some(Node::Executors { block, .. }) if segment == "*" => block.as_ref(),
                _ => {
                    &find(fields, segment)
                        .unwrap_or_else(|| panic!("{path}"))
                        .node
                }
            };
            fields = match next {
                Node::Struct(sub) => sub,
                Node::Executors { named, .. } => named,
                _ => &[],
            };
            node = Some(next);
        }
        node.unwrap()
    }

    fn executor_block() -> &'static [Field] {
        match at("executor.*") {
            Node::Struct(fields) => fields,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn aliases_are_found() {
        let block = executor_block();
        assert_eq!(find(block, "exclusion").unwrap().name, "exclusions");
        assert_eq!(find(block, "pluginName").unwrap().name, "plugin_name");
        assert!(find(block, "plugin").is_none());
        let kubernetes = match at("executor.*.options.kubernetes") {
            Node::Struct(fields) => fields,
            other => panic!("{other:?}"),
        };
        let file = find(kubernetes, "buildSecretFile").unwrap();
        assert_eq!(file.name, "build_secrets_file");
        assert!(!file.joins_spellings);
        assert!(find(block, "exclusion").unwrap().joins_spellings);
    }

    #[test]
    fn suggestions_prefer_close_siblings_then_misplaced_keys() {
        let Node::Struct(rabbit) = &root()[0].node else {
            unreachable!()
        };
        assert_eq!(
            suggest(rabbit, "prefetchCont").as_deref(),
            Some("prefetch_count")
        );
        assert_eq!(suggest(rabbit, "qeue").as_deref(), Some("queue"));
        assert_eq!(suggest(rabbit, "zzzzzzzz"), None);
        assert_eq!(
            suggest(executor_block(), "jobsNamespace").as_deref(),
            Some("options.kubernetes.jobs_namespace")
        );
    }

    /// The loader's shapes, read off the model: structs, maps, values, the executor blocks and
    /// the dropped keys of Screwdriver's layout.
    #[test]
    fn the_derived_tree_has_the_shapes_the_loader_needs() {
        let names: Vec<&str> = root().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "rabbitmq",
                "events",
                "httpd",
                "executor",
                "ecosystem",
                "intake",
                "lifecycle",
                "status_updates",
                "shutdown"
            ]
        );
        for path in [
            "rabbitmq",
            "executor.*.options.kubernetes.resources.cpu",
            "executor.*.options.ecosystem.cache",
            "status_updates.breaker",
        ] {
            assert!(matches!(at(path), Node::Struct(_)), "{path}");
        }
        for path in [
            "rabbitmq.connect_options",
            "executor.*.options.kubernetes.node_selectors",
            "executor.*.options.kubernetes.pod_labels",
        ] {
            assert!(matches!(at(path), Node::Map), "{path}");
        }
        // Durations, secrets, lists, enums and opaque JSON are values, whatever their Rust type.
        for path in [
            "rabbitmq.max_wait",
            "rabbitmq.retry_delays",
            "rabbitmq.url",
            "rabbitmq.queue_type",
            "executor.*.options.kubernetes.lifecycle_hooks",
            "executor.*.options.kubernetes.token",
            "executor.plugin",
        ] {
            assert!(matches!(at(path), Node::Leaf), "{path}");
        }
        assert!(matches!(at("executor"), Node::Executors { .. }));
        assert!(matches!(at("rabbitmq.queue_options"), Node::Ignored));
        assert!(matches!(at("rabbitmq.stop_rechecks"), Node::Leaf));
    }

    /// Every key the loader accepts from the model carries its doc comment, so the model stays
    /// the one place a key is described.
    #[test]
    fn every_key_of_the_model_is_documented() {
        let schema = SchemaSettings::draft2020_12()
            .into_generator()
            .into_root_schema_for::<Settings>();
        let mut undocumented = Vec::new();
        let defs = schema.get("$defs").and_then(Value::as_object).unwrap();
        for (name, def) in defs {
            let props = def.get("properties").and_then(Value::as_object);
            for (key, prop) in props.into_iter().flatten() {
                if prop.get("description").is_none() && name != "Duration" {
                    undocumented.push(format!("{name}.{key}"));
                }
            }
        }
        assert!(undocumented.is_empty(), "{undocumented:?}");
    }

    /// docs/interface.md describes every key the loader accepts, in either spelling, so that a
    /// field added to the model is not left out of the documented interface.
    #[test]
    fn every_key_is_in_the_interface_document() {
        let doc = include_str!("../../../docs/interface.md");
        let mentioned = |word: &str| {
            doc.match_indices(word).any(|(i, _)| {
                let edge = |c: Option<char>| !c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                edge(doc[..i].chars().next_back()) && edge(doc[i + word.len()..].chars().next())
            })
        };
        let mut missing = Vec::new();
        let mut pending: Vec<(String, &'static [Field])> = vec![(String::new(), root())];
        while let Some((prefix, fields)) = pending.pop() {
            for f in fields {
                let path = format!("{prefix}{}", f.name);
                if !mentioned(&f.name) && !mentioned(&camel(&f.name)) {
                    missing.push(path.clone());
                }
                match &f.node {
                    Node::Struct(sub) => pending.push((format!("{path}."), sub)),
                    Node::Executors { named, block } => {
                        pending.push((format!("{path}."), named));
                        if let Node::Struct(sub) = block.as_ref() {
                            pending.push((format!("{path}.<name>."), sub));
                        }
                    }
                    _ => {}
                }
            }
        }
        assert!(missing.is_empty(), "{missing:?}");
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
