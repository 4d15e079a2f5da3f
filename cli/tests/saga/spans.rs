//! Spans exported over OTLP/HTTP (protobuf) to a receiver standing in for a collector or
//! Cloud Trace's Telemetry API: one trace per saga, each step's span a child of the span that
//! published what it consumed, the Firestore and Pub/Sub calls as children of the steps,
//! and the very ids the log lines carry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use saga_contracts::topology::Function;
use saga_contracts::trace::TraceContext;
use saga_infra::config::Otlp;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Options, logs, spawn_app_with};

/// A span as received, with the service (function) that sent it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: BTreeMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Received>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|a| {
            let value = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(n)) => n.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (a.key.clone(), value)
        })
        .collect()
}

/// `POST /v1/traces` as an OTLP/HTTP receiver answers it: protobuf only.
async fn receive(State(spans): State<Spans>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/x-protobuf") {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut received = spans.lock().expect("spans");
    for resource_spans in request.resource_spans {
        let resource = text(
            &resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default(),
        );
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            received.push(Received {
                service: service.clone(),
                name: span.name,
                kind: span.kind,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                attributes: text(&span.attributes),
            });
        }
    }
    StatusCode::OK
}

/// A local OTLP/HTTP receiver: its base URL and what it received.
async fn receiver() -> (String, Spans) {
    let spans = Spans::default();
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the receiver");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), spans)
}

const CALLER: &str = "00-5bf92f3577b34da6a3ce929d0e0e4736-a0f067aa0ba902b7-01";

/// The steps of a completed saga, in order, and the name of each one's span.
const STEPS: [(&str, &str); 4] = [
    ("frontend", "POST /order"),
    ("order", "order"),
    ("inventory", "inventory"),
    ("payments", "payments"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_is_one_exported_trace_whose_spans_are_the_ones_the_logs_name() {
    let (endpoint, received) = receiver().await;
    let app = spawn_app_with(Options {
        otlp: Some(Otlp::at(&endpoint)),
        ..Options::default()
    })
    .await;
    let caller = TraceContext::parse(CALLER).expect("a traceparent");

    let response = app
        .http
        .post(app.url(Function::Frontend, "/order"))
        .header("traceparent", CALLER)
        .json(&json!({"item": "widget", "quantity": 2, "user": "jack"}))
        .send()
        .await
        .expect("POST /order");
    assert_eq!(response.status(), 202);
    let view: Value = response.json().await.expect("order JSON");
    let id: Uuid = view["order_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("an order id");
    assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");

    // Each step's span, once exported (a batch goes out within a second).
    let order_id = id.to_string();
    let step_spans = |spans: &[Received], step: &str| -> Vec<Received> {
        spans
            .iter()
            .filter(|s| {
                s.kind == SpanKind::Server as i32
                    && s.attributes.get("saga.step").map(String::as_str) == Some(step)
                    && s.attributes.get("saga.order_id") == Some(&order_id)
            })
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = received.lock().expect("spans").clone();
        if STEPS
            .iter()
            .all(|(step, _)| !step_spans(&spans, step).is_empty())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every step's span was exported: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let any span still in a batch arrive (the steps' last calls end just after them).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = received.lock().expect("spans").clone();

    // One trace, the caller's.
    let trace: Vec<&Received> = spans
        .iter()
        .filter(|s| s.trace_id == caller.trace_id_hex())
        .collect();
    let by_id: BTreeMap<&str, &Received> = trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let mut parent_ids = BTreeSet::from([caller.span_id_hex()]);
    for (step, name) in STEPS {
        let mine = step_spans(&spans, step);
        assert!(!mine.is_empty(), "no span of {step}");
        for span in &mine {
            assert_eq!(span.trace_id, caller.trace_id_hex(), "{step}: one trace");
            assert_eq!(span.service, step, "{step}: sent as its own service");
            assert_eq!(span.name, name);
            // Its parent published the event it consumed (the frontend's: the caller).
            assert!(
                parent_ids.contains(&span.parent),
                "{step}'s span {} has parent {}, not one of {parent_ids:?}",
                span.span_id,
                span.parent
            );
        }
        parent_ids = mine.iter().map(|s| s.span_id.clone()).collect();

        // Its Firestore and Pub/Sub calls are spans under it (not under a later step's).
        let server = SpanKind::Server as i32;
        let under = |child: &Received| {
            if child.kind == server {
                return false;
            }
            let mut at = child.parent.as_str();
            while let Some(parent) = by_id.get(at) {
                if mine.iter().any(|m| m.span_id == parent.span_id) {
                    return true;
                }
                if parent.kind == server {
                    return false;
                }
                at = parent.parent.as_str();
            }
            false
        };
        let calls: Vec<&&Received> = trace.iter().filter(|s| under(s)).collect();
        let firestore: BTreeSet<&str> = calls
            .iter()
            .filter(|s| s.attributes.get("db.system.name").map(String::as_str) == Some("firestore"))
            .map(|s| s.name.as_str())
            .collect();
        assert!(
            firestore.contains("firestore transaction") && firestore.contains("firestore Commit"),
            "{step}: Firestore calls under its span: {firestore:?}"
        );
        if step != "frontend" {
            assert!(
                firestore.contains("firestore BatchGetDocuments"),
                "{step} reads in its transaction: {firestore:?}"
            );
        }
        let publishes: Vec<&&&Received> = calls
            .iter()
            .filter(|s| {
                s.attributes.get("messaging.system").map(String::as_str) == Some("gcp_pubsub")
                    && s.kind == SpanKind::Producer as i32
            })
            .collect();
        assert!(
            !publishes.is_empty(),
            "{step}: its publish is a span under it: {calls:#?}"
        );
        for call in &calls {
            assert_eq!(call.service, step, "{step}: its calls are its own");
        }
    }

    // The log lines of this order name exported spans: the same trace, and span ids that
    // were exported.
    let lines: Vec<Value> = logs()
        .lines()
        .into_iter()
        .filter(|l| l["logging.googleapis.com/labels"]["order_id"] == order_id.as_str())
        .collect();
    let mut steps_logged = BTreeSet::new();
    for line in &lines {
        let Some(span_id) = line["logging.googleapis.com/spanId"].as_str() else {
            continue;
        };
        assert_eq!(
            line["logging.googleapis.com/trace"],
            format!("projects/saga-tests/traces/{}", caller.trace_id_hex()),
            "{line}"
        );
        assert!(
            by_id.contains_key(span_id),
            "a log line names span {span_id}, which was not exported: {line}"
        );
        if let Some(step) = line["logging.googleapis.com/labels"]["step"].as_str() {
            steps_logged.insert(step.to_owned());
        }
    }
    for (step, _) in STEPS {
        assert!(
            steps_logged.contains(step),
            "{step} logged nothing with its span: {lines:#?}"
        );
    }
    app.assert_invariants().await;
}
