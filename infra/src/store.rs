//! Firestore: the connection, the documents the saga keeps, and a small transaction runner.
//!
//! Every read a decision depends on and every write it makes happen in one transaction: an
//! optimistic one, whose reads take no locks and whose writes commit together on the
//! condition that what they replace is still as it was read; a conflict retries it within
//! milliseconds (the emulator's pessimistic transactions wait seconds for a lock timeout).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use firestore::errors::FirestoreError;
use firestore::gcloud_sdk::google::firestore::v1::precondition::ConditionType;
use firestore::gcloud_sdk::google::firestore::v1::write::Operation as WriteOperation;
use firestore::gcloud_sdk::google::firestore::v1::{Document, Precondition, Write};
use firestore::gcloud_sdk::prost_types::Timestamp as ProstTimestamp;
use firestore::{
    FirestoreDb, FirestoreDbOptions, FirestoreTransactionOps, FirestoreWritePrecondition,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::Endpoint;
use crate::events::{FailureReason, OrderStatus};
use crate::meter::Meter;

/// Collection names.
pub mod collections {
    /// `requests/{order_id}`: what the frontend accepted (the order is PENDING until `orders/` has it).
    pub const REQUESTS: &str = "requests";
    /// `orders/{order_id}`: the saga's state.
    pub const ORDERS: &str = "orders";
    /// `inventory/{item}`: price and stock.
    pub const INVENTORY: &str = "inventory";
    /// `users/{user}`: balance.
    pub const USERS: &str = "users";
    /// `stock_shards/{item}--{index}`: a hot item's stock, split.
    pub const STOCK_SHARDS: &str = "stock_shards";
    /// `reservations/{order_id}`: stock held for an order.
    pub const RESERVATIONS: &str = "reservations";
    /// `payments/{order_id}`: money taken for an order.
    pub const PAYMENTS: &str = "payments";
    /// `steps/{order_id}--{step}`: the idempotency record of a step.
    pub const STEPS: &str = "steps";
    /// `outbox/{event_id}`: an event committed with its effect, published after commit.
    pub const OUTBOX: &str = "outbox";
    /// `idempotency_keys/{key}`: the frontend's `Idempotency-Key` records.
    pub const IDEMPOTENCY_KEYS: &str = "idempotency_keys";
    /// `parked/{id}`: deliveries that can never succeed, kept for an operator.
    pub const PARKED: &str = "parked";
    /// `timeline/{order_id}--...`: what each step consumed and emitted, kept for good.
    pub const TIMELINE: &str = "timeline";
}

/// How long idempotency and outbox records are kept (a Firestore TTL policy on `expire_at`).
pub const RECORD_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

pub fn expiry_from(now: Timestamp) -> Timestamp {
    now.checked_add(jiff::SignedDuration::try_from(RECORD_RETENTION).unwrap_or_default())
        .unwrap_or(now)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestDoc {
    pub order_id: String,
    pub item: String,
    pub quantity: i64,
    pub user: String,
    #[serde(default)]
    pub payment_error: bool,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderDoc {
    pub order_id: String,
    pub item: String,
    pub quantity: i64,
    pub user: String,
    pub status: OrderStatus,
    #[serde(default)]
    pub reason: Option<FailureReason>,
    /// What the user was charged, once payments has run.
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub created_at: Timestamp,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub updated_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemDoc {
    pub price: i64,
    /// The stock, unless the item is sharded: then the shards hold it and this is 0.
    pub stock: i64,
    /// A hot item's stock is split over this many `stock_shards` documents, so concurrent
    /// reservations do not all serialise on one document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
}

impl ItemDoc {
    pub fn new(price: i64, stock: i64) -> ItemDoc {
        ItemDoc {
            price,
            stock,
            shards: None,
        }
    }
}

/// `stock_shards/{item}--{index}`: part of a sharded item's stock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockShard {
    pub item: String,
    pub index: u32,
    pub stock: i64,
}

pub fn stock_shard_id(item: &str, index: u32) -> String {
    format!("{item}--{index}")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDoc {
    pub balance: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationStatus {
    Reserved,
    Released,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReservationDoc {
    pub order_id: String,
    pub item: String,
    pub quantity: i64,
    /// For a sharded item: how much was taken from which shard (what a release gives back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<Allocation>,
    pub status: ReservationStatus,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub updated_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub shard: u32,
    pub quantity: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    Captured,
    Refunded,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaymentDoc {
    pub order_id: String,
    pub user: String,
    pub amount: i64,
    pub status: PaymentStatus,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub updated_at: Timestamp,
}

/// A step's idempotency record: the step ran for this order, with this outcome, emitting this
/// event. Written in the same transaction as the step's effect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub order_id: String,
    pub step: String,
    pub incoming_event_id: String,
    pub outcome: String,
    #[serde(default)]
    pub emitted_event_id: Option<String>,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub processed_at: Timestamp,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub expire_at: Timestamp,
}

pub fn step_record_id(order_id: &str, step: &str) -> String {
    format!("{order_id}--{step}")
}

/// An event waiting to be (or already) published: written with the effect that caused it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub event_id: String,
    pub order_id: String,
    pub topic: String,
    /// The event's JSON, published as the message data.
    pub payload: String,
    pub attributes: BTreeMap<String, String>,
    pub published: bool,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub created_at: Timestamp,
    #[serde(default, with = "firestore::serialize_as_optional_timestamp")]
    pub published_at: Option<Timestamp>,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub expire_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub order_id: String,
    /// The canonical request the key was first used with.
    pub fingerprint: String,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub created_at: Timestamp,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub expire_at: Timestamp,
}

/// A delivery that can never succeed, acknowledged and kept here with the reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParkedMessage {
    pub function: String,
    pub subscription: String,
    #[serde(default)]
    pub message_id: Option<String>,
    pub reason: String,
    /// The raw push body (truncated), for inspection and redrive.
    pub body: String,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub parked_at: Timestamp,
}

/// A Firestore failure, with what we were doing when it happened.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct StoreError {
    pub context: String,
    #[source]
    pub source: FirestoreError,
}

impl StoreError {
    /// Whether trying again may succeed: conflicts (a transaction's write whose document
    /// changed since it was read; ABORTED), unavailability and network errors. A document that cannot be decoded, or a
    /// request Firestore refuses, fails the same way every time.
    pub fn is_transient(&self) -> bool {
        match &self.source {
            FirestoreError::DatabaseError(e) => e.retry_possible,
            FirestoreError::DataConflictError(_) | FirestoreError::NetworkError(_) => true,
            FirestoreError::ErrorInTransaction(_) => true,
            _ => false,
        }
    }
}

/// Adds context to Firestore results: `db.get(..).await.context("reading order")?`.
pub trait Context<T> {
    fn context(self, context: impl Into<String>) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, FirestoreError> {
    fn context(self, context: impl Into<String>) -> Result<T, StoreError> {
        self.map_err(|source| StoreError {
            context: context.into(),
            source,
        })
    }
}

/// A failure Firestore did not report itself (what the saga's own checks of its answers
/// found): `retry` says whether trying again may help.
fn failure(context: String, code: &str, message: String, retry: bool) -> StoreError {
    StoreError {
        context,
        source: FirestoreError::DatabaseError(firestore::errors::FirestoreDatabaseError::new(
            firestore::errors::FirestoreErrorPublicGenericDetails::new(code.into()),
            message,
            retry,
        )),
    }
}

/// The Firestore database of one project.
#[derive(Clone)]
pub struct Store {
    db: FirestoreDb,
    /// Counts every operation (see [`crate::meter`]).
    meter: Meter,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Connects to Firestore for `project_id`: the emulator at `endpoint` if it names one,
    /// Google Cloud with Application Default Credentials otherwise.
    pub async fn connect(project_id: &str, endpoint: &Endpoint) -> Result<Store, StoreError> {
        Store::connect_metered(project_id, endpoint, Meter::default()).await
    }

    /// [`Store::connect`], counting its operations on `meter`.
    pub async fn connect_metered(
        project_id: &str,
        endpoint: &Endpoint,
        meter: Meter,
    ) -> Result<Store, StoreError> {
        let options = FirestoreDbOptions::new(project_id.to_owned());
        let db = match endpoint {
            Endpoint::Emulator(host) => {
                FirestoreDb::with_options_auth(
                    options.with_firebase_api_url(format!("http://{host}")),
                    emulator_auth::owner(),
                )
                .await
            }
            Endpoint::Cloud => FirestoreDb::with_options(options).await,
        }
        .context(format!("connecting to Firestore for project {project_id}"))?;
        Ok(Store { db, meter })
    }

    pub fn db(&self) -> &FirestoreDb {
        &self.db
    }

    /// The counters every operation of this store adds to.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// The same database, its operations counted on `meter` instead.
    pub fn metered(&self, meter: Meter) -> Store {
        Store {
            db: self.db.clone(),
            meter,
        }
    }

    /// One document by id, `None` if there is none.
    ///
    /// This is a batch get of one id, not a plain get: to a batch get a missing document is
    /// an answer, to a plain get it is a NOT_FOUND error, which the Firestore emulator builds,
    /// logs with a stack trace, and pipes through gcloud (in a transaction, [`Tx::get`] reads
    /// the same way, for the same reason: see docs/benchmarks.md).
    pub async fn get<T>(&self, collection: &str, id: &str) -> Result<Option<T>, StoreError>
    where
        T: DeserializeOwned + Send,
    {
        let what = || format!("reading {collection}/{id}");
        self.meter.read(1);
        let mut found = self
            .db
            .fluent()
            .select()
            .by_id_in(collection)
            .obj::<T>()
            .batch_with_errors([id])
            .await
            .context(what())?;
        match found.next().await {
            Some(item) => Ok(item.context(what())?.1),
            None => Ok(None),
        }
    }

    /// Marks these outbox records published, in one batch write of two fields each (never a
    /// rewrite of the record), each on the condition that the record exists.
    pub async fn mark_published(
        &self,
        event_ids: &[String],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        #[derive(Serialize, Deserialize)]
        struct Published {
            published: bool,
            #[serde(with = "firestore::serialize_as_timestamp")]
            published_at: Timestamp,
        }
        let what = || match event_ids {
            [one] => format!("marking {}/{one} published", collections::OUTBOX),
            many => format!(
                "marking {} {} records published",
                many.len(),
                collections::OUTBOX
            ),
        };
        let writer = self.db.create_simple_batch_writer().await.context(what())?;
        let mut batch = writer.new_batch();
        let published = Published {
            published: true,
            published_at: at,
        };
        for id in event_ids {
            batch
                .update_object(
                    collections::OUTBOX,
                    id,
                    &published,
                    Some(vec!["published".to_owned(), "published_at".to_owned()]),
                    Some(FirestoreWritePrecondition::Exists(true)),
                    vec![],
                )
                .context(what())?;
        }
        self.meter.commit(event_ids.len());
        let response = batch.write().await.context(what())?;
        // A batch write is not atomic: each write has its own status (0 is OK).
        let failed: Vec<String> = response
            .statuses
            .iter()
            .zip(event_ids)
            .filter(|(status, _)| status.code != 0)
            .map(|(status, id)| format!("{id}: {}", status.message))
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        Err(failure(
            what(),
            "batch-write",
            format!(
                "{} of {} writes failed: {}",
                failed.len(),
                event_ids.len(),
                failed.join("; ")
            ),
            true,
        ))
    }

    /// Writes the whole document, creating or replacing it.
    pub async fn set<T>(&self, collection: &str, id: &str, doc: &T) -> Result<(), StoreError>
    where
        T: Serialize + DeserializeOwned + Sync + Send,
    {
        self.meter.write(1);
        let _: T = self
            .db
            .fluent()
            .update()
            .in_col(collection)
            .document_id(id)
            .object(doc)
            .execute()
            .await
            .context(format!("writing {collection}/{id}"))?;
        Ok(())
    }

    pub async fn delete(&self, collection: &str, id: &str) -> Result<(), StoreError> {
        self.meter.delete(1);
        self.db
            .fluent()
            .delete()
            .from(collection)
            .document_id(id)
            .execute()
            .await
            .context(format!("deleting {collection}/{id}"))
    }

    /// Every document of a collection with its id (for checks, seeding and tools; not for
    /// request paths).
    pub async fn all<T>(&self, collection: &str) -> Result<Vec<(String, T)>, StoreError>
    where
        T: DeserializeOwned + Send,
    {
        let docs = self
            .db
            .fluent()
            .list()
            .from(collection)
            .stream_all()
            .await
            .context(format!("listing {collection}"))?
            .collect::<Vec<_>>()
            .await;
        self.meter.query(docs.len());
        docs.into_iter()
            .map(|doc| {
                let id = doc.name.rsplit('/').next().unwrap_or_default().to_owned();
                FirestoreDb::deserialize_doc_to::<T>(&doc)
                    .map(|value| (id, value))
                    .context(format!("decoding {collection}/ document {}", doc.name))
            })
            .collect()
    }

    /// Runs `f` as one optimistic transaction, retrying it when a document it read was written
    /// meanwhile. `f` may run several times: it must only read through its [`Tx`] and only
    /// write by queuing on it. Business rejections are `Ok` values; an `Err` from `f` is
    /// retried if it is transient ([`StoreError::is_transient`]) and returned at once
    /// otherwise.
    ///
    /// Reads take no locks: they see one snapshot (the first read's time). The queued writes
    /// commit together, atomically, each on the condition that its document is still as it was
    /// read: unchanged since its update time, or still absent. If any changed, nothing is
    /// written and `f` runs again on fresh reads. So every document a transaction writes was
    /// unchanged from its read to its commit (first committer wins, as under snapshot
    /// isolation); a document it only reads is not guarded. Contention costs a retry of a few
    /// milliseconds, where the Firestore emulator's pessimistic locks cost a lock timeout of
    /// seconds (see docs/benchmarks.md).
    pub async fn transaction<T, F>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'b> Fn(Tx<'b>) -> BoxFuture<'b, Result<T, StoreError>> + Send + Sync,
    {
        // Built at the first failure, so that the time allowed for retries counts from there.
        let mut backoff = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if attempt > 1 {
                tracing::debug!(what, attempt, "transaction contended, retrying");
            }
            self.meter.transaction(attempt > 1);
            let mut state = Attempt {
                db: self.db.clone(),
                meter: self.meter.clone(),
                read_time: None,
                read: HashMap::new(),
                writes: Vec::new(),
            };
            let result = async {
                let value = f(Tx {
                    attempt: &mut state,
                })
                .await?;
                state.commit().await.map(|()| value)
            }
            .await;
            let error = match result {
                Ok(value) => {
                    if attempt > 1 {
                        tracing::info!(
                            what,
                            attempts = attempt,
                            ok = true,
                            "contended transaction"
                        );
                    }
                    return Ok(value);
                }
                Err(error) => error,
            };
            let delay = if error.is_transient() && attempt <= TRANSACTION_RETRIES {
                let backoff = backoff.get_or_insert_with(|| {
                    backoff::ExponentialBackoffBuilder::new()
                        .with_initial_interval(TRANSACTION_RETRY_FIRST)
                        .with_multiplier(2.0)
                        .with_max_interval(TRANSACTION_RETRY_MAX)
                        .with_max_elapsed_time(Some(TRANSACTION_RETRY_FOR))
                        .build()
                });
                backoff::backoff::Backoff::next_backoff(backoff)
            } else {
                None
            };
            let Some(delay) = delay else {
                if attempt > 1 {
                    tracing::warn!(
                        what,
                        attempts = attempt,
                        ok = false,
                        "contended transaction"
                    );
                }
                return Err(StoreError {
                    context: format!("transaction {what}: {}", error.context),
                    source: error.source,
                });
            };
            tokio::time::sleep(delay).await;
        }
    }
}

/// Retries of a transaction, at most; the first one's delay (doubling, randomised by half,
/// up to the max) and for how long in all.
const TRANSACTION_RETRIES: u32 = 12;
const TRANSACTION_RETRY_FIRST: Duration = Duration::from_millis(10);
const TRANSACTION_RETRY_MAX: Duration = Duration::from_secs(2);
const TRANSACTION_RETRY_FOR: Duration = Duration::from_secs(45);

/// One attempt of a transaction: what it read, when, and what it will write.
struct Attempt {
    db: FirestoreDb,
    meter: Meter,
    /// The time of the first read, at which later reads are made (one snapshot).
    read_time: Option<ProstTimestamp>,
    /// Documents read in this attempt, by full name (`None`: there is none).
    read: HashMap<String, Option<Document>>,
    /// Queued writes, one per document, each conditioned on the document as read.
    writes: Vec<Write>,
}

impl Attempt {
    /// Commits the queued writes atomically. A write whose condition fails (its document was
    /// written since it was read) fails them all, as a transient conflict.
    async fn commit(&mut self) -> Result<(), StoreError> {
        use firestore::gcloud_sdk::google::firestore::v1::CommitRequest;
        use firestore::gcloud_sdk::tonic::Code;
        if self.writes.is_empty() {
            return Ok(());
        }
        self.meter.commit(self.writes.len());
        let request = CommitRequest {
            database: self.db.get_database_path().clone(),
            writes: std::mem::take(&mut self.writes),
            transaction: Vec::new(),
            request_options: None,
        };
        match self.db.client().get().commit(request).await {
            Ok(_) => Ok(()),
            Err(status)
                if matches!(
                    status.code(),
                    Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted
                ) =>
            {
                Err(failure(
                    "committing".into(),
                    "conflict",
                    format!(
                        "a document read was written meanwhile: {}",
                        status.message()
                    ),
                    true,
                ))
            }
            Err(status) => Err(FirestoreError::from(status)).context("committing"),
        }
    }
}

/// Queued writes, built by the `firestore` crate's fluent API as it builds a transaction's.
struct Writes {
    documents_path: String,
    writes: Vec<Write>,
}

impl FirestoreTransactionOps for Writes {
    fn add<I>(&mut self, write: I) -> firestore::FirestoreResult<&mut Self>
    where
        I: TryInto<Write, Error = FirestoreError>,
    {
        self.writes.push(write.try_into()?);
        Ok(self)
    }

    fn get_documents_path(&self) -> &String {
        &self.documents_path
    }
}

/// A transaction in progress: reads see one snapshot, writes are queued and committed
/// together, each on the condition that its document is still as this transaction read it.
pub struct Tx<'b> {
    attempt: &'b mut Attempt,
}

impl Tx<'_> {
    /// One document by id, `None` if there is none: from what this transaction already read
    /// (see [`Tx::read_ahead`]), otherwise read now.
    pub async fn get<T>(&mut self, collection: &str, id: &str) -> Result<Option<T>, StoreError>
    where
        T: DeserializeOwned + Send,
    {
        let what = || format!("reading {collection}/{id} in a transaction");
        if !(valid_segment(collection) && valid_segment(id)) {
            return Err(StoreError {
                context: what(),
                source: FirestoreError::InvalidParametersError(
                    firestore::errors::FirestoreInvalidParametersError::new(
                        firestore::errors::FirestoreInvalidParametersPublicDetails::new(
                            "document id".into(),
                            format!("{id:?} is not a document id"),
                        ),
                    ),
                ),
            });
        }
        let name = self.name(collection, id);
        if !self.attempt.read.contains_key(&name) {
            self.read_ahead(&[(collection, id)]).await?;
        }
        match self.attempt.read.get(&name) {
            Some(Some(doc)) => FirestoreDb::deserialize_doc_to::<T>(doc)
                .map(Some)
                .context(what()),
            _ => Ok(None),
        }
    }

    /// Reads `docs` (collection, id) in one round trip, so a step that knows from its event
    /// what it will read pays one read instead of one per document. Later [`Tx::get`]s of
    /// them are answered from this read: the same snapshot a get would see, since a
    /// transaction does not read its own queued writes.
    pub async fn read_ahead(&mut self, docs: &[(&str, &str)]) -> Result<(), StoreError> {
        use firestore::gcloud_sdk::google::firestore::v1::BatchGetDocumentsRequest;
        use firestore::gcloud_sdk::google::firestore::v1::batch_get_documents_request::ConsistencySelector;
        use firestore::gcloud_sdk::google::firestore::v1::batch_get_documents_response::Result as Read;
        let what = || format!("reading {} documents in a transaction", docs.len());
        // An id that is not a single path segment is left to `get`, which refuses it.
        let mut names: Vec<String> = docs
            .iter()
            .filter(|(collection, id)| valid_segment(collection) && valid_segment(id))
            .map(|(collection, id)| self.name(collection, id))
            .filter(|name| !self.attempt.read.contains_key(name))
            .collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            return Ok(());
        }
        self.attempt.meter.read(names.len());
        // The fluent API batch-gets from one collection only and does not say when it read,
        // so this is the raw request, through the crate's `client()` escape hatch (its
        // gcloud-sdk types are pinned by Cargo.lock, outside the crate's semver promise).
        let request = BatchGetDocumentsRequest {
            database: self.attempt.db.get_database_path().clone(),
            documents: names,
            mask: None,
            request_options: None,
            consistency_selector: self.attempt.read_time.map(ConsistencySelector::ReadTime),
        };
        let mut responses = self
            .attempt
            .db
            .client()
            .get()
            .batch_get_documents(request)
            .await
            .map_err(FirestoreError::from)
            .context(what())?
            .into_inner();
        while let Some(response) = responses
            .message()
            .await
            .map_err(FirestoreError::from)
            .context(what())?
        {
            if self.attempt.read_time.is_none() {
                self.attempt.read_time = response.read_time;
            }
            match response.result {
                Some(Read::Found(doc)) => {
                    self.attempt.read.insert(doc.name.clone(), Some(doc));
                }
                Some(Read::Missing(name)) => {
                    self.attempt.read.insert(name, None);
                }
                None => {}
            }
        }
        Ok(())
    }

    fn name(&self, collection: &str, id: &str) -> String {
        format!("{}/{collection}/{id}", self.attempt.db.get_documents_path())
    }

    /// Queues a whole-document write (create or replace), in place of any write of the same
    /// document queued before. If this transaction read the document, the write is made on
    /// the condition that it is still as read: the same update time, or still absent.
    pub fn set<T>(&mut self, collection: &str, id: &str, doc: &T) -> Result<(), StoreError>
    where
        T: Serialize + DeserializeOwned + Sync + Send,
    {
        let what = || format!("queuing a write of {collection}/{id}");
        let mut queued = Writes {
            documents_path: self.attempt.db.get_documents_path().clone(),
            writes: Vec::new(),
        };
        self.attempt
            .db
            .fluent()
            .update()
            .in_col(collection)
            .document_id(id)
            .object(doc)
            .add_to_transaction(&mut queued)
            .context(what())?;
        let name = self.name(collection, id);
        let guard = self.attempt.read.get(&name).map(|read| Precondition {
            condition_type: Some(match read {
                Some(doc) => doc
                    .update_time
                    .map_or(ConditionType::Exists(true), ConditionType::UpdateTime),
                None => ConditionType::Exists(false),
            }),
        });
        self.attempt.writes.retain(|write| !writes_to(write, &name));
        for mut write in queued.writes {
            write.current_document = guard;
            self.attempt.writes.push(write);
        }
        Ok(())
    }
}

/// Whether `write` replaces the document named `name`.
fn writes_to(write: &Write, name: &str) -> bool {
    matches!(&write.operation, Some(WriteOperation::Update(doc)) if doc.name == name)
}

/// Whether `s` can be one segment of a document path (what Firestore accepts as an id).
fn valid_segment(s: &str) -> bool {
    !s.is_empty() && !s.contains('/') && s != "." && s != ".." && s.len() <= 1500
}

/// The emulator accepts the magic bearer token `owner`, which bypasses security rules.
mod emulator_auth {
    use axum::http::{Extensions, HeaderMap, HeaderValue, header::AUTHORIZATION};
    use firestore::gcloud_sdk::google_cloud_auth::credentials::{
        CacheableResource, Credentials, CredentialsProvider, EntityTag,
    };
    use firestore::gcloud_sdk::google_cloud_auth::errors::CredentialsError;

    #[derive(Debug)]
    struct Owner(EntityTag);

    impl CredentialsProvider for Owner {
        async fn headers(
            &self,
            extensions: Extensions,
        ) -> Result<CacheableResource<HeaderMap>, CredentialsError> {
            if extensions.get::<EntityTag>() == Some(&self.0) {
                return Ok(CacheableResource::NotModified);
            }
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer owner"));
            Ok(CacheableResource::New {
                entity_tag: self.0.clone(),
                data: headers,
            })
        }

        async fn universe_domain(&self) -> Option<String> {
            None
        }
    }

    pub fn owner() -> Credentials {
        Credentials::from(Owner(EntityTag::new()))
    }
}
