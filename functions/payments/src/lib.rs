//! `payments`: consumes `inventory-updated`, charges the user (balance decremented,
//! `payments/{order_id}` CAPTURED, order COMPLETED) and publishes `payment-created`; too small
//! a balance, or the `payment-error` fault switch when fault injection is on, fails the saga.

use axum::Router;
use futures::FutureExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use saga_contracts::docs::{UserDoc, collections};
use saga_contracts::events::{Event, EventBody, FailureReason, OrderStatus};
use saga_contracts::order::{OrderDoc, Payment, PaymentStatus};
use saga_infra::Runtime;
use saga_infra::step::{self, Outcome, ReadOf, Step, StepError};
use saga_infra::store::Tx;

/// What to do for an order, carrying what it acts on.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Charge {
        order: OrderDoc,
        /// The user with the amount already taken.
        user: UserDoc,
    },
    Reject(OrderDoc, FailureReason),
    Skip(OrderDoc, String),
    /// The reservation this charges for is not visible yet: retry later.
    NotYet(String),
}

/// Decides whether to charge `amount` for the order. `fault` is the `payment-error` switch,
/// already gated on fault injection being on.
pub fn decide(
    order: Option<OrderDoc>,
    user: Option<UserDoc>,
    amount: i64,
    fault: bool,
) -> Decision {
    let Some(order) = order else {
        return Decision::NotYet("no order document yet".into());
    };
    match order.status() {
        OrderStatus::InventoryReserved => {}
        OrderStatus::Pending | OrderStatus::OrderCreated => {
            return Decision::NotYet(format!("order is {}, not reserved yet", order.status()));
        }
        other => {
            return Decision::Skip(order, format!("order is {other}, not INVENTORY_RESERVED"));
        }
    }
    if fault {
        return Decision::Reject(order, FailureReason::PaymentError);
    }
    match user {
        None => Decision::Reject(order, FailureReason::UnknownUser),
        Some(user) if user.balance < amount => {
            Decision::Reject(order, FailureReason::InsufficientFunds)
        }
        Some(user) => Decision::Charge {
            order,
            user: UserDoc {
                balance: user.balance - amount,
            },
        },
    }
}

pub struct PaymentsStep {
    pub fault_injection: bool,
}

impl Step for PaymentsStep {
    const NAME: &'static str = "payments";
    const ACCEPTS: &'static [&'static str] = &["inventory-reserved"];

    type Read = UserDoc;

    fn reads(&self, event: &Event) -> Option<ReadOf<UserDoc>> {
        Some(ReadOf::new(collections::USERS, &event.body.order().user))
    }

    fn run<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        event: &'a Event,
        order: Option<OrderDoc>,
        user: Option<UserDoc>,
    ) -> BoxFuture<'a, Result<Outcome, StepError>> {
        async move {
            let EventBody::InventoryReserved {
                order: details,
                amount,
                ..
            } = &event.body
            else {
                return Ok(Outcome::NotYet("not an inventory-reserved event".into()));
            };
            let fault = self.fault_injection && details.payment_error;
            Ok(match decide(order, user, *amount, fault) {
                Decision::Charge { mut order, user } => {
                    tx.set(collections::USERS, &details.user, &user)?;
                    order.payment = Some(Payment {
                        amount: *amount,
                        status: PaymentStatus::Captured,
                    });
                    order.amount = Some(*amount);
                    order.advance(OrderStatus::Completed, Timestamp::now())?;
                    Outcome::Emit {
                        order,
                        summary: format!("charged {amount} to {}", details.user),
                        event: EventBody::PaymentCreated {
                            order: details.clone(),
                            amount: *amount,
                        },
                    }
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
    let fault_injection = runtime.config.fault_injection;
    step::router(runtime, PaymentsStep { fault_injection })
}

#[cfg(test)]
mod tests {
    use super::*;
    use saga_infra::testing::order_at;

    const JACK: UserDoc = UserDoc { balance: 100 };

    fn reserved() -> Option<OrderDoc> {
        Some(order_at(OrderStatus::InventoryReserved, 5))
    }

    #[test]
    fn given_a_reserved_order_and_enough_balance_then_charge() {
        let d = decide(reserved(), Some(JACK), 60, false);
        assert!(matches!(d, Decision::Charge { user, .. } if user.balance == 40));
    }

    #[test]
    fn given_too_small_a_balance_then_reject_insufficient_funds() {
        let d = decide(reserved(), Some(JACK), 101, false);
        assert!(matches!(
            d,
            Decision::Reject(_, FailureReason::InsufficientFunds)
        ));
    }

    #[test]
    fn given_the_fault_switch_then_reject_with_payment_error() {
        let d = decide(reserved(), Some(JACK), 1, true);
        assert!(matches!(
            d,
            Decision::Reject(_, FailureReason::PaymentError)
        ));
    }

    #[test]
    fn given_a_reservation_event_before_the_reservation_is_visible_then_retry_later() {
        assert!(matches!(
            decide(None, Some(JACK), 1, false),
            Decision::NotYet(_)
        ));
        let d = decide(
            Some(order_at(OrderStatus::OrderCreated, 5)),
            Some(JACK),
            1,
            false,
        );
        assert!(matches!(d, Decision::NotYet(_)), "{d:?}");
    }

    #[test]
    fn given_a_compensated_order_when_a_late_reservation_arrives_then_charge_nothing() {
        for status in [
            OrderStatus::Failed,
            OrderStatus::Compensated,
            OrderStatus::Completed,
        ] {
            let d = decide(Some(order_at(status, 5)), Some(JACK), 1, false);
            assert!(matches!(d, Decision::Skip(..)), "{status}: {d:?}");
        }
    }
}
