//! `order`: consumes `frontend` (order-requested), checks the user exists, creates
//! `orders/{order_id}`, and publishes `order-created`, or fails the saga with `unknown-user`.

use axum::Router;
use futures::FutureExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use saga_contracts::docs::{UserDoc, collections};
use saga_contracts::events::{Event, EventBody, FailureReason, OrderStatus};
use saga_contracts::order::OrderDoc;
use saga_infra::Runtime;
use saga_infra::step::{self, Outcome, ReadOf, Step, StepError};
use saga_infra::store::Tx;

/// What to do with an order request, carrying the order it acts on.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Create(OrderDoc),
    Reject(OrderDoc, FailureReason),
    /// The order has moved on without this step (the janitor compensated it first): leave
    /// it be.
    Skip(OrderDoc, String),
}

/// Decides from the order as accepted (PENDING; `None` if there is none, when the event came
/// without the frontend's commit, as a test's or a replay's may) and whether the user exists.
pub fn decide(event: &Event, order: Option<OrderDoc>, user: Option<&UserDoc>) -> Decision {
    let order = order
        .unwrap_or_else(|| OrderDoc::new(event.order_id, event.body.order(), Timestamp::now()));
    match (order.status(), user) {
        (OrderStatus::Pending, None) => Decision::Reject(order, FailureReason::UnknownUser),
        (OrderStatus::Pending, Some(_)) => Decision::Create(order),
        (status, _) => Decision::Skip(order, format!("order is already {status}")),
    }
}

pub struct OrderStep;

impl Step for OrderStep {
    const NAME: &'static str = "order";
    const ACCEPTS: &'static [&'static str] = &["order-requested"];

    type Read = UserDoc;

    fn reads(&self, event: &Event) -> Option<ReadOf<UserDoc>> {
        Some(ReadOf::new(collections::USERS, &event.body.order().user))
    }

    fn run<'a>(
        &'a self,
        _tx: &'a mut Tx<'_>,
        event: &'a Event,
        order: Option<OrderDoc>,
        user: Option<UserDoc>,
    ) -> BoxFuture<'a, Result<Outcome, StepError>> {
        async move {
            Ok(match decide(event, order, user.as_ref()) {
                Decision::Create(mut order) => {
                    order.advance(OrderStatus::OrderCreated, Timestamp::now())?;
                    let details = order.details();
                    Outcome::Emit {
                        order,
                        summary: "order created".into(),
                        event: EventBody::OrderCreated { order: details },
                    }
                }
                Decision::Reject(order, reason) => step::fail_saga(order, reason, Self::NAME)?,
                Decision::Skip(order, why) => Outcome::Done {
                    order,
                    summary: why,
                },
            })
        }
        .boxed()
    }
}

pub fn router(runtime: Runtime) -> Router {
    step::router(runtime, OrderStep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use saga_contracts::events::OrderDetails;

    fn requested() -> Event {
        Event::new(
            uuid::Uuid::new_v4(),
            EventBody::OrderRequested {
                order: OrderDetails {
                    item: "widget".into(),
                    quantity: 1,
                    user: "jack".into(),
                    payment_error: false,
                },
            },
        )
    }

    fn accepted(event: &Event) -> OrderDoc {
        OrderDoc::new(event.order_id, event.body.order(), Timestamp::now())
    }

    #[test]
    fn given_a_known_user_and_an_accepted_order_when_requested_then_create() {
        let e = requested();
        let d = decide(&e, Some(accepted(&e)), Some(&UserDoc { balance: 1 }));
        assert!(matches!(d, Decision::Create(o) if o.order_id == e.order_id.to_string()));
    }

    #[test]
    fn given_no_order_document_when_requested_then_create_it_from_the_event() {
        let e = requested();
        let d = decide(&e, None, Some(&UserDoc { balance: 1 }));
        assert!(matches!(d, Decision::Create(o) if o.status() == OrderStatus::Pending));
    }

    #[test]
    fn given_an_unknown_user_when_requested_then_reject_before_anything_is_reserved() {
        let e = requested();
        assert!(matches!(
            decide(&e, Some(accepted(&e)), None),
            Decision::Reject(_, FailureReason::UnknownUser)
        ));
    }

    #[test]
    fn given_a_compensated_tombstone_when_requested_late_then_skip() {
        let e = requested();
        let mut tombstone = accepted(&e);
        tombstone
            .compensate(FailureReason::Timeout, Timestamp::now())
            .unwrap();
        let d = decide(&e, Some(tombstone), Some(&UserDoc { balance: 1 }));
        assert!(matches!(d, Decision::Skip(_, why) if why.contains("COMPENSATED")));
    }
}
