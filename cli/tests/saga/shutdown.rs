//! Shutdown as Cloud Run does it: SIGTERM, then SIGKILL 10 s later. A function with open
//! live streams stops within that time, and what it accepted is not lost.

use std::process::Stdio;
use std::time::{Duration, Instant};

use saga_contracts::topology::Function;
use serde_json::json;
use tokio::process::Command;

use crate::helpers::spawn_app;

/// Cloud Run's grace period between SIGTERM and SIGKILL.
const SIGKILL_AFTER: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_with_open_streams_stops_within_cloud_runs_grace_and_loses_nothing() {
    let mut app = spawn_app().await;
    // The frontend as its container runs it: its own process, configured from the environment.
    app.stop(Function::Frontend).await;
    let port = app.ports[&Function::Frontend];
    let hosts = crate::helpers::hosts().await;
    let mut frontend = Command::new(env!("CARGO_BIN_EXE_saga"))
        .args(["serve", "frontend"])
        .env("PORT", port.to_string())
        .env("GOOGLE_CLOUD_PROJECT", &app.project)
        .env("PUBSUB_EMULATOR_HOST", &hosts.pubsub)
        .env("FIRESTORE_EMULATOR_HOST", &hosts.firestore)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the frontend");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !saga_emulator::stack::http_ok(port, "/healthz").await {
        assert!(Instant::now() < deadline, "the frontend did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Three open pages, each stream answered at least once.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let response = app
            .http
            .get(app.url(Function::Frontend, "/orders/stream"))
            .send()
            .await
            .expect("opening a stream");
        assert_eq!(response.status(), 200);
        let mut body = response;
        let first = tokio::time::timeout(Duration::from_secs(10), body.chunk()).await;
        assert!(matches!(first, Ok(Ok(Some(_)))), "the stream answers");
        streams.push(body);
    }
    // An order accepted just before SIGTERM comes.
    let id = app
        .place(json!({"item": "widget", "quantity": 1, "user": "jack"}))
        .await;
    let pid = frontend.id().expect("a running frontend");
    let asked = Instant::now();
    let sent = saga_emulator::process::signal(pid, "TERM").expect("kill");
    assert!(sent);
    let exited = tokio::time::timeout(SIGKILL_AFTER, frontend.wait()).await;
    let took = asked.elapsed();
    let status = exited
        .unwrap_or_else(|_| {
            panic!("still running {SIGKILL_AFTER:?} after SIGTERM: Cloud Run would SIGKILL it")
        })
        .expect("waiting for the frontend");
    assert!(status.success(), "stopped cleanly: {status}");
    // Every stream ended: the server closed them, it did not hang on them.
    for mut body in streams {
        let end = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(Some(_)) = body.chunk().await {}
        })
        .await;
        assert!(end.is_ok(), "a stream still open after the process exited");
    }
    // The order accepted just before SIGTERM was published before its 202: it completes
    // with the frontend gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = app.order_doc(id).await.map(|o| o.status());
        if status == Some(saga_contracts::events::OrderStatus::Completed) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "order {id} is {status:?} ({took:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
