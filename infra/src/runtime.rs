//! What every function has: its configuration and connected clients, and the server loop
//! around its router (health check, graceful shutdown).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::config::{Config, ConfigError};
use crate::otlp::{ExportError, Exporter};
use crate::publisher::{EventPublisher, PublishError};
use crate::spans::Tracer;
use crate::store::{Store, StoreError};
use crate::telemetry;
use crate::topology::Function;

/// A function's configuration and clients; cheap to clone.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub function: Function,
    pub config: Arc<Config>,
    pub store: Store,
    pub publisher: EventPublisher,
    /// Fires when the process is asked to stop: what never ends by itself (a live stream)
    /// ends then.
    pub stopping: Stopping,
    /// What the sweeps cost, apart from what orders cost (the store's and publisher's
    /// meter): a sweep runs on a schedule, whatever the orders.
    pub sweep_meter: crate::meter::Meter,
    /// Exports the function's spans ([`crate::spans`]); off without an OTLP endpoint.
    pub tracer: Tracer,
}

impl Runtime {
    /// This runtime with its operations counted as a sweep's.
    pub fn sweeping(&self) -> Runtime {
        Runtime {
            store: self.store.metered(self.sweep_meter.clone()),
            publisher: self.publisher.metered(self.sweep_meter.clone()),
            ..self.clone()
        }
    }
}

/// The process is stopping (SIGTERM): long-lived answers end so the server can.
#[derive(Clone, Debug)]
pub struct Stopping {
    sender: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Stopping {
    fn default() -> Stopping {
        Stopping {
            sender: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }
}

impl Stopping {
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    pub fn is_set(&self) -> bool {
        *self.sender.borrow()
    }

    /// Resolves once the process is stopping.
    pub async fn wait(&self) {
        let mut receiver = self.sender.subscribe();
        // The sender lives as long as `self`: this only ends when the flag is set.
        let _ = receiver.wait_for(|stopping| *stopping).await;
    }
}

/// Cloud Run sends SIGTERM, then SIGKILL 10 s later ("Container runtime contract"; the
/// instance keeps its CPU between the two). What a stopping function does in that time:
/// its live streams end at once, requests in flight get [`DRAIN`] to finish, and the spans
/// they ended get [`SPAN_FLUSH`] to be exported. A request
/// cut short costs a redelivery (a push) or an error the client retries, never state: a
/// function keeps nothing in memory that a commit has not already made durable.
pub const DRAIN: std::time::Duration = std::time::Duration::from_secs(8);

/// How long a stopping function waits for its last spans to be exported, after the drain:
/// within the 10 s before SIGKILL.
pub const SPAN_FLUSH: std::time::Duration = std::time::Duration::from_millis(1500);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

impl Runtime {
    /// Connects the clients `function` needs, at the same time: Firestore, and publishers for
    /// its topics.
    pub async fn connect(function: Function, config: Config) -> Result<Runtime, StartupError> {
        let meter = crate::meter::Meter::default();
        let (store, publisher) = tokio::try_join!(
            async {
                Store::connect_metered(&config.project_id, &config.firestore, meter.clone())
                    .await
                    .map_err(StartupError::from)
            },
            async {
                EventPublisher::connect(
                    &config.project_id,
                    &config.pubsub,
                    function.publishes(),
                    meter.clone(),
                )
                .await
                .map_err(StartupError::from)
            },
        )?;
        let tracer = match &config.otlp {
            Some(otlp) => Tracer::new(Exporter::start(function, &config.project_id, otlp)?),
            None => Tracer::off(),
        };
        Ok(Runtime {
            function,
            config: Arc::new(config),
            store,
            publisher,
            stopping: Stopping::default(),
            sweep_meter: crate::meter::Meter::default(),
            tracer,
        })
    }
}

/// Adds what every function serves besides its own routes: `GET /healthz`. The router only
/// exists once the clients are connected, so answering at all means ready.
pub fn with_health(function: Function, router: Router) -> Router {
    router.route(
        "/healthz",
        get(move || async move {
            Json(serde_json::json!({ "status": "ok", "function": function.name() }))
        }),
    )
}

/// Middleware: answers 503 ("retry later") to a request not answered within the limit (its
/// state), so no request holds a connection, and a slot of the instance's concurrency, for
/// ever: `router.layer(from_fn_with_state(limit, time_limit))`.
pub async fn time_limit(
    axum::extract::State(limit): axum::extract::State<std::time::Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(?limit, "request timed out");
            let body = serde_json::json!({"error": "the request took too long, retry later", "retry": true});
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// A function's server, bound and ready to run.
pub struct Server {
    listener: TcpListener,
    router: Router,
}

impl Server {
    /// Binds `config.bind:config.port` (port 0 picks a free one).
    pub async fn bind(
        function: Function,
        config: &Config,
        router: Router,
    ) -> Result<Server, StartupError> {
        let addr = SocketAddr::new(config.bind, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let mut router = with_health(function, router);
        if config.faults.chaos {
            router = router.layer(axum::middleware::from_fn(crate::chaos::middleware));
        }
        Ok(Server { listener, router })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then gives requests in flight up to [`DRAIN`] to
    /// finish and closes what is still open.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let draining = Arc::new(tokio::sync::Notify::new());
        // With each connection's peer address, for per-client limits.
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let serve = axum::serve(self.listener, service).with_graceful_shutdown({
            let draining = draining.clone();
            async move {
                shutdown.await;
                draining.notify_one();
            }
        });
        tokio::select! {
            served = serve => served.map_err(StartupError::Serve),
            () = async {
                draining.notified().await;
                tokio::time::sleep(DRAIN).await;
            } => {
                tracing::warn!(drain = ?DRAIN, "requests still open when stopping: closed");
                Ok(())
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM (what Cloud Run sends before stopping an instance).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// The whole of a function's `main`: configuration from the environment, telemetry, clients,
/// router, serve until SIGTERM.
pub async fn main(function: Function, router: fn(Runtime) -> Router) -> ExitCode {
    main_until(function, router, shutdown_signal()).await
}

/// [`main`], stopping gracefully when `shutdown` resolves.
pub async fn main_until(
    function: Function,
    router: fn(Runtime) -> Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> ExitCode {
    telemetry::init(function);
    match run(function, router, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "{function} stopped");
            ExitCode::FAILURE
        }
    }
}

/// Calls the function's own sweep endpoint every `interval` (what Cloud Scheduler does in the
/// cloud), so the local stack sweeps through the same code path.
async fn sweep_periodically(addr: SocketAddr, path: &'static str, interval: std::time::Duration) {
    let url = format!("http://{addr}{path}");
    let http = reqwest::Client::new();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match http.post(&url).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!(status = %r.status(), "sweep failed"),
            Err(error) => tracing::warn!(%error, "sweep unreachable"),
        }
    }
}

/// Resolves once the process whose id is `parent` is no longer this process's parent (it
/// died, even by SIGKILL, and this process was re-parented): a local runner's children use it
/// so that they never outlive it.
#[cfg(unix)]
pub async fn parent_gone(parent: u32) {
    while std::os::unix::process::parent_id() == parent {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

async fn run(
    function: Function,
    router: fn(Runtime) -> Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let config = Config::from_env(function)?;
    if config.push_auth == crate::config::PushAuth::Disabled && !config.pubsub.is_emulator() {
        tracing::warn!("push authentication is DISABLED in the cloud (SAGA_PUSH_AUTH=disabled)");
    }
    let runtime = Runtime::connect(function, config.clone()).await?;
    let stopping = runtime.stopping.clone();
    let tracer = runtime.tracer.clone();
    let server = Server::bind(function, &config, router(runtime)).await?;
    if let Some(interval) = config.sweep_interval
        && let Some(path) = function.sweep_path()
    {
        tokio::spawn(sweep_periodically(server.local_addr(), path, interval));
    }
    tracing::info!(
        addr = %server.local_addr(),
        project = %config.project_id,
        pubsub = ?config.pubsub,
        firestore = ?config.firestore,
        fault_injection = config.fault_injection,
        push_auth = matches!(config.push_auth, crate::config::PushAuth::Oidc(_)),
        sweep_interval_s = config.sweep_interval.map(|i| i.as_secs()),
        spans_to = config.otlp.as_ref().map(|o| o.traces_url.as_str()),
        "{function} ready"
    );
    let served = server
        .run(async move {
            shutdown.await;
            tracing::info!("stopping: streams end, requests in flight finish");
            stopping.trigger();
        })
        .await;
    // What the last requests recorded goes out before the process does.
    tracer.flush(SPAN_FLUSH).await;
    served?;
    tracing::info!("{function} stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_request_not_answered_in_time_is_answered_503_retry_later() {
        let app = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route("/fast", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(
                std::time::Duration::from_millis(100),
                time_limit,
            ));
        let call = |path: &'static str| {
            let app = app.clone();
            async move {
                let response = app
                    .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                let status = response.status();
                let body = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        let (status, body) = call("/slow").await;
        assert_eq!(status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("retry later"), "{body}");
        assert_eq!(call("/fast").await.0, axum::http::StatusCode::OK);
    }
}
