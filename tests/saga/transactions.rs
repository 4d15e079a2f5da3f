//! The store on the Firestore emulator: `Store::transaction`, optimistic (reads take no
//! locks, one snapshot; writes commit together on the condition that what they replace is
//! still as read, and run the transaction again if not); and the outbox marks, written
//! together, each on its own, in the background or at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures::FutureExt;
use jiff::Timestamp;
use saga_infra::config::Endpoint;
use saga_infra::outbox::Marks;
use saga_infra::store::{OutboxRecord, Store, StoreError, UserDoc, collections};
use uuid::Uuid;

use crate::helpers::hosts;

async fn fresh_store() -> Store {
    let project = format!("tx-{}", &Uuid::new_v4().simple().to_string()[..16]);
    Store::connect(
        &project,
        &Endpoint::Emulator(hosts().await.firestore.clone()),
    )
    .await
    .expect("connecting to the Firestore emulator")
}

/// Sets `user`'s balance outside any transaction (a test's "given").
async fn given_balance(store: &Store, user: &str, balance: i64) {
    store
        .set(collections::USERS, user, &UserDoc { balance })
        .await
        .expect("setting a balance");
}

async fn balance(store: &Store, user: &str) -> Option<i64> {
    store
        .get::<UserDoc>(collections::USERS, user)
        .await
        .expect("reading a balance")
        .map(|u| u.balance)
}

/// Adds one to `user`'s balance: read, then write what was read plus one.
async fn increment(store: &Store, user: &str) -> Result<(), StoreError> {
    store
        .transaction("increment", |mut tx| {
            let user = user.to_owned();
            async move {
                let now = tx
                    .get::<UserDoc>(collections::USERS, &user)
                    .await?
                    .map_or(0, |u| u.balance);
                tx.set(collections::USERS, &user, &UserDoc { balance: now + 1 })?;
                Ok(())
            }
            .boxed()
        })
        .await
}

#[tokio::test]
async fn concurrent_read_then_write_transactions_lose_no_update() {
    // Given a counter at 0
    let store = fresh_store().await;
    given_balance(&store, "counter", 0).await;
    // When five transactions read it and write it plus one, all at once
    let all = futures::future::join_all((0..5).map(|_| increment(&store, "counter"))).await;
    // Then each saw the others' writes: a read outside the transaction would lose some
    for result in all {
        result.expect("every increment commits, retried if contended");
    }
    assert_eq!(balance(&store, "counter").await, Some(5));
}

#[tokio::test]
async fn a_transaction_that_reads_nothing_commits_all_its_writes() {
    let store = fresh_store().await;
    store
        .transaction("blind writes", |mut tx| {
            async move {
                tx.set(collections::USERS, "a", &UserDoc { balance: 1 })?;
                tx.set(collections::USERS, "b", &UserDoc { balance: 2 })?;
                Ok(())
            }
            .boxed()
        })
        .await
        .expect("committing writes without a read");
    assert_eq!(balance(&store, "a").await, Some(1));
    assert_eq!(balance(&store, "b").await, Some(2));
}

#[tokio::test]
async fn a_failed_transaction_writes_nothing() {
    // Given a balance of 7
    let store = fresh_store().await;
    given_balance(&store, "u", 7).await;
    // When a transaction reads it, queues a write and then fails for good
    let failed = store
        .transaction("fails", |mut tx| {
            async move {
                tx.get::<UserDoc>(collections::USERS, "u").await?;
                tx.set(collections::USERS, "u", &UserDoc { balance: 0 })?;
                // A document id with a slash: refused, the same way every time.
                tx.get::<UserDoc>(collections::USERS, "not/an/id").await?;
                Ok(())
            }
            .boxed()
        })
        .await;
    // Then it says why, nothing was written, and the next transaction on the document runs
    let error = failed.expect_err("a permanent error is not retried");
    assert!(error.to_string().contains("not/an/id"), "{error}");
    assert_eq!(balance(&store, "u").await, Some(7));
    increment(&store, "u").await.expect("the document is free");
    assert_eq!(balance(&store, "u").await, Some(8));
}

#[tokio::test]
async fn a_document_written_after_the_transaction_read_it_runs_the_transaction_again() {
    // Given a balance of 1
    let store = fresh_store().await;
    given_balance(&store, "u", 1).await;
    let attempts = Arc::new(AtomicU32::new(0));
    // When a transaction reads it, and someone else writes it before the transaction commits
    store
        .transaction("raced", |mut tx| {
            let (store, attempts) = (store.clone(), attempts.clone());
            async move {
                let seen = tx.get::<UserDoc>(collections::USERS, "u").await?;
                if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                    store
                        .set(collections::USERS, "u", &UserDoc { balance: 10 })
                        .await?;
                }
                let balance = seen.map_or(0, |u| u.balance) + 1;
                tx.set(collections::USERS, "u", &UserDoc { balance })?;
                Ok(())
            }
            .boxed()
        })
        .await
        .expect("the transaction commits on its second run");
    // Then its first write was refused (it would have lost the 10), and its second run read
    // the 10 and wrote on it
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(balance(&store, "u").await, Some(11));
}

#[tokio::test]
async fn of_concurrent_transactions_creating_a_missing_document_exactly_one_creates_it() {
    // Given no claim
    let store = fresh_store().await;
    // When five transactions each read it as missing and create it, all at once
    let claims = futures::future::join_all((1..=5).map(|i| {
        let store = store.clone();
        async move {
            store
                .transaction("claim", |mut tx| {
                    async move {
                        if tx
                            .get::<UserDoc>(collections::USERS, "claim")
                            .await?
                            .is_some()
                        {
                            return Ok(None);
                        }
                        tx.set(collections::USERS, "claim", &UserDoc { balance: i })?;
                        Ok(Some(i))
                    }
                    .boxed()
                })
                .await
                .expect("every claim commits or finds the winner's")
        }
    }))
    .await;
    // Then one created it, the others found it, and it holds the winner's value
    let won: Vec<i64> = claims.into_iter().flatten().collect();
    assert_eq!(won.len(), 1, "{won:?}");
    assert_eq!(balance(&store, "claim").await, Some(won[0]));
}

#[tokio::test]
async fn a_transaction_reads_one_snapshot() {
    // Given two balances
    let store = fresh_store().await;
    for user in ["a", "b"] {
        given_balance(&store, user, 1).await;
    }
    // When a transaction reads one, someone writes the other, and the transaction reads it
    let seen = store
        .transaction("snapshot", |mut tx| {
            let store = store.clone();
            async move {
                tx.get::<UserDoc>(collections::USERS, "a").await?;
                store
                    .set(collections::USERS, "b", &UserDoc { balance: 2 })
                    .await?;
                Ok(tx
                    .get::<UserDoc>(collections::USERS, "b")
                    .await?
                    .map(|u| u.balance))
            }
            .boxed()
        })
        .await
        .expect("reading");
    // Then it sees the other as it was at its first read
    assert_eq!(seen, Some(1));
    assert_eq!(balance(&store, "b").await, Some(2));
}

#[tokio::test]
async fn reads_of_missing_and_repeated_documents_in_one_transaction() {
    let store = fresh_store().await;
    given_balance(&store, "here", 3).await;
    let seen = store
        .transaction("reads", |mut tx| {
            async move {
                tx.read_ahead(&[(collections::USERS, "here"), (collections::USERS, "here")])
                    .await?;
                let here = tx.get::<UserDoc>(collections::USERS, "here").await?;
                let gone = tx.get::<UserDoc>(collections::USERS, "gone").await?;
                Ok((here.map(|u| u.balance), gone.map(|u| u.balance)))
            }
            .boxed()
        })
        .await
        .expect("reading");
    assert_eq!(seen, (Some(3), None));
}

fn outbox_record(event_id: &str) -> OutboxRecord {
    let now = Timestamp::now();
    OutboxRecord {
        event_id: event_id.to_owned(),
        order_id: "o".into(),
        topic: "order-created".into(),
        payload: "{}".into(),
        attributes: Default::default(),
        published: false,
        created_at: now,
        published_at: None,
        expire_at: now,
    }
}

/// A fresh project with an unpublished outbox record for each of `ids`.
async fn store_with_outbox(ids: &[&str]) -> Store {
    let store = fresh_store().await;
    for id in ids {
        store
            .set(collections::OUTBOX, id, &outbox_record(id))
            .await
            .expect("writing an outbox record");
    }
    store
}

async fn published(store: &Store, event_id: &str) -> Option<bool> {
    store
        .get::<OutboxRecord>(collections::OUTBOX, event_id)
        .await
        .expect("reading an outbox record")
        .map(|r| r.published && r.published_at.is_some())
}

#[tokio::test]
async fn marks_are_written_together_and_a_missing_record_does_not_hold_back_the_others() {
    // Given three outbox records
    let store = store_with_outbox(&["e1", "e2", "e3"]).await;
    // When two are marked together, then both are, and nothing else changed
    store
        .mark_published(&["e1".into(), "e2".into()], Timestamp::now())
        .await
        .expect("marking");
    assert_eq!(published(&store, "e1").await, Some(true));
    assert_eq!(published(&store, "e2").await, Some(true));
    assert_eq!(published(&store, "e3").await, Some(false));
    // When a mark names a record that does not exist, then the others are still marked, the
    // missing one is not created, and the error names it
    let error = store
        .mark_published(&["e3".into(), "ghost".into()], Timestamp::now())
        .await
        .expect_err("one record is missing");
    assert!(error.to_string().contains("ghost"), "{error}");
    assert_eq!(published(&store, "e3").await, Some(true));
    assert_eq!(published(&store, "ghost").await, None);
}

#[tokio::test]
async fn queued_marks_are_written_in_the_background_without_anyone_waiting() {
    // Given three unpublished outbox records
    let store = store_with_outbox(&["e1", "e2", "e3"]).await;
    // When two marks are queued (one twice, as concurrent duplicates do) and no one waits
    let marks = Marks::new(store.clone());
    for id in ["e1", "e2", "e1"] {
        marks.defer(id.into());
    }
    // Then both are written by themselves, and the third record is untouched
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while published(&store, "e2").await != Some(true) || published(&store, "e1").await != Some(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "queued marks never written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(published(&store, "e3").await, Some(false));
}

#[tokio::test]
async fn a_flush_writes_the_queued_marks_before_it_returns() {
    // Given an unpublished outbox record whose mark is queued
    let store = store_with_outbox(&["e1"]).await;
    let marks = Marks::new(store.clone());
    marks.defer("e1".into());
    // When the marks are flushed (the sweep, SIGTERM), then the record is marked already
    marks.flush().await;
    assert_eq!(published(&store, "e1").await, Some(true));
    // And the write the mark had scheduled finds nothing left to do
    marks.flush().await;
    assert_eq!(published(&store, "e1").await, Some(true));
}
