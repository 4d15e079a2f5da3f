//! The order document, `orders/{order_id}`: a saga's whole state in one document.
//!
//! Every step of an order reads it and writes it once, in the transaction that has the step's
//! effect, so what used to take a document each lives inside it:
//! - **the status**, changed only by [`OrderDoc::advance`] (and [`OrderDoc::fail`],
//!   [`OrderDoc::compensate`]), which refuses a move the status machine does not allow;
//! - **each step's record** ([`StepRecord`]): that the step ran (its idempotency record), what
//!   it consumed and decided, and the event it emitted ([`Emitted`]: the outbox, published
//!   after commit). The timeline (`GET /order/{id}` history, `saga trace`, `saga replay`) is
//!   read from these records. They are stored as one JSON string ([`records`]: Firestore
//!   works per field, and they are only ever read whole);
//! - **what was taken for the order**: the stock reserved ([`Reservation`]) and the money
//!   charged ([`Payment`]), which the janitor gives back;
//! - **duplicate deliveries** noted after the fact ([`Duplicate`]).
//!
//! Firestore's limits it respects: 1 MiB a document (an order with every step and a few
//! duplicates is a few KiB), and about one sustained write a second per document (an order
//! is written once per step, a handful of times over its life).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::{Event, FailureReason, OrderDetails, OrderStatus, wire};
use crate::trace::{TRACEPARENT, TraceContext};

pub mod records;

pub use records::{Layout, StepRecords};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderDoc {
    pub order_id: String,
    pub item: String,
    pub quantity: i64,
    pub user: String,
    /// Changed only through [`OrderDoc::advance`].
    status: OrderStatus,
    /// Why the saga failed: the first failure's reason.
    #[serde(default)]
    reason: Option<FailureReason>,
    /// What the user was charged, once payments has run.
    #[serde(default)]
    pub amount: Option<i64>,
    /// The original design's fault switch, as the request carried it.
    #[serde(default)]
    pub payment_error: bool,
    /// The request an `Idempotency-Key` was first used with (its canonical JSON), when the
    /// order was placed with one.
    #[serde(default)]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub reservation: Option<Reservation>,
    #[serde(default)]
    pub payment: Option<Payment>,
    /// One record per step that ran, in the order they ran.
    #[serde(default)]
    steps: StepRecords,
    /// Deliveries that came again after their step had run.
    #[serde(default)]
    pub duplicates: Vec<Duplicate>,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub created_at: Timestamp,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub updated_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationStatus {
    Reserved,
    Released,
}

/// Stock taken for the order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub quantity: i64,
    /// For a sharded item: how much was taken from which shard (what a release gives back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<Allocation>,
    pub status: ReservationStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub shard: u32,
    pub quantity: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    Captured,
    Refunded,
}

/// Money taken for the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub amount: i64,
    pub status: PaymentStatus,
}

/// A step ran for this order: what it consumed, what it decided, what it emitted. Written in
/// the same transaction as the step's effect, so its presence is the step's idempotency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: String,
    /// The event (or request) it consumed: its id and type.
    pub consumed_id: String,
    pub consumed_type: String,
    /// What it decided ("reserved 5 widget").
    pub outcome: String,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub at: Timestamp,
    pub trace_id: String,
    /// The event it owes the next step, published after commit.
    #[serde(default)]
    pub emitted: Option<Emitted>,
}

/// An event committed with the effect that caused it: published after commit, and again by
/// whoever finds it may not have been (a redelivery of the same push, the frontend's sweep).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emitted {
    pub event_id: String,
    pub topic: String,
    /// The event's JSON, published as the message data.
    pub payload: String,
    /// The message attributes: the event's, and the `traceparent` of the span emitting it.
    pub attributes: BTreeMap<String, String>,
}

impl Emitted {
    /// `event` written in schema `version`, emitted by the span `trace`, which the next
    /// step's span is a child of. The version is fixed here, at commit: every publish of it,
    /// the first and any again, sends the same bytes.
    pub fn of(event: &Event, version: u32, trace: &TraceContext) -> Emitted {
        let encoded = wire::encode(event, version);
        Emitted {
            event_id: event.event_id.to_string(),
            topic: event.body.topic().to_owned(),
            payload: encoded.data,
            attributes: encoded
                .attributes
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .chain([(TRACEPARENT.to_owned(), trace.to_string())])
                .collect(),
        }
    }

    pub fn event_type(&self) -> &str {
        self.attributes.get("type").map_or("", String::as_str)
    }

    /// The event, read back in whichever version it was written (any this build knows).
    pub fn event(&self) -> Result<Event, wire::Undecodable> {
        let version = self.attributes.get(wire::VERSION).map(String::as_str);
        wire::decode(self.payload.as_bytes(), version, wire::CURRENT)
    }
}

/// A delivery of an event whose step had already run: nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duplicate {
    pub step: String,
    pub event_id: String,
    pub event_type: String,
    /// The Pub/Sub message id (or sweep) it came as.
    pub delivery: String,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub at: Timestamp,
    pub trace_id: String,
}

/// A status change the status machine does not allow: a bug in a step, never input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("order status cannot move from {from} to {to}")]
pub struct IllegalMove {
    pub from: OrderStatus,
    pub to: OrderStatus,
}

impl OrderDoc {
    /// A new order as the user asked for it: PENDING.
    pub fn new(order_id: Uuid, details: &OrderDetails, now: Timestamp) -> OrderDoc {
        OrderDoc {
            order_id: order_id.to_string(),
            item: details.item.clone(),
            quantity: i64::from(details.quantity),
            user: details.user.clone(),
            status: OrderStatus::Pending,
            reason: None,
            amount: None,
            payment_error: details.payment_error,
            fingerprint: None,
            reservation: None,
            payment: None,
            steps: StepRecords::default(),
            duplicates: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }

    pub fn status(&self) -> OrderStatus {
        self.status
    }

    pub fn reason(&self) -> Option<FailureReason> {
        self.reason
    }

    /// The one way a status changes: forward only, never out of a terminal state, never from
    /// the failure branch back onto the happy path ([`OrderStatus::can_move_to`]).
    pub fn advance(&mut self, to: OrderStatus, now: Timestamp) -> Result<(), IllegalMove> {
        if !self.status.can_move_to(to) {
            return Err(IllegalMove {
                from: self.status,
                to,
            });
        }
        self.status = to;
        self.updated_at = now;
        Ok(())
    }

    /// FAILED with `reason` (the first failure's reason is kept).
    pub fn fail(&mut self, reason: FailureReason, now: Timestamp) -> Result<(), IllegalMove> {
        self.advance(OrderStatus::Failed, now)?;
        self.reason.get_or_insert(reason);
        Ok(())
    }

    /// COMPENSATED, with the first failure's reason or `reason`.
    pub fn compensate(&mut self, reason: FailureReason, now: Timestamp) -> Result<(), IllegalMove> {
        self.advance(OrderStatus::Compensated, now)?;
        self.reason.get_or_insert(reason);
        Ok(())
    }

    /// What the user asked for, as events carry it.
    pub fn details(&self) -> OrderDetails {
        OrderDetails {
            item: self.item.clone(),
            quantity: u32::try_from(self.quantity).unwrap_or(u32::MAX),
            user: self.user.clone(),
            payment_error: self.payment_error,
        }
    }

    /// The record of `step`, if it ran.
    pub fn step(&self, step: &str) -> Option<&StepRecord> {
        self.steps().iter().find(|r| r.step == step)
    }

    /// Every step's record, in the order they ran.
    pub fn steps(&self) -> &[StepRecord] {
        self.steps.as_slice()
    }

    /// The layout its records were read in, or will be written in.
    pub fn layout(&self) -> Layout {
        self.steps.layout()
    }

    /// Writes its records in `layout` (the revision's `SAGA_ORDER_LAYOUT`) from now on.
    pub fn lay_out(&mut self, layout: Layout) {
        self.steps.lay_out(layout);
    }

    /// Adds a step's record.
    pub fn record(&mut self, record: StepRecord) {
        self.steps.push(record);
    }

    pub fn order_uuid(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.order_id).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    fn order() -> OrderDoc {
        let details = OrderDetails {
            item: "widget".into(),
            quantity: 5,
            user: "jack".into(),
            payment_error: false,
        };
        OrderDoc::new(Uuid::new_v4(), &details, Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn given_a_new_order_when_it_moves_forward_then_each_step_is_allowed_once() {
        let mut o = order();
        assert_eq!(o.status(), Pending);
        let now = Timestamp::now();
        o.advance(OrderCreated, now).unwrap();
        o.advance(InventoryReserved, now).unwrap();
        assert_eq!(o.updated_at, now);
        assert_eq!(
            o.advance(OrderCreated, now),
            Err(IllegalMove {
                from: InventoryReserved,
                to: OrderCreated
            })
        );
        o.advance(Completed, now).unwrap();
        assert!(
            o.fail(FailureReason::Timeout, now).is_err(),
            "COMPLETED is final"
        );
    }

    #[test]
    fn given_a_failure_then_the_first_reason_stays_and_compensation_ends_it() {
        let mut o = order();
        let now = Timestamp::now();
        o.advance(OrderCreated, now).unwrap();
        o.fail(FailureReason::InsufficientStock, now).unwrap();
        assert!(o.advance(InventoryReserved, now).is_err(), "no way back");
        o.compensate(FailureReason::Timeout, now).unwrap();
        assert_eq!(
            (o.status(), o.reason()),
            (Compensated, Some(FailureReason::InsufficientStock))
        );
        assert!(o.compensate(FailureReason::Timeout, now).is_err(), "once");
    }

    #[test]
    fn an_emitted_event_carries_its_trace_and_round_trips() {
        let event = Event::new(
            Uuid::new_v4(),
            crate::events::EventBody::OrderCreated {
                order: order().details(),
            },
        );
        let trace = TraceContext::root();
        let emitted = Emitted::of(&event, wire::CURRENT, &trace);
        assert_eq!(emitted.event_type(), "order-created");
        assert_eq!(emitted.attributes[TRACEPARENT], trace.to_string());
        assert_eq!(emitted.attributes[wire::VERSION], wire::CURRENT.to_string());
        assert_eq!(emitted.event().unwrap(), event);
    }
}
