//! The operator's console: a page of the parked messages and dead letters, each with a
//! redrive button (what `saga dlq list` and `saga dlq redrive` do, in a browser).
//!
//! It is an operator tool, so it has the operator tools' protection and no other: it is
//! served on 127.0.0.1 by `saga up` (on its control port) or by `saga console`, and acts with
//! the credentials of whoever runs it (the emulators, or Application Default Credentials
//! with `--cloud`). Nothing public serves it, and the functions' service accounts are never
//! given the dead-letter subscriptions.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::{get, post};
use axum::{Json, Router};
use saga_infra::store::Store;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::pubsub_rest::PubsubRest;
use crate::{self as ops, Selection, Target};

const PAGE: &str = include_str!("console.html");

#[derive(Clone)]
struct Console {
    store: Store,
    pubsub: Arc<PubsubRest>,
}

#[derive(Deserialize)]
struct Redrive {
    place: String,
    id: String,
}

/// The console's routes: `GET /` (the page), `GET /letters`, `POST /redrive`.
pub fn router(store: Store, pubsub: PubsubRest) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/letters", get(letters))
        .route("/redrive", post(redrive))
        .with_state(Console {
            store,
            pubsub: Arc::new(pubsub),
        })
}

async fn letters(State(c): State<Console>) -> (StatusCode, Json<Value>) {
    match ops::dlq_list(&c.store, &c.pubsub).await {
        Ok(letters) => (StatusCode::OK, Json(json!(letters))),
        Err(e) => {
            tracing::warn!(error = %e, "listing dead letters");
            let body = json!({"error": format!("listing the letters failed: {e}")});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body))
        }
    }
}

async fn redrive(State(c): State<Console>, Json(what): Json<Redrive>) -> (StatusCode, Json<Value>) {
    let selection = Selection::Id(what.id.clone());
    match ops::dlq_redrive(&c.store, &c.pubsub, &what.place, &selection, false).await {
        Ok(r) if r.republished > 0 => (
            StatusCode::OK,
            Json(json!({"republished": r.republished, "id": what.id})),
        ),
        Ok(_) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no letter {} in {} to redrive", what.id, what.place)})),
        ),
        Err(ops::OpsError::Usage(e)) => (StatusCode::BAD_REQUEST, Json(json!({"error": e}))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": format!("redriving failed: {e}")})),
        ),
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub target: Target,
    /// The local port the console listens on (127.0.0.1 only).
    #[arg(long, default_value_t = 8088)]
    pub port: u16,
}

/// `saga console`: serves the console until Ctrl-C.
pub async fn serve(args: &ConsoleArgs) -> Result<(), ops::OpsError> {
    let app = router(args.target.store().await?, args.target.pubsub()?);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(|e| ops::OpsError::Usage(format!("port {}: {e}", args.port)))?;
    println!(
        "The operator console of {}: http://127.0.0.1:{}/ (Ctrl-C stops it)",
        args.target.project, args.port
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(saga_infra::runtime::shutdown_signal())
        .await
        .map_err(|e| ops::OpsError::Usage(format!("serving: {e}")))
}
