//! `janitor`: consumes `error` and the forward steps' dead letters, and compensates, once per
//! order: releases exactly the stock that was reserved, refunds a captured payment, and marks
//! the order COMPENSATED with the reason. What was taken keeps its final status on the order
//! (RELEASED, REFUNDED): the history is the audit trail. Its sweep fails, and compensates,
//! every saga stuck past the timeout.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use futures::FutureExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use saga_infra::Runtime;
use saga_infra::events::{Event, EventBody, FailureReason, OrderStatus};
use saga_infra::order::{Allocation, OrderDoc, PaymentStatus, ReservationStatus};
use saga_infra::step::{self, Ack, Outcome, PushError, Step, StepError};
use saga_infra::store::{ItemDoc, StockShard, Tx, UserDoc, collections, stock_shard_id};
use saga_infra::topology::{Function, is_dead_letter_subscription};
use serde::{Deserialize, Serialize};

/// What compensating an order takes.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    Compensate {
        /// Stock to give back: (item, quantity, and for a sharded item what came from which
        /// shard).
        release: Option<(String, i64, Vec<Allocation>)>,
        /// Money to give back: (user, amount).
        refund: Option<(String, i64)>,
    },
    Skip(String),
}

/// What compensating `order` takes: what was reserved and is still held, what was charged
/// and is still captured. Nothing if the order is over.
pub fn plan(order: &OrderDoc) -> Plan {
    if !order.status().can_move_to(OrderStatus::Compensated) {
        return Plan::Skip(format!(
            "order is {}: nothing to compensate",
            order.status()
        ));
    }
    let release = order
        .reservation
        .as_ref()
        .filter(|r| r.status == ReservationStatus::Reserved)
        .map(|r| (order.item.clone(), r.quantity, r.allocations.clone()));
    let refund = order
        .payment
        .filter(|p| p.status == PaymentStatus::Captured)
        .map(|p| (order.user.clone(), p.amount));
    Plan::Compensate { release, refund }
}

/// Consumes `error`: compensates with the failure's reason.
pub struct JanitorStep;

impl Step for JanitorStep {
    const NAME: &'static str = "janitor";
    const ACCEPTS: &'static [&'static str] = &["saga-failed"];

    fn run<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        event: &'a Event,
        order: Option<OrderDoc>,
    ) -> BoxFuture<'a, Result<Outcome, StepError>> {
        async move {
            let EventBody::SagaFailed { reason, .. } = &event.body else {
                return Ok(Outcome::NotYet("not a saga-failed event".into()));
            };
            compensate(tx, event, order, *reason).await
        }
        .boxed()
    }
}

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

    fn run<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        event: &'a Event,
        order: Option<OrderDoc>,
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

/// Undoes what was done for the order, in the step's transaction. If the failure overtook
/// the order's creation, leaves a COMPENSATED tombstone that the late creation respects.
async fn compensate(
    tx: &mut Tx<'_>,
    event: &Event,
    order: Option<OrderDoc>,
    reason: FailureReason,
) -> Result<Outcome, StepError> {
    let now = Timestamp::now();
    let mut order = order.unwrap_or_else(|| OrderDoc::new(event.order_id, event.body.order(), now));
    let (release, refund) = match plan(&order) {
        Plan::Skip(why) => {
            return Ok(Outcome::Done {
                order,
                summary: why,
            });
        }
        Plan::Compensate { release, refund } => (release, refund),
    };
    let mut done = Vec::new();
    if let Some((item, quantity, allocations)) = release {
        if allocations.is_empty() {
            if let Some(doc) = tx.get::<ItemDoc>(collections::INVENTORY, &item).await? {
                let doc = ItemDoc {
                    stock: doc.stock + quantity,
                    ..doc
                };
                tx.set(collections::INVENTORY, &item, &doc)?;
            }
        } else {
            // A sharded item: each shard gets back exactly what was taken from it.
            for a in &allocations {
                let id = stock_shard_id(&item, a.shard);
                let stock = tx
                    .get::<StockShard>(collections::STOCK_SHARDS, &id)
                    .await?
                    .map_or(0, |s| s.stock);
                let shard = StockShard {
                    item: item.clone(),
                    index: a.shard,
                    stock: stock + a.quantity,
                };
                tx.set(collections::STOCK_SHARDS, &id, &shard)?;
            }
        }
        if let Some(r) = order.reservation.as_mut() {
            r.status = ReservationStatus::Released;
        }
        done.push(format!("released {quantity} {item}"));
    }
    if let Some((user, amount)) = refund
        && let Some(doc) = tx.get::<UserDoc>(collections::USERS, &user).await?
    {
        let doc = UserDoc {
            balance: doc.balance + amount,
        };
        tx.set(collections::USERS, &user, &doc)?;
        if let Some(p) = order.payment.as_mut() {
            p.status = PaymentStatus::Refunded;
        }
        done.push(format!("refunded {amount} to {user}"));
    }
    order.compensate(reason, now)?;
    done.push(format!(
        "compensated ({})",
        order.reason().unwrap_or(reason)
    ));
    Ok(Outcome::Done {
        order,
        summary: done.join(", "),
    })
}

/// The janitor's routes: `error-sub` to [`JanitorStep`], the dead-letter subscriptions to
/// [`DeadLetterStep`], and the stuck-saga sweep.
pub fn router(runtime: Runtime) -> Router {
    let router = runtime
        .function
        .consumes()
        .fold(Router::new(), |router, subscription| {
            if is_dead_letter_subscription(subscription) {
                step::route(router, &runtime, subscription, Arc::new(DeadLetterStep))
            } else {
                step::route(router, &runtime, subscription, Arc::new(JanitorStep))
            }
        });
    let router = match Function::Janitor.sweep_path() {
        Some(path) => router.route(path, post(sweep_timeouts).with_state(runtime.clone())),
        None => router,
    };
    step::push_only(&runtime, router)
}

/// The log line of a saga failed by timeout: a log-based metric in Terraform counts it
/// (terraform/monitoring.tf), and tests/saga/deploy.rs keeps the two equal.
pub const TIMED_OUT_LOG: &str = "saga timed out";

/// What a timeout sweep did.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimeoutReport {
    /// Sagas not over for longer than the timeout.
    pub stuck: usize,
    /// Of those, compensated now.
    pub compensated: usize,
    /// Of those, not compensated now (an error, logged): the next sweep tries again.
    #[serde(default)]
    pub failed: usize,
    /// Of those, documents no build can read: left alone and logged as errors.
    #[serde(default)]
    pub unreadable: usize,
}

/// Statuses a saga can be stuck in. PENDING among them: an order accepted whose request
/// was dead-lettered, and the dead letter too, would otherwise wait for good.
const UNFINISHED: [OrderStatus; 4] = [
    OrderStatus::Pending,
    OrderStatus::OrderCreated,
    OrderStatus::InventoryReserved,
    OrderStatus::Failed,
];

/// Orders the timeout sweep reads in one page.
const SWEEP_PAGE: u32 = 200;

/// `POST /internal/sweep/timeouts`: fails with `timeout`, and compensates, every saga not
/// over for longer than the configured timeout, page by page. One that cannot be compensated
/// now is counted and logged, and the others still are. A late message for a compensated
/// saga finds it COMPENSATED and changes nothing.
async fn sweep_timeouts(State(runtime): State<Runtime>) -> Result<Json<TimeoutReport>, PushError> {
    let runtime = runtime.sweeping();
    let timeout = jiff::SignedDuration::try_from(runtime.config.saga_timeout).unwrap_or_default();
    let cutoff = Timestamp::now()
        .checked_sub(timeout)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let mut report = TimeoutReport::default();
    let mut after = None;
    loop {
        let page = runtime
            .store
            .orders_due(&UNFINISHED, cutoff, after.as_ref(), SWEEP_PAGE)
            .await?;
        for (order_id, error) in &page.undecodable {
            report.stuck += 1;
            report.unreadable += 1;
            tracing::error!(%order_id, %error, "stuck order not readable, left alone; the sweep goes on");
        }
        for order in &page.orders {
            report.stuck += 1;
            let Some(order_id) = order.order_uuid() else {
                tracing::warn!(order_id = %order.order_id, "order with a malformed id left alone");
                report.failed += 1;
                continue;
            };
            let event = Event::new(
                order_id,
                EventBody::SagaFailed {
                    order: order.details(),
                    reason: FailureReason::Timeout,
                    step: "timeout".into(),
                },
            );
            tracing::warn!(%order_id, status = %order.status(), "{TIMED_OUT_LOG}");
            match step::run_once(&runtime, "timeout-sweep", Arc::new(JanitorStep), event).await {
                Ok(Ack::Processed { .. }) => report.compensated += 1,
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(%order_id, %error, "timed-out saga not compensated; the next sweep tries again");
                    report.failed += 1;
                }
            }
        }
        if !page.full {
            break;
        }
        after = page.next;
    }
    Ok(Json(report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use saga_infra::order::{Payment, Reservation};
    use saga_infra::testing::order_at;

    fn reservation(status: ReservationStatus) -> Option<Reservation> {
        Some(Reservation {
            quantity: 5,
            allocations: Vec::new(),
            status,
        })
    }

    fn payment(status: PaymentStatus) -> Option<Payment> {
        Some(Payment { amount: 50, status })
    }

    #[test]
    fn given_a_stock_failure_then_only_mark_compensated() {
        let o = order_at(OrderStatus::Failed, 5);
        assert_eq!(
            plan(&o),
            Plan::Compensate {
                release: None,
                refund: None
            }
        );
    }

    #[test]
    fn given_a_payment_failure_then_release_exactly_the_reserved_stock() {
        let mut o = order_at(OrderStatus::Failed, 5);
        o.reservation = reservation(ReservationStatus::Reserved);
        assert_eq!(
            plan(&o),
            Plan::Compensate {
                release: Some(("widget".into(), 5, Vec::new())),
                refund: None
            }
        );
    }

    #[test]
    fn given_a_captured_payment_then_refund_it_and_never_release_twice() {
        let mut o = order_at(OrderStatus::InventoryReserved, 5);
        o.reservation = reservation(ReservationStatus::Released);
        o.payment = payment(PaymentStatus::Captured);
        assert_eq!(
            plan(&o),
            Plan::Compensate {
                release: None,
                refund: Some(("jack".into(), 50))
            }
        );
    }

    #[test]
    fn given_a_completed_or_compensated_order_then_do_nothing() {
        for status in [OrderStatus::Completed, OrderStatus::Compensated] {
            let p = plan(&order_at(status, 5));
            assert!(matches!(p, Plan::Skip(_)), "{status}: {p:?}");
        }
    }

    #[test]
    fn given_a_pending_order_then_compensate_nothing_taken() {
        let p = plan(&order_at(OrderStatus::Pending, 5));
        assert_eq!(
            p,
            Plan::Compensate {
                release: None,
                refund: None
            }
        );
    }
}
