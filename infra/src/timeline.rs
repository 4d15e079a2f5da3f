//! The saga's timeline: an append-only record of every event each step consumed (with its
//! outcome) and emitted (with its payload, so history can be replayed), and of duplicate
//! deliveries. Entries are written in the step's transaction (duplicates after it), one
//! document per step, and never expire: they are the audit trail.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::store::{Context, OutboxRecord, Store, StoreError, Tx, collections};
use crate::trace::TraceContext;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// A step took the event and decided (`outcome`).
    Consumed,
    /// A step committed this event to its outbox, to be published.
    Emitted,
    /// The event was delivered again; nothing changed.
    Duplicate,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub order_id: String,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub at: Timestamp,
    /// The function (or sweep) that consumed or emitted it.
    pub step: String,
    pub kind: EntryKind,
    pub event_type: String,
    pub event_id: String,
    pub outcome: String,
    #[serde(default)]
    pub topic: Option<String>,
    /// The event's JSON, for emitted events (what `saga replay` republishes).
    #[serde(default)]
    pub payload: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub trace_id: Option<String>,
}

/// A step consumed `event` and decided `outcome`.
pub fn consumed(
    step: &str,
    event_type: &str,
    event_id: &str,
    order_id: &str,
    outcome: &str,
    trace: &TraceContext,
    at: Timestamp,
) -> TimelineEntry {
    TimelineEntry {
        order_id: order_id.to_owned(),
        at,
        step: step.to_owned(),
        kind: EntryKind::Consumed,
        event_type: event_type.to_owned(),
        event_id: event_id.to_owned(),
        outcome: outcome.to_owned(),
        topic: None,
        payload: None,
        attributes: BTreeMap::new(),
        trace_id: Some(trace.trace_id_hex()),
    }
}

/// A step emitted the event of `record`.
pub fn emitted(step: &str, record: &OutboxRecord, trace: &TraceContext) -> TimelineEntry {
    TimelineEntry {
        order_id: record.order_id.clone(),
        at: record.created_at,
        step: step.to_owned(),
        kind: EntryKind::Emitted,
        event_type: record.attributes.get("type").cloned().unwrap_or_default(),
        event_id: record.event_id.clone(),
        outcome: format!("to {}", record.topic),
        topic: Some(record.topic.clone()),
        payload: Some(record.payload.clone()),
        attributes: record.attributes.clone(),
        trace_id: Some(trace.trace_id_hex()),
    }
}

/// How entries are stored: one document per step and delivery, holding the step's entries
/// (what it consumed, and what it emitted if anything). Two logical entries, one write: every
/// document the emulator writes costs it CPU for each indexed field, and the timeline was 8 of
/// an order's ~25 documents. Entries in an array are not indexed field by field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Stored {
    order_id: String,
    /// Whether `entries` has an emitted event: what replay looks for.
    emits: bool,
    entries: Vec<TimelineEntry>,
}

fn entry_id(entry: &TimelineEntry, discriminator: &str) -> String {
    let kind = match entry.kind {
        EntryKind::Consumed => "consumed",
        EntryKind::Emitted => "emitted",
        EntryKind::Duplicate => "duplicate",
    };
    format!(
        "{}--{}--{kind}--{discriminator}",
        entry.order_id, entry.step
    )
}

fn stored(entries: Vec<TimelineEntry>) -> Stored {
    Stored {
        order_id: entries
            .first()
            .map(|e| e.order_id.clone())
            .unwrap_or_default(),
        emits: entries.iter().any(|e| e.kind == EntryKind::Emitted),
        entries,
    }
}

/// Queues a step's entries (what it consumed, then what it emitted) on its transaction, as
/// one document named after the first.
pub fn stage(tx: &mut Tx<'_>, entries: Vec<TimelineEntry>) -> Result<(), StoreError> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    let id = entry_id(first, &first.event_id);
    tx.set(collections::TIMELINE, &id, &stored(entries))
}

/// Records a duplicate delivery (outside any transaction: it changes nothing).
pub async fn record_duplicate(
    store: &Store,
    step: &str,
    event: &Event,
    delivery_id: &str,
    trace: &TraceContext,
) -> Result<(), StoreError> {
    let entry = TimelineEntry {
        kind: EntryKind::Duplicate,
        outcome: "already done".into(),
        ..consumed(
            step,
            event.body.kind(),
            &event.event_id.to_string(),
            &event.order_id.to_string(),
            "",
            trace,
            Timestamp::now(),
        )
    };
    store
        .set(
            collections::TIMELINE,
            &entry_id(&entry, delivery_id),
            &stored(vec![entry]),
        )
        .await
}

/// The order's timeline, oldest first.
pub async fn history(store: &Store, order_id: &str) -> Result<Vec<TimelineEntry>, StoreError> {
    let order_id = order_id.to_owned();
    let stored: Vec<Stored> = store
        .db()
        .fluent()
        .select()
        .from(collections::TIMELINE)
        .filter(|q| q.for_all([q.field("order_id").eq(order_id.clone())]))
        .obj()
        .query()
        .await
        .context(format!("reading the timeline of {order_id}"))?;
    store.meter().query(stored.len());
    let mut entries: Vec<TimelineEntry> = stored.into_iter().flat_map(|s| s.entries).collect();
    entries.sort_by_key(|e| (e.at, matches!(e.kind, EntryKind::Emitted)));
    Ok(entries)
}

/// Emitted events between `since` and `until`, oldest first, for replay.
pub async fn emitted_between(
    store: &Store,
    since: Timestamp,
    until: Timestamp,
) -> Result<Vec<TimelineEntry>, StoreError> {
    let stored: Vec<Stored> = store
        .db()
        .fluent()
        .select()
        .from(collections::TIMELINE)
        .filter(|q| q.for_all([q.field("emits").eq(true)]))
        .obj()
        .query()
        .await
        .context("reading emitted events")?;
    store.meter().query(stored.len());
    let mut entries: Vec<TimelineEntry> = stored
        .into_iter()
        .flat_map(|s| s.entries)
        .filter(|e| e.kind == EntryKind::Emitted && e.at >= since && e.at <= until)
        .collect();
    entries.sort_by_key(|e| e.at);
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_stores_what_it_consumed_and_emitted_as_one_document_replay_can_find() {
        let trace = TraceContext::root();
        let at = Timestamp::UNIX_EPOCH;
        let consumed = consumed(
            "order",
            "order-requested",
            "e1",
            "o1",
            "created",
            &trace,
            at,
        );
        let emitted = TimelineEntry {
            kind: EntryKind::Emitted,
            event_id: "e2".into(),
            ..consumed.clone()
        };
        let both = stored(vec![consumed.clone(), emitted]);
        assert_eq!((both.order_id.as_str(), both.emits), ("o1", true));
        assert_eq!(both.entries.len(), 2);
        assert!(!stored(vec![consumed]).emits);
    }
}
