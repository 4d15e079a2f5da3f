//! `saga up`, run as a user runs it: everything starts, an order completes, Ctrl-C stops
//! everything it started.

use std::process::Stdio;
use std::time::{Duration, Instant};

use saga_emulator::{free_port, is_ready};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn saga() -> Command {
    Command::new(env!("CARGO_BIN_EXE_saga"))
}

/// Five consecutive free ports for the functions.
fn free_block() -> u16 {
    loop {
        let start = free_port().expect("a free port");
        if start < 60_000
            && (start..start + 5).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return start;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_up_runs_the_stack_and_ctrl_c_stops_all_of_it() {
    let (pubsub, firestore, frontend) = (free_port().unwrap(), free_port().unwrap(), free_block());
    let logs = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("saga-up");
    let mut child = saga()
        .args(["up", "--project", "saga-up-test"])
        .args(["--pubsub-port", &pubsub.to_string()])
        .args(["--firestore-port", &firestore.to_string()])
        .args(["--frontend-port", &frontend.to_string()])
        .arg("--log-dir")
        .arg(&logs)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting saga up");

    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("Ctrl-C stops everything") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "saga up did not come up: {banner}");
    for expected in [
        format!("http://127.0.0.1:{frontend}/order"),
        "gcloud pubsub subscriptions pull payment-created-sub --auto-ack".into(),
        format!("CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB=http://127.0.0.1:{pubsub}/"),
        "CLOUDSDK_CORE_PROJECT=saga-up-test".into(),
    ] {
        assert!(
            banner.contains(&expected),
            "banner lacks {expected}:\n{banner}"
        );
    }

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{frontend}");
    let accepted: Value = http
        .post(format!("{base}/order"))
        .json(&json!({"item": "widget", "quantity": 5, "user": "jack", "payment-error": "null"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["order_id"]
        .as_str()
        .expect("an order id")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let order: Value = http
            .get(format!("{base}/order/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // saga up turns fault injection on: the original design's fault switch works.
        if order["status"] == "COMPENSATED" {
            assert_eq!(order["reason"], "payment-error");
            break;
        }
        assert!(Instant::now() < deadline, "{order}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let pid = child.id().expect("running").to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("saga up stops on Ctrl-C")
        .unwrap();
    assert!(status.success(), "{status}");
    for port in frontend..frontend + 5 {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err(),
            "a function still listens on {port}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while is_ready(&format!("127.0.0.1:{pubsub}")).await
        || is_ready(&format!("127.0.0.1:{firestore}")).await
    {
        assert!(Instant::now() < deadline, "the emulators outlived saga up");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `saga up --auth`: the Firebase Authentication emulator with the demo users; orders only
/// from a signed-in user, for themselves; Ctrl-C stops the auth emulator too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_up_with_auth_takes_orders_from_signed_in_users_only() {
    let (pubsub, firestore, frontend, auth) = (
        free_port().unwrap(),
        free_port().unwrap(),
        free_block(),
        free_port().unwrap(),
    );
    // On a fresh clone the first use installs firebase-tools with npm (a minute or more
    // beside the other tests); that is setup, not what this test times.
    tokio::task::spawn_blocking(saga_emulator::auth::firebase_cli)
        .await
        .unwrap()
        .expect("installing firebase-tools");
    let logs = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("saga-up-auth");
    std::fs::create_dir_all(&logs).unwrap();
    let stderr = logs.join("saga-up.stderr");
    let mut child = saga()
        .args(["up", "--auth", "--project", "saga-up-auth"])
        .args(["--pubsub-port", &pubsub.to_string()])
        .args(["--firestore-port", &firestore.to_string()])
        .args(["--frontend-port", &frontend.to_string()])
        .args(["--auth-port", &auth.to_string()])
        .arg("--log-dir")
        .arg(&logs)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .expect("starting saga up");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    let ready = tokio::time::timeout(Duration::from_secs(240), async {
        while let Ok(Some(line)) = lines.next_line().await {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("Ctrl-C stops everything") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        ready,
        Ok(true),
        "saga up --auth did not come up: {banner}\n{}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    assert!(banner.contains("jack@example.com"), "{banner}");

    let http = reqwest::Client::new();
    let signed_in: Value = http
        .post(format!(
            "http://127.0.0.1:{auth}/identitytoolkit.googleapis.com/v1/accounts:signInWithPassword?key=emulator"
        ))
        .json(&json!({"email": "jack@example.com", "password": saga::up::DEMO_PASSWORD, "returnSecureToken": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = signed_in["idToken"].as_str().expect("a token").to_owned();
    let order = json!({"item": "widget", "quantity": 1});
    let base = format!("http://127.0.0.1:{frontend}");
    let refused = http
        .post(format!("{base}/order"))
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let accepted = http
        .post(format!("{base}/order"))
        .bearer_auth(&token)
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let accepted: Value = accepted.json().await.unwrap();
    assert_eq!(accepted["user"], "jack");

    let pid = child.id().expect("running").to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("saga up stops on Ctrl-C")
        .unwrap();
    assert!(status.success(), "{status}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", auth))
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the auth emulator outlived saga up"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn saga_up_without_gcloud_says_what_to_install_and_fails() {
    let output = saga()
        .args(["up", "--frontend-port", &free_block().to_string()])
        .args(["--pubsub-port", &free_port().unwrap().to_string()])
        .args(["--firestore-port", &free_port().unwrap().to_string()])
        .env("PATH", "/nonexistent")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gcloud is not installed"), "{stderr}");
    assert!(stderr.contains("pubsub-emulator"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_up_from_a_directory_without_the_function_binaries_names_them_and_starts_nothing() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-function-binaries");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("order"), "").unwrap();
    let pubsub = free_port().unwrap();
    let output = saga()
        .args(["up", "--frontend-port", &free_block().to_string()])
        .args(["--pubsub-port", &pubsub.to_string()])
        .args(["--firestore-port", &free_port().unwrap().to_string()])
        .arg("--functions-from")
        .arg(&dir)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no binary for frontend, inventory, payments, janitor")
            && stderr.contains("cargo build --release --workspace --bins"),
        "{stderr}"
    );
    assert!(!stderr.contains("Starting the emulators"), "{stderr}");
    assert!(!is_ready(&format!("127.0.0.1:{pubsub}")).await);
}
