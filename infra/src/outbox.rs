//! The transactional outbox: an event is written in the same transaction as the effect that
//! caused it, published after commit, then marked published. Whoever finds an unpublished
//! record (a redelivery of the same push, or the sweep) publishes it again with the same id.
//!
//! The mark only tells the sweep not to publish again, so a delivery does not wait for its
//! own: [`Marks`] writes them in the background, in batches, [`MARK_LINGER`] after the first
//! of a batch is queued. A mark that is lost (a crash before its batch, a failed write)
//! costs one republish by the sweep, which every consumer absorbs as a duplicate.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
pub fn stage(tx: &mut Tx<'_>, record: &OutboxRecord) -> Result<(), StoreError> {
    tx.set(collections::OUTBOX, &record.event_id, record)
}

/// Publishes a committed record and marks it published. Publishing twice is possible (a crash
/// between the two, or two redeliveries at once) and harmless: the event id is the same.
pub async fn deliver(
    store: &Store,
    publisher: &EventPublisher,
    record: &OutboxRecord,
) -> Result<String, DeliverError> {
    let message_id = publish(publisher, record).await?;
    store
        .mark_published(std::slice::from_ref(&record.event_id), Timestamp::now())
        .await?;
    Ok(message_id)
}

/// Publishes a committed record and queues its mark on `marks`, to be written with others
/// in the background (see [`Marks`]).
pub async fn deliver_batched(
    publisher: &EventPublisher,
    marks: &Marks,
    record: &OutboxRecord,
) -> Result<String, PublishError> {
    let message_id = publish(publisher, record).await?;
    marks.defer(record.event_id.clone());
    Ok(message_id)
}

async fn publish(
    publisher: &EventPublisher,
    record: &OutboxRecord,
) -> Result<String, PublishError> {
    let message_id = publisher.publish(record).await?;
    tracing::info!(
        event_id = %record.event_id,
        topic = %record.topic,
        message_id,
        "event published"
    );
    Ok(message_id)
}

/// Most marks written in one batch write (Firestore's limit on writes in one request).
const MARK_BATCH: usize = 500;

/// How long a queued mark waits for others to share its write. A mark only spares the sweep
/// a republish, so it may wait; under load one write carries the marks of every delivery
/// that ended meanwhile.
pub const MARK_LINGER: Duration = Duration::from_millis(100);

/// The marks of a process's published records, written in the background, off every
/// delivery's answer: the first mark queued after a write schedules the next one,
/// [`MARK_LINGER`] later, and every mark queued until then rides along.
///
/// On Cloud Run, an instance whose CPU is throttled between requests writes them when its
/// next request (or the sweep's) wakes it, and at the latest on SIGTERM ([`Marks::flush`]
/// in the shutdown path). A mark lost with a crashed instance costs one republish by the
/// sweep, which every consumer absorbs as a duplicate.
#[derive(Clone)]
pub struct Marks {
    inner: Arc<MarksInner>,
}

struct MarksInner {
    store: Store,
    state: Mutex<MarkState>,
}

#[derive(Default)]
struct MarkState {
    pending: Vec<String>,
    /// A write is scheduled and has not yet taken the pending marks.
    scheduled: bool,
}

impl MarkState {
    /// Queues a mark; true when it is the first since the last write took the queue, so the
    /// caller schedules the next write.
    fn push(&mut self, event_id: String) -> bool {
        self.pending.push(event_id);
        !std::mem::replace(&mut self.scheduled, true)
    }

    /// Takes every queued mark for a write; the next mark queued schedules another.
    fn take(&mut self) -> Vec<String> {
        self.scheduled = false;
        std::mem::take(&mut self.pending)
    }
}

impl std::fmt::Debug for Marks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Marks").finish_non_exhaustive()
    }
}

impl Marks {
    pub fn new(store: Store) -> Marks {
        Marks {
            inner: Arc::new(MarksInner {
                store,
                state: Mutex::new(MarkState::default()),
            }),
        }
    }

    /// Queues the mark of a published record, to be written within [`MARK_LINGER`].
    pub fn defer(&self, event_id: String) {
        if !self.state().push(event_id) {
            return;
        }
        let marks = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    tokio::time::sleep(MARK_LINGER).await;
                    marks.flush().await;
                });
            }
            // No runtime to write from: the sweep republishes it, harmlessly.
            Err(_) => tracing::warn!("no runtime to write outbox marks from"),
        }
    }

    /// Writes every queued mark now (the sweep, before it looks for unpublished records; the
    /// shutdown path, before the process ends).
    pub async fn flush(&self) {
        let mut batch = self.state().take();
        // Concurrent duplicates of one delivery each publish and queue the same mark; a batch
        // write may not write a document twice.
        batch.sort_unstable();
        batch.dedup();
        for chunk in batch.chunks(MARK_BATCH) {
            if let Err(error) = self
                .inner
                .store
                .mark_published(chunk, Timestamp::now())
                .await
            {
                // Published but not marked: the outbox sweep republishes them, which is
                // harmless (same event ids, and every consumer absorbs duplicates).
                tracing::warn!(%error, marks = chunk.len(), "published records not marked");
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MarkState> {
        // The state is a flag and a list, consistent after any panic.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
    if topics.is_empty() {
        // Nothing of this function's can be pending (the janitor publishes nothing); on the
        // emulator the query would cost a scan of the whole project.
        return Ok(SweepReport::default());
    }
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
    store.meter().query(pending.len());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_mark_schedules_a_write_and_later_ones_ride_along() {
        let mut state = MarkState::default();
        assert!(state.push("e1".into()), "first mark: schedule a write");
        assert!(!state.push("e2".into()), "a write is already scheduled");
        assert_eq!(state.take(), ["e1", "e2"]);
        assert!(state.pending.is_empty());
    }

    #[test]
    fn a_mark_queued_after_a_write_took_the_queue_schedules_the_next() {
        let mut state = MarkState::default();
        assert!(state.push("e1".into()));
        assert_eq!(state.take(), ["e1"]);
        assert!(state.push("e2".into()), "the taken write will not carry it");
        assert_eq!(state.take(), ["e2"]);
    }

    #[test]
    fn a_write_with_nothing_queued_takes_nothing() {
        let mut state = MarkState::default();
        assert!(state.take().is_empty());
        assert!(!state.scheduled);
    }
}
