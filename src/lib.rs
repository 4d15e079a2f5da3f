//! The saga as one program: the function registry, and the local stack `saga up` runs.

pub mod bench;
pub mod bench_bounds;
pub mod bench_cost;
pub mod bench_floor;
pub mod chaos;
pub mod check;
pub mod console;
pub mod ops;
pub mod pubsub_rest;
pub mod supervisor;
pub mod up;

use axum::Router;
use saga_contracts::topology::Function;
use saga_infra::Runtime;

/// The router of `function`: what its binary serves, what `saga up` and the tests run.
pub fn router_for(function: Function) -> fn(Runtime) -> Router {
    match function {
        Function::Frontend => saga_frontend::router,
        Function::Order => saga_order::router,
        Function::Inventory => saga_inventory::router,
        Function::Payments => saga_payments::router,
        Function::Janitor => saga_janitor::router,
    }
}
