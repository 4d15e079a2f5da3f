//! `saga up`, run as a user runs it: everything starts, an order completes, Ctrl-C stops
//! everything it started.

use std::process::Stdio;
use std::time::{Duration, Instant};

use saga_emulator::{free_port, is_ready};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn saga() -> Command {
    crate::helpers::saga()
}

/// Five consecutive free ports for the functions.
fn free_block() -> u16 {
    saga_emulator::free_block(5).expect("five free ports")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_up_runs_the_stack_and_ctrl_c_stops_all_of_it() {
    let up = Up::start_with("saga-up-test", &[], Duration::from_secs(120)).await;
    let (pubsub, firestore, frontend) = (up.pubsub, up.firestore, up.frontend);
    let banner = up.banner.clone();
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

    up.interrupt().await;
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
    // On a fresh clone the first use installs firebase-tools with npm (a minute or more
    // beside the other tests); that is setup, not what this test times.
    tokio::task::spawn_blocking(saga_emulator::auth::firebase_cli)
        .await
        .unwrap()
        .expect("installing firebase-tools");
    let auth = free_port().unwrap();
    let auth_port = auth.to_string();
    let extra = ["--auth", "--auth-port", auth_port.as_str()];
    let up = Up::start_with("saga-up-auth", &extra, Duration::from_secs(240)).await;
    let (frontend, banner) = (up.frontend, up.banner.clone());
    assert!(banner.contains("jack@example.com"), "{banner}");

    let http = reqwest::Client::new();
    let signed_in: Value = http
        .post(format!(
            "http://127.0.0.1:{auth}/identitytoolkit.googleapis.com/v1/accounts:signInWithPassword?key=emulator"
        ))
        .json(&json!({"email": "jack@example.com", "password": saga_emulator::stack::DEMO_PASSWORD, "returnSecureToken": true}))
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

    up.interrupt().await;
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
        .args(["--control-port", &free_port().unwrap().to_string()])
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
        .args(["--control-port", &free_port().unwrap().to_string()])
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

/// `saga up` started by a test, its stdout read up to the banner, its stderr in a file.
struct Up {
    child: tokio::process::Child,
    project: String,
    pubsub: u16,
    firestore: u16,
    frontend: u16,
    control: u16,
    stderr: std::path::PathBuf,
    /// What it printed up to "Ctrl-C stops everything".
    banner: String,
}

impl Up {
    /// `saga up` for the supervision tests: its functions log to files, sweeps are quick.
    async fn start(project: &str) -> Up {
        let quick = [
            "--function-logs",
            "--sweep-interval",
            "2",
            "--outbox-grace",
            "3",
        ];
        Up::start_with(project, &quick, Duration::from_secs(120)).await
    }

    /// `saga up --project PROJECT EXTRA...` on free ports, read up to its banner (given
    /// `patience`); its stderr goes to a file shown if it does not come up.
    async fn start_with(project: &str, extra: &[&str], patience: Duration) -> Up {
        let (pubsub, firestore, frontend, control) = (
            free_port().unwrap(),
            free_port().unwrap(),
            free_block(),
            free_port().unwrap(),
        );
        let logs = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(project);
        std::fs::create_dir_all(&logs).unwrap();
        let stderr = logs.join("saga-up.stderr");
        let mut child = saga()
            .args(["up", "--project", project])
            .args(extra)
            .args(["--pubsub-port", &pubsub.to_string()])
            .args(["--firestore-port", &firestore.to_string()])
            .args(["--frontend-port", &frontend.to_string()])
            .args(["--control-port", &control.to_string()])
            .arg("--log-dir")
            .arg(&logs)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
            .kill_on_drop(true)
            .spawn()
            .expect("starting saga up");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = String::new();
        let ready = tokio::time::timeout(patience, async {
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
        // Read to the end, so that what it (and the functions, which share its stdout)
        // print later never meets a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let up = Up {
            child,
            project: project.to_owned(),
            pubsub,
            firestore,
            frontend,
            control,
            stderr,
            banner,
        };
        assert_eq!(
            ready,
            Ok(true),
            "saga up did not come up: {}\n{}",
            up.banner,
            up.said()
        );
        up
    }

    /// What saga up said on stderr so far.
    fn said(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    async fn functions(&self) -> Vec<Value> {
        reqwest::get(format!("http://127.0.0.1:{}/functions", self.control))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn state_of(&self, function: &str) -> Value {
        let functions = self.functions().await;
        functions
            .into_iter()
            .find(|f| f["function"] == function)
            .expect("the function")
    }

    /// `saga stop|start FUNCTION` against this saga up: exit code and output.
    async fn ctl(&self, action: &str, function: &str) -> (i32, String) {
        let out = saga()
            .args([
                action,
                function,
                "--control-port",
                &self.control.to_string(),
            ])
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    async fn place(&self) -> String {
        let accepted: Value = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/order", self.frontend))
            .json(&json!({"item": "widget", "quantity": 1, "user": "jack"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        accepted["order_id"]
            .as_str()
            .expect("an order id")
            .to_owned()
    }

    async fn status(&self, id: &str) -> Value {
        let order: Value = reqwest::get(format!("http://127.0.0.1:{}/order/{id}", self.frontend))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        order["status"].clone()
    }

    async fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.status(id).await != status {
            assert!(
                Instant::now() < deadline,
                "order {id} is {}, not {status}",
                self.status(id).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn interrupt(mut self) {
        let pid = self.child.id().expect("running");
        saga_emulator::process::signal(pid, "INT").expect("kill");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("saga up stops on Ctrl-C")
            .unwrap();
        assert!(status.success(), "{status}");
    }
}

/// A function that dies is restarted, with backoff, and saga up says so (as Cloud Run starts
/// a new instance); `saga stop` / `saga start` take one function offline and back while the
/// stack runs, and its sagas wait for it, then complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_up_restarts_a_dead_function_and_stops_and_starts_one_on_demand() {
    let up = Up::start("saga-up-supervise").await;

    let before = up.state_of("inventory").await;
    let pid = before["pid"].as_u64().expect("a pid");
    saga_emulator::process::signal(pid as u32, "KILL").expect("kill");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = up.state_of("inventory").await;
        if now["phase"] == "running" && now["pid"].as_u64().is_some_and(|p| p != pid) {
            assert_eq!(now["restarts"], 1, "{now}");
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let said = up.said();
    assert!(said.contains("inventory exited"), "{said}");
    assert!(said.contains("restarting it in 1s"), "{said}");
    assert!(said.contains("inventory restarted (pid"), "{said}");
    let id = up.place().await;
    up.wait_status(&id, "COMPLETED").await;

    // Inventory offline: its sagas wait at ORDER_CREATED (Pub/Sub keeps retrying), and
    // nothing restarts it until it is started.
    assert_eq!(
        up.ctl("stop", "inventory").await,
        (0, "inventory stopped\n".into())
    );
    assert_eq!(up.state_of("inventory").await["phase"], "stopped");
    let waiting = up.place().await;
    up.wait_status(&waiting, "ORDER_CREATED").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(up.status(&waiting).await, "ORDER_CREATED");
    assert_eq!(up.state_of("inventory").await["phase"], "stopped");
    let (code, text) = up.ctl("stop", "inventory").await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("already stopped"), "{text}");

    assert_eq!(
        up.ctl("start", "inventory").await,
        (0, "inventory started\n".into())
    );
    up.wait_status(&waiting, "COMPLETED").await;

    let (code, text) = up.ctl("stop", "warehouse").await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no function \"warehouse\""), "{text}");

    // saga chaos against this saga up: it kills through the control port, and gives the
    // push subscriptions back to the functions when it is done.
    let chaos = saga()
        .args(["chaos", "--against-up", "--seed", "4", "--duration", "10"])
        .args(["--project", &up.project])
        .args(["--pubsub-port", &up.pubsub.to_string()])
        .args(["--firestore-port", &up.firestore.to_string()])
        .args(["--frontend-port", &up.frontend.to_string()])
        .args(["--control-port", &up.control.to_string()])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&chaos.stdout);
    assert_eq!(
        chaos.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&chaos.stderr)
    );
    assert!(said.contains("killed (pid"), "{said}");
    assert!(said.contains("all invariants hold"), "{said}");
    let after = up.place().await;
    up.wait_status(&after, "COMPLETED").await;
    up.interrupt().await;

    // No saga up: says so, exit 2.
    let (code, text) = Up::ctl_without_up("start", "inventory").await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no saga up answers"), "{text}");
}

impl Up {
    async fn ctl_without_up(action: &str, function: &str) -> (i32, String) {
        let out = saga()
            .args([
                action,
                function,
                "--control-port",
                &free_port().unwrap().to_string(),
            ])
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}
