//! The floor of `saga bench`: what the emulators alone allow, measured as a trivial saga with
//! the same shape as an order and none of its logic, at the same concurrency and count, on
//! the same emulators. A trivial order is four stages, like frontend → order → inventory →
//! payments; each stage runs a bare read-then-write Firestore transaction and publishes to
//! the next stage's topic, and three push hops carry it from stage to stage:
//!
//! ```text
//! client: txn, publish floor-0 → push → txn, publish floor-1 → push → txn, publish floor-2
//!         → push → txn, publish floor-3 (no push subscriber, like payment-created) → done
//! ```
//!
//! The chain and the transactions run together, as in the saga, so they compete for the same
//! CPU as they do in a real run; the saga's orders/s is then reported as a ratio to this,
//! both measured in passes, taking turns ([`Rig`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use futures::FutureExt;
use google_cloud_pubsub::client::{BasePublisher, Publisher};
use google_cloud_pubsub::model::Message;
use saga_infra::config::Endpoint;
use saga_infra::meter::Counts;
use saga_infra::push::{Arrived, PushEnvelope};
use saga_infra::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, oneshot};

use saga_contracts::topology::topic_path;

use crate::model::{BenchArgs, BenchError, Floor, Latency, PushTimes, procfs, round};
use saga_emulator::stack::Stack;

/// Stages of a trivial order; the push hops between them are one fewer.
const STAGES: usize = 4;

/// Latencies recorded while the floor runs.
#[derive(Default)]
struct Samples {
    hops: Vec<Duration>,
    txns: Vec<Duration>,
    /// Each push's stage, and its Pub/Sub part, its stage part (until its transaction
    /// committed) and how long it was held (until its publish was done and it was
    /// answered), in ms, as the saga's steps log theirs.
    pushes: Vec<(usize, (f64, f64, f64))>,
}

#[derive(Clone)]
struct Floorer {
    store: Store,
    publishers: Arc<Vec<Publisher>>,
    waiters: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>,
    samples: Arc<Mutex<Samples>>,
    /// Message data carries its publish time as microseconds since this instant.
    epoch: Instant,
}

impl Floorer {
    /// Runs trivial orders `orders`, `concurrency` at a time, each after its think time of
    /// up to `think_ms`; each one's time from its first transaction until its last publish,
    /// for those that finished within a minute.
    async fn drive(
        &self,
        orders: std::ops::Range<usize>,
        concurrency: usize,
        think_ms: u64,
    ) -> Result<Vec<Duration>, String> {
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut tasks = Vec::new();
        for i in orders {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| e.to_string())?;
            let floor = self.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                crate::model::think_first(think_ms, i).await;
                let id = uuid::Uuid::new_v4().simple().to_string();
                let (tx, rx) = oneshot::channel();
                if let Ok(mut w) = floor.waiters.lock() {
                    w.insert(id.clone(), tx);
                }
                let t0 = Instant::now();
                floor.stage(0, &id).await.ok()?;
                tokio::time::timeout(Duration::from_secs(60), rx)
                    .await
                    .ok()
                    .map(|_| t0.elapsed())
            }));
        }
        let mut orders = Vec::new();
        for task in tasks {
            if let Ok(Some(total)) = task.await {
                orders.push(total);
            }
        }
        Ok(orders)
    }

    /// One stage of order `id`: a bare transaction, then the publish to the next stage.
    /// When its transaction committed.
    async fn stage(&self, stage: usize, id: &str) -> Result<Instant, String> {
        let t0 = Instant::now();
        bare_transaction(&self.store, &format!("{id}-{stage}"))
            .await
            .map_err(|e| e.to_string())?;
        let committed = Instant::now();
        self.record(|s| s.txns.push(committed - t0));
        let sent = self.epoch.elapsed().as_micros();
        let data = format!("{id} {sent}").into_bytes();
        self.store.meter().publish(data.len());
        self.publishers[stage]
            .publish(Message::new().set_data(data))
            .await
            .map_err(|e| e.to_string())?;
        Ok(committed)
    }

    /// Trivial order `id` is over: wakes its sender.
    fn done(&self, id: &str) {
        let waiter = self.waiters.lock().ok().and_then(|mut w| w.remove(id));
        if let Some(waiter) = waiter {
            let _ = waiter.send(());
        }
    }

    fn record(&self, f: impl FnOnce(&mut Samples)) {
        if let Ok(mut samples) = self.samples.lock() {
            f(&mut samples);
        }
    }
}

/// A spawned task, aborted when this is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Read a counter, write it back incremented: the smallest transaction a step can run.
async fn bare_transaction(store: &Store, id: &str) -> Result<(), StoreError> {
    #[derive(Serialize, Deserialize)]
    struct Counter {
        n: i64,
    }
    store
        .transaction("floor", |mut tx| {
            let id = id.to_owned();
            async move {
                let n = tx.get::<Counter>("floor", &id).await?.map_or(0, |c| c.n);
                tx.set("floor", &id, &Counter { n: n + 1 })?;
                Ok(())
            }
            .boxed()
        })
        .await
}

/// Push from the topic of stage `hop`: runs stage `hop + 1`. Like a step, 5xx asks for a
/// redelivery.
async fn relay(State(floor): State<Floorer>, Path(hop): Path<usize>, body: Bytes) -> StatusCode {
    let (arrived, at) = (floor.epoch.elapsed(), Arrived::now());
    let Ok(envelope) = serde_json::from_slice::<PushEnvelope>(&body) else {
        return StatusCode::OK;
    };
    let arrival = at.of(&envelope.message);
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD
        .decode(envelope.message.data)
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&data);
    let mut parts = text.split(' ');
    let (Some(id), Some(Ok(sent))) = (parts.next(), parts.next().map(str::parse::<u64>)) else {
        return StatusCode::OK;
    };
    floor.record(|s| {
        s.hops
            .push(arrived.saturating_sub(Duration::from_micros(sent)))
    });
    match floor.stage(hop + 1, id).await {
        Ok(committed) => {
            if let Some(delivery) = arrival.delivery_ms() {
                let held = arrival.ms_until(Instant::now());
                floor.record(|s| {
                    s.pushes
                        .push((hop + 1, (delivery, arrival.ms_until(committed), held)))
                });
            }
            // Only once its last push is recorded: a warm-up's samples are cleared when its
            // last order is over, and a run's are read then.
            if hop + 2 == STAGES {
                floor.done(id);
            }
            StatusCode::OK
        }
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn other(e: impl std::fmt::Display) -> BenchError {
    BenchError::Other(format!("floor: {e}"))
}

/// The floor, set up and warmed up, and what its measured passes took, pooled.
///
/// It is measured in `--passes` passes (four by default) of an even share of the count, each
/// before one of the saga's (floor, saga, floor, saga, ...), and each side is pooled over
/// its passes: the emulators' push loops settle into phases that hold for a whole pass and
/// differ from one pass to the next (two passes of the floor in one run have differed by up
/// to 20 %, and a saga pass has locked into step with the loops' sleeps at 69 % of the
/// floor), and the emulators keep warming up through a run, so one pass on each side made
/// the ratio a draw.
pub struct Rig {
    floor: Floorer,
    /// Stopped with the rig, also when the floor fails early.
    _server: AbortOnDrop<std::io::Result<()>>,
    /// The emulators' names, and their CPU over the measured passes, in the same order.
    emulators: Vec<String>,
    emulator_cpu: procfs::Ticks,
    /// Every measured trivial order's time.
    orders: Vec<Duration>,
    elapsed: Duration,
    ops: Counts,
    /// Each pass's trivial orders a second, in the order they ran.
    passes: Vec<f64>,
}

/// Sets the floor up on `stack` and runs its warm-up (as many trivial orders as the saga's);
/// `emulators` are the emulators' process trees, by name, whose CPU its passes count.
pub async fn prepare(
    stack: &Stack,
    args: &BenchArgs,
    emulators: Vec<(String, Vec<u32>)>,
) -> Result<Rig, BenchError> {
    let Endpoint::Emulator(pubsub_host) = &stack.config.pubsub else {
        return Err(other("the floor is measured on the emulators"));
    };
    let project = &stack.config.project_id;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(other)?;
    let port = listener.local_addr().map_err(other)?.port();
    for stage in 0..STAGES {
        let topic = format!("floor-{stage}");
        if stage + 1 < STAGES {
            saga_emulator::bootstrap::create_push_pair(
                project,
                pubsub_host,
                &topic,
                &format!("{topic}-sub"),
                &format!("http://127.0.0.1:{port}/relay/{stage}"),
            )
            .await
            .map_err(other)?;
        } else {
            saga_emulator::bootstrap::create_topic(project, pubsub_host, &topic)
                .await
                .map_err(other)?;
        }
    }
    let base = BasePublisher::builder()
        .with_endpoint(format!("http://{pubsub_host}"))
        .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
        .build()
        .await
        .map_err(other)?;
    let publishers: Vec<Publisher> = (0..STAGES)
        .map(|stage| {
            base.publisher(topic_path(project, &format!("floor-{stage}")))
                .set_delay_threshold(saga_infra::publisher::BATCH_DELAY)
                .build()
        })
        .collect();
    // Its documents in a project of their own: on the emulator a query scans its whole
    // project, and the saga's sweeps query theirs while the saga is measured.
    let floor = Floorer {
        store: Store::connect(&format!("{project}-floor"), &stack.config.firestore).await?,
        publishers: Arc::new(publishers),
        waiters: Arc::default(),
        samples: Arc::default(),
        epoch: Instant::now(),
    };
    // Answered as the steps answer their pushes on the emulator: it opens a connection a
    // push either way, and the floor's ends with its answer like the saga's.
    let app = Router::new()
        .route("/relay/{hop}", post(relay))
        .with_state(floor.clone())
        .layer(axum::middleware::map_response(
            saga_infra::step::close_connection,
        ));
    let server = AbortOnDrop(tokio::spawn(
        async move { axum::serve(listener, app).await },
    ));

    // The floor's own warm-up, as the saga has its own: its trivial orders are the emulators'
    // first on their topics, subscriptions and collection.
    if args.warmup > 0 {
        let warm = floor
            .drive(0..args.warmup, args.warmup_concurrency(), 0)
            .await
            .map_err(other)?;
        if warm.len() < args.warmup {
            return Err(other("warm-up trivial orders did not finish"));
        }
        if let Ok(mut samples) = floor.samples.lock() {
            *samples = Samples::default();
        }
    }
    Ok(Rig {
        floor,
        _server: server,
        emulator_cpu: procfs::Ticks::of(emulators.iter().map(|(_, t)| t.clone()).collect()),
        emulators: emulators.into_iter().map(|(name, _)| name).collect(),
        orders: Vec::new(),
        elapsed: Duration::ZERO,
        ops: Counts::default(),
        passes: Vec::new(),
    })
}

impl Rig {
    /// One measured pass: as many trivial orders as the saga's `orders`, with their think
    /// times, at the run's concurrency.
    pub async fn measure(
        &mut self,
        orders: std::ops::Range<usize>,
        args: &BenchArgs,
    ) -> Result<(), BenchError> {
        let count = orders.len();
        let counted = self.floor.store.meter().counts();
        self.emulator_cpu.start();
        let started = Instant::now();
        let orders = self
            .floor
            .drive(orders, args.concurrency, args.think_ms)
            .await
            .map_err(other)?;
        let elapsed = started.elapsed();
        self.emulator_cpu.stop();
        if orders.len() < count {
            return Err(other(format!(
                "only {} of {count} trivial orders finished",
                orders.len()
            )));
        }
        self.ops = self
            .ops
            .plus(&self.floor.store.meter().counts().since(&counted));
        self.passes
            .push(round(orders.len() as f64 / elapsed.as_secs_f64().max(1e-3)));
        self.elapsed += elapsed;
        self.orders.extend(orders);
        Ok(())
    }

    /// The passes pooled: every trivial order over the passes' time together.
    pub fn result(self, args: &BenchArgs) -> Result<Floor, BenchError> {
        let samples = self
            .floor
            .samples
            .lock()
            .map(|s| {
                (
                    Latency::of(&s.hops),
                    Latency::of(&s.txns),
                    PushTimes::of(s.pushes.iter().map(|p| p.1)),
                    (1..STAGES)
                        .map(|stage| {
                            let of_stage = s.pushes.iter().filter(|p| p.0 == stage);
                            (
                                format!("stage {stage}"),
                                PushTimes::of(of_stage.map(|p| p.1)),
                            )
                        })
                        .collect(),
                )
            })
            .map_err(other)?;
        let orders = self.orders.len();
        Ok(Floor {
            orders_per_s: round(orders as f64 / self.elapsed.as_secs_f64().max(1e-3)),
            passes: self.passes,
            warmup: args.warmup,
            end_to_end: Latency::of(&self.orders),
            pubsub_hop: samples.0,
            firestore_txn: samples.1,
            pushes: samples.2,
            pushes_by_stage: samples.3,
            // The floor's stages run in the bench's own process, whose CPU is not theirs alone.
            cost: crate::cost::cost(&self.ops, orders as f64, 0.0),
            emulator_cpu_ms: self
                .emulators
                .iter()
                .zip(self.emulator_cpu.counted())
                .map(|(name, ticks)| {
                    let ms =
                        *ticks as f64 / procfs::TICKS_PER_SECOND * 1000.0 / orders.max(1) as f64;
                    (name.clone(), round(ms))
                })
                .collect(),
        })
    }
}
