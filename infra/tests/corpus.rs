//! The compatibility corpus: every event shape the saga has published, by schema version, as
//! the message Pub/Sub carried (`infra/tests/corpus/v<N>/<shape>.json`: its data and the
//! attributes that matter to decoding). A build must read all of them; a change that cannot
//! read a recorded shape fails here (docs/evolving.md).
//!
//! Version 1 is the format before versions, written from the previous release's types.
//! This release's shapes are written from the current types by
//! [`this_releases_shapes_are_recorded`] when missing, and compared when present: a change to
//! what the current types write needs a new schema version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use saga_contracts::events::wire::{self, Undecodable};
use saga_contracts::events::{Event, EventBody, FailureReason, OrderDetails};
use serde_json::{Value, json};
use uuid::Uuid;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Every shape the current types can publish, named as in the corpus.
fn shapes() -> Vec<(String, Event)> {
    let order_id = Uuid::parse_str("6f2c1a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b").unwrap();
    let at: Timestamp = "2026-11-29T12:00:00Z".parse().unwrap();
    let order = |payment_error| OrderDetails {
        item: "widget".into(),
        quantity: 5,
        user: "jack".into(),
        payment_error,
    };
    let mut shapes = vec![
        (
            "order-requested",
            EventBody::OrderRequested {
                order: order(false),
            },
        ),
        (
            "order-requested-with-payment-error",
            EventBody::OrderRequested { order: order(true) },
        ),
        (
            "order-created",
            EventBody::OrderCreated {
                order: order(false),
            },
        ),
        (
            "inventory-reserved",
            EventBody::InventoryReserved {
                order: order(false),
                amount: 50,
            },
        ),
        (
            "payment-created",
            EventBody::PaymentCreated {
                order: order(false),
                amount: 50,
            },
        ),
    ]
    .into_iter()
    .map(|(name, body)| (name.to_owned(), body))
    .collect::<Vec<_>>();
    for (step, reason) in [
        ("order", FailureReason::UnknownUser),
        ("inventory", FailureReason::UnknownItem),
        ("inventory", FailureReason::InsufficientStock),
        ("inventory", FailureReason::InsufficientFunds),
        ("payments", FailureReason::UnknownUser),
        ("payments", FailureReason::InsufficientFunds),
        ("payments", FailureReason::PaymentError),
        ("timeout", FailureReason::Timeout),
    ] {
        shapes.push((
            format!("saga-failed-{step}-{reason}"),
            EventBody::SagaFailed {
                order: order(false),
                reason,
                step: step.into(),
            },
        ));
    }
    shapes
        .into_iter()
        .map(|(name, body)| {
            let event = Event {
                event_id: Event::id_for(order_id, &body),
                order_id,
                occurred_at: at,
                body,
            };
            (name, event)
        })
        .collect()
}

/// A recorded message: its data (JSON) and attributes.
fn message(data: &Value, attributes: &HashMap<String, String>) -> Value {
    json!({"attributes": attributes, "data": data})
}

fn recorded(path: &Path) -> (Value, HashMap<String, String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    let attributes = serde_json::from_value(file["attributes"].clone()).unwrap();
    (file["data"].clone(), attributes)
}

fn versions() -> Vec<(u32, PathBuf)> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(corpus())
        .unwrap()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let version = path
                .file_name()?
                .to_str()?
                .strip_prefix('v')?
                .parse()
                .ok()?;
            Some((version, path))
        })
        .collect();
    versions.sort();
    versions
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn this_releases_shapes_are_recorded() {
    let dir = corpus().join(format!("v{}", wire::CURRENT));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, event) in shapes() {
        let encoded = wire::encode(&event, wire::CURRENT);
        let data: Value = serde_json::from_str(&encoded.data).unwrap();
        let attributes: HashMap<String, String> = encoded
            .attributes
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let path = dir.join(format!("{name}.json"));
        if !path.exists() {
            let text = serde_json::to_string_pretty(&message(&data, &attributes)).unwrap();
            std::fs::write(&path, text + "\n").unwrap();
            eprintln!("recorded {}", path.display());
            continue;
        }
        let (was, was_attributes) = recorded(&path);
        assert_eq!(
            (&data, &attributes),
            (&was, &was_attributes),
            "{name}: the current types write another shape than version {} recorded: a change \
             to an event needs a new schema version (docs/evolving.md)",
            wire::CURRENT
        );
    }
}

#[test]
fn every_recorded_shape_of_every_version_decodes() {
    let versions = versions();
    assert_eq!(
        versions.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        (wire::OLDEST..=wire::CURRENT).collect::<Vec<_>>(),
        "a corpus for each version this build reads"
    );
    let expected: HashMap<String, Event> = shapes().into_iter().collect();
    for (version, dir) in versions {
        let files = files(&dir);
        assert!(!files.is_empty(), "v{version} has shapes");
        for path in files {
            let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
            let (data, attributes) = recorded(&path);
            let version_attribute = attributes.get(wire::VERSION).map(String::as_str);
            let event = wire::decode(
                data.to_string().as_bytes(),
                version_attribute,
                wire::CURRENT,
            )
            .unwrap_or_else(|e| panic!("v{version}/{name} no longer decodes: {e}"));
            if let Some(expected) = expected.get(&name) {
                assert_eq!(&event, expected, "v{version}/{name} reads as what it said");
            }
            // Written back in its version, it is what a reader of that version got.
            let again: Value = serde_json::from_str(&wire::encode(&event, version).data).unwrap();
            assert_eq!(
                again, data,
                "v{version}/{name} written again in its version"
            );
        }
    }
}

#[test]
fn a_reader_of_an_older_version_is_asked_to_retry_newer_shapes() {
    for (version, dir) in versions() {
        for path in files(&dir) {
            let (data, attributes) = recorded(&path);
            let version_attribute = attributes.get(wire::VERSION).map(String::as_str);
            for accept in wire::OLDEST..version {
                assert!(matches!(
                    wire::decode(data.to_string().as_bytes(), version_attribute, accept),
                    Err(Undecodable::Newer { .. })
                ));
            }
        }
    }
}
