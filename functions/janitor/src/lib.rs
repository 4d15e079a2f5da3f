//! `janitor`: consumes `error` and compensates, once per order: releases exactly the stock
//! that was reserved, refunds a captured payment, and marks the order COMPENSATED with the
//! reason. Records keep their final status (RELEASED, REFUNDED): the history is the audit trail.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use futures::FutureExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use saga_infra::Runtime;
use saga_infra::events::{Event, EventBody, FailureReason, OrderDetails, OrderStatus};
use saga_infra::step::{self, Ack, Outcome, PushError, Step};
use saga_infra::store::Context;
use saga_infra::store::{
    ItemDoc, OrderDoc, PaymentDoc, PaymentStatus, ReservationDoc, ReservationStatus, StockShard,
    StoreError, Tx, UserDoc, collections, stock_shard_id,
};
use saga_infra::topology::{Function, is_dead_letter_subscription};
use serde::{Deserialize, Serialize};

/// What compensating an order takes.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    Compensate {
        /// Stock to give back: (item, quantity).
        release: Option<(String, i64)>,
        /// Money to give back: (user, amount).
        refund: Option<(String, i64)>,
        reason: FailureReason,
    },
    Skip(String),
}

pub fn plan(
    order: Option<&OrderDoc>,
    reservation: Option<&ReservationDoc>,
    payment: Option<&PaymentDoc>,
    reason: FailureReason,
) -> Plan {
    if let Some(order) = order
        && !order.status.can_move_to(OrderStatus::Compensated)
    {
        return Plan::Skip(format!("order is {}: nothing to compensate", order.status));
    }
    let release = reservation
        .filter(|r| r.status == ReservationStatus::Reserved)
        .map(|r| (r.item.clone(), r.quantity));
    let refund = payment
        .filter(|p| p.status == PaymentStatus::Captured)
        .map(|p| (p.user.clone(), p.amount));
    Plan::Compensate {
        release,
        refund,
        // The first failure is the reason the user sees.
        reason: order.and_then(|o| o.reason).unwrap_or(reason),
    }
}

/// Consumes `error`: compensates with the failure's reason.
pub struct JanitorStep;

impl Step for JanitorStep {
    const NAME: &'static str = "janitor";
    const ACCEPTS: &'static [&'static str] = &["saga-failed"];

    fn reads(&self, event: &Event) -> Vec<(&'static str, String)> {
        compensation_reads(event)
    }

    fn run<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        async move {
            let EventBody::SagaFailed { order, reason, .. } = &event.body else {
                return Ok(Outcome::skip("not a saga-failed event"));
            };
            compensate(tx, &event.order_id.to_string(), order, *reason).await
        }
        .boxed()
    }
}

/// Consumes the forward steps' dead-letter topics: a message Pub/Sub gave up delivering
/// fails its saga with `dead-lettered` and compensates it, so no saga hangs on it.
pub struct DeadLetterStep;

impl Step for DeadLetterStep {
    // The same idempotency record as the janitor's: an order is compensated once, whichever
    // failure reaches it first.
    const NAME: &'static str = JanitorStep::NAME;
    const ACCEPTS: &'static [&'static str] = &[
        "order-requested",
        "order-created",
        "inventory-reserved",
        "payment-created",
        "saga-failed",
    ];

    fn reads(&self, event: &Event) -> Vec<(&'static str, String)> {
        compensation_reads(event)
    }

    fn run<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        async move {
            tracing::warn!(event_type = event.body.kind(), "dead-lettered event");
            compensate(
                tx,
                &event.order_id.to_string(),
                event.body.order(),
                FailureReason::DeadLettered,
            )
            .await
        }
        .boxed()
    }
}

/// What [`compensate`] reads first: the order and what was taken for it. (The stock or balance
/// to give back is read only when there is something to give back.)
fn compensation_reads(event: &Event) -> Vec<(&'static str, String)> {
    let id = event.order_id.to_string();
    vec![
        (collections::ORDERS, id.clone()),
        (collections::RESERVATIONS, id.clone()),
        (collections::PAYMENTS, id),
    ]
}

/// Undoes what was done for the order, in the step's transaction.
async fn compensate(
    tx: &mut Tx<'_>,
    id: &str,
    details: &OrderDetails,
    reason: FailureReason,
) -> Result<Outcome, StoreError> {
    let order: Option<OrderDoc> = tx.get(collections::ORDERS, id).await?;
    let reservation: Option<ReservationDoc> = tx.get(collections::RESERVATIONS, id).await?;
    let payment: Option<PaymentDoc> = tx.get(collections::PAYMENTS, id).await?;
    let (release, refund, reason) = match plan(
        order.as_ref(),
        reservation.as_ref(),
        payment.as_ref(),
        reason,
    ) {
        Plan::Skip(why) => return Ok(Outcome::skip(why)),
        Plan::Compensate {
            release,
            refund,
            reason,
        } => (release, refund, reason),
    };
    // All reads before any write.
    let sharded = reservation
        .as_ref()
        .is_some_and(|r| !r.allocations.is_empty());
    let item: Option<ItemDoc> = match &release {
        Some((item, _)) if !sharded => tx.get(collections::INVENTORY, item).await?,
        _ => None,
    };
    let mut shards = Vec::new();
    if let (Some((item, _)), Some(reservation)) = (&release, &reservation) {
        for a in &reservation.allocations {
            let shard: Option<StockShard> = tx
                .get(collections::STOCK_SHARDS, &stock_shard_id(item, a.shard))
                .await?;
            shards.push((*a, shard.map_or(0, |s| s.stock)));
        }
    }
    let user: Option<UserDoc> = match &refund {
        Some((user, _)) => tx.get(collections::USERS, user).await?,
        None => None,
    };
    let now = Timestamp::now();
    let mut done = Vec::new();
    if let (Some((name, quantity)), Some(reservation)) = (&release, reservation) {
        if let Some(item) = item {
            tx.set(
                collections::INVENTORY,
                name,
                &ItemDoc {
                    stock: item.stock + quantity,
                    ..item
                },
            )?;
        }
        // A sharded item: each shard gets back exactly what was taken from it.
        for (a, stock) in &shards {
            tx.set(
                collections::STOCK_SHARDS,
                &stock_shard_id(name, a.shard),
                &StockShard {
                    item: name.clone(),
                    index: a.shard,
                    stock: stock + a.quantity,
                },
            )?;
        }
        tx.set(
            collections::RESERVATIONS,
            id,
            &ReservationDoc {
                status: ReservationStatus::Released,
                updated_at: now,
                ..reservation
            },
        )?;
        done.push(format!("released {quantity} {name}"));
    }
    if let (Some((name, amount)), Some(user), Some(payment)) = (&refund, user, payment) {
        tx.set(
            collections::USERS,
            name,
            &UserDoc {
                balance: user.balance + amount,
            },
        )?;
        tx.set(
            collections::PAYMENTS,
            id,
            &PaymentDoc {
                status: PaymentStatus::Refunded,
                updated_at: now,
                ..payment
            },
        )?;
        done.push(format!("refunded {amount} to {name}"));
    }
    tx.set(
        collections::ORDERS,
        id,
        &compensated(order, id, details, reason, now),
    )?;
    done.push(format!("compensated ({reason})"));
    Ok(Outcome::skip(done.join(", ")))
}

/// The order marked COMPENSATED; if the failure overtook the order's creation, a tombstone so
/// that the late creation finds it and does nothing.
fn compensated(
    order: Option<OrderDoc>,
    id: &str,
    details: &OrderDetails,
    reason: FailureReason,
    now: Timestamp,
) -> OrderDoc {
    let base = order.unwrap_or_else(|| OrderDoc {
        order_id: id.to_owned(),
        item: details.item.clone(),
        quantity: i64::from(details.quantity),
        user: details.user.clone(),
        status: OrderStatus::Failed,
        reason: None,
        amount: None,
        created_at: now,
        updated_at: now,
    });
    OrderDoc {
        status: OrderStatus::Compensated,
        reason: Some(reason),
        updated_at: now,
        ..base
    }
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
        })
        .route(
            Function::Janitor.sweep_path(),
            post(sweep_timeouts).with_state(runtime.clone()),
        );
    step::push_only(&runtime, router)
}

/// The log line of a saga failed by timeout: a log-based metric in Terraform counts it
/// (terraform/monitoring.tf), and tests/saga/deploy.rs keeps the two equal.
pub const TIMED_OUT_LOG: &str = "saga timed out";

/// What a timeout sweep did.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimeoutReport {
    /// Sagas not terminal for longer than the timeout.
    pub stuck: usize,
    /// Of those, compensated now.
    pub compensated: usize,
}

/// Statuses a saga can be stuck in; PENDING is not among them: a request whose order step has
/// not run is still in Pub/Sub, and ends in the order step or in a dead letter.
const UNFINISHED: [OrderStatus; 3] = [
    OrderStatus::OrderCreated,
    OrderStatus::InventoryReserved,
    OrderStatus::Failed,
];

/// `POST /internal/sweep/timeouts`: fails with `timeout`, and compensates, every saga not
/// terminal for longer than the configured timeout. A late message for such a saga finds it
/// COMPENSATED and changes nothing.
async fn sweep_timeouts(State(runtime): State<Runtime>) -> Result<Json<TimeoutReport>, PushError> {
    let runtime = runtime.sweeping();
    let statuses: Vec<&str> = UNFINISHED.iter().map(|s| s.as_str()).collect();
    let unfinished: Vec<OrderDoc> = runtime
        .store
        .db()
        .fluent()
        .select()
        .from(collections::ORDERS)
        .filter(|q| q.for_all([q.field("status").is_in(statuses.clone())]))
        .obj()
        .query()
        .await
        .context("querying unfinished sagas")?;
    runtime.store.meter().query(unfinished.len());
    let timeout = jiff::SignedDuration::try_from(runtime.config.saga_timeout).unwrap_or_default();
    let cutoff = Timestamp::now()
        .checked_sub(timeout)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let mut report = TimeoutReport::default();
    for order in unfinished.into_iter().filter(|o| o.updated_at <= cutoff) {
        report.stuck += 1;
        let Ok(order_id) = uuid::Uuid::parse_str(&order.order_id) else {
            tracing::warn!(order_id = %order.order_id, "order with a malformed id left alone");
            continue;
        };
        let event = Event::new(
            order_id,
            EventBody::SagaFailed {
                order: OrderDetails {
                    item: order.item.clone(),
                    quantity: u32::try_from(order.quantity).unwrap_or(u32::MAX),
                    user: order.user.clone(),
                    payment_error: false,
                },
                reason: FailureReason::Timeout,
                step: "timeout".into(),
            },
        );
        tracing::warn!(%order_id, status = %order.status, "{TIMED_OUT_LOG}");
        if let Ack::Processed { .. } =
            step::run_once(&runtime, "timeout-sweep", Arc::new(JanitorStep), event).await?
        {
            report.compensated += 1;
        }
    }
    Ok(Json(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(status: OrderStatus, reason: Option<FailureReason>) -> OrderDoc {
        OrderDoc {
            order_id: "o".into(),
            item: "widget".into(),
            quantity: 5,
            user: "jack".into(),
            status,
            reason,
            amount: None,
            created_at: Timestamp::UNIX_EPOCH,
            updated_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn reservation(status: ReservationStatus) -> ReservationDoc {
        ReservationDoc {
            order_id: "o".into(),
            item: "widget".into(),
            quantity: 5,
            allocations: Vec::new(),
            status,
            updated_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn payment(status: PaymentStatus) -> PaymentDoc {
        PaymentDoc {
            order_id: "o".into(),
            user: "jack".into(),
            amount: 50,
            status,
            updated_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn given_a_stock_failure_then_only_mark_compensated() {
        let o = order(OrderStatus::Failed, Some(FailureReason::InsufficientStock));
        let p = plan(Some(&o), None, None, FailureReason::InsufficientStock);
        assert_eq!(
            p,
            Plan::Compensate {
                release: None,
                refund: None,
                reason: FailureReason::InsufficientStock
            }
        );
    }

    #[test]
    fn given_a_payment_failure_then_release_exactly_the_reserved_stock() {
        let o = order(OrderStatus::Failed, Some(FailureReason::PaymentError));
        let r = reservation(ReservationStatus::Reserved);
        let p = plan(Some(&o), Some(&r), None, FailureReason::PaymentError);
        assert_eq!(
            p,
            Plan::Compensate {
                release: Some(("widget".into(), 5)),
                refund: None,
                reason: FailureReason::PaymentError
            }
        );
    }

    #[test]
    fn given_a_captured_payment_then_refund_it_and_never_release_twice() {
        let o = order(OrderStatus::InventoryReserved, None);
        let r = reservation(ReservationStatus::Released);
        let pay = payment(PaymentStatus::Captured);
        let p = plan(Some(&o), Some(&r), Some(&pay), FailureReason::Timeout);
        assert_eq!(
            p,
            Plan::Compensate {
                release: None,
                refund: Some(("jack".into(), 50)),
                reason: FailureReason::Timeout
            }
        );
    }

    #[test]
    fn given_a_completed_or_compensated_order_then_do_nothing() {
        for status in [OrderStatus::Completed, OrderStatus::Compensated] {
            let p = plan(
                Some(&order(status, None)),
                None,
                None,
                FailureReason::Timeout,
            );
            assert!(matches!(p, Plan::Skip(_)), "{status}: {p:?}");
        }
    }

    #[test]
    fn given_no_order_yet_then_compensate_into_a_tombstone() {
        let details = OrderDetails {
            item: "widget".into(),
            quantity: 5,
            user: "jack".into(),
            payment_error: false,
        };
        let p = plan(None, None, None, FailureReason::Timeout);
        assert!(matches!(
            p,
            Plan::Compensate {
                release: None,
                refund: None,
                ..
            }
        ));
        let doc = compensated(
            None,
            "o",
            &details,
            FailureReason::Timeout,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(doc.status, OrderStatus::Compensated);
        assert_eq!(doc.reason, Some(FailureReason::Timeout));
    }
}
