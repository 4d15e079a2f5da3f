//! Compensating an order: what it takes ([`plan`], pure) and doing it once, in the step's
//! transaction ([`JanitorStep`] for `error`, and [`compensate`] for the others).

use futures::FutureExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use saga_contracts::docs::{ItemDoc, StockShard, UserDoc, collections, stock_shard_id};
use saga_contracts::events::{Event, EventBody, FailureReason, OrderStatus};
use saga_contracts::order::{Allocation, OrderDoc, PaymentStatus, ReservationStatus};
use saga_infra::step::{Outcome, Step, StepError};
use saga_infra::store::Tx;

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
            let EventBody::SagaFailed { reason, .. } = &event.body else {
                return Ok(Outcome::NotYet("not a saga-failed event".into()));
            };
            compensate(tx, event, order, *reason).await
        }
        .boxed()
    }
}

/// Undoes what was done for the order, in the step's transaction. If the failure overtook
/// the order's creation, leaves a COMPENSATED tombstone that the late creation respects.
pub(crate) async fn compensate(
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
    // Everything it gives back to, in one round trip (the order came in the step's first).
    let shards: Vec<String> = match &release {
        Some((item, _, allocations)) => allocations
            .iter()
            .map(|a| stock_shard_id(item, a.shard))
            .collect(),
        None => Vec::new(),
    };
    let mut ahead: Vec<(&str, &str)> = shards
        .iter()
        .map(|id| (collections::STOCK_SHARDS, id.as_str()))
        .collect();
    if let Some((item, _, allocations)) = &release
        && allocations.is_empty()
    {
        ahead.push((collections::INVENTORY, item));
    }
    if let Some((user, _)) = &refund {
        ahead.push((collections::USERS, user));
    }
    tx.read_ahead(&ahead).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use saga_contracts::order::{Payment, Reservation};
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
