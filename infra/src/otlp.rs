//! The OTLP exporter: spans ended by a function ([`crate::spans`]) go into a bounded queue
//! and a background task sends them in batches as OTLP/HTTP protobuf
//! (`ExportTraceServiceRequest`, `POST .../v1/traces`): to a local collector, or to Google's
//! Telemetry API (Cloud Trace's OTLP endpoint) with Application Default Credentials.
//!
//! Ending a span never waits: the queue is bounded, and a span that finds it full is dropped
//! and counted (a slow or absent collector costs spans, never requests). A batch goes out
//! when it is full or a second after its first span, and at [`Exporter::flush`] (on
//! shutdown: see `runtime::run`). A failed export is logged and its spans dropped: traces
//! are diagnostics, and retrying them would hold memory while the collector is away.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::config::Otlp;
use crate::spans::{Kind, SpanData, Value};
use crate::topology::Function;

/// Spans waiting to be sent, at most; past it, new ones are dropped.
const QUEUE: usize = 4096;
/// Spans in one export request, at most.
const BATCH: usize = 512;
/// How long a span waits for its batch to fill before the batch goes anyway.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Longest an export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("OTLP export to Google needs Application Default Credentials: {0}")]
    Credentials(String),
    #[error("building the OTLP HTTP client: {0}")]
    Client(String),
}

/// What the exporting task is sent.
#[derive(Debug)]
enum Queued {
    Span(Box<SpanData>),
    Flush(oneshot::Sender<()>),
}

/// The sending half: where ended spans go. Dropping the last one lets the task send what it
/// holds and stop.
#[derive(Debug)]
pub struct Exporter {
    queue: mpsc::Sender<Queued>,
    dropped: Arc<AtomicU64>,
    /// Of those, the ones that found the queue full (the task logs how many, once a batch).
    full: Arc<AtomicU64>,
}

impl Exporter {
    /// Starts the exporting task of `function` (on the current Tokio runtime).
    pub fn start(
        function: Function,
        project_id: &str,
        otlp: &Otlp,
    ) -> Result<Exporter, ExportError> {
        let credentials = if otlp.google_auth {
            Some(
                google_cloud_auth::credentials::Builder::default()
                    .build()
                    .map_err(|e| ExportError::Credentials(e.to_string()))?,
            )
        } else {
            None
        };
        let http = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| ExportError::Client(e.to_string()))?;
        let (queue, received) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let full = Arc::new(AtomicU64::new(0));
        let sender = Sender {
            http,
            url: otlp.traces_url.clone(),
            credentials,
            resource: resource(function, project_id),
            dropped: dropped.clone(),
            full: full.clone(),
            reported: 0,
        };
        tokio::spawn(sender.run(received));
        Ok(Exporter {
            queue,
            dropped,
            full,
        })
    }

    /// Queues an ended span; never waits.
    pub fn send(&self, span: SpanData) {
        if self.queue.try_send(Queued::Span(Box::new(span))).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits, at most `limit`, until the spans queued so far have been sent (or failed to be).
    pub async fn flush(&self, limit: Duration) {
        let (done, flushed) = oneshot::channel();
        let flush = async {
            if self.queue.send(Queued::Flush(done)).await.is_ok() {
                let _ = flushed.await;
            }
        };
        if tokio::time::timeout(limit, flush).await.is_err() {
            tracing::warn!(?limit, "spans not all exported before stopping");
        }
        let dropped = self.dropped();
        if dropped > 0 {
            tracing::warn!(
                spans = dropped,
                "spans dropped since this instance started (the queue full, or an export failed)"
            );
        }
    }

    /// Spans dropped so far (the queue full, or an export failed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The exporting task's half.
struct Sender {
    http: reqwest::Client,
    url: String,
    credentials: Option<google_cloud_auth::credentials::Credentials>,
    resource: Resource,
    dropped: Arc<AtomicU64>,
    full: Arc<AtomicU64>,
    /// How many of `full` were logged already.
    reported: u64,
}

impl Sender {
    async fn run(mut self, mut received: mpsc::Receiver<Queued>) {
        let mut batch: Vec<SpanData> = Vec::new();
        // When the oldest span of the batch must go, at the latest.
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            let wait = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = received.recv() => match message {
                    Some(Queued::Span(span)) => {
                        due.get_or_insert_with(|| tokio::time::Instant::now() + BATCH_DELAY);
                        batch.push(*span);
                        if batch.len() >= BATCH {
                            self.export(&mut batch).await;
                            due = None;
                        }
                    }
                    Some(Queued::Flush(done)) => {
                        self.export(&mut batch).await;
                        due = None;
                        let _ = done.send(());
                    }
                    None => {
                        self.export(&mut batch).await;
                        return;
                    }
                },
                () = wait => {
                    self.export(&mut batch).await;
                    due = None;
                }
            }
        }
    }

    async fn export(&mut self, batch: &mut Vec<SpanData>) {
        let full = self.full.load(Ordering::Relaxed);
        if full > self.reported {
            tracing::warn!(
                spans = full - self.reported,
                queue = QUEUE,
                "spans dropped: the export queue was full"
            );
            self.reported = full;
        }
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let count = spans.len();
        let body = request(&self.resource, spans).encode_to_vec();
        if let Err(error) = self.post(body).await {
            self.dropped.fetch_add(count as u64, Ordering::Relaxed);
            tracing::warn!(%error, spans = count, url = %self.url, "spans not exported");
        }
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let mut request = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body);
        if let Some(credentials) = &self.credentials {
            match credentials
                .headers(Default::default())
                .await
                .map_err(|e| format!("credentials: {e}"))?
            {
                google_cloud_auth::credentials::CacheableResource::New { data, .. } => {
                    request = request.headers(data);
                }
                google_cloud_auth::credentials::CacheableResource::NotModified => {}
            }
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(format!(
            "{status}: {}",
            text.chars().take(500).collect::<String>()
        ))
    }
}

/// Who sends: the function as an OpenTelemetry service, in its project (the Telemetry API
/// stores spans in the project named by `gcp.project_id`).
fn resource(function: Function, project_id: &str) -> Resource {
    Resource {
        attributes: vec![
            attribute("service.name", Value::from(function.name())),
            attribute("service.namespace", Value::from("saga")),
            attribute("gcp.project_id", Value::from(project_id.to_owned())),
        ],
        ..Default::default()
    }
}

fn attribute(key: &str, value: Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s.into_owned()),
        Value::Int(n) => any_value::Value::IntValue(n),
        Value::Bool(b) => any_value::Value::BoolValue(b),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The OTLP request for `spans` of one resource.
pub fn request(resource: &Resource, spans: Vec<SpanData>) -> ExportTraceServiceRequest {
    let spans = spans.into_iter().map(span).collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "saga-infra".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn span(data: SpanData) -> Span {
    let context = data.context;
    let kind = match data.kind {
        Kind::Server => span::SpanKind::Server,
        Kind::Client => span::SpanKind::Client,
        Kind::Producer => span::SpanKind::Producer,
        Kind::Internal => span::SpanKind::Internal,
    };
    let status = match data.error {
        Some(message) => Status {
            message,
            code: status::StatusCode::Error as i32,
        },
        None => Status::default(),
    };
    Span {
        trace_id: context.trace_id.to_be_bytes().to_vec(),
        span_id: context.span_id.to_be_bytes().to_vec(),
        parent_span_id: context
            .parent_span_id
            .map(|p| p.to_be_bytes().to_vec())
            .unwrap_or_default(),
        flags: u32::from(context.sampled),
        name: data.name.into_owned(),
        kind: kind as i32,
        start_time_unix_nano: nanos(data.start),
        end_time_unix_nano: nanos(data.end),
        attributes: data
            .attributes
            .into_iter()
            .map(|(key, value)| attribute(key, value))
            .collect(),
        status: Some(status),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceContext;

    #[test]
    fn a_span_keeps_its_ids_and_its_parent() {
        let parent = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("a traceparent");
        let context = parent.child();
        let start = SystemTime::now();
        let data = SpanData {
            context,
            name: "inventory".into(),
            kind: Kind::Server,
            start,
            end: start + Duration::from_millis(5),
            attributes: vec![("saga.order_id", Value::from("o-1".to_owned()))],
            error: Some("boom".into()),
        };
        let resource = resource(Function::Inventory, "shop");
        let bytes = request(&resource, vec![data]).encode_to_vec();
        let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("protobuf");
        let resource_spans = &decoded.resource_spans[0];
        let names: Vec<_> = resource_spans
            .resource
            .as_ref()
            .map(|r| r.attributes.iter().map(|a| a.key.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            names,
            ["service.name", "service.namespace", "gcp.project_id"]
        );
        let span = &resource_spans.scope_spans[0].spans[0];
        assert_eq!(hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&span.span_id), context.span_id_hex());
        assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
        assert_eq!(span.kind, span::SpanKind::Server as i32);
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            5_000_000
        );
        assert_eq!(
            span.status.as_ref().map(|s| (s.code, s.message.as_str())),
            Some((status::StatusCode::Error as i32, "boom"))
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
