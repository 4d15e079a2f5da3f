//! The shared runtime of the saga's functions.
//!
//! - [`topology`]: topics, subscriptions and who consumes what, defined once;
//! - [`events`]: the event contracts and the order's status machine;
//! - [`push`], [`push_auth`], [`keys`]: the Pub/Sub push envelope, its OIDC authentication,
//!   and Google's signing keys;
//! - [`order`]: the order document, a saga's state and history, and its status rules;
//! - [`store`]: Firestore: the documents, named operations and transactions;
//! - [`outbox`] and [`publisher`]: events committed with their effect, published after;
//! - [`step`]: the exactly-once step runtime every push-triggered function is built on;
//! - [`trace`], [`timeline`]: a saga is one trace, and its history is kept;
//! - [`spans`], [`otlp`]: each step's span and its Firestore and Pub/Sub calls, exported
//!   over OTLP when an endpoint is configured;
//! - [`runtime`], [`config`], [`telemetry`]: what a function's `main` needs;
//! - [`meter`]: every Firestore and Pub/Sub operation, counted;
//! - [`chaos`]: faults injected into one request on purpose (`saga chaos`, emulators only).

pub mod chaos;
pub mod config;
pub mod keys;
pub mod meter;
pub mod otlp;
pub mod outbox;
pub mod publisher;
pub mod push;
pub mod push_auth;
pub mod runtime;
pub mod spans;
pub mod step;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod timeline;

pub use runtime::Runtime;

// The contracts, under the names the runtime's modules use for them (`crate::events`, ...).
// Not re-exported: the functions and tools name them from `saga_contracts`.
use saga_contracts::{docs, events, order, topology, trace};
