//! `enqueue`: publishes `start`, `stop` or `clear` messages as a producer does (to
//! `rabbitmq.exchange`, routing key = `rabbitmq.queue`, persistent, `application/json`), from
//! JSON files, standard input or flags.
//!
//! Every message is checked against `schemas/messages/` and by the worker's own decoder before
//! the first one is sent: one bad message, nothing sent. Each is published mandatory and
//! confirmed, one line each; the first failure stops the rest.

mod flags;
mod schema;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use lapin::BasicProperties;
use lapin::types::ShortString;
use serde_json::Value;

pub use flags::{JobArg, MessageFlags};
pub use schema::MessageSchema;

use super::publish::Confirmed;
use crate::config::Settings;
use crate::intake::{self, JobKind, Limits};

const EXAMPLES: &str = "\
Examples:
  # one start, built from flags (the token from a file, never from the command line)
  buildcluster-worker enqueue --config worker.yaml --build-id 42 --image node:22 \\
      --annotation screwdriver.cd/cpu=HIGH --token-file build.jwt
  # a stop for build 42
  buildcluster-worker enqueue --config worker.yaml --job stop --build-id 42
  # every message of a file (an object, an array of objects, or one object per line)
  buildcluster-worker enqueue --config worker.yaml builds.json
  cat builds.ndjson | buildcluster-worker enqueue --config worker.yaml -
  # check without sending
  buildcluster-worker enqueue --config worker.yaml --dry-run builds.json";

/// `enqueue` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct EnqueueArgs {
    /// JSON files of messages (an object, an array of objects, or one object per line); `-`
    /// reads standard input. Without files, one message is built from the flags.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The message to build from flags.
    #[command(flatten)]
    pub flags: MessageFlags,
    /// Exchange to publish to (default: rabbitmq.exchange).
    #[arg(long)]
    pub exchange: Option<String>,
    /// Routing key (default: rabbitmq.queue, which is what the pool's queue is bound with).
    #[arg(long)]
    pub routing_key: Option<String>,
    /// Check the messages and print what would be sent, without connecting.
    #[arg(long)]
    pub dry_run: bool,
}

/// One message, checked and ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// Where it came from (`builds.json #2`, `flags`).
    pub origin: String,
    /// Its job.
    pub job: JobKind,
    /// Its build, for `start`, `stop` and `verify`.
    pub build_id: Option<u64>,
    /// The bytes to publish.
    pub body: Vec<u8>,
}

impl Checked {
    fn describe(&self) -> String {
        match self.build_id {
            Some(b) => format!("{} build {b}", self.job.as_str()),
            None => self.job.as_str().to_string(),
        }
    }
}

/// Reads every message of `text`: one JSON value, an array of them, or several values one
/// after the other (JSON lines).
pub fn parse_documents(text: &str, origin: &str) -> Result<Vec<(String, Value)>, String> {
    let mut out = Vec::new();
    let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    for value in stream {
        let value = value.map_err(|e| format!("{origin}: not JSON: {e}"))?;
        match value {
            Value::Array(items) => {
                for item in items {
                    out.push((format!("{origin} #{}", out.len() + 1), item));
                }
            }
            other => out.push((format!("{origin} #{}", out.len() + 1), other)),
        }
    }
    if out.is_empty() {
        return Err(format!("{origin}: no message in it"));
    }
    Ok(out)
}

/// Checks one message against the schema and the worker's decoder; every problem found.
pub fn check(
    origin: &str,
    message: &Value,
    schema: &MessageSchema,
    limits: Limits,
) -> Result<Checked, Vec<String>> {
    let mut problems = schema.problems(message);
    let body = serde_json::to_vec(message).expect("a JSON value serialises");
    match intake::decode(&body, limits) {
        Ok(job) if problems.is_empty() => {
            return Ok(Checked {
                origin: origin.to_string(),
                job: job.kind(),
                build_id: job.build_id().map(|b| b.0),
                body,
            });
        }
        Ok(_) => {}
        // The decoder's sentence, unless the schema said it already.
        Err(poison) if problems.is_empty() => {
            problems.push(format!("the worker would refuse it ({poison})"))
        }
        Err(_) => {}
    }
    Err(problems)
}

/// Collects the messages of the files (or the flags) and checks them all.
fn gather(args: &EnqueueArgs, settings: &Settings) -> Result<Vec<Checked>, Vec<String>> {
    let documents = if args.files.is_empty() {
        vec![(
            "flags".to_string(),
            args.flags.message(settings).map_err(|e| vec![e])?,
        )]
    } else {
        if args.flags.any() {
            return Err(vec![
                "give message files or message flags (--build-id, --image, ...), not both".into(),
            ]);
        }
        let mut all = Vec::new();
        for path in &args.files {
            let (origin, text) = read_input(path).map_err(|e| vec![e])?;
            all.extend(parse_documents(&text, &origin).map_err(|e| vec![e])?);
        }
        all
    };
    let schema = MessageSchema::load();
    let limits = Limits {
        max_bytes: settings.intake.max_message_bytes,
    };
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    for (origin, message) in &documents {
        match check(origin, message, &schema, limits) {
            Ok(c) => checked.push(c),
            Err(p) => problems.extend(p.into_iter().map(|p| format!("{origin}: {p}"))),
        }
    }
    if problems.is_empty() {
        Ok(checked)
    } else {
        Err(problems)
    }
}

fn read_input(path: &PathBuf) -> Result<(String, String), String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("standard input: {e}"))?;
        return Ok(("stdin".into(), text));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((path.display().to_string(), text))
}

/// Runs `enqueue`: exit 0 when every message was confirmed, 2 when the input is invalid
/// (nothing sent), 1 when the broker could not be reached or refused a message.
pub async fn run(args: &EnqueueArgs, settings: &Settings) -> ExitCode {
    let messages = match gather(args, settings) {
        Ok(m) => m,
        Err(problems) => {
            eprintln!("nothing sent; {} problems:", problems.len());
            for p in &problems {
                eprintln!("  {p}");
            }
            return super::invalid();
        }
    };
    let exchange = args
        .exchange
        .as_deref()
        .unwrap_or(&settings.rabbitmq.exchange);
    let key = args
        .routing_key
        .as_deref()
        .unwrap_or(&settings.rabbitmq.queue);
    if args.dry_run {
        for m in &messages {
            println!(
                "valid  {} ({}): would go to exchange {exchange:?} with key {key:?}",
                m.describe(),
                m.origin
            );
        }
        return ExitCode::SUCCESS;
    }
    let connection =
        match crate::preflight::broker::connect(&settings.rabbitmq, "buildcluster-worker enqueue")
            .await
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("nothing sent: {e}");
                return super::failed();
            }
        };
    let code = send(&connection, &messages, exchange, key).await;
    let _ = connection.close(200, "done".into()).await;
    code
}

async fn send(
    connection: &lapin::Connection,
    messages: &[Checked],
    exchange: &str,
    key: &str,
) -> ExitCode {
    let channel = match Confirmed::open(connection).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nothing sent: cannot open a channel: {e}");
            return super::failed();
        }
    };
    for (i, m) in messages.iter().enumerate() {
        let props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_app_id(ShortString::from("buildcluster-worker enqueue"));
        match channel.publish(exchange, key, &m.body, props).await {
            Ok(()) => println!(
                "sent   {} ({}): exchange {exchange:?}, key {key:?}, confirmed",
                m.describe(),
                m.origin
            ),
            Err(e) => {
                eprintln!("FAILED {} ({}): {e}", m.describe(), m.origin);
                let left = messages.len() - i - 1;
                if left > 0 {
                    eprintln!("{left} later messages not sent");
                }
                return super::failed();
            }
        }
    }
    channel.close().await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_are_one_value_an_array_or_json_lines() {
        let one = parse_documents(r#"{"job": "stop"}"#, "a.json").unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].0, "a.json #1");
        let array = parse_documents(r#"[{"a": 1}, {"b": 2}]"#, "b.json").unwrap();
        assert_eq!(array.len(), 2);
        let lines = parse_documents("{\"a\": 1}\n{\"b\": 2}\n\n{\"c\": 3}\n", "c").unwrap();
        assert_eq!(
            lines.iter().map(|(o, _)| o.as_str()).collect::<Vec<_>>(),
            ["c #1", "c #2", "c #3"]
        );
        assert!(
            parse_documents("{\"a\": 1}\n{oops", "d")
                .unwrap_err()
                .starts_with("d: not JSON")
        );
        assert_eq!(
            parse_documents("  \n", "e").unwrap_err(),
            "e: no message in it"
        );
    }

    #[test]
    fn a_message_is_checked_by_the_schema_and_by_the_decoder() {
        let schema = MessageSchema::load();
        let limits = Limits::default();
        let start = json!({"job": "start", "buildConfig": {"buildId": 7, "container": "node:22",
            "apiUri": "https://api.example", "token": "t"}});
        let ok = check("x", &start, &schema, limits).unwrap();
        assert_eq!((ok.job, ok.build_id), (JobKind::Start, Some(7)));
        // The schema is looser than the decoder about apiUri: the decoder's word counts too.
        let mut odd = start.clone();
        odd["buildConfig"]["apiUri"] = json!("https://a^b");
        let problems = check("x", &odd, &schema, limits).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("the worker would refuse it (invalid_api_uri"),
            "{problems:?}"
        );
        let missing = json!({"job": "start", "buildConfig": {"buildId": 7}});
        let problems = check("x", &missing, &schema, limits).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains("container")),
            "{problems:?}"
        );
        let too_big = Limits { max_bytes: 10 };
        assert!(check("x", &start, &schema, too_big).unwrap_err()[0].contains("too_large"));
    }
}
