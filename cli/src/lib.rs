//! The `saga` command ([`cmd`], one module per subcommand) and the function registry `saga
//! serve` runs. The operator tools are `saga-ops`, the local stack is `saga-emulator`, the
//! bench is `saga-bench`.

pub mod cmd;

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
