//! Loading: defaults < (Screwdriver defaults) < YAML file < (Screwdriver environment) < `BCW_`
//! environment, into a validated [`Settings`].
//!
//! Owns reading the sources (through the `config` crate), the order of the layers, turning the
//! merged tree into typed values while collecting every type error, and running validation. It
//! never reads the process environment (callers pass it in, so tests never mutate it) and never
//! returns a `Settings` that has a problem.
//!
//! Each source is read with the `config` crate (`File`, and `Environment` with the injected map
//! and `try_parsing(false)`), then normalised on its own and merged here, rather than merged by
//! the `config` builder: the same setting may be spelled differently in two layers
//! (`prefetchCount` in the file, `BCW_RABBITMQ__PREFETCH_COUNT`), and only after normalising can
//! the later layer replace the earlier one instead of sitting beside it as a second key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::compat;
use super::issue::{ConfigErrors, ConfigIssue};
use super::model::{ExecutorConfig, Settings};
use super::normalize::{self, Origin};
use super::schema::{self, Node};

/// Which configuration layout the worker reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compat {
    /// This worker's own layout (docs/interface.md §2) and the `BCW_` environment.
    #[default]
    Native,
    /// The original buildcluster-queue-worker's files and environment variables, unchanged
    /// (`--compat screwdriver`), with `BCW_` variables on top.
    Screwdriver,
}

impl FromStr for Compat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "native" | "none" | "" => Ok(Compat::Native),
            "screwdriver" => Ok(Compat::Screwdriver),
            other => Err(format!(
                "unknown compatibility mode {other:?} (expected native or screwdriver)"
            )),
        }
    }
}

impl fmt::Display for Compat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compat::Native => "native",
            Compat::Screwdriver => "screwdriver",
        })
    }
}

/// What to load.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// The YAML file, when there is one (it must exist then).
    pub path: Option<PathBuf>,
    /// The whole process environment (`std::env::vars().collect()` in `main`; a literal map in
    /// tests). Only `BCW_` variables are read, plus the original's names in Screwdriver mode.
    pub env: BTreeMap<String, String>,
    /// Which layout.
    pub compat: Compat,
}

impl fmt::Debug for LoadOptions {
    // The environment holds passwords and tokens: show which variables there are, never values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions")
            .field("path", &self.path)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("compat", &self.compat)
            .finish()
    }
}

/// `BCW_` variables that configure the command line, not the tree; the loader skips them.
pub const NON_CONFIG_ENV: &[&str] = &[
    "BCW_CONFIG",
    "BCW_COMPAT",
    "BCW_LOG_LEVEL",
    "BCW_LOG_FORMAT",
    // `enqueue --token`: a secret for one command, never part of the tree.
    "BCW_BUILD_TOKEN",
];

/// A valid configuration and what was accepted but ignored on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated settings.
    pub settings: Settings,
    /// Keys of the Screwdriver layout that were accepted and are not acted on (for a log line).
    pub notices: Vec<ConfigIssue>,
}

/// Loads, types and validates the configuration: a valid [`Settings`], or every problem found.
pub fn load(opts: &LoadOptions) -> Result<Settings, ConfigErrors> {
    load_with_notices(opts).map(|l| l.settings)
}

/// [`load`], also returning the notices about ignored Screwdriver keys.
pub fn load_with_notices(opts: &LoadOptions) -> Result<Loaded, ConfigErrors> {
    let mut layers = Layers {
        compat: opts.compat,
        tree: Value::Object(Map::new()),
        issues: Vec::new(),
        notices: Vec::new(),
    };
    if opts.compat == Compat::Screwdriver {
        match compat::defaults_layer() {
            Ok(base) => layers.add(base, Origin::BuiltIn),
            Err(e) => layers.issue("built-in Screwdriver defaults", e),
        }
    }
    if let Some(path) = &opts.path {
        match read_file(path) {
            Ok(layer) => layers.add(layer, Origin::File),
            Err(e) => layers.issue(&path.display().to_string(), e),
        }
    }
    if opts.compat == Compat::Screwdriver {
        let (layer, issues, notices) = compat::env_layer(&opts.env);
        layers.issues.extend(issues);
        layers.notices.extend(notices);
        layers.add(layer, Origin::File);
    }
    match read_env(&opts.env) {
        Ok(layer) => {
            let executors = normalize::executor_names(&layers.tree);
            layers.add(
                layer,
                Origin::Env {
                    executors: &executors,
                },
            );
        }
        Err(e) => layers.issue("BCW_*", e),
    }
    let Layers {
        mut tree,
        mut issues,
        notices,
        ..
    } = layers;
    if opts.compat == Compat::Screwdriver {
        compat::fix_up(&mut tree);
    }

    let (settings, type_errors) = typed(tree);
    let pruned: Vec<String> = type_errors.iter().map(|i| i.path.clone()).collect();
    issues.extend(type_errors);
    if let Some(settings) = &settings {
        // A value that failed to type was replaced by its default; a rule about it (or about a
        // relation it is part of) would speak of a value the user never wrote.
        issues.extend(settings.validate().into_iter().filter(|i| {
            !pruned.iter().any(|p| {
                i.path == *p
                    || i.path.starts_with(&format!("{p}."))
                    || p.starts_with(&format!("{}.", i.path))
            })
        }));
    }
    match settings {
        Some(settings) if issues.is_empty() => Ok(Loaded { settings, notices }),
        _ => Err(ConfigErrors(issues)),
    }
}

/// The layers merged so far, and what normalising them found.
struct Layers {
    compat: Compat,
    tree: Value,
    issues: Vec<ConfigIssue>,
    notices: Vec<ConfigIssue>,
}

impl Layers {
    /// Normalises one more layer and lays it on top.
    fn add(&mut self, layer: Value, origin: Origin<'_>) {
        let layer = match layer {
            Value::Object(layer) => layer,
            // The `config` crate only yields tables at the root.
            _ => Map::new(),
        };
        let n = normalize::normalize(layer, origin, self.compat);
        self.issues.extend(n.issues);
        self.notices.extend(n.notices);
        normalize::merge(&mut self.tree, Value::Object(n.tree));
    }

    fn issue(&mut self, path: &str, message: String) {
        self.issues.push(ConfigIssue::new(path, message));
    }
}

/// Reads YAML text through the `config` crate into a JSON tree.
pub(crate) fn read_yaml_str(text: &str) -> Result<Value, String> {
    let source = config::File::from_str(text, config::FileFormat::Yaml);
    collect(config::Config::builder().add_source(source))
}

fn read_file(path: &std::path::Path) -> Result<Value, String> {
    // `config` decides the format by extension; a `.conf` or extension-less file is YAML too.
    let source = config::File::from(path)
        .format(config::FileFormat::Yaml)
        .required(true);
    collect(config::Config::builder().add_source(source))
}

/// The `BCW_` variables as a tree: `BCW_A__B_C=v` is `a.b_c = "v"` (keys lowercased, values
/// strings: the lenient deserializers type them, so `0123` keeps its leading zero).
fn read_env(env: &BTreeMap<String, String>) -> Result<Value, String> {
    let vars: config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("BCW_") && !NON_CONFIG_ENV.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let source = config::Environment::with_prefix("BCW")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(false)
        .source(Some(vars));
    collect(config::Config::builder().add_source(source))
}

fn collect(builder: config::ConfigBuilder<config::builder::DefaultState>) -> Result<Value, String> {
    builder
        .build()
        .and_then(|c| c.try_deserialize::<Value>())
        .map_err(|e| e.to_string())
}

/// Types the merged tree. Every section and every executor block is typed on its own, and a
/// failing one is searched down to the keys that fail, so that one bad value hides no other.
/// Failing values are then removed (their defaults apply) so that validation can still run.
fn typed(mut tree: Value) -> (Option<Settings>, Vec<ConfigIssue>) {
    let mut errors = Vec::new();
    if let Value::Object(sections) = &tree {
        for (section, value) in sections {
            let node = child_node(schema::root(), section);
            match (node, value) {
                (Node::Executors { named, block }, Value::Object(blocks)) => {
                    for (name, value) in blocks {
                        let at = [section.as_str(), name.as_str()];
                        if named.iter().any(|f| f.name == *name) {
                            let wrap = |v: Value| json!({ section.as_str(): { name.as_str(): v } });
                            find_errors::<Settings>(value, &Node::Leaf, &at, &wrap, &mut errors);
                        } else {
                            find_errors::<ExecutorConfig>(value, block, &at, &|v| v, &mut errors);
                        }
                    }
                }
                _ => {
                    let wrap = |v: Value| json!({ section.as_str(): v });
                    find_errors::<Settings>(value, node, &[section], &wrap, &mut errors);
                }
            }
        }
    }
    for (path, _) in &errors {
        remove_path(&mut tree, path);
    }
    let issues: Vec<ConfigIssue> = errors
        .into_iter()
        .map(|(path, message)| ConfigIssue::new(path.join("."), message))
        .collect();
    match serde_json::from_value::<Settings>(tree) {
        Ok(settings) => (Some(settings), issues),
        Err(e) if issues.is_empty() => (
            None,
            vec![ConfigIssue::new("(configuration)", e.to_string())],
        ),
        Err(_) => (None, issues),
    }
}

/// The schema node of a (canonical) key of a struct; anything unknown is opaque.
fn child_node(fields: &'static [schema::Field], key: &str) -> &'static Node {
    static OPAQUE: Node = Node::Leaf;
    fields
        .iter()
        .find(|f| f.name == key)
        .map_or(&OPAQUE, |f| &f.node)
}

/// Records `(path, message)` for the smallest parts of `value` that do not type as part of `T`.
/// `wrap` puts a value back at its place in a `T`; every struct has serde defaults, so a tree
/// holding only that value types unless the value itself is wrong. Only structs and maps are
/// searched: a scalar, a list or an opaque value is wrong as a whole.
fn find_errors<T: DeserializeOwned>(
    value: &Value,
    node: &'static Node,
    path: &[&str],
    wrap: &dyn Fn(Value) -> Value,
    errors: &mut Vec<(Vec<String>, String)>,
) {
    let Err(e) = serde_json::from_value::<T>(wrap(value.clone())) else {
        return;
    };
    let children = match (node, value) {
        (Node::Struct(_) | Node::Map, Value::Object(children)) => Some(children),
        _ => None,
    };
    if let Some(children) = children {
        let before = errors.len();
        for (key, child) in children {
            let child_node = match node {
                Node::Struct(fields) => child_node(fields, key),
                _ => &Node::Leaf,
            };
            let sub = |v: Value| wrap(json!({ key.as_str(): v }));
            let mut sub_path = path.to_vec();
            sub_path.push(key);
            find_errors::<T>(child, child_node, &sub_path, &sub, errors);
        }
        if errors.len() > before {
            return;
        }
    }
    let last = path.last().copied().unwrap_or_default();
    let message = if matches!(last, "url" | "password" | "token") {
        // Never echo what was given for a secret.
        "expected a string".to_string()
    } else {
        e.to_string()
    };
    errors.push((path.iter().map(|s| s.to_string()).collect(), message));
}

fn remove_path(tree: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = tree;
    for p in parents {
        match node.get_mut(p) {
            Some(next) => node = next,
            None => return,
        }
    }
    if let Value::Object(m) = node {
        m.remove(last);
    }
}

#[cfg(test)]
#[path = "load_tests.rs"]
pub(crate) mod tests;
