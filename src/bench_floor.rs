//! The floor of `saga bench`: what the emulators allow with no saga logic at all, at the same
//! concurrency: a 4-hop publish → push → publish chain (an order is 4 such hops), and bare
//! read-then-write Firestore transactions (an order is 4 such transactions).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::post;
use futures::FutureExt;
use google_cloud_pubsub::client::{BasePublisher, Publisher};
use google_cloud_pubsub::model::Message;
use saga_infra::config::Endpoint;
use saga_infra::push::PushEnvelope;
use saga_infra::store::Store;
use saga_infra::topology::topic_path;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, oneshot};

use crate::bench::{BenchArgs, BenchError, Floor, Latency, round};
use crate::up::Stack;

const HOPS: usize = 4;

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

#[derive(Clone)]
struct Relay {
    publishers: Arc<Vec<Publisher>>,
    waiters: Waiters,
}

/// Receives hop `n` and publishes hop `n + 1`; the last hop wakes the waiting sender.
async fn relay(State(relay): State<Relay>, Path(hop): Path<usize>, body: Bytes) -> &'static str {
    let Ok(envelope) = serde_json::from_slice::<PushEnvelope>(&body) else {
        return "bad";
    };
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD
        .decode(envelope.message.data)
        .unwrap_or_default();
    if hop + 1 < HOPS {
        let _ = relay.publishers[hop + 1]
            .publish(Message::new().set_data(data))
            .await;
    } else {
        let id = String::from_utf8_lossy(&data).to_string();
        let waiter = relay.waiters.lock().ok().and_then(|mut w| w.remove(&id));
        if let Some(waiter) = waiter {
            let _ = waiter.send(());
        }
    }
    "ok"
}

pub async fn measure(stack: &Stack, args: &BenchArgs) -> Result<Floor, BenchError> {
    let other = |e: String| BenchError::Other(format!("floor: {e}"));
    let Endpoint::Emulator(pubsub_host) = &stack.config.pubsub else {
        return Err(other("the floor is measured on the emulators".into()));
    };
    let project = &stack.config.project_id;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| other(e.to_string()))?;
    let port = listener
        .local_addr()
        .map_err(|e| other(e.to_string()))?
        .port();
    for hop in 0..HOPS {
        saga_emulator::bootstrap::create_push_pair(
            project,
            pubsub_host,
            &format!("floor-{hop}"),
            &format!("floor-{hop}-sub"),
            &format!("http://127.0.0.1:{port}/relay/{hop}"),
        )
        .await
        .map_err(|e| other(e.to_string()))?;
    }
    let base = BasePublisher::builder()
        .with_endpoint(format!("http://{pubsub_host}"))
        .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
        .build()
        .await
        .map_err(|e| other(e.to_string()))?;
    let publishers: Vec<Publisher> = (0..HOPS)
        .map(|hop| {
            base.publisher(topic_path(project, &format!("floor-{hop}")))
                .set_delay_threshold(Duration::from_millis(2))
                .build()
        })
        .collect();
    let relay_state = Relay {
        publishers: Arc::new(publishers),
        waiters: Arc::default(),
    };
    let app = Router::new()
        .route("/relay/{hop}", post(relay))
        .with_state(relay_state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // The chain.
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.count {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| other(e.to_string()))?;
        let relay = relay_state.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let id = uuid::Uuid::new_v4().to_string();
            let (tx, rx) = oneshot::channel();
            if let Ok(mut w) = relay.waiters.lock() {
                w.insert(id.clone(), tx);
            }
            let t0 = Instant::now();
            let _ = relay.publishers[0]
                .publish(Message::new().set_data(id.into_bytes()))
                .await;
            tokio::time::timeout(Duration::from_secs(60), rx)
                .await
                .ok()
                .map(|_| t0.elapsed())
        }));
    }
    let mut hop_times = Vec::new();
    for task in tasks {
        if let Ok(Some(total)) = task.await {
            hop_times.push(total / HOPS as u32);
        }
    }
    let chain_rate = hop_times.len() as f64 / started.elapsed().as_secs_f64();
    server.abort();

    // Bare transactions: read a document, write it back.
    let store = Store::connect(project, &stack.config.firestore).await?;
    #[derive(Serialize, Deserialize)]
    struct Counter {
        n: i64,
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.count {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| other(e.to_string()))?;
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let t0 = Instant::now();
            let id = format!("floor-{i}");
            let done = store
                .transaction("floor", |mut tx| {
                    let id = id.clone();
                    async move {
                        let n = tx.get::<Counter>("floor", &id).await?.map_or(0, |c| c.n);
                        tx.set("floor", &id, &Counter { n: n + 1 })?;
                        Ok(())
                    }
                    .boxed()
                })
                .await;
            done.ok().map(|_| t0.elapsed())
        }));
    }
    let mut txn_times = Vec::new();
    for task in tasks {
        if let Ok(Some(t)) = task.await {
            txn_times.push(t);
        }
    }
    let txn_rate = txn_times.len() as f64 / started.elapsed().as_secs_f64();

    let hop = Latency::of(&hop_times);
    let txn = Latency::of(&txn_times);
    // An order is 4 hops and 4 transactions in a row; `concurrency` of them in flight.
    let per_order_s = (HOPS as f64 * hop.p50 + 4.0 * txn.p50) / 1000.0;
    let latency_bound = if per_order_s > 0.0 {
        args.concurrency as f64 / per_order_s
    } else {
        0.0
    };
    let orders = latency_bound.min(chain_rate).min(txn_rate / 4.0);
    Ok(Floor {
        pubsub_chain_msgs_per_s: round(chain_rate),
        pubsub_hop: hop,
        firestore_txn_per_s: round(txn_rate),
        firestore_txn: txn,
        orders_per_s: round(orders),
    })
}
