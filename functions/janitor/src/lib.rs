//! `janitor`: consumes `error` and the forward steps' dead letters, and compensates, once per
//! order: releases exactly the stock that was reserved, refunds a captured payment, and marks
//! the order COMPENSATED with the reason. What was taken keeps its final status on the order
//! (RELEASED, REFUNDED): the history is the audit trail. Its sweep fails, and compensates,
//! every saga stuck past the timeout.

mod compensation;
mod dead_letters;
mod timeouts;

pub use compensation::{JanitorStep, Plan, plan};
pub use dead_letters::DeadLetterStep;
pub use timeouts::{TIMED_OUT_LOG, TimeoutReport};

use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use saga_contracts::topology::{Function, is_dead_letter_subscription};
use saga_infra::Runtime;
use saga_infra::step::{self};

/// The janitor's routes: `error-sub` to [`JanitorStep`], the dead-letter subscriptions to
/// [`DeadLetterStep`], and the stuck-saga sweep.
pub fn router(runtime: Runtime) -> Router {
    let router = runtime
        .function
        .consumes()
        .fold(Router::new(), |router, subscription| {
            if is_dead_letter_subscription(subscription) {
                step::route(router, &runtime, subscription, Arc::new(DeadLetterStep))
            } else {
                step::route(router, &runtime, subscription, Arc::new(JanitorStep))
            }
        });
    let router = match Function::Janitor.sweep_path() {
        Some(path) => router.route(
            path,
            post(timeouts::sweep_timeouts).with_state(runtime.clone()),
        ),
        None => router,
    };
    step::push_only(&runtime, router)
}
