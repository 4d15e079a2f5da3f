//! The stuck-saga sweep: every saga not over past the timeout is failed and compensated.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use saga_contracts::events::{Event, EventBody, FailureReason, OrderStatus};
use saga_infra::Runtime;
use saga_infra::step::{self, Ack, PushError};
use serde::{Deserialize, Serialize};

use crate::compensation::JanitorStep;

/// The log line of a saga failed by timeout: a log-based metric in Terraform counts it
/// (terraform/monitoring.tf), and tests/saga/deploy.rs keeps the two equal.
pub const TIMED_OUT_LOG: &str = "saga timed out";

/// What a timeout sweep did.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimeoutReport {
    /// Sagas not over for longer than the timeout.
    pub stuck: usize,
    /// Of those, compensated now.
    pub compensated: usize,
    /// Of those, not compensated now (an error, logged): the next sweep tries again.
    #[serde(default)]
    pub failed: usize,
    /// Of those, documents no build can read: left alone and logged as errors.
    #[serde(default)]
    pub unreadable: usize,
}

/// Statuses a saga can be stuck in. PENDING among them: an order accepted whose request
/// was dead-lettered, and the dead letter too, would otherwise wait for good.
const UNFINISHED: [OrderStatus; 4] = [
    OrderStatus::Pending,
    OrderStatus::OrderCreated,
    OrderStatus::InventoryReserved,
    OrderStatus::Failed,
];

/// `POST /internal/sweep/timeouts`: fails with `timeout`, and compensates, every saga not
/// over for longer than the configured timeout, page by page. One that cannot be compensated
/// now is counted and logged, and the others still are. A late message for a compensated
/// saga finds it COMPENSATED and changes nothing.
pub(crate) async fn sweep_timeouts(
    State(runtime): State<Runtime>,
) -> Result<Json<TimeoutReport>, PushError> {
    let runtime = runtime.sweeping();
    let mut report = TimeoutReport::default();
    let mut pages = runtime.store.due(&UNFINISHED, runtime.config.saga_timeout);
    while let Some(page) = pages.next().await? {
        for (order_id, error) in &page.undecodable {
            report.stuck += 1;
            report.unreadable += 1;
            tracing::error!(%order_id, %error, "stuck order not readable, left alone; the sweep goes on");
        }
        for order in &page.orders {
            report.stuck += 1;
            let Some(order_id) = order.order_uuid() else {
                tracing::warn!(order_id = %order.order_id, "order with a malformed id left alone");
                report.failed += 1;
                continue;
            };
            let event = Event::new(
                order_id,
                EventBody::SagaFailed {
                    order: order.details(),
                    reason: FailureReason::Timeout,
                    step: "timeout".into(),
                },
            );
            tracing::warn!(%order_id, status = %order.status(), "{TIMED_OUT_LOG}");
            match step::run_once(&runtime, "timeout-sweep", Arc::new(JanitorStep), event).await {
                Ok(Ack::Processed { .. }) => report.compensated += 1,
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(%order_id, %error, "timed-out saga not compensated; the next sweep tries again");
                    report.failed += 1;
                }
            }
        }
    }
    Ok(Json(report))
}
