//! The transactional outbox, inside the order document: a step's event is committed with its
//! effect, in the step's record ([`Emitted`]), and published after the commit.
//!
//! No "published" mark is written. A push step answers 2xx only after its publish succeeded,
//! so an event whose publish failed or never happened (a crash between commit and publish)
//! is always delivered again, and the redelivery, finding the step done, publishes the
//! committed event again. The frontend has no redelivery: [`sweep_pending`] republishes the
//! event of every order still PENDING after a grace period (its order step has not run). A
//! republish is harmless: the event id is the same, and every consumer absorbs duplicates.

use std::time::Duration;

use crate::events::OrderStatus;
use crate::order::Emitted;
use crate::publisher::{EventPublisher, PublishError};
use crate::store::{Store, StoreError};

/// Publishes a committed event.
pub async fn publish(
    publisher: &EventPublisher,
    emitted: &Emitted,
) -> Result<String, PublishError> {
    let message_id = publisher.publish(emitted).await?;
    tracing::info!(
        event_id = %emitted.event_id,
        topic = %emitted.topic,
        message_id,
        "event published"
    );
    Ok(message_id)
}

/// What a sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SweepReport {
    /// Orders still PENDING `grace` after they were accepted: their event may never have
    /// been published.
    pub due: usize,
    pub republished: usize,
    pub failed: usize,
    /// Orders due that no build can read (logged as errors; retrying would not help, so the
    /// sweep does not fail for them).
    #[serde(default)]
    pub unreadable: usize,
}

/// Republishes the frontend's event of every order still PENDING `grace` after it was
/// accepted, page by page. One order that cannot be republished does not stop the others.
pub async fn sweep_pending(
    store: &Store,
    publisher: &EventPublisher,
    step: &str,
    grace: Duration,
) -> Result<SweepReport, StoreError> {
    let mut report = SweepReport::default();
    let mut pages = store.due(&[OrderStatus::Pending], grace);
    while let Some(page) = pages.next().await? {
        for (order_id, error) in &page.undecodable {
            report.unreadable += 1;
            tracing::error!(%order_id, %error, "order not readable; the sweep goes on without it");
        }
        for order in &page.orders {
            let Some(emitted) = order.step(step).and_then(|r| r.emitted.as_ref()) else {
                continue;
            };
            report.due += 1;
            match publish(publisher, emitted).await {
                Ok(_) => report.republished += 1,
                Err(error) => {
                    report.failed += 1;
                    tracing::warn!(%error, order_id = %order.order_id, "sweep could not publish");
                }
            }
        }
    }
    if report.due > 0 {
        tracing::info!(?report, "outbox swept");
    }
    Ok(report)
}
