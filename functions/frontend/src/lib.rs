//! `frontend`: the shop's HTTP API.
//!
//! - `POST /order {"item","quantity","user"}`: validates, gives the order a UUID, commits the
//!   request with its `order-requested` event in the outbox (and the `Idempotency-Key`, if
//!   given) in one transaction, publishes to `frontend`, answers 202.
//! - `GET /order/{id}`: the saga's status.

mod live;
pub mod validate;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::FutureExt;
use jiff::Timestamp;
use saga_infra::Runtime;
use saga_infra::events::{Event, EventBody, OrderDetails, OrderStatus};
use saga_infra::order::{Emitted, OrderDoc, StepRecord};
use saga_infra::outbox::{self, SweepReport};
use saga_infra::step::{self, PushError};
use saga_infra::store::{StoreError, collections};
use saga_infra::timeline::{self, EntryKind, TimelineEntry};
use saga_infra::topology::Function;
use saga_infra::trace::{TRACEPARENT, TraceContext};
use serde::Serialize;
use tracing::Instrument;
use uuid::Uuid;

use live::Live;
use validate::FieldError;

/// The frontend's step name in the order's records.
pub const STEP: &str = "frontend";

pub fn router(runtime: Runtime) -> Router {
    let sweep = match Function::Frontend.sweep_path() {
        Some(path) => Router::new().route(path, post(sweep_pending).with_state(runtime.clone())),
        None => Router::new(),
    };
    let sweep = step::push_only(&runtime, sweep);
    let live = Live::new(REFRESH);
    Router::new()
        .route("/", get(page))
        .route(
            "/orders/stream",
            get(move |State(rt): State<Runtime>| stream_orders(rt, live.clone())),
        )
        .route("/order", post(create_order))
        .route("/order/{id}", get(get_order))
        .layer(DefaultBodyLimit::max(validate::MAX_BODY_BYTES))
        .with_state(runtime)
        .merge(sweep)
}

/// `POST /internal/sweep/outbox`: the frontend has no redelivery, so the events of orders
/// still PENDING a grace period after they were accepted (their publish may have failed, or
/// the instance died before it) are published again.
async fn sweep_pending(State(runtime): State<Runtime>) -> Result<Json<SweepReport>, PushError> {
    let runtime = runtime.sweeping();
    let report = outbox::sweep_pending(
        &runtime.store,
        &runtime.publisher,
        STEP,
        runtime.config.outbox_grace,
    )
    .await?;
    if report.failed > 0 {
        return Err(PushError::SweepIncomplete(report));
    }
    Ok(Json(report))
}

/// The frontend's one error type: each variant maps to one status, logged once.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("{message}")]
    Body { status: StatusCode, message: String },
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("Idempotency-Key was already used with a different request")]
    KeyReused,
    #[error("no order {0}")]
    NotFound(Uuid),
    #[error("fault injected: crashed after commit, before publishing")]
    InjectedCrash,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let field = |e: &FieldError| serde_json::json!({"field": e.field, "message": e.message});
        let (status, body) = match &self {
            ApiError::Invalid(errors) => (
                StatusCode::BAD_REQUEST,
                serde_json::json!({
                    "error": errors.iter().map(|e| format!("{} {}", e.field, e.message))
                        .collect::<Vec<_>>().join("; "),
                    "field": errors.first().map(|e| e.field.clone()),
                    "fields": errors.iter().map(field).collect::<Vec<_>>(),
                }),
            ),
            ApiError::Body { status, message } => (
                *status,
                serde_json::json!({"error": message, "field": "body"}),
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                serde_json::json!({"error": self.to_string(), "field": "Content-Type"}),
            ),
            ApiError::KeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"error": self.to_string(), "field": "Idempotency-Key"}),
            ),
            ApiError::NotFound(_) => (
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": self.to_string(), "field": "id"}),
            ),
            ApiError::InjectedCrash => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": self.to_string()}),
            ),
            ApiError::Store(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "the order store is unavailable, retry later"}),
            ),
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::info!(error = %self, %status, "request rejected");
        }
        (status, Json(body)).into_response()
    }
}

/// An order as the API shows it.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct OrderView {
    pub order_id: Uuid,
    pub status: OrderStatus,
    pub item: String,
    pub quantity: i64,
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub amount: Option<i64>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// What happened to the order, oldest first.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// One line of an order's timeline.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct HistoryEntry {
    pub at: Timestamp,
    pub step: String,
    pub kind: EntryKind,
    pub event_type: String,
    pub event_id: String,
    pub outcome: String,
}

impl From<TimelineEntry> for HistoryEntry {
    fn from(e: TimelineEntry) -> Self {
        HistoryEntry {
            at: e.at,
            step: e.step,
            kind: e.kind,
            event_type: e.event_type,
            event_id: e.event_id,
            outcome: e.outcome,
        }
    }
}

impl OrderView {
    fn of(id: Uuid, order: &OrderDoc) -> OrderView {
        OrderView {
            order_id: id,
            status: order.status(),
            item: order.item.clone(),
            quantity: order.quantity,
            user: order.user.clone(),
            reason: order.reason().map(|r| r.to_string()),
            amount: order.amount,
            created_at: order.created_at,
            updated_at: order.updated_at,
            history: Vec::new(),
        }
    }

    /// With its history.
    fn with_history(id: Uuid, order: &OrderDoc) -> OrderView {
        OrderView {
            history: timeline::history(order)
                .into_iter()
                .map(HistoryEntry::from)
                .collect(),
            ..OrderView::of(id, order)
        }
    }
}

/// The result of the accepting transaction.
enum Accepted {
    /// A new order: as committed (what the answer shows, and the event to publish).
    New(Box<OrderDoc>),
    /// The key was seen with the same request: this is its order.
    Replay(Box<OrderDoc>),
    KeyReused,
}

async fn create_order(
    State(rt): State<Runtime>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !is_json(&headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = body.map_err(|r| ApiError::Body {
        status: r.status(),
        message: r.body_text(),
    })?;
    let order = validate::order(&body, rt.config.fault_injection).map_err(ApiError::Invalid)?;
    let key = headers
        .get("idempotency-key")
        .map(|v| validate::idempotency_key(v.as_bytes()))
        .transpose()
        .map_err(|e| ApiError::Invalid(vec![e]))?;

    let order_id = match &key {
        Some(key) => keyed_order_id(&order.user, key),
        None => Uuid::new_v4(),
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let trace = TraceContext::from_http(header(TRACEPARENT), header("x-cloud-trace-context"))
        .map_or_else(TraceContext::root, |parent| parent.child());
    let span = tracing::info_span!(
        "accept",
        step = STEP,
        order_id = %order_id,
        trace_id = %trace.trace_id_hex(),
        span_id = %trace.span_id_hex(),
        parent_span_id = trace.parent_span_id_hex(),
    );
    accept(rt, order, key, order_id, trace)
        .instrument(span)
        .await
}

/// The order id an `Idempotency-Key` stands for: derived from the user and the key, so the
/// order document itself is the key's record (no other document, and no read when a
/// request carries no key), and one user's key never names another's order.
pub fn keyed_order_id(user: &str, key: &str) -> Uuid {
    const KEYS: Uuid = Uuid::from_u128(0x6b1e_40a4_1c8e_4e5c_9d47_02b0_1d6e_a8f3);
    Uuid::new_v5(&KEYS, format!("{user}\n{key}").as_bytes())
}

/// The order as accepted: PENDING, with the frontend's record (the request it consumed and
/// the `order-requested` event it owes the order step).
fn accepted(
    order_id: Uuid,
    order: &OrderDetails,
    key: Option<&str>,
    fingerprint: Option<String>,
    trace: &TraceContext,
    now: Timestamp,
) -> OrderDoc {
    let mut doc = OrderDoc::new(order_id, order, now);
    doc.fingerprint = fingerprint;
    let event = Event::new(
        order_id,
        EventBody::OrderRequested {
            order: order.clone(),
        },
    );
    doc.record(StepRecord {
        step: STEP.to_owned(),
        consumed_id: key.unwrap_or("http-request").to_owned(),
        consumed_type: "order-request".to_owned(),
        outcome: "accepted".to_owned(),
        at: now,
        trace_id: trace.trace_id_hex(),
        emitted: Some(Emitted::of(&event, trace)),
    });
    doc
}

async fn accept(
    rt: Runtime,
    order: OrderDetails,
    key: Option<String>,
    order_id: Uuid,
    trace: TraceContext,
) -> Result<Response, ApiError> {
    let fingerprint = serde_json::to_string(&order).unwrap_or_default();
    let id = order_id.to_string();
    let accepted = rt
        .store
        .transaction("accept order", |mut tx| {
            let (order, key, fingerprint, id) =
                (order.clone(), key.clone(), fingerprint.clone(), id.clone());
            async move {
                let now = Timestamp::now();
                let Some(key) = &key else {
                    // A new id: created without a read, on the condition that it is new.
                    let doc = accepted(order_id, &order, None, None, &trace, now);
                    tx.create(collections::ORDERS, &id, &doc)?;
                    return Ok(Accepted::New(Box::new(doc)));
                };
                if let Some(seen) = tx.get::<OrderDoc>(collections::ORDERS, &id).await? {
                    return Ok(
                        if seen.fingerprint.as_deref() == Some(fingerprint.as_str()) {
                            Accepted::Replay(Box::new(seen))
                        } else {
                            Accepted::KeyReused
                        },
                    );
                }
                let doc = accepted(order_id, &order, Some(key), Some(fingerprint), &trace, now);
                tx.set(collections::ORDERS, &id, &doc)?;
                Ok(Accepted::New(Box::new(doc)))
            }
            .boxed()
        })
        .await?;

    let (doc, replayed) = match accepted {
        Accepted::KeyReused => return Err(ApiError::KeyReused),
        Accepted::New(_) if rt.config.faults.crash_after_commit => {
            return Err(ApiError::InjectedCrash);
        }
        Accepted::New(doc) => (doc, false),
        Accepted::Replay(doc) => (doc, true),
    };
    // The order is committed: if publishing fails now (or did for the first request with
    // this key), the sweep publishes it while the order is PENDING; the user's order is
    // accepted either way.
    if doc.status() == OrderStatus::Pending
        && let Some(emitted) = doc.step(STEP).and_then(|r| r.emitted.as_ref())
        && let Err(error) = outbox::publish(&rt.publisher, emitted).await
    {
        tracing::warn!(%error, %order_id, "order accepted, publish deferred to the sweep");
    }
    // Answered from what was committed or found: no read back.
    let view = if replayed {
        OrderView::with_history(order_id, &doc)
    } else {
        OrderView::of(order_id, &doc)
    };
    tracing::info!(%order_id, replayed, "order accepted");
    let location = format!("/order/{order_id}");
    let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        })
}

async fn get_order(
    State(rt): State<Runtime>,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| {
        ApiError::Invalid(vec![FieldError {
            field: "id".into(),
            message: "must be an order id (a UUID)".into(),
        }])
    })?;
    // One read: the order holds its history.
    let order = rt
        .store
        .order(&id.to_string())
        .await?
        .ok_or(ApiError::NotFound(id))?;
    Ok(Json(OrderView::with_history(id, &order)))
}

const PAGE: &str = include_str!("../assets/index.html");

/// `GET /`: the shop in a browser: a form, the live list of recent orders, their timelines.
async fn page(State(rt): State<Runtime>) -> axum::response::Html<String> {
    axum::response::Html(PAGE.replace(
        "__FAULT_INJECTION__",
        if rt.config.fault_injection {
            "true"
        } else {
            "false"
        },
    ))
}

/// How many recent orders the page shows, and how often it is refreshed.
const RECENT: u32 = 30;
const REFRESH: std::time::Duration = std::time::Duration::from_millis(500);

/// `GET /orders/stream`: server-sent events; an `orders` event with the recent orders
/// whenever they change. Every open page shares one poller ([`Live`]).
async fn stream_orders(
    rt: Runtime,
    live: Live,
) -> axum::response::Sse<
    impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event as Sse, KeepAlive};
    use futures::StreamExt;
    let stopping = rt.stopping.clone();
    let page = live.subscribe(move || {
        let rt = rt.clone();
        async move {
            match recent_orders(&rt).await {
                Ok(orders) => Some(serde_json::to_string(&orders).unwrap_or_default()),
                Err(error) => {
                    tracing::warn!(%error, "recent orders unavailable");
                    None
                }
            }
        }
    });
    let stream = futures::stream::unfold((page, true), |(mut page, first)| async move {
        let orders = live::next(&mut page, first).await?;
        let event = Sse::default().event("orders").data(orders.as_ref());
        Some((Ok(event), (page, false)))
    });
    // A stream never ends by itself: it ends when the process stops, so the server can.
    let stream = stream.take_until(async move { stopping.wait().await });
    axum::response::Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn recent_orders(rt: &Runtime) -> Result<Vec<OrderView>, StoreError> {
    let orders = rt.store.recent_orders(RECENT).await?;
    Ok(orders
        .iter()
        .filter_map(|o| o.order_uuid().map(|id| OrderView::of(id, o)))
        .collect())
}
