//! The forward steps' dead letters: each fails its saga and compensates it.

use futures::FutureExt;
use futures::future::BoxFuture;
use saga_contracts::events::{Event, EventBody, FailureReason, OrderStatus};
use saga_contracts::order::OrderDoc;
use saga_infra::step::{Outcome, Step, StepError};
use saga_infra::store::Tx;

use crate::compensation::{JanitorStep, compensate};

/// Consumes the forward steps' dead-letter topics: a message Pub/Sub gave up delivering
/// fails its saga with `dead-lettered` and compensates it, so no saga hangs on it.
///
/// A completed saga is not compensated; but its last delivery may have been given up on
/// because `payments` could not publish (it answers 2xx only once its event is out, and
/// Pub/Sub kept failing): the recorded `payment-created` is published again, the same event
/// id, so it is not lost.
pub struct DeadLetterStep;

impl Step for DeadLetterStep {
    // The same record as the janitor's: an order is compensated once, whichever failure
    // reaches it first.
    const NAME: &'static str = JanitorStep::NAME;
    const ACCEPTS: &'static [&'static str] = &[
        "order-requested",
        "order-created",
        "inventory-reserved",
        "payment-created",
        "saga-failed",
    ];

    /// What it reads depends on the order (the reservation, the payment): got in `run`.
    type Read = ();

    fn run<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        event: &'a Event,
        order: Option<OrderDoc>,
        _read: Option<()>,
    ) -> BoxFuture<'a, Result<Outcome, StepError>> {
        async move {
            tracing::warn!(event_type = event.body.kind(), "dead-lettered event");
            if let Some(order) = order
                .as_ref()
                .filter(|o| o.status() == OrderStatus::Completed)
                && let Some(last) = last_event(order)
            {
                return Ok(Outcome::Emit {
                    order: order.clone(),
                    summary: format!("completed; {} published again", last.kind()),
                    event: last,
                });
            }
            compensate(tx, event, order, FailureReason::DeadLettered).await
        }
        .boxed()
    }
}

/// The event `payments` recorded for a completed order.
fn last_event(order: &OrderDoc) -> Option<EventBody> {
    let emitted = order.step("payments")?.emitted.as_ref()?;
    emitted.event().ok().map(|e| e.body)
}
