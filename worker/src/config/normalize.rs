//! Maps one configuration layer's keys onto the canonical tree, and merges layers.
//!
//! Owns the key spelling rules: struct keys match their canonical snake_case field ignoring case,
//! `_` and `-` (so Screwdriver's camelCase and the lowercased environment both work); map-valued
//! fields keep their keys; executor names are data, except that an environment key finds the
//! executor of the lower layers whose name it spells. Every key it cannot place becomes an issue
//! with its full path. It never looks at what values mean (that is typing and validation).

use serde_json::{Map, Value};

use super::compat;
use super::issue::ConfigIssue;
use super::load::Compat;
use super::model::DEFAULT_EXECUTOR_KEY;
use super::schema::{self, Field, Node};

/// Where a layer comes from: decides how paths are shown and how executor keys are matched.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin<'a> {
    /// Shipped with the worker (the Screwdriver defaults): no notices.
    BuiltIn,
    /// A YAML file (or a tree built from Screwdriver's environment): keys as written.
    File,
    /// The `BCW_` environment: keys arrive lowercased; an executor key names the executor of
    /// these lower-layer names that it spells (ignoring case, `-` and `_`).
    Env {
        /// Executor names defined by the layers below.
        executors: &'a [String],
    },
}

/// One normalised layer.
#[derive(Debug, Default)]
pub(crate) struct Normalized {
    /// The layer with canonical keys (unknown and ignored keys removed).
    pub tree: Map<String, Value>,
    /// Unknown, misplaced or doubly given keys.
    pub issues: Vec<ConfigIssue>,
    /// Keys accepted and ignored (Screwdriver leftovers).
    pub notices: Vec<ConfigIssue>,
}

/// Normalises one layer (the root object of a file or of the environment).
pub(crate) fn normalize(
    layer: Map<String, Value>,
    origin: Origin<'_>,
    compat: Compat,
) -> Normalized {
    let mut walker = Walker {
        origin,
        compat,
        written: Vec::new(),
        canonical: Vec::new(),
        out: Normalized::default(),
    };
    let tree = walker.walk_struct(schema::root(), layer);
    Normalized { tree, ..walker.out }
}

struct Walker<'a> {
    origin: Origin<'a>,
    compat: Compat,
    /// The path as the user wrote it, for messages.
    written: Vec<String>,
    /// The canonical path, for the ignored-key table.
    canonical: Vec<String>,
    out: Normalized,
}

impl Walker<'_> {
    fn shown(&self, extra: &[&str]) -> String {
        let segments = self
            .written
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied());
        match self.origin {
            Origin::Env { .. } => {
                let upper: Vec<String> = segments.map(str::to_uppercase).collect();
                format!("BCW_{}", upper.join("__"))
            }
            Origin::BuiltIn | Origin::File => segments.collect::<Vec<_>>().join("."),
        }
    }

    fn issue(&mut self, extra: &[&str], message: String) {
        let path = self.shown(extra);
        self.out.issues.push(ConfigIssue::new(path, message));
    }

    fn walk(&mut self, node: &'static Node, value: Value) -> Option<Value> {
        match (node, value) {
            // `section:` with everything below commented out is YAML null: same as absent.
            (Node::Struct(_), Value::Null) => None,
            (Node::Struct(fields), Value::Object(obj)) => {
                Some(Value::Object(self.walk_struct(fields, obj)))
            }
            (Node::Executors { named, block }, Value::Object(obj)) => {
                Some(Value::Object(self.walk_executors(named, block, obj)))
            }
            // Wrong shapes pass through: typing reports them with the expected type.
            (_, other) => Some(other),
        }
    }

    fn walk_struct(
        &mut self,
        fields: &'static [Field],
        obj: Map<String, Value>,
    ) -> Map<String, Value> {
        let mut out = Map::new();
        // canonical name -> the spelling that set it in this layer
        let mut seen: Vec<(&'static str, String)> = Vec::new();
        for (key, value) in obj {
            let Some(field) = schema::find(fields, &key) else {
                let hint = match schema::suggest(fields, &key) {
                    Some(s) => format!("unknown key; did you mean {}?", self.spell(&key, &s)),
                    None => "unknown key".to_string(),
                };
                self.issue(&[&key], hint);
                continue;
            };
            self.within(&key, &field.name, |w| {
                if let Node::Ignored = field.node {
                    let canonical = w.canonical.join(".");
                    w.notice(&[], &canonical);
                } else if let Some(v) = w.walk(&field.node, value) {
                    w.place(&mut out, &mut seen, field, &key, v);
                }
            });
        }
        out
    }

    /// Puts a field's value, given as `key`, into its struct: once per field, except that a
    /// field whose spellings join takes the lists of all of them.
    fn place(
        &mut self,
        out: &mut Map<String, Value>,
        seen: &mut Vec<(&'static str, String)>,
        field: &'static Field,
        key: &str,
        v: Value,
    ) {
        match seen.iter().position(|(name, _)| *name == field.name) {
            None => {
                seen.push((&field.name, key.to_string()));
                out.insert(field.name.clone(), v);
            }
            Some(_) if field.joins_spellings => {
                // `exclusion` and `exclusions` together: both lists apply.
                let merged = merge_lists(out.remove(&field.name).unwrap_or(Value::Null), v);
                out.insert(field.name.clone(), merged);
            }
            Some(i) => {
                let first = &seen[i].1;
                let message =
                    format!("given twice in one place, as {first:?} and {key:?}; keep one");
                self.issue(&[], message);
            }
        }
    }

    fn walk_executors(
        &mut self,
        named: &'static [Field],
        block: &'static Node,
        obj: Map<String, Value>,
    ) -> Map<String, Value> {
        let block_fields = match block {
            Node::Struct(fields) => fields.as_slice(),
            _ => &[],
        };
        let mut out = Map::new();
        for (key, value) in obj {
            if let Some(field) = schema::find(named, &key) {
                if out.contains_key(&field.name) {
                    self.issue(&[&key], "default executor given twice in one place".into());
                } else {
                    out.insert(field.name.clone(), value);
                }
                continue;
            }
            if let (Some(field), false) = (schema::find(block_fields, &key), value.is_object()) {
                self.misplaced(&key, field);
                continue;
            }
            let Some(name) = self.executor_name(&key) else {
                continue;
            };
            if self.compat == Compat::Screwdriver && is_jenkins_block(&name, &value) {
                self.notice(&[&key], "executor.jenkins");
                continue;
            }
            // A block that is null stays null so that typing says so; it is not dropped.
            let walked = self.within(&key, "*", |w| match value {
                Value::Null => Some(Value::Null),
                v => w.walk(block, v),
            });
            if let Some(walked) = walked {
                match out.get_mut(&name) {
                    // Two environment keys spelling one executor: both apply.
                    Some(existing) => merge(existing, walked),
                    None => {
                        out.insert(name, walked);
                    }
                }
            }
        }
        out
    }

    /// A key of an executor block given at the `executor:` level: where it belongs.
    fn misplaced(&mut self, key: &str, field: &Field) {
        let home = match self.origin {
            Origin::Env { .. } => format!("BCW_EXECUTOR__<NAME>__{}", field.name.to_uppercase()),
            Origin::BuiltIn | Origin::File => {
                format!("executor.<name>.{}", self.spell(key, &field.name))
            }
        };
        self.issue(&[key], format!("belongs inside an executor block: {home}"));
    }

    /// The executor a key of `executor:` names: itself, or in the environment the lower layers'
    /// executor it spells; `None` (and an issue) when it spells several.
    fn executor_name(&mut self, key: &str) -> Option<String> {
        let Origin::Env { executors } = self.origin else {
            return Some(key.to_string());
        };
        let spelled: Vec<&str> = executors
            .iter()
            .map(String::as_str)
            .filter(|n| schema::fold(n) == schema::fold(key))
            .collect();
        if spelled.len() > 1 {
            let message = format!(
                "names several executors ({}); rename one of them",
                spelled.join(", ")
            );
            self.issue(&[key], message);
            return None;
        }
        Some(spelled.first().unwrap_or(&key).to_string())
    }

    /// A key accepted and dropped: a notice, except in the built-in layer.
    fn notice(&mut self, extra: &[&str], canonical: &str) {
        if !matches!(self.origin, Origin::BuiltIn) {
            let path = self.shown(extra);
            let reason = compat::ignored_reason(canonical);
            self.out.notices.push(ConfigIssue::new(path, reason));
        }
    }

    /// Runs `f` one level down, under the key as written and its canonical name.
    fn within<R>(&mut self, written: &str, canonical: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        self.written.push(written.to_string());
        self.canonical.push(canonical.to_string());
        let out = f(self);
        self.written.pop();
        self.canonical.pop();
        out
    }

    /// A suggested key in the dialect of the key the user wrote.
    fn spell(&self, written: &str, canonical_path: &str) -> String {
        match self.origin {
            Origin::Env { .. } => self.shown(&canonical_path.split('.').collect::<Vec<_>>()),
            Origin::BuiltIn | Origin::File => {
                if written.chars().any(|c| c.is_ascii_uppercase()) {
                    canonical_path
                        .split('.')
                        .map(schema::camel)
                        .collect::<Vec<_>>()
                        .join(".")
                } else {
                    canonical_path.to_string()
                }
            }
        }
    }
}

/// Screwdriver's router loads the module `screwdriver-executor-<pluginName || name>`; a block for
/// the Jenkins plugin (never installed with the worker) was skipped there and is skipped here.
fn is_jenkins_block(name: &str, block: &Value) -> bool {
    let plugin = block
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| schema::fold(k) == "pluginname"))
        .and_then(|(_, v)| v.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or(name);
    schema::fold(plugin) == "jenkins"
}

/// The items of a list-ish value: a list, a JSON-list string, a comma-separated string.
fn list_items(v: Value) -> Vec<Value> {
    match v {
        Value::Null => Vec::new(),
        Value::Array(items) => items,
        Value::String(s) => match serde_json::from_str::<Value>(s.trim()) {
            Ok(Value::Array(items)) => items,
            _ => s
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| Value::String(p.to_string()))
                .collect(),
        },
        other => vec![other],
    }
}

/// Both lists, the first one's items first, without repeats.
fn merge_lists(a: Value, b: Value) -> Value {
    let mut out: Vec<Value> = Vec::new();
    for item in list_items(a).into_iter().chain(list_items(b)) {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    Value::Array(out)
}

/// Lays `over` on top of `base`: objects merge key by key (deeply), anything else replaces, as
/// the `config` crate merges its sources.
pub(crate) fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// The executor names a (canonical) tree defines, in order.
pub(crate) fn executor_names(tree: &Value) -> Vec<String> {
    tree.get("executor")
        .and_then(Value::as_object)
        .map(|o| {
            o.keys()
                .filter(|k| *k != DEFAULT_EXECUTOR_KEY)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file(v: Value) -> Normalized {
        normalize(obj(v), Origin::File, Compat::Native)
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(o) => o,
            _ => panic!("not an object"),
        }
    }

    fn paths(issues: &[ConfigIssue]) -> Vec<&str> {
        issues.iter().map(|i| i.path.as_str()).collect()
    }

    #[test]
    fn camel_and_snake_twins_map_to_the_canonical_key() {
        let n = file(json!({
            "rabbitmq": {"prefetchCount": "10", "message_reprocess_limit": 4, "QueueType": "classic"},
            "executor": {"k8s": {"options": {"kubernetes": {"jobsNamespace": "ci", "max-build-timeout": 9}}}}
        }));
        assert!(n.issues.is_empty(), "{:?}", n.issues);
        assert_eq!(
            Value::Object(n.tree),
            json!({
                "rabbitmq": {"prefetch_count": "10", "message_reprocess_limit": 4, "queue_type": "classic"},
                "executor": {"k8s": {"options": {"kubernetes": {"jobs_namespace": "ci", "max_build_timeout": 9}}}}
            })
        );
    }

    #[test]
    fn map_valued_fields_keep_their_keys() {
        let n = file(json!({"executor": {"k8s": {"options": {"kubernetes": {
            "nodeSelectors": {"Dedicated_Node": "x"},
            "annotations": {"io.kubernetes.cri/untrusted-workload": "true"},
            "lifecycleHooks": {"postStart": {"exec": {"command": ["a"]}}}
        }}}}}));
        assert!(n.issues.is_empty(), "{:?}", n.issues);
        let k = &n.tree["executor"]["k8s"]["options"]["kubernetes"];
        assert_eq!(k["node_selectors"], json!({"Dedicated_Node": "x"}));
        assert_eq!(
            k["annotations"],
            json!({"io.kubernetes.cri/untrusted-workload": "true"})
        );
        assert_eq!(
            k["lifecycle_hooks"]["postStart"]["exec"]["command"],
            json!(["a"])
        );
    }

    #[test]
    fn every_unknown_key_is_listed_with_its_path_and_a_suggestion() {
        let n = file(json!({
            "rabbitmq": {"prefetchCont": 3, "qeue": "x"},
            "executor": {"k8s": {"options": {"kubernetes": {"hots": "h"}, "jobsNamespace": "a"}}},
            "metrics": {}
        }));
        let shown: Vec<String> = n.issues.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "rabbitmq.prefetchCont: unknown key; did you mean prefetchCount?",
                "rabbitmq.qeue: unknown key; did you mean queue?",
                "executor.k8s.options.kubernetes.hots: unknown key; did you mean host?",
                "executor.k8s.options.jobsNamespace: unknown key; did you mean kubernetes.jobsNamespace?",
                "metrics: unknown key",
            ]
        );
        assert!(n.tree["rabbitmq"].as_object().unwrap().is_empty());
    }

    #[test]
    fn env_keys_are_shown_as_variables_and_match_executors_by_spelling() {
        let executors = vec!["k8s-sandbox".to_string(), "k8s".to_string()];
        let env = json!({"executor": {
            "k8s_sandbox": {"weightage": "3"},
            "gpu": {"options": {"kubernetes": {"host": "https://gpu"}}},
            "k8s": {"weightage": "1", "weigthage": "2"}
        }});
        let n = normalize(
            obj(env),
            Origin::Env {
                executors: &executors,
            },
            Compat::Native,
        );
        assert_eq!(n.tree["executor"]["k8s-sandbox"]["weightage"], json!("3"));
        assert_eq!(
            n.tree["executor"]["gpu"]["options"]["kubernetes"]["host"],
            json!("https://gpu")
        );
        assert_eq!(paths(&n.issues), vec!["BCW_EXECUTOR__K8S__WEIGTHAGE"]);
        assert_eq!(
            n.issues[0].message,
            "unknown key; did you mean BCW_EXECUTOR__K8S__WEIGHTAGE?"
        );
    }

    #[test]
    fn an_env_key_that_spells_two_executors_is_a_problem() {
        let executors = vec!["k8s-vm".to_string(), "k8s_vm".to_string()];
        let env = json!({"executor": {"k8s_vm": {"weightage": "3"}}});
        let n = normalize(
            obj(env),
            Origin::Env {
                executors: &executors,
            },
            Compat::Native,
        );
        assert_eq!(paths(&n.issues), vec!["BCW_EXECUTOR__K8S_VM"]);
        assert_eq!(
            n.issues[0].message,
            "names several executors (k8s-vm, k8s_vm); rename one of them"
        );
    }

    #[test]
    fn exclusion_and_exclusions_are_both_accepted_and_merged() {
        let n = file(json!({"executor": {
            "a": {"exclusion": ["rhel6"], "exclusions": ["centos", "rhel6"]},
            "b": {"exclusion": "rhel6,sles"},
            "c": {"exclusions": "[\"x\"]", "exclusion": "y"}
        }}));
        assert!(n.issues.is_empty(), "{:?}", n.issues);
        assert_eq!(
            n.tree["executor"]["a"]["exclusions"],
            json!(["rhel6", "centos"])
        );
        assert_eq!(n.tree["executor"]["b"]["exclusions"], json!("rhel6,sles"));
        assert_eq!(n.tree["executor"]["c"]["exclusions"], json!(["x", "y"]));
    }

    #[test]
    fn a_key_given_twice_in_one_layer_is_a_problem() {
        let n = file(json!({"rabbitmq": {"prefetchCount": 1, "prefetch_count": 2}}));
        assert_eq!(paths(&n.issues), vec!["rabbitmq.prefetch_count"]);
        assert!(n.issues[0].message.contains("given twice"));
        assert_eq!(n.tree["rabbitmq"]["prefetch_count"], json!(1));
    }

    #[test]
    fn plugin_name_at_the_executor_level_is_misplaced() {
        let n = file(json!({"executor": {"plugin": "k8s", "pluginName": "k8s", "k8s": {}}}));
        assert_eq!(n.issues.len(), 1);
        assert_eq!(
            n.issues[0].to_string(),
            "executor.pluginName: belongs inside an executor block: executor.<name>.pluginName"
        );
        assert_eq!(n.tree["executor"]["plugin"], json!("k8s"));
    }

    #[test]
    fn null_sections_are_absent_but_null_executor_blocks_are_kept() {
        let n = file(json!({"rabbitmq": null, "executor": {"k8s": null}}));
        assert!(n.issues.is_empty());
        assert!(!n.tree.contains_key("rabbitmq"));
        assert_eq!(n.tree["executor"]["k8s"], Value::Null);
    }

    #[test]
    fn ignored_keys_become_notices_not_issues() {
        let n = file(json!({"rabbitmq": {"queueOptions": {"durable": true}}}));
        assert!(n.issues.is_empty());
        assert_eq!(paths(&n.notices), vec!["rabbitmq.queueOptions"]);
        assert!(
            !n.tree["rabbitmq"]
                .as_object()
                .unwrap()
                .contains_key("queue_options")
        );
    }

    #[test]
    fn jenkins_blocks_are_skipped_in_screwdriver_mode_only() {
        let layer = json!({"executor": {"jenkins": {"options": {"jenkins": {"host": "j"}}}}});
        let sd = normalize(obj(layer.clone()), Origin::File, Compat::Screwdriver);
        assert!(sd.issues.is_empty());
        assert_eq!(paths(&sd.notices), vec!["executor.jenkins"]);
        let native = file(layer);
        assert_eq!(
            paths(&native.issues),
            vec!["executor.jenkins.options.jenkins"]
        );
    }

    #[test]
    fn merge_is_deep_for_objects_and_replaces_everything_else() {
        let mut base = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        merge(
            &mut base,
            json!({"a": {"c": [3], "e": null}, "d": {"f": 1}}),
        );
        assert_eq!(
            base,
            json!({"a": {"b": 1, "c": [3], "e": null}, "d": {"f": 1}})
        );
    }
}
