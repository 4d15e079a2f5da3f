//! The test harness: real emulators (started once per test run, or reused from
//! `PUBSUB_EMULATOR_HOST` / `FIRESTORE_EMULATOR_HOST`), and per test a fresh project id with
//! its own topology, seed data and five in-process functions on free ports.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use saga_contracts::docs::{ItemDoc, UserDoc, collections};
use saga_contracts::events::Event;
use saga_contracts::order::{OrderDoc, StepRecord};
use saga_contracts::topology::Function;
use saga_emulator::{AuthEmulator, Emulator, Heap, Kind, Overrides, SeedMode};
use saga_infra::config::{Config, FirebaseAuth, Limits, UserAuth};
use saga_infra::runtime::{Runtime, Server};
use saga_infra::store::Store;
use saga_infra::telemetry::{CloudLogging, MemoryWriter};
use saga_ops::check::{Baseline, check_settled};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{OnceCell, oneshot};
use uuid::Uuid;

pub struct Hosts {
    pub pubsub: String,
    pub firestore: String,
}

static HOSTS: OnceCell<Hosts> = OnceCell::const_new();
static LOGS: OnceLock<MemoryWriter> = OnceLock::new();

/// Every log line of this test process, as the functions write them in the cloud (Cloud
/// Logging JSON).
pub fn logs() -> &'static MemoryWriter {
    LOGS.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let memory = MemoryWriter::default();
        let writer = memory.clone();
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new(
                "info,firestore=warn,h2=warn",
            ))
            .with(CloudLogging::new("saga-tests", None, move || writer))
            .try_init();
        memory
    })
}
/// Kept for the life of the test binary; their watchdogs stop them when it exits.
static EMULATORS: Mutex<Vec<Emulator>> = Mutex::new(Vec::new());

/// The emulators every test shares. Never skipped: if they cannot start, every test fails
/// and says why.
pub async fn hosts() -> &'static Hosts {
    HOSTS
        .get_or_init(|| async {
            let given = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
            if let (Some(pubsub), Some(firestore)) = (
                given("PUBSUB_EMULATOR_HOST"),
                given("FIRESTORE_EMULATOR_HOST"),
            ) {
                return Hosts { pubsub, firestore };
            }
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("emulators");
            std::fs::create_dir_all(&dir).expect("creating the emulator log directory");
            let host = || {
                format!(
                    "127.0.0.1:{}",
                    saga_emulator::free_port().expect("free port")
                )
            };
            let (pubsub_host, firestore_host) = (host(), host());
            let (pubsub_log, firestore_log) = (dir.join("pubsub.log"), dir.join("firestore.log"));
            let (pubsub, firestore) = tokio::join!(
                Emulator::start(
                    Kind::PubSub,
                    &pubsub_host,
                    "saga-tests",
                    &Heap::Auto,
                    &pubsub_log
                ),
                Emulator::start(
                    Kind::Firestore,
                    &firestore_host,
                    "saga-tests",
                    &Heap::Auto,
                    &firestore_log
                ),
            );
            let (pubsub, firestore) = match (pubsub, firestore) {
                (Ok(p), Ok(f)) => (p, f),
                (Err(e), _) | (_, Err(e)) => {
                    panic!("the emulator tests need the emulators, which could not start: {e}")
                }
            };
            EMULATORS
                .lock()
                .expect("emulator list")
                .extend([pubsub, firestore]);
            Hosts {
                pubsub: pubsub_host,
                firestore: firestore_host,
            }
        })
        .await
}

pub struct Options {
    pub fault_injection: bool,
    /// Sagas are failed with `timeout` this long after their last change.
    pub saga_timeout: Duration,
    /// Pub/Sub delivery settings, for tests that need it to give up sooner.
    pub overrides: Overrides,
    /// The frontend's limits. A test is one heavy client, so by default they are far above
    /// what one test sends; the tests of the limits set them.
    pub limits: Limits,
    /// Users sign in with the Firebase Authentication emulator's tokens.
    pub sign_in: bool,
    /// Export every function's spans there (OTLP/HTTP).
    pub otlp: Option<saga_infra::config::Otlp>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fault_injection: true,
            saga_timeout: Duration::from_secs(300),
            overrides: Overrides::default(),
            limits: Limits {
                post_every: Duration::from_micros(10),
                post_burst: 100_000,
                ..Limits::default()
            },
            sign_in: false,
            otlp: None,
        }
    }
}

impl Options {
    /// Pub/Sub dead-letters a message after `attempts` deliveries (its retries a second
    /// apart on the emulator), for tests that need it to give up, or not, within a test.
    pub fn dead_letter_after(attempts: i32) -> Options {
        Options {
            overrides: Overrides {
                max_delivery_attempts: Some(attempts),
            },
            ..Options::default()
        }
    }
}

static AUTH: OnceCell<AuthEmulator> = OnceCell::const_new();

/// The Firebase Authentication emulator every sign-in test shares (started once).
pub async fn auth_emulator() -> &'static AuthEmulator {
    AUTH.get_or_init(|| async {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("auth-emulator");
        let host = format!(
            "127.0.0.1:{}",
            saga_emulator::free_port().expect("free port")
        );
        AuthEmulator::start(&host, "demo-saga-tests", &dir, &dir.join("auth.log"))
            .await
            .unwrap_or_else(|e| {
                panic!("the sign-in tests need the Firebase Authentication emulator: {e}")
            })
    })
    .await
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// One revision of a function, serving on its own port beside the app's (a rolling deploy
/// runs two side by side).
pub struct Revision {
    pub addr: std::net::SocketAddr,
    running: Running,
}

impl Revision {
    /// Stops it once the requests it is serving are answered.
    pub async fn stop(self) {
        let _ = self.running.stop.send(());
        let _ = self.running.task.await;
    }
}

pub struct TestApp {
    pub project: String,
    pub config: Config,
    /// What stock and balances started from, for the invariant check.
    pub baseline: Baseline,
    pub store: Store,
    pub http: reqwest::Client,
    pub pubsub_host: String,
    pub ports: BTreeMap<Function, u16>,
    running: BTreeMap<Function, Running>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    logs();
    let hosts = hosts().await;
    let project = format!("t-{}", &Uuid::new_v4().simple().to_string()[..16]);
    let user_auth = if options.sign_in {
        let auth = auth_emulator().await;
        UserAuth::Firebase(FirebaseAuth {
            project_id: auth.project.clone(),
            jwks_url: saga_infra::config::FIREBASE_JWKS_URL.into(),
            emulator: Some(auth.host.clone()),
            web_api_key: None,
        })
    } else {
        UserAuth::Off
    };
    let config = Config {
        fault_injection: options.fault_injection,
        saga_timeout: options.saga_timeout,
        user_auth,
        limits: options.limits,
        otlp: options.otlp,
        // Tests sweep explicitly; anything unpublished is due at once.
        outbox_grace: Duration::ZERO,
        ..Config::emulators(&project, &hosts.pubsub, &hosts.firestore)
    };
    let store = Store::connect(&project, &config.firestore)
        .await
        .expect("connecting to the Firestore emulator");
    saga_emulator::seed(&store, SeedMode::IfAbsent)
        .await
        .expect("seeding");

    let mut app = TestApp {
        project,
        config,
        baseline: Baseline::seed(),
        store,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client"),
        pubsub_host: hosts.pubsub.clone(),
        ports: BTreeMap::new(),
        running: BTreeMap::new(),
    };
    for function in Function::ALL {
        app.start(function, 0).await;
    }
    let ports = app.ports.clone();
    saga_emulator::create_topology_with(
        &app.project,
        &app.pubsub_host,
        |s| format!("http://127.0.0.1:{}{}", ports[&s.function], s.path),
        options.overrides,
    )
    .await
    .expect("creating the topology");
    app
}

impl TestApp {
    /// Starts `function` in-process on `port` (0: any free port).
    pub async fn start(&mut self, function: Function, port: u16) {
        self.start_with(function, port, |_| {}).await;
    }

    /// Stops `function` and starts it again on the same port, its configuration changed by
    /// `tweak` (fault switches, a dead broker...).
    pub async fn restart_with(&mut self, function: Function, tweak: impl FnOnce(&mut Config)) {
        self.stop(function).await;
        let port = self.ports[&function];
        self.start_with(function, port, tweak).await;
    }

    async fn start_with(&mut self, function: Function, port: u16, tweak: impl FnOnce(&mut Config)) {
        let revision = self.serve(function, port, tweak).await;
        self.ports.insert(function, revision.addr.port());
        self.running.insert(function, revision.running);
    }

    /// Starts a revision of `function`, its configuration changed by `tweak`, on a port of
    /// its own; the app's own instance of it is left as it is.
    pub async fn revision(&self, function: Function, tweak: impl FnOnce(&mut Config)) -> Revision {
        self.serve(function, 0, tweak).await
    }

    async fn serve(
        &self,
        function: Function,
        port: u16,
        tweak: impl FnOnce(&mut Config),
    ) -> Revision {
        let mut config = Config {
            port,
            ..self.config.clone()
        };
        tweak(&mut config);
        let runtime = Runtime::connect(function, config.clone())
            .await
            .expect("connecting a function");
        let server = Server::bind(function, &config, saga::router_for(function)(runtime))
            .await
            .expect("binding a function");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = server
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Revision {
            addr,
            running: Running { stop, task },
        }
    }

    /// Stops `function` (its port refuses connections until it is started again).
    pub async fn stop(&mut self, function: Function) {
        if let Some(running) = self.running.remove(&function) {
            let _ = running.stop.send(());
            let _ = running.task.await;
        }
    }

    /// Adds an item to this test's catalogue (and to the invariant baseline), its stock on
    /// one document, or split over `shards` stock shards.
    pub async fn add_item(&mut self, item: &str, price: i64, stock: i64, shards: u32) {
        saga_emulator::seed::item(&self.store, item, price, stock, shards)
            .await
            .expect("adding an item");
        self.baseline.stock.insert(item.to_owned(), stock);
    }

    /// Asserts every invariant of the saga holds, and every saga is over.
    pub async fn assert_invariants(&self) {
        let report = check_settled(&self.store, &self.baseline, saga_ops::check::SETTLE)
            .await
            .expect("checking");
        assert!(report.holds(), "invariants broken:\n{report}");
    }

    /// Calls `function`'s sweep endpoint, as the scheduler does.
    pub async fn sweep(&self, function: Function) -> Value {
        let response = self
            .http
            .post(self.url(
                function,
                function.sweep_path().expect("a function with a sweep"),
            ))
            .send()
            .await
            .expect("sweep");
        assert!(
            response.status().is_success(),
            "sweep of {function}: {}",
            response.status()
        );
        response.json().await.expect("sweep report")
    }

    pub fn url(&self, function: Function, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[&function])
    }

    pub async fn post_order(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(Function::Frontend, "/order"))
            .json(body)
            .send()
            .await
            .expect("POST /order")
    }

    /// Places an order and returns its id, asserting it was accepted.
    pub async fn place(&self, body: Value) -> Uuid {
        let response = self.post_order(&body).await;
        assert_eq!(response.status(), 202, "placing {body}");
        let view: Value = response.json().await.expect("order JSON");
        view["order_id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .expect("an order id")
    }

    pub async fn get_order(&self, id: Uuid) -> Value {
        let response = self
            .http
            .get(self.url(Function::Frontend, &format!("/order/{id}")))
            .send()
            .await
            .expect("GET /order");
        assert_eq!(response.status(), 200, "GET /order/{id}");
        response.json().await.expect("order JSON")
    }

    /// Waits until the order is COMPLETED or COMPENSATED, and returns it.
    pub async fn wait_terminal(&self, id: Uuid) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let order = self.get_order(id).await;
            if matches!(order["status"].as_str(), Some("COMPLETED" | "COMPENSATED")) {
                return order;
            }
            assert!(
                Instant::now() < deadline,
                "order {id} is not terminal: {order}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the order has `status`.
    pub async fn wait_for_status(&self, id: Uuid, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let order = self.get_order(id).await;
            if order["status"] == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never reached {status}: {order}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `step` has a record on the order, and returns it.
    pub async fn wait_for_step(&self, id: Uuid, step: &str) -> StepRecord {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(record) = self.order_doc(id).await.and_then(|o| o.step(step).cloned()) {
                return record;
            }
            assert!(Instant::now() < deadline, "{step} never ran for {id}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `function`'s operation counts so far (`GET /internal/meter`).
    pub async fn meter(&self, function: Function) -> saga_infra::meter::Metered {
        self.http
            .get(self.url(function, saga_infra::step::METER_PATH))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Places an order for an item whose catalogue entry inventory can never read: it
    /// answers 503 every time, until Pub/Sub dead-letters the delivery.
    pub async fn place_on_a_broken_item(&self) -> Uuid {
        self.store
            .set(
                collections::INVENTORY,
                "broken",
                &json!({"price": "ten", "stock": "many"}),
            )
            .await
            .unwrap();
        self.place(json!({"item": "broken", "quantity": 1, "user": "jack"}))
            .await
    }

    /// Repairs the item [`TestApp::place_on_a_broken_item`] broke: readable, out of stock.
    pub async fn repair_the_broken_item(&self) {
        self.store
            .set(
                collections::INVENTORY,
                "broken",
                &json!({"price": 1, "stock": 0}),
            )
            .await
            .unwrap();
    }

    pub async fn stock(&self, item: &str) -> i64 {
        self.doc::<ItemDoc>(collections::INVENTORY, item)
            .await
            .expect("item")
            .stock
    }

    pub async fn balance(&self, user: &str) -> i64 {
        self.doc::<UserDoc>(collections::USERS, user)
            .await
            .expect("user")
            .balance
    }

    pub async fn doc<T: DeserializeOwned + Send>(&self, collection: &str, id: &str) -> Option<T> {
        self.store.get(collection, id).await.expect("reading a doc")
    }

    pub async fn docs<T: DeserializeOwned + Send>(&self, collection: &str) -> Vec<(String, T)> {
        self.store.all(collection).await.expect("listing docs")
    }

    /// Every order document of this test's project.
    pub async fn orders(&self) -> Vec<(String, OrderDoc)> {
        self.docs(collections::ORDERS).await
    }

    /// The order document (its state, records and history), if there is one.
    pub async fn order_doc(&self, id: Uuid) -> Option<OrderDoc> {
        self.store
            .order(&id.to_string())
            .await
            .expect("reading an order")
    }

    /// Delivers `event` to `function`'s push endpoint as Pub/Sub would.
    pub async fn push(&self, function: Function, event: &Event) -> (u16, Value) {
        let subscription = function.consumes().next().expect("a push function");
        let body = saga_infra::push::encode(
            subscription.name,
            &Uuid::new_v4().simple().to_string(),
            event,
        );
        self.push_raw(function, body.to_string().into_bytes()).await
    }

    pub async fn push_raw(&self, function: Function, body: Vec<u8>) -> (u16, Value) {
        let response = self.push_response(function, body).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET /healthz` on `function`.
    pub async fn health(&self, function: Function) -> reqwest::Response {
        self.http
            .get(self.url(function, "/healthz"))
            .send()
            .await
            .expect("health check")
    }

    /// POSTs `body` to the push route of `function`'s subscription, as Pub/Sub does; the
    /// whole answer, headers included.
    pub async fn push_response(&self, function: Function, body: Vec<u8>) -> reqwest::Response {
        let subscription = function.consumes().next().expect("a push function");
        self.http
            .post(self.url(function, subscription.path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("push")
    }

    /// Pulls (and acknowledges) from a pull subscription until `done` holds for what was
    /// pulled so far, through the emulator's REST API as `gcloud pubsub subscriptions pull` does.
    pub async fn pull_until(
        &self,
        subscription: &str,
        done: impl Fn(&[Event]) -> bool,
    ) -> Vec<Event> {
        self.pull_messages_until(subscription, |ms| {
            done(&ms.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>())
        })
        .await
        .into_iter()
        .map(|(e, _)| e)
        .collect()
    }

    /// [`pull_until`], with each message's attributes.
    pub async fn pull_messages_until(
        &self,
        subscription: &str,
        done: impl Fn(&[(Event, BTreeMap<String, String>)]) -> bool,
    ) -> Vec<(Event, BTreeMap<String, String>)> {
        let pubsub = self.pubsub();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut messages = Vec::new();
        while !done(&messages) {
            assert!(
                Instant::now() < deadline,
                "{subscription}: not found in {messages:?}"
            );
            let received = pubsub
                .pull(subscription, 100, Duration::from_secs(5))
                .await
                .expect("pull");
            let ack_ids: Vec<String> = received.iter().map(|m| m.ack_id.clone()).collect();
            for m in received {
                use saga_contracts::events::wire;
                let version = m.attributes.get(wire::VERSION).map(String::as_str);
                let event = wire::decode(&m.data, version, wire::CURRENT).expect("an event");
                messages.push((event, m.attributes));
            }
            if ack_ids.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            } else {
                pubsub
                    .ack(subscription, &ack_ids)
                    .await
                    .expect("acknowledge");
            }
        }
        messages
    }

    pub fn pubsub(&self) -> saga_ops::pubsub_rest::PubsubRest {
        saga_ops::pubsub_rest::PubsubRest::emulator(&self.pubsub_host, &self.project)
    }
}

/// The kind of acknowledgement a push got.
/// What most tests order: `quantity` widgets for jack, who can pay for them.
pub fn jack_widgets(quantity: u32) -> saga_contracts::events::OrderDetails {
    saga_contracts::events::OrderDetails {
        item: "widget".into(),
        quantity,
        user: "jack".into(),
        payment_error: false,
    }
}

pub fn ack_kind(body: &Value) -> &str {
    body["ack"].as_str().unwrap_or("none")
}

/// The workspace's root (this package is `cli/`): where a user runs `saga` from.
pub const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The `saga` binary, run from the workspace's root as a user runs it.
pub fn saga() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_saga"));
    command.current_dir(WORKSPACE);
    command
}
