//! The store on the Firestore emulator: `Store::transaction`, optimistic (reads take no
//! locks, one snapshot; writes commit together on the condition that what they replace is
//! still as read, and run the transaction again if not); and the named operations the
//! steps and sweeps use besides it: a duplicate noted in one write, orders due page by page.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures::FutureExt;
use jiff::Timestamp;
use saga_contracts::docs::{UserDoc, collections};
use saga_contracts::events::OrderStatus;
use saga_contracts::order::{Duplicate, OrderDoc};
use saga_infra::config::Endpoint;
use saga_infra::store::{Store, StoreError};
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

/// An order accepted `seconds` after the epoch, moved to `status`.
fn order_changed_at(seconds: i64, status: OrderStatus) -> OrderDoc {
    let at = Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(seconds);
    let details = crate::helpers::jack_widgets(1);
    let mut order = OrderDoc::new(Uuid::new_v4(), &details, at);
    if status != OrderStatus::Pending {
        order.advance(status, at).expect("a legal move");
    }
    order
}

#[tokio::test]
async fn a_duplicate_is_noted_on_its_order_in_one_write_that_changes_nothing_else() {
    // Given an order
    let store = fresh_store().await;
    let order = order_changed_at(1, OrderStatus::OrderCreated);
    store
        .set(collections::ORDERS, &order.order_id, &order)
        .await
        .unwrap();
    let duplicate = |delivery: &str| Duplicate {
        step: "inventory".into(),
        event_id: "e1".into(),
        event_type: "order-created".into(),
        delivery: delivery.into(),
        at: Timestamp::now(),
        trace_id: "t".into(),
    };
    // When two deliveries are noted, without a read
    let before = store.meter().counts();
    for delivery in ["m-1", "m-2"] {
        store
            .note_duplicate(&order.order_id, &duplicate(delivery))
            .await
            .unwrap();
    }
    let cost = store.meter().counts().since(&before);
    assert_eq!((cost.reads, cost.writes), (0, 2));
    // Then both are on the order, and nothing else of it changed
    let after = store.order(&order.order_id).await.unwrap().unwrap();
    let deliveries: Vec<&str> = after
        .duplicates
        .iter()
        .map(|d| d.delivery.as_str())
        .collect();
    assert_eq!(deliveries, ["m-1", "m-2"]);
    let mut unchanged = after.clone();
    unchanged.duplicates.clear();
    assert_eq!(unchanged, order);
    // And a duplicate of an order that does not exist creates nothing
    let missing = Uuid::new_v4().to_string();
    assert!(
        store
            .note_duplicate(&missing, &duplicate("m-3"))
            .await
            .is_err()
    );
    assert!(store.order(&missing).await.unwrap().is_none());
}

#[tokio::test]
async fn orders_due_come_page_by_page_oldest_change_first() {
    // Given orders changed at 1..=6 s, one of them COMPLETED
    let store = fresh_store().await;
    let mut ids = Vec::new();
    for at in 1..=6 {
        let status = if at == 3 {
            OrderStatus::Completed
        } else {
            OrderStatus::Pending
        };
        let mut order = order_changed_at(at, OrderStatus::Pending);
        if status == OrderStatus::Completed {
            for s in [
                OrderStatus::OrderCreated,
                OrderStatus::InventoryReserved,
                status,
            ] {
                order.advance(s, order.updated_at).unwrap();
            }
        }
        store
            .set(collections::ORDERS, &order.order_id, &order)
            .await
            .unwrap();
        ids.push(order.order_id);
    }
    // When the PENDING ones changed by 5 s are read two at a time
    let cutoff = Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(5);
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .orders_due(&[OrderStatus::Pending], cutoff, after.as_ref(), 2)
            .await
            .unwrap();
        let ids: Vec<String> = page.orders.into_iter().map(|o| o.order_id).collect();
        pages.push(ids);
        if !page.full {
            break;
        }
        after = page.next;
    }
    // Then they come in order, the COMPLETED one and the one changed later left out
    assert_eq!(
        pages,
        [
            vec![ids[0].clone(), ids[1].clone()],
            vec![ids[3].clone(), ids[4].clone()],
            vec![]
        ]
    );
}
