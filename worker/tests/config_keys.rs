//! `docs/config-keys.md`, every configuration key with its type, environment variable and
//! meaning, is generated from the typed model (its JSON Schema, doc comments included), the same
//! schema the loader derives its key tree from: this test regenerates it and fails when the
//! checked-in file differs, so a field added to the model is documented by its doc comment.
//!
//! To update the file after changing the model:
//! `BCW_UPDATE_DOCS=1 cargo test -p buildcluster-worker --test config_keys`

use std::path::Path;

use buildcluster_worker::config::key_reference;

const UPDATE_COMMAND: &str =
    "BCW_UPDATE_DOCS=1 cargo test -p buildcluster-worker --test config_keys";

#[test]
fn the_configuration_key_reference_is_generated_from_the_model() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config-keys.md");
    let fresh = key_reference();
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
    let text = key_reference();
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
