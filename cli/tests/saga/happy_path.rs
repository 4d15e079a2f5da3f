use saga_contracts::events::{EventBody, OrderStatus};
use saga_contracts::order::{PaymentStatus, ReservationStatus};
use saga_contracts::topology::Function;
use saga_emulator::seed::{BALANCE, WIDGET_STOCK, WOTSIT_STOCK};
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_completes_once_and_its_payment_event_can_be_pulled() {
    let app = spawn_app().await;

    let response = app
        .post_order(&json!({"item": "widget", "quantity": 5, "user": "jack"}))
        .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let accepted: serde_json::Value = response.json().await.unwrap();
    let id: uuid::Uuid = accepted["order_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(accepted["status"], "PENDING");
    assert_eq!(location, format!("/order/{id}"));

    let order = app.wait_terminal(id).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");
    assert_eq!(order["amount"], 50);
    assert_eq!(app.stock("widget").await, WIDGET_STOCK - 5);
    assert_eq!(app.balance("jack").await, BALANCE - 50);
    let doc = app.order_doc(id).await.unwrap();
    let payment = doc.payment.unwrap();
    assert_eq!(
        (payment.amount, payment.status),
        (50, PaymentStatus::Captured)
    );
    assert_eq!(doc.reservation.unwrap().status, ReservationStatus::Reserved);

    let events = app
        .pull_until("payment-created-sub", |es| {
            es.iter().any(|e| e.order_id == id)
        })
        .await;
    let event = events.iter().find(|e| e.order_id == id).unwrap();
    assert!(matches!(
        event.body,
        EventBody::PaymentCreated { amount: 50, .. }
    ));
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_designs_examples_complete() {
    let app = spawn_app().await;
    let widget = app
        .place(json!({"item": "widget", "quantity": 50, "user": "jack"}))
        .await;
    let wotsit = app
        .place(json!({"item": "wotsit", "quantity": 80, "user": "jill"}))
        .await;
    for id in [widget, wotsit] {
        assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
    }
    assert_eq!(app.stock("widget").await, WIDGET_STOCK - 50);
    assert_eq!(app.stock("wotsit").await, WOTSIT_STOCK - 80);
    assert_eq!(app.balance("jack").await, BALANCE - 500);
    assert_eq!(app.balance("jill").await, BALANCE - 1_200);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_answers_its_health_check() {
    let app = spawn_app().await;
    for function in Function::ALL {
        let response = app.health(function).await;
        assert_eq!(response.status(), 200, "{function}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["function"], function.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_pending_until_the_order_step_has_run() {
    let mut app = spawn_app().await;
    app.stop(Function::Order).await;
    let id = app
        .place(json!({"item": "widget", "quantity": 1, "user": "jack"}))
        .await;
    assert_eq!(
        app.get_order(id).await["status"],
        OrderStatus::Pending.as_str()
    );
    // Pub/Sub keeps redelivering to the stopped function; on the same port again, it completes.
    let port = app.ports[&Function::Order];
    app.start(Function::Order, port).await;
    assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_is_idempotent_and_can_reset_to_the_seed_state() {
    use saga_emulator::{SeedMode, seed};
    let app = spawn_app().await;
    let id = app
        .place(json!({"item": "widget", "quantity": 7, "user": "jack"}))
        .await;
    assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");

    assert_eq!(
        seed(&app.store, SeedMode::IfAbsent).await.unwrap(),
        0,
        "nothing missing"
    );
    assert_eq!(
        app.stock("widget").await,
        WIDGET_STOCK - 7,
        "existing data kept"
    );

    assert_eq!(seed(&app.store, SeedMode::Reset).await.unwrap(), 5);
    assert_eq!(app.stock("widget").await, WIDGET_STOCK);
    assert_eq!(app.balance("jack").await, BALANCE);
    assert_eq!(
        app.balance("penny").await,
        5,
        "one user cannot afford a widget"
    );
}

/// What an order costs on Google Cloud is its Firestore operations: a completed order writes
/// the order once per step and the stock and the balance once each (6), and reads the order
/// with the user or the item at each push step (6), counted by the functions themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_order_writes_six_documents_and_reads_six() {
    let app = spawn_app().await;
    let meters = || async {
        let mut sum = saga_infra::meter::Counts::default();
        for function in Function::ALL {
            sum = sum.plus(&app.meter(function).await.orders);
        }
        sum
    };
    let before = meters().await;
    let id = app
        .place(json!({"item": "widget", "quantity": 1, "user": "jack"}))
        .await;
    // Waited for through the store, not the API: a GET is a read of its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while app.order_doc(id).await.map(|o| o.status()) != Some(OrderStatus::Completed) {
        assert!(std::time::Instant::now() < deadline, "{id} never completed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The last step publishes just after its commit.
    let mut cost = meters().await.since(&before);
    while cost.publishes < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        cost = meters().await.since(&before);
    }
    assert_eq!(
        (cost.writes, cost.billed_reads(), cost.deletes),
        (6, 6, 0),
        "{cost:?}"
    );
    assert_eq!((cost.commits, cost.publishes), (4, 4), "{cost:?}");
    app.assert_invariants().await;
}
