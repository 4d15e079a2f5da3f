//! The transactional outbox: an event is written in the same transaction as the effect that
//! caused it, published after commit, then marked published. Whoever finds an unpublished
//! record (a redelivery of the same push, or the sweep) publishes it again with the same id.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::events::Event;
use crate::publisher::{EventPublisher, PublishError};
use crate::store::{OutboxRecord, Store, StoreError, Tx, collections, expiry_from};
use crate::trace::{TRACEPARENT, TraceContext};

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("event published but not marked published: {0}")]
    Mark(#[from] StoreError),
}

/// The outbox record of `event`, not yet published; `trace` is the span emitting it, which
/// the `traceparent` attribute names as the parent of the next step's span.
pub fn record(event: &Event, now: Timestamp, trace: &TraceContext) -> OutboxRecord {
    OutboxRecord {
        event_id: event.event_id.to_string(),
        order_id: event.order_id.to_string(),
        topic: event.body.topic().to_owned(),
        payload: serde_json::to_string(event).unwrap_or_default(),
        attributes: event
            .attributes()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .chain([(TRACEPARENT.to_owned(), trace.to_string())])
            .collect::<BTreeMap<_, _>>(),
        published: false,
        created_at: now,
        published_at: None,
        expire_at: expiry_from(now),
    }
}

/// Queues the record on the transaction.
pub fn stage(tx: &mut Tx<'_, '_>, record: &OutboxRecord) -> Result<(), StoreError> {
    tx.set(collections::OUTBOX, &record.event_id, record)
}

/// Publishes a committed record and marks it published. Publishing twice is possible (a crash
/// between the two, or two redeliveries at once) and harmless: the event id is the same.
pub async fn deliver(
    store: &Store,
    publisher: &EventPublisher,
    record: &OutboxRecord,
) -> Result<String, DeliverError> {
    let message_id = publisher.publish(record).await?;
    store
        .mark_published(&record.event_id, Timestamp::now())
        .await?;
    tracing::info!(
        event_id = %record.event_id,
        topic = %record.topic,
        message_id,
        "event published"
    );
    Ok(message_id)
}

/// Publishes the record with this id if it is still pending.
pub async fn deliver_pending(
    store: &Store,
    publisher: &EventPublisher,
    event_id: &str,
) -> Result<(), DeliverError> {
    match store
        .get::<OutboxRecord>(collections::OUTBOX, event_id)
        .await?
    {
        Some(record) if !record.published => deliver(store, publisher, &record).await.map(drop),
        _ => Ok(()),
    }
}

/// What a sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SweepReport {
    /// Unpublished records of this function's topics old enough to be swept.
    pub due: usize,
    pub republished: usize,
    pub failed: usize,
}

/// Republishes this function's outbox records still unpublished `grace` after they were
/// committed (their publisher crashed, or the broker was down).
pub async fn sweep(
    store: &Store,
    publisher: &EventPublisher,
    topics: &[&str],
    grace: std::time::Duration,
) -> Result<SweepReport, StoreError> {
    use crate::store::Context;
    let pending: Vec<OutboxRecord> = store
        .db()
        .fluent()
        .select()
        .from(collections::OUTBOX)
        .filter(|q| q.for_all([q.field("published").eq(false)]))
        .obj()
        .query()
        .await
        .context("querying unpublished outbox records")?;
    let cutoff = Timestamp::now()
        .checked_sub(jiff::SignedDuration::try_from(grace).unwrap_or_default())
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let mut report = SweepReport::default();
    for record in pending
        .iter()
        .filter(|r| topics.contains(&r.topic.as_str()) && r.created_at <= cutoff)
    {
        report.due += 1;
        match deliver(store, publisher, record).await {
            Ok(_) => report.republished += 1,
            Err(error) => {
                report.failed += 1;
                tracing::warn!(%error, event_id = %record.event_id, "sweep could not publish");
            }
        }
    }
    if report.due > 0 {
        tracing::info!(?report, "outbox swept");
    }
    Ok(report)
}
