//! `saga dlq` as it must work against a deployed project: no `returnImmediately`, redrive in
//! pull → publish → acknowledge batches, every letter back to the subscription it came from,
//! and a letter whose source Pub/Sub did not record left in place and reported.

use std::collections::BTreeMap;

use saga_contracts::events::{Event, EventBody, FailureReason};
use saga_ops::{self as ops, Selection};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};

/// A dead letter as Pub/Sub forwards it: the event, and the source attributes it adds
/// ("Dead-letter topics"), unless `source` is `None`.
fn letter(body: EventBody, source: Option<&str>) -> (Vec<u8>, BTreeMap<String, String>) {
    let event = Event::new(Uuid::new_v4(), body);
    let mut attributes: BTreeMap<String, String> = event
        .attributes()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    if let Some(source) = source {
        attributes.insert(
            "CloudPubSubDeadLetterSourceSubscription".into(),
            source.into(),
        );
        attributes.insert(
            "CloudPubSubDeadLetterSourceDeliveryCount".into(),
            "10".into(),
        );
    }
    (serde_json::to_vec(&event).unwrap(), attributes)
}

/// Replaces a push consumer by nothing, so what is redriven to its topic stays countable in
/// the topic's pull subscription.
async fn delete_subscription(app: &TestApp, name: &str) {
    let url = format!(
        "http://{}/v1/projects/{}/subscriptions/{name}",
        app.pubsub_host, app.project
    );
    let response = app.http.delete(url).send().await.unwrap();
    assert!(response.status().is_success(), "deleting {name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_thousand_dead_letters_are_redriven_in_batches_each_to_where_it_came_from() {
    let app = spawn_app().await;
    let (store, pubsub) = (app.store.clone(), app.pubsub());
    delete_subscription(&app, "error-sub").await;
    delete_subscription(&app, "frontend-sub-dlq-janitor").await;

    // The janitor's dead letters: 1,000 from error-sub, 40 from its dead-letter route of
    // frontend-sub, and 5 whose source was not recorded.
    let failed = || EventBody::SagaFailed {
        order: crate::helpers::jack_widgets(1),
        reason: FailureReason::InsufficientStock,
        step: "inventory".into(),
    };
    let mut letters: Vec<_> = (0..1_000)
        .map(|_| letter(failed(), Some("error-sub")))
        .collect();
    letters.extend((0..40).map(|_| {
        letter(
            EventBody::OrderRequested {
                order: crate::helpers::jack_widgets(1),
            },
            Some("frontend-sub-dlq-janitor"),
        )
    }));
    letters.extend((0..5).map(|_| letter(failed(), None)));
    let ids = pubsub.publish_all("error-sub-dlq", &letters).await.unwrap();
    let unknown: Vec<String> = ids[1_040..].to_vec();

    let report = ops::dlq_redrive(&store, &pubsub, "error-sub-dlq-sub", &Selection::All, false)
        .await
        .unwrap();
    assert_eq!(report.republished, 1_040);
    let mut left = report.left_in_place.clone();
    left.sort();
    let mut expected = unknown.clone();
    expected.sort();
    assert_eq!(left, expected, "letters without a source are reported");

    // Each went back to the topic of the subscription it came from, and only there.
    let from_error_sub = app
        .pull_messages_until("error-cli-sub", |m| m.len() >= 1_000)
        .await;
    assert_eq!(from_error_sub.len(), 1_000);
    assert!(
        from_error_sub
            .iter()
            .all(|(e, a)| e.body.kind() == "saga-failed" && a["redriven"] == "true"),
        "saga-failed letters to error, marked redriven"
    );
    assert!(
        from_error_sub
            .iter()
            .all(|(_, a)| !a.contains_key("CloudPubSubDeadLetterSourceSubscription"))
    );
    let from_route = app
        .pull_messages_until("frontend-sub-dlq-sub", |m| m.len() >= 40)
        .await;
    assert_eq!(from_route.len(), 40);
    assert!(
        from_route
            .iter()
            .all(|(e, _)| e.body.kind() == "order-requested")
    );

    // What was left in place is all that is left, and listing still shows it.
    let listed = ops::dlq_list(&store, &pubsub).await.unwrap();
    let mut in_place: Vec<String> = listed
        .iter()
        .filter(|l| l.place == "error-sub-dlq-sub")
        .map(|l| {
            assert_eq!(l.source, "?", "no source is shown as unknown, not guessed");
            l.id.clone()
        })
        .collect();
    in_place.sort();
    assert_eq!(in_place, expected);
}
