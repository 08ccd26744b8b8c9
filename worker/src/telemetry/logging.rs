//! Log set-up: JSON lines on stderr by default (`--log-format text` for humans), level from
//! `RUST_LOG` or `--log-level`.
//!
//! The JSON format is flat: the fields of every span in scope (`buildId`, `executor`,
//! `attempt`, ...) are copied onto each line, so every line about a build can be found by its
//! build id without knowing the span layout.

use std::fmt;

use serde_json::{Map, Value};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::format::DefaultFields;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Installs the global subscriber. `level` overrides `RUST_LOG` when given.
pub fn init(format: LogFormat, level: Option<&str>) {
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Json => layer
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .boxed(),
        LogFormat::Text => layer.fmt_fields(DefaultFields::new()).boxed(),
    };
    let subscriber = tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(SaidBetterByTheWorker));
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        // The platform verifier logs each certificate it refuses at ERROR, naming neither the
        // executor nor the host; the worker says it once with both (`cluster::health`).
        let _ = tracing_log::LogTracer::builder()
            .ignore_crate("rustls_platform_verifier")
            .init();
    }
}

/// Dependencies' ERROR lines about failures the worker reports itself, with their context
/// and true level, are left out: lapin logs every channel the broker closes (a passive check
/// of a queue that does not exist closes its channel with 404) and every connection that
/// ends (its own close at shutdown included; a lost one is the worker's WARN and reconnect),
/// kube's client every failed request (each meets the worker's retry, breaker and set-up
/// judgement). lapin's bare notes about its socket (a write of nothing while a connection
/// closes, a read of 0 from a half-closed one) carry no error; a connection they end is the
/// worker's WARN too.
fn not_said_better_by_the_worker(meta: &Metadata<'_>) -> bool {
    let field = |name| meta.fields().field(name).is_some();
    let closed_by_broker = meta.target() == "lapin::channel" && field("method");
    let connection_ended =
        meta.target() == "lapin::channels" && field("error") && !field("channel");
    let socket_note =
        meta.target() == "lapin::io_loop" && meta.fields().iter().map(|f| f.name()).eq(["message"]);
    let failed_request = meta.target() == "kube_client::client::builder";
    let said_better = closed_by_broker || connection_ended || socket_note || failed_request;
    !(*meta.level() == Level::ERROR && said_better)
}

/// Leaves out dependencies' ERROR lines the worker says better: by their callsite
/// ([`not_said_better_by_the_worker`]) and, where one callsite also carries real errors, by the
/// event's `error` field. lapin's I/O loop, finding its connection already closed or failed (by
/// the worker's own close at shutdown, or by a loss the worker reports itself), logs
/// `InvalidConnectionState` as an I/O error; its other I/O errors are kept.
struct SaidBetterByTheWorker;

impl<S: Subscriber> Filter<S> for SaidBetterByTheWorker {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        not_said_better_by_the_worker(meta)
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() != Level::ERROR || meta.target() != "lapin::io_loop" {
            return true;
        }
        let mut error = ErrorText::default();
        event.record(&mut error);
        !error.0.contains("InvalidConnectionState")
    }
}

/// The `error` field of an event, as text.
#[derive(Default)]
struct ErrorText(String);

impl tracing::field::Visit for ErrorText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "error" {
            self.0 = format!("{value:?}");
        }
    }
}

/// One JSON object per event: `timestamp`, `level`, `target`, `message`, the event's fields and
/// the fields of every span in scope (inner spans win).
#[derive(Debug, Clone, Copy, Default)]
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut out = Map::new();
        out.insert(
            "timestamp".into(),
            Value::String(format!("{:.6}", jiff::Timestamp::now())),
        );
        out.insert(
            "level".into(),
            Value::String(event.metadata().level().to_string()),
        );
        out.insert(
            "target".into(),
            Value::String(event.metadata().target().to_string()),
        );
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(m)) = serde_json::from_str::<Value>(fields.as_str())
                {
                    out.extend(m);
                }
            }
        }
        let mut visitor = Visitor(&mut out);
        event.record(&mut visitor);
        let line = serde_json::to_string(&Value::Object(out)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

struct Visitor<'a>(&'a mut Map<String, Value>);

impl tracing::field::Visit for Visitor<'_> {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        self.0
            .insert(field.name().into(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::from(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[test]
    fn dependencies_errors_the_worker_says_better_are_left_out_and_others_kept() {
        let buf = Buf::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(buf.clone())
            .with_filter(SaidBetterByTheWorker);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            // As lapin 4.12.3's io_loop writes them when a connection closes.
            tracing::error!(target: "lapin::io_loop", "Socket was writable but we wrote 0, marking as wouldblock");
            tracing::error!(target: "lapin::io_loop", error = ?format_args!("Error {{ kind: InvalidConnectionState(Error), notifier: None }}"), "error doing IO");
            tracing::error!(target: "lapin::io_loop", error = "reset", "error doing IO");
            tracing::warn!(target: "lapin::io_loop", "kept: not an ERROR");
            tracing::error!(target: "kube_client::client::builder", "failed with error");
            tracing::error!("kept: the worker's own");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("error doing IO"), "{text}");
        assert!(lines[1].contains("kept: not an ERROR"), "{text}");
        assert!(lines[2].contains("kept: the worker's own"), "{text}");
    }

    #[test]
    fn span_fields_land_on_every_line_including_ones_recorded_later() {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "message",
                buildId = 42u64,
                executor = tracing::field::Empty,
                attempt = 2u32
            );
            let _e = span.enter();
            tracing::info!("before");
            span.record("executor", "kata");
            tracing::warn!(pod = "42-abcde", "after");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        for l in &lines {
            assert_eq!(l["buildId"], 42);
            assert_eq!(l["attempt"], 2);
        }
        assert_eq!(lines[0]["message"], "before");
        assert_eq!(lines[1]["executor"], "kata");
        assert_eq!(lines[1]["pod"], "42-abcde");
        assert_eq!(lines[1]["level"], "WARN");
    }
}
