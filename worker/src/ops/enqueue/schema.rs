//! The inbound message schemas of `schemas/messages/`, compiled into the binary, so that
//! `enqueue` refuses what the worker would dead-letter before anything is sent.

use serde_json::Value;

/// Base of the message schemas' `$id`s.
const BASE: &str = "https://buildcluster.dev/schemas/messages/";

/// Each schema file with its text.
const FILES: [(&str, &str); 4] = [
    (
        "start.schema.json",
        include_str!("../../../../schemas/messages/start.schema.json"),
    ),
    (
        "stop.schema.json",
        include_str!("../../../../schemas/messages/stop.schema.json"),
    ),
    (
        "clear.schema.json",
        include_str!("../../../../schemas/messages/clear.schema.json"),
    ),
    (
        "message.schema.json",
        include_str!("../../../../schemas/messages/message.schema.json"),
    ),
];

/// The message schemas with their siblings registered under their `$id`s.
#[derive(Debug)]
pub struct MessageSchema {
    /// `message.schema.json` (any message), then start, stop and clear.
    any: jsonschema::Validator,
    start: jsonschema::Validator,
    stop: jsonschema::Validator,
    clear: jsonschema::Validator,
}

impl MessageSchema {
    /// Compiles the schemas (they are part of the binary: a failure is a build defect).
    pub fn load() -> MessageSchema {
        let parse = |text: &str| -> Value {
            serde_json::from_str(text).expect("the embedded message schemas are JSON")
        };
        let resources: Vec<(String, Value)> = FILES
            .iter()
            .map(|(name, text)| (format!("{BASE}{name}"), parse(text)))
            .collect();
        let registry = jsonschema::Registry::new()
            .extend(resources)
            .expect("schema ids are URIs")
            .prepare()
            .expect("the message schemas form a registry");
        let compile = |i: usize| {
            jsonschema::options()
                .with_registry(&registry)
                .build(&parse(FILES[i].1))
                .expect("the message schemas compile")
        };
        MessageSchema {
            start: compile(0),
            stop: compile(1),
            clear: compile(2),
            any: compile(3),
        }
    }

    /// Every problem the schema finds, one sentence each. A message whose `job` is known is
    /// judged by that job's schema, so that the problems name fields (the combined schema's
    /// `oneOf` could only say that no branch fits). Values are never quoted: a token must not
    /// reach the terminal.
    pub fn problems(&self, message: &Value) -> Vec<String> {
        let validator = match message.get("job").and_then(Value::as_str) {
            Some("start" | "verify") => &self.start,
            Some("stop") => &self.stop,
            Some("clear") => &self.clear,
            _ => &self.any,
        };
        let mut problems: Vec<String> = validator
            .iter_errors(message)
            .map(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() { "/".to_string() } else { at };
                format!("at {at}: {}", e.masked_with("the value"))
            })
            .collect();
        problems.dedup();
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_embedded_schemas_are_the_files_of_schemas_messages() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/messages/");
        for (name, text) in FILES {
            let on_disk = std::fs::read_to_string(format!("{dir}{name}")).unwrap();
            assert_eq!(text, on_disk, "{name}");
        }
    }

    #[test]
    fn a_valid_start_passes_and_a_broken_one_is_explained_without_its_token() {
        let schema = MessageSchema::load();
        let ok = json!({"job": "start", "buildConfig": {"buildId": 1, "container": "node:22",
            "apiUri": "https://api.example", "token": "secret-token-123"}});
        assert!(
            schema.problems(&ok).is_empty(),
            "{:?}",
            schema.problems(&ok)
        );
        let bad = json!({"job": "start", "buildConfig": {"buildId": "x", "container": "node:22",
            "apiUri": "https://api.example", "token": 987654321}});
        let problems = schema.problems(&bad).join("\n");
        assert!(problems.contains("/buildConfig/buildId"), "{problems}");
        assert!(problems.contains("/buildConfig/token"), "{problems}");
        assert!(!problems.contains("987654321"), "{problems}");
        assert!(!schema.problems(&json!({"job": "launch"})).is_empty());
    }
}
