//! `inventory`: consumes `order-created`, reserves stock in one transaction (stock decremented,
//! `reservations/{order_id}` written, order INVENTORY_RESERVED) and publishes
//! `inventory-updated`; not enough stock or an unknown item fails the saga on `error`.

use axum::Router;
use futures::FutureExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use saga_infra::Runtime;
use saga_infra::events::{Event, EventBody, FailureReason, OrderStatus};
use saga_infra::step::{self, Outcome, Step};
use saga_infra::store::{
    ItemDoc, OrderDoc, ReservationDoc, ReservationStatus, StoreError, Tx, collections,
};

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Reserve {
        remaining_stock: i64,
        unit_price: i64,
        amount: i64,
    },
    Reject(FailureReason),
    Skip(String),
    /// The order is not visible yet: retry later.
    NotYet(String),
}

/// Decides a reservation of `quantity` for the order, given its current state and the item.
pub fn decide(order: Option<&OrderDoc>, item: Option<&ItemDoc>, quantity: i64) -> Decision {
    let Some(order) = order else {
        return Decision::NotYet("no order document yet".into());
    };
    if order.status != OrderStatus::OrderCreated {
        return Decision::Skip(format!("order is {}, not ORDER_CREATED", order.status));
    }
    let Some(item) = item else {
        return Decision::Reject(FailureReason::UnknownItem);
    };
    if item.stock < quantity {
        return Decision::Reject(FailureReason::InsufficientStock);
    }
    match item.price.checked_mul(quantity) {
        Some(amount) => Decision::Reserve {
            remaining_stock: item.stock - quantity,
            unit_price: item.price,
            amount,
        },
        None => Decision::Reject(FailureReason::InsufficientFunds),
    }
}

pub struct InventoryStep;

impl Step for InventoryStep {
    const NAME: &'static str = "inventory";
    const ACCEPTS: &'static [&'static str] = &["order-created"];

    fn run<'a>(
        &'a self,
        tx: &'a mut Tx<'_, '_>,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        async move {
            let details = event.body.order();
            let id = event.order_id.to_string();
            let quantity = i64::from(details.quantity);
            let order: Option<OrderDoc> = tx.get(collections::ORDERS, &id).await?;
            let item: Option<ItemDoc> = tx.get(collections::INVENTORY, &details.item).await?;
            let now = Timestamp::now();
            Ok(
                match (decide(order.as_ref(), item.as_ref(), quantity), order, item) {
                    (
                        Decision::Reserve {
                            remaining_stock,
                            unit_price,
                            amount,
                        },
                        Some(order),
                        Some(item),
                    ) => {
                        tx.set(
                            collections::INVENTORY,
                            &details.item,
                            &ItemDoc {
                                stock: remaining_stock,
                                ..item
                            },
                        )?;
                        tx.set(
                            collections::RESERVATIONS,
                            &id,
                            &ReservationDoc {
                                order_id: id.clone(),
                                item: details.item.clone(),
                                quantity,
                                status: ReservationStatus::Reserved,
                                updated_at: now,
                            },
                        )?;
                        tx.set(
                            collections::ORDERS,
                            &id,
                            &OrderDoc {
                                status: OrderStatus::InventoryReserved,
                                updated_at: now,
                                ..order
                            },
                        )?;
                        Outcome::emit(
                            format!("reserved {quantity} {}", details.item),
                            EventBody::InventoryReserved {
                                order: details.clone(),
                                unit_price,
                                amount,
                            },
                        )
                    }
                    (Decision::Reject(reason), Some(order), _) => {
                        tx.set(
                            collections::ORDERS,
                            &id,
                            &OrderDoc {
                                status: OrderStatus::Failed,
                                reason: Some(reason),
                                updated_at: now,
                                ..order
                            },
                        )?;
                        Outcome::emit(
                            format!("rejected: {reason}"),
                            EventBody::SagaFailed {
                                order: details.clone(),
                                reason,
                                step: Self::NAME.into(),
                            },
                        )
                    }
                    (Decision::Skip(why), _, _) => Outcome::skip(why),
                    (Decision::NotYet(why), _, _) => Outcome::not_yet(why),
                    (decision, _, _) => {
                        Outcome::skip(format!("inconsistent decision {decision:?}"))
                    }
                },
            )
        }
        .boxed()
    }
}

pub fn router(runtime: Runtime) -> Router {
    step::router(runtime, InventoryStep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(status: OrderStatus) -> OrderDoc {
        OrderDoc {
            order_id: "o".into(),
            item: "widget".into(),
            quantity: 5,
            user: "jack".into(),
            status,
            reason: None,
            amount: None,
            created_at: Timestamp::UNIX_EPOCH,
            updated_at: Timestamp::UNIX_EPOCH,
        }
    }

    const WIDGETS: ItemDoc = ItemDoc {
        price: 10,
        stock: 20,
    };

    #[test]
    fn given_enough_stock_when_an_order_is_created_then_reserve_and_price_it() {
        let d = decide(Some(&order(OrderStatus::OrderCreated)), Some(&WIDGETS), 5);
        assert_eq!(
            d,
            Decision::Reserve {
                remaining_stock: 15,
                unit_price: 10,
                amount: 50
            }
        );
    }

    #[test]
    fn given_exactly_the_stock_when_ordered_then_reserve_all_of_it() {
        let d = decide(Some(&order(OrderStatus::OrderCreated)), Some(&WIDGETS), 20);
        assert!(matches!(
            d,
            Decision::Reserve {
                remaining_stock: 0,
                ..
            }
        ));
    }

    #[test]
    fn given_too_little_stock_or_no_item_then_reject_with_a_reason() {
        let created = order(OrderStatus::OrderCreated);
        assert_eq!(
            decide(Some(&created), Some(&WIDGETS), 21),
            Decision::Reject(FailureReason::InsufficientStock)
        );
        assert_eq!(
            decide(Some(&created), None, 1),
            Decision::Reject(FailureReason::UnknownItem)
        );
    }

    #[test]
    fn given_a_failed_or_compensated_order_when_a_late_event_arrives_then_take_nothing() {
        for status in [OrderStatus::Failed, OrderStatus::Compensated] {
            let d = decide(Some(&order(status)), Some(&WIDGETS), 1);
            assert!(matches!(d, Decision::Skip(_)), "{status}: {d:?}");
        }
        assert!(matches!(
            decide(None, Some(&WIDGETS), 1),
            Decision::NotYet(_)
        ));
    }
}
