//! The step runtime: how a push-triggered function turns one delivery into exactly one effect.
//!
//! For each delivery:
//! 1. decode the envelope and event; if it can never succeed, park it and acknowledge;
//! 2. in one Firestore transaction: read the step's idempotency record and the documents the
//!    step names ([`Step::reads`]) in one batch get; if the record exists, the step already
//!    ran (a duplicate: [`Ack::Duplicate`], nothing written); otherwise let the step decide
//!    from what was read and queue its effect, and queue the idempotency record, the outgoing
//!    event's outbox record and the timeline entries; commit, on the condition that what was
//!    read is unchanged (a concurrent duplicate that committed first makes this one run
//!    again and find the record: [`Store::transaction`](crate::store::Store::transaction));
//! 3. publish the outgoing event if it is not yet published, and queue its mark (written in
//!    the background with others, see [`outbox::Marks`]); acknowledge.
//!
//! A failure in 2 or 3 answers 503, so Pub/Sub redelivers; the redelivery finds the record
//! and publishes the pending event. (A read before the transaction would only save
//! redeliveries a transaction, at the price of one more read for every first delivery.)

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::FutureExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use serde::Serialize;
use tracing::Instrument;

use crate::config::PushAuth;
use crate::events::{Event, EventBody, FailureReason, OrderDetails, OrderStatus};
use crate::outbox::{self, DeliverError, SweepReport};
use crate::push::{self, Poison};
use crate::push_auth::{OidcVerifier, require_push_token};
use crate::runtime::Runtime;
use crate::store::{
    OrderDoc, OutboxRecord, ParkedMessage, StepRecord, StoreError, Tx, collections, expiry_from,
    step_record_id,
};
use crate::timeline;
use crate::topology::PushSubscription;
use crate::trace::{TRACEPARENT, TraceContext};

/// What a step decided, once its effect is queued on the transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// A short description for the idempotency record and logs ("reserved 5 widget").
    pub summary: String,
    /// The event to publish after commit, if any.
    pub emit: Option<EventBody>,
    /// The event came before what it depends on (reordering): record nothing, answer 503 so
    /// Pub/Sub delivers it again later.
    pub not_yet: bool,
}

impl Outcome {
    pub fn emit(summary: impl Into<String>, body: EventBody) -> Outcome {
        Outcome {
            summary: summary.into(),
            emit: Some(body),
            not_yet: false,
        }
    }

    /// Nothing to do and nothing to say (a late or superseded event): recorded as done.
    pub fn skip(summary: impl Into<String>) -> Outcome {
        Outcome {
            summary: summary.into(),
            emit: None,
            not_yet: false,
        }
    }

    /// Too early: nothing is recorded and the delivery is retried.
    pub fn not_yet(summary: impl Into<String>) -> Outcome {
        Outcome {
            summary: summary.into(),
            emit: None,
            not_yet: true,
        }
    }
}

/// Fails the saga at this step: the order becomes FAILED with `reason`, and the
/// `saga-failed` event the janitor compensates is emitted. Shared by every forward step.
pub fn fail_saga(
    tx: &mut Tx<'_>,
    order: OrderDoc,
    details: &OrderDetails,
    reason: FailureReason,
    step: &str,
) -> Result<Outcome, StoreError> {
    let id = order.order_id.clone();
    tx.set(
        collections::ORDERS,
        &id,
        &OrderDoc {
            status: OrderStatus::Failed,
            reason: Some(reason),
            updated_at: Timestamp::now(),
            ..order
        },
    )?;
    Ok(Outcome::emit(
        format!("rejected: {reason}"),
        EventBody::SagaFailed {
            order: details.clone(),
            reason,
            step: step.to_owned(),
        },
    ))
}

/// A saga step: reads what it needs through the transaction, queues its effect on it, and
/// says what to emit. It may run several times for one delivery (transaction retries), so it
/// must not do anything outside the transaction.
pub trait Step: Send + Sync + 'static {
    /// The step's name in idempotency records and logs.
    const NAME: &'static str;
    /// The event types it consumes; any other is parked before anything is recorded, so a
    /// stray event can never mark the step done for its order.
    const ACCEPTS: &'static [&'static str];

    fn run<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<Outcome, StoreError>>;

    /// The documents (collection, id) `run` will read for `event`. The runtime reads them
    /// with the step's idempotency record, in one round trip, before `run`; `run`'s gets of
    /// them are then answered from that read. A get of a document not listed still works, at
    /// one more round trip.
    fn reads(&self, event: &Event) -> Vec<(&'static str, String)> {
        let _ = event;
        Vec::new()
    }
}

/// How a delivery was acknowledged (the response body of a 200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "ack", rename_all = "kebab-case")]
pub enum Ack {
    /// The step ran now.
    Processed {
        outcome: String,
        emitted_event_id: Option<String>,
    },
    /// The step had already run for this order: nothing changed.
    Duplicate {
        outcome: String,
        emitted_event_id: Option<String>,
    },
    /// The delivery can never succeed; it was kept in `parked/` with the reason.
    Parked { reason: String },
}

/// Why a delivery must be retried: the status *is* the ack, so these answer 503.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    #[error("fault injected: crashed after commit, before publishing")]
    InjectedCrash,
    #[error("too early, will retry: {0}")]
    NotYet(String),
    #[error("sweep left records unpublished: {0:?}")]
    SweepIncomplete(SweepReport),
}

impl IntoResponse for PushError {
    fn into_response(self) -> Response {
        // Logged once, here, with the span of the delivery.
        if let PushError::NotYet(_) = &self {
            tracing::info!(error = %self, "delivery early, Pub/Sub will redeliver");
        } else {
            tracing::error!(error = %self, "delivery failed, Pub/Sub will redeliver");
        }
        let body = serde_json::json!({ "error": self.to_string(), "retry": true });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// What the step's transaction found or did.
enum Ran {
    /// The step record (new or existing), its outbox record, and whether it was new.
    Done(Box<(StepRecord, Option<OutboxRecord>, bool)>),
    NotYet(String),
}

struct StepState<S> {
    step: Arc<S>,
    runtime: Runtime,
    /// Where deliveries come from: a subscription's name (or the sweep's), for parking.
    source: &'static str,
}

/// The router of a push-triggered function whose subscriptions all feed one step: its push
/// endpoints from the topology and its outbox sweep, behind push authentication.
pub fn router<S: Step>(runtime: Runtime, step: S) -> Router {
    let step = Arc::new(step);
    let router = runtime
        .function
        .consumes()
        .fold(Router::new(), |router, subscription| {
            route(router, &runtime, subscription, step.clone())
        });
    push_only(&runtime, router.merge(outbox_sweep_router(&runtime)))
}

/// Adds the push endpoint of `subscription`, delivering to `step`.
pub fn route<S: Step>(
    router: Router,
    runtime: &Runtime,
    subscription: &'static PushSubscription,
    step: Arc<S>,
) -> Router {
    let state = Arc::new(StepState {
        step,
        runtime: runtime.clone(),
        source: subscription.name,
    });
    router.route(subscription.path, post(handle::<S>).with_state(state))
}

/// What every route that only Pub/Sub's push (and the scheduler, which uses its identity)
/// calls gets: push authentication when it is configured, and, on the emulator, a connection
/// closed after each answer.
pub fn push_only(runtime: &Runtime, router: Router) -> Router {
    let (orders, sweeps) = (runtime.store.meter().clone(), runtime.sweep_meter.clone());
    let router = router.route(
        METER_PATH,
        axum::routing::get(move || async move {
            Json(crate::meter::Metered {
                orders: orders.counts(),
                sweeps: sweeps.counts(),
            })
        }),
    );
    let router = match &runtime.config.push_auth {
        PushAuth::Disabled => router,
        PushAuth::Oidc(settings) => router.layer(axum::middleware::from_fn_with_state(
            OidcVerifier::new(settings.clone()),
            require_push_token,
        )),
    };
    if runtime.config.pubsub.is_emulator() {
        // The emulator opens a new connection for every push and never reuses or closes one
        // (it does not read the response): kept alive, each would hold its buffers here until
        // the emulator's JVM collects its socket. Cloud Run's front end reuses connections,
        // so there they stay alive.
        router.layer(axum::middleware::map_response(close_connection))
    } else {
        router
    }
}

async fn close_connection(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// `GET /internal/meter`: the process's operation counts ([`crate::meter`]), for the bench;
/// behind push authentication like the sweeps.
pub const METER_PATH: &str = "/internal/meter";

/// `POST /internal/sweep/outbox`: republishes this function's stale outbox records.
pub fn outbox_sweep_router(runtime: &Runtime) -> Router {
    Router::new().route(
        runtime.function.sweep_path(),
        post(sweep_outbox).with_state(runtime.clone()),
    )
}

async fn sweep_outbox(State(runtime): State<Runtime>) -> Result<Json<SweepReport>, PushError> {
    let runtime = runtime.sweeping();
    // Marks still queued in this instance would read as unpublished.
    runtime.marks.flush().await;
    let report = outbox::sweep(
        &runtime.store,
        &runtime.publisher,
        runtime.function.publishes(),
        runtime.config.outbox_grace,
    )
    .await?;
    if report.failed > 0 {
        return Err(PushError::SweepIncomplete(report));
    }
    Ok(Json(report))
}

async fn handle<S: Step>(
    State(state): State<Arc<StepState<S>>>,
    body: Bytes,
) -> Result<Json<Ack>, PushError> {
    let delivery = match push::decode(&body) {
        Ok(delivery) => delivery,
        Err(poison) => return park(&state, &body, poison).await.map(Json),
    };
    let kind = delivery.event.body.kind();
    if !S::ACCEPTS.contains(&kind) {
        let poison = Poison {
            reason: format!("event type {kind} is not consumed by step {}", S::NAME),
            message_id: Some(delivery.envelope.message.message_id),
        };
        return park(&state, &body, poison).await.map(Json);
    }
    // This step's span in the saga's trace: a child of the span that published the event.
    let trace = TraceContext::continue_from(
        delivery
            .envelope
            .message
            .attributes
            .get(TRACEPARENT)
            .map(String::as_str),
    );
    let span = step_span(S::NAME, &delivery.event, &trace);
    let delivery_id = delivery.envelope.message.message_id;
    process(&state, delivery.event, trace, &delivery_id)
        .instrument(span)
        .await
        .map(Json)
}

fn step_span(step: &str, event: &Event, trace: &TraceContext) -> tracing::Span {
    tracing::info_span!(
        "step",
        step,
        order_id = %event.order_id,
        event_id = %event.event_id,
        event_type = event.body.kind(),
        trace_id = %trace.trace_id_hex(),
        span_id = %trace.span_id_hex(),
        parent_span_id = trace.parent_span_id_hex(),
    )
}

/// Runs `step` for `event` exactly once per order, as a push delivery would (the janitor's
/// timeout sweep feeds it events it makes itself). `source` names where the event came from.
pub async fn run_once<S: Step>(
    runtime: &Runtime,
    source: &'static str,
    step: Arc<S>,
    event: Event,
) -> Result<Ack, PushError> {
    let state = StepState {
        step,
        runtime: runtime.clone(),
        source,
    };
    let trace = TraceContext::root();
    let span = step_span(S::NAME, &event, &trace);
    let delivery_id = format!("{source}-{}", event.event_id);
    process(&state, event, trace, &delivery_id)
        .instrument(span)
        .await
}

/// One delivery: the step's transaction, then the publish of what it emitted.
async fn process<S: Step>(
    state: &StepState<S>,
    event: Event,
    trace: TraceContext,
    delivery_id: &str,
) -> Result<Ack, PushError> {
    let store = &state.runtime.store;
    let publisher = &state.runtime.publisher;
    let key = step_record_id(&event.order_id.to_string(), S::NAME);

    let event = Arc::new(event);
    let ran = store
        .transaction(S::NAME, |mut tx| {
            let step = state.step.clone();
            let event = event.clone();
            let key = key.clone();
            async move {
                // The idempotency record and what the step will read, in one round trip.
                let reads = step.reads(&event);
                let ahead: Vec<(&str, &str)> = std::iter::once((collections::STEPS, key.as_str()))
                    .chain(reads.iter().map(|(c, id)| (*c, id.as_str())))
                    .collect();
                tx.read_ahead(&ahead).await?;
                if let Some(done) = tx.get::<StepRecord>(collections::STEPS, &key).await? {
                    let outbox = match &done.emitted_event_id {
                        Some(id) => tx.get::<OutboxRecord>(collections::OUTBOX, id).await?,
                        None => None,
                    };
                    return Ok(Ran::Done(Box::new((done, outbox, false))));
                }
                let outcome = step.run(&mut tx, &event).await?;
                if outcome.not_yet {
                    return Ok(Ran::NotYet(outcome.summary));
                }
                let now = Timestamp::now();
                let outbox = outcome
                    .emit
                    .map(|body| outbox::record(&Event::new(event.order_id, body), now, &trace));
                let record = StepRecord {
                    order_id: event.order_id.to_string(),
                    step: S::NAME.to_owned(),
                    incoming_event_id: event.event_id.to_string(),
                    outcome: outcome.summary,
                    emitted_event_id: outbox.as_ref().map(|o| o.event_id.clone()),
                    processed_at: now,
                    expire_at: expiry_from(now),
                };
                tx.set(collections::STEPS, &key, &record)?;
                let mut entries = vec![timeline::consumed(
                    S::NAME,
                    event.body.kind(),
                    &record.incoming_event_id,
                    &record.order_id,
                    &record.outcome,
                    &trace,
                    now,
                )];
                if let Some(outbox) = &outbox {
                    outbox::stage(&mut tx, outbox)?;
                    entries.push(timeline::emitted(S::NAME, outbox, &trace));
                }
                timeline::stage(&mut tx, entries)?;
                Ok(Ran::Done(Box::new((record, outbox, true))))
            }
            .boxed()
        })
        .await?;
    let (record, outbox, fresh) = match ran {
        Ran::Done(done) => *done,
        Ran::NotYet(why) => return Err(PushError::NotYet(why)),
    };

    if state.runtime.config.faults.crash_after_commit && fresh {
        return Err(PushError::InjectedCrash);
    }
    if let Some(outbox) = outbox.filter(|o| !o.published) {
        outbox::deliver_batched(publisher, &state.runtime.marks, &outbox)
            .await
            .map_err(DeliverError::from)?;
    }
    if fresh {
        tracing::info!(outcome = %record.outcome, "step done");
        Ok(Ack::Processed {
            outcome: record.outcome,
            emitted_event_id: record.emitted_event_id,
        })
    } else {
        tracing::info!(outcome = %record.outcome, "concurrent duplicate, step already done");
        note_duplicate(store, S::NAME, &event, delivery_id, &trace).await;
        Ok(Ack::Duplicate {
            outcome: record.outcome,
            emitted_event_id: record.emitted_event_id,
        })
    }
}

/// Adds the duplicate to the timeline; losing that line loses no state, so it only warns.
async fn note_duplicate(
    store: &crate::store::Store,
    step: &str,
    event: &Event,
    delivery_id: &str,
    trace: &TraceContext,
) {
    if let Err(error) = timeline::record_duplicate(store, step, event, delivery_id, trace).await {
        tracing::warn!(%error, "duplicate not recorded in the timeline");
    }
}

/// Most of a parked body that is kept.
const PARKED_BODY_LIMIT: usize = 64 * 1024;

/// Keeps a delivery that can never succeed in `parked/`, and acknowledges it. If it cannot be
/// kept, the delivery is retried rather than lost.
async fn park<S>(state: &StepState<S>, body: &[u8], poison: Poison) -> Result<Ack, PushError> {
    let function = state.runtime.function.name();
    let subscription = state.source;
    // Parking the same message twice writes the same document.
    let id = match &poison.message_id {
        Some(message_id) => format!("{subscription}--{message_id}"),
        None => format!(
            "{subscription}--{}",
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, body)
        ),
    };
    let text = String::from_utf8_lossy(body);
    let kept = &text[..text.floor_char_boundary(PARKED_BODY_LIMIT)];
    let parked = ParkedMessage {
        function: function.to_owned(),
        subscription: subscription.to_owned(),
        message_id: poison.message_id.clone(),
        reason: poison.reason.clone(),
        body: kept.to_owned(),
        parked_at: Timestamp::now(),
    };
    state
        .runtime
        .store
        .set(collections::PARKED, &id, &parked)
        .await?;
    tracing::warn!(
        function,
        subscription,
        parked_id = %id,
        reason = %poison.reason,
        "poison message parked and acknowledged"
    );
    Ok(Ack::Parked {
        reason: poison.reason,
    })
}
