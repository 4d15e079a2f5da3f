//! `saga chaos`, run as a user runs it: a schedule drawn from a seed, applied while orders
//! flow, and the invariants checked after. Here against the tests' emulators, each run in a
//! project of its own.

use std::process::Output;
use std::time::Duration;

use saga_contracts::docs::{UserDoc, collections};
use saga_contracts::topology::Function;
use saga_infra::chaos::{self, Fault};
use saga_infra::config::Endpoint;
use serde_json::{Value, json};
use tokio::process::Command;
use uuid::Uuid;

use crate::helpers::{TestApp, ack_kind, spawn_app};

fn saga() -> Command {
    crate::helpers::saga()
}

/// `saga chaos` against the emulators `app` runs on, in `project`.
fn chaos(app: &TestApp, project: &str, seed: u64, duration: u64) -> Command {
    let Endpoint::Emulator(firestore) = &app.config.firestore else {
        panic!("tests run on the emulators");
    };
    let port = |host: &str| host.rsplit(':').next().unwrap().to_owned();
    let mut command = saga();
    command
        .args(["chaos", "--seed", &seed.to_string()])
        .args(["--duration", &duration.to_string()])
        .args(["--project", project])
        .args(["--pubsub-port", &port(&app.pubsub_host)])
        .args(["--firestore-port", &port(firestore)])
        .kill_on_drop(true);
    command
}

fn text(out: &Output) -> String {
    format!(
        "{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn a_seed_draws_the_same_schedule_every_time() {
    let schedule = |seed: &str| {
        let mut command = saga();
        command.args([
            "chaos",
            "--seed",
            seed,
            "--duration",
            "60",
            "--schedule-only",
        ]);
        command
    };
    let first = schedule("7").output().await.unwrap();
    let again = schedule("7").output().await.unwrap();
    let other = schedule("8").output().await.unwrap();
    assert!(first.status.success(), "{}", text(&first));
    let first = String::from_utf8_lossy(&first.stdout).into_owned();
    assert_eq!(first, String::from_utf8_lossy(&again.stdout));
    let digest = |s: &str| s.lines().next().unwrap_or_default().to_owned();
    assert!(digest(&first).contains("digest"), "{first}");
    assert_ne!(
        digest(&first),
        digest(&String::from_utf8_lossy(&other.stdout))
    );
    for fault in ["killed", "POST /order"] {
        assert!(first.contains(fault), "{first}");
    }
}

/// The CI's seeds: every fault applied is printed, every saga finishes, the invariants hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_chaos_heals_and_the_invariants_hold() {
    let app = spawn_app().await;
    let mut applied = String::new();
    for seed in [1, 2, 3] {
        let project = format!("chaos-ci-{seed}-{}", &app.project[..6]);
        let out = chaos(&app, &project, seed, 15).output().await.unwrap();
        let said = text(&out);
        assert_eq!(out.status.code(), Some(0), "seed {seed}:\n{said}");
        assert!(said.starts_with("schedule digest"), "{said}");
        assert!(said.contains("applied  t+"), "{said}");
        assert!(said.contains("killed (pid"), "{said}");
        assert!(said.contains("all invariants hold"), "{said}");
        assert!(said.contains("restarted (pid"), "{said}");
        applied.extend(
            said.lines()
                .filter(|l| l.starts_with("applied"))
                .map(|l| l.to_owned() + "\n"),
        );
    }
    // Between them the three seeds apply every fault the proxy applies (those inside a
    // function have a test of their own, below).
    for fault in [
        "duplicate",
        "delay",
        "reorder",
        "answer 503",
        "crash before answering",
        "killed",
    ] {
        assert!(applied.contains(fault), "{fault} never applied:\n{applied}");
    }
}

/// An invariant broken under the run (here a balance changed behind the saga's back) fails
/// the run, exit 1, and says which seed replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_invariant_fails_the_run_and_prints_the_seed_to_replay() {
    let app = spawn_app().await;
    let project = format!("chaos-broken-{}", &app.project[..6]);
    let run = chaos(&app, &project, 5, 12).output();
    let tamper = async {
        let store = saga_infra::store::Store::connect(&project, &app.config.firestore)
            .await
            .unwrap();
        // Once the run has seeded its project and orders flow.
        tokio::time::sleep(Duration::from_secs(8)).await;
        store
            .set(collections::USERS, "penny", &UserDoc { balance: 1_000 })
            .await
            .unwrap();
    };
    let (out, ()) = tokio::join!(run, tamper);
    let out = out.unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("BROKEN: "), "{said}");
    assert!(
        said.contains("replay this schedule with: saga chaos --seed 5 --duration 12"),
        "{said}"
    );
}

/// A fault asked for with `X-Saga-Chaos` happens where it says, once, in a function that
/// honours it; the next delivery (or the client's retry with its key) heals it. Each push
/// step's fault is sent to a chaos revision of inventory while the app's own inventory is
/// away, so only the test delivers; the frontend's to a chaos revision of the frontend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_asked_for_in_a_request_happens_there_once_and_the_next_delivery_heals_it() {
    let mut app = spawn_app().await;
    app.stop(Function::Inventory).await;
    let inventory = app
        .revision(Function::Inventory, |c| c.faults.chaos = true)
        .await;
    let path = Function::Inventory.consumes().next().unwrap().path;
    let mut ids = Vec::new();
    for fault in Fault::ALL {
        let id = app
            .place(json!({"item": "widget", "quantity": 1, "user": "jack"}))
            .await;
        app.wait_for_status(id, "ORDER_CREATED").await;
        let created = app.wait_for_step(id, "order").await;
        let event = created.emitted.unwrap().event().unwrap();
        let body = saga_infra::push::encode("order-created-sub", "1", &event).to_string();
        let push = |fault: Option<Fault>| {
            let mut request = app
                .http
                .post(format!("http://{}{path}", inventory.addr))
                .header("content-type", "application/json")
                .body(body.clone());
            if let Some(fault) = fault {
                request = request.header(chaos::HEADER, fault.name());
            }
            request.send()
        };
        let stock = app.stock("widget").await;
        let answer = push(Some(fault)).await.unwrap();
        assert_eq!(answer.status(), 503, "{fault:?}");
        let recorded = app.order_doc(id).await.unwrap().step("inventory").is_some();
        let taken = stock - app.stock("widget").await;
        // A commit that failed wrote nothing; every other fault comes after the commit.
        let committed = fault != Fault::CommitFails;
        assert_eq!(
            (recorded, taken),
            (committed, i64::from(committed)),
            "{fault:?}"
        );
        // Pub/Sub delivers it again: done now, or found done; the stock is taken once.
        let again: Value = push(None).await.unwrap().json().await.unwrap();
        let expected = if committed { "duplicate" } else { "processed" };
        assert_eq!(ack_kind(&again), expected, "{fault:?}: {again}");
        assert_eq!(stock - app.stock("widget").await, 1, "{fault:?}");
        ids.push(id);
    }
    inventory.stop().await;
    let port = app.ports[&Function::Inventory];
    app.start(Function::Inventory, port).await;

    // The frontend: a failed or half-answered POST is sent again with its key and accepted
    // once; a publish that failed after the commit is the outbox sweep's to do.
    let frontend = app
        .revision(Function::Frontend, |c| {
            c.faults.chaos = true;
            c.outbox_grace = Duration::ZERO;
        })
        .await;
    for fault in Fault::ALL {
        let key = format!("chaos-{}", fault.name());
        let post = |fault: Option<Fault>| {
            let mut request = app
                .http
                .post(format!("http://{}/order", frontend.addr))
                .header("idempotency-key", &key)
                .json(&json!({"item": "widget", "quantity": 1, "user": "jack"}));
            if let Some(fault) = fault {
                request = request.header(chaos::HEADER, fault.name());
            }
            request.send()
        };
        let orders = app.orders().await.len();
        let first = post(Some(fault)).await.unwrap();
        let after = app.orders().await.len() - orders;
        let id = if fault == Fault::PublishFails {
            // Committed and accepted; its event waits for the sweep.
            assert_eq!((first.status().as_u16(), after), (202, 1), "{fault:?}");
            let view: Value = first.json().await.unwrap();
            let id: Uuid = view["order_id"].as_str().unwrap().parse().unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(app.get_order(id).await["status"], "PENDING");
            let swept = app
                .http
                .post(format!(
                    "http://{}{}",
                    frontend.addr,
                    Function::Frontend.sweep_path().unwrap()
                ))
                .send()
                .await
                .unwrap();
            assert!(swept.status().is_success());
            id
        } else {
            let written = usize::from(fault != Fault::CommitFails);
            assert_eq!(
                (first.status().as_u16(), after),
                (503, written),
                "{fault:?}"
            );
            let retried = post(None).await.unwrap();
            assert_eq!(retried.status(), 202, "{fault:?}");
            assert_eq!(app.orders().await.len() - orders, 1, "{fault:?}: one order");
            let view: Value = retried.json().await.unwrap();
            view["order_id"].as_str().unwrap().parse().unwrap()
        };
        ids.push(id);
    }
    for id in ids {
        assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED", "{id}");
    }
    frontend.stop().await;
    app.assert_invariants().await;
}
