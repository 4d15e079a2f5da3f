//! `payments`: consumes `inventory-updated`, charges the user (balance decremented,
//! `payments/{order_id}` CAPTURED, order COMPLETED) and publishes `payment-created`; too small
//! a balance, or the `payment-error` fault switch when fault injection is on, fails the saga.

use axum::Router;
use futures::FutureExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use saga_infra::Runtime;
use saga_infra::events::{Event, EventBody, FailureReason, OrderStatus};
use saga_infra::step::{self, Outcome, Step};
use saga_infra::store::{
    OrderDoc, PaymentDoc, PaymentStatus, StoreError, Tx, UserDoc, collections,
};

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Charge {
        remaining_balance: i64,
    },
    Reject(FailureReason),
    Skip(String),
    /// The reservation this charges for is not visible yet: retry later.
    NotYet(String),
}

/// Decides whether to charge `amount` for the order. `fault` is the `payment-error` switch,
/// already gated on fault injection being on.
pub fn decide(
    order: Option<&OrderDoc>,
    user: Option<&UserDoc>,
    amount: i64,
    fault: bool,
) -> Decision {
    let Some(order) = order else {
        return Decision::NotYet("no order document yet".into());
    };
    match order.status {
        OrderStatus::InventoryReserved => {}
        OrderStatus::Pending | OrderStatus::OrderCreated => {
            return Decision::NotYet(format!("order is {}, not reserved yet", order.status));
        }
        other => return Decision::Skip(format!("order is {other}, not INVENTORY_RESERVED")),
    }
    if fault {
        return Decision::Reject(FailureReason::PaymentError);
    }
    match user {
        None => Decision::Reject(FailureReason::UnknownUser),
        Some(user) if user.balance < amount => Decision::Reject(FailureReason::InsufficientFunds),
        Some(user) => Decision::Charge {
            remaining_balance: user.balance - amount,
        },
    }
}

pub struct PaymentsStep {
    pub fault_injection: bool,
}

impl Step for PaymentsStep {
    const NAME: &'static str = "payments";
    const ACCEPTS: &'static [&'static str] = &["inventory-reserved"];

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
            let EventBody::InventoryReserved {
                order: details,
                amount,
                ..
            } = &event.body
            else {
                return Ok(Outcome::skip("not an inventory-reserved event"));
            };
            let id = event.order_id.to_string();
            let order: Option<OrderDoc> = tx.get(collections::ORDERS, &id).await?;
            let user: Option<UserDoc> = tx.get(collections::USERS, &details.user).await?;
            let fault = self.fault_injection && details.payment_error;
            let now = Timestamp::now();
            Ok(
                match (decide(order.as_ref(), user.as_ref(), *amount, fault), order) {
                    (Decision::Charge { remaining_balance }, Some(order)) => {
                        tx.set(
                            collections::USERS,
                            &details.user,
                            &UserDoc {
                                balance: remaining_balance,
                            },
                        )?;
                        tx.set(
                            collections::PAYMENTS,
                            &id,
                            &PaymentDoc {
                                order_id: id.clone(),
                                user: details.user.clone(),
                                amount: *amount,
                                status: PaymentStatus::Captured,
                                updated_at: now,
                            },
                        )?;
                        tx.set(
                            collections::ORDERS,
                            &id,
                            &OrderDoc {
                                status: OrderStatus::Completed,
                                amount: Some(*amount),
                                updated_at: now,
                                ..order
                            },
                        )?;
                        Outcome::emit(
                            format!("charged {amount} to {}", details.user),
                            EventBody::PaymentCreated {
                                order: details.clone(),
                                amount: *amount,
                            },
                        )
                    }
                    (Decision::Reject(reason), Some(order)) => {
                        step::fail_saga(tx, order, details, reason, Self::NAME)?
                    }
                    (Decision::Skip(why), _) => Outcome::skip(why),
                    (Decision::NotYet(why), _) => Outcome::not_yet(why),
                    (decision, None) => Outcome::skip(format!("no order for {decision:?}")),
                },
            )
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

    const JACK: UserDoc = UserDoc { balance: 100 };

    #[test]
    fn given_a_reserved_order_and_enough_balance_then_charge() {
        let d = decide(
            Some(&order(OrderStatus::InventoryReserved)),
            Some(&JACK),
            60,
            false,
        );
        assert_eq!(
            d,
            Decision::Charge {
                remaining_balance: 40
            }
        );
    }

    #[test]
    fn given_too_small_a_balance_then_reject_insufficient_funds() {
        let d = decide(
            Some(&order(OrderStatus::InventoryReserved)),
            Some(&JACK),
            101,
            false,
        );
        assert_eq!(d, Decision::Reject(FailureReason::InsufficientFunds));
    }

    #[test]
    fn given_the_fault_switch_then_reject_with_payment_error() {
        let d = decide(
            Some(&order(OrderStatus::InventoryReserved)),
            Some(&JACK),
            1,
            true,
        );
        assert_eq!(d, Decision::Reject(FailureReason::PaymentError));
    }

    #[test]
    fn given_a_reservation_event_before_the_reservation_is_visible_then_retry_later() {
        assert!(matches!(
            decide(None, Some(&JACK), 1, false),
            Decision::NotYet(_)
        ));
        let d = decide(
            Some(&order(OrderStatus::OrderCreated)),
            Some(&JACK),
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
            let d = decide(Some(&order(status)), Some(&JACK), 1, false);
            assert!(matches!(d, Decision::Skip(_)), "{status}: {d:?}");
        }
    }
}
