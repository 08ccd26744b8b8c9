//! How `dead` prints dead letters: a table or JSON for `list`, every detail for `show`. A build
//! token in a body is never printed.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::Output;
use super::browse::Browse;
use super::letter::DeadLetter;

/// `start build 987654 (no_executor)`, for one line about a dead letter.
pub fn describe(d: &DeadLetter) -> String {
    let job = d.job.as_deref().unwrap_or("message");
    let build = d
        .build_id
        .map(|b| format!(" build {b}"))
        .unwrap_or_default();
    let reason = d.reason.as_deref().unwrap_or("no reason recorded");
    format!("#{} {job}{build} ({reason})", d.position)
}

/// A dead letter with its age, as JSON shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Row<'a> {
    #[serde(flatten)]
    letter: &'a DeadLetter,
    age_seconds: Option<u64>,
}

fn row(d: &DeadLetter, now_ms: i64) -> Row<'_> {
    Row {
        letter: d,
        age_seconds: d.age(now_ms).map(|a| a.as_secs()),
    }
}

/// `list`: the matching dead letters.
pub fn list(browse: &Browse, matched: &[usize], output: Output, now_ms: i64) {
    let letters = matched.iter().map(|&i| &browse.held[i].letter);
    if output == Output::Json {
        let rows: Vec<Row<'_>> = letters.map(|d| row(d, now_ms)).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("rows serialise")
        );
        return;
    }
    println!(
        "{:<5} {:<12} {:<7} {:<24} {:>8} {:>8}  ERROR",
        "POS", "BUILD", "JOB", "REASON", "ATTEMPTS", "AGE"
    );
    for d in letters {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let error: String = d
            .error
            .clone()
            .unwrap_or_default()
            .chars()
            .take(120)
            .collect();
        println!(
            "{:<5} {:<12} {:<7} {:<24} {:>8} {:>8}  {error}",
            d.position,
            or_dash(d.build_id.map(|b| b.to_string())),
            or_dash(d.job.clone()),
            or_dash(d.reason.clone()),
            or_dash(d.attempts.map(|a| a.to_string())),
            or_dash(d.age(now_ms).map(short_age)),
        );
    }
    println!(
        "{} of {} dead letters read match",
        matched.len(),
        browse.held.len()
    );
}

/// `show`: every detail of the matching dead letters.
pub fn show(browse: &Browse, matched: &[usize], output: Output, now_ms: i64) {
    let details: Vec<Value> = matched
        .iter()
        .map(|&i| {
            let held = &browse.held[i];
            let mut v = serde_json::to_value(row(&held.letter, now_ms)).expect("a row serialises");
            let headers = held
                .delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default();
            v["headers"] = table_json(&headers);
            v["body"] = masked_body(&held.delivery.data);
            v
        })
        .collect();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&details).expect("JSON")),
        Output::Text => {
            for (n, d) in details.iter().enumerate() {
                if n > 0 {
                    println!();
                }
                println!("{}", serde_json::to_string_pretty(d).expect("JSON"));
            }
        }
    }
}

/// `42s`, `5m`, `3h05m`, `2d04h`.
fn short_age(age: Duration) -> String {
    let s = age.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// The body as JSON with every token-like field masked, or as text when it is not JSON.
fn masked_body(body: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(body) {
        Ok(mut v) => {
            mask(&mut v);
            v
        }
        Err(_) => json!(format!(
            "(not JSON, {} bytes: {})",
            body.len(),
            masked_text(&String::from_utf8_lossy(&body[..body.len().min(500)]))
        )),
    }
}

/// Text that is not JSON (a poison body) with the value after any token-like key masked,
/// however broken the rest is.
fn masked_text(text: &str) -> String {
    static SECRET: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = SECRET.get_or_init(|| {
        regex::Regex::new(
            r#"(?i)("[^"]*(?:token|password|secret)[^"]*"\s*:\s*)("[^"]*"?|[^,}\s]*)"#,
        )
        .expect("a valid pattern")
    });
    re.replace_all(text, r#"${1}"***""#).into_owned()
}

/// Replaces the value of every key that names a secret (`token`, `password`, `secret`).
fn mask(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let k = k.to_ascii_lowercase();
                if ["token", "password", "secret"]
                    .iter()
                    .any(|s| k.contains(s))
                {
                    *child = json!("***");
                } else {
                    mask(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}

fn table_json(t: &FieldTable) -> Value {
    let map: Map<String, Value> = t
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), amqp_json(v)))
        .collect();
    Value::Object(map)
}

fn amqp_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_json).collect()),
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::Timestamp(t) => json!(t),
        other => crate::broker::headers::as_i64(other)
            .map(|n| json!(n))
            .or_else(|| crate::broker::headers::as_string(other).map(|s| json!(s)))
            .unwrap_or_else(|| json!(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_masked_wherever_they_sit() {
        let body = br#"{"job": "start", "buildConfig": {"buildId": 1, "token": "eyJ.secret",
            "nested": [{"apiToken": "x", "password": "y", "keep": "z"}]}}"#;
        let v = masked_body(body);
        let text = v.to_string();
        assert!(
            !text.contains("eyJ.secret") && !text.contains("\"x\"") && !text.contains("\"y\""),
            "{text}"
        );
        assert_eq!(v["buildConfig"]["token"], "***");
        assert_eq!(v["buildConfig"]["nested"][0]["keep"], "z");
        assert!(
            masked_body(b"\xff not json")
                .as_str()
                .unwrap()
                .starts_with("(not JSON, ")
        );
        let broken = masked_body(br#"{"job": "start", "buildConfig": {"token": "eyJ.cut-off"#);
        let broken = broken.as_str().unwrap();
        assert!(
            !broken.contains("eyJ") && broken.contains(r#""token": "***""#),
            "{broken}"
        );
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(short_age(Duration::from_secs(42)), "42s");
        assert_eq!(short_age(Duration::from_secs(300)), "5m");
        assert_eq!(short_age(Duration::from_secs(3600 + 300)), "1h05m");
        assert_eq!(
            short_age(Duration::from_secs(2 * 86_400 + 4 * 3600)),
            "2d04h"
        );
    }
}
