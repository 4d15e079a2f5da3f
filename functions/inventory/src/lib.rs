//! `inventory`: consumes `order-created`, reserves stock in one transaction (stock decremented,
//! `reservations/{order_id}` written, order INVENTORY_RESERVED) and publishes
//! `inventory-updated`; not enough stock or an unknown item fails the saga on `error`.

use axum::Router;
use futures::FutureExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use saga_contracts::docs::{ItemDoc, StockShard, collections, stock_shard_id};
use saga_contracts::events::{Event, EventBody, FailureReason, OrderStatus};
use saga_contracts::order::{Allocation, OrderDoc, Reservation, ReservationStatus};
use saga_infra::Runtime;
use saga_infra::step::{self, Outcome, ReadOf, Step, StepError};
use saga_infra::store::Tx;

/// What to do for an order, carrying what it acts on.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Reserve {
        order: OrderDoc,
        /// The item with its stock already taken.
        item: ItemDoc,
        amount: i64,
    },
    /// A sharded (hot) item: take the stock shard by shard, see [`plan_shards`].
    ReserveFromShards {
        order: OrderDoc,
        shards: u32,
        amount: i64,
    },
    Reject(OrderDoc, FailureReason),
    Skip(OrderDoc, String),
    /// The order is not visible yet: retry later.
    NotYet(String),
}

/// Decides a reservation of `quantity` for the order, given its current state and the item.
pub fn decide(order: Option<OrderDoc>, item: Option<ItemDoc>, quantity: i64) -> Decision {
    let Some(order) = order else {
        return Decision::NotYet("no order document yet".into());
    };
    match order.status() {
        OrderStatus::OrderCreated => {}
        OrderStatus::Pending => {
            return Decision::NotYet("order is PENDING, not created yet".into());
        }
        other => return Decision::Skip(order, format!("order is {other}, not ORDER_CREATED")),
    }
    let Some(item) = item else {
        return Decision::Reject(order, FailureReason::UnknownItem);
    };
    let Some(amount) = item.price.checked_mul(quantity) else {
        return Decision::Reject(order, FailureReason::InsufficientFunds);
    };
    if let Some(shards) = item.shards.filter(|k| *k > 0) {
        return Decision::ReserveFromShards {
            order,
            shards,
            amount,
        };
    }
    if item.stock < quantity {
        return Decision::Reject(order, FailureReason::InsufficientStock);
    }
    Decision::Reserve {
        order,
        item: ItemDoc {
            stock: item.stock - quantity,
            ..item
        },
        amount,
    }
}

/// The order in which an order visits a sharded item's shards: starting at one chosen by its
/// id (spreading concurrent orders over the shards), then the others in turn.
pub fn shard_order(order_id: uuid::Uuid, shards: u32) -> impl Iterator<Item = u32> {
    let start = (order_id.as_u128() % u128::from(shards.max(1))) as u32;
    (0..shards).map(move |i| (start + i) % shards)
}

/// Given the shards visited so far, as `(index, stock)` in visiting order: how much to take
/// from which, or `None` if they do not hold `quantity` between them (visit another).
pub fn plan_shards(visited: &[(u32, i64)], quantity: i64) -> Option<Vec<Allocation>> {
    let available: i64 = visited.iter().map(|(_, stock)| (*stock).max(0)).sum();
    if available < quantity {
        return None;
    }
    let mut left = quantity;
    let mut plan = Vec::new();
    for (shard, stock) in visited {
        if left == 0 {
            break;
        }
        let take = left.min((*stock).max(0));
        if take > 0 {
            plan.push(Allocation {
                shard: *shard,
                quantity: take,
            });
            left -= take;
        }
    }
    Some(plan)
}

/// Records the reservation (with the shards it took from, if any) on the order, moves it to
/// INVENTORY_RESERVED and emits `inventory-reserved`.
fn reserved(
    mut order: OrderDoc,
    allocations: Vec<Allocation>,
    amount: i64,
) -> Result<Outcome, StepError> {
    let from = if allocations.is_empty() {
        ""
    } else {
        " from shards"
    };
    order.reservation = Some(Reservation {
        quantity: order.quantity,
        allocations,
        status: ReservationStatus::Reserved,
    });
    order.advance(OrderStatus::InventoryReserved, Timestamp::now())?;
    let details = order.details();
    Ok(Outcome::Emit {
        summary: format!("reserved {} {}{from}", order.quantity, order.item),
        order,
        event: EventBody::InventoryReserved {
            order: details,
            amount,
        },
    })
}

pub struct InventoryStep;

impl Step for InventoryStep {
    const NAME: &'static str = "inventory";
    const ACCEPTS: &'static [&'static str] = &["order-created"];

    type Read = ItemDoc;

    fn reads(&self, event: &Event) -> Option<ReadOf<ItemDoc>> {
        Some(ReadOf::new(
            collections::INVENTORY,
            &event.body.order().item,
        ))
    }

    fn run<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        event: &'a Event,
        order: Option<OrderDoc>,
        item: Option<ItemDoc>,
    ) -> BoxFuture<'a, Result<Outcome, StepError>> {
        async move {
            let details = event.body.order();
            let quantity = i64::from(details.quantity);
            Ok(match decide(order, item, quantity) {
                Decision::Reserve {
                    order,
                    item,
                    amount,
                } => {
                    tx.set(collections::INVENTORY, &details.item, &item)?;
                    reserved(order, Vec::new(), amount)?
                }
                Decision::ReserveFromShards {
                    order,
                    shards,
                    amount,
                } => {
                    let mut visited = Vec::new();
                    let mut plan = None;
                    for index in shard_order(event.order_id, shards) {
                        let shard: Option<StockShard> = tx
                            .get(
                                collections::STOCK_SHARDS,
                                &stock_shard_id(&details.item, index),
                            )
                            .await?;
                        visited.push((index, shard.map_or(0, |s| s.stock)));
                        plan = plan_shards(&visited, quantity);
                        if plan.is_some() {
                            break;
                        }
                    }
                    let Some(allocations) = plan else {
                        // Every shard was read in this transaction: the stock really is short.
                        return step::fail_saga(
                            order,
                            FailureReason::InsufficientStock,
                            Self::NAME,
                        );
                    };
                    for a in &allocations {
                        let stock = visited
                            .iter()
                            .find(|(i, _)| *i == a.shard)
                            .map_or(0, |(_, s)| *s);
                        tx.set(
                            collections::STOCK_SHARDS,
                            &stock_shard_id(&details.item, a.shard),
                            &StockShard {
                                item: details.item.clone(),
                                index: a.shard,
                                stock: stock - a.quantity,
                            },
                        )?;
                    }
                    reserved(order, allocations, amount)?
                }
                Decision::Reject(order, reason) => step::fail_saga(order, reason, Self::NAME)?,
                Decision::Skip(order, why) => Outcome::Done {
                    order,
                    summary: why,
                },
                Decision::NotYet(why) => Outcome::NotYet(why),
            })
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
    use saga_infra::testing::order_at;

    const WIDGETS: ItemDoc = ItemDoc {
        price: 10,
        stock: 20,
        shards: None,
    };

    #[test]
    fn given_a_sharded_item_then_reserve_shard_by_shard() {
        let hot = ItemDoc {
            shards: Some(4),
            ..WIDGETS
        };
        let d = decide(Some(order_at(OrderStatus::OrderCreated, 3)), Some(hot), 3);
        assert!(matches!(
            d,
            Decision::ReserveFromShards {
                shards: 4,
                amount: 30,
                ..
            }
        ));
    }

    #[test]
    fn orders_start_at_different_shards_and_visit_each_once() {
        let starts: std::collections::HashSet<u32> = (0..64)
            .map(|_| shard_order(uuid::Uuid::new_v4(), 4).next().unwrap())
            .collect();
        assert_eq!(starts.len(), 4, "concurrent orders spread over the shards");
        let mut visits: Vec<u32> = shard_order(uuid::Uuid::new_v4(), 5).collect();
        visits.sort();
        assert_eq!(visits, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_plan_takes_from_the_first_shards_that_hold_enough() {
        let a = |shard, quantity| Allocation { shard, quantity };
        assert_eq!(plan_shards(&[(2, 5)], 3), Some(vec![a(2, 3)]));
        assert_eq!(plan_shards(&[(2, 1)], 3), None, "visit another shard");
        assert_eq!(
            plan_shards(&[(2, 1), (3, 0), (0, 9)], 3),
            Some(vec![a(2, 1), a(0, 2)])
        );
        assert_eq!(plan_shards(&[(1, 0), (2, 0)], 1), None);
        assert_eq!(
            plan_shards(&[(1, -4), (2, 2)], 2),
            Some(vec![a(2, 2)]),
            "never take from a negative shard"
        );
    }

    #[test]
    fn given_enough_stock_when_an_order_is_created_then_reserve_and_price_it() {
        let d = decide(
            Some(order_at(OrderStatus::OrderCreated, 5)),
            Some(WIDGETS),
            5,
        );
        let Decision::Reserve { item, amount, .. } = d else {
            panic!("{d:?}");
        };
        assert_eq!((item.stock, amount), (15, 50));
    }

    #[test]
    fn given_exactly_the_stock_when_ordered_then_reserve_all_of_it() {
        let d = decide(
            Some(order_at(OrderStatus::OrderCreated, 20)),
            Some(WIDGETS),
            20,
        );
        assert!(matches!(d, Decision::Reserve { item, .. } if item.stock == 0));
    }

    #[test]
    fn given_too_little_stock_or_no_item_then_reject_with_a_reason() {
        let created = || Some(order_at(OrderStatus::OrderCreated, 21));
        assert!(matches!(
            decide(created(), Some(WIDGETS), 21),
            Decision::Reject(_, FailureReason::InsufficientStock)
        ));
        assert!(matches!(
            decide(created(), None, 1),
            Decision::Reject(_, FailureReason::UnknownItem)
        ));
    }

    #[test]
    fn given_a_failed_or_compensated_order_when_a_late_event_arrives_then_take_nothing() {
        for status in [OrderStatus::Failed, OrderStatus::Compensated] {
            let d = decide(Some(order_at(status, 1)), Some(WIDGETS), 1);
            assert!(matches!(d, Decision::Skip(..)), "{status}: {d:?}");
        }
    }

    #[test]
    fn given_no_order_or_one_not_yet_created_then_retry_later() {
        assert!(matches!(
            decide(None, Some(WIDGETS), 1),
            Decision::NotYet(_)
        ));
        assert!(matches!(
            decide(Some(order_at(OrderStatus::Pending, 1)), Some(WIDGETS), 1),
            Decision::NotYet(_)
        ));
    }
}
