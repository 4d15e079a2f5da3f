//! Logging: human-readable on a terminal; otherwise JSON lines in Google Cloud Logging's
//! structured format: `severity`, `message`, `time`, `logging.googleapis.com/trace` and
//! `spanId` when a trace is known, `logging.googleapis.com/labels` with the function, order
//! id and event id, and every other field as is. `RUST_LOG` filters; the default is `info`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::topology::Function;

/// Fields that become Cloud Logging labels (indexed, filterable in the console).
const LABELS: [&str; 4] = ["function", "order_id", "event_id", "step"];

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(function: Function) {
    let project = std::env::var("GOOGLE_CLOUD_PROJECT").unwrap_or_default();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,firestore=warn,h2=warn,tower=warn"));
    let result = if std::io::stderr().is_terminal() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .compact()
            .try_init()
            .map_err(|e| e.to_string())
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(CloudLogging::new(&project, Some(function), std::io::stderr))
            .try_init()
            .map_err(|e| e.to_string())
    };
    if result.is_ok() {
        tracing::debug!(function = function.name(), "telemetry ready");
    }
}

/// A `tracing` layer writing Cloud Logging JSON lines to `writer`.
pub struct CloudLogging<W> {
    project: String,
    function: Option<Function>,
    writer: Mutex<W>,
}

impl<W: Write> CloudLogging<W> {
    pub fn new(project: &str, function: Option<Function>, make: impl FnOnce() -> W) -> Self {
        CloudLogging {
            project: project.to_owned(),
            function,
            writer: Mutex::new(make()),
        }
    }
}

/// A span's fields, kept in its extensions.
struct SpanFields(Map<String, Value>);

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

impl<S, W> Layer<S> for CloudLogging<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: Write + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Map::new();
        attrs.record(&mut JsonVisitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
        {
            values.record(&mut JsonVisitor(&mut fields.0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // Span fields from the root down, then the event's own (the innermost wins).
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(span_fields)) = span.extensions().get::<SpanFields>() {
                    fields.extend(span_fields.clone());
                }
            }
        }
        event.record(&mut JsonVisitor(&mut fields));
        let entry = self.entry(event.metadata().level(), event.metadata().target(), fields);
        // The line goes out in one `write`: formatting straight into an unbuffered stderr
        // costs a system call per token (about a hundred a line), and one write of a line
        // shorter than `PIPE_BUF` never interleaves with another process's on a shared pipe.
        let mut line = Vec::with_capacity(512);
        if serde_json::to_writer(&mut line, &entry).is_ok() {
            line.push(b'\n');
            if let Ok(mut writer) = self.writer.lock() {
                let _ = writer.write_all(&line);
            }
        }
    }
}

impl<W> CloudLogging<W> {
    fn entry(&self, level: &Level, target: &str, mut fields: Map<String, Value>) -> Value {
        let mut entry = Map::new();
        entry.insert("severity".into(), severity(level).into());
        entry.insert(
            "message".into(),
            fields.remove("message").unwrap_or(Value::from("")),
        );
        entry.insert("time".into(), jiff::Timestamp::now().to_string().into());
        if let Some(Value::String(trace)) = fields.remove("trace_id") {
            entry.insert(
                "logging.googleapis.com/trace".into(),
                format!("projects/{}/traces/{trace}", self.project).into(),
            );
            entry.insert("logging.googleapis.com/trace_sampled".into(), true.into());
        }
        if let Some(span) = fields.remove("span_id") {
            entry.insert("logging.googleapis.com/spanId".into(), span);
        }
        let mut labels: BTreeMap<String, Value> = BTreeMap::new();
        if let Some(function) = self.function {
            labels.insert("function".into(), function.name().into());
        }
        for key in LABELS {
            if let Some(value) = fields.get(key) {
                let text = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned);
                labels.insert(key.into(), text.into());
            }
        }
        if !labels.is_empty() {
            entry.insert(
                "logging.googleapis.com/labels".into(),
                Value::Object(labels.into_iter().collect()),
            );
        }
        entry.insert("target".into(), target.into());
        entry.extend(fields);
        Value::Object(entry)
    }
}

/// A writer into shared memory, for tests that read the logs.
#[derive(Clone, Default)]
pub struct MemoryWriter(pub Arc<Mutex<Vec<u8>>>);

impl Write for MemoryWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl MemoryWriter {
    /// The JSON lines written so far.
    pub fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `log` with the Cloud Logging layer for project `shop` writing to `writer`.
    fn logging_into<W: Write + Send + 'static>(
        function: Option<Function>,
        writer: W,
        log: impl FnOnce(),
    ) {
        let subscriber =
            tracing_subscriber::registry().with(CloudLogging::new("shop", function, || writer));
        tracing::subscriber::with_default(subscriber, log);
    }

    #[test]
    fn log_lines_are_cloud_logging_entries_with_trace_and_labels() {
        let memory = MemoryWriter::default();
        logging_into(Some(Function::Inventory), memory.clone(), || {
            let span = tracing::info_span!(
                "step",
                order_id = "o-1",
                event_id = "e-1",
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
                span_id = "00f067aa0ba902b7",
            );
            let _entered = span.enter();
            tracing::warn!(outcome = "reserved", "step done");
        });
        let lines = memory.lines();
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["severity"], "WARNING");
        assert_eq!(line["message"], "step done");
        assert_eq!(
            line["logging.googleapis.com/trace"],
            "projects/shop/traces/4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(line["logging.googleapis.com/spanId"], "00f067aa0ba902b7");
        let labels = &line["logging.googleapis.com/labels"];
        assert_eq!(labels["function"], "inventory");
        assert_eq!(labels["order_id"], "o-1");
        assert_eq!(labels["event_id"], "e-1");
        assert_eq!(line["outcome"], "reserved");
    }

    /// Records each `write` call separately.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut writes) = self.0.lock() {
                writes.push(buf.to_vec());
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_log_line_is_one_write() {
        let writes = Writes::default();
        logging_into(Some(Function::Order), writes.clone(), || {
            let span = tracing::info_span!("step", order_id = "o-1", event_id = "e-1");
            let _entered = span.enter();
            tracing::info!(topic = "order-created", message_id = "5", "event published");
            tracing::info!(outcome = "created", "step done");
        });
        let writes = writes.0.lock().map(|w| w.clone()).unwrap_or_default();
        assert_eq!(writes.len(), 2, "one write per line");
        for write in writes {
            let text = String::from_utf8(write).expect("UTF-8");
            assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
            let line: Value = serde_json::from_str(text.trim_end()).expect("a JSON line");
            assert_eq!(line["logging.googleapis.com/labels"]["order_id"], "o-1");
        }
    }

    #[test]
    fn a_line_outside_any_saga_has_no_trace() {
        let memory = MemoryWriter::default();
        logging_into(None, memory.clone(), || tracing::error!(code = 7, "boom"));
        let line = &memory.lines()[0];
        assert_eq!(line["severity"], "ERROR");
        assert_eq!(line["code"], 7);
        assert!(line.get("logging.googleapis.com/trace").is_none());
    }
}
