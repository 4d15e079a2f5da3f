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
use saga_infra::outbox;
use saga_infra::step;
use saga_infra::store::{
    IdempotencyRecord, OrderDoc, OutboxRecord, RequestDoc, StoreError, collections, expiry_from,
};
use saga_infra::timeline::{self, EntryKind, TimelineEntry};
use saga_infra::trace::{TRACEPARENT, TraceContext};
use serde::Serialize;
use tracing::Instrument;
use uuid::Uuid;

use live::Live;
use validate::FieldError;

pub fn router(runtime: Runtime) -> Router {
    let sweep = step::push_only(&runtime, step::outbox_sweep_router(&runtime));
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
    fn pending(id: Uuid, request: RequestDoc) -> OrderView {
        OrderView {
            order_id: id,
            status: OrderStatus::Pending,
            item: request.item,
            quantity: request.quantity,
            user: request.user,
            reason: None,
            amount: None,
            created_at: request.created_at,
            updated_at: request.created_at,
            history: Vec::new(),
        }
    }

    fn of(id: Uuid, order: OrderDoc) -> OrderView {
        OrderView {
            order_id: id,
            status: order.status,
            item: order.item,
            quantity: order.quantity,
            user: order.user,
            reason: order.reason.map(|r| r.to_string()),
            amount: order.amount,
            created_at: order.created_at,
            updated_at: order.updated_at,
            history: Vec::new(),
        }
    }
}

/// The result of the accepting transaction.
enum Accepted {
    /// A new order: its outbox record, and the request as committed (what the answer shows).
    New(Box<(OutboxRecord, RequestDoc)>),
    /// The key was seen with the same request: this is its order.
    Replay {
        order_id: Uuid,
        event_id: String,
    },
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

    let order_id = Uuid::new_v4();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let trace = TraceContext::from_http(header(TRACEPARENT), header("x-cloud-trace-context"))
        .map_or_else(TraceContext::root, |parent| parent.child());
    let span = tracing::info_span!(
        "accept",
        step = "frontend",
        order_id = %order_id,
        trace_id = %trace.trace_id_hex(),
        span_id = %trace.span_id_hex(),
        parent_span_id = trace.parent_span_id_hex(),
    );
    accept(rt, order, key, order_id, trace)
        .instrument(span)
        .await
}

async fn accept(
    rt: Runtime,
    order: OrderDetails,
    key: Option<String>,
    order_id: Uuid,
    trace: TraceContext,
) -> Result<Response, ApiError> {
    let fingerprint = serde_json::to_string(&order).unwrap_or_default();
    let accepted = rt
        .store
        .transaction("accept order", |mut tx| {
            let (order, key, fingerprint) = (order.clone(), key.clone(), fingerprint.clone());
            async move {
                let now = Timestamp::now();
                if let Some(key) = &key {
                    if let Some(seen) = tx
                        .get::<IdempotencyRecord>(collections::IDEMPOTENCY_KEYS, key)
                        .await?
                    {
                        return Ok(match Uuid::parse_str(&seen.order_id) {
                            Ok(id) if seen.fingerprint == fingerprint => Accepted::Replay {
                                order_id: id,
                                event_id: requested_event_id(id, &order),
                            },
                            _ => Accepted::KeyReused,
                        });
                    }
                    tx.set(
                        collections::IDEMPOTENCY_KEYS,
                        key,
                        &IdempotencyRecord {
                            order_id: order_id.to_string(),
                            fingerprint,
                            created_at: now,
                            expire_at: expiry_from(now),
                        },
                    )?;
                }
                let accepted_request = RequestDoc {
                    order_id: order_id.to_string(),
                    item: order.item.clone(),
                    quantity: i64::from(order.quantity),
                    user: order.user.clone(),
                    payment_error: order.payment_error,
                    idempotency_key: key.clone(),
                    created_at: now,
                };
                tx.set(
                    collections::REQUESTS,
                    &order_id.to_string(),
                    &accepted_request,
                )?;
                let event = Event::new(order_id, EventBody::OrderRequested { order });
                let record = outbox::record(&event, now, &trace);
                outbox::stage(&mut tx, &record)?;
                let id = order_id.to_string();
                let request = key.as_deref().unwrap_or("http-request");
                timeline::stage(
                    &mut tx,
                    vec![
                        timeline::consumed(
                            "frontend",
                            "order-request",
                            request,
                            &id,
                            "accepted",
                            &trace,
                            now,
                        ),
                        timeline::emitted("frontend", &record, &trace),
                    ],
                )?;
                Ok(Accepted::New(Box::new((record, accepted_request))))
            }
            .boxed()
        })
        .await?;

    let (view, replayed) = match accepted {
        Accepted::KeyReused => return Err(ApiError::KeyReused),
        Accepted::New(_) if rt.config.faults.crash_after_commit => {
            return Err(ApiError::InjectedCrash);
        }
        Accepted::New(accepted) => {
            let (record, request) = *accepted;
            // The order is committed: if publishing fails now, a redelivery-free path
            // (the outbox sweep) publishes it; the user's order is accepted either way.
            if let Err(error) = outbox::deliver_batched(&rt.publisher, &rt.marks, &record).await {
                tracing::warn!(%error, %order_id, "order accepted, publish deferred to the outbox sweep");
            }
            // Answered from what was just committed: no read back.
            (OrderView::pending(order_id, request), false)
        }
        Accepted::Replay { order_id, event_id } => {
            if let Err(error) = outbox::deliver_pending(&rt.store, &rt.publisher, &event_id).await {
                tracing::warn!(%error, %order_id, "replayed order still waiting to be published");
            }
            let view = find_order(&rt, order_id)
                .await?
                .ok_or(ApiError::NotFound(order_id))?;
            (view, true)
        }
    };
    let order_id = view.order_id;
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

fn requested_event_id(order_id: Uuid, order: &OrderDetails) -> String {
    Event::id_for(
        order_id,
        &EventBody::OrderRequested {
            order: order.clone(),
        },
    )
    .to_string()
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
    find_order(&rt, id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound(id))
}

/// The order if the saga has created it, else the accepted request as PENDING; with its
/// history.
async fn find_order(rt: &Runtime, id: Uuid) -> Result<Option<OrderView>, StoreError> {
    let key = id.to_string();
    let view = match rt.store.get::<OrderDoc>(collections::ORDERS, &key).await? {
        Some(order) => Some(OrderView::of(id, order)),
        None => rt
            .store
            .get::<RequestDoc>(collections::REQUESTS, &key)
            .await?
            .map(|r| OrderView::pending(id, r)),
    };
    let Some(mut view) = view else {
        return Ok(None);
    };
    view.history = timeline::history(&rt.store, &key)
        .await?
        .into_iter()
        .map(HistoryEntry::from)
        .collect();
    Ok(Some(view))
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
    use saga_infra::store::Context;
    let orders: Vec<OrderDoc> = rt
        .store
        .db()
        .fluent()
        .select()
        .from(collections::ORDERS)
        .order(|o| o.fields([o.field("updated_at").desc()]))
        .limit(RECENT)
        .obj()
        .query()
        .await
        .context("reading recent orders")?;
    rt.store.meter().query(orders.len());
    Ok(orders
        .into_iter()
        .filter_map(|o| {
            Uuid::parse_str(&o.order_id)
                .ok()
                .map(|id| OrderView::of(id, o))
        })
        .collect())
}
