//! The effective configuration as YAML, for `check-config` and the start-up log.
//!
//! Owns the shape of that output: the configuration layout (executor blocks under their names,
//! the default executor resolved), durations as humantime strings, every secret masked. It never
//! prints a password, a token, or the password inside a URL.

use serde_json::{Map, Value};

use super::credentials::mask_url;
use super::model::{DEFAULT_EXECUTOR_KEY, Settings};

/// The effective configuration as YAML; loading it again gives the same settings, secrets
/// aside (they read `***`).
pub fn render_effective(settings: &Settings) -> String {
    let mut tree = serde_json::to_value(settings).unwrap_or_else(|_| Value::Object(Map::new()));

    let mut executor = Map::new();
    executor.insert(
        DEFAULT_EXECUTOR_KEY.into(),
        Value::String(settings.executor.default_executor().to_string()),
    );
    for (name, block) in &settings.executor.executors {
        executor.insert(
            name.clone(),
            serde_json::to_value(block).unwrap_or(Value::Null),
        );
    }
    if let Some(slot) = tree.get_mut("executor") {
        *slot = Value::Object(executor);
    }
    // The whole URL serialises as a mask; showing where it points helps, its password must not.
    if let (Some(url), Some(slot)) = (
        settings.rabbitmq.explicit_url(),
        tree.pointer_mut("/rabbitmq/url"),
    ) {
        *slot = Value::String(mask_url(url));
    }
    mask_urls(&mut tree);

    serde_saphyr::to_string(&tree)
        .unwrap_or_else(|_| serde_json::to_string_pretty(&tree).unwrap_or_default())
}

/// Masks the password of any URL anywhere in the tree (an ecosystem URL, a cluster host).
fn mask_urls(v: &mut Value) {
    match v {
        Value::String(s) if s.contains("://") => *s = mask_url(s),
        Value::Array(items) => items.iter_mut().for_each(mask_urls),
        Value::Object(m) => m.values_mut().for_each(mask_urls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ExecutorConfig, LoadOptions, load};
    use crate::secret::Secret;
    use std::collections::BTreeMap;

    fn settings_with_secrets() -> Settings {
        let mut s = Settings::default();
        s.rabbitmq.url = Some(Secret::new("amqp://guest:url-SECRET-789@rabbit:5672/%2f"));
        s.rabbitmq.password = Secret::new("pw-SECRET-456");
        let mut k8s = ExecutorConfig::default();
        k8s.options.kubernetes.host = "https://admin:host-SECRET-111@10.0.0.1:6443".into();
        k8s.options.kubernetes.token = Secret::new("tok-SECRET-123");
        s.executor.executors.push(("k8s".into(), k8s));
        s
    }

    #[test]
    fn no_secret_value_appears_in_the_output() {
        let out = render_effective(&settings_with_secrets());
        for secret in [
            "url-SECRET-789",
            "pw-SECRET-456",
            "tok-SECRET-123",
            "host-SECRET-111",
        ] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        assert!(out.contains("amqp://guest:***@rabbit:5672/%2f"), "{out}");
        assert!(out.contains("https://admin:***@10.0.0.1:6443"), "{out}");
    }

    #[test]
    fn executors_are_shown_in_the_configuration_layout_with_the_default_resolved() {
        let out = render_effective(&settings_with_secrets());
        let tree: Value = serde_saphyr::from_str(&out).unwrap();
        assert_eq!(tree["executor"]["plugin"], "k8s");
        assert_eq!(tree["executor"]["k8s"]["plugin_name"], "k8s");
        assert_eq!(tree["rabbitmq"]["max_wait"], "1h");
    }

    #[test]
    fn the_output_loads_back_to_the_same_settings() {
        let mut s = settings_with_secrets();
        s.rabbitmq.url = Some(Secret::new("amqp://guest:guest@rabbit:5672/%2f"));
        s.executor.executors[0].1.options.kubernetes.host = "https://10.0.0.1:6443".into();
        s.executor.executors[0].1.options.kubernetes.token = Secret::default();
        s.executor.executors[0].1.exclusions = vec!["rhel6".into()];
        s.executor.executors[0].1.options.kubernetes.node_selectors =
            BTreeMap::from([("dedicated".to_string(), "ci".to_string())]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("effective.yaml");
        std::fs::write(&path, render_effective(&s)).unwrap();
        let loaded = load(&LoadOptions {
            path: Some(path),
            ..LoadOptions::default()
        })
        .unwrap();
        // Secrets read *** after the round trip, and render as *** either way.
        assert_eq!(render_effective(&loaded), render_effective(&s));
        assert_eq!(loaded.rabbitmq.retry_delays, s.rabbitmq.retry_delays);
        assert_eq!(loaded.executor.executors[0].1.exclusions, ["rhel6"]);
    }
}
