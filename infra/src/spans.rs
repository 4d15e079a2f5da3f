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

/// The context of the span being recorded in this task, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| c.context).ok()
}
