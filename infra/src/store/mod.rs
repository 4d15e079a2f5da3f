//! Firestore: the connection, the saga's documents, the named operations the functions
//! use, and a small optimistic transaction runner ([`transaction`]).
//!
//! Functions reach Firestore only through what this module names: a get by id, a
//! transaction, the few queries below ([`Store::orders_due`],
//! [`Store::orders_changed_since`]), appends ([`Store::note_duplicate`]) and one watch of
//! the orders ([`Store::watch_orders`]). Every one of them
//! counts its operations on the store's [`Meter`].

mod batch_get;
mod transaction;
mod watch;

pub(crate) use crate::docs::{ParkedMessage, collections};
pub use transaction::{Tx, TxError};
pub use watch::{Change, Target, Watch};

pub(crate) use crate::order::{Duplicate, OrderDoc};

use firestore::errors::FirestoreError;
use firestore::{FirestoreDb, FirestoreDbOptions, FirestoreTimestamp};
use futures::StreamExt;
use jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::Endpoint;
use crate::events::OrderStatus;
use crate::meter::Meter;
use crate::spans::{self, Kind};

/// Where a page of [`Store::orders_due`] ended: the last order's change time and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCursor {
    pub updated_at: Timestamp,
    pub name: String,
}

/// How many orders a sweep reads in one page of [`Store::orders_due`].
pub const DUE_PAGE: u32 = 200;

/// The time before which an order last changed is `age` old or older: a sweep's cutoff.
pub fn changed_before(age: std::time::Duration) -> jiff::Timestamp {
    jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::try_from(age).unwrap_or_default())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// The pages of orders due that a sweep walks, oldest change first, until one is not full
/// ([`Store::due`]).
pub struct DuePages<'a> {
    store: &'a Store,
    statuses: &'a [OrderStatus],
    cutoff: Timestamp,
    after: Option<DueCursor>,
    done: bool,
}

impl DuePages<'_> {
    /// The next page, or none after the last.
    pub async fn next(&mut self) -> Result<Option<DuePage>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .store
            .orders_due(self.statuses, self.cutoff, self.after.as_ref(), DUE_PAGE)
            .await?;
        self.done = !page.full;
        self.after.clone_from(&page.next);
        Ok(Some(page))
    }
}

/// A page of [`Store::orders_due`].
#[derive(Debug, Default)]
pub struct DuePage {
    pub orders: Vec<OrderDoc>,
    /// Documents that matched but cannot be read as orders, by id, with why: a sweep
    /// counts and logs them, and goes on with the others.
    pub undecodable: Vec<(String, String)>,
    /// Where the next page starts.
    pub next: Option<DueCursor>,
    /// Whether the page was full: another may follow.
    pub full: bool,
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
        let read = async {
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
        };
        let attributes = || firestore_call("BatchGetDocuments", format!("{collection}/{id}"));
        spans::call(
            "firestore BatchGetDocuments",
            Kind::Client,
            attributes,
            read,
        )
        .await
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

    /// This store as of one instant, the server's now: every read through the copy sees the
    /// same snapshot of the database, so what is read in several requests (an audit of the
    /// orders against the stock) is consistent. Firestore keeps versions an hour back.
    pub async fn snapshot(&self) -> Result<Store, StoreError> {
        // The server's clock, not ours: a batch get answers with the time it read at, and a
        // missing document is an answer.
        let clock = format!(
            "{}/{}/snapshot-clock",
            self.db.get_documents_path(),
            collections::INVENTORY
        );
        self.meter.read(1);
        let read_time = batch_get::batch_get(&self.db, vec![clock], None, None, || {
            "reading the database's time for a snapshot".to_owned()
        })
        .await?
        .read_time;
        let at = read_time
            .and_then(|t| Timestamp::new(t.seconds, t.nanos).ok())
            .unwrap_or_else(Timestamp::now);
        Ok(Store {
            db: self.db.clone_with_consistency_selector(
                firestore::FirestoreConsistencySelector::ReadTime(at),
            ),
            meter: self.meter.clone(),
        })
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

    /// The order, if there is one.
    pub async fn order(&self, order_id: &str) -> Result<Option<OrderDoc>, StoreError> {
        self.get(collections::ORDERS, order_id).await
    }

    /// Orders whose status is one of `statuses` and that last changed `age` ago or longer,
    /// page by page ([`DUE_PAGE`] each): what a sweep walks.
    pub fn due<'a>(
        &'a self,
        statuses: &'a [OrderStatus],
        age: std::time::Duration,
    ) -> DuePages<'a> {
        DuePages {
            store: self,
            statuses,
            cutoff: changed_before(age),
            after: None,
            done: false,
        }
    }

    /// Orders whose status is one of `statuses` and that last changed at or before
    /// `changed_before`, oldest change first (then by id): a page of at most `limit`,
    /// starting after `after` (the previous page's [`DuePage::next`]). Each document is
    /// decoded on its own: one that cannot be is in [`DuePage::undecodable`] and the others
    /// still come. Firestore needs a composite index on (status, updated_at) for this
    /// (terraform/main.tf); the id order is the index's implicit last field.
    pub async fn orders_due(
        &self,
        statuses: &[OrderStatus],
        changed_before: Timestamp,
        after: Option<&DueCursor>,
        limit: u32,
    ) -> Result<DuePage, StoreError> {
        let statuses: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
        let query = self
            .db
            .fluent()
            .select()
            .from(collections::ORDERS)
            .filter(|q| {
                q.for_all([
                    q.field("status").is_in(statuses.clone()),
                    q.field("updated_at")
                        .less_than_or_equal(FirestoreTimestamp(changed_before)),
                ])
            })
            .order(|o| o.fields([o.field("updated_at").asc(), o.field("__name__").asc()]))
            .limit(limit);
        let query = match after {
            // After the last one seen, by (updated_at, name): orders changed in the same
            // instant as the page's last are neither skipped nor read twice.
            Some(cursor) => query.start_at(firestore::FirestoreQueryCursor::AfterValue(vec![
                FirestoreTimestamp(cursor.updated_at).into(),
                firestore::FirestoreValue::from(firestore::gcloud_sdk::google::firestore::v1::Value {
                    value_type: Some(
                        firestore::gcloud_sdk::google::firestore::v1::value::ValueType::ReferenceValue(
                            cursor.name.clone(),
                        ),
                    ),
                }),
            ])),
            None => query,
        };
        let docs = query.query().await.context(format!(
            "querying orders {statuses:?} changed before {changed_before}"
        ))?;
        self.meter.query(docs.len());
        let mut page = DuePage {
            full: docs.len() >= limit as usize,
            ..DuePage::default()
        };
        for doc in &docs {
            let id = doc.name.rsplit('/').next().unwrap_or_default().to_owned();
            match FirestoreDb::deserialize_doc_to::<OrderDoc>(doc) {
                Ok(order) => page.orders.push(order),
                Err(error) => page.undecodable.push((id, error.to_string())),
            }
        }
        page.next = docs.last().and_then(|doc| {
            let updated_at = match doc.fields.get("updated_at")?.value_type.as_ref()? {
                firestore::gcloud_sdk::google::firestore::v1::value::ValueType::TimestampValue(
                    t,
                ) => Timestamp::new(t.seconds, t.nanos).ok()?,
                _ => return None,
            };
            Some(DueCursor {
                updated_at,
                name: doc.name.clone(),
            })
        });
        Ok(page)
    }

    /// The status of each of these orders (`None`: no such order), in one batch get that
    /// returns the status field only: what a client following many orders needs (the bench
    /// driver's poller), at a fraction of the orders' bytes.
    pub async fn order_statuses(
        &self,
        order_ids: &[String],
    ) -> Result<Vec<(String, Option<OrderStatus>)>, StoreError> {
        use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
        let what = || format!("reading the status of {} orders", order_ids.len());
        let ids: Vec<String> = order_ids
            .iter()
            .filter(|id| valid_segment(id))
            .map(|id| {
                format!(
                    "{}/{}/{id}",
                    self.db.get_documents_path(),
                    collections::ORDERS
                )
            })
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.meter.read(ids.len());
        let read =
            batch_get::batch_get(&self.db, ids, Some(vec!["status".into()]), None, what).await?;
        let id_of = |name: &str| name.rsplit('/').next().unwrap_or(name).to_owned();
        let statuses = read
            .documents
            .into_iter()
            .map(|(name, doc)| {
                let status =
                    doc.as_ref()
                        .and_then(|d| d.fields.get("status"))
                        .and_then(|v| match &v.value_type {
                            Some(ValueType::StringValue(s)) => {
                                serde_json::from_value(serde_json::Value::String(s.clone())).ok()
                            }
                            _ => None,
                        });
                (id_of(&name), status)
            })
            .collect();
        Ok(statuses)
    }

    /// Orders changed at or after `since`, oldest change first, a page of at most `limit`
    /// after the change at `after` (for replay: an order emits nothing after its last change).
    pub async fn orders_changed_since(
        &self,
        since: Timestamp,
        after: Option<Timestamp>,
        limit: u32,
    ) -> Result<Vec<OrderDoc>, StoreError> {
        let query = self
            .db
            .fluent()
            .select()
            .from(collections::ORDERS)
            .filter(|q| {
                q.for_all([q
                    .field("updated_at")
                    .greater_than_or_equal(FirestoreTimestamp(since))])
            })
            .order(|o| o.fields([o.field("updated_at").asc()]))
            .limit(limit);
        let query = match after {
            Some(t) => query.start_at(firestore::FirestoreQueryCursor::AfterValue(vec![
                FirestoreTimestamp(t).into(),
            ])),
            None => query,
        };
        let orders: Vec<OrderDoc> = query
            .obj()
            .query()
            .await
            .context(format!("querying orders changed since {since}"))?;
        self.meter.query(orders.len());
        Ok(orders)
    }

    /// Adds `duplicate` to the order's duplicates in one write, without reading the order
    /// (an array-union transform, on the condition that the order exists). Nothing else of
    /// the order changes; a step transaction that read it before runs again.
    pub async fn note_duplicate(
        &self,
        order_id: &str,
        duplicate: &Duplicate,
    ) -> Result<(), StoreError> {
        use firestore::gcloud_sdk::google::firestore::v1::document_transform::FieldTransform;
        use firestore::gcloud_sdk::google::firestore::v1::document_transform::field_transform::TransformType;
        use firestore::gcloud_sdk::google::firestore::v1::precondition::ConditionType;
        use firestore::gcloud_sdk::google::firestore::v1::{
            ArrayValue, CommitRequest, Document, DocumentMask, MapValue, Precondition, Value,
            Write, value, write,
        };
        let what = || format!("noting a duplicate on {}/{order_id}", collections::ORDERS);
        let entry = FirestoreDb::serialize_to_doc("", duplicate).context(what())?;
        let name = format!(
            "{}/{}/{order_id}",
            self.db.get_documents_path(),
            collections::ORDERS
        );
        let write = Write {
            operation: Some(write::Operation::Update(Document {
                name,
                ..Document::default()
            })),
            // No field is replaced: only the transform applies.
            update_mask: Some(DocumentMask::default()),
            update_transforms: vec![FieldTransform {
                field_path: "duplicates".into(),
                transform_type: Some(TransformType::AppendMissingElements(ArrayValue {
                    values: vec![Value {
                        value_type: Some(value::ValueType::MapValue(MapValue {
                            fields: entry.fields,
                        })),
                    }],
                })),
            }],
            current_document: Some(Precondition {
                condition_type: Some(ConditionType::Exists(true)),
            }),
        };
        self.meter.commit(1);
        let commit = async {
            self.db
                .client()
                .get()
                .commit(CommitRequest {
                    database: self.db.get_database_path().clone(),
                    writes: vec![write],
                    transaction: Vec::new(),
                    request_options: None,
                })
                .await
                .map_err(FirestoreError::from)
                .context(what())
                .map(drop)
        };
        let attributes = || firestore_call("Commit", format!("{}/{order_id}", collections::ORDERS));
        spans::call("firestore Commit", Kind::Client, attributes, commit).await
    }
}

/// A Firestore call's span attributes: the operation and the document.
fn firestore_call(operation: &'static str, document: String) -> spans::Attributes {
    vec![
        ("db.system.name", spans::Value::from("firestore")),
        ("db.operation.name", spans::Value::from(operation)),
        ("saga.documents", spans::Value::from(document)),
    ]
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
