//! Our own optimistic transaction runner on Firestore's `Commit`.
//!
//! Every read a decision depends on and every write it makes happen in one transaction,
//! whose reads take no locks and see one snapshot, and whose writes commit together on the
//! condition that what they replace is still as it was read; a conflict retries it within
//! milliseconds. (The Firestore emulator's own transactions lock pessimistically: a conflict
//! there waits out a lock timeout of seconds; see docs/benchmarks.md.)

use std::collections::HashMap;
use std::time::Duration;

use firestore::FirestoreDb;
use firestore::FirestoreTransactionOps;
use firestore::errors::FirestoreError;
use firestore::gcloud_sdk::google::firestore::v1::precondition::ConditionType;
use firestore::gcloud_sdk::google::firestore::v1::write::Operation as WriteOperation;
use firestore::gcloud_sdk::google::firestore::v1::{Document, Precondition, Write};
use firestore::gcloud_sdk::prost_types::Timestamp as ProstTimestamp;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Context, Store, StoreError, failure, valid_segment};
use crate::meter::Meter;
use crate::spans::{self, Kind, Value};

impl Store {
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
        self.transaction_with(what, f).await
    }

    /// [`Store::transaction`] whose body has errors of its own (`E`), which carry
    /// Firestore's ([`TxError`]): only a transient Firestore error is retried.
    pub async fn transaction_with<T, E, F>(&self, what: &str, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: TxError,
        F: for<'b> Fn(Tx<'b>) -> BoxFuture<'b, Result<T, E>> + Send + Sync,
    {
        let attributes = || {
            vec![
                ("db.system.name", Value::from("firestore")),
                ("saga.transaction", Value::from(what.to_owned())),
            ]
        };
        spans::call(
            "firestore transaction",
            Kind::Internal,
            attributes,
            self.run_transaction(what, f),
        )
        .await
    }

    async fn run_transaction<T, E, F>(&self, what: &str, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: TxError,
        F: for<'b> Fn(Tx<'b>) -> BoxFuture<'b, Result<T, E>> + Send + Sync,
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
                state.commit().await.map_err(E::from).map(|()| value)
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
            let transient = error.store().is_some_and(StoreError::is_transient);
            let delay = if transient && attempt <= TRANSACTION_RETRIES {
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
                return Err(error.in_transaction(what));
            };
            tokio::time::sleep(delay).await;
        }
    }
}

/// The error of a transaction's body: a Firestore error, or the body's own (a step's
/// refused status move, say). Only a transient Firestore error is retried.
pub trait TxError: From<StoreError> + Send + std::fmt::Display {
    /// The Firestore error this is, if it is one.
    fn store(&self) -> Option<&StoreError>;
    /// Says which transaction it ended.
    fn in_transaction(self, what: &str) -> Self;
}

impl TxError for StoreError {
    fn store(&self) -> Option<&StoreError> {
        Some(self)
    }

    fn in_transaction(self, what: &str) -> StoreError {
        StoreError {
            context: format!("transaction {what}: {}", self.context),
            source: self.source,
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
        if self.writes.is_empty() {
            return Ok(());
        }
        if crate::chaos::take(crate::chaos::Fault::CommitFails) {
            return Err(failure(
                "committing".into(),
                "unavailable",
                "injected: the commit failed (saga chaos)".into(),
                false,
            ));
        }
        let writes = self.writes.len();
        self.meter.commit(writes);
        let request = CommitRequest {
            database: self.db.get_database_path().clone(),
            writes: std::mem::take(&mut self.writes),
            transaction: Vec::new(),
            request_options: None,
        };
        let attributes = || {
            vec![
                ("db.system.name", Value::from("firestore")),
                ("db.operation.name", Value::from("Commit")),
                ("db.operation.batch.size", Value::from(writes)),
            ]
        };
        let db = &self.db;
        let outcome = spans::call("firestore Commit", Kind::Client, attributes, async move {
            commit_outcome(db.client().get().commit(request).await)
        })
        .await;
        if outcome.is_ok() && crate::chaos::take(crate::chaos::Fault::CommitAnswerLost) {
            return Err(failure(
                "committing".into(),
                "deadline-exceeded",
                "injected: the commit's answer was lost (saga chaos)".into(),
                false,
            ));
        }
        outcome
    }
}

/// A commit's answer: a failed precondition (a document read was written meanwhile) is a
/// transient conflict.
fn commit_outcome<R>(
    answer: Result<R, firestore::gcloud_sdk::tonic::Status>,
) -> Result<(), StoreError> {
    use firestore::gcloud_sdk::tonic::Code;
    match answer {
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
        // Made now (the read takes the names) and only if the span is recorded.
        let attributes = spans::recording().then(|| {
            vec![
                ("db.system.name", Value::from("firestore")),
                ("db.operation.name", Value::from("BatchGetDocuments")),
                ("db.operation.batch.size", Value::from(names.len())),
                ("saga.documents", Value::from(relative(&names).join(" "))),
            ]
        });
        let read = self.batch_get(names, what);
        spans::call(
            "firestore BatchGetDocuments",
            Kind::Client,
            move || attributes.unwrap_or_default(),
            read,
        )
        .await
    }

    async fn batch_get(
        &mut self,
        names: Vec<String>,
        what: impl Fn() -> String,
    ) -> Result<(), StoreError> {
        let db = &self.attempt.db;
        let read =
            super::batch_get::batch_get(db, names, None, self.attempt.read_time, what).await?;
        if self.attempt.read_time.is_none() {
            self.attempt.read_time = read.read_time;
        }
        self.attempt.read.extend(read.documents);
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
        let name = self.name(collection, id);
        let guard = self.attempt.read.get(&name).map(|read| match read {
            Some(doc) => doc
                .update_time
                .map_or(ConditionType::Exists(true), ConditionType::UpdateTime),
            None => ConditionType::Exists(false),
        });
        self.queue(collection, id, name, doc, guard)
    }

    /// Queues the creation of a document this transaction did not read: the write is made on
    /// the condition that the document does not exist (no read needed to know it is new).
    pub fn create<T>(&mut self, collection: &str, id: &str, doc: &T) -> Result<(), StoreError>
    where
        T: Serialize + DeserializeOwned + Sync + Send,
    {
        let name = self.name(collection, id);
        self.queue(
            collection,
            id,
            name,
            doc,
            Some(ConditionType::Exists(false)),
        )
    }

    /// Queues the write of `doc` as `collection/id`, whose full name is `name`.
    fn queue<T>(
        &mut self,
        collection: &str,
        id: &str,
        name: String,
        doc: &T,
        guard: Option<ConditionType>,
    ) -> Result<(), StoreError>
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
        let guard = guard.map(|condition| Precondition {
            condition_type: Some(condition),
        });
        self.attempt.writes.retain(|write| !writes_to(write, &name));
        for mut write in queued.writes {
            write.current_document = guard;
            self.attempt.writes.push(write);
        }
        Ok(())
    }
}

/// Documents' names without the database's prefix: `orders/<id>`.
fn relative(names: &[String]) -> Vec<&str> {
    names
        .iter()
        .map(|name| {
            name.split_once("/documents/")
                .map_or(name.as_str(), |(_, path)| path)
        })
        .collect()
}

/// Whether `write` replaces the document named `name`.
fn writes_to(write: &Write, name: &str) -> bool {
    matches!(&write.operation, Some(WriteOperation::Update(doc)) if doc.name == name)
}
