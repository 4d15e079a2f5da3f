//! The saga's timeline: what each step consumed (with its outcome) and emitted (with its
//! payload, so history can be replayed), and the deliveries that came again. It is read from
//! the order document's step records and duplicates ([`crate::order`]), which are written in
//! each step's own transaction and never expire: they are the audit trail.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::order::OrderDoc;
use crate::store::{Store, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// A step took the event and decided (`outcome`).
    Consumed,
    /// A step committed this event, to be published.
    Emitted,
    /// The event was delivered again; nothing changed.
    Duplicate,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub order_id: String,
    pub at: Timestamp,
    /// The function (or sweep) that consumed or emitted it.
    pub step: String,
    pub kind: EntryKind,
    pub event_type: String,
    pub event_id: String,
    pub outcome: String,
    pub topic: Option<String>,
    /// The event's JSON, for emitted events (what `saga replay` republishes).
    pub payload: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub trace_id: Option<String>,
}

/// The order's timeline, oldest first (at one instant, what a step consumed before what it
/// emitted).
pub fn history(order: &OrderDoc) -> Vec<TimelineEntry> {
    let entry =
        |step: &str, kind, at, event_type: &str, event_id: &str, trace_id: &str| TimelineEntry {
            order_id: order.order_id.clone(),
            at,
            step: step.to_owned(),
            kind,
            event_type: event_type.to_owned(),
            event_id: event_id.to_owned(),
            outcome: String::new(),
            topic: None,
            payload: None,
            attributes: BTreeMap::new(),
            trace_id: Some(trace_id.to_owned()),
        };
    let mut entries = Vec::new();
    for r in order.steps() {
        entries.push(TimelineEntry {
            outcome: r.outcome.clone(),
            ..entry(
                &r.step,
                EntryKind::Consumed,
                r.at,
                &r.consumed_type,
                &r.consumed_id,
                &r.trace_id,
            )
        });
        if let Some(e) = &r.emitted {
            entries.push(TimelineEntry {
                outcome: format!("to {}", e.topic),
                topic: Some(e.topic.clone()),
                payload: Some(e.payload.clone()),
                attributes: e.attributes.clone(),
                ..entry(
                    &r.step,
                    EntryKind::Emitted,
                    r.at,
                    e.event_type(),
                    &e.event_id,
                    &r.trace_id,
                )
            });
        }
    }
    for d in &order.duplicates {
        entries.push(TimelineEntry {
            outcome: format!("already done (delivery {})", d.delivery),
            ..entry(
                &d.step,
                EntryKind::Duplicate,
                d.at,
                &d.event_type,
                &d.event_id,
                &d.trace_id,
            )
        });
    }
    entries.sort_by_key(|e| (e.at, matches!(e.kind, EntryKind::Emitted)));
    entries
}

/// Orders a replay reads in one page.
const REPLAY_PAGE: u32 = 500;

/// Emitted events between `since` and `until`, oldest first, for replay.
pub async fn emitted_between(
    store: &Store,
    since: Timestamp,
    until: Timestamp,
) -> Result<Vec<TimelineEntry>, StoreError> {
    let mut entries = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .orders_changed_since(since, after, REPLAY_PAGE)
            .await?;
        after = page.last().map(|o| o.updated_at);
        entries.extend(
            page.iter()
                .flat_map(history)
                .filter(|e| e.kind == EntryKind::Emitted && e.at >= since && e.at <= until),
        );
        if page.len() < REPLAY_PAGE as usize {
            break;
        }
    }
    entries.sort_by_key(|e| e.at);
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, EventBody, OrderDetails, wire};
    use crate::order::{Duplicate, Emitted, StepRecord};
    use crate::trace::TraceContext;

    #[test]
    fn the_history_is_each_steps_consumed_and_emitted_then_duplicates_in_time_order() {
        let details = OrderDetails {
            item: "widget".into(),
            quantity: 1,
            user: "jack".into(),
            payment_error: false,
        };
        let id = uuid::Uuid::new_v4();
        let t0 = Timestamp::UNIX_EPOCH;
        let t1 = t0 + jiff::SignedDuration::from_secs(1);
        let mut order = OrderDoc::new(id, &details, t0);
        let created = Event::new(id, EventBody::OrderCreated { order: details });
        order.record(StepRecord {
            step: "order".into(),
            consumed_id: "e1".into(),
            consumed_type: "order-requested".into(),
            outcome: "order created".into(),
            at: t0,
            trace_id: "t".into(),
            emitted: Some(Emitted::of(&created, wire::CURRENT, &TraceContext::root())),
        });
        order.duplicates.push(Duplicate {
            step: "order".into(),
            event_id: "e1".into(),
            event_type: "order-requested".into(),
            delivery: "m-2".into(),
            at: t1,
            trace_id: "t".into(),
        });
        let h = history(&order);
        let kinds: Vec<_> = h.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EntryKind::Consumed,
                EntryKind::Emitted,
                EntryKind::Duplicate
            ]
        );
        assert_eq!(h[1].event_type, "order-created");
        assert_eq!(h[1].topic.as_deref(), Some("order-created"));
        assert!(h[1].payload.is_some(), "what replay republishes");
    }
}
