//! What Cloud Run does for a service whose instance dies, done for `saga up`'s functions: a
//! function that exits is started again, with backoff, and the supervisor says so. An
//! operator can also stop one function and start it again against the running stack
//! (`saga stop inventory`, `saga start inventory`): the original design's "what if
//! inventory is offline?", asked live.
//!
//! The supervisor owns the function processes. Commands reach it through [`Control`], which
//! `saga up` also serves over HTTP on its control port ([`serve_control`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use saga_contracts::topology::Function;
use serde::{Deserialize, Serialize};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};

/// The first wait before a restart; it doubles for each restart in a row, up to
/// [`BACKOFF_MAX`], and starts over once the function has stayed up [`STABLE_AFTER`].
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long a stopped function gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Starts one function's process (`saga serve FUNCTION` or its binary) with the stack's
/// configuration.
pub type Spawn = Box<dyn Fn(Function, Restart) -> Result<Child, String> + Send + Sync>;

/// Whether a start is the first one (the log is written afresh) or a restart (appended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    First,
    Again,
}

/// What a function is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    /// Exited on its own; started again after a backoff.
    Restarting,
    /// Stopped by an operator; stays stopped until started.
    Stopped,
}

/// One function, as `GET /functions` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionState {
    pub function: String,
    pub port: u16,
    pub phase: Phase,
    pub pid: Option<u32>,
    /// Restarts after the function exited on its own.
    pub restarts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0} is already {1}")]
    Already(Function, &'static str),
    #[error("starting {0}: {1}")]
    Start(Function, String),
    #[error("the supervisor has stopped")]
    Gone,
}

enum Command {
    Stop(Function, oneshot::Sender<Result<(), ControlError>>),
    Start(Function, oneshot::Sender<Result<(), ControlError>>),
    Shutdown(oneshot::Sender<()>),
}

/// A handle on the supervisor: commands, and the functions' state.
#[derive(Clone)]
pub struct Control {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<Vec<FunctionState>>,
}

impl Control {
    /// Stops `function` (SIGTERM, SIGKILL after 5 s); it is not restarted until started.
    pub async fn stop(&self, function: Function) -> Result<(), ControlError> {
        self.ask(|reply| Command::Stop(function, reply)).await?
    }

    /// Starts a stopped `function` again.
    pub async fn start(&self, function: Function) -> Result<(), ControlError> {
        self.ask(|reply| Command::Start(function, reply)).await?
    }

    /// Every function's state.
    pub fn functions(&self) -> Vec<FunctionState> {
        self.state.borrow().clone()
    }

    /// The process id of `function`, if it runs.
    pub fn pid(&self, function: Function) -> Option<u32> {
        self.functions()
            .into_iter()
            .find(|f| f.function == function.name())
            .and_then(|f| f.pid)
    }

    /// Stops every function and the supervisor.
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Shutdown(reply)).await.is_ok() {
            let _ = done.await;
        }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| ControlError::Gone)?;
        answer.await.map_err(|_| ControlError::Gone)
    }
}

struct Supervised {
    port: u16,
    child: Option<Child>,
    phase: Phase,
    restarts: u32,
    /// Restarts in a row without staying up [`STABLE_AFTER`].
    in_a_row: u32,
    started: Instant,
    restart_at: Option<Instant>,
}

/// Supervises `children` (already started and healthy) until [`Control::shutdown`].
pub fn supervise(
    children: BTreeMap<Function, Child>,
    ports: BTreeMap<Function, u16>,
    spawn: Spawn,
) -> Control {
    let now = Instant::now();
    let mut functions: BTreeMap<Function, Supervised> = children
        .into_iter()
        .map(|(function, child)| {
            let supervised = Supervised {
                port: ports.get(&function).copied().unwrap_or_default(),
                child: Some(child),
                phase: Phase::Running,
                restarts: 0,
                in_a_row: 0,
                started: now,
                restart_at: None,
            };
            (function, supervised)
        })
        .collect();
    let (commands, mut inbox) = mpsc::channel(16);
    let (publish, state) = watch::channel(snapshot(&functions));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                command = inbox.recv() => match command {
                    Some(Command::Stop(function, reply)) => {
                        let _ = reply.send(stop_one(&mut functions, function).await);
                    }
                    Some(Command::Start(function, reply)) => {
                        let _ = reply.send(start_one(&mut functions, function, &spawn));
                    }
                    Some(Command::Shutdown(reply)) => {
                        stop_all(&mut functions).await;
                        let _ = publish.send(snapshot(&functions));
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        stop_all(&mut functions).await;
                        return;
                    }
                },
                _ = tick.tick() => watch_exits(&mut functions, &spawn),
            }
            publish.send_if_modified(|old| {
                let new = snapshot(&functions);
                let changed = old
                    .iter()
                    .zip(&new)
                    .any(|(a, b)| (a.phase, a.pid) != (b.phase, b.pid));
                *old = new;
                changed
            });
        }
    });
    Control { commands, state }
}

fn snapshot(functions: &BTreeMap<Function, Supervised>) -> Vec<FunctionState> {
    functions
        .iter()
        .map(|(function, s)| FunctionState {
            function: function.name().to_owned(),
            port: s.port,
            phase: s.phase,
            pid: s.child.as_ref().and_then(Child::id),
            restarts: s.restarts,
        })
        .collect()
}

/// Notices functions that exited on their own and restarts those whose backoff is over.
fn watch_exits(functions: &mut BTreeMap<Function, Supervised>, spawn: &Spawn) {
    let now = Instant::now();
    for (function, s) in functions.iter_mut() {
        if s.phase == Phase::Running
            && let Some(child) = &mut s.child
            && let Ok(Some(status)) = child.try_wait()
        {
            s.child = None;
            if s.started.elapsed() >= STABLE_AFTER {
                s.in_a_row = 0;
            }
            let wait = backoff(s.in_a_row);
            s.in_a_row += 1;
            s.phase = Phase::Restarting;
            s.restart_at = Some(now + wait);
            eprintln!("{function} exited ({status}); restarting it in {wait:?}");
        }
        if s.phase == Phase::Restarting && s.restart_at.is_some_and(|at| at <= now) {
            match spawn(*function, Restart::Again) {
                Ok(child) => {
                    s.restarts += 1;
                    eprintln!(
                        "{function} restarted (pid {}, restart {})",
                        child.id().unwrap_or_default(),
                        s.restarts
                    );
                    s.child = Some(child);
                    s.phase = Phase::Running;
                    s.started = now;
                    s.restart_at = None;
                }
                Err(e) => {
                    let wait = backoff(s.in_a_row);
                    s.in_a_row += 1;
                    s.restart_at = Some(now + wait);
                    eprintln!("restarting {function} failed ({e}); trying again in {wait:?}");
                }
            }
        }
    }
}

/// The wait before the restart that follows `in_a_row` restarts in a row.
pub fn backoff(in_a_row: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(2u32.saturating_pow(in_a_row.min(16)))
        .min(BACKOFF_MAX)
}

async fn stop_one(
    functions: &mut BTreeMap<Function, Supervised>,
    function: Function,
) -> Result<(), ControlError> {
    let Some(s) = functions.get_mut(&function) else {
        return Err(ControlError::Gone);
    };
    if s.phase == Phase::Stopped {
        return Err(ControlError::Already(function, "stopped"));
    }
    if let Some(child) = s.child.take() {
        terminate(child).await;
    }
    s.phase = Phase::Stopped;
    s.restart_at = None;
    eprintln!("{function} stopped (saga start {function} starts it again)");
    Ok(())
}

fn start_one(
    functions: &mut BTreeMap<Function, Supervised>,
    function: Function,
    spawn: &Spawn,
) -> Result<(), ControlError> {
    let Some(s) = functions.get_mut(&function) else {
        return Err(ControlError::Gone);
    };
    if s.phase != Phase::Stopped {
        return Err(ControlError::Already(function, "running"));
    }
    let child = spawn(function, Restart::Again).map_err(|e| ControlError::Start(function, e))?;
    eprintln!(
        "{function} started (pid {})",
        child.id().unwrap_or_default()
    );
    s.child = Some(child);
    s.phase = Phase::Running;
    s.started = Instant::now();
    s.in_a_row = 0;
    Ok(())
}

/// SIGTERM to each function (they finish requests in flight), SIGKILL after 5 s.
async fn stop_all(functions: &mut BTreeMap<Function, Supervised>) {
    let children: Vec<Child> = functions
        .values_mut()
        .filter_map(|s| {
            s.phase = Phase::Stopped;
            s.child.take()
        })
        .collect();
    futures::future::join_all(children.into_iter().map(terminate)).await;
}

async fn terminate(mut child: Child) {
    if let Some(pid) = child.id() {
        let _ = crate::process::signal(pid, "TERM");
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// The control endpoint `saga up` serves on `127.0.0.1:PORT`: `GET /functions`, `POST
/// /functions/{name}/stop`, `POST /functions/{name}/start`, and the operator's `console`.
/// Local only, like the emulators.
pub async fn serve_control(
    control: Control,
    listener: tokio::net::TcpListener,
    console: axum::Router,
) -> std::io::Result<()> {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use axum::{Json, Router};

    async fn act(
        State(control): State<Control>,
        Path((name, action)): Path<(String, String)>,
    ) -> (StatusCode, Json<serde_json::Value>) {
        let Some(function) = Function::from_name(&name) else {
            let error = format!(
                "no function {name:?}; the functions are frontend, order, inventory, payments, janitor"
            );
            return (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({ "error": error })),
            );
        };
        let done = match action.as_str() {
            "stop" => control.stop(function).await,
            "start" => control.start(function).await,
            _ => {
                let error = format!("no action {action:?}: stop or start");
                return (
                    StatusCode::NOT_FOUND,
                    Json(serde_json::json!({ "error": error })),
                );
            }
        };
        match done {
            Ok(()) => (StatusCode::OK, Json(serde_json::json!(control.functions()))),
            Err(e @ ControlError::Already(..)) => (
                StatusCode::CONFLICT,
                Json(serde_json::json!({ "error": e.to_string() })),
            ),
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "error": e.to_string() })),
            ),
        }
    }

    let app = Router::new()
        .route(
            "/functions",
            get(|State(control): State<Control>| async move { Json(control.functions()) }),
        )
        .route("/functions/{name}/{action}", post(act))
        .with_state(control)
        .merge(console);
    axum::serve(listener, app).await
}

/// Where `saga stop` and `saga start` find `saga up`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// The function: frontend, order, inventory, payments or janitor.
    pub function: String,
    /// `saga up`'s control port (`saga up --control-port`).
    #[arg(long, default_value_t = DEFAULT_CONTROL_PORT)]
    pub control_port: u16,
}

/// `saga up`'s control port by default.
pub const DEFAULT_CONTROL_PORT: u16 = 8089;

/// Why `saga stop` or `saga start` did not act.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// No `saga up` answered (exit 2: could not run).
    #[error(
        "no saga up answers on port {port} ({reason}); start it with `saga up`, or pass --control-port"
    )]
    Unreachable { port: u16, reason: String },
    /// `saga up` refused (exit 1): an unknown function, or one already stopped or running.
    #[error("{0}")]
    Refused(String),
}

/// What `saga up` on `control_port` says its functions are doing (`GET /functions`).
pub async fn remote_functions(control_port: u16) -> Result<Vec<FunctionState>, RemoteError> {
    let unreachable = |reason: String| RemoteError::Unreachable {
        port: control_port,
        reason,
    };
    reqwest::get(format!("http://127.0.0.1:{control_port}/functions"))
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .json()
        .await
        .map_err(|e| unreachable(format!("its answer was not the functions: {e}")))
}

/// `saga stop` / `saga start`: asks `saga up` to act on one function; what was done.
pub async fn remote(args: &ControlArgs, action: &str) -> Result<String, RemoteError> {
    let url = format!(
        "http://127.0.0.1:{}/functions/{}/{action}",
        args.control_port, args.function
    );
    let unreachable = |reason: String| RemoteError::Unreachable {
        port: args.control_port,
        reason,
    };
    let response = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| unreachable(format!("its answer was not JSON: {e}")))?;
    if status.is_success() {
        Ok(format!("{} {}", args.function, past(action)))
    } else {
        Err(RemoteError::Refused(
            body["error"].as_str().unwrap_or("refused").to_owned(),
        ))
    }
}

fn past(action: &str) -> &'static str {
    match action {
        "stop" => "stopped",
        _ => "started",
    }
}

/// Where a restarted function's log goes: appended to its first one.
pub fn log_file(path: &PathBuf, restart: Restart) -> std::io::Result<std::fs::File> {
    match restart {
        Restart::First => std::fs::File::create(path),
        Restart::Again => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_in_a_row_wait_longer_up_to_the_maximum() {
        let waits: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
