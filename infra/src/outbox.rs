//! The transactional outbox: an event is written in the same transaction as the effect that
//! caused it, published after commit, then marked published. Whoever finds an unpublished
//! record (a redelivery of the same push, or the sweep) publishes it again with the same id.
//!
//! The mark only tells the sweep not to publish again, so a delivery does not wait for its
//! own: [`Marks`] writes them in batches, when the last delivery in flight in the process
//! ends (or a batch is full). At low load that is each delivery's own mark, before its
//! answer, as if unbatched; under load one write carries many. A mark that is lost (a crash
//! before the batch, a failed write) costs one republish by the sweep, which every consumer
//! absorbs as a duplicate.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

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
/// (see [`Marks`]). Call it within [`Marks::scope`].
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

/// Most marks written in one batch (Firestore allows 500 writes in one).
const MARK_BATCH: usize = 100;

/// The marks of a process's published records, written in batches: each delivery runs in a
/// [`Marks::scope`], queues its mark with [`Marks::defer`], and the last scope to end (or the
/// one that fills a batch) writes every queued mark before it answers. Nothing is written in
/// the background, so a Cloud Run instance whose CPU is throttled between requests leaves
/// nothing pending once it is idle.
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
    in_flight: usize,
}

impl MarkState {
    /// A delivery ends: the last one out, or the one that finds a full batch, takes every
    /// queued mark to write.
    fn leave(&mut self) -> Vec<String> {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 || self.pending.len() >= MARK_BATCH {
            std::mem::take(&mut self.pending)
        } else {
            Vec::new()
        }
    }
}

impl std::fmt::Debug for Marks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Marks").finish_non_exhaustive()
    }
}

/// A delivery in flight; when the last one ends, the queued marks are written.
struct InFlight {
    marks: Marks,
    ended: bool,
}

impl Drop for InFlight {
    /// A scope cancelled half-way (its client went away) still ends: if it was the last, the
    /// marks it leaves behind are written by a task.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let batch = self.marks.leave();
        if !batch.is_empty()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let marks = self.marks.clone();
            handle.spawn(async move { marks.write(batch).await });
        }
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

    /// Runs one delivery; when it is the last in flight, or the batch is full, the queued
    /// marks are written before it returns.
    pub async fn scope<F: Future>(&self, delivery: F) -> F::Output {
        let mut guard = self.enter();
        let output = delivery.await;
        guard.ended = true;
        let batch = self.leave();
        self.write(batch).await;
        output
    }

    /// Queues the mark of a published record.
    pub fn defer(&self, event_id: String) {
        self.state().pending.push(event_id);
    }

    fn enter(&self) -> InFlight {
        self.state().in_flight += 1;
        InFlight {
            marks: self.clone(),
            ended: false,
        }
    }

    /// Ends a delivery; returns the marks it must write (the last one out writes them all).
    fn leave(&self) -> Vec<String> {
        self.state().leave()
    }

    async fn write(&self, mut batch: Vec<String>) {
        // Concurrent duplicates of one delivery each publish and queue the same mark; a batch
        // write may not write a document twice.
        batch.sort_unstable();
        batch.dedup();
        if batch.is_empty() {
            return;
        }
        if let Err(error) = self
            .inner
            .store
            .mark_published(&batch, Timestamp::now())
            .await
        {
            // Published but not marked: the outbox sweep republishes them, which is harmless
            // (same event ids, and every consumer absorbs duplicates).
            tracing::warn!(%error, marks = batch.len(), "published records not marked");
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MarkState> {
        // The state is a counter and a list, consistent after any panic.
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

    fn in_flight(n: usize) -> MarkState {
        MarkState {
            pending: Vec::new(),
            in_flight: n,
        }
    }

    #[test]
    fn a_lone_delivery_writes_its_own_mark_before_it_answers() {
        let mut state = in_flight(1);
        state.pending.push("e1".into());
        assert_eq!(state.leave(), ["e1"]);
        assert!(state.pending.is_empty());
    }

    #[test]
    fn marks_wait_for_the_last_delivery_in_flight_which_writes_them_all() {
        let mut state = in_flight(3);
        state.pending.push("e1".into());
        assert!(state.leave().is_empty(), "two still in flight");
        state.pending.push("e2".into());
        assert!(state.leave().is_empty(), "one still in flight");
        assert_eq!(state.leave(), ["e1", "e2"]);
        assert_eq!(state.in_flight, 0);
    }

    #[test]
    fn a_full_batch_is_written_even_while_others_are_in_flight() {
        let mut state = in_flight(5);
        state.pending = (0..MARK_BATCH).map(|i| format!("e{i}")).collect();
        assert_eq!(state.leave().len(), MARK_BATCH);
        assert_eq!(state.in_flight, 4);
    }

    #[test]
    fn a_delivery_with_nothing_to_mark_leaves_nothing_to_write() {
        let mut state = in_flight(1);
        assert!(state.leave().is_empty());
        assert_eq!(state.in_flight, 0);
    }
}
