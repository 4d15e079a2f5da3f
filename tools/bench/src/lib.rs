//! `saga bench` and its floor: real orders through a local stack, measured end to end, beside
//! a trivial saga of the same shape on the same emulators.
//!
//! The modules depend one way: [`model`] (what is measured) is used by all; [`cost`],
//! [`bounds`] and [`floor`] by [`run`] and [`report`]; [`ends`] by [`run`]; nothing imports
//! [`run`].

pub mod bounds;
pub mod cost;
pub mod ends;
pub mod floor;
pub mod model;
pub mod report;
pub mod run;

pub use model::{BenchArgs, BenchError, BenchResult};
pub use run::bench;
