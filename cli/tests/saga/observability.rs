//! Seeing and steering a running saga: one trace per saga, Cloud Logging lines that carry
//! it, the timeline, replay, and dead letters.

use saga_emulator::seed::WIDGET_STOCK;
use std::time::Duration;

use saga_contracts::docs::{ParkedMessage, collections};
use saga_contracts::events::EventBody;
use saga_contracts::topology::Function;
use saga_contracts::trace::TraceContext;
use saga_ops::{self as ops, ReplayArgs, Selection, Target};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Options, TestApp, logs, spawn_app, spawn_app_with};

const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn target(app: &TestApp) -> Target {
    Target {
        project: app.project.clone(),
        firestore: match &app.config.firestore {
            saga_infra::config::Endpoint::Emulator(h) => h.clone(),
            saga_infra::config::Endpoint::Cloud => String::new(),
        },
        pubsub: app.pubsub_host.clone(),
        cloud: false,
    }
}

async fn place_traced(app: &TestApp, body: Value) -> Uuid {
    let response = app
        .http
        .post(app.url(Function::Frontend, "/order"))
        .header("traceparent", CALLER)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let view: Value = response.json().await.unwrap();
    view["order_id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_is_one_trace_from_the_caller_through_every_step() {
    let app = spawn_app().await;
    let caller = TraceContext::parse(CALLER).unwrap();
    let id = place_traced(
        &app,
        json!({"item": "widget", "quantity": 2, "user": "jack"}),
    )
    .await;
    assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");

    // The attribute travels with the events...
    let pulled = app
        .pull_messages_until("payment-created-sub", |ms| {
            ms.iter().any(|(e, _)| e.order_id == id)
        })
        .await;
    let (_, attributes) = pulled.iter().find(|(e, _)| e.order_id == id).unwrap();
    let last = TraceContext::parse(&attributes["traceparent"]).expect("a traceparent attribute");
    assert_eq!(last.trace_id, caller.trace_id);
    assert_ne!(last.span_id, caller.span_id);

    // ...and every log line of the order carries the same trace; each step's span is a
    // child of the span that published what it consumed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines: Vec<Value> = logs()
        .lines()
        .into_iter()
        .filter(|l| l["logging.googleapis.com/labels"]["order_id"] == id.to_string())
        .collect();
    let trace = format!("projects/saga-tests/traces/{}", caller.trace_id_hex());
    assert!(lines.len() >= 5, "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| l["logging.googleapis.com/trace"] == trace.as_str()),
        "{lines:#?}"
    );
    let span_of = |step: &str| {
        lines
            .iter()
            .find(|l| l["step"] == step)
            .map(|l| {
                (
                    l["logging.googleapis.com/spanId"].clone(),
                    l["parent_span_id"].clone(),
                )
            })
            .unwrap_or_else(|| panic!("no log line from {step}"))
    };
    let chain = ["frontend", "order", "inventory", "payments"];
    assert_eq!(span_of("frontend").1, caller.span_id_hex().as_str());
    for pair in chain.windows(2) {
        assert_eq!(
            span_of(pair[1]).1,
            span_of(pair[0]).0,
            "{} is not a child of {}",
            pair[1],
            pair[0]
        );
    }
    // Each push step's "step done" line says where its hop's time went (how long Pub/Sub
    // held the message, how long the step took to answer) and the order's status after it.
    let done = |step: &str| {
        lines
            .iter()
            .find(|l| l["step"] == step && l["message"] == "step done")
            .unwrap_or_else(|| panic!("no step done line from {step}: {lines:#?}"))
    };
    for (step, status) in [
        ("order", "ORDER_CREATED"),
        ("inventory", "INVENTORY_RESERVED"),
        ("payments", "COMPLETED"),
    ] {
        let line = done(step);
        assert_eq!(line["status"], status, "{line}");
        assert!(
            line["delivery_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{line}"
        );
        let committed = line["committed_ms"].as_f64().expect("committed_ms");
        assert!(
            line["handled_ms"]
                .as_f64()
                .is_some_and(|ms| ms >= committed && committed > 0.0),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_shows_its_history_and_saga_trace_prints_it() {
    let app = spawn_app().await;
    let id = app
        .place(json!({"item": "wotsit", "quantity": 1, "user": "jill", "payment-error": "x"}))
        .await;
    let order = app.wait_terminal(id).await;
    assert_eq!(order["status"], "COMPENSATED");
    let order = app.get_order(id).await;
    let steps: Vec<(String, String, String)> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let s = |k: &str| h[k].as_str().unwrap().to_owned();
            (s("step"), s("kind"), s("event_type"))
        })
        .collect();
    let expected = [
        ("frontend", "consumed", "order-request"),
        ("frontend", "emitted", "order-requested"),
        ("order", "consumed", "order-requested"),
        ("order", "emitted", "order-created"),
        ("inventory", "consumed", "order-created"),
        ("inventory", "emitted", "inventory-reserved"),
        ("payments", "consumed", "inventory-reserved"),
        ("payments", "emitted", "saga-failed"),
        ("janitor", "consumed", "saga-failed"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(steps, expected);
    let last = order["history"].as_array().unwrap().last().unwrap().clone();
    assert!(
        last["outcome"]
            .as_str()
            .unwrap()
            .contains("released 1 wotsit"),
        "{last}"
    );

    let store = target(&app).store().await.unwrap();
    let text = ops::trace(&store, &id.to_string()).await.unwrap();
    assert!(text.contains("COMPENSATED (payment-error)"), "{text}");
    for step in ["frontend", "order", "inventory", "payments", "janitor"] {
        assert!(text.contains(step), "{text}");
    }
    assert!(text.contains("total"), "{text}");
    assert!(matches!(
        ops::trace(&store, &Uuid::new_v4().to_string()).await,
        Err(ops::OpsError::NoOrder(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_history_reaches_consumers_and_changes_nothing_for_those_that_had_it() {
    let app = spawn_app().await;
    let start = jiff::Timestamp::now();
    let id = app
        .place(json!({"item": "widget", "quantity": 3, "user": "jack"}))
        .await;
    assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
    let first = app
        .pull_until("payment-created-sub", |es| {
            es.iter().any(|e| e.order_id == id)
        })
        .await;

    let store = target(&app).store().await.unwrap();
    let pubsub = target(&app).pubsub().unwrap();
    let args = |topic: &str| ReplayArgs {
        target: target(&app),
        topic: topic.into(),
        since: start,
        until: None,
        order: Some(id.to_string()),
        to_topic: None,
        dry_run: false,
    };
    // A consumer of payment-created catches up: the same event, marked as a replay.
    let replayed = ops::replay(&store, &pubsub, &args("payment-created"), false)
        .await
        .unwrap();
    assert_eq!((replayed.matched, replayed.published), (1, 1));
    let again = app
        .pull_messages_until("payment-created-sub", |ms| {
            ms.iter().any(|(e, _)| e.order_id == id)
        })
        .await;
    let (event, attributes) = again.iter().find(|(e, _)| e.order_id == id).unwrap();
    assert_eq!(
        event.event_id,
        first.iter().find(|e| e.order_id == id).unwrap().event_id
    );
    assert_eq!(attributes.get("replay").map(String::as_str), Some("true"));
    assert!(matches!(event.body, EventBody::PaymentCreated { .. }));

    // Replaying into the saga itself: inventory already did it, nothing changes.
    let replayed = ops::replay(&store, &pubsub, &args("order-created"), false)
        .await
        .unwrap();
    assert_eq!(replayed.published, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let history = app.get_order(id).await["history"].clone();
        if history
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["kind"] == "duplicate" && h["step"] == "inventory")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{history}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.stock("widget").await, WIDGET_STOCK - 3);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_with_their_reason_and_redriven_once_fixed() {
    let app = spawn_app_with(Options::dead_letter_after(5)).await;
    let store = target(&app).store().await.unwrap();
    let pubsub = target(&app).pubsub().unwrap();

    // A parked message, and a dead letter (a catalogue entry inventory cannot read).
    let (status, _) = app.push_raw(Function::Order, b"not json".to_vec()).await;
    assert_eq!(status, 200);
    let id = app.place_on_a_broken_item().await;
    assert_eq!(app.wait_terminal(id).await["reason"], "dead-lettered");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let letters = ops::dlq_list(&store, &pubsub).await.unwrap();
        if letters.iter().any(|l| l.order_id == id.to_string()) {
            break letters;
        }
        assert!(std::time::Instant::now() < deadline, "{letters:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let parked = letters
        .iter()
        .find(|l| l.place == "parked")
        .expect("the parked message");
    assert_eq!(parked.source, "frontend-sub");
    assert!(
        parked.reason.contains("not a Pub/Sub push envelope"),
        "{parked:?}"
    );
    let dead = letters
        .iter()
        .find(|l| l.order_id == id.to_string())
        .unwrap();
    assert_eq!(dead.place, "order-created-sub-dlq-sub");
    assert_eq!(dead.source, "order-created-sub");
    assert_eq!(dead.event_type, "order-created");
    assert!(dead.reason.contains("dead-lettered"), "{dead:?}");
    // Listing leaves them where they are.
    let listed_again = ops::dlq_list(&store, &pubsub).await.unwrap();
    assert!(listed_again.iter().any(|l| l.id == dead.id));

    // The cause is fixed; the dead letter goes back to order-created, and inventory takes it
    // (the saga was compensated meanwhile, so it takes nothing).
    app.repair_the_broken_item().await;
    let redriven = ops::dlq_redrive(
        &store,
        &pubsub,
        &dead.place,
        &Selection::Id(dead.id.clone()),
        false,
    )
    .await
    .unwrap();
    assert_eq!(redriven.republished, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let record = loop {
        if let Some(r) = app
            .order_doc(id)
            .await
            .and_then(|o| o.step("inventory").cloned())
        {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the redriven message never reached inventory"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(record.outcome.contains("COMPENSATED"), "{record:?}");
    let after = ops::dlq_list(&store, &pubsub).await.unwrap();
    assert!(
        !after.iter().any(|l| l.id == dead.id),
        "redriven messages leave the dead-letter queue"
    );

    // A parked body that was never a Pub/Sub message cannot be redriven, and says so.
    let redriven = ops::dlq_redrive(&store, &pubsub, "parked", &Selection::All, false)
        .await
        .unwrap();
    assert_eq!((redriven.republished, redriven.unrecoverable), (0, 1));
    assert!(matches!(
        ops::dlq_redrive(&store, &pubsub, "no-such-place", &Selection::All, false).await,
        Err(ops::OpsError::Usage(_))
    ));
    let parked: Vec<(String, ParkedMessage)> = app.docs(collections::PARKED).await;
    assert_eq!(parked.len(), 1, "kept until it can be redriven");
    app.assert_invariants().await;
}
