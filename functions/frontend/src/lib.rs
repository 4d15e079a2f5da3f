//! `frontend`: the shop's HTTP API and its page.
//!
//! - `POST /order {"item","quantity","user"}` ([`orders`]): who is ordering ([`auth`]), within
//!   their rate ([`limits`]), validated ([`validate`]); the order is created PENDING with its
//!   `order-requested` event in one transaction, published to `frontend`, answered 202.
//! - `GET /order/{id}`: the order and its history, to its owner only.
//! - `GET /` and `GET /orders/stream` ([`page`]): the shop, and its owner's recent orders
//!   live ([`live`]).

pub mod auth;
pub mod limits;
mod live;
mod orders;
mod page;
pub mod validate;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use saga_contracts::topology::Function;
use saga_infra::Runtime;
use saga_infra::outbox::{self, SweepReport};
use saga_infra::step::{self, PushError};
use saga_infra::store::StoreError;
use uuid::Uuid;

pub use orders::{HistoryEntry, OrderView, keyed_order_id};

use auth::{UserAuthError, Users};
use limits::{RateLimiter, StreamSlots};
use live::Live;
use validate::FieldError;

/// The frontend's step name in the order's records.
pub const STEP: &str = "frontend";

/// What every route of the frontend shares.
#[derive(Clone)]
pub struct App {
    pub rt: Runtime,
    pub users: Users,
    pub rate: Arc<RateLimiter>,
    pub streams: StreamSlots,
    live: Live,
}

pub fn router(runtime: Runtime) -> Router {
    let sweep = match Function::Frontend.sweep_path() {
        Some(path) => Router::new().route(path, post(sweep_pending).with_state(runtime.clone())),
        None => Router::new(),
    };
    let sweep = step::push_only(&runtime, sweep);
    let limits = &runtime.config.limits;
    let app = App {
        users: Users::new(&runtime.config.user_auth),
        rate: Arc::new(RateLimiter::new(
            1.0 / limits.post_every.as_secs_f64().max(1e-9),
            limits.post_burst,
        )),
        streams: StreamSlots::new(limits.streams_max),
        live: Live::new(runtime.store.clone(), page::RECENT, page::render),
        rt: runtime.clone(),
    };
    // Every request but the live stream, which has its own bound, is answered in time.
    let timed = Router::new()
        .route("/", get(page::page))
        .route("/order", post(orders::create_order))
        .route("/order/{id}", get(orders::get_order))
        .layer(DefaultBodyLimit::max(validate::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            limits.request_timeout,
            saga_infra::runtime::time_limit,
        ));
    Router::new()
        .route("/orders/stream", get(page::stream_orders))
        .merge(timed)
        .with_state(app)
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

/// The frontend's one error type: each variant maps to one status, logged once. A body says
/// what the client can act on, never a library's or a server's error text.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("{message}")]
    Body { status: StatusCode, message: String },
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error(transparent)]
    Auth(#[from] UserAuthError),
    #[error("you may only order as yourself")]
    NotYou,
    #[error("too many orders, retry after {0:?}")]
    TooMany(std::time::Duration),
    #[error("too many live streams open, retry later")]
    TooManyStreams,
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
        let retry_after = |secs: u64| {
            let mut headers = HeaderMap::new();
            if let Ok(value) = header::HeaderValue::from_str(&secs.max(1).to_string()) {
                headers.insert(header::RETRY_AFTER, value);
            }
            headers
        };
        if let ApiError::Auth(e) = self {
            return e.into_response();
        }
        let (status, body, headers) = match &self {
            ApiError::Auth(e) => (
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": e.to_string(), "field": "Authorization"}),
                HeaderMap::new(),
            ),
            ApiError::Invalid(errors) => (
                StatusCode::BAD_REQUEST,
                serde_json::json!({
                    "error": errors.iter().map(|e| format!("{} {}", e.field, e.message))
                        .collect::<Vec<_>>().join("; "),
                    "field": errors.first().map(|e| e.field.clone()),
                    "fields": errors.iter().map(field).collect::<Vec<_>>(),
                }),
                HeaderMap::new(),
            ),
            ApiError::Body { status, message } => (
                *status,
                serde_json::json!({"error": message, "field": "body"}),
                HeaderMap::new(),
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                serde_json::json!({"error": self.to_string(), "field": "Content-Type"}),
                HeaderMap::new(),
            ),
            ApiError::NotYou => (
                StatusCode::FORBIDDEN,
                serde_json::json!({"error": self.to_string(), "field": "user"}),
                HeaderMap::new(),
            ),
            ApiError::TooMany(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                serde_json::json!({"error": "too many orders at once, retry later"}),
                retry_after(wait.as_secs_f64().ceil() as u64),
            ),
            ApiError::TooManyStreams => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": self.to_string()}),
                retry_after(5),
            ),
            ApiError::KeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"error": self.to_string(), "field": "Idempotency-Key"}),
                HeaderMap::new(),
            ),
            ApiError::NotFound(_) => (
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": self.to_string(), "field": "id"}),
                HeaderMap::new(),
            ),
            ApiError::InjectedCrash => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "the order could not be confirmed, retry later"}),
                HeaderMap::new(),
            ),
            ApiError::Store(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "the order store is unavailable, retry later"}),
                retry_after(1),
            ),
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::info!(error = %self, %status, "request rejected");
        }
        (status, headers, Json(body)).into_response()
    }
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
