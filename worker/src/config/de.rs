//! Lenient deserializers for configuration values.
//!
//! Values arrive from YAML (typed) and from environment variables (always strings), and the
//! Screwdriver configuration writes numbers and booleans as strings ("20", "true"). These helpers
//! accept both forms for one field, and take durations either as a bare integer in the unit the
//! key implies or as a humantime string ("30s", "2m").

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A number written as a JSON number or as a numeric string.
pub fn number<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match Value::deserialize(d)? {
        Value::String(s) => s
            .trim()
            .parse::<T>()
            .map_err(|e| D::Error::custom(format!("expected a number, got {s:?} ({e})"))),
        other => serde_json::from_value(other.clone())
            .map_err(|_| D::Error::custom(format!("expected a number, got {other}"))),
    }
}

/// Like [`number`] for an optional field (`null` or absent is `None`).
pub fn opt_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        v => number(v).map(Some).map_err(D::Error::custom),
    }
}

/// A boolean written as `true`/`false` or as one of the strings Screwdriver accepts
/// (`true`/`false`, `yes`/`no`, `on`/`off`, `y`/`n`, `1`/`0`).
pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(b) => Ok(b),
        Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "on" | "1" => Ok(true),
            "false" | "no" | "n" | "off" | "0" | "" => Ok(false),
            _ => Err(D::Error::custom(format!("expected a boolean, got {s:?}"))),
        },
        other => Err(D::Error::custom(format!("expected a boolean, got {other}"))),
    }
}

/// A string; numbers are accepted and written out (YAML turns `version: 2` into a number).
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Null => Ok(String::new()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(D::Error::custom(format!("expected a string, got {other}"))),
    }
}

/// A structured value (list or map) that may also arrive as a JSON string, which is how the
/// Screwdriver environment mapping passes `K8S_NODE_SELECTORS` and friends. A list also accepts
/// a comma-separated string.
pub fn structured<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let v = Value::deserialize(d)?;
    let v = match v {
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() {
                return serde_json::from_value(Value::Null)
                    .or_else(|_| serde_json::from_value(Value::Array(vec![])))
                    .or_else(|_| serde_json::from_value(Value::Object(Default::default())))
                    .map_err(D::Error::custom);
            }
            match serde_json::from_str::<Value>(t) {
                Ok(parsed @ (Value::Array(_) | Value::Object(_))) => parsed,
                _ => Value::Array(
                    t.split(',')
                        .map(|p| Value::String(p.trim().to_string()))
                        .filter(|p| p.as_str() != Some(""))
                        .collect(),
                ),
            }
        }
        // Null stays null where the target can hold it (an opaque value), else it is empty.
        Value::Null => {
            return serde_json::from_value(Value::Null)
                .or_else(|_| serde_json::from_value(Value::Array(vec![])))
                .or_else(|_| serde_json::from_value(Value::Object(Default::default())))
                .map_err(D::Error::custom);
        }
        other => other,
    };
    serde_json::from_value(v).map_err(D::Error::custom)
}

/// A map of strings whose values may be numbers or booleans in YAML (`weight: 2`).
pub fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw: BTreeMap<String, Value> = structured(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(D::Error::custom(format!(
                        "value of {k:?} must be a string, got {other}"
                    )));
                }
            };
            Ok((k, s))
        })
        .collect()
}

fn duration_in(v: Value, unit: Duration, what: &str) -> Result<Duration, String> {
    match v {
        Value::Number(n) => {
            let f = n
                .as_f64()
                .ok_or_else(|| format!("expected a duration, got {n}"))?;
            if !(0.0..=1e12).contains(&f) {
                return Err(format!("duration {n} {what} is out of range"));
            }
            Ok(unit.mul_f64(f))
        }
        Value::String(s) => {
            let t = s.trim();
            if let Ok(f) = t.parse::<f64>() {
                return duration_in(
                    serde_json::Number::from_f64(f)
                        .map(Value::Number)
                        .ok_or_else(|| format!("expected a duration, got {s:?}"))?,
                    unit,
                    what,
                );
            }
            humantime::parse_duration(t)
                .map_err(|e| format!("expected a duration like \"30s\", got {s:?} ({e})"))
        }
        other => Err(format!("expected a duration, got {other}")),
    }
}

macro_rules! duration_fn {
    ($name:ident, $opt:ident, $unit:expr, $what:literal) => {
        #[doc = concat!("A duration: an integer in ", $what, ", or a humantime string.")]
        pub fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            duration_in(Value::deserialize(d)?, $unit, $what).map_err(D::Error::custom)
        }
        #[doc = concat!("An optional duration: an integer in ", $what, ", or a humantime string.")]
        pub fn $opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            match Value::deserialize(d)? {
                Value::Null => Ok(None),
                Value::String(s) if s.trim().is_empty() => Ok(None),
                v => duration_in(v, $unit, $what)
                    .map(Some)
                    .map_err(D::Error::custom),
            }
        }
    };
}

duration_fn!(millis, opt_millis, Duration::from_millis(1), "milliseconds");
duration_fn!(seconds, opt_seconds, Duration::from_secs(1), "seconds");
duration_fn!(minutes, opt_minutes, Duration::from_secs(60), "minutes");

/// A list of durations (integers are seconds), or one comma-separated string.
pub fn seconds_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let items: Vec<Value> = structured(d)?;
    items
        .into_iter()
        .map(|v| duration_in(v, Duration::from_secs(1), "seconds").map_err(D::Error::custom))
        .collect()
}

/// Serialises a duration as a humantime string, for `check-config` output.
pub fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// Serialises an optional duration as a humantime string.
pub fn ser_opt_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

/// Serialises a list of durations as humantime strings.
pub fn ser_durations<S: serde::Serializer>(d: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(d.len()))?;
    for x in d {
        seq.serialize_element(&humantime::format_duration(*x).to_string())?;
    }
    seq.end()
}
