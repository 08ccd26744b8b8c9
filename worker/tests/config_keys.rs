//! `docs/config-keys.md`, every configuration key with its type, environment variable and
//! meaning, is generated from the typed model (its JSON Schema, doc comments included), the same
//! schema the loader derives its key tree from: this test regenerates it and fails when the
//! checked-in file differs, so a field added to the model is documented by its doc comment.
//!
//! To update the file after changing the model:
//! `BCW_UPDATE_DOCS=1 cargo test -p buildcluster-worker --test config_keys`

use std::path::Path;

use buildcluster_worker::config::Settings;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value};

const UPDATE_COMMAND: &str =
    "BCW_UPDATE_DOCS=1 cargo test -p buildcluster-worker --test config_keys";

/// One key of the reference.
struct Row {
    /// The snake_case names from the root.
    path: Vec<String>,
    ty: String,
    meaning: String,
}

impl Row {
    fn key(&self) -> String {
        self.path
            .iter()
            .map(|s| camel(s))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn variable(&self) -> String {
        let parts: Vec<String> = self.path.iter().map(|s| s.to_uppercase()).collect();
        format!("BCW_{}", parts.join("__"))
    }
}

fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

/// The schema behind a `$ref`, without the `null` of an `Option`.
fn resolve<'a>(schema: &'a Value, defs: &'a Map<String, Value>) -> &'a Value {
    if let Some(name) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        return defs.get(name).map_or(schema, |d| resolve(d, defs));
    }
    let alternatives = ["anyOf", "oneOf"]
        .iter()
        .find_map(|k| schema.get(*k).and_then(Value::as_array));
    if let Some(alts) = alternatives {
        let not_null: Vec<&Value> = alts
            .iter()
            .filter(|s| s.get("type").and_then(Value::as_str) != Some("null"))
            .collect();
        if let [only] = not_null[..] {
            return resolve(only, defs);
        }
    }
    schema
}

/// A short name of a value's type: its allowed values, or its JSON type.
fn type_of(schema: &Value, defs: &Map<String, Value>) -> String {
    let s = resolve(schema, defs);
    let props = s.get("properties").and_then(Value::as_object);
    if props.is_some_and(|p| p.contains_key("secs") && p.contains_key("nanos")) {
        return "duration".into();
    }
    if props.is_none() && s.get("additionalProperties").is_some() {
        return "map".into();
    }
    let consts: Vec<String> = ["oneOf", "anyOf"]
        .iter()
        .filter_map(|k| s.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(|alt| alt.get("const").or_else(|| alt.get("enum")?.get(0)))
        .map(|v| format!("`{}`", v.as_str().map_or(v.to_string(), str::to_string)))
        .collect();
    if let Some(values) = s.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = values
            .iter()
            .map(|v| format!("`{}`", v.as_str().unwrap_or("?")))
            .collect();
        return names.join(" \\| ");
    }
    if !consts.is_empty() {
        return consts.join(" \\| ");
    }
    match s.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ if s.get("properties").is_some() => "object".into(),
        _ => "any".into(),
    }
}

/// A property's description, on one line.
fn meaning(schema: &Value, defs: &Map<String, Value>) -> String {
    let described = schema
        .get("description")
        .or_else(|| resolve(schema, defs).get("description"));
    described
        .and_then(Value::as_str)
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// Every key below `schema`, depth first in the model's order.
fn walk(schema: &Value, defs: &Map<String, Value>, path: &[String], out: &mut Vec<Row>) {
    let s = resolve(schema, defs);
    let Some(props) = s.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, prop) in props {
        let mut here = path.to_vec();
        here.push(name.clone());
        let inner = resolve(prop, defs);
        let checked = inner.get("additionalProperties") == Some(&Value::Bool(false));
        let block = inner.get("additionalProperties").filter(|b| b.is_object());
        if inner.get("properties").is_some() && checked {
            walk(prop, defs, &here, out);
        } else if let (Some(_), Some(block)) = (inner.get("properties"), block) {
            // `executor:` — named keys, then one block per executor.
            walk(prop, defs, &here, out);
            let mut each = here.clone();
            each.push("<name>".into());
            walk(block, defs, &each, out);
        } else {
            out.push(Row {
                path: here,
                ty: type_of(prop, defs),
                meaning: meaning(prop, defs),
            });
        }
    }
}

fn render() -> String {
    let schema = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<Settings>();
    let empty = Map::new();
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut rows = Vec::new();
    walk(schema.as_value(), defs, &[], &mut rows);
    let mut out = String::from(
        "# Configuration keys\n\n\
         Every key the worker reads, generated from its typed model (`worker/src/config/model.rs`,\n\
         the doc comments of its fields) by `worker/tests/config_keys.rs`; do not edit by hand.\n\
         Defaults, units and the rules between keys are in [interface.md](interface.md) §2. Keys\n\
         are shown in Screwdriver's camelCase; snake_case and the `BCW_` variable (path segments\n\
         joined by `__`) mean the same key. `<name>` is an executor's name.\n\n\
         | key | type | variable | meaning |\n|---|---|---|---|\n",
    );
    for r in &rows {
        out.push_str(&format!(
            "| `{}` | {} | `{}` | {} |\n",
            r.key(),
            r.ty,
            r.variable(),
            r.meaning
        ));
    }
    out
}

#[test]
fn the_configuration_key_reference_is_generated_from_the_model() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config-keys.md");
    let fresh = render();
    if std::env::var_os("BCW_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &fresh).expect("write docs/config-keys.md");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == fresh,
        "docs/config-keys.md differs from the model; update it with `{UPDATE_COMMAND}`"
    );
}

#[test]
fn every_key_has_a_type_and_a_meaning() {
    let text = render();
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| `")).collect();
    assert!(rows.len() > 50, "{} keys", rows.len());
    for key in [
        "`rabbitmq.prefetchCount`",
        "`executor.<name>.options.kubernetes.podTtl`",
        "`lifecycle.resyncInterval`",
    ] {
        assert!(
            rows.iter().any(|r| r.starts_with(&format!("| {key}"))),
            "{key} missing"
        );
    }
    let undescribed: Vec<&&str> = rows.iter().filter(|r| r.ends_with("|  |")).collect();
    assert!(
        undescribed.is_empty(),
        "keys without a meaning: {undescribed:?}"
    );
}
