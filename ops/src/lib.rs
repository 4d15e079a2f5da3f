//! Operating a running saga: where an order is and why (`saga trace`), re-feeding history
//! (`saga replay`), and dead letters (`saga dlq list | redrive`). Each works against the
//! emulators or, with `--cloud`, a deployed project.

pub mod check;
pub mod console;
pub mod pubsub_rest;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use indicatif::{ProgressBar, ProgressStyle};
use jiff::Timestamp;
use saga_contracts::docs::{ParkedMessage, collections};
use saga_contracts::topology::{PULL_SUBSCRIPTIONS, PUSH_SUBSCRIPTIONS};
use saga_infra::config::Endpoint;
use saga_infra::push::PushEnvelope;
use saga_infra::store::{Store, StoreError};
use saga_infra::timeline::{self, EntryKind};

use crate::pubsub_rest::{PubsubRest, Received, RestError};

/// Which project, and where its Firestore and Pub/Sub are.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Project id.
    #[arg(long, default_value = "saga-local")]
    pub project: String,
    /// `host:port` of the Firestore emulator.
    #[arg(
        long,
        env = "FIRESTORE_EMULATOR_HOST",
        default_value = "127.0.0.1:8086"
    )]
    pub firestore: String,
    /// `host:port` of the Pub/Sub emulator.
    #[arg(long, env = "PUBSUB_EMULATOR_HOST", default_value = "127.0.0.1:8085")]
    pub pubsub: String,
    /// Use the project on Google Cloud (Application Default Credentials) instead of the
    /// emulators.
    #[arg(long)]
    pub cloud: bool,
}

impl Target {
    pub async fn store(&self) -> Result<Store, OpsError> {
        let endpoint = if self.cloud {
            Endpoint::Cloud
        } else {
            Endpoint::Emulator(self.firestore.clone())
        };
        Ok(Store::connect(&self.project, &endpoint).await?)
    }

    pub fn pubsub(&self) -> Result<PubsubRest, OpsError> {
        if self.cloud {
            Ok(PubsubRest::cloud(&self.project)?)
        } else {
            Ok(PubsubRest::emulator(&self.pubsub, &self.project))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pubsub(#[from] RestError),
    #[error("no order {0}")]
    NoOrder(String),
    #[error("{0}")]
    Usage(String),
}

/// The timeline of one order, as text: time, time since the previous line, step, what
/// happened, and the outcome.
pub async fn trace(store: &Store, order_id: &str) -> Result<String, OpsError> {
    let Some(order) = store.order(order_id).await? else {
        return Err(OpsError::NoOrder(order_id.to_owned()));
    };
    let status = format!(
        "{}{}",
        order.status(),
        order
            .reason()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    let entries = timeline::history(&order);
    let mut out = String::new();
    let trace_id = entries
        .iter()
        .find_map(|e| e.trace_id.clone())
        .unwrap_or_default();
    let _ = writeln!(out, "order {order_id}: {status}    trace {trace_id}");
    let _ = writeln!(
        out,
        "{:<27} {:>8}  {:<10} {:<9} {:<19} OUTCOME",
        "TIME", "+MS", "STEP", "KIND", "EVENT"
    );
    let mut previous: Option<Timestamp> = None;
    for e in &entries {
        let delta = previous.map_or(0, |p| e.at.duration_since(p).as_millis());
        previous = Some(e.at);
        let kind = match e.kind {
            EntryKind::Consumed => "consumed",
            EntryKind::Emitted => "emitted",
            EntryKind::Duplicate => "duplicate",
        };
        let _ = writeln!(
            out,
            "{:<27} {:>8}  {:<10} {:<9} {:<19} {}",
            e.at.to_string(),
            delta,
            e.step,
            kind,
            e.event_type,
            e.outcome
        );
    }
    if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
        let _ = writeln!(
            out,
            "total {} ms",
            last.at.duration_since(first.at).as_millis()
        );
    }
    Ok(out)
}

/// What to replay.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub target: Target,
    /// The topic whose recorded events to replay.
    #[arg(long)]
    pub topic: String,
    /// Replay events emitted at or after this time (RFC 3339, e.g. 2026-11-21T10:00:00Z).
    #[arg(long)]
    pub since: Timestamp,
    /// ... and at or before this time (default: now).
    #[arg(long)]
    pub until: Option<Timestamp>,
    /// Only this order's events.
    #[arg(long)]
    pub order: Option<String>,
    /// Publish to this topic instead (a new consumer's own topic).
    #[arg(long)]
    pub to_topic: Option<String>,
    /// List what would be replayed, publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub matched: usize,
    pub published: usize,
}

fn bar(len: usize, what: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})")
        .map(|s| s.progress_chars("=> "))
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}

/// Republishes recorded events, marked `replay=true`; consumers' idempotency makes a replay
/// harmless to those that already processed them.
pub async fn replay(
    store: &Store,
    pubsub: &PubsubRest,
    args: &ReplayArgs,
    progress: bool,
) -> Result<Replayed, OpsError> {
    let until = args.until.unwrap_or_else(Timestamp::now);
    let mut entries = timeline::emitted_between(store, args.since, until).await?;
    entries.retain(|e| {
        e.topic.as_deref() == Some(args.topic.as_str())
            && args.order.as_ref().is_none_or(|o| &e.order_id == o)
    });
    let mut report = Replayed {
        matched: entries.len(),
        published: 0,
    };
    if args.dry_run {
        for e in &entries {
            println!("{} {} {} {}", e.at, e.order_id, e.event_type, e.event_id);
        }
        return Ok(report);
    }
    let topic = args.to_topic.as_deref().unwrap_or(&args.topic);
    let bar = bar(entries.len(), "replaying", progress);
    for e in &entries {
        let mut attributes = e.attributes.clone();
        attributes.insert("replay".into(), "true".into());
        let payload = e.payload.as_deref().unwrap_or_default();
        pubsub
            .publish(topic, payload.as_bytes(), &attributes)
            .await?;
        report.published += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(report)
}

/// A message an operator should look at (the console's JSON as it is).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// `parked`, or the dead-letter pull subscription it sits in.
    pub place: String,
    /// The parked document id, or the Pub/Sub message id.
    pub id: String,
    /// The subscription it failed on.
    pub source: String,
    pub reason: String,
    pub event_type: String,
    pub order_id: String,
}

fn dead_letter_subscriptions() -> impl Iterator<Item = &'static str> {
    PULL_SUBSCRIPTIONS
        .iter()
        .filter(|p| {
            PUSH_SUBSCRIPTIONS
                .iter()
                .any(|s| s.dead_letter_topic == p.topic)
        })
        .map(|p| p.name)
}

fn describe(data: &[u8]) -> (String, String) {
    let value: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
    (
        value["type"].as_str().unwrap_or("?").to_owned(),
        value["order_id"].as_str().unwrap_or("?").to_owned(),
    )
}

/// Most dead letters a listing peeks at in one subscription.
pub const LIST_LIMIT: usize = 10_000;

/// Parked messages (from Firestore) and dead letters (peeked from every dead-letter pull
/// subscription, and left there).
pub async fn dlq_list(store: &Store, pubsub: &PubsubRest) -> Result<Vec<DeadLetter>, OpsError> {
    let mut all = Vec::new();
    for (id, parked) in store.all::<ParkedMessage>(collections::PARKED).await? {
        let data = parked_data(&parked).unwrap_or_default();
        let (event_type, order_id) = describe(&data);
        all.push(DeadLetter {
            place: "parked".into(),
            id,
            source: parked.subscription,
            reason: parked.reason,
            event_type,
            order_id,
        });
    }
    // Each subscription's letters are held until every one is seen (released at once, each
    // would be pulled again); the subscriptions are peeked at the same time.
    let peeks = dead_letter_subscriptions().map(|subscription| async move {
        let mut held = Vec::new();
        let mut batches = pubsub.batches(subscription, LIST_LIMIT);
        while let Some(batch) = batches.next().await? {
            held.extend(batch);
        }
        Ok::<_, RestError>((subscription, held))
    });
    for peeked in futures::future::join_all(peeks).await {
        let (subscription, held) = peeked?;
        for m in &held {
            let (event_type, order_id) = describe(&m.data);
            let attempts = m
                .attributes
                .get(DEAD_LETTER_ATTEMPTS)
                .cloned()
                .unwrap_or_else(|| "?".into());
            all.push(DeadLetter {
                place: subscription.into(),
                id: m.message_id.clone(),
                source: source_subscription(&m.attributes).unwrap_or_else(|| "?".into()),
                reason: format!("dead-lettered after {attempts} delivery attempts"),
                event_type,
                order_id,
            });
        }
        release(pubsub, subscription, &held).await;
    }
    Ok(all)
}

/// The attributes Pub/Sub adds to a dead letter ("Dead-letter topics": the source
/// subscription's short name, and how often it was delivered there).
const DEAD_LETTER_SOURCE: &str = "CloudPubSubDeadLetterSourceSubscription";
const DEAD_LETTER_ATTEMPTS: &str = "CloudPubSubDeadLetterSourceDeliveryCount";

/// The subscription a dead letter came from, as Pub/Sub recorded it; never guessed (a guess
/// sends one step's letters to another's topic).
fn source_subscription(attributes: &BTreeMap<String, String>) -> Option<String> {
    attributes
        .get(DEAD_LETTER_SOURCE)
        .map(|path| path.rsplit('/').next().unwrap_or(path).to_owned())
}

/// Hands held messages back to their subscription. A message whose lease already ran out is
/// back anyway, so a failure here loses nothing; it is only reported.
async fn release(pubsub: &PubsubRest, subscription: &str, held: &[Received]) {
    let ack_ids: Vec<String> = held.iter().map(|m| m.ack_id.clone()).collect();
    if let Err(error) = pubsub.nack(subscription, &ack_ids).await {
        tracing::warn!(%error, subscription, "held dead letters not released; they return when their lease ends");
    }
}

/// A dead letter's attributes as redriven: Pub/Sub's dead-letter ones dropped, marked.
fn redriven_attributes(attributes: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    attributes
        .iter()
        .filter(|(k, _)| !k.starts_with("CloudPubSubDeadLetter"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain([("redriven".to_owned(), "true".to_owned())])
        .collect()
}

fn topic_of(subscription: &str) -> Option<&'static str> {
    PUSH_SUBSCRIPTIONS
        .iter()
        .find(|s| s.name == subscription)
        .map(|s| s.topic)
}

fn parked_data(parked: &ParkedMessage) -> Option<Vec<u8>> {
    let envelope: PushEnvelope = serde_json::from_str(&parked.body).ok()?;
    STANDARD.decode(envelope.message.data).ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Id(String),
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Redriven {
    pub republished: usize,
    /// Parked messages whose original data could not be recovered.
    pub unrecoverable: usize,
    /// Dead letters without the source subscription Pub/Sub records: left where they are,
    /// by message id.
    pub left_in_place: Vec<String>,
}

/// Republishes dead letters of `place` (`parked`, or a dead-letter pull subscription) to
/// the topic of the subscription they came from, marked `redriven=true`, and removes them
/// from where they were. Run it once the cause is fixed.
///
/// A dead-letter subscription is worked through in batches: pull, publish each batch to its
/// topics, acknowledge what was published, well within the ack deadline. A letter without
/// its source subscription is not guessed at: it is left in place and reported.
pub async fn dlq_redrive(
    store: &Store,
    pubsub: &PubsubRest,
    place: &str,
    selection: &Selection,
    progress: bool,
) -> Result<Redriven, OpsError> {
    let wanted = |id: &str| match selection {
        Selection::All => true,
        Selection::Id(want) => want == id,
    };
    let mut report = Redriven::default();
    if place == "parked" {
        let parked: Vec<_> = store
            .all::<ParkedMessage>(collections::PARKED)
            .await?
            .into_iter()
            .filter(|(id, _)| wanted(id))
            .collect();
        let bar = bar(parked.len(), "redriving", progress);
        for (id, message) in parked {
            bar.inc(1);
            let (Some(data), Some(topic)) =
                (parked_data(&message), topic_of(&message.subscription))
            else {
                report.unrecoverable += 1;
                continue;
            };
            let attributes = BTreeMap::from([("redriven".to_owned(), "true".to_owned())]);
            pubsub.publish(topic, &data, &attributes).await?;
            store.delete(collections::PARKED, &id).await?;
            report.republished += 1;
        }
        bar.finish_and_clear();
        return Ok(report);
    }
    if !dead_letter_subscriptions().any(|s| s == place) {
        let known: Vec<_> = dead_letter_subscriptions().collect();
        return Err(OpsError::Usage(format!(
            "{place} is not a dead-letter subscription; one of parked, {}",
            known.join(", ")
        )));
    }
    let bar = bar(0, "redriving", progress);
    // Not redriven now: other letters (with --id) and letters without a source. Held until
    // the end, so that each is pulled once.
    let mut held: Vec<Received> = Vec::new();
    let mut batches = pubsub.batches(place, usize::MAX);
    while let Some(batch) = batches.next().await? {
        let (chosen, others): (Vec<_>, Vec<_>) =
            batch.into_iter().partition(|m| wanted(&m.message_id));
        held.extend(others);
        let mut by_topic: BTreeMap<&'static str, Vec<Received>> = BTreeMap::new();
        for m in chosen {
            match source_subscription(&m.attributes).and_then(|s| topic_of(&s)) {
                Some(topic) => by_topic.entry(topic).or_default().push(m),
                None => {
                    report.left_in_place.push(m.message_id.clone());
                    held.push(m);
                }
            }
        }
        for (topic, letters) in by_topic {
            let messages: Vec<(Vec<u8>, BTreeMap<String, String>)> = letters
                .iter()
                .map(|m| (m.data.clone(), redriven_attributes(&m.attributes)))
                .collect();
            pubsub.publish_all(topic, &messages).await?;
            let ack_ids: Vec<String> = letters.iter().map(|m| m.ack_id.clone()).collect();
            pubsub.ack(place, &ack_ids).await?;
            report.republished += letters.len();
            bar.inc(letters.len() as u64);
        }
    }
    release(pubsub, place, &held).await;
    bar.finish_and_clear();
    Ok(report)
}
