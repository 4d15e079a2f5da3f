//! `saga chaos --seed N --duration SECS`: break the saga on purpose while orders flow, then
//! check that it healed.
//!
//! A seed draws a fault schedule ([`schedule`]): what goes wrong, when, and where. While
//! orders are placed, a proxy between Pub/Sub and the functions (the push subscriptions are
//! pointed at it for the run) applies the push faults: a push duplicated, delayed, held back
//! until the next one overtakes it, refused with a 5xx, or processed and then answered 5xx
//! (a crash between the publish and the answer). Faults inside a function (a Firestore
//! commit that fails or whose answer is lost, a publish that fails, a crash between the
//! commit and the publish) are asked for with a header the functions honour only on the
//! emulators ([`saga_infra::chaos`]); `POST /order` gets them too. A function is killed and
//! the supervisor restarts it, as Cloud Run replaces a dead instance. When the schedule
//! ends, every order must finish and `saga check`'s invariants must hold.
//!
//! The same seed draws the same schedule (its digest is printed first); which message each
//! fault meets depends on timing, and every fault applied is printed with the order it hit.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use saga_contracts::topology::{Function, PUSH_SUBSCRIPTIONS, PushSubscription};
use saga_infra::chaos::{self, Fault};
use saga_infra::config::Endpoint;
use saga_infra::store::Store;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use saga_emulator::stack::{Ports, Stack, UpArgs, UpError};
use saga_emulator::supervisor::{Control, DEFAULT_CONTROL_PORT};
use saga_ops::pubsub_rest::PubsubRest;

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// The seed the fault schedule is drawn from: the same seed, the same schedule.
    #[arg(long)]
    pub seed: u64,
    /// How long faults are applied while orders flow, in seconds; then the saga heals.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Orders placed a second.
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,
    /// Print the schedule and its digest, and apply nothing.
    #[arg(long)]
    pub schedule_only: bool,
    /// Run against the running `saga up` (its ports below) instead of a stack of its own.
    #[arg(long)]
    pub against_up: bool,
    /// Project id (with --against-up, saga up's; otherwise a new one by default).
    #[arg(long)]
    pub project: Option<String>,
    /// The emulators' ports (started if none answers there) and, with --against-up, saga
    /// up's frontend port (the others follow it).
    #[command(flatten)]
    pub ports: Ports,
    /// With --against-up: saga up's control port, to kill a function.
    #[arg(long, default_value_t = DEFAULT_CONTROL_PORT)]
    pub control_port: u16,
    /// How long the saga gets to heal after the schedule, in seconds.
    #[arg(long, default_value_t = 120)]
    pub settle: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error(transparent)]
    Up(#[from] UpError),
    #[error("{0}")]
    Io(String),
    #[error("pointing the push subscriptions: {0}")]
    Pubsub(#[from] saga_ops::pubsub_rest::RestError),
    #[error("reading Firestore: {0}")]
    Store(#[from] saga_infra::store::StoreError),
}

/// `saga chaos`: exit 0 when the invariants held, 1 when not (with the seed to replay).
pub async fn run(args: ChaosArgs) -> std::process::ExitCode {
    match chaos(&args).await {
        Ok(outcome) => {
            print!("{}", outcome.text);
            if outcome.holds {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            }
        }
        Err(e) => super::fail("chaos", e),
    }
}

// ---------------------------------------------------------------------------------------
// The schedule: a pure function of the seed.

/// A fault at a push, applied by the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushFault {
    Duplicate,
    Delay(Duration),
    /// Held until the next push to the subscription has gone through (or 2 s).
    Reorder,
    /// Answered 503 without reaching the function.
    Refuse,
    /// Processed by the function, then answered 503: a crash between publish and answer.
    LoseAnswer,
    /// A fault inside the function.
    Inside(Fault),
}

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planned {
    Push {
        subscription: &'static str,
        fault: PushFault,
    },
    /// A fault inside the frontend, on the next `POST /order`.
    Post(Fault),
    /// The function's process is killed (SIGKILL); the supervisor restarts it.
    Kill(Function),
}

impl std::fmt::Display for Planned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Planned::Push {
                subscription,
                fault,
            } => {
                let fault = match fault {
                    PushFault::Duplicate => "duplicate".to_owned(),
                    PushFault::Delay(d) => format!("delay {}ms", d.as_millis()),
                    PushFault::Reorder => "reorder".to_owned(),
                    PushFault::Refuse => "answer 503".to_owned(),
                    PushFault::LoseAnswer => "crash between publish and answer".to_owned(),
                    PushFault::Inside(fault) => fault.name().to_owned(),
                };
                write!(f, "{subscription:<22} {fault}")
            }
            Planned::Post(fault) => write!(f, "{:<22} {}", "POST /order", fault.name()),
            Planned::Kill(function) => write!(f, "{:<22} killed", function.name()),
        }
    }
}

/// One fault of the schedule, `at` after the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub at: Duration,
    pub planned: Planned,
}

/// SplitMix64: small, and the same on every platform, so a seed means one schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<T: Copy>(&mut self, of: &[T]) -> T {
        of[self.below(of.len() as u64) as usize]
    }
}

/// The subscriptions of the forward steps and the janitor (not the dead-letter ones).
fn subscriptions() -> Vec<&'static PushSubscription> {
    PUSH_SUBSCRIPTIONS
        .iter()
        .filter(|s| !saga_contracts::topology::is_dead_letter_subscription(s))
        .collect()
}

/// The schedule `seed` draws for a run of `duration`: a fault every 0.3 to 1.5 s over the
/// first four fifths (the rest is left to heal in), and a killed function every 20 s.
pub fn schedule(seed: u64, duration: Duration) -> Vec<Entry> {
    let mut rng = Rng(seed);
    let subscriptions = subscriptions();
    let end = duration.mul_f64(0.8);
    let mut entries = Vec::new();
    let mut at = Duration::from_millis(500 + rng.below(1000));
    while at < end {
        let subscription = rng.pick(&subscriptions).name;
        let push = |fault| Planned::Push {
            subscription,
            fault,
        };
        let planned = match rng.below(10) {
            0 => push(PushFault::Duplicate),
            1 => push(PushFault::Delay(Duration::from_millis(
                200 + rng.below(1800),
            ))),
            2 => push(PushFault::Reorder),
            3 => push(PushFault::Refuse),
            4 => push(PushFault::LoseAnswer),
            5..=7 => push(PushFault::Inside(rng.pick(&Fault::ALL))),
            _ => Planned::Post(rng.pick(&Fault::ALL)),
        };
        entries.push(Entry { at, planned });
        at += Duration::from_millis(300 + rng.below(1200));
    }
    let kills = duration.as_secs() / 20;
    for k in 0..kills.max(u64::from(duration >= Duration::from_secs(10))) {
        let window = end.as_millis() as u64 / kills.max(1);
        let at = Duration::from_millis(k * window + rng.below(window.max(1)));
        entries.push(Entry {
            at,
            planned: Planned::Kill(rng.pick(&Function::ALL)),
        });
    }
    entries.sort_by_key(|e| e.at);
    entries
}

/// The schedule as printed, one fault a line.
pub fn describe(entries: &[Entry]) -> String {
    let mut out = String::new();
    for e in entries {
        let _ = writeln!(out, "  t+{:>6.1}s  {}", e.at.as_secs_f64(), e.planned);
    }
    out
}

/// A digest of the schedule (FNV-1a of its description, seed and duration).
pub fn digest(seed: u64, duration: Duration, entries: &[Entry]) -> String {
    let text = format!("{seed}/{}\n{}", duration.as_secs(), describe(entries));
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

// ---------------------------------------------------------------------------------------
// The run.

/// What a run found.
pub struct Outcome {
    pub holds: bool,
    pub text: String,
}

/// Where the stack under test is.
struct Target {
    project: String,
    pubsub_host: String,
    firestore_host: String,
    ports: BTreeMap<Function, u16>,
    killer: Killer,
}

enum Killer {
    Own(Control),
    Up(u16),
}

impl Killer {
    async fn kill(&self, function: Function) -> Result<u32, String> {
        let pid = match self {
            Killer::Own(control) => control.pid(function),
            Killer::Up(port) => saga_emulator::supervisor::remote_functions(*port)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|f| f.function == function.name())
                .and_then(|f| f.pid),
        };
        let pid = pid.ok_or_else(|| format!("{function} is not running"))?;
        saga_emulator::process::signal(pid, "KILL").map_err(|e| e.to_string())?;
        Ok(pid)
    }
}

/// Runs `saga chaos`.
pub async fn chaos(args: &ChaosArgs) -> Result<Outcome, ChaosError> {
    let duration = Duration::from_secs(args.duration);
    let entries = schedule(args.seed, duration);
    let mut header = format!(
        "schedule digest {} (seed {}, {} s, {} faults)\n{}",
        digest(args.seed, duration, &entries),
        args.seed,
        args.duration,
        entries.len(),
        describe(&entries)
    );
    if args.schedule_only {
        return Ok(Outcome {
            holds: true,
            text: header,
        });
    }
    print!("{header}");
    header.clear();
    if args.against_up {
        let up = up_args(args, args.project.clone().unwrap_or("saga-local".into()));
        let target = Target {
            project: up.project.clone(),
            pubsub_host: format!("127.0.0.1:{}", up.ports.pubsub),
            firestore_host: format!("127.0.0.1:{}", up.ports.firestore),
            ports: Function::ALL.map(|f| (f, up.port_of(f))).into(),
            killer: Killer::Up(args.control_port),
        };
        apply(args, &entries, &target).await
    } else {
        let project = args.project.clone().unwrap_or_else(|| {
            format!(
                "chaos-{}-{}",
                args.seed % 100_000,
                &uuid::Uuid::new_v4().simple().to_string()[..6]
            )
        });
        let mut up = up_args(args, project);
        up.ports.frontend = saga_emulator::free_block(Function::ALL.len() as u16)
            .map_err(|e| ChaosError::Io(e.to_string()))?;
        let stack = Stack::start(&up).await?;
        let target = Target {
            project: up.project.clone(),
            pubsub_host: format!("127.0.0.1:{}", up.ports.pubsub),
            firestore_host: format!("127.0.0.1:{}", up.ports.firestore),
            ports: stack.ports.clone(),
            killer: Killer::Own(stack.control.clone()),
        };
        let outcome = apply(args, &entries, &target).await;
        stack.stop().await;
        outcome
    }
}

fn up_args(args: &ChaosArgs, project: String) -> UpArgs {
    UpArgs {
        // The outbox sweep heals a frontend that died between its commit and its publish:
        // often, with a short grace, so that a run heals in seconds.
        sweep_interval: 2,
        outbox_grace: Some(3),
        post_rate: Some(1_000.0),
        ..UpArgs::for_tool(project, "target/chaos/logs", args.ports)
    }
}

/// The proxy's state: faults armed for the next push of a subscription, and a push held
/// back for the next one to overtake.
#[derive(Clone)]
struct Proxy {
    started: Instant,
    http: reqwest::Client,
    routes: Arc<HashMap<String, (&'static str, u16)>>,
    armed: Arc<Mutex<HashMap<&'static str, VecDeque<PushFault>>>>,
    held: Arc<Mutex<HashMap<&'static str, oneshot::Sender<()>>>>,
    applied: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    fn note(&self, what: String) {
        let line = format!("  t+{:>6.1}s  {what}", self.started.elapsed().as_secs_f64());
        println!("applied{line}");
        if let Ok(mut applied) = self.applied.lock() {
            applied.push(line);
        }
    }

    async fn forward(
        &self,
        port: u16,
        path: &str,
        body: Bytes,
        fault: Option<Fault>,
    ) -> (StatusCode, Bytes) {
        let mut request = self
            .http
            .post(format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(fault) = fault {
            request = request.header(chaos::HEADER, fault.name());
        }
        match request.send().await {
            Ok(response) => {
                let status = StatusCode::from_u16(response.status().as_u16())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                (status, response.bytes().await.unwrap_or_default())
            }
            // The function is down (killed, restarting): Pub/Sub retries.
            Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Bytes::new()),
        }
    }
}

/// The order a push is about, for the record ("?" if the push carries no event this build
/// reads).
fn order_of(body: &[u8]) -> String {
    saga_infra::push::decode(body, saga_contracts::events::wire::CURRENT)
        .map_or_else(|_| "?".into(), |d| d.event.order_id.to_string())
}

async fn push(
    State(proxy): State<Proxy>,
    uri: Uri,
    _headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Bytes) {
    let path = uri.path().to_owned();
    let Some(&(subscription, port)) = proxy.routes.get(&path) else {
        return (StatusCode::NOT_FOUND, Bytes::new());
    };
    let fault = proxy
        .armed
        .lock()
        .ok()
        .and_then(|mut armed| armed.get_mut(subscription).and_then(VecDeque::pop_front));
    // A push held back is released once this one has gone through: this one overtook it.
    let overtaken = proxy
        .held
        .lock()
        .ok()
        .and_then(|mut held| held.remove(subscription));
    let order = order_of(&body);
    let answer = match fault {
        None => proxy.forward(port, &path, body, None).await,
        Some(PushFault::Duplicate) => {
            proxy.note(format!(
                "{subscription:<22} duplicate                 order {order}"
            ));
            let (first, second) = tokio::join!(
                proxy.forward(port, &path, body.clone(), None),
                proxy.forward(port, &path, body, None)
            );
            if first.0.is_success() { first } else { second }
        }
        Some(PushFault::Delay(by)) => {
            proxy.note(format!(
                "{subscription:<22} delay {:<19} order {order}",
                format!("{}ms", by.as_millis())
            ));
            tokio::time::sleep(by).await;
            proxy.forward(port, &path, body, None).await
        }
        Some(PushFault::Reorder) => {
            let (release, released) = oneshot::channel();
            if let Ok(mut held) = proxy.held.lock() {
                held.insert(subscription, release);
            }
            let overtaken = tokio::time::timeout(Duration::from_secs(2), released)
                .await
                .is_ok();
            proxy.note(format!(
                "{subscription:<22} reorder                   order {order} ({})",
                if overtaken {
                    "the next push went first"
                } else {
                    "no push came within 2 s"
                }
            ));
            proxy.forward(port, &path, body, None).await
        }
        Some(PushFault::Refuse) => {
            proxy.note(format!(
                "{subscription:<22} answer 503                order {order}"
            ));
            (StatusCode::SERVICE_UNAVAILABLE, Bytes::new())
        }
        Some(PushFault::LoseAnswer) => {
            let (status, _) = proxy.forward(port, &path, body, None).await;
            proxy.note(format!(
                "{subscription:<22} crash before answering    order {order} (it answered {})",
                status.as_u16()
            ));
            (StatusCode::SERVICE_UNAVAILABLE, Bytes::new())
        }
        Some(PushFault::Inside(fault)) => {
            let answer = proxy.forward(port, &path, body, Some(fault)).await;
            proxy.note(format!(
                "{subscription:<22} {:<25} order {order} (it answered {})",
                fault.name(),
                answer.0.as_u16()
            ));
            answer
        }
    };
    if let Some(release) = overtaken {
        let _ = release.send(());
    }
    answer
}

async fn apply(
    args: &ChaosArgs,
    entries: &[Entry],
    target: &Target,
) -> Result<Outcome, ChaosError> {
    let started = Instant::now();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| ChaosError::Io(format!("the chaos proxy: {e}")))?;
    let proxy_port = listener
        .local_addr()
        .map_err(|e| ChaosError::Io(e.to_string()))?
        .port();
    let proxy = Proxy {
        started,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ChaosError::Io(e.to_string()))?,
        routes: Arc::new(
            PUSH_SUBSCRIPTIONS
                .iter()
                .map(|s| {
                    let port = target.ports.get(&s.function).copied().unwrap_or_default();
                    (s.path.to_owned(), (s.name, port))
                })
                .collect(),
        ),
        armed: Arc::default(),
        held: Arc::default(),
        applied: Arc::default(),
    };
    let app = axum::Router::new()
        .fallback(axum::routing::post(push))
        .with_state(proxy.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let pubsub = PubsubRest::emulator(&target.pubsub_host, &target.project);
    point(&pubsub, |s| {
        format!("http://127.0.0.1:{proxy_port}{}", s.path)
    })
    .await?;

    let posts: Arc<Mutex<VecDeque<Fault>>> = Arc::default();
    let load = tokio::spawn(place_orders(
        args.seed,
        args.rate,
        Duration::from_secs(args.duration),
        target.ports[&Function::Frontend],
        posts.clone(),
        proxy.clone(),
    ));
    let faults = async {
        for entry in entries {
            tokio::time::sleep_until((started + entry.at).into()).await;
            match entry.planned {
                Planned::Push {
                    subscription,
                    fault,
                } => {
                    if let Ok(mut armed) = proxy.armed.lock() {
                        armed.entry(subscription).or_default().push_back(fault);
                    }
                }
                Planned::Post(fault) => {
                    if let Ok(mut posts) = posts.lock() {
                        posts.push_back(fault);
                    }
                }
                Planned::Kill(function) => match target.killer.kill(function).await {
                    Ok(pid) => proxy.note(format!("{:<22} killed (pid {pid})", function.name())),
                    Err(e) => proxy.note(format!("{:<22} not killed: {e}", function.name())),
                },
            }
        }
    };
    let interrupted = tokio::select! {
        _ = faults => false,
        _ = saga_infra::runtime::shutdown_signal() => true,
    };
    let placed = match interrupted {
        false => load.await.unwrap_or_else(|e| Err(e.to_string())),
        true => {
            load.abort();
            Err("interrupted".into())
        }
    };
    // The schedule is over: what was armed and never met a message is dropped.
    let unmet: usize = proxy
        .armed
        .lock()
        .map(|mut a| a.drain().map(|(_, q)| q.len()).sum())
        .unwrap_or(0);
    let mut violations = Vec::new();
    let placed = placed.unwrap_or_else(|e| {
        violations.push(format!("placing orders: {e}"));
        Vec::new()
    });
    let store = Store::connect(
        &target.project,
        &Endpoint::Emulator(target.firestore_host.clone()),
    )
    .await?;
    if !interrupted {
        violations.extend(settle(&store, &placed, Duration::from_secs(args.settle)).await?);
    }
    // Pushes go to the functions again.
    let restored = point(&pubsub, |s| {
        format!(
            "http://127.0.0.1:{}{}",
            target.ports.get(&s.function).copied().unwrap_or_default(),
            s.path
        )
    })
    .await;
    server.abort();
    restored?;
    if interrupted {
        return Err(ChaosError::Io("interrupted".into()));
    }
    let report = saga_ops::check::check_settled(
        &store,
        &saga_ops::check::Baseline::seed(),
        Duration::from_secs(10),
    )
    .await?;
    violations.extend(report.violations.iter().cloned());
    let applied = proxy.applied.lock().map(|a| a.len()).unwrap_or(0);
    let mut text = format!(
        "{applied} faults applied ({unmet} armed met no message before the schedule ended), {} orders placed\n{report}",
        placed.len()
    );
    let holds = violations.is_empty();
    if !holds {
        for v in &violations {
            let _ = writeln!(text, "BROKEN: {v}");
        }
        let _ = writeln!(
            text,
            "invariants broken; replay this schedule with: saga chaos --seed {} --duration {}",
            args.seed, args.duration
        );
    }
    Ok(Outcome { holds, text })
}

/// Points every push subscription at `endpoint`.
async fn point(
    pubsub: &PubsubRest,
    endpoint: impl Fn(&PushSubscription) -> String,
) -> Result<(), ChaosError> {
    for s in &PUSH_SUBSCRIPTIONS {
        pubsub.modify_push_config(s.name, &endpoint(s)).await?;
    }
    Ok(())
}

/// Places orders at `rate` a second for `duration`: a mix that completes and that fails
/// (no stock for a million widgets, penny cannot pay, the payment-error switch). A `POST`
/// answered 5xx, or not at all, is sent again with its Idempotency-Key until accepted.
async fn place_orders(
    seed: u64,
    rate: f64,
    duration: Duration,
    frontend: u16,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    proxy: Proxy,
) -> Result<Vec<String>, String> {
    let mut rng = Rng(seed ^ 0x005E_ED0F_0DE5);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let every = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let end = Instant::now() + duration;
    let mut ids = Vec::new();
    let mut pending = Vec::new();
    let mut n = 0u64;
    while Instant::now() < end {
        let body = match rng.below(10) {
            0 => json!({"item": "widget", "quantity": 1, "user": "penny"}),
            1 => json!({"item": "wotsit", "quantity": 2, "user": "jill", "payment-error": "null"}),
            2 => json!({"item": "widget", "quantity": 1_000_000, "user": "jack"}),
            3..=5 => json!({"item": "wotsit", "quantity": 1 + rng.below(3), "user": "jill"}),
            _ => json!({"item": "widget", "quantity": 1 + rng.below(3), "user": "jack"}),
        };
        let key = format!("chaos-{seed}-{n}");
        n += 1;
        let fault = faults.lock().ok().and_then(|mut f| f.pop_front());
        pending.push(tokio::spawn(post(
            http.clone(),
            frontend,
            body,
            key,
            fault,
            proxy.clone(),
        )));
        tokio::time::sleep(every).await;
    }
    for placed in pending {
        ids.push(placed.await.map_err(|e| e.to_string())??);
    }
    Ok(ids)
}

async fn post(
    http: reqwest::Client,
    frontend: u16,
    body: Value,
    key: String,
    mut fault: Option<Fault>,
    proxy: Proxy,
) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut request = http
            .post(format!("http://127.0.0.1:{frontend}/order"))
            .header("idempotency-key", &key)
            .json(&body);
        if let Some(f) = fault {
            request = request.header(chaos::HEADER, f.name());
        }
        let answer = request.send().await;
        if let Some(f) = fault.take() {
            let status = answer.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
            proxy.note(format!(
                "{:<22} {:<25} key {key} (it answered {status})",
                "POST /order",
                f.name()
            ));
        }
        match answer {
            Ok(r) if r.status() == StatusCode::ACCEPTED || r.status() == StatusCode::OK => {
                let v: Value = r.json().await.map_err(|e| e.to_string())?;
                return v["order_id"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("an answer without an order id: {v}"));
            }
            Ok(r)
                if r.status().is_client_error() && r.status() != StatusCode::TOO_MANY_REQUESTS =>
            {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                return Err(format!("POST /order ({key}) was refused {status}: {text}"));
            }
            _ if Instant::now() > deadline => {
                return Err(format!("POST /order ({key}) not accepted within 90 s"));
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Waits until every placed order is over; what is not, after `patience`, is a violation.
async fn settle(
    store: &Store,
    placed: &[String],
    patience: Duration,
) -> Result<Vec<String>, ChaosError> {
    let deadline = Instant::now() + patience;
    let mut open: Vec<String> = placed.to_vec();
    loop {
        // One batch get of the status field of the orders still open (an order that ended
        // stays ended).
        let statuses = store.order_statuses(&open).await?;
        let still: Vec<(String, Option<saga_contracts::events::OrderStatus>)> = statuses
            .into_iter()
            .filter(|(_, s)| !s.is_some_and(|s| s.is_terminal()))
            .collect();
        open = still.iter().map(|(id, _)| id.clone()).collect();
        if open.is_empty() || Instant::now() > deadline {
            return Ok(still
                .into_iter()
                .map(|(id, status)| {
                    format!(
                        "order {id} is {} {} s after the schedule",
                        status.map_or("missing".to_owned(), |s| s.to_string()),
                        patience.as_secs()
                    )
                })
                .collect());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_draws_one_schedule_and_another_seed_another() {
        let d = Duration::from_secs(60);
        assert_eq!(schedule(7, d), schedule(7, d));
        assert_eq!(digest(7, d, &schedule(7, d)), digest(7, d, &schedule(7, d)));
        assert_ne!(digest(7, d, &schedule(7, d)), digest(8, d, &schedule(8, d)));
    }

    #[test]
    fn schedules_draw_every_kind_of_fault_and_leave_time_to_heal() {
        let d = Duration::from_secs(60);
        let all: Vec<Entry> = (0..5).flat_map(|seed| schedule(seed, d)).collect();
        let has = |p: &dyn Fn(&Planned) -> bool| all.iter().any(|e| p(&e.planned));
        for fault in [
            PushFault::Duplicate,
            PushFault::Reorder,
            PushFault::Refuse,
            PushFault::LoseAnswer,
        ] {
            assert!(has(
                &|p| matches!(p, Planned::Push { fault: f, .. } if *f == fault)
            ));
        }
        assert!(has(&|p| matches!(
            p,
            Planned::Push {
                fault: PushFault::Delay(_),
                ..
            }
        )));
        for fault in Fault::ALL {
            assert!(has(
                &|p| matches!(p, Planned::Push { fault: PushFault::Inside(f), .. } if *f == fault)
            ));
            assert!(has(&|p| *p == Planned::Post(fault)));
        }
        assert!(has(&|p| matches!(p, Planned::Kill(_))));
        for seed in 0..5 {
            let s = schedule(seed, d);
            assert!(s.windows(2).all(|w| w[0].at <= w[1].at));
            assert!(s.iter().all(|e| e.at < d.mul_f64(0.8)));
            assert_eq!(
                s.iter()
                    .filter(|e| matches!(e.planned, Planned::Kill(_)))
                    .count(),
                3
            );
        }
    }
}
