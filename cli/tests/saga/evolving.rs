//! Changing the code while sagas are in flight: events carry their schema version, and orders
//! their records' layout, across a rolling deploy, an event newer than a revision reads is retried and never parked, and no
//! saga is without a backstop (an order stuck before its creation times out; one unreadable
//! order does not stop a sweep; `saga check` reads one snapshot and lists what was parked).

use saga_emulator::seed::WIDGET_STOCK;
use std::time::Duration;

use futures::future::join_all;
use saga_contracts::docs::{ParkedMessage, collections};
use saga_contracts::events::wire::{self, EventVersions};
use saga_contracts::events::{Event, EventBody};
use saga_contracts::order::Layout;
use saga_contracts::topology::Function;
use saga_infra::testing::UnreadableOrder;
use saga_ops::check::{Mode, check};
use serde_json::{Value, json};
use uuid::Uuid;

use saga_infra::config::Config;

use crate::helpers::{Options, Revision, TestApp, ack_kind, spawn_app_with};

/// `n` orders at once, jack's widgets and jill's wotsits in turn.
async fn place_all(app: &TestApp, n: usize) -> Vec<Uuid> {
    join_all((0..n).map(|i| {
        let (item, user) = if i % 2 == 0 {
            ("widget", "jack")
        } else {
            ("wotsit", "jill")
        };
        app.place(json!({"item": item, "quantity": 1, "user": user}))
    }))
    .await
}

/// Replaces `function` by a build that speaks `versions`.
async fn deploy(app: &mut TestApp, function: Function, versions: EventVersions) {
    app.restart_with(function, |c| c.event_versions = versions)
        .await;
}

/// Pub/Sub gives a refused delivery another go after a second, and gives up only after 100.
fn patient_pubsub() -> Options {
    Options::dead_letter_after(100)
}

/// The schema version `step` wrote its event for the order in (`None`: version 1, unversioned).
async fn written_in(app: &TestApp, id: Uuid, step: &str) -> Option<String> {
    let order = app.order_doc(id).await?;
    let emitted = order.step(step)?.emitted.as_ref()?;
    emitted.attributes.get(wire::VERSION).cloned()
}

/// Cloud Run's traffic routing in front of one service during a deploy: each request goes to
/// the revision that serves the traffic, and moving the traffic leaves the requests in flight
/// on the revision they reached ("Rollouts, rollbacks and traffic migration"). A TCP relay
/// (the emulator opens a connection for every push, so a connection is a request).
struct Traffic {
    to: std::sync::Arc<std::sync::Mutex<std::net::SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    async fn serve(port: u16, to: std::net::SocketAddr) -> Traffic {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the service's port");
        let to = std::sync::Arc::new(std::sync::Mutex::new(to));
        let task = tokio::spawn({
            let to = to.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let revision = *to.lock().unwrap();
                    tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(revision).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            }
        });
        Traffic { to, task }
    }

    /// Sends every new request to `revision`.
    fn migrate(&self, revision: &Revision) {
        *self.to.lock().unwrap() = revision.addr;
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_in_both_directions_completes_every_saga() {
    let mut app = spawn_app_with(patient_pubsub()).await;
    // The previous release writes events in version 1 and orders listed; the new build,
    // pinned, does the same while reading both; unpinned, it writes version 2 and packs.
    let previous = |c: &mut Config| {
        c.event_versions = EventVersions::only(1);
        c.order_layout = Layout::Listed;
    };
    let pinned = |c: &mut Config| {
        c.event_versions = EventVersions {
            emit: 1,
            accept: wire::CURRENT,
        };
        c.order_layout = Layout::Listed;
    };
    let current = |c: &mut Config| {
        c.event_versions = EventVersions::default();
        c.order_layout = Layout::Packed;
    };

    // Rolling out (docs/evolving.md): the new build writes version 1 until every revision
    // reads version 2. Inventory, behind Cloud Run's traffic routing, still runs the
    // previous release.
    for function in Function::ALL {
        app.restart_with(function, pinned).await;
    }
    let port = app.ports[&Function::Inventory];
    app.stop(Function::Inventory).await;
    let old = app.revision(Function::Inventory, previous).await;
    let traffic = Traffic::serve(port, old.addr).await;
    let mut ids = place_all(&app, 10).await;
    app.wait_for_step(ids[0], "inventory").await;

    // Inventory rolls forward with those in flight.
    let new = app.revision(Function::Inventory, pinned).await;
    traffic.migrate(&new);
    ids.extend(place_all(&app, 10).await);
    // Nothing packed while a revision that cannot read it may take traffic.
    for (id, order) in app.orders().await {
        assert_eq!(order.layout(), Layout::Listed, "{id}");
    }

    // Every revision reads version 2: the pin is lifted, function by function.
    for function in [
        Function::Payments,
        Function::Janitor,
        Function::Order,
        Function::Frontend,
    ] {
        app.restart_with(function, current).await;
    }
    let unpinned = app.revision(Function::Inventory, current).await;
    traffic.migrate(&unpinned);
    old.stop().await;
    new.stop().await;
    let written_in_2 = place_all(&app, 10).await;
    ids.extend(written_in_2.iter().copied());

    // Rolled back: the previous release takes inventory's traffic again while version 2
    // events flow. It asks for them again (503) rather than parking them.
    let rollback = app.revision(Function::Inventory, previous).await;
    traffic.migrate(&rollback);
    let rolled_back = place_all(&app, 10).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    for id in &rolled_back {
        assert_eq!(app.get_order(*id).await["status"], "ORDER_CREATED", "{id}");
    }
    let parked: Vec<(String, ParkedMessage)> = app.docs(collections::PARKED).await;
    assert!(parked.is_empty(), "nothing parked: {parked:?}");

    // And forward again: every saga completes.
    traffic.migrate(&unpinned);
    ids.extend(rolled_back.iter().copied());
    for id in &ids {
        assert_eq!(app.wait_terminal(*id).await["status"], "COMPLETED", "{id}");
    }
    // The first were carried in version 1 (the current payments read them, upcast), the
    // later ones in version 2.
    assert_eq!(written_in(&app, ids[0], "order").await, None);
    assert_eq!(written_in(&app, ids[0], "inventory").await, None);
    for id in written_in_2.iter().chain(&rolled_back) {
        assert_eq!(
            written_in(&app, *id, "inventory").await.as_deref(),
            Some("2")
        );
        let order = app.order_doc(*id).await.expect("the order");
        assert_eq!(order.layout(), Layout::Packed, "{id}");
    }
    app.assert_invariants().await;
    rollback.stop().await;
    unpinned.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_newer_than_a_revision_reads_is_retried_and_poison_is_still_parked() {
    let mut app = spawn_app_with(Options::default()).await;
    let event = Event::new(
        Uuid::new_v4(),
        EventBody::OrderCreated {
            order: crate::helpers::jack_widgets(1),
        },
    );
    // A version from a future release, with a field nobody reads yet.
    let mut body = saga_infra::push::encode("order-created-sub", "1", &event);
    let data = body["message"]["data"].as_str().unwrap();
    let mut data: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data).unwrap(),
    )
    .unwrap();
    data[wire::VERSION] = json!(wire::CURRENT + 1);
    data["gift_wrap"] = json!(true);
    set_data(&mut body, &data);
    let (status, answer) = app
        .push_raw(Function::Inventory, body.to_string().into_bytes())
        .await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("newer than this revision reads"),
        "{answer}"
    );
    // The current version, to a revision of the previous release: the same.
    deploy(&mut app, Function::Inventory, EventVersions::only(1)).await;
    let (status, _) = app.push(Function::Inventory, &event).await;
    assert_eq!(status, 503);
    let parked: Vec<(String, ParkedMessage)> = app.docs(collections::PARKED).await;
    assert!(parked.is_empty(), "{parked:?}");

    // Poison stays poison: an unknown type in a version it knows.
    data[wire::VERSION] = json!(1);
    data["type"] = json!("order-teleported");
    set_data(&mut body, &data);
    let (status, answer) = app
        .push_raw(Function::Inventory, body.to_string().into_bytes())
        .await;
    assert_eq!((status, ack_kind(&answer)), (200, "parked"), "{answer}");
}

/// The issue's case: an order accepted whose `frontend-sub` delivery was dead-lettered, and
/// the janitor's delivery of that dead letter too, is never created. Here the order step is
/// simply away: the order stays PENDING past the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_stuck_before_its_creation_times_out_and_a_late_creation_changes_nothing() {
    let mut app = spawn_app_with(Options {
        saga_timeout: Duration::from_secs(1),
        ..patient_pubsub()
    })
    .await;
    app.stop(Function::Order).await;
    let id = app
        .place(json!({"item": "widget", "quantity": 3, "user": "jack"}))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.get_order(id).await["status"], "PENDING");

    // saga check sees it...
    let stuck_after = Duration::from_secs(1);
    let report = check(&app.store, &app.baseline, Mode::InFlight { stuck_after })
        .await
        .unwrap();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains(&id.to_string()) && v.contains("stuck: PENDING")),
        "{report}"
    );
    // ...the timeout sweep fails and compensates it...
    let swept = app.sweep(Function::Janitor).await;
    assert_eq!(swept["compensated"], 1, "{swept}");
    let order = app.get_order(id).await;
    assert_eq!(
        (order["status"].as_str(), order["reason"].as_str()),
        (Some("COMPENSATED"), Some("timeout"))
    );
    // ...and the creation that comes late does not bring it back.
    let port = app.ports[&Function::Order];
    app.start(Function::Order, port).await;
    let late = app.wait_for_step(id, "order").await;
    assert!(late.outcome.contains("COMPENSATED"), "{late:?}");
    assert_eq!(late.emitted, None);
    assert_eq!(app.get_order(id).await["status"], "COMPENSATED");
    assert_eq!(app.stock("widget").await, WIDGET_STOCK);
    let report = check(&app.store, &app.baseline, Mode::InFlight { stuck_after })
        .await
        .unwrap();
    assert!(report.holds(), "{report}");
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreadable_order_does_not_stop_the_sweeps() {
    let mut app = spawn_app_with(Options {
        saga_timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    app.stop(Function::Order).await;
    let long_ago = jiff::Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(60);
    app.store
        .set(
            collections::ORDERS,
            "unreadable",
            &UnreadableOrder::pending_since(long_ago),
        )
        .await
        .unwrap();
    let ids = place_all(&app, 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The frontend's sweep publishes the others' events again...
    let outbox = app.sweep(Function::Frontend).await;
    assert_eq!(
        (
            &outbox["due"],
            &outbox["republished"],
            &outbox["unreadable"]
        ),
        (&json!(3), &json!(3), &json!(1)),
        "{outbox}"
    );
    // ...and the janitor's times them out, the unreadable one left alone and counted.
    let swept = app.sweep(Function::Janitor).await;
    assert_eq!(
        (&swept["compensated"], &swept["unreadable"]),
        (&json!(3), &json!(1)),
        "{swept}"
    );
    for id in ids {
        assert_eq!(app.get_order(id).await["status"], "COMPENSATED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_check_in_flight_reads_one_snapshot_and_never_sees_stock_move_under_it() {
    let app = spawn_app_with(Options::default()).await;
    let placing = place_all(&app, 60);
    let checking = async {
        let mut checks = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            let stuck_after = Duration::from_secs(300);
            let report = check(&app.store, &app.baseline, Mode::InFlight { stuck_after })
                .await
                .unwrap();
            assert!(report.holds(), "a check with sagas in flight:\n{report}");
            checks += 1;
            if report.orders.get("COMPLETED") == Some(&60) {
                break;
            }
        }
        checks
    };
    let (ids, checks) = tokio::join!(placing, checking);
    assert!(checks > 3, "{checks} checks ran while orders moved");
    for id in ids {
        app.wait_terminal(id).await;
    }
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_check_lists_parked_messages_and_dead_letters() {
    let app = spawn_app_with(Options::default()).await;
    let (status, _) = app
        .push_raw(
            Function::Inventory,
            br#"{"message":{"data":"!!!","messageId":"m-1"}}"#.to_vec(),
        )
        .await;
    assert_eq!(status, 200);
    let event = Event::new(
        Uuid::new_v4(),
        EventBody::OrderCreated {
            order: crate::helpers::jack_widgets(1),
        },
    );
    let dead = saga_infra::push::encode("order-created-sub", "m-2", &event);
    let data = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        dead["message"]["data"].as_str().unwrap(),
    )
    .unwrap();
    let dead_letter_topic = saga_contracts::topology::PUSH_SUBSCRIPTIONS
        .iter()
        .find(|s| s.name == "order-created-sub")
        .unwrap()
        .dead_letter_topic;
    let attributes = [(
        "CloudPubSubDeadLetterSourceSubscription".to_owned(),
        format!("projects/{}/subscriptions/order-created-sub", app.project),
    )]
    .into_iter()
    .collect();
    app.pubsub()
        .publish(dead_letter_topic, &data, &attributes)
        .await
        .unwrap();

    let hosts = crate::helpers::hosts().await;
    let report = saga::cmd::check::check(saga::cmd::check::CheckArgs {
        target: saga_ops::Target {
            project: app.project.clone(),
            firestore: hosts.firestore.clone(),
            pubsub: hosts.pubsub.clone(),
            cloud: false,
        },
        in_flight: true,
        stuck_after: 420,
    })
    .await
    .unwrap();
    let places: Vec<&str> = report.letters.iter().map(|l| l.place.as_str()).collect();
    assert!(places.contains(&"parked"), "{report}");
    assert!(
        report
            .letters
            .iter()
            .any(|l| l.order_id == event.order_id.to_string() && l.source == "order-created-sub"),
        "{report}"
    );
    assert!(
        report
            .to_string()
            .contains("parked and dead-lettered messages: 2"),
        "{report}"
    );
}

/// Puts `data` in a push body as its message's data, as Pub/Sub encodes it.
fn set_data(body: &mut Value, data: &Value) {
    body["message"]["data"] = json!(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        data.to_string()
    ));
}
