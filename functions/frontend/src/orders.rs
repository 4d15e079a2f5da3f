//! The orders: `POST /order` and `GET /order/{id}`.
//!
//! `POST /order` answers who is ordering (the signed-in user; with sign-in off, the body's
//! `user`), keeps each client within its rate, validates the body, and creates the order
//! PENDING with its `order-requested` event in one transaction, then publishes it. An
//! `Idempotency-Key` names the order itself: the order id is derived from the user and the
//! key, so a repeated request finds its order, and another user's same key is another
//! order. `GET /order/{id}` shows an order and its history to its owner only: to anyone
//! else it does not exist (404), so an order's existence does not leak.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use jiff::Timestamp;
use saga_contracts::docs::collections;
use saga_contracts::events::{Event, EventBody, OrderDetails, OrderStatus};
use saga_contracts::order::{Emitted, OrderDoc, StepRecord};
use saga_contracts::trace::{TRACEPARENT, TraceContext};
use saga_infra::config::Config;
use saga_infra::outbox;
use saga_infra::spans::{Kind, Value};
use saga_infra::timeline::{self, EntryKind, TimelineEntry};
use serde::Serialize;
use tracing::Instrument;
use uuid::Uuid;

use crate::auth::Caller;
use crate::limits::{self, Peer};
use crate::validate::{self, FieldError};
use crate::{ApiError, App, STEP, is_json};

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
    /// The stock and the balance the order touched, and whether it was given back (with
    /// the history only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub touched: Vec<Touched>,
}

/// A document the saga changed for the order: `-quantity` of an item's stock, `-amount` of
/// a user's balance, and where it stands (RESERVED or RELEASED, CAPTURED or REFUNDED).
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Touched {
    /// `stock` or `balance`.
    pub kind: String,
    /// The item or the user.
    pub of: String,
    pub change: i64,
    pub status: String,
}

impl Touched {
    fn of(order: &OrderDoc) -> Vec<Touched> {
        let mut touched = Vec::new();
        if let Some(r) = &order.reservation {
            touched.push(Touched {
                kind: "stock".into(),
                of: order.item.clone(),
                change: -r.quantity,
                status: stored_name(&r.status),
            });
        }
        if let Some(p) = &order.payment {
            touched.push(Touched {
                kind: "balance".into(),
                of: order.user.clone(),
                change: -p.amount,
                status: stored_name(&p.status),
            });
        }
        touched
    }
}

/// A status as it is stored (its serde name: RESERVED, REFUNDED, ...).
fn stored_name(status: &impl Serialize) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
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
    pub(crate) fn of(id: Uuid, order: &OrderDoc) -> OrderView {
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
            touched: Vec::new(),
        }
    }

    /// With its history.
    fn with_history(id: Uuid, order: &OrderDoc) -> OrderView {
        OrderView {
            history: timeline::history(order)
                .into_iter()
                .map(HistoryEntry::from)
                .collect(),
            touched: Touched::of(order),
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

pub(crate) async fn create_order(
    State(app): State<App>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = app.users.caller(&headers).await?;
    let client = limits::client_key(
        caller.user(),
        &headers,
        peer,
        app.rt.config.limits.trust_forwarded,
    );
    app.rate
        .take(&client, std::time::Instant::now())
        .map_err(ApiError::TooMany)?;
    if !is_json(&headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = body.map_err(|r| ApiError::Body {
        status: r.status(),
        message: if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            format!("is larger than {} bytes", validate::MAX_BODY_BYTES)
        } else {
            "could not be read".into()
        },
    })?;
    let request =
        validate::order(&body, app.rt.config.fault_injection).map_err(ApiError::Invalid)?;
    let user = match (&caller, request.user) {
        (Caller::User(uid), None) => uid.clone(),
        (Caller::User(uid), Some(named)) if named == *uid => named,
        (Caller::User(_), Some(_)) => return Err(ApiError::NotYou),
        (Caller::Anyone, Some(named)) => named,
        (Caller::Anyone, None) => {
            return Err(ApiError::Invalid(vec![FieldError::new(
                "user",
                "is required",
            )]));
        }
    };
    let order = OrderDetails {
        item: request.item,
        quantity: request.quantity,
        user,
        payment_error: request.payment_error,
    };
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
    // Exported as the saga's first span: the order step's span is its child (the
    // `traceparent` of the event it publishes).
    let tracer = app.rt.tracer.clone();
    let attributes = match tracer.is_on() {
        true => vec![
            ("saga.step", Value::from(STEP)),
            ("saga.order_id", Value::from(order_id.to_string())),
            ("http.request.method", Value::from("POST")),
            ("http.route", Value::from("/order")),
        ],
        false => Vec::new(),
    };
    let work = accept(app, order, key, order_id, trace).instrument(span);
    tracer
        .scope("POST /order", Kind::Server, trace, attributes, work)
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
    config: &Config,
    now: Timestamp,
) -> OrderDoc {
    let mut doc = OrderDoc::new(order_id, order, now);
    doc.fingerprint = fingerprint;
    doc.lay_out(config.order_layout);
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
        emitted: Some(Emitted::of(&event, config.event_versions.emit, trace)),
    });
    doc
}

async fn accept(
    app: App,
    order: OrderDetails,
    key: Option<String>,
    order_id: Uuid,
    trace: TraceContext,
) -> Result<Response, ApiError> {
    let fingerprint = serde_json::to_string(&order).unwrap_or_default();
    let id = order_id.to_string();
    let rt = &app.rt;
    let config = rt.config.clone();
    let accepted = rt
        .store
        .transaction("accept order", |mut tx| {
            let (order, key, fingerprint, id, config) = (
                order.clone(),
                key.clone(),
                fingerprint.clone(),
                id.clone(),
                config.clone(),
            );
            async move {
                let now = Timestamp::now();
                let Some(key) = &key else {
                    // A new id: created without a read, on the condition that it is new.
                    let doc = accepted(order_id, &order, None, None, &trace, &config, now);
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
                let doc = accepted(
                    order_id,
                    &order,
                    Some(key),
                    Some(fingerprint),
                    &trace,
                    &config,
                    now,
                );
                tx.set(collections::ORDERS, &id, &doc)?;
                Ok(Accepted::New(Box::new(doc)))
            }
            .boxed()
        })
        .await?;

    let (doc, replayed) = match accepted {
        Accepted::KeyReused => return Err(ApiError::KeyReused),
        Accepted::New(_) if rt.config.faults.crash_after_commit_now() => {
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

pub(crate) async fn get_order(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<OrderView>, ApiError> {
    let caller = app.users.caller(&headers).await?;
    let id = Uuid::parse_str(&id).map_err(|_| {
        ApiError::Invalid(vec![FieldError::new("id", "must be an order id (a UUID)")])
    })?;
    // One read: the order holds its history. Someone else's order is as good as missing.
    let order = app
        .rt
        .store
        .order(&id.to_string())
        .await?
        .filter(|o| caller.may_see(&o.user))
        .ok_or(ApiError::NotFound(id))?;
    Ok(Json(OrderView::with_history(id, &order)))
}
