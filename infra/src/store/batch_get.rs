//! The raw `BatchGetDocuments` request: the fluent API batch-gets from one collection only,
//! cannot ask for some fields only, and does not say when it read, so the store's batch gets
//! (a transaction's reads, a snapshot's clock, many orders' statuses) are this one call,
//! through the crate's `client()` escape hatch (its gcloud-sdk types are pinned by
//! Cargo.lock, outside the crate's semver promise).

use firestore::FirestoreDb;
use firestore::errors::FirestoreError;
use firestore::gcloud_sdk::google::firestore::v1::batch_get_documents_request::ConsistencySelector;
use firestore::gcloud_sdk::google::firestore::v1::batch_get_documents_response::Result as Read;
use firestore::gcloud_sdk::google::firestore::v1::{
    BatchGetDocumentsRequest, Document, DocumentMask,
};
use firestore::gcloud_sdk::prost_types::Timestamp as ProstTimestamp;

use super::{Context, StoreError};

/// What a batch get answered: each document by full name (`None`: missing), in the order
/// they came, and the time Firestore read them at.
#[derive(Debug, Default)]
pub(super) struct BatchRead {
    pub documents: Vec<(String, Option<Document>)>,
    pub read_time: Option<ProstTimestamp>,
}

/// Reads the documents `names` (full names), only `fields` of each if given, as of
/// `read_time` if given (else now). The caller counts the reads on its meter.
pub(super) async fn batch_get(
    db: &FirestoreDb,
    names: Vec<String>,
    fields: Option<Vec<String>>,
    read_time: Option<ProstTimestamp>,
    what: impl Fn() -> String,
) -> Result<BatchRead, StoreError> {
    let request = BatchGetDocumentsRequest {
        database: db.get_database_path().clone(),
        documents: names,
        mask: fields.map(|field_paths| DocumentMask { field_paths }),
        request_options: None,
        consistency_selector: read_time.map(ConsistencySelector::ReadTime),
    };
    let mut responses = db
        .client()
        .get()
        .batch_get_documents(request)
        .await
        .map_err(FirestoreError::from)
        .context(what())?
        .into_inner();
    let mut read = BatchRead::default();
    while let Some(response) = responses
        .message()
        .await
        .map_err(FirestoreError::from)
        .context(what())?
    {
        read.read_time = read.read_time.or(response.read_time);
        match response.result {
            Some(Read::Found(doc)) => read.documents.push((doc.name.clone(), Some(doc))),
            Some(Read::Missing(name)) => read.documents.push((name, None)),
            None => {}
        }
    }
    Ok(read)
}
