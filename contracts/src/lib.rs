//! The saga's contracts: what its functions, its tools and its deployment agree on. Nothing
//! here talks to Pub/Sub or Firestore; the runtime (`saga-infra`) does, in these terms.
//!
//! - [`topology`]: topics, subscriptions and who consumes what, defined once;
//! - [`events`]: the event contracts, their schema versions on the wire
//!   ([`events::wire`]), and the order's status machine;
//! - [`order`]: the order document, a saga's state and history, and its status rules;
//! - [`docs`]: the other documents (stock, users, parked messages) and the collections;
//! - [`trace`]: the W3C trace context every event carries.

pub mod docs;
pub mod events;
pub mod order;
pub mod topology;
pub mod trace;
