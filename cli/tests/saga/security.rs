//! Safe on the public internet: who is ordering (Firebase Authentication, here its emulator),
//! who may see an order, and limits that hold under abuse.

use std::time::Duration;

use futures::future::join_all;
use saga_contracts::topology::Function;
use saga_emulator::AuthEmulator;
use saga_infra::config::{Endpoint, Limits};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Options, TestApp, auth_emulator, spawn_app_with};

/// A signed-in user of the auth emulator: their id (also their balance document's), token.
async fn user(auth: &AuthEmulator, uid: &str) -> String {
    let email = format!("{uid}@example.com");
    auth.user(uid, &email, "password-1").await.unwrap();
    auth.sign_in(&email, "password-1").await.unwrap()
}

async fn signed_in_app(limits: Option<Limits>) -> TestApp {
    let mut options = Options {
        sign_in: true,
        ..Options::default()
    };
    if let Some(limits) = limits {
        options.limits = limits;
    }
    spawn_app_with(options).await
}

async fn post(app: &TestApp, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = app
        .http
        .post(app.url(Function::Frontend, "/order"))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(app: &TestApp, token: Option<&str>, id: &str) -> u16 {
    let mut request = app
        .http
        .get(app.url(Function::Frontend, &format!("/order/{id}")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_order_as_themselves_and_only_they_see_their_orders() {
    let app = signed_in_app(None).await;
    let auth = auth_emulator().await;
    let (jack, jill) = (user(auth, "jack").await, user(auth, "jill").await);
    let widget = json!({"item": "widget", "quantity": 1});

    // No token, or one that is not the project's: 401, naming the header; nothing written.
    let (status, body) = post(&app, None, widget.clone()).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (401, Some("Authorization"))
    );
    let (status, _) = post(&app, Some("not-a-token"), widget.clone()).await;
    assert_eq!(status, 401);
    assert!(app.orders().await.is_empty());

    // The order is the token's user's; a body naming someone else is refused.
    let (status, body) = post(&app, Some(&jack), widget.clone()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["user"], "jack");
    let id = body["order_id"].as_str().unwrap().to_owned();
    let (status, body) = post(
        &app,
        Some(&jack),
        json!({"item": "widget", "quantity": 1, "user": "jill"}),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (403, Some("user")),
        "{body}"
    );
    let (status, _) = post(
        &app,
        Some(&jack),
        json!({"item": "widget", "quantity": 1, "user": "jack"}),
    )
    .await;
    assert_eq!(status, 202, "naming yourself is fine");

    // Only its owner sees an order; to anyone else it does not exist.
    assert_eq!(get(&app, Some(&jack), &id).await, 200);
    assert_eq!(get(&app, Some(&jill), &id).await, 404);
    assert_eq!(
        get(&app, Some(&jill), &Uuid::new_v4().to_string()).await,
        404
    );
    assert_eq!(get(&app, None, &id).await, 401);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_the_users_own() {
    let app = signed_in_app(None).await;
    let auth = auth_emulator().await;
    let (jack, jill) = (user(auth, "jack").await, user(auth, "jill").await);
    let keyed = |token: &str, quantity: u32| {
        app.http
            .post(app.url(Function::Frontend, "/order"))
            .bearer_auth(token)
            .header("idempotency-key", "k-1")
            .json(&json!({"item": "widget", "quantity": quantity}))
            .send()
    };
    let mine: Value = keyed(&jack, 1).await.unwrap().json().await.unwrap();
    // Jill's same key, with another body: not a reuse of Jack's key (no 422 tells her it
    // exists), but an order of her own.
    let response = keyed(&jill, 2).await.unwrap();
    assert_eq!(response.status(), 202);
    assert!(!response.headers().contains_key("idempotent-replayed"));
    let hers: Value = response.json().await.unwrap();
    assert_ne!(mine["order_id"], hers["order_id"]);
    assert_eq!(hers["user"], "jill");
    // Her key replays her order.
    let again = keyed(&jill, 2).await.unwrap();
    assert!(again.headers().contains_key("idempotent-replayed"));
    assert_eq!(app.orders().await.len(), 2);
}

/// Reads the first `n` server-sent `orders` events of a stream, or what came within `wait`.
async fn events(mut stream: reqwest::Response, n: usize, wait: Duration) -> Vec<Vec<Value>> {
    let mut seen = Vec::new();
    let mut buffer = String::new();
    let _ = tokio::time::timeout(wait, async {
        while seen.len() < n {
            let Ok(Some(chunk)) = stream.chunk().await else {
                return;
            };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let message: String = buffer.drain(..end + 2).collect();
                if let Some(data) = message.lines().find_map(|l| l.strip_prefix("data:")) {
                    seen.push(serde_json::from_str(data.trim()).unwrap_or_default());
                }
            }
        }
    })
    .await;
    seen
}

async fn stream(app: &TestApp, token: Option<&str>) -> reqwest::Response {
    let mut request = app.http.get(app.url(Function::Frontend, "/orders/stream"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_shows_only_the_callers_orders() {
    let app = signed_in_app(None).await;
    let auth = auth_emulator().await;
    let (jack, jill) = (user(auth, "jack").await, user(auth, "jill").await);
    assert_eq!(stream(&app, None).await.status(), 401);
    let jills = stream(&app, Some(&jill)).await;
    assert_eq!(jills.status(), 200);
    let (_, jacks_order) = post(&app, Some(&jack), json!({"item": "widget", "quantity": 1})).await;
    let (_, hers) = post(&app, Some(&jill), json!({"item": "widget", "quantity": 2})).await;
    let seen = events(jills, 4, Duration::from_secs(15)).await;
    let ids: Vec<&Value> = seen.iter().flatten().map(|o| &o["order_id"]).collect();
    assert!(
        ids.contains(&&hers["order_id"]),
        "her order reaches her: {seen:?}"
    );
    assert!(
        !ids.contains(&&jacks_order["order_id"]),
        "his never does: {seen:?}"
    );
    assert!(
        seen.iter().flatten().all(|o| o["user"] == "jill"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_orders_from_one_client_is_held_to_its_rate_and_others_still_order() {
    let limits = Limits {
        post_every: Duration::from_secs(5),
        post_burst: 3,
        ..Limits::default()
    };
    let app = signed_in_app(Some(limits)).await;
    let auth = auth_emulator().await;
    let (jack, jill) = (user(auth, "jack").await, user(auth, "jill").await);
    let widget = json!({"item": "widget", "quantity": 1});
    let burst = join_all((0..10).map(|_| post(&app, Some(&jack), widget.clone()))).await;
    let accepted = burst.iter().filter(|(s, _)| *s == 202).count();
    let limited: Vec<&(u16, Value)> = burst.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!((accepted, limited.len()), (3, 7), "{burst:?}");
    assert!(limited.iter().all(|(_, b)| b["error"].is_string()));
    // 429 says when to come back.
    let response = app
        .http
        .post(app.url(Function::Frontend, "/order"))
        .bearer_auth(&jack)
        .json(&widget)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    // Another client is not held back by his burst.
    assert_eq!(post(&app, Some(&jill), widget.clone()).await.0, 202);
    // Only what was accepted was written.
    assert_eq!(app.orders().await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_opening_500_streams_gets_the_cap_and_orders_still_go_through() {
    let app = spawn_app_with(Options {
        limits: Limits {
            streams_max: 40,
            stream_max: Duration::from_secs(3),
            ..Options::default().limits
        },
        ..Options::default()
    })
    .await;
    let opened = join_all((0..500).map(|_| stream(&app, None))).await;
    let (open, refused): (Vec<_>, Vec<_>) = opened.into_iter().partition(|r| r.status() == 200);
    assert_eq!(open.len(), 40, "the instance's cap");
    assert!(refused.iter().all(|r| r.status() == 503));
    assert!(
        refused
            .iter()
            .all(|r| r.headers().contains_key("retry-after"))
    );
    // Orders are accepted and complete while the streams are held.
    let id = app
        .place(json!({"item": "widget", "quantity": 1, "user": "jack"}))
        .await;
    assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
    // A stream ends after its longest life, giving its slot back.
    let started = std::time::Instant::now();
    let ended = join_all(open.into_iter().map(|s| async move {
        let mut s = s;
        while let Ok(Some(_)) = s.chunk().await {}
    }));
    tokio::time::timeout(Duration::from_secs(20), ended)
        .await
        .expect("streams end after their longest life");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        stream(&app, None).await.status(),
        200,
        "slots are free again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_pages_cost_no_reads_while_nothing_changes() {
    let app = spawn_app_with(Options::default()).await;
    let reads = || async { app.meter(Function::Frontend).await.orders.billed_reads() };
    let pages = join_all((0..5).map(|_| stream(&app, None))).await;
    let mut firsts = Vec::new();
    for page in pages {
        firsts.push(events(page, 1, Duration::from_secs(10)).await);
    }
    assert!(
        firsts.iter().all(|f| f.len() == 1),
        "every page got its list"
    );
    let before = reads().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        reads().await,
        before,
        "five open pages, three idle seconds: no read"
    );
}

/// A TCP proxy to `upstream` that can be cut (a Firestore that goes away under a running
/// function) or stalled (one that keeps its connections open and never answers again).
struct Proxy {
    addr: String,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Copies `from` to `to` until either closes; once `stalled`, holds both open and copies
/// nothing more.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.load(std::sync::atomic::Ordering::SeqCst) {
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let tasks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let accepting = {
            let (tasks, stalled) = (tasks.clone(), stalled.clone());
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let Ok(outbound) = tokio::net::TcpStream::connect(upstream.clone()).await
                    else {
                        continue;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    let mut tasks = tasks.lock().unwrap();
                    tasks.push(tokio::spawn(forward(in_read, out_write, stalled.clone())));
                    tasks.push(tokio::spawn(forward(out_read, in_write, stalled.clone())));
                }
            })
        };
        tasks.lock().unwrap().push(accepting);
        Proxy {
            addr,
            tasks,
            stalled,
        }
    }

    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn stall(&self) {
        self.stalled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_hangs_is_answered_at_its_time_limit() {
    let mut app = spawn_app_with(Options {
        limits: Limits {
            request_timeout: Duration::from_secs(2),
            ..Options::default().limits
        },
        ..Options::default()
    })
    .await;
    let firestore = frontend_through_a_proxy(&mut app).await;
    let widget = json!({"item": "widget", "quantity": 1, "user": "jack"});
    let (status, placed) = post(&app, None, widget.clone()).await;
    assert_eq!(status, 202);
    // Firestore stops answering, and keeps the connections open: nothing fails, everything
    // waits. The time limit answers instead.
    firestore.stall();
    let (status, body) = post(&app, None, widget).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "the request took too long, retry later");
    let id = placed["order_id"].as_str().unwrap();
    assert_eq!(get(&app, None, id).await, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_say_what_to_do_never_what_failed_inside() {
    let mut app = spawn_app_with(Options::default()).await;
    let firestore = frontend_through_a_proxy(&mut app).await;
    let widget = json!({"item": "widget", "quantity": 1, "user": "jack"});
    assert_eq!(post(&app, None, widget.clone()).await.0, 202);
    firestore.cut();
    let (status, body) = post(&app, None, widget).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "the order store is unavailable, retry later");
    let text = body.to_string().to_lowercase();
    for leak in [
        "transport",
        "connect",
        "grpc",
        "tonic",
        "127.0.0.1",
        "firestore",
    ] {
        assert!(!text.contains(leak), "{leak} in {body}");
    }
}

/// Restarts the frontend to reach Firestore through a proxy the test can stall or cut.
async fn frontend_through_a_proxy(app: &mut TestApp) -> Proxy {
    let firestore = Proxy::start(crate::helpers::hosts().await.firestore.clone()).await;
    let via = firestore.addr.clone();
    app.restart_with(Function::Frontend, |c| {
        c.firestore = Endpoint::Emulator(via)
    })
    .await;
    firestore
}
