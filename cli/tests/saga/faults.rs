//! The fault suite: break things on purpose, then check the saga's invariants from Firestore
//! (every saga over, stock and money conserved, the outbox published, one event per step).

use saga_emulator::seed::{BALANCE, WIDGET_STOCK};
use std::time::Duration;

use futures::future::join_all;
use saga_contracts::events::{Event, EventBody};
use saga_contracts::topology::Function;
use saga_infra::config::Endpoint;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{Options, ack_kind, spawn_app, spawn_app_with};

/// 1. The original design's question: what if inventory is offline?
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_offline_delays_sagas_but_every_one_completes() {
    let mut app = spawn_app().await;
    app.stop(Function::Inventory).await;
    let mut ids = Vec::new();
    for quantity in 1..=5 {
        ids.push(
            app.place(json!({"item": "widget", "quantity": quantity, "user": "jack"}))
                .await,
        );
    }
    for id in &ids {
        app.wait_for_status(*id, "ORDER_CREATED").await;
    }
    let port = app.ports[&Function::Inventory];
    app.start(Function::Inventory, port).await;
    for id in ids {
        assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
    }
    assert_eq!(app.stock("widget").await, WIDGET_STOCK - 15);
    app.assert_invariants().await;
}

/// 2. A crash between commit and publish: the redelivery publishes the committed event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_commit_is_recovered_by_the_redelivery() {
    let mut app = spawn_app().await;
    app.restart_with(Function::Inventory, |c| c.faults.crash_after_commit = true)
        .await;
    let id = app
        .place(json!({"item": "widget", "quantity": 4, "user": "jack"}))
        .await;
    // The first delivery committed the reservation and "crashed"; Pub/Sub redelivers, the
    // step finds its record and publishes the pending event.
    assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
    assert_eq!(app.stock("widget").await, WIDGET_STOCK - 4);
    app.assert_invariants().await;
}

/// 2b. A crash between commit and publish with no redelivery to come (the frontend's, where
/// the client got an error): the outbox sweep publishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_commit_is_recovered_by_the_outbox_sweep() {
    let mut app = spawn_app().await;
    app.restart_with(Function::Frontend, |c| c.faults.crash_after_commit = true)
        .await;
    let response = app
        .post_order(&json!({"item": "widget", "quantity": 6, "user": "jack"}))
        .await;
    assert_eq!(response.status(), 503, "the crash is visible to the client");
    let orders = app.orders().await;
    assert_eq!(orders.len(), 1, "but the order was committed");
    let id: Uuid = orders[0].0.parse().unwrap();
    assert_eq!(app.get_order(id).await["status"], "PENDING");

    let report = app.sweep(Function::Frontend).await;
    assert_eq!(
        (report["due"].as_u64(), report["republished"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );
    assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
    let again = app.sweep(Function::Frontend).await;
    assert_eq!(again["due"], 0, "published once: {again}");
    app.assert_invariants().await;
}

/// 3. The broker unreachable while orders flow: the step answers 5xx, Pub/Sub retries, the
/// saga completes once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_failures_answer_5xx_and_the_saga_completes_once_the_broker_is_back() {
    let mut app = spawn_app().await;
    let dead = format!("127.0.0.1:{}", saga_emulator::free_port().unwrap());
    app.restart_with(Function::Order, |c| c.pubsub = Endpoint::Emulator(dead))
        .await;
    let id = Uuid::new_v4();
    let requested = Event::new(
        id,
        EventBody::OrderRequested {
            order: crate::helpers::jack_widgets(2),
        },
    );
    let (status, body) = app.push(Function::Order, &requested).await;
    assert_eq!(status, 503, "{body}");
    // The effect is committed, the event is waiting in the outbox.
    app.wait_for_step(id, "order").await;
    assert_eq!(app.get_order(id).await["status"], "ORDER_CREATED");

    app.restart_with(Function::Order, |_| {}).await;
    let (status, body) = app.push(Function::Order, &requested).await;
    assert_eq!((status, ack_kind(&body)), (200, "duplicate"), "{body}");
    assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
    app.assert_invariants().await;
}

/// 4. Duplicates and reordering: an event before the state it depends on is retried, not
/// swallowed; a failure before the order exists leaves a tombstone the order respects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_out_of_order_and_repeated_end_in_the_right_state() {
    let app = spawn_app().await;
    let id = Uuid::new_v4();
    let reserved = Event::new(
        id,
        EventBody::InventoryReserved {
            order: crate::helpers::jack_widgets(3),
            amount: 30,
        },
    );
    // payments before anything: not recorded, retried later.
    for _ in 0..3 {
        let (status, body) = app.push(Function::Payments, &reserved).await;
        assert_eq!(status, 503, "{body}");
    }
    assert!(
        app.order_doc(id)
            .await
            .is_none_or(|o| o.step("payments").is_none()),
        "nothing recorded"
    );

    let requested = Event::new(
        id,
        EventBody::OrderRequested {
            order: crate::helpers::jack_widgets(3),
        },
    );
    let results = join_all((0..5).map(|_| app.push(Function::Order, &requested))).await;
    assert!(
        results.iter().all(|(status, _)| *status == 200),
        "{results:?}"
    );
    assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
    let (status, body) = app.push(Function::Payments, &reserved).await;
    assert_eq!((status, ack_kind(&body)), (200, "duplicate"), "{body}");
    assert_eq!(app.balance("jack").await, BALANCE - 30, "charged once");
    app.assert_invariants().await;
}

/// 5. A hot item: many concurrent orders on little stock never oversell, with the stock on
/// one document or split over shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_on_a_hot_item_sell_exactly_the_stock() {
    hot_item_sells_exactly_its_stock(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_on_a_sharded_hot_item_sell_exactly_the_stock() {
    hot_item_sells_exactly_its_stock(4).await;
}

async fn hot_item_sells_exactly_its_stock(shards: u32) {
    let mut app = spawn_app().await;
    app.add_item("hot", 1, 20, shards).await;
    let bodies: Vec<_> = (0..50)
        .map(|_| json!({"item": "hot", "quantity": 1, "user": "jack"}))
        .collect();
    let ids = join_all(bodies.into_iter().map(|b| app.place(b))).await;
    let mut completed = 0;
    for id in ids {
        let order = app.wait_terminal(id).await;
        match order["status"].as_str() {
            Some("COMPLETED") => completed += 1,
            _ => assert_eq!(order["reason"], "insufficient-stock", "{order}"),
        }
    }
    assert_eq!(completed, 20, "exactly the stock was sold");
    if shards <= 1 {
        assert_eq!(app.stock("hot").await, 0);
    }
    app.assert_invariants().await;
}

/// 6. Poison messages are parked; later orders still flow (see also bad_input.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_do_not_stop_the_flow() {
    let app = spawn_app().await;
    for function in [
        Function::Order,
        Function::Inventory,
        Function::Payments,
        Function::Janitor,
    ] {
        let (status, body) = app.push_raw(function, b"\x00\xff garbage".to_vec()).await;
        assert_eq!((status, ack_kind(&body)), (200, "parked"));
    }
    let id = app
        .place(json!({"item": "widget", "quantity": 1, "user": "jack"}))
        .await;
    assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
    app.assert_invariants().await;
}

/// 7. A saga whose payment never arrives times out and is compensated; the late payment
/// event afterwards changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_saga_times_out_and_its_late_event_changes_nothing() {
    let mut app = spawn_app_with(Options {
        saga_timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    app.stop(Function::Payments).await;
    let id = app
        .place(json!({"item": "widget", "quantity": 8, "user": "jack"}))
        .await;
    app.wait_for_status(id, "INVENTORY_RESERVED").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let report = app.sweep(Function::Janitor).await;
    assert_eq!(report["compensated"], 1, "{report}");
    let order = app.get_order(id).await;
    assert_eq!(
        (order["status"].as_str(), order["reason"].as_str()),
        (Some("COMPENSATED"), Some("timeout"))
    );
    assert_eq!(
        app.stock("widget").await,
        WIDGET_STOCK,
        "the reservation was released"
    );

    // Payments comes back; Pub/Sub delivers the waiting inventory-updated event.
    let port = app.ports[&Function::Payments];
    app.start(Function::Payments, port).await;
    let late = app.wait_for_step(id, "payments").await;
    assert!(late.outcome.contains("COMPENSATED"), "{late:?}");
    assert_eq!(late.emitted, None);
    assert_eq!(app.balance("jack").await, BALANCE, "no charge");
    assert_eq!(app.get_order(id).await["status"], "COMPENSATED");
    let again = app.sweep(Function::Janitor).await;
    assert_eq!(again["stuck"], 0, "{again}");
    app.assert_invariants().await;
}

/// Dead letters: a message that keeps failing is dead-lettered by Pub/Sub, and the janitor
/// fails and compensates its saga, so none hangs on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_failing_is_dead_lettered_and_its_saga_compensated() {
    let app = spawn_app_with(Options::dead_letter_after(5)).await;
    // A corrupt catalogue entry: inventory can never read it, and answers 503 every time.
    let id = app.place_on_a_broken_item().await;
    let order = app.wait_terminal(id).await;
    assert_eq!(
        (order["status"].as_str(), order["reason"].as_str()),
        (Some("COMPENSATED"), Some("dead-lettered")),
        "{order}"
    );
    let dead = app
        .pull_until("order-created-sub-dlq-sub", |es| {
            es.iter().any(|e| e.order_id == id)
        })
        .await;
    assert!(
        dead.iter().any(|e| e.order_id == id),
        "operators see the dead letter"
    );
    // The operator repairs the entry; nothing was taken from it meanwhile.
    app.repair_the_broken_item().await;
    app.assert_invariants().await;
}
