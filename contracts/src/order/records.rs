//! An order's step records as its document stores them: the `steps` field.
//!
//! The records are only ever read whole (the step runtime, the timeline, `saga check`), never
//! queried; Terraform exempts `steps` from indexing. Firestore does work for every field a
//! write carries, and a record laid out as a map is about fifteen fields (its emitted event's
//! attributes included), so an order near its end carried some sixty. Written as one JSON
//! string ([`Layout::Packed`]) they are one field, the same bytes. On the emulator a commit
//! costs by the field: packed, a step's commit came 0.3 ms nearer the floor's at c=50 and the
//! Firestore emulator's CPU an order fell about 10 % (docs/benchmarks.md, "The step records
//! packed").
//!
//! Both layouts are read, whichever a document has. The field keeps its name on purpose: a
//! revision from before the packed layout cannot decode a packed order, so its delivery is
//! answered 503 and retried, where a new field would let it see an order with no records and
//! run a step again. Rolling the layout out is docs/evolving.md's pin: `SAGA_ORDER_LAYOUT=listed`
//! until every revision reads both.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::StepRecord;

/// How an order document lays out its step records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// One map per record: what every revision before the packed layout writes and reads.
    Listed,
    /// The records as one JSON string.
    #[default]
    Packed,
}

impl FromStr for Layout {
    type Err = String;

    fn from_str(s: &str) -> Result<Layout, String> {
        match s {
            "listed" => Ok(Layout::Listed),
            "packed" => Ok(Layout::Packed),
            _ => Err(format!("{s:?} is not an order layout (listed or packed)")),
        }
    }
}

/// The records, in the order their steps ran, and the layout they are written in: the one
/// they were read in until [`StepRecords::lay_out`] says otherwise.
#[derive(Clone, Debug, Default)]
pub struct StepRecords {
    records: Vec<StepRecord>,
    layout: Layout,
}

/// Equal when the records are: the layout is how they are stored, not what they say.
impl PartialEq for StepRecords {
    fn eq(&self, other: &StepRecords) -> bool {
        self.records == other.records
    }
}

impl StepRecords {
    pub fn as_slice(&self) -> &[StepRecord] {
        &self.records
    }

    pub fn push(&mut self, record: StepRecord) {
        self.records.push(record);
    }

    /// The layout these records were read in (or will be written in).
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Writes them in `layout` from now on.
    pub fn lay_out(&mut self, layout: Layout) {
        self.layout = layout;
    }
}

impl Serialize for StepRecords {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.layout {
            Layout::Listed => self.records.serialize(s),
            Layout::Packed => {
                let json =
                    serde_json::to_string(&self.records).map_err(serde::ser::Error::custom)?;
                s.serialize_str(&json)
            }
        }
    }
}

impl<'de> Deserialize<'de> for StepRecords {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StepRecords, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = StepRecords;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("step records: a JSON string (packed) or a list of maps (listed)")
            }

            fn visit_str<E: de::Error>(self, json: &str) -> Result<StepRecords, E> {
                let records = serde_json::from_str(json)
                    .map_err(|e| E::custom(format!("packed step records: {e}")))?;
                Ok(StepRecords {
                    records,
                    layout: Layout::Packed,
                })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StepRecords, A::Error> {
                let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(record) = seq.next_element()? {
                    records.push(record);
                }
                Ok(StepRecords {
                    records,
                    layout: Layout::Listed,
                })
            }
        }
        d.deserialize_any(Either)
    }
}

#[cfg(test)]
mod tests {
    use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
    use firestore::{firestore_document_from_serializable, firestore_document_to_serializable};
    use jiff::Timestamp;

    use super::*;

    fn records(layout: Layout) -> StepRecords {
        let record = |step: &str| StepRecord {
            step: step.to_owned(),
            consumed_id: format!("{step}-in"),
            consumed_type: "order-created".to_owned(),
            outcome: "reserved 5 widget".to_owned(),
            at: Timestamp::from_second(1_700_000_000).unwrap(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
            emitted: None,
        };
        StepRecords {
            records: vec![record("frontend"), record("order")],
            layout,
        }
    }

    #[derive(Serialize, Deserialize)]
    struct Doc {
        #[serde(default)]
        steps: StepRecords,
    }

    /// What a revision from before the packed layout reads an order as.
    #[derive(Deserialize)]
    struct Before {
        #[serde(default)]
        #[allow(dead_code)]
        steps: Vec<StepRecord>,
    }

    fn stored(layout: Layout) -> firestore::gcloud_sdk::google::firestore::v1::Document {
        firestore_document_from_serializable(
            "orders/o",
            &Doc {
                steps: records(layout),
            },
        )
        .unwrap()
    }

    #[test]
    fn each_layout_is_stored_as_it_says_and_read_back_the_same() {
        for layout in [Layout::Packed, Layout::Listed] {
            let doc = stored(layout);
            let stored_as = match &doc.fields["steps"].value_type {
                Some(ValueType::StringValue(_)) => Layout::Packed,
                Some(ValueType::ArrayValue(_)) => Layout::Listed,
                other => panic!("steps stored as {other:?}"),
            };
            assert_eq!(stored_as, layout);
            let back: Doc = firestore_document_to_serializable(&doc).unwrap();
            assert_eq!(back.steps, records(layout));
            assert_eq!(back.steps.as_slice()[1].at, records(layout).records[1].at);
            assert_eq!(back.steps.layout(), layout, "kept for the next write");
        }
    }

    #[test]
    fn a_revision_from_before_reads_listed_records() {
        let before: Result<Before, _> = firestore_document_to_serializable(&stored(Layout::Listed));
        assert!(before.is_ok(), "what a pinned revision writes");
    }

    #[test]
    fn a_revision_from_before_cannot_read_packed_records_rather_than_seeing_none() {
        let before: Result<Before, _> = firestore_document_to_serializable(&stored(Layout::Packed));
        assert!(
            before.is_err(),
            "an error (a retry), never an order with no records"
        );
    }

    #[test]
    fn a_layout_is_named_listed_or_packed() {
        assert_eq!("listed".parse(), Ok(Layout::Listed));
        assert_eq!("packed".parse(), Ok(Layout::Packed));
        assert!(
            "maps"
                .parse::<Layout>()
                .unwrap_err()
                .contains("listed or packed")
        );
    }
}
