//! The configuration key reference (`docs/config-keys.md`): every key of the typed model with
//! its type, `BCW_` variable and meaning (the field's doc comment), read from the same JSON
//! Schema the loader derives its key tree from.

use serde_json::{Map, Value};

use super::schema::{camel, model_schema, resolve};

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

/// `docs/config-keys.md`: every key of the model with its type, variable and meaning.
pub fn key_reference() -> String {
    let (schema, defs) = model_schema();
    let mut rows = Vec::new();
    walk(&schema, &defs, &[], &mut rows);
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
