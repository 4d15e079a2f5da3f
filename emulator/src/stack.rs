//! The whole stack on the emulators, as `saga up`, `saga bench` and `saga chaos` run it: the
//! emulators (started, or reused), the topology and the seed data, and the five functions as
//! supervised child processes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use saga_contracts::topology::{Function, PushSubscription};
use saga_infra::config::{Config, Endpoint, FirebaseAuth, UserAuth};
use saga_infra::store::Store;
use tokio::process::{Child, Command};

use crate::supervisor::{self, Control, Restart, Spawn};
use crate::{AuthEmulator, Emulator, Kind, SeedMode};

/// Set by `saga up` on the functions it starts: its pid, so they stop when it is gone.
pub const PARENT_ENV: &str = "SAGA_UP_PARENT_PID";

/// Where a local stack listens (`saga up`'s, or the one `saga chaos` runs against).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct Ports {
    /// Port of the Pub/Sub emulator (reused if one already answers there).
    #[arg(long = "pubsub-port", value_name = "PORT", default_value_t = 8085)]
    pub pubsub: u16,
    /// Port of the Firestore emulator (reused if one already answers there).
    #[arg(long = "firestore-port", value_name = "PORT", default_value_t = 8086)]
    pub firestore: u16,
    /// Port of the frontend; order, inventory, payments and janitor take the next four.
    #[arg(long = "frontend-port", value_name = "PORT", default_value_t = 8080)]
    pub frontend: u16,
}

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Project id on the emulators (6 to 30 characters).
    #[arg(long, default_value = "saga-local")]
    pub project: String,
    #[command(flatten)]
    pub ports: Ports,
    /// Turn off the `payment-error` fault switch.
    #[arg(long)]
    pub no_fault_injection: bool,
    /// Put the seed data back to its seed state (stock and balances) before starting.
    #[arg(long)]
    pub reset_data: bool,
    /// Where the emulators' logs go.
    #[arg(long, default_value = "target/saga-up")]
    pub log_dir: PathBuf,
    /// Send the functions' logs to files in the log directory instead of the terminal.
    #[arg(long)]
    pub function_logs: bool,
    /// Run each function from its own binary in DIR, the binary its container image ships
    /// (`cargo build --release --workspace --bins` puts them in target/release), instead of
    /// `saga serve FUNCTION`. The bench measures these: they are smaller than `saga`, which
    /// also carries the CLI.
    #[arg(long, value_name = "DIR")]
    pub functions_from: Option<PathBuf>,
    /// Seconds between each function's sweeps (outbox republish; saga timeouts in the
    /// janitor), as Cloud Scheduler runs them every minute in the cloud. On the emulator a
    /// sweep's query costs time in proportion to all the data of the project.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_SWEEP_INTERVAL_SECS)]
    pub sweep_interval: u64,
    /// Seconds an order stays PENDING before the frontend's sweep publishes its event again
    /// (`SAGA_OUTBOX_GRACE_SECS`); the function's default (30) if not given.
    #[arg(long, value_name = "SECS")]
    pub outbox_grace: Option<u64>,
    /// Users sign in: starts the Firebase Authentication emulator (npm firebase-tools, on
    /// --auth-port) with the demo users jack, jill and penny (password `password`), and the
    /// frontend takes orders only from signed-in users, for themselves.
    #[arg(long)]
    pub auth: bool,
    /// Port of the Firebase Authentication emulator (with --auth).
    #[arg(long, default_value_t = 9099)]
    pub auth_port: u16,
    /// Port of the control endpoint `saga stop FUNCTION` and `saga start FUNCTION` use.
    #[arg(long, default_value_t = supervisor::DEFAULT_CONTROL_PORT)]
    pub control_port: u16,
    /// Orders a second each client may place (the frontend's rate limit, `SAGA_POST_RATE`);
    /// the function's default (5, and 20 at once) if not given.
    #[arg(long, value_name = "PER_SECOND")]
    pub post_rate: Option<f64>,
    /// Each emulator's JVM heap: `auto` (the JVM's own sizing) or fixed at SIZE (`-Xms` and
    /// `-Xmx`, e.g. `4g`), added to `JAVA_TOOL_OPTIONS`.
    #[arg(long, value_name = "SIZE", default_value = "auto")]
    pub emulator_heap: crate::process::Heap,
}

impl UpArgs {
    /// A stack a tool starts for itself (the bench, chaos) on these ports: its own
    /// `project`, its functions' logs in files under `log_dir` (the tool reads them), no
    /// sign-in, no control port, the cloud's sweep schedule; the caller changes what it needs.
    pub fn for_tool(project: String, log_dir: impl Into<PathBuf>, ports: Ports) -> UpArgs {
        UpArgs {
            project,
            ports,
            no_fault_injection: false,
            reset_data: false,
            log_dir: log_dir.into(),
            function_logs: true,
            functions_from: None,
            sweep_interval: DEFAULT_SWEEP_INTERVAL_SECS,
            outbox_grace: None,
            auth: false,
            auth_port: 0,
            control_port: 0,
            post_rate: None,
            emulator_heap: crate::process::Heap::Auto,
        }
    }
}

/// The password of `saga up --auth`'s demo users.
pub const DEMO_PASSWORD: &str = "password";

/// The cloud's sweep schedule (terraform's `sweep_schedule`, every minute).
pub const DEFAULT_SWEEP_INTERVAL_SECS: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("--project must be 6 to 30 characters, got {0:?}")]
    Project(String),
    #[error(transparent)]
    Emulator(#[from] crate::EmulatorError),
    #[error("creating the topology: {0}")]
    Bootstrap(#[from] crate::bootstrap::BootstrapError),
    #[error("seeding: {0}")]
    Seed(#[from] saga_infra::store::StoreError),
    #[error("port {port} for {function} is in use; choose others with --frontend-port")]
    PortInUse { function: Function, port: u16 },
    #[error("{0}")]
    Io(String),
    #[error("{function} did not become healthy on port {port} within {waited:?}")]
    Unhealthy {
        function: Function,
        port: u16,
        waited: Duration,
    },
    #[error("{function} exited: {status}")]
    FunctionExited { function: Function, status: String },
}

impl UpArgs {
    pub fn port_of(&self, function: Function) -> u16 {
        let offset = Function::ALL
            .iter()
            .position(|f| *f == function)
            .unwrap_or(0);
        self.ports.frontend + offset as u16
    }
}

/// A running local stack: the emulators (started, or reused), the topology and seed data,
/// and the five functions as child processes.
pub struct Stack {
    pub config: Config,
    pub ports: BTreeMap<Function, u16>,
    /// Seed documents written.
    pub seeded: usize,
    /// How long each function took from launch to answering its health check.
    pub ready: BTreeMap<Function, Duration>,
    /// The emulators this stack started (none if it reused running ones).
    pub emulators: Vec<Emulator>,
    /// What runs the functions.
    pub launcher: Launcher,
    /// The files the functions log to (none when they log to the terminal).
    pub logs: Vec<PathBuf>,
    /// The Firebase Authentication emulator, with `--auth`.
    pub auth: Option<AuthEmulator>,
    /// The functions' processes, restarted when they die, stopped and started on demand.
    pub control: Control,
}

impl Stack {
    pub async fn start(args: &UpArgs) -> Result<Stack, UpError> {
        if !(6..=30).contains(&args.project.len()) {
            return Err(UpError::Project(args.project.clone()));
        }
        std::fs::create_dir_all(&args.log_dir)
            .map_err(|e| UpError::Io(format!("creating {}: {e}", args.log_dir.display())))?;
        let launcher = Launcher::of(args)?;
        let pubsub_host = format!("127.0.0.1:{}", args.ports.pubsub);
        let firestore_host = format!("127.0.0.1:{}", args.ports.firestore);
        for function in Function::ALL {
            let port = args.port_of(function);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                return Err(UpError::PortInUse { function, port });
            }
        }

        eprintln!("Starting the emulators (this takes 10-20 s)...");
        let (pubsub, firestore) = tokio::join!(
            emulator(Kind::PubSub, &pubsub_host, args),
            emulator(Kind::Firestore, &firestore_host, args),
        );
        let emulators: Vec<Emulator> = [pubsub?, firestore?].into_iter().flatten().collect();

        let push_endpoint = |s: &PushSubscription| {
            format!("http://127.0.0.1:{}{}", args.port_of(s.function), s.path)
        };
        crate::create_topology(&args.project, &pubsub_host, push_endpoint).await?;
        let store =
            Store::connect(&args.project, &Endpoint::Emulator(firestore_host.clone())).await?;
        let mode = if args.reset_data {
            SeedMode::Reset
        } else {
            SeedMode::IfAbsent
        };
        let seeded = crate::seed(&store, mode).await?;

        let auth = match args.auth {
            true => Some(auth_emulator(args).await?),
            false => None,
        };
        let mut config = Config {
            fault_injection: !args.no_fault_injection,
            ..Config::emulators(&args.project, &pubsub_host, &firestore_host)
        };
        // The faults `saga chaos` asks for, as the payment-error switch: local, on by default.
        config.faults.chaos = !args.no_fault_injection;
        if let Some(grace) = args.outbox_grace {
            config.outbox_grace = Duration::from_secs(grace);
        }
        if let Some(auth) = &auth {
            config.user_auth = UserAuth::Firebase(FirebaseAuth {
                project_id: auth.project.clone(),
                jwks_url: saga_infra::config::FIREBASE_JWKS_URL.into(),
                emulator: Some(auth.host.clone()),
                web_api_key: None,
            });
        }
        if let Some(rate) = args.post_rate.filter(|r| *r > 0.0) {
            config.limits.post_every = Duration::from_secs_f64(1.0 / rate);
            config.limits.post_burst = rate
                .max(f64::from(config.limits.post_burst))
                .min(f64::from(u32::MAX)) as u32;
        }
        // One way to start a function, the first time and every restart.
        let spawn: Spawn = {
            let (launcher, config, args) = (launcher.clone(), config.clone(), args.clone());
            Box::new(move |function, restart| {
                let log = args
                    .function_logs
                    .then(|| args.log_dir.join(format!("{}.log", function.name())));
                spawn_function(
                    &launcher,
                    function,
                    &config,
                    args.port_of(function),
                    log.as_deref(),
                    args.sweep_interval,
                    restart,
                )
                .map_err(|e| e.to_string())
            })
        };
        let mut children = BTreeMap::new();
        let mut launched = BTreeMap::new();
        for function in Function::ALL {
            launched.insert(function, Instant::now());
            let child = spawn(function, Restart::First).map_err(UpError::Io)?;
            children.insert(function, child);
        }
        let logs: Vec<PathBuf> = match args.function_logs {
            true => Function::ALL
                .iter()
                .map(|f| args.log_dir.join(format!("{}.log", f.name())))
                .collect(),
            false => Vec::new(),
        };
        let ready = wait_healthy(args, &launched, &mut children).await?;
        let ports: BTreeMap<Function, u16> = Function::ALL
            .iter()
            .map(|f| (*f, args.port_of(*f)))
            .collect();
        let control = supervisor::supervise(children, ports, spawn);
        Ok(Stack {
            config,
            ports: Function::ALL
                .iter()
                .map(|f| (*f, args.port_of(*f)))
                .collect(),
            seeded,
            ready,
            emulators,
            launcher,
            logs,
            auth,
            control,
        })
    }

    /// The process id of a function.
    pub fn pid(&self, function: Function) -> Option<u32> {
        self.control.pid(function)
    }

    /// Stops the functions (gracefully), then the emulators it started.
    pub async fn stop(mut self) {
        self.control.shutdown().await;
        for mut emulator in self.emulators.drain(..) {
            emulator.stop();
        }
    }
}

/// The Firebase Authentication emulator on `--auth-port`, with the demo users (their ids are
/// the seeded users', so their balances are there).
async fn auth_emulator(args: &UpArgs) -> Result<AuthEmulator, UpError> {
    eprintln!("Starting the Firebase Authentication emulator (the first time, npm installs it)...");
    let host = format!("127.0.0.1:{}", args.auth_port);
    let project = crate::auth::project_for(&args.project);
    let dir = args.log_dir.join("auth-emulator");
    let auth = AuthEmulator::start(
        &host,
        &project,
        &dir,
        &args.log_dir.join("auth-emulator.log"),
    )
    .await
    .map_err(|e| UpError::Io(e.to_string()))?;
    for (user, _) in crate::seed::USERS {
        auth.user(user, &format!("{user}@example.com"), DEMO_PASSWORD)
            .await
            .map_err(|e| UpError::Io(e.to_string()))?;
    }
    Ok(auth)
}

async fn emulator(kind: Kind, host: &str, args: &UpArgs) -> Result<Option<Emulator>, UpError> {
    if crate::is_ready(host).await {
        eprintln!("Reusing the {} already running on {host}.", kind.name());
        return Ok(None);
    }
    let log = args.log_dir.join(match kind {
        Kind::PubSub => "pubsub-emulator.log",
        Kind::Firestore => "firestore-emulator.log",
    });
    Ok(Some(
        Emulator::start(kind, host, &args.project, &args.emulator_heap, &log).await?,
    ))
}

/// How the functions are started: `saga serve FUNCTION`, or each function's own binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launcher {
    Serve(PathBuf),
    Binaries(PathBuf),
}

impl Launcher {
    /// The launcher `args` ask for; every binary must be there before anything starts.
    pub fn of(args: &UpArgs) -> Result<Launcher, UpError> {
        match &args.functions_from {
            None => std::env::current_exe()
                .map(Launcher::Serve)
                .map_err(|e| UpError::Io(format!("finding saga: {e}"))),
            Some(dir) => {
                let missing: Vec<&str> = Function::ALL
                    .iter()
                    .map(|f| f.name())
                    .filter(|name| !dir.join(name).is_file())
                    .collect();
                if missing.is_empty() {
                    Ok(Launcher::Binaries(dir.clone()))
                } else {
                    Err(UpError::Io(format!(
                        "--functions-from {}: no binary for {}; build them with \
                         `cargo build --release --workspace --bins`",
                        dir.display(),
                        missing.join(", ")
                    )))
                }
            }
        }
    }

    fn command(&self, function: Function) -> Command {
        match self {
            Launcher::Serve(saga) => {
                let mut command = Command::new(saga);
                command.args(["serve", function.name()]);
                command
            }
            Launcher::Binaries(dir) => Command::new(dir.join(function.name())),
        }
    }

    /// What runs the functions, in words.
    pub fn describe(&self) -> String {
        match self {
            Launcher::Serve(_) => "saga serve FUNCTION".to_owned(),
            Launcher::Binaries(dir) => format!("per-function binaries from {}", dir.display()),
        }
    }
}

fn spawn_function(
    launcher: &Launcher,
    function: Function,
    config: &Config,
    port: u16,
    log: Option<&std::path::Path>,
    sweep_interval: u64,
    restart: Restart,
) -> Result<Child, UpError> {
    let stderr = match log {
        Some(path) => supervisor::log_file(&path.to_path_buf(), restart)
            .map(Stdio::from)
            .map_err(|e| UpError::Io(format!("creating {}: {e}", path.display())))?,
        None => Stdio::inherit(),
    };
    let host = |e: &Endpoint| match e {
        Endpoint::Emulator(h) => h.clone(),
        Endpoint::Cloud => String::new(),
    };
    launcher
        .command(function)
        .env("PORT", port.to_string())
        .env("GOOGLE_CLOUD_PROJECT", &config.project_id)
        .env("PUBSUB_EMULATOR_HOST", host(&config.pubsub))
        .env("FIRESTORE_EMULATOR_HOST", host(&config.firestore))
        .env("SAGA_FAULT_INJECTION", config.fault_injection.to_string())
        .env("SAGA_CHAOS", config.faults.chaos.to_string())
        .env(
            "SAGA_OUTBOX_GRACE_SECS",
            config.outbox_grace.as_secs().to_string(),
        )
        .env(PARENT_ENV, std::process::id().to_string())
        .env("SAGA_SWEEP_INTERVAL_SECS", sweep_interval.to_string())
        .envs(user_auth_env(&config.user_auth))
        .env(
            "SAGA_POST_RATE",
            (1.0 / config.limits.post_every.as_secs_f64().max(1e-9)).to_string(),
        )
        .env("SAGA_POST_BURST", config.limits.post_burst.to_string())
        .stdin(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| UpError::Io(format!("starting {function}: {e}")))
}

/// The environment that tells a function how its users sign in.
fn user_auth_env(auth: &UserAuth) -> Vec<(&'static str, String)> {
    match auth {
        UserAuth::Off => vec![("SAGA_USER_AUTH", "off".into())],
        UserAuth::Firebase(f) => {
            let mut env = vec![
                ("SAGA_USER_AUTH", "firebase".into()),
                ("SAGA_USER_AUTH_PROJECT", f.project_id.clone()),
            ];
            env.extend(
                f.emulator
                    .clone()
                    .map(|h| ("FIREBASE_AUTH_EMULATOR_HOST", h)),
            );
            env
        }
    }
}

/// Waits for every function's health check; returns how long each took from its launch.
async fn wait_healthy(
    args: &UpArgs,
    launched: &BTreeMap<Function, Instant>,
    children: &mut BTreeMap<Function, Child>,
) -> Result<BTreeMap<Function, Duration>, UpError> {
    let limit = Duration::from_secs(30);
    let mut ready = BTreeMap::new();
    while ready.len() < Function::ALL.len() {
        for function in Function::ALL {
            if ready.contains_key(&function) {
                continue;
            }
            let port = args.port_of(function);
            let since = launched[&function];
            if http_ok(port, "/healthz").await {
                ready.insert(function, since.elapsed());
                continue;
            }
            if let Some(child) = children.get_mut(&function)
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(UpError::FunctionExited {
                    function,
                    status: status.to_string(),
                });
            }
            if since.elapsed() > limit {
                return Err(UpError::Unhealthy {
                    function,
                    port,
                    waited: limit,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(ready)
}

/// Whether `GET path` on the local port answers 200.
pub async fn http_ok(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(head.ends_with(b" 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}
