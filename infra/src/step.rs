//! The step runtime: how a push-triggered function turns one delivery into exactly one effect.
//!
//! For each delivery:
//! 1. decode the envelope and event; if it can never succeed, park it and acknowledge;
//! 2. in one Firestore transaction: read the order document together with the documents the
//!    step names ([`Step::reads`]) in one batch get; if the order has the step's record, the
//!    step already ran (a duplicate: [`Ack::Duplicate`], nothing written); otherwise let the
//!    step decide from what was read ([`Step::run`]: its effect queued on the transaction,
//!    the order as it now is returned in an [`Outcome`]), add the step's record (what it
//!    consumed and decided, and the event it emits) to the order, and write the order once;
//!    commit, on the condition that what was written is unchanged since it was read (a
//!    concurrent duplicate that committed first makes this one run again and find the
//!    record: [`Store::transaction_with`](crate::store::Store::transaction_with));
//! 3. publish the recorded event (also for a duplicate: the first delivery may have died
//!    between its commit and its publish), then acknowledge. Nothing marks it published:
//!    a delivery that could not publish answers 503, so Pub/Sub delivers it again.
//!
//! A failure in 2 or 3 answers 503, so Pub/Sub redelivers.

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
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::config::PushAuth;
use crate::events::{Event, EventBody, FailureReason, OrderStatus};
use crate::order::{Duplicate, Emitted, IllegalMove, OrderDoc, StepRecord};
use crate::outbox::{self, SweepReport};
use crate::publisher::PublishError;
use crate::push::{self, Arrival, Arrived, NotDecoded, Poison};
use crate::push_auth::{OidcVerifier, require_push_token};
use crate::runtime::Runtime;
use crate::spans::{Attributes, Kind, Value};
use crate::store::{ParkedMessage, StoreError, Tx, collections};
use crate::topology::PushSubscription;
use crate::trace::{TRACEPARENT, TraceContext};

/// What a step decided, its effect queued on the transaction: the order as it now is.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It acted, and owes the next step `event`.
    Emit {
        order: OrderDoc,
        /// What it did, for the record and the logs ("reserved 5 widget").
        summary: String,
        event: EventBody,
    },
    /// It acted, or found nothing to do (a late or superseded event), and emits nothing.
    Done { order: OrderDoc, summary: String },
    /// Too early: the event came before what it depends on (reordering). Nothing is
    /// recorded; the delivery is answered 503 and comes again.
    NotYet(String),
}

/// Why a step could not decide: Firestore failed, or (a bug) it asked for a status move the
/// status machine refuses.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Illegal(#[from] IllegalMove),
}

impl crate::store::TxError for StepError {
    fn store(&self) -> Option<&StoreError> {
        match self {
            StepError::Store(e) => Some(e),
            StepError::Illegal(_) => None,
        }
    }

    fn in_transaction(self, what: &str) -> StepError {
        match self {
            StepError::Store(e) => StepError::Store(e.in_transaction(what)),
            illegal => illegal,
        }
    }
}

/// Fails the saga at this step: the order becomes FAILED with `reason`, and the
/// `saga-failed` event the janitor compensates is emitted. Shared by every forward step.
pub fn fail_saga(
    mut order: OrderDoc,
    reason: FailureReason,
    step: &str,
) -> Result<Outcome, StepError> {
    order.fail(reason, Timestamp::now())?;
    let details = order.details();
    Ok(Outcome::Emit {
        order,
        summary: format!("rejected: {reason}"),
        event: EventBody::SagaFailed {
            order: details,
            reason,
            step: step.to_owned(),
        },
    })
}

/// A saga step: reads what it needs through the transaction, queues its effect on it, and
/// returns the order as it now is and what to emit. It may run several times for one
/// delivery (transaction retries), so it must not do anything outside the transaction.
pub trait Step: Send + Sync + 'static {
    /// The step's name in the order's records and in logs.
    const NAME: &'static str;
    /// The event types it consumes; any other is parked before anything is recorded, so a
    /// stray event can never mark the step done for its order.
    const ACCEPTS: &'static [&'static str];

    /// The document the step reads besides the order, known from the event alone (the
    /// item, the user); `()` for none.
    type Read: DeserializeOwned + Send + 'static;

    /// Where [`Step::Read`] is for `event`. The runtime reads it with the order, in one
    /// round trip, and hands both to `run`.
    fn reads(&self, event: &Event) -> Option<ReadOf<Self::Read>> {
        let _ = event;
        None
    }

    /// Decides for `event`, given the order as read (`None`: there is none yet) and the
    /// document of [`Step::reads`] (`None`: there is none). What it reads further (what
    /// depends on the order) it gets from `tx`.
    fn run<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        event: &'a Event,
        order: Option<OrderDoc>,
        read: Option<Self::Read>,
    ) -> BoxFuture<'a, Result<Outcome, StepError>>;
}

/// A document of type `D` a step reads with the order: its collection and id.
pub struct ReadOf<D> {
    pub collection: &'static str,
    pub id: String,
    doc: std::marker::PhantomData<fn() -> D>,
}

impl<D> ReadOf<D> {
    pub fn new(collection: &'static str, id: impl Into<String>) -> ReadOf<D> {
        ReadOf {
            collection,
            id: id.into(),
            doc: std::marker::PhantomData,
        }
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
    Step(#[from] StepError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("fault injected: crashed after commit, before publishing")]
    InjectedCrash,
    #[error("too early, will retry: {0}")]
    NotYet(String),
    /// An event in a schema version newer than this revision reads: during a rollout, a
    /// newer revision will take it (never parked: it is not poison).
    #[error("event schema version {version} is newer than this revision reads ({accept})")]
    NewerVersion { version: u32, accept: u32 },
    #[error("sweep left events unpublished: {0:?}")]
    SweepIncomplete(SweepReport),
}

impl IntoResponse for PushError {
    fn into_response(self) -> Response {
        // Logged once, here, with the span of the delivery.
        if let PushError::NotYet(_) = &self {
            tracing::info!(error = %self, "delivery early, Pub/Sub will redeliver");
        } else if let PushError::NewerVersion { .. } = &self {
            tracing::warn!(error = %self, "event from a newer revision, Pub/Sub will redeliver");
        } else {
            tracing::error!(error = %self, "delivery failed, Pub/Sub will redeliver");
        }
        // The body says what Pub/Sub (or whoever calls) can act on: retry. What failed inside
        // (a Firestore or publish error's own text) is in the log line above, not here.
        let error = match &self {
            PushError::NotYet(why) => format!("too early, will retry: {why}"),
            PushError::NewerVersion { .. } => {
                "the event is newer than this revision reads, retry (a newer revision will)"
                    .to_owned()
            }
            PushError::SweepIncomplete(report) => {
                format!(
                    "{} of {} left unpublished, will retry",
                    report.failed, report.due
                )
            }
            _ => "the delivery could not be processed now, retry later".to_owned(),
        };
        let body = serde_json::json!({ "error": error, "retry": true });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// What the step's transaction found or did.
enum Ran {
    /// The step's record (new, or found), whether it is new, and the order's status after it.
    Done(Box<StepRecord>, bool, OrderStatus),
    NotYet(String),
}

struct StepState<S> {
    step: Arc<S>,
    runtime: Runtime,
    /// Where deliveries come from: a subscription's name (or the sweep's), for parking.
    source: &'static str,
}

/// The router of a push-triggered function whose subscriptions all feed one step: its push
/// endpoints from the topology, behind push authentication. (It needs no sweep: whatever it
/// committed and did not publish comes back with the redelivery.)
pub fn router<S: Step>(runtime: Runtime, step: S) -> Router {
    let step = Arc::new(step);
    let router = runtime
        .function
        .consumes()
        .fold(Router::new(), |router, subscription| {
            route(router, &runtime, subscription, step.clone())
        });
    push_only(&runtime, router)
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
    // Past Pub/Sub's ack deadline (60 s) a push is delivered again anyway: answer before it.
    let router = router.layer(axum::middleware::from_fn_with_state(
        PUSH_TIME_LIMIT,
        crate::runtime::time_limit,
    ));
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

/// Answers with `Connection: close`: what every push route answers on the emulator
/// ([`push_only`]), and the bench's floor's relay too, so that it pushes to the floor's
/// stages as it does to the steps.
pub async fn close_connection(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// Longest a push or sweep request may take: under the subscriptions' 60 s ack deadline.
pub const PUSH_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(55);

/// `GET /internal/meter`: the process's operation counts ([`crate::meter`]), for the bench;
/// behind push authentication like the sweeps.
pub const METER_PATH: &str = "/internal/meter";

async fn handle<S: Step>(
    State(state): State<Arc<StepState<S>>>,
    body: Bytes,
) -> Result<Json<Ack>, PushError> {
    let arrived = Arrived::now();
    let delivery = match push::decode(&body, state.runtime.config.event_versions.accept) {
        Ok(delivery) => delivery,
        Err(NotDecoded::Poison(poison)) => return park(&state, &body, poison).await.map(Json),
        Err(NotDecoded::Newer {
            version, accept, ..
        }) => return Err(PushError::NewerVersion { version, accept }),
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
    // Built only for a tracer that exports: a push with no exporter allocates none of it.
    let attributes = match state.runtime.tracer.is_on() {
        true => step_attributes(S::NAME, &delivery.event, Some(&delivery.envelope)),
        false => Vec::new(),
    };
    let arrival = arrived.of(&delivery.envelope.message);
    let delivery_id = delivery.envelope.message.message_id;
    let work = process(&state, delivery.event, trace, &delivery_id, Some(arrival)).instrument(span);
    state
        .runtime
        .tracer
        .scope(S::NAME, Kind::Server, trace, attributes, work)
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
    let mut attributes = Vec::new();
    if runtime.tracer.is_on() {
        attributes = step_attributes(S::NAME, &event, None);
        attributes.push(("saga.source", Value::from(source)));
    }
    let delivery_id = format!("{source}-{}", event.event_id);
    let work = process(&state, event, trace, &delivery_id, None).instrument(span);
    runtime
        .tracer
        .scope(S::NAME, Kind::Server, trace, attributes, work)
        .await
}

/// What a step's exported span says besides its ids: the step, the order, the event and,
/// for a push, the subscription and message.
fn step_attributes(
    step: &'static str,
    event: &Event,
    push: Option<&push::PushEnvelope>,
) -> Attributes {
    let mut attributes: Attributes = vec![
        ("saga.step", Value::from(step)),
        ("saga.order_id", Value::from(event.order_id.to_string())),
        ("saga.event_id", Value::from(event.event_id.to_string())),
        ("saga.event_type", Value::from(event.body.kind())),
    ];
    if let Some(envelope) = push {
        attributes.extend([
            ("messaging.system", Value::from("gcp_pubsub")),
            ("messaging.operation.type", Value::from("process")),
            (
                "messaging.destination.subscription.name",
                Value::from(envelope.subscription.clone()),
            ),
            (
                "messaging.message.id",
                Value::from(envelope.message.message_id.clone()),
            ),
        ]);
        if let Some(attempt) = envelope.message.delivery_attempt {
            attributes.push((
                "messaging.gcp_pubsub.message.delivery_attempt",
                Value::from(i64::from(attempt)),
            ));
        }
    }
    attributes
}

/// One delivery: the step's transaction, then the publish of what it emitted. `arrival` is
/// the push's, for the log line that ends it (none for an event a sweep made).
async fn process<S: Step>(
    state: &StepState<S>,
    event: Event,
    trace: TraceContext,
    delivery_id: &str,
    arrival: Option<Arrival>,
) -> Result<Ack, PushError> {
    let store = &state.runtime.store;
    let emit_version = state.runtime.config.event_versions.emit;
    let layout = state.runtime.config.order_layout;
    let order_id = event.order_id.to_string();
    let event = Arc::new(event);
    let ran = store
        .transaction_with(S::NAME, |mut tx| {
            let (step, event, order_id) = (state.step.clone(), event.clone(), order_id.clone());
            async move {
                // The order and what the step will read, in one round trip.
                let reads = step.reads(&event);
                let ahead: Vec<(&str, &str)> =
                    std::iter::once((collections::ORDERS, order_id.as_str()))
                        .chain(reads.iter().map(|r| (r.collection, r.id.as_str())))
                        .collect();
                tx.read_ahead(&ahead).await?;
                let order: Option<OrderDoc> = tx.get(collections::ORDERS, &order_id).await?;
                if let Some(order) = &order
                    && let Some(done) = order.step(S::NAME)
                {
                    let status = order.status();
                    return Ok::<_, StepError>(Ran::Done(Box::new(done.clone()), false, status));
                }
                let read: Option<S::Read> = match &reads {
                    Some(r) => tx.get(r.collection, &r.id).await?,
                    None => None,
                };
                let outcome = step.run(&mut tx, &event, order, read).await?;
                let (mut order, summary, emit) = match outcome {
                    Outcome::NotYet(why) => return Ok(Ran::NotYet(why)),
                    Outcome::Done { order, summary } => (order, summary, None),
                    Outcome::Emit {
                        order,
                        summary,
                        event: body,
                    } => (order, summary, Some(body)),
                };
                let now = Timestamp::now();
                let record = StepRecord {
                    step: S::NAME.to_owned(),
                    consumed_id: event.event_id.to_string(),
                    consumed_type: event.body.kind().to_owned(),
                    outcome: summary,
                    at: now,
                    trace_id: trace.trace_id_hex(),
                    emitted: emit.map(|body| {
                        Emitted::of(&Event::new(event.order_id, body), emit_version, &trace)
                    }),
                };
                order.record(record.clone());
                order.updated_at = now;
                order.lay_out(layout);
                tx.set(collections::ORDERS, &order_id, &order)?;
                Ok(Ran::Done(Box::new(record), true, order.status()))
            }
            .boxed()
        })
        .await?;
    // Arrival until the commit returned: the step's part of the hop, before its publish.
    let committed_ms = arrival.map(|a| a.handled_ms());
    let (record, fresh, status) = match ran {
        Ran::Done(record, fresh, status) => (*record, fresh, status),
        Ran::NotYet(why) => return Err(PushError::NotYet(why)),
    };

    if fresh && state.runtime.config.faults.crash_after_commit_now() {
        return Err(PushError::InjectedCrash);
    }
    // Published on every delivery, duplicates too: the one before may have died between its
    // commit and its publish.
    if let Some(emitted) = &record.emitted {
        outbox::publish(&state.runtime.publisher, emitted).await?;
    }
    let delivery_ms = arrival.and_then(|a| a.delivery_ms());
    let handled_ms = arrival.map(|a| a.handled_ms());
    let said = match fresh {
        true => "step done",
        false => "duplicate delivery, step already done",
    };
    tracing::info!(
        outcome = %record.outcome,
        %status,
        delivery_ms,
        committed_ms,
        handled_ms,
        "{said}"
    );
    let (outcome, emitted_event_id) = (record.outcome, record.emitted.map(|e| e.event_id));
    if fresh {
        return Ok(Ack::Processed {
            outcome,
            emitted_event_id,
        });
    }
    note_duplicate(store, S::NAME, &event, delivery_id, &trace).await;
    Ok(Ack::Duplicate {
        outcome,
        emitted_event_id,
    })
}

/// Adds the duplicate to the order's history; losing that line loses no state, so it only
/// warns.
async fn note_duplicate(
    store: &crate::store::Store,
    step: &str,
    event: &Event,
    delivery_id: &str,
    trace: &TraceContext,
) {
    let duplicate = Duplicate {
        step: step.to_owned(),
        event_id: event.event_id.to_string(),
        event_type: event.body.kind().to_owned(),
        delivery: delivery_id.to_owned(),
        at: Timestamp::now(),
        trace_id: trace.trace_id_hex(),
    };
    if let Err(error) = store
        .note_duplicate(&event.order_id.to_string(), &duplicate)
        .await
    {
        tracing::warn!(%error, "duplicate not recorded in the order's history");
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
