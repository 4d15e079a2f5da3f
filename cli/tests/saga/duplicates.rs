//! At-least-once delivery: the same push many times, some at once, has one effect and
//! re-emits one event id.

use saga_emulator::seed::{BALANCE, WIDGET_STOCK, WOTSIT_STOCK};
use std::collections::HashSet;

use futures::future::join_all;
use saga_contracts::events::{Event, EventBody, FailureReason, OrderDetails};
use saga_contracts::order::ReservationStatus;
use saga_contracts::topology::Function;
use saga_infra::timeline::EntryKind;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, ack_kind, spawn_app};

/// Delivers `event` 20 times to `function`: 10 at once, then 10 one after another. Returns
/// the acks; asserts each is a 200 and that they all name the same emitted event id.
async fn deliver_20_times(app: &TestApp, function: Function, event: &Event) -> Vec<Value> {
    let concurrent = join_all((0..10).map(|_| app.push(function, event))).await;
    let mut acks = Vec::new();
    for (status, ack) in concurrent {
        assert_eq!(status, 200, "{function}: {ack}");
        acks.push(ack);
    }
    for _ in 0..10 {
        let (status, ack) = app.push(function, event).await;
        assert_eq!(status, 200, "{function}: {ack}");
        acks.push(ack);
    }
    let processed = acks.iter().filter(|a| ack_kind(a) == "processed").count();
    assert!(processed <= 1, "{function} ran {processed} times: {acks:?}");
    let emitted: HashSet<String> = acks
        .iter()
        .map(|a| a["emitted_event_id"].to_string())
        .collect();
    assert_eq!(
        emitted.len(),
        1,
        "{function} emitted several ids: {emitted:?}"
    );
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_step_has_one_effect_and_one_event_id_however_often_it_is_delivered() {
    let app = spawn_app().await;
    let id = Uuid::new_v4();
    let order = crate::helpers::jack_widgets(3);

    // order: the first delivery comes from us, so exactly one of ours runs the step.
    let requested = Event::new(
        id,
        EventBody::OrderRequested {
            order: order.clone(),
        },
    );
    let acks = deliver_20_times(&app, Function::Order, &requested).await;
    assert_eq!(
        acks.iter().filter(|a| ack_kind(a) == "processed").count(),
        1
    );

    // inventory and payments: Pub/Sub's own delivery races ours; one of all of them wins.
    let created = Event::new(
        id,
        EventBody::OrderCreated {
            order: order.clone(),
        },
    );
    deliver_20_times(&app, Function::Inventory, &created).await;
    let reserved = Event::new(
        id,
        EventBody::InventoryReserved {
            order: order.clone(),
            amount: 30,
        },
    );
    deliver_20_times(&app, Function::Payments, &reserved).await;

    assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
    assert_eq!(
        app.stock("widget").await,
        WIDGET_STOCK - 3,
        "stock taken once"
    );
    assert_eq!(app.balance("jack").await, BALANCE - 30, "charged once");

    let order = app.order_doc(id).await.unwrap();
    let mut ran: Vec<&str> = order.steps().iter().map(|s| s.step.as_str()).collect();
    ran.sort();
    assert_eq!(
        ran,
        ["inventory", "order", "payments"],
        "each step recorded once"
    );
    let emitted: Vec<&str> = order
        .steps()
        .iter()
        .filter_map(|s| s.emitted.as_ref().map(|e| e.topic.as_str()))
        .collect();
    assert_eq!(emitted.len(), 3, "one outgoing event per step: {emitted:?}");
    // The duplicate deliveries are in the order's history, and changed nothing else.
    let history = saga_infra::timeline::history(&order);
    let duplicates = history
        .iter()
        .filter(|e| e.kind == EntryKind::Duplicate)
        .count();
    assert!(duplicates >= 19, "{duplicates} duplicates noted");

    // Whatever was published twice was the same event.
    let pulled = app
        .pull_until("payment-created-sub", |es| {
            es.iter().any(|e| e.order_id == id)
        })
        .await;
    let ids: HashSet<Uuid> = pulled.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), 1, "{pulled:?}");
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_janitor_compensates_once_however_often_the_error_arrives() {
    let app = spawn_app().await;
    let id = app
        .place(json!({"item": "wotsit", "quantity": 80, "user": "jill", "payment-error": "null"}))
        .await;
    assert_eq!(app.wait_terminal(id).await["status"], "COMPENSATED");

    let failed = Event::new(
        id,
        EventBody::SagaFailed {
            order: OrderDetails {
                item: "wotsit".into(),
                quantity: 80,
                user: "jill".into(),
                payment_error: true,
            },
            reason: FailureReason::PaymentError,
            step: "payments".into(),
        },
    );
    let acks = deliver_20_times(&app, Function::Janitor, &failed).await;
    assert!(acks.iter().all(|a| ack_kind(a) == "duplicate"), "{acks:?}");
    assert_eq!(
        app.stock("wotsit").await,
        WOTSIT_STOCK,
        "released exactly once"
    );
    assert_eq!(app.balance("jill").await, BALANCE);
    let order = app.order_doc(id).await.unwrap();
    let reservation = order
        .reservation
        .expect("the reservation, kept as a record");
    assert_eq!(reservation.status, ReservationStatus::Released);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_replay_returns_the_same_order_and_starts_no_second_saga() {
    let app = spawn_app().await;
    let body = json!({"item": "widget", "quantity": 2, "user": "jack"});
    let post = |key: &'static str, body: Value| {
        let request = app
            .http
            .post(app.url(Function::Frontend, "/order"))
            .header("idempotency-key", key)
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    let responses = join_all((0..5).map(|_| post("order-42", body.clone()))).await;
    let mut ids = HashSet::new();
    let mut replays = 0;
    for response in responses {
        assert_eq!(response.status(), 202);
        replays += usize::from(response.headers().contains_key("idempotent-replayed"));
        let view: Value = response.json().await.unwrap();
        ids.insert(view["order_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(replays, 4);
    let id: Uuid = ids.into_iter().next().unwrap().parse().unwrap();
    assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");

    // Once more after completion: the same order, as it is now.
    let again: Value = post("order-42", body.clone()).await.json().await.unwrap();
    assert_eq!(
        (again["order_id"].as_str(), again["status"].as_str()),
        (Some(id.to_string().as_str()), Some("COMPLETED"))
    );

    // The same key with another body is refused.
    let other = post(
        "order-42",
        json!({"item": "widget", "quantity": 3, "user": "jack"}),
    )
    .await;
    assert_eq!(other.status(), 422);
    let error: Value = other.json().await.unwrap();
    assert_eq!(error["field"], "Idempotency-Key");

    assert_eq!(app.orders().await.len(), 1, "one order for the key");
    assert_eq!(app.stock("widget").await, WIDGET_STOCK - 2);
    app.assert_invariants().await;
}
