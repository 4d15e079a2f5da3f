//! Spans: each step's span, and the Firestore and Pub/Sub calls made within it, exported
//! over OTLP when an endpoint is configured ([`crate::config::Otlp`]; [`crate::otlp`] sends
//! them).
//!
//! The ids are [`TraceContext`]'s, the ones the saga already carries: a step's span is the
//! span whose `traceparent` its emitted event carries, the one its log lines name
//! (`logging.googleapis.com/trace`, `spanId`), and its parent is the span that published
//! the event it consumed. A span here is only a record of that context, its times and a few
//! attributes, so what is exported cannot disagree with the logs or the events.
//!
//! Why not the OpenTelemetry SDK with `tracing-opentelemetry`: the SDK makes its own ids
//! (the logs and the events would then have to be re-plumbed to read them back), keeps one
//! global provider (the tests run five functions in one process, each its own service), and
//! its OTLP HTTP exporter brings a second HTTP client and runs batches on a thread of its
//! own. What is needed is small: a context (already here), a bounded queue, and the OTLP
//! protobuf messages (`opentelemetry-proto`), POSTed with the `reqwest` client the
//! workspace already builds.
//!
//! How a span is made: [`Tracer::scope`] runs a request's future as one span (a step, the
//! frontend's order), and within it [`call`] wraps each client call as a child span; the
//! current span is a task-local, so the store and the publisher need no extra argument and
//! code outside any span (a sweep, a CLI) records nothing. With no exporter, nothing here
//! runs: no task-local, no child spans, no change to the logs.
//!
//! Only sampled traces are recorded (a caller's `traceparent` with the sampled flag off is
//! honoured); every trace this service starts is sampled.

use std::borrow::Cow;
use std::fmt::Display;
use std::sync::Arc;
use std::time::SystemTime;

use tracing::Instrument;

use crate::otlp::Exporter;
use crate::trace::TraceContext;

/// What a span is, in OpenTelemetry's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Handles a request (a push delivery, `POST /order`).
    Server,
    /// Calls another service (Firestore).
    Client,
    /// Sends a message (a Pub/Sub publish).
    Producer,
    /// Work within the process (a transaction and its attempts).
    Internal,
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Value {
        Value::Str(Cow::Borrowed(s))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(Cow::Owned(s))
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Value {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

pub type Attributes = Vec<(&'static str, Value)>;

/// A finished span, as it is exported.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanData {
    pub context: TraceContext,
    pub name: Cow<'static, str>,
    pub kind: Kind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Attributes,
    /// `Some(message)`: it failed.
    pub error: Option<String>,
}

/// A function's tracer: exports its spans, or (no endpoint) does nothing. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Tracer {
    exporter: Option<Arc<Exporter>>,
}

impl Tracer {
    /// Records nothing.
    pub fn off() -> Tracer {
        Tracer::default()
    }

    /// Exports through `exporter`.
    pub fn new(exporter: Exporter) -> Tracer {
        Tracer {
            exporter: Some(Arc::new(exporter)),
        }
    }

    /// Whether it exports: what a caller building a span's attributes asks first.
    pub fn is_on(&self) -> bool {
        self.exporter.is_some()
    }

    /// Runs `work` as the span `trace` (its ids already chosen: the ones the logs and the
    /// emitted events carry), and the client calls within it as its children. The span ends
    /// when `work` does, failed if it returned an error; cut short (dropped: a time limit,
    /// a closed connection), it is exported as failed too.
    pub async fn scope<T, E: Display>(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: Kind,
        trace: TraceContext,
        attributes: Attributes,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let Some(recording) = self.start(name.into(), kind, trace, attributes) else {
            return work.await;
        };
        let current = Current {
            tracer: self.clone(),
            context: trace,
        };
        CURRENT.scope(current, recording.around(work)).await
    }

    fn start(
        &self,
        name: Cow<'static, str>,
        kind: Kind,
        context: TraceContext,
        attributes: Attributes,
    ) -> Option<Recording> {
        let exporter = self.exporter.clone()?;
        context.sampled.then(|| Recording {
            exporter,
            span: Some(SpanData {
                context,
                name,
                kind,
                start: SystemTime::now(),
                end: SystemTime::now(),
                attributes,
                error: None,
            }),
        })
    }

    /// Waits (at most `limit`) until every span ended so far has been sent.
    pub async fn flush(&self, limit: std::time::Duration) {
        if let Some(exporter) = &self.exporter {
            exporter.flush(limit).await;
        }
    }
}

/// The span being recorded in this task, and its tracer.
#[derive(Clone)]
struct Current {
    tracer: Tracer,
    context: TraceContext,
}

tokio::task_local! {
    static CURRENT: Current;
}

/// Runs the client call `work` as a child span of the current one (a Firestore or Pub/Sub
/// call), named `name`, with `attributes` (made only if a span is recorded). Its log lines
/// name it. Outside any recorded span, `work` just runs.
pub async fn call<T, E: Display>(
    name: impl Into<Cow<'static, str>>,
    kind: Kind,
    attributes: impl FnOnce() -> Attributes,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let Ok(current) = CURRENT.try_with(Current::clone) else {
        return work.await;
    };
    let context = current.context.child();
    let Some(recording) = current
        .tracer
        .start(name.into(), kind, context, attributes())
    else {
        return work.await;
    };
    let logs = tracing::info_span!(
        "call",
        trace_id = %context.trace_id_hex(),
        span_id = %context.span_id_hex(),
        parent_span_id = context.parent_span_id_hex(),
    );
    let current = Current {
        tracer: current.tracer,
        context,
    };
    CURRENT
        .scope(current, recording.around(work).instrument(logs))
        .await
}

/// A span being recorded; sent to the exporter when it ends or is dropped.
struct Recording {
    exporter: Arc<Exporter>,
    span: Option<SpanData>,
}

impl Recording {
    async fn around<T, E: Display>(
        mut self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let result = work.await;
        if let (Err(error), Some(span)) = (&result, self.span.as_mut()) {
            span.error = Some(error.to_string());
        }
        self.end();
        result
    }

    fn end(&mut self) {
        if let Some(mut span) = self.span.take() {
            span.end = SystemTime::now();
            self.exporter.send(span);
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // Dropped before it ended: the work was cut short.
        if let Some(span) = self.span.as_mut() {
            span.error = Some("cut short".to_owned());
        }
        self.end();
    }
}

/// Whether a span is being recorded in this task (what a child span would be recorded
/// under).
pub fn recording() -> bool {
    CURRENT.try_with(|_| ()).is_ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use axum::body::Bytes;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::config::Otlp;
    use crate::telemetry::{CloudLogging, MemoryWriter};
    use crate::topology::Function;

    type Received = Arc<Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>;

    /// A local OTLP/HTTP receiver: its base URL and the spans it got.
    async fn receiver() -> (String, Received) {
        let received = Received::default();
        let spans = received.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut spans = spans.lock().expect("spans");
                for resource in request.resource_spans {
                    spans.extend(resource.scope_spans.into_iter().flat_map(|s| s.spans));
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), received)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Failed(&'static str);

    #[tokio::test]
    async fn a_call_is_a_child_of_its_step_and_its_log_lines_name_it() {
        let (endpoint, received) = receiver().await;
        let exporter =
            Exporter::start(Function::Order, "shop", &Otlp::at(&endpoint)).expect("an exporter");
        let tracer = Tracer::new(exporter);
        let memory = MemoryWriter::default();
        let writer = memory.clone();
        let _logging = tracing::subscriber::set_default(
            tracing_subscriber::registry().with(CloudLogging::new("shop", None, move || writer)),
        );
        let step = TraceContext::root().child();
        let logs = tracing::info_span!(
            "step",
            trace_id = %step.trace_id_hex(),
            span_id = %step.span_id_hex(),
        );
        let work = async {
            tracing::info!("in the step");
            call("firestore Commit", Kind::Client, Vec::new, async {
                tracing::info!("in the call");
                Err::<(), _>(Failed("conflict"))
            })
            .await
            .err();
            Ok::<_, Failed>(())
        };
        tracer
            .scope(
                "order",
                Kind::Server,
                step,
                Vec::new(),
                work.instrument(logs),
            )
            .await
            .expect("the step");
        // Flushed at once, not after the batch's second.
        tokio::time::timeout(
            Duration::from_millis(500),
            tracer.flush(Duration::from_secs(5)),
        )
        .await
        .expect("flushed");

        let spans = received.lock().expect("spans").clone();
        assert_eq!(spans.len(), 2, "{spans:?}");
        let (commit, order) = (&spans[0], &spans[1]);
        assert_eq!(order.name, "order");
        assert_eq!(hex(&order.span_id), step.span_id_hex());
        assert_eq!(
            hex(&order.parent_span_id),
            step.parent_span_id_hex().unwrap_or_default()
        );
        assert_eq!(commit.name, "firestore Commit");
        assert_eq!(hex(&commit.trace_id), step.trace_id_hex());
        assert_eq!(hex(&commit.parent_span_id), step.span_id_hex());
        assert_eq!(
            commit.status.as_ref().map(|s| s.message.as_str()),
            Some("conflict")
        );

        let lines = memory.lines();
        let span_of = |message: &str| {
            lines
                .iter()
                .find(|l| l["message"] == message)
                .map(|l| l["logging.googleapis.com/spanId"].clone())
        };
        assert_eq!(span_of("in the step"), Some(hex(&order.span_id).into()));
        assert_eq!(span_of("in the call"), Some(hex(&commit.span_id).into()));
        for line in lines.iter().filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("in the"))
        }) {
            assert_eq!(
                line["logging.googleapis.com/trace"],
                format!("projects/shop/traces/{}", step.trace_id_hex()),
                "{lines:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_step_cut_short_is_exported_failed_and_an_unsampled_one_not_at_all() {
        let (endpoint, received) = receiver().await;
        let tracer = Tracer::new(
            Exporter::start(Function::Payments, "shop", &Otlp::at(&endpoint)).expect("an exporter"),
        );
        let cut = TraceContext::root();
        let never = tracer.scope("payments", Kind::Server, cut, Vec::new(), async {
            std::future::pending::<Result<(), Failed>>().await
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(10), never)
                .await
                .is_err()
        );
        let unsampled = TraceContext {
            sampled: false,
            ..TraceContext::root()
        };
        tracer
            .scope("payments", Kind::Server, unsampled, Vec::new(), async {
                Ok::<_, Failed>(())
            })
            .await
            .expect("the step");
        tracer.flush(Duration::from_secs(5)).await;
        let spans = received.lock().expect("spans").clone();
        assert_eq!(spans.len(), 1, "{spans:?}");
        assert_eq!(hex(&spans[0].span_id), cut.span_id_hex());
        assert_eq!(
            spans[0].status.as_ref().map(|s| s.message.as_str()),
            Some("cut short")
        );
    }

    #[tokio::test]
    async fn without_an_exporter_nothing_is_recorded() {
        let tracer = Tracer::off();
        assert!(!tracer.is_on());
        let result = tracer
            .scope(
                "order",
                Kind::Server,
                TraceContext::root(),
                Vec::new(),
                async {
                    assert!(!recording(), "no current span");
                    call("firestore Commit", Kind::Client, || unreachable!(), async {
                        Ok::<_, Failed>(7)
                    })
                    .await
                },
            )
            .await;
        assert_eq!(result.expect("the work's own result"), 7);
    }
}
