//! Events on the wire, by schema version.
//!
//! During a rolling deploy old and new revisions of a function serve side by side for
//! minutes, and the events in Pub/Sub and in the orders' records were written by either. So
//! every event says which version of the contract it was written in (`schema_version`, as a
//! message attribute and the same field in the JSON), and a consumer:
//!
//! - decodes every version it knows, upcasting the older ones to the current shape, and
//!   ignores fields it does not know (a tolerant reader);
//! - answers an event of a version newer than it accepts with a retry ([`Undecodable::Newer`]:
//!   the runtime answers 503, never parks it), since a newer revision will take it;
//! - treats an event with no version as version 1, the format before versions;
//! - parks as poison only what no version can read: bytes that are not an event, a version
//!   that is not a number, or an unknown type in a version it knows.
//!
//! | version | what changed |
//! |---|---|
//! | 1 | the format before versions: no `schema_version`; `inventory-reserved` carries `unit_price` |
//! | 2 | `schema_version` (attribute and field); `inventory-reserved` no longer carries `unit_price` (what payments charges is `amount`; the price is the item's) |
//!
//! A producer writes the version it is configured to ([`EventVersions::emit`]): during a
//! rollout, new revisions write the previous version until every consumer reads the new one
//! (docs/evolving.md). Each step of the table is a [`Step`], an upcaster and a downcaster;
//! `infra/tests/corpus/` holds every shape each version has published.

use serde_json::{Map, Value};

use super::Event;

/// The version this build writes by default and the newest it reads.
pub const CURRENT: u32 = 2;
/// The oldest version this build reads (and can write, for a rollout).
pub const OLDEST: u32 = 1;
/// The message attribute, and the JSON field, that carry the version.
pub const VERSION: &str = "schema_version";

/// Which versions a function writes and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventVersions {
    /// The version it writes events in.
    pub emit: u32,
    /// The newest version it reads; a newer event is answered with a retry.
    pub accept: u32,
}

impl Default for EventVersions {
    fn default() -> EventVersions {
        EventVersions {
            emit: CURRENT,
            accept: CURRENT,
        }
    }
}

impl EventVersions {
    /// A build that speaks only `version`: it writes it and reads nothing newer (what the
    /// previous release did; the rolling-deploy test runs it beside the current one).
    pub fn only(version: u32) -> EventVersions {
        EventVersions {
            emit: version,
            accept: version,
        }
    }
}

/// Why an event could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undecodable {
    /// Written in a version newer than this build reads: a newer revision will.
    #[error(
        "event schema version {version} is newer than {accept}, the newest this revision reads"
    )]
    Newer { version: u32, accept: u32 },
    /// No version can read it.
    #[error("{0}")]
    Poison(String),
}

/// An event as published: the JSON data and the attributes that carry its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub data: String,
    pub attributes: Vec<(&'static str, String)>,
}

/// Writes `event` in `version` (clamped to the versions this build knows): its JSON and its
/// attributes (the event's, and from version 2 on, the version).
pub fn encode(event: &Event, version: u32) -> Encoded {
    let version = version.clamp(OLDEST, CURRENT);
    let mut value = serde_json::to_value(event).unwrap_or_default();
    if let Value::Object(fields) = &mut value {
        downcast(fields, version);
        if version >= 2 {
            fields.insert(VERSION.into(), Value::from(version));
        }
    }
    let mut attributes = event.attributes();
    if version >= 2 {
        attributes.push((VERSION, version.to_string()));
    }
    Encoded {
        data: value.to_string(),
        attributes,
    }
}

/// Reads an event written in any version up to `accept`. The version is the data's
/// `schema_version` field, else `version_attribute` (the message's [`VERSION`] attribute,
/// if it has one), else 1.
pub fn decode(
    data: &[u8],
    version_attribute: Option<&str>,
    accept: u32,
) -> Result<Event, Undecodable> {
    let poison = |reason: String| Undecodable::Poison(reason);
    let value: Value = serde_json::from_slice(data)
        .map_err(|e| poison(format!("message data is not JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(poison("message data is not a JSON object".into()));
    };
    let version = match (fields.remove(VERSION), version_attribute) {
        (Some(field), _) => field
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| poison(format!("{VERSION} {field} is not a version number")))?,
        (None, Some(attribute)) => attribute.parse::<u32>().map_err(|_| {
            poison(format!(
                "{VERSION} attribute {attribute:?} is not a version number"
            ))
        })?,
        (None, None) => 1,
    };
    if version < OLDEST {
        return Err(poison(format!("{VERSION} {version} was never written")));
    }
    if version > accept.min(CURRENT) {
        return Err(Undecodable::Newer {
            version,
            accept: accept.min(CURRENT),
        });
    }
    upcast(&mut fields, version);
    serde_json::from_value(Value::Object(fields)).map_err(|e| {
        poison(format!(
            "message data is not a saga event of version {version}: {e}"
        ))
    })
}

/// One step between two consecutive versions: `up` takes an event's fields from the older
/// to the newer shape, `down` back.
struct Step {
    up: fn(&mut Map<String, Value>),
    down: fn(&mut Map<String, Value>),
}

/// `STEPS[i]` is the step from version `OLDEST + i` to `OLDEST + i + 1`.
const STEPS: [Step; (CURRENT - OLDEST) as usize] = [Step {
    up: v1_to_v2,
    down: v2_to_v1,
}];

/// Brings an event's fields written in `from` up to [`CURRENT`], one version at a time.
fn upcast(fields: &mut Map<String, Value>, from: u32) {
    for step in &STEPS[(from - OLDEST) as usize..] {
        (step.up)(fields);
    }
}

/// Takes an event's fields in the current shape down to `to`, one version at a time, for a
/// reader of that version.
fn downcast(fields: &mut Map<String, Value>, to: u32) {
    for step in STEPS[(to - OLDEST) as usize..].iter().rev() {
        (step.down)(fields);
    }
}

fn is_type(fields: &Map<String, Value>, kind: &str) -> bool {
    fields.get("type").and_then(Value::as_str) == Some(kind)
}

/// 1 → 2: `unit_price` left `inventory-reserved` (a tolerant reader would ignore it anyway;
/// removed so the shape is exactly version 2's).
fn v1_to_v2(fields: &mut Map<String, Value>) {
    if is_type(fields, "inventory-reserved") {
        fields.remove("unit_price");
    }
}

/// 2 → 1: a version 1 reader requires `unit_price`. The amount is the price times the
/// quantity, so the price is their quotient, exactly.
fn v2_to_v1(fields: &mut Map<String, Value>) {
    if is_type(fields, "inventory-reserved") {
        let amount = fields.get("amount").and_then(Value::as_i64).unwrap_or(0);
        let quantity = fields
            .get("order")
            .and_then(|o| o.get("quantity"))
            .and_then(Value::as_i64)
            .filter(|q| *q > 0)
            .unwrap_or(1);
        fields.insert("unit_price".into(), Value::from(amount / quantity));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventBody, OrderDetails};
    use serde_json::json;
    use uuid::Uuid;

    fn reserved() -> Event {
        Event::new(
            Uuid::new_v4(),
            EventBody::InventoryReserved {
                order: OrderDetails {
                    item: "widget".into(),
                    quantity: 5,
                    user: "jack".into(),
                    payment_error: false,
                },
                amount: 50,
            },
        )
    }

    fn version_attribute(encoded: &Encoded) -> Option<&str> {
        encoded
            .attributes
            .iter()
            .find(|(k, _)| *k == VERSION)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn given_the_current_version_then_the_version_is_in_the_data_and_the_attributes() {
        let encoded = encode(&reserved(), CURRENT);
        let data: Value = serde_json::from_str(&encoded.data).unwrap();
        assert_eq!(data[VERSION], 2);
        assert!(data.get("unit_price").is_none());
        assert_eq!(version_attribute(&encoded), Some("2"));
    }

    #[test]
    fn given_version_1_then_the_format_before_versions() {
        let encoded = encode(&reserved(), 1);
        let data: Value = serde_json::from_str(&encoded.data).unwrap();
        assert!(data.get(VERSION).is_none());
        assert!(version_attribute(&encoded).is_none());
        assert_eq!(data["unit_price"], 10, "amount 50 for 5");
    }

    #[test]
    fn every_known_version_decodes_to_the_same_event() {
        let event = reserved();
        for version in OLDEST..=CURRENT {
            let encoded = encode(&event, version);
            let decoded = decode(
                encoded.data.as_bytes(),
                version_attribute(&encoded),
                CURRENT,
            );
            assert_eq!(decoded, Ok(event.clone()), "version {version}");
        }
    }

    #[test]
    fn given_no_version_then_version_1() {
        let encoded = encode(&reserved(), 1);
        let event = decode(encoded.data.as_bytes(), None, 1);
        assert_eq!(event.map(|e| e.body), Ok(reserved().body));
    }

    #[test]
    fn given_a_newer_version_then_retry_not_poison() {
        let encoded = encode(&reserved(), CURRENT);
        assert_eq!(
            decode(encoded.data.as_bytes(), version_attribute(&encoded), 1),
            Err(Undecodable::Newer {
                version: 2,
                accept: 1
            })
        );
        // A version from the future, with fields nobody knows yet.
        let mut data: Value = serde_json::from_str(&encoded.data).unwrap();
        data[VERSION] = json!(7);
        data["loyalty_points"] = json!(3);
        let err = decode(data.to_string().as_bytes(), None, CURRENT).unwrap_err();
        assert_eq!(
            err,
            Undecodable::Newer {
                version: 7,
                accept: CURRENT
            }
        );
    }

    #[test]
    fn given_unknown_fields_in_a_known_version_then_they_are_ignored() {
        let mut data: Value = serde_json::from_str(&encode(&reserved(), CURRENT).data).unwrap();
        data["loyalty_points"] = json!(3);
        data["order"]["gift_wrap"] = json!(true);
        assert!(decode(data.to_string().as_bytes(), None, CURRENT).is_ok());
    }

    #[test]
    fn given_garbage_or_an_unknown_type_of_a_known_version_then_poison() {
        let poison = |data: &str| {
            matches!(
                decode(data.as_bytes(), None, CURRENT),
                Err(Undecodable::Poison(_))
            )
        };
        assert!(poison("not json"));
        assert!(poison("[1,2]"));
        assert!(poison(r#"{"schema_version":"two","type":"order-created"}"#));
        assert!(poison(r#"{"schema_version":0,"type":"order-created"}"#));
        let mut data: Value = serde_json::from_str(&encode(&reserved(), CURRENT).data).unwrap();
        data["type"] = json!("order-teleported");
        assert!(poison(&data.to_string()));
        data[VERSION] = json!(1);
        assert!(poison(&data.to_string()));
    }

    #[test]
    fn the_field_wins_over_the_attribute() {
        let encoded = encode(&reserved(), CURRENT);
        let attribute = Some("9");
        assert!(decode(encoded.data.as_bytes(), attribute, CURRENT).is_ok());
        // Without the field, the attribute says.
        let mut data: Value = serde_json::from_str(&encoded.data).unwrap();
        data.as_object_mut().unwrap().remove(VERSION);
        assert!(matches!(
            decode(data.to_string().as_bytes(), attribute, CURRENT),
            Err(Undecodable::Newer { version: 9, .. })
        ));
    }
}
