//! `order`: consumes `frontend` (order-requested), checks the user exists, creates
//! `orders/{order_id}`, and publishes `order-created`, or fails the saga with `unknown-user`.

use axum::Router;
use futures::FutureExt;
use futures::future::BoxFuture;
use saga_infra::Runtime;
use saga_infra::events::{Event, EventBody, FailureReason, OrderDetails, OrderStatus};
use saga_infra::step::{self, Outcome, Step};
use saga_infra::store::{OrderDoc, StoreError, Tx, UserDoc, collections};

/// What to do with an order request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Create,
    Reject(FailureReason),
    /// The order document exists already (the janitor compensated it first): leave it be.
    Skip(String),
}

pub fn decide(existing: Option<&OrderDoc>, user: Option<&UserDoc>) -> Decision {
    match (existing, user) {
        (Some(order), _) => Decision::Skip(format!("order already exists as {}", order.status)),
        (None, None) => Decision::Reject(FailureReason::UnknownUser),
        (None, Some(_)) => Decision::Create,
    }
}

pub struct OrderStep;

impl Step for OrderStep {
    const NAME: &'static str = "order";
    const ACCEPTS: &'static [&'static str] = &["order-requested"];

    fn reads(&self, event: &Event) -> Vec<(&'static str, String)> {
        vec![
            (collections::ORDERS, event.order_id.to_string()),
            (collections::USERS, event.body.order().user.clone()),
        ]
    }

    fn run<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        async move {
            let order = event.body.order();
            let id = event.order_id.to_string();
            let existing: Option<OrderDoc> = tx.get(collections::ORDERS, &id).await?;
            let user: Option<UserDoc> = tx.get(collections::USERS, &order.user).await?;
            Ok(match decide(existing.as_ref(), user.as_ref()) {
                Decision::Create => {
                    tx.set(
                        collections::ORDERS,
                        &id,
                        &new_order(&id, order, OrderStatus::OrderCreated, None),
                    )?;
                    Outcome::emit(
                        "order created",
                        EventBody::OrderCreated {
                            order: order.clone(),
                        },
                    )
                }
                Decision::Reject(reason) => {
                    let pending = new_order(&id, order, OrderStatus::Pending, None);
                    step::fail_saga(tx, pending, order, reason, Self::NAME)?
                }
                Decision::Skip(why) => Outcome::skip(why),
            })
        }
        .boxed()
    }
}

fn new_order(
    id: &str,
    order: &OrderDetails,
    status: OrderStatus,
    reason: Option<FailureReason>,
) -> OrderDoc {
    let now = jiff::Timestamp::now();
    OrderDoc {
        order_id: id.to_owned(),
        item: order.item.clone(),
        quantity: i64::from(order.quantity),
        user: order.user.clone(),
        status,
        reason,
        amount: None,
        created_at: now,
        updated_at: now,
    }
}

pub fn router(runtime: Runtime) -> Router {
    step::router(runtime, OrderStep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(status: OrderStatus) -> OrderDoc {
        let details = OrderDetails {
            item: "widget".into(),
            quantity: 1,
            user: "jack".into(),
            payment_error: false,
        };
        new_order("id", &details, status, None)
    }

    #[test]
    fn given_a_known_user_and_no_order_when_requested_then_create() {
        assert_eq!(
            decide(None, Some(&UserDoc { balance: 1 })),
            Decision::Create
        );
    }

    #[test]
    fn given_an_unknown_user_when_requested_then_reject_before_anything_is_reserved() {
        assert_eq!(
            decide(None, None),
            Decision::Reject(FailureReason::UnknownUser)
        );
    }

    #[test]
    fn given_a_compensated_tombstone_when_requested_late_then_skip() {
        let d = decide(
            Some(&order(OrderStatus::Compensated)),
            Some(&UserDoc { balance: 1 }),
        );
        assert!(matches!(d, Decision::Skip(why) if why.contains("COMPENSATED")));
    }
}
