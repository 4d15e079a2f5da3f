use saga_contracts::events::{Event, EventBody, FailureReason};
use saga_contracts::order::ReservationStatus;
use saga_contracts::topology::Function;
use saga_emulator::seed::{BALANCE, WIDGET_STOCK, WOTSIT_STOCK};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{ack_kind, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_enough_stock_is_compensated_and_nothing_moves() {
    let app = spawn_app().await;
    let id = app
        .place(json!({"item": "wotsit", "quantity": 500000, "user": "jill"}))
        .await;
    let order = app.wait_terminal(id).await;
    assert_eq!(order["status"], "COMPENSATED");
    assert_eq!(order["reason"], "insufficient-stock");
    assert_eq!(app.stock("wotsit").await, WOTSIT_STOCK);
    assert_eq!(app.balance("jill").await, BALANCE);
    assert!(app.order_doc(id).await.unwrap().reservation.is_none());

    // The failure is visible on error-cli-sub without stealing it from the janitor.
    let events = app
        .pull_until("error-cli-sub", |es| es.iter().any(|e| e.order_id == id))
        .await;
    let failed = events.iter().find(|e| e.order_id == id).unwrap();
    assert!(matches!(
        &failed.body,
        EventBody::SagaFailed { reason: FailureReason::InsufficientStock, step, .. } if step == "inventory"
    ));
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_payment_releases_exactly_the_reserved_stock() {
    let app = spawn_app().await;
    let id = app
        .place(json!({"item": "wotsit", "quantity": 80, "user": "jill", "payment-error": "null"}))
        .await;
    let order = app.wait_terminal(id).await;
    assert_eq!(order["status"], "COMPENSATED");
    assert_eq!(order["reason"], "payment-error");
    assert_eq!(app.stock("wotsit").await, WOTSIT_STOCK);
    assert_eq!(app.balance("jill").await, BALANCE);
    let doc = app.order_doc(id).await.unwrap();
    let reservation = doc.reservation.unwrap();
    assert_eq!(
        reservation.status,
        ReservationStatus::Released,
        "kept as an audit record"
    );
    assert!(doc.payment.is_none());
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_payment_failure_an_unknown_user_and_an_unknown_item_are_compensated() {
    let app = spawn_app().await;
    let poor = app
        .place(json!({"item": "widget", "quantity": 1, "user": "penny"}))
        .await;
    let stranger = app
        .place(json!({"item": "widget", "quantity": 1, "user": "nobody"}))
        .await;
    let gadget = app
        .place(json!({"item": "gadget", "quantity": 1, "user": "jack"}))
        .await;
    for (id, reason) in [
        (poor, "insufficient-funds"),
        (stranger, "unknown-user"),
        (gadget, "unknown-item"),
    ] {
        let order = app.wait_terminal(id).await;
        assert_eq!(
            (order["status"].as_str(), order["reason"].as_str()),
            (Some("COMPENSATED"), Some(reason))
        );
    }
    // The unknown user failed before anything was reserved.
    let stranger = app.order_doc(stranger).await.unwrap();
    assert!(stranger.step("inventory").is_none());
    assert!(stranger.reservation.is_none());
    assert_eq!(app.stock("widget").await, WIDGET_STOCK);
    assert_eq!(app.balance("penny").await, 5);
    assert_eq!(app.balance("jack").await, BALANCE);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_that_overtakes_the_order_leaves_a_tombstone_the_late_order_respects() {
    let app = spawn_app().await;
    let id = Uuid::new_v4();
    let order = crate::helpers::jack_widgets(2);
    let failed = Event::new(
        id,
        EventBody::SagaFailed {
            order: order.clone(),
            reason: FailureReason::Timeout,
            step: "test".into(),
        },
    );
    let (status, ack) = app.push(Function::Janitor, &failed).await;
    assert_eq!((status, ack_kind(&ack)), (200, "processed"), "{ack}");

    let late = Event::new(id, EventBody::OrderRequested { order });
    let (status, ack) = app.push(Function::Order, &late).await;
    assert_eq!((status, ack_kind(&ack)), (200, "processed"), "{ack}");
    assert_eq!(
        ack["emitted_event_id"],
        serde_json::Value::Null,
        "no order-created: {ack}"
    );

    let order = app.get_order(id).await;
    assert_eq!(
        (order["status"].as_str(), order["reason"].as_str()),
        (Some("COMPENSATED"), Some("timeout"))
    );
    assert_eq!(app.stock("widget").await, WIDGET_STOCK);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_payment_gives_a_sharded_item_back_exactly_what_it_took_from_each_shard() {
    use saga_contracts::docs::{StockShard, collections};
    let mut app = crate::helpers::spawn_app().await;
    app.add_item("gizmo", 2, 10, 4).await;
    let shards_before: Vec<(String, StockShard)> = app.docs(collections::STOCK_SHARDS).await;
    // 7 units: more than any one shard holds, so it takes from several.
    let id = app
        .place(json!({"item": "gizmo", "quantity": 7, "user": "jack", "payment-error": "x"}))
        .await;
    let order = app.wait_terminal(id).await;
    assert_eq!(order["reason"], "payment-error");
    let reservation = app.order_doc(id).await.unwrap().reservation.unwrap();
    assert!(reservation.allocations.len() >= 2, "{reservation:?}");
    assert_eq!(
        reservation
            .allocations
            .iter()
            .map(|a| a.quantity)
            .sum::<i64>(),
        7
    );
    let shards_after: Vec<(String, StockShard)> = app.docs(collections::STOCK_SHARDS).await;
    assert_eq!(shards_after, shards_before, "every shard back where it was");

    let ok = app
        .place(json!({"item": "gizmo", "quantity": 10, "user": "jack"}))
        .await;
    assert_eq!(
        app.wait_terminal(ok).await["status"],
        "COMPLETED",
        "all 10 can still be sold"
    );
    app.assert_invariants().await;
}
