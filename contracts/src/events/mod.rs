//! Event contracts: what travels on the topics, and the order states it drives. How they
//! are written and read on the wire, by schema version: [`wire`].
//!
//! An event's id is derived from the order id and what the event says (UUIDv5), so a step
//! that runs again for the same order can only ever emit the same id: consumers dedupe on it.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::topology::topics;

pub mod wire;

/// The order as the user asked for it; carried by every event so no step needs to look it up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderDetails {
    pub item: String,
    pub quantity: u32,
    pub user: String,
    /// The original design's `payment-error` fault switch; honoured only where fault
    /// injection is on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub payment_error: bool,
}

/// Why a saga failed. Machine-readable; serialised in kebab-case (`insufficient-stock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureReason {
    UnknownUser,
    UnknownItem,
    InsufficientStock,
    InsufficientFunds,
    PaymentError,
    Timeout,
    DeadLettered,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::UnknownUser => "unknown-user",
            FailureReason::UnknownItem => "unknown-item",
            FailureReason::InsufficientStock => "insufficient-stock",
            FailureReason::InsufficientFunds => "insufficient-funds",
            FailureReason::PaymentError => "payment-error",
            FailureReason::Timeout => "timeout",
            FailureReason::DeadLettered => "dead-lettered",
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened, by type; the JSON carries it as `"type": "<kebab-case>"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum EventBody {
    /// frontend → `frontend`: a validated order was accepted.
    OrderRequested { order: OrderDetails },
    /// order → `order-created`: the order document exists.
    OrderCreated { order: OrderDetails },
    /// inventory → `inventory-updated`: stock is reserved for the order, `amount` to pay.
    /// (Version 1 also carried `unit_price`: [`wire`].)
    InventoryReserved { order: OrderDetails, amount: i64 },
    /// payments → `payment-created`: the user was charged.
    PaymentCreated { order: OrderDetails, amount: i64 },
    /// any step → `error`: the saga cannot complete and must be compensated.
    SagaFailed {
        order: OrderDetails,
        reason: FailureReason,
        /// The step that failed it.
        step: String,
    },
}

impl EventBody {
    /// The `type` field's value.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::OrderRequested { .. } => "order-requested",
            EventBody::OrderCreated { .. } => "order-created",
            EventBody::InventoryReserved { .. } => "inventory-reserved",
            EventBody::PaymentCreated { .. } => "payment-created",
            EventBody::SagaFailed { .. } => "saga-failed",
        }
    }

    /// The topic this event is published to.
    pub fn topic(&self) -> &'static str {
        match self {
            EventBody::OrderRequested { .. } => topics::FRONTEND,
            EventBody::OrderCreated { .. } => topics::ORDER_CREATED,
            EventBody::InventoryReserved { .. } => topics::INVENTORY_UPDATED,
            EventBody::PaymentCreated { .. } => topics::PAYMENT_CREATED,
            EventBody::SagaFailed { .. } => topics::ERROR,
        }
    }

    pub fn order(&self) -> &OrderDetails {
        match self {
            EventBody::OrderRequested { order }
            | EventBody::OrderCreated { order }
            | EventBody::InventoryReserved { order, .. }
            | EventBody::PaymentCreated { order, .. }
            | EventBody::SagaFailed { order, .. } => order,
        }
    }

    /// What makes two events of one order distinct: the type, and for failures the step and
    /// reason (a saga may be failed by a step and later by a timeout).
    fn identity(&self) -> String {
        match self {
            EventBody::SagaFailed { step, reason, .. } => format!("saga-failed/{step}/{reason}"),
            other => other.kind().to_owned(),
        }
    }
}

/// An event as published: its identity, the saga it belongs to, and its body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub occurred_at: Timestamp,
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    /// An event for `order_id` whose id is derived from the order and the body, so the same
    /// step re-run emits the same id.
    pub fn new(order_id: Uuid, body: EventBody) -> Event {
        Event {
            event_id: Event::id_for(order_id, &body),
            order_id,
            occurred_at: Timestamp::now(),
            body,
        }
    }

    pub fn id_for(order_id: Uuid, body: &EventBody) -> Uuid {
        Uuid::new_v5(&order_id, body.identity().as_bytes())
    }

    /// The Pub/Sub attributes published with it, for filtering and tracing without decoding.
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![
            ("type", self.body.kind().to_owned()),
            ("event_id", self.event_id.to_string()),
            ("order_id", self.order_id.to_string()),
        ]
    }
}

/// The order's lifecycle. Ranked so that a status never moves backwards:
/// PENDING → ORDER_CREATED → INVENTORY_RESERVED → COMPLETED, or FAILED → COMPENSATED.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    OrderCreated,
    InventoryReserved,
    Completed,
    Failed,
    Compensated,
}

impl OrderStatus {
    fn rank(self) -> u8 {
        match self {
            OrderStatus::Pending => 0,
            OrderStatus::OrderCreated => 1,
            OrderStatus::InventoryReserved => 2,
            OrderStatus::Failed => 3,
            OrderStatus::Completed => 4,
            OrderStatus::Compensated => 4,
        }
    }

    /// COMPLETED and COMPENSATED are final.
    pub fn is_terminal(self) -> bool {
        matches!(self, OrderStatus::Completed | OrderStatus::Compensated)
    }

    /// FAILED or COMPENSATED: no forward step may act on the order any more.
    pub fn is_failed(self) -> bool {
        matches!(self, OrderStatus::Failed | OrderStatus::Compensated)
    }

    /// Whether moving from `self` to `next` is allowed: forward only, never out of a
    /// terminal state, never from the failure branch back onto the happy path.
    pub fn can_move_to(self, next: OrderStatus) -> bool {
        if self.is_terminal() {
            return false;
        }
        if self.is_failed() && !next.is_failed() {
            return false;
        }
        next.rank() > self.rank()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::OrderCreated => "ORDER_CREATED",
            OrderStatus::InventoryReserved => "INVENTORY_RESERVED",
            OrderStatus::Completed => "COMPLETED",
            OrderStatus::Failed => "FAILED",
            OrderStatus::Compensated => "COMPENSATED",
        }
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    fn order() -> OrderDetails {
        OrderDetails {
            item: "widget".into(),
            quantity: 5,
            user: "jack".into(),
            payment_error: false,
        }
    }

    #[test]
    fn event_ids_are_stable_per_order_and_body() {
        let id = Uuid::new_v4();
        let a = Event::new(id, EventBody::OrderCreated { order: order() });
        let b = Event::new(id, EventBody::OrderCreated { order: order() });
        assert_eq!(a.event_id, b.event_id);
        let other = Event::new(Uuid::new_v4(), EventBody::OrderCreated { order: order() });
        assert_ne!(a.event_id, other.event_id);
        let failed = |step: &str, reason| EventBody::SagaFailed {
            order: order(),
            reason,
            step: step.into(),
        };
        assert_ne!(
            Event::id_for(id, &failed("inventory", FailureReason::InsufficientStock)),
            Event::id_for(id, &failed("timeout", FailureReason::Timeout)),
        );
    }

    #[test]
    fn events_round_trip_through_json_with_a_type_tag() {
        let e = Event::new(
            Uuid::new_v4(),
            EventBody::SagaFailed {
                order: order(),
                reason: FailureReason::InsufficientStock,
                step: "inventory".into(),
            },
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["type"], "saga-failed");
        assert_eq!(json["reason"], "insufficient-stock");
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), e);
    }

    #[test]
    fn an_unknown_event_type_does_not_decode() {
        let json = serde_json::json!({
            "event_id": Uuid::new_v4(), "order_id": Uuid::new_v4(),
            "occurred_at": "2026-01-01T00:00:00Z", "type": "order-teleported",
        });
        assert!(serde_json::from_value::<Event>(json).is_err());
    }

    #[test]
    fn statuses_only_move_forward() {
        assert!(Pending.can_move_to(OrderCreated));
        assert!(OrderCreated.can_move_to(InventoryReserved));
        assert!(InventoryReserved.can_move_to(Completed));
        assert!(Pending.can_move_to(Failed));
        assert!(InventoryReserved.can_move_to(Failed));
        assert!(Failed.can_move_to(Compensated));
        assert!(Pending.can_move_to(Compensated));

        assert!(!InventoryReserved.can_move_to(OrderCreated));
        assert!(!Completed.can_move_to(Failed));
        assert!(!Compensated.can_move_to(Failed));
        assert!(!Failed.can_move_to(Completed));
        assert!(!Failed.can_move_to(InventoryReserved));
        assert!(!OrderCreated.can_move_to(OrderCreated));
    }
}
