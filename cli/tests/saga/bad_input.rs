//! Bad input gets a clear 4xx naming the field and writes nothing; poison pushes are parked.

use saga_contracts::docs::{ParkedMessage, collections};
use saga_contracts::events::{Event, EventBody};
use saga_contracts::topology::Function;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Options, ack_kind, spawn_app, spawn_app_with};

async fn assert_rejected(
    app: &crate::helpers::TestApp,
    request: reqwest::RequestBuilder,
    status: u16,
    field: &str,
) {
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), status, "expected {status} for {field}");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{field}: a JSON error"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["field"], field, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    let _ = app;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_order_is_refused_with_the_field_named_and_nothing_written() {
    let app = spawn_app_with(Options {
        fault_injection: false,
        ..Options::default()
    })
    .await;
    let url = app.url(Function::Frontend, "/order");
    let json_post = |body: String| {
        app.http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
    };
    let long = "x".repeat(65);
    let cases: Vec<(String, &str)> = vec![
        ("{\"item\":".into(), "body"),
        ("[1,2,3]".into(), "body"),
        ("42".into(), "body"),
        (json!({"quantity": 1, "user": "jack"}).to_string(), "item"),
        (
            json!({"item": "widget", "user": "jack"}).to_string(),
            "quantity",
        ),
        (json!({"item": "widget", "quantity": 1}).to_string(), "user"),
        (
            json!({"item": 7, "quantity": 1, "user": "jack"}).to_string(),
            "item",
        ),
        (
            json!({"item": "widget", "quantity": "1", "user": "jack"}).to_string(),
            "quantity",
        ),
        (
            json!({"item": "widget", "quantity": 1.5, "user": "jack"}).to_string(),
            "quantity",
        ),
        (
            json!({"item": "widget", "quantity": 1, "user": ["jack"]}).to_string(),
            "user",
        ),
        (
            json!({"item": "widget", "quantity": 1, "user": "jack", "colour": "red"}).to_string(),
            "colour",
        ),
        (
            json!({"item": "widget", "quantity": 0, "user": "jack"}).to_string(),
            "quantity",
        ),
        (
            json!({"item": "widget", "quantity": -5, "user": "jack"}).to_string(),
            "quantity",
        ),
        (
            json!({"item": "widget", "quantity": 10_000_000_000u64, "user": "jack"}).to_string(),
            "quantity",
        ),
        (
            json!({"item": "", "quantity": 1, "user": "jack"}).to_string(),
            "item",
        ),
        (
            json!({"item": "widget", "quantity": 1, "user": long}).to_string(),
            "user",
        ),
        (
            json!({"item": "a/b", "quantity": 1, "user": "jack"}).to_string(),
            "item",
        ),
        // The fault switch is refused while fault injection is off.
        (
            json!({"item": "widget", "quantity": 1, "user": "jack", "payment-error": "null"})
                .to_string(),
            "payment-error",
        ),
    ];
    for (body, field) in cases {
        assert_rejected(&app, json_post(body), 400, field).await;
    }
    let huge = json!({"item": "widget", "quantity": 1, "user": "x".repeat(20_000)}).to_string();
    assert_rejected(&app, json_post(huge), 413, "body").await;
    let form = app.http.post(&url).body("item=widget&quantity=1&user=jack");
    assert_rejected(&app, form, 415, "Content-Type").await;
    let good = json!({"item": "widget", "quantity": 1, "user": "jack"}).to_string();
    // Keys that are not visible ASCII, or that Firestore cannot use as a document id: 400,
    // never a 503 that a client following the contract would retry forever.
    for key in ["has spaces in it", "a/b", ".", "..", "__x__"] {
        let bad_key = json_post(good.clone()).header("idempotency-key", key);
        assert_rejected(&app, bad_key, 400, "Idempotency-Key").await;
    }
    let not_an_id = app
        .http
        .get(app.url(Function::Frontend, "/order/not-an-id"));
    assert_rejected(&app, not_an_id, 400, "id").await;
    let unknown = app
        .http
        .get(app.url(Function::Frontend, &format!("/order/{}", Uuid::new_v4())));
    assert_rejected(&app, unknown, 404, "id").await;

    assert!(
        app.orders().await.is_empty(),
        "nothing written, so nothing to publish"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_pushes_are_parked_and_acknowledged_and_orders_still_flow() {
    let app = spawn_app().await;
    let order = crate::helpers::jack_widgets(1);
    let wrong_type = Event::new(
        Uuid::new_v4(),
        EventBody::PaymentCreated { order, amount: 10 },
    );
    let unknown_type = json!({"message": {"messageId": "u1", "data": base64_json(json!({
        "event_id": Uuid::new_v4(), "order_id": Uuid::new_v4(),
        "occurred_at": "2026-01-01T00:00:00Z", "type": "order-teleported"}))}});
    for function in [
        Function::Order,
        Function::Inventory,
        Function::Payments,
        Function::Janitor,
    ] {
        let (status, ack) = app.push_raw(function, b"not json at all".to_vec()).await;
        assert_eq!(
            (status, ack_kind(&ack)),
            (200, "parked"),
            "{function}: {ack}"
        );
        assert!(
            ack["reason"]
                .as_str()
                .unwrap()
                .contains("not a Pub/Sub push envelope")
        );
    }
    let (status, ack) = app
        .push_raw(Function::Order, unknown_type.to_string().into_bytes())
        .await;
    assert_eq!((status, ack_kind(&ack)), (200, "parked"), "{ack}");
    let (status, ack) = app.push(Function::Order, &wrong_type).await;
    assert_eq!((status, ack_kind(&ack)), (200, "parked"), "{ack}");
    assert!(
        ack["reason"].as_str().unwrap().contains("payment-created"),
        "{ack}"
    );

    let parked: Vec<(String, ParkedMessage)> = app.docs(collections::PARKED).await;
    assert_eq!(parked.len(), 6, "{parked:?}");
    assert!(
        parked
            .iter()
            .all(|(_, p)| !p.reason.is_empty() && !p.body.is_empty())
    );
    assert!(
        app.orders().await.is_empty(),
        "a stray event marks no step done"
    );

    let id = app
        .place(json!({"item": "widget", "quantity": 1, "user": "jack"}))
        .await;
    assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
    app.assert_invariants().await;
}

fn base64_json(value: Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(value.to_string())
}
