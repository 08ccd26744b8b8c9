//! Log set-up: JSON lines on stderr by default (`--log-format text` for humans), level from
//! `RUST_LOG` or `--log-level`.
//!
//! The JSON format is flat: the fields of every span in scope (`buildId`, `executor`,
//! `attempt`, ...) are copied onto each line, so every line about a build can be found by its
//! build id without knowing the span layout.

use std::fmt;
use std::io::Write;

use tracing::field::Field;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber, span};
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::fmt::MakeWriter;
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
    let layer = match format {
        LogFormat::Json => FlatJson::new(std::io::stderr).boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    if tracing::subscriber::set_global_default(subscriber(layer, filter)).is_ok() {
        // The platform verifier logs each certificate it refuses at ERROR, naming neither the
        // executor nor the host; the worker says it once with both (`cluster::health`).
        let _ = tracing_log::LogTracer::builder()
            .ignore_crate("rustls_platform_verifier")
            .init();
    }
}

/// The registry with `layer`, filtered by level (`filter`) and by [`SaidBetterByTheWorker`] as
/// one filter, so that callsites are decided once and the level reaches the macros as a hint:
/// a disabled `trace!` in a dependency then costs a comparison, not a call into the subscriber.
fn subscriber<L>(layer: L, filter: EnvFilter) -> impl Subscriber + Send + Sync
where
    L: Layer<tracing_subscriber::Registry> + Send + Sync,
{
    tracing_subscriber::registry().with(layer.with_filter(filter.and(SaidBetterByTheWorker)))
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

    // Decided by the callsite alone, but for the one whose events are looked at: an event a
    // filter leaves out must have been asked about (tracing-subscriber's filter pass).
    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if !not_said_better_by_the_worker(meta) {
            Interest::never()
        } else if looked_at(meta) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }

    // It keeps every level: the level filter beside it gives the hint.
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        if !looked_at(event.metadata()) {
            return true;
        }
        let mut error = ErrorText::default();
        event.record(&mut error);
        !error.0.contains("InvalidConnectionState")
    }
}

/// lapin's I/O loop ERRORs: which of them are kept depends on the event's `error` field.
fn looked_at(meta: &Metadata<'_>) -> bool {
    *meta.level() == Level::ERROR && meta.target() == "lapin::io_loop"
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

/// One JSON object per event: `timestamp`, `level`, `target`, the event's fields (`message`
/// among them) and the fields of every span in scope; a name already written wins, so the
/// event's own fields win over its spans' and inner spans' over outer ones'.
///
/// A layer of its own rather than the fmt layer's JSON: each span keeps its fields already
/// encoded, and a line is written once, without building a JSON tree for it and parsing each
/// span's fields back out of text.
pub struct FlatJson<W> {
    make_writer: W,
}

impl<W> FlatJson<W> {
    /// Writes each line to a writer `make_writer` gives (stderr in the worker).
    pub fn new(make_writer: W) -> Self {
        FlatJson { make_writer }
    }
}

/// A span's fields as JSON members: the name and the value already encoded.
#[derive(Default)]
struct SpanFields(Vec<(&'static str, Vec<u8>)>);

impl SpanFields {
    fn set(&mut self, name: &'static str, value: Vec<u8>) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }
}

impl tracing::field::Visit for SpanFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), encode(&value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), encode(&value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), encode(&value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), encode(&value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), encode(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field.name(), encode(&value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field.name(), encode(&format!("{value:?}")));
    }
}

/// JSON text of a value (a non-finite float becomes `null`).
fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec())
}

/// One line being written: the names written so far, so each is written once.
struct Line {
    out: Vec<u8>,
    written: Vec<&'static str>,
}

impl Line {
    fn member(&mut self, name: &'static str, value: &[u8]) {
        if self.written.contains(&name) {
            return;
        }
        self.written.push(name);
        self.out.push(b',');
        self.out.extend_from_slice(&encode(name));
        self.out.push(b':');
        self.out.extend_from_slice(value);
    }
}

impl<S, W> Layer<S> for FlatJson<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFields::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(fields) = ext.get_mut::<SpanFields>() {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut line = Line {
            out: format!(
                "{{\"timestamp\":\"{:.6}\",\"level\":\"{}\",\"target\":",
                jiff::Timestamp::now(),
                meta.level()
            )
            .into_bytes(),
            written: vec!["timestamp", "level", "target"],
        };
        line.out.extend_from_slice(&encode(meta.target()));
        let mut own = SpanFields::default();
        event.record(&mut own);
        for (name, value) in &own.0 {
            line.member(name, value);
        }
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    for (name, value) in &fields.0 {
                        line.member(name, value);
                    }
                }
            }
        }
        line.out.extend_from_slice(b"}\n");
        let _ = self.make_writer.make_writer_for(meta).write_all(&line.out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::sync::{Arc, Mutex};

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
        let layer = tracing_subscriber::fmt::layer().with_writer(buf.clone());
        tracing::subscriber::with_default(subscriber(layer, EnvFilter::new("trace")), || {
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
    fn the_level_filter_reaches_the_macros_as_a_hint() {
        for (directives, hint) in [
            ("info", LevelFilter::INFO),
            ("warn,lapin=debug", LevelFilter::DEBUG),
        ] {
            let layer = FlatJson::new(Buf::default());
            let subscriber = subscriber(layer, EnvFilter::new(directives));
            assert_eq!(subscriber.max_level_hint(), Some(hint), "{directives}");
        }
    }

    fn json_lines(f: impl FnOnce()) -> Vec<Value> {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::registry().with(FlatJson::new(buf.clone()));
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn span_fields_land_on_every_line_including_ones_recorded_later() {
        let lines = json_lines(|| {
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
        assert_eq!(lines.len(), 2);
        for l in &lines {
            assert_eq!(l["buildId"], 42);
            assert_eq!(l["attempt"], 2);
            assert_eq!(l["target"], module_path!());
            assert!(l["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        }
        assert_eq!(lines[0]["message"], "before");
        assert_eq!(lines[0]["level"], "INFO");
        assert!(lines[0].get("executor").is_none());
        assert_eq!(lines[1]["executor"], "kata");
        assert_eq!(lines[1]["pod"], "42-abcde");
        assert_eq!(lines[1]["level"], "WARN");
    }

    #[test]
    fn a_name_is_written_once_the_event_winning_over_inner_spans_and_those_over_outer_ones() {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::registry().with(FlatJson::new(buf.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("reporter", executor = "outer", buildId = 1u64);
            let _o = outer.enter();
            let inner = tracing::info_span!("build", executor = "inner", attempt = 3u32);
            let _i = inner.enter();
            tracing::info!(attempt = 4u32, "look");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("\"executor\"").count(), 1, "{text}");
        assert_eq!(text.matches("\"attempt\"").count(), 1, "{text}");
        let line: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["executor"], "inner");
        assert_eq!(line["attempt"], 4);
        assert_eq!(line["buildId"], 1);
    }

    proptest::proptest! {
        /// Whatever a field holds (quotes, backslashes, control characters, any Unicode), the
        /// line is one valid JSON object that gives it back.
        #[test]
        fn any_text_in_any_field_comes_back_from_a_valid_json_line(
            message in ".*",
            pod in "\\PC*",
            span_value in proptest::collection::vec(proptest::char::any(), 0..40),
            count in proptest::num::i64::ANY,
            ratio in proptest::num::f64::ANY,
        ) {
            let span_value: String = span_value.into_iter().collect();
            let lines = json_lines(|| {
                let span = tracing::info_span!("build", executor = %span_value);
                let _e = span.enter();
                tracing::error!(%pod, count, ratio, "{message}");
            });
            proptest::prop_assert_eq!(lines.len(), 1);
            let l = &lines[0];
            proptest::prop_assert_eq!(l["message"].as_str(), Some(message.as_str()));
            proptest::prop_assert_eq!(l["pod"].as_str(), Some(pod.as_str()));
            proptest::prop_assert_eq!(l["executor"].as_str(), Some(span_value.as_str()));
            proptest::prop_assert_eq!(l["count"].as_i64(), Some(count));
            if ratio.is_finite() {
                proptest::prop_assert_eq!(l["ratio"].as_f64(), Some(ratio));
            } else {
                proptest::prop_assert!(l["ratio"].is_null());
            }
        }
    }
}
