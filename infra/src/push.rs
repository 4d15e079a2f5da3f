//! The Pub/Sub push envelope: what Pub/Sub POSTs to a push endpoint, and its decoding into an
//! [`Event`]. Decoding never panics: anything that is not a valid envelope carrying a valid
//! event is a [`Poison`] reason, and the runtime parks it; an event of a schema version newer
//! than this revision reads is [`NotDecoded::Newer`], and the runtime asks for it again
//! ([`crate::events::wire`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::events::Event;
use crate::events::wire::{self, Undecodable};

/// The JSON body of a push delivery.
#[derive(Debug, Deserialize)]
pub struct PushEnvelope {
    #[serde(default)]
    pub subscription: String,
    pub message: PushedMessage,
}

/// A pushed message. Pub/Sub sends some fields in two spellings (`messageId` and
/// `message_id`, `publishTime` and `publish_time`); either, or both, are accepted.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawMessage")]
pub struct PushedMessage {
    /// Base64 of the message data.
    pub data: String,
    pub attributes: HashMap<String, String>,
    pub message_id: String,
    pub publish_time: Option<String>,
    /// Sent by Google Cloud when the subscription has a dead-letter policy; not by the emulator.
    pub delivery_attempt: Option<i32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMessage {
    #[serde(default)]
    data: String,
    #[serde(default)]
    attributes: HashMap<String, String>,
    message_id: Option<String>,
    #[serde(rename = "message_id")]
    message_id_snake: Option<String>,
    publish_time: Option<String>,
    #[serde(rename = "publish_time")]
    publish_time_snake: Option<String>,
    delivery_attempt: Option<i32>,
}

impl TryFrom<RawMessage> for PushedMessage {
    type Error = &'static str;

    fn try_from(raw: RawMessage) -> Result<Self, Self::Error> {
        Ok(PushedMessage {
            data: raw.data,
            attributes: raw.attributes,
            message_id: raw
                .message_id
                .or(raw.message_id_snake)
                .ok_or("message has no messageId")?,
            publish_time: raw.publish_time.or(raw.publish_time_snake),
            delivery_attempt: raw.delivery_attempt,
        })
    }
}

/// Why a delivery can never succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    pub reason: String,
    /// The message id, when the envelope was readable enough to have one.
    pub message_id: Option<String>,
}

/// A decoded delivery.
#[derive(Debug)]
pub struct Delivery {
    pub envelope: PushEnvelope,
    pub event: Event,
}

/// When a push arrived, and how long Pub/Sub held its message before pushing it: the two
/// parts of a hop, logged with each step's answer ("step done": `delivery_ms`,
/// `committed_ms`, `handled_ms`) so a slow hop shows whether the wait was Pub/Sub's or the
/// function's.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    at: Instant,
    waited: Option<Duration>,
}

/// The moment a push reached the handler, on both clocks: taken first, before anything is
/// decoded.
#[derive(Clone, Copy, Debug)]
pub struct Arrived {
    at: Instant,
    wall: jiff::Timestamp,
}

impl Arrived {
    pub fn now() -> Arrived {
        Arrived {
            at: Instant::now(),
            wall: jiff::Timestamp::now(),
        }
    }

    /// With the message it brought, once decoded.
    pub fn of(self, message: &PushedMessage) -> Arrival {
        Arrival {
            at: self.at,
            waited: waited(message, self.wall),
        }
    }
}

impl Arrival {
    /// Publish until push, in milliseconds: Pub/Sub's part of the hop (`publishTime` is
    /// stamped by Pub/Sub on publish, in milliseconds on the emulator).
    pub fn delivery_ms(&self) -> Option<f64> {
        self.waited.map(ms)
    }

    /// Push until now, in milliseconds: this function's part so far.
    pub fn handled_ms(&self) -> f64 {
        self.ms_until(Instant::now())
    }

    /// Push until `then`, in milliseconds.
    pub fn ms_until(&self, then: Instant) -> f64 {
        ms(then.saturating_duration_since(self.at))
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// `now` less the message's publish time; none without a readable one, or if the clocks
/// disagree about which came first.
fn waited(message: &PushedMessage, now: jiff::Timestamp) -> Option<Duration> {
    let published: jiff::Timestamp = message.publish_time.as_deref()?.parse().ok()?;
    Duration::try_from(now.duration_since(published)).ok()
}

/// Why a delivery was not decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotDecoded {
    /// It can never be: park it.
    Poison(Poison),
    /// Its event is in a schema version newer than `accept`, the newest this revision reads:
    /// a newer revision will read it, so it must come again, not be parked.
    Newer {
        message_id: String,
        version: u32,
        accept: u32,
    },
}

/// Decodes a push body into its envelope and event, reading event versions up to `accept`.
pub fn decode(body: &[u8], accept: u32) -> Result<Delivery, NotDecoded> {
    let envelope: PushEnvelope = serde_json::from_slice(body).map_err(|e| {
        NotDecoded::Poison(Poison {
            reason: format!("not a Pub/Sub push envelope: {e}"),
            message_id: None,
        })
    })?;
    let message_id = envelope.message.message_id.clone();
    let poison = |reason: String| {
        NotDecoded::Poison(Poison {
            reason,
            message_id: Some(message_id.clone()),
        })
    };
    let data = STANDARD
        .decode(envelope.message.data.as_bytes())
        .map_err(|e| poison(format!("message data is not base64: {e}")))?;
    let version = envelope.message.attributes.get(wire::VERSION);
    let event = match wire::decode(&data, version.map(String::as_str), accept) {
        Ok(event) => event,
        Err(Undecodable::Poison(reason)) => return Err(poison(reason)),
        Err(Undecodable::Newer { version, accept }) => {
            return Err(NotDecoded::Newer {
                message_id,
                version,
                accept,
            });
        }
    };
    Ok(Delivery { envelope, event })
}

/// Builds a push body the way Pub/Sub does, for tests and tools: the event in the current
/// version.
pub fn encode(subscription: &str, message_id: &str, event: &Event) -> serde_json::Value {
    encode_in(subscription, message_id, event, wire::CURRENT)
}

/// [`encode`], with the event written in `version`.
pub fn encode_in(
    subscription: &str,
    message_id: &str,
    event: &Event,
    version: u32,
) -> serde_json::Value {
    let encoded = wire::encode(event, version);
    let attributes: HashMap<_, _> = encoded.attributes.into_iter().collect();
    serde_json::json!({
        "subscription": subscription,
        "message": {
            "data": STANDARD.encode(encoded.data),
            "attributes": attributes,
            "messageId": message_id,
            "publishTime": event.occurred_at.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventBody, OrderDetails};
    use uuid::Uuid;

    fn event() -> Event {
        Event::new(
            Uuid::new_v4(),
            EventBody::OrderCreated {
                order: OrderDetails {
                    item: "widget".into(),
                    quantity: 1,
                    user: "jack".into(),
                    payment_error: false,
                },
            },
        )
    }

    #[test]
    fn a_well_formed_push_decodes_to_its_event() {
        let e = event();
        let body = encode("projects/p/subscriptions/s", "42", &e).to_string();
        let d = decode(body.as_bytes(), wire::CURRENT).unwrap();
        assert_eq!(d.event, e);
        assert_eq!(d.envelope.message.message_id, "42");
        assert_eq!(d.envelope.message.attributes["type"], "order-created");
    }

    #[test]
    fn an_arrival_knows_how_long_pub_sub_held_its_message() {
        let message = |publish_time: Option<&str>| PushedMessage {
            data: String::new(),
            attributes: HashMap::new(),
            message_id: "1".into(),
            publish_time: publish_time.map(str::to_owned),
            delivery_attempt: None,
        };
        let now: jiff::Timestamp = "2026-11-29T23:50:23.560Z".parse().unwrap();
        // Given a message published 42 ms before it arrives (the emulator's milliseconds),
        let at = |wall| Arrived {
            at: Instant::now(),
            wall,
        };
        let arrival = at(now).of(&message(Some("2026-11-29T23:50:23.518Z")));
        // then its delivery took 42 ms, and its handling has only begun.
        assert_eq!(arrival.delivery_ms(), Some(42.0));
        assert!(arrival.handled_ms() < 1_000.0);
        // Without a publish time, or one after the arrival (clocks apart), there is none.
        assert_eq!(at(now).of(&message(None)).delivery_ms(), None);
        assert_eq!(
            at(now)
                .of(&message(Some("2026-11-29T23:50:24Z")))
                .delivery_ms(),
            None
        );
        assert_eq!(at(now).of(&message(Some("yesterday"))).delivery_ms(), None);
    }

    #[test]
    fn the_emulator_body_without_delivery_attempt_decodes() {
        let data = STANDARD.encode(serde_json::to_vec(&event()).unwrap());
        let body = format!(
            r#"{{"subscription":"s","message":{{"data":"{data}","messageId":"7","publishTime":"2026-01-01T00:00:00Z"}}}}"#
        );
        let d = decode(body.as_bytes(), wire::CURRENT).unwrap();
        assert_eq!(d.envelope.message.delivery_attempt, None);
    }

    #[test]
    fn both_spellings_of_a_field_may_come_together() {
        let data = STANDARD.encode(serde_json::to_vec(&event()).unwrap());
        let body = format!(
            r#"{{"message":{{"data":"{data}","messageId":"7","message_id":"7",
            "publishTime":"2026-01-01T00:00:00Z","publish_time":"2026-01-01T00:00:00Z"}},
            "subscription":"s"}}"#
        );
        let d = decode(body.as_bytes(), wire::CURRENT).unwrap();
        assert_eq!(d.envelope.message.message_id, "7");
        let body = format!(r#"{{"message":{{"data":"{data}","message_id":"8"}}}}"#);
        assert_eq!(
            decode(body.as_bytes(), wire::CURRENT)
                .unwrap()
                .envelope
                .message
                .message_id,
            "8"
        );
    }

    #[test]
    fn garbage_is_poison_with_a_reason() {
        let poison = |body: &[u8]| match decode(body, wire::CURRENT) {
            Err(NotDecoded::Poison(p)) => p,
            other => panic!("not poison: {other:?}"),
        };
        let p = poison(b"not json");
        assert!(p.reason.contains("not a Pub/Sub push envelope"), "{p:?}");
        assert_eq!(p.message_id, None);

        let p = poison(br#"{"message":{"data":"!!!","messageId":"9"}}"#);
        assert!(p.reason.contains("base64"), "{p:?}");
        assert_eq!(p.message_id.as_deref(), Some("9"));

        let data = STANDARD.encode(br#"{"type":"order-teleported"}"#);
        let body = format!(r#"{{"message":{{"data":"{data}","messageId":"10"}}}}"#);
        let p = poison(body.as_bytes());
        assert!(p.reason.contains("not a saga event"), "{p:?}");
    }

    #[test]
    fn an_event_newer_than_this_revision_reads_is_not_poison() {
        let body = encode("s", "11", &event()).to_string();
        assert_eq!(
            decode(body.as_bytes(), 1).unwrap_err(),
            NotDecoded::Newer {
                message_id: "11".into(),
                version: wire::CURRENT,
                accept: 1
            }
        );
        let e = event();
        let old = encode_in("s", "12", &e, 1).to_string();
        assert_eq!(decode(old.as_bytes(), 1).unwrap().event, e);
    }
}
