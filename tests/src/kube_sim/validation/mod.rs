//! Field validation of the objects the simulated API server accepts, with the real server's
//! error types, field paths and messages.
//!
//! Owns the `field.Error` model (type, path, bad value, detail), the syntax rules of names,
//! labels and annotations, and per-kind validation in the submodules. Pure: it never stores
//! anything and never decides HTTP codes (the API layer turns errors into a 422 `Status`).

mod container;
mod meta;
mod objects;
mod pod;

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

pub use meta::{validate_object_meta, validate_update_meta};
pub use objects::{validate_lease, validate_secret};
pub use pod::{validate_pod_create, validate_pod_update};

/// The machine-readable type of a field error (`StatusCause.reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// FieldValueNotFound.
    NotFound,
    /// FieldValueRequired.
    Required,
    /// FieldValueDuplicate.
    Duplicate,
    /// FieldValueInvalid.
    Invalid,
    /// FieldValueNotSupported.
    NotSupported,
    /// FieldValueForbidden.
    Forbidden,
    /// FieldValueTooLong.
    TooLong,
}

impl ErrorKind {
    /// The `CauseType` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "FieldValueNotFound",
            Self::Required => "FieldValueRequired",
            Self::Duplicate => "FieldValueDuplicate",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong => "FieldValueTooLong",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::NotFound => "Not found",
            Self::Required => "Required value",
            Self::Duplicate => "Duplicate value",
            Self::Invalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Forbidden => "Forbidden",
            Self::TooLong => "Too long",
        }
    }

    /// Types whose message never shows the bad value.
    fn omits_value(self) -> bool {
        matches!(self, Self::Required | Self::Forbidden | Self::TooLong)
    }
}

/// The offending value as Go's `%q` / `%v` would print it.
#[derive(Clone, Debug, PartialEq)]
pub enum BadValue {
    /// A string, printed quoted.
    Str(String),
    /// A number, printed bare.
    Int(i64),
    /// Already formatted (e.g. `0x0`, a struct dump).
    Raw(String),
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Str(s) => write!(f, "{s:?}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Raw(r) => f.write_str(r),
        }
    }
}

/// One field-level validation error.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    /// Error type.
    pub kind: ErrorKind,
    /// Field path, e.g. `spec.containers[0].image`.
    pub field: String,
    /// The offending value.
    pub value: BadValue,
    /// Explanation appended to the message.
    pub detail: String,
}

impl FieldError {
    fn new(
        kind: ErrorKind,
        field: impl Into<String>,
        value: BadValue,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            field: field.into(),
            value,
            detail: detail.into(),
        }
    }

    /// `Required value`.
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::Required,
            field,
            BadValue::Str(String::new()),
            detail,
        )
    }

    /// `Invalid value: "x": detail`.
    pub fn invalid(
        field: impl Into<String>,
        value: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(
            ErrorKind::Invalid,
            field,
            BadValue::Str(value.into()),
            detail,
        )
    }

    /// `Invalid value: 0: detail`.
    pub fn invalid_int(field: impl Into<String>, value: i64, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, field, BadValue::Int(value), detail)
    }

    /// `Invalid value: <raw>: detail`.
    pub fn invalid_raw(
        field: impl Into<String>,
        raw: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(ErrorKind::Invalid, field, BadValue::Raw(raw.into()), detail)
    }

    /// `Unsupported value: "x": supported values: "a", "b"`.
    pub fn not_supported(
        field: impl Into<String>,
        value: impl Into<String>,
        supported: &[&str],
    ) -> Self {
        let detail = if supported.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self::new(
            ErrorKind::NotSupported,
            field,
            BadValue::Str(value.into()),
            detail,
        )
    }

    /// `Duplicate value: "x"`.
    pub fn duplicate(field: impl Into<String>, value: impl Into<String>) -> Self {
        Self::new(ErrorKind::Duplicate, field, BadValue::Str(value.into()), "")
    }

    /// `Not found: "x"`.
    pub fn not_found(field: impl Into<String>, value: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, field, BadValue::Str(value.into()), "")
    }

    /// `Forbidden: detail`.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::Forbidden,
            field,
            BadValue::Str(String::new()),
            detail,
        )
    }

    /// `Too long: must have at most N bytes`.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self::new(
            ErrorKind::TooLong,
            field,
            BadValue::Str(String::new()),
            format!("must have at most {max} bytes"),
        )
    }

    /// The message without the field (`StatusCause.message`).
    pub fn body(&self) -> String {
        let mut s = if self.kind.omits_value() {
            self.kind.label().to_owned()
        } else {
            format!("{}: {}", self.kind.label(), self.value)
        };
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// Validation errors in the order the real validators produce them.
pub type ErrorList = Vec<FieldError>;

fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut s = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        s.push_str(&format!("'{e}', "));
    }
    s.push_str(&format!("regex used for validation is '{fmt}')"));
    s
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const LABEL_KEY_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const CONFIG_KEY_FMT: &str = "[-._a-zA-Z0-9]+";

fn anchored(fmt: &str) -> Regex {
    Regex::new(&format!("^{fmt}$")).expect("static regex")
}

static DNS1123_LABEL: LazyLock<Regex> = LazyLock::new(|| anchored(DNS1123_LABEL_FMT));
static DNS1123_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| anchored(DNS1123_SUBDOMAIN_FMT));
static LABEL_KEY: LazyLock<Regex> = LazyLock::new(|| anchored(LABEL_KEY_FMT));
static LABEL_VALUE: LazyLock<Regex> = LazyLock::new(|| anchored(LABEL_VALUE_FMT));
static CONFIG_KEY: LazyLock<Regex> = LazyLock::new(|| anchored(CONFIG_KEY_FMT));

/// apimachinery `IsDNS1123Label`.
pub fn is_dns1123_label(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !DNS1123_LABEL.is_match(v) {
        if DNS1123_SUBDOMAIN.is_match(v) {
            errs.push("must not contain dots".to_owned());
        } else {
            errs.push(regex_error(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// apimachinery `IsDNS1123Subdomain`.
pub fn is_dns1123_subdomain(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 253 {
        errs.push(max_len_error(253));
    }
    if !DNS1123_SUBDOMAIN.is_match(v) {
        errs.push(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// apimachinery `IsQualifiedName` (label and annotation keys).
pub fn is_qualified_name(v: &str) -> Vec<String> {
    const KEY_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
    let mut errs = Vec::new();
    let parts: Vec<&str> = v.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                errs.extend(
                    is_dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(KEY_MSG, LABEL_KEY_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_error(63)));
    }
    if !LABEL_KEY.is_match(name) {
        errs.push(format!(
            "name part {}",
            regex_error(KEY_MSG, LABEL_KEY_FMT, &["MyName", "my.name", "123-abc"])
        ));
    }
    errs
}

/// apimachinery `IsValidLabelValue`.
pub fn is_label_value(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !LABEL_VALUE.is_match(v) {
        errs.push(regex_error(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// apimachinery `IsConfigMapKey` (Secret and ConfigMap data keys).
pub fn is_config_map_key(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 253 {
        errs.push(max_len_error(253));
    }
    if !CONFIG_KEY.is_match(v) {
        errs.push(regex_error(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            CONFIG_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    match v {
        "." => errs.push("must not be '.'".to_owned()),
        ".." => errs.push("must not be '..'".to_owned()),
        _ if v.starts_with("..") => errs.push("must not start with '..'".to_owned()),
        _ => {}
    }
    errs
}

/// apimachinery `IsRelaxedEnvVarName` (the rule since RelaxedEnvironmentVariableValidation
/// became default in 1.32).
pub fn is_env_var_name(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.is_empty() {
        errs.push("environment variable name must be non-empty".to_owned());
    }
    if v.chars()
        .any(|c| !c.is_ascii() || c.is_ascii_control() || c == '=')
    {
        errs.push("a valid environment variable name must consist only of printable ASCII characters other than '='".to_owned());
    }
    errs
}

/// Appends one `Invalid` error per message.
pub(crate) fn push_invalid(errs: &mut ErrorList, field: &str, value: &str, msgs: Vec<String>) {
    errs.extend(
        msgs.into_iter()
            .map(|m| FieldError::invalid(field, value, m)),
    );
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn invalid_name_message_matches_apimachinery() {
        let e = FieldError::invalid(
            "metadata.name",
            "Bad_Name",
            is_dns1123_subdomain("Bad_Name").remove(0),
        );
        assert_eq!(
            e.to_string(),
            "metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        );
    }

    #[test]
    fn bodies_of_each_kind() {
        assert_eq!(
            FieldError::required("spec.containers", "").body(),
            "Required value"
        );
        assert_eq!(
            FieldError::not_supported(
                "spec.restartPolicy",
                "Sometimes",
                &["Always", "OnFailure", "Never"]
            )
            .body(),
            "Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""
        );
        assert_eq!(
            FieldError::invalid_int(
                "spec.activeDeadlineSeconds",
                0,
                "must be between 1 and 2147483647, inclusive"
            )
            .body(),
            "Invalid value: 0: must be between 1 and 2147483647, inclusive"
        );
        assert_eq!(
            FieldError::too_long("metadata.annotations", 262144).body(),
            "Too long: must have at most 262144 bytes"
        );
        assert_eq!(
            FieldError::not_found("spec.containers[0].volumeMounts[0].name", "v").body(),
            "Not found: \"v\""
        );
    }

    #[test]
    fn qualified_names() {
        assert!(is_qualified_name("app.kubernetes.io/managed-by").is_empty());
        assert!(is_qualified_name("sdbuild").is_empty());
        assert_eq!(
            is_qualified_name("/x"),
            vec!["prefix part must be non-empty".to_owned()]
        );
        assert_eq!(is_qualified_name("a/b/c").len(), 1);
        assert!(!is_qualified_name("-x").is_empty());
    }

    proptest! {
        #[test]
        fn dns_labels_are_also_subdomains(s in "[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?") {
            prop_assert!(is_dns1123_label(&s).is_empty());
            prop_assert!(is_dns1123_subdomain(&s).is_empty());
        }

        #[test]
        fn label_values_over_63_bytes_are_rejected(s in "[a-z]{64,80}") {
            prop_assert!(!is_label_value(&s).is_empty());
        }

        #[test]
        fn uppercase_never_makes_a_subdomain(s in "[a-z]{0,5}[A-Z][a-z]{0,5}") {
            prop_assert!(!is_dns1123_subdomain(&s).is_empty());
        }
    }
}
