//! The saga's timeline: an append-only record of every event each step consumed (with its
//! outcome) and emitted (with its payload, so history can be replayed), and of duplicate
//! deliveries. Entries are written in the step's transaction (duplicates after it) and never
//! expire: they are the audit trail.

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

/// Queues an entry on the step's transaction.
pub fn stage(tx: &mut Tx<'_, '_>, entry: &TimelineEntry) -> Result<(), StoreError> {
    let id = entry_id(entry, &entry.event_id);
    tx.set(collections::TIMELINE, &id, entry)
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
            &entry,
        )
        .await
}

/// The order's timeline, oldest first.
pub async fn history(store: &Store, order_id: &str) -> Result<Vec<TimelineEntry>, StoreError> {
    let order_id = order_id.to_owned();
    let mut entries: Vec<TimelineEntry> = store
        .db()
        .fluent()
        .select()
        .from(collections::TIMELINE)
        .filter(|q| q.for_all([q.field("order_id").eq(order_id.clone())]))
        .obj()
        .query()
        .await
        .context(format!("reading the timeline of {order_id}"))?;
    entries.sort_by_key(|e| (e.at, matches!(e.kind, EntryKind::Emitted)));
    Ok(entries)
}

/// Emitted events between `since` and `until`, oldest first, for replay.
pub async fn emitted_between(
    store: &Store,
    since: Timestamp,
    until: Timestamp,
) -> Result<Vec<TimelineEntry>, StoreError> {
    let mut entries: Vec<TimelineEntry> = store
        .db()
        .fluent()
        .select()
        .from(collections::TIMELINE)
        .filter(|q| q.for_all([q.field("kind").eq("emitted")]))
        .obj()
        .query()
        .await
        .context("reading emitted events")?;
    entries.retain(|e| e.at >= since && e.at <= until);
    entries.sort_by_key(|e| e.at);
    Ok(entries)
}
