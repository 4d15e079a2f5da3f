//! `saga bench`: real orders through a real local stack (the same one `saga up` runs, on free
//! ports, with a fresh project), measured end to end, with the resources each process used,
//! the floor the emulators alone allow, and the invariants checked afterwards: a run that
//! breaks one has failed, whatever its speed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use saga_contracts::docs::{UserDoc, collections};
use saga_contracts::events::OrderStatus;
use saga_contracts::topology::Function;
use saga_infra::store::Store;
use saga_infra::timeline::{self, EntryKind};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::check::{Baseline, check_settled};
use crate::up::{Stack, UpArgs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Orders spread over 500 items.
    Spread,
    /// Every order on one item.
    Hot,
    /// A mix with stock failures (15%) and payment failures (15%) that are compensated.
    Failures,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// How many orders.
    #[arg(short = 'n', long, default_value_t = 500)]
    pub count: usize,
    /// How many orders in flight at once.
    #[arg(short = 'c', long, default_value_t = 10)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value = "spread")]
    pub workload: Workload,
    /// Stock shards of the hot item (1: its stock on one document).
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// Also measure the floor: a trivial saga of the order's shape (bare transactions and
    /// publishes, push hops between them) on the same emulators.
    #[arg(long)]
    pub floor: bool,
    /// Run each function from its own binary in DIR, as deployed, instead of `saga serve`
    /// (see `saga up --functions-from`).
    #[arg(long, value_name = "DIR")]
    pub functions_from: Option<PathBuf>,
    /// Orders placed first and not measured (`spread` orders at the same concurrency), so
    /// the emulators' JIT and caches are warm, as a long-running stack's are, and as they
    /// are for the floor, which runs after.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Seconds between each function's sweeps (see `saga up --sweep-interval`).
    #[arg(long, value_name = "SECS", default_value_t = crate::up::DEFAULT_SWEEP_INTERVAL_SECS)]
    pub sweep_interval: u64,
    /// Where the JSON result and the latency histogram (SVG) go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(samples: &[Duration]) -> Latency {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if ms.is_empty() {
                return 0.0;
            }
            let i = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1;
            (ms[i] * 10.0).round() / 10.0
        };
        Latency {
            count: ms.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ProcessUse {
    pub ready_ms: Option<f64>,
    pub idle_rss_mib: f64,
    pub peak_rss_mib: f64,
    /// After the run: proportional set size (shared pages divided among their users).
    #[serde(default)]
    pub pss_mib: f64,
    /// After the run: memory no other process shares (mostly heap).
    #[serde(default)]
    pub private_mib: f64,
    pub cpu_s_per_1000_orders: f64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Floor {
    /// Trivial orders per second: an order's shape (4 stages of a bare transaction and a
    /// publish, 3 push hops between them) with none of its logic, same count and concurrency.
    pub orders_per_s: f64,
    /// A trivial order from its first transaction until its last publish.
    #[serde(default)]
    pub end_to_end: Latency,
    /// Publish until push, within that run.
    pub pubsub_hop: Latency,
    /// A bare read-then-write transaction, within that run.
    pub firestore_txn: Latency,
    /// A trivial order's operations (counted by its store, as the functions count theirs).
    #[serde(default)]
    pub cost: Option<crate::bench_cost::OrderCost>,
    /// Each emulator's CPU for one trivial order, in milliseconds (the saga's are in its
    /// emulator lines): what the same shape costs them without the saga's documents.
    #[serde(default)]
    pub emulator_cpu_ms: BTreeMap<String, f64>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    pub workload: Option<Workload>,
    pub count: usize,
    pub concurrency: usize,
    pub shards: u32,
    pub machine: String,
    pub command: String,
    pub seconds: f64,
    pub orders_per_s: f64,
    pub end_to_end: Latency,
    pub post: Latency,
    /// Time between one step emitting an event and the next step consuming it.
    pub hops: BTreeMap<String, Latency>,
    pub completed: usize,
    pub compensated: usize,
    pub unfinished: usize,
    pub invariants_held: bool,
    pub violations: Vec<String>,
    pub functions: BTreeMap<String, ProcessUse>,
    /// What ran the functions: `saga serve`, or the per-function binaries.
    #[serde(default)]
    pub binaries: String,
    pub emulators: BTreeMap<String, ProcessUse>,
    /// Orders placed before the measured ones (warm-up), not counted in any figure but
    /// the peak RSS.
    #[serde(default)]
    pub warmup: usize,
    /// Orders in the project when the invariants were checked: the measured ones and the
    /// warm-up's.
    #[serde(default)]
    pub checked_orders: usize,
    /// The bench's own CPU while it drove the measured orders (its HTTP client and the
    /// poller that batch-reads the orders in flight), per 1,000 orders: it shares the machine.
    #[serde(default)]
    pub driver_cpu_s_per_1000_orders: f64,
    /// The five functions' RSS summed at one instant, the highest sum seen (sampled every
    /// [`RSS_SAMPLE_EVERY`] over the warm-up and the measured orders): what they hold
    /// resident together. The sum of each one's own peak is an upper bound: it may add peaks
    /// that came at different moments.
    #[serde(default)]
    pub five_rss_at_once_peak_mib: f64,
    pub floor: Option<Floor>,
    /// Transactions that collided and ran again during the measured orders, from the
    /// functions' logs.
    #[serde(default)]
    pub contention: Option<crate::bench_bounds::Contention>,
    /// The measured orders' Firestore and Pub/Sub operations and CPU, per order, counted by
    /// the functions, and their price.
    #[serde(default)]
    pub cost: Option<crate::bench_cost::OrderCost>,
    /// One round of every function's sweep (the schedule runs one a minute), after the
    /// measured orders: not counted in the orders' cost.
    #[serde(default)]
    pub sweeps_per_minute: Option<crate::bench_cost::Ops>,
    /// End-to-end latencies in milliseconds, for the histogram.
    pub samples_ms: Vec<f64>,
}

impl BenchResult {
    /// The machine's cores, as recorded in [`BenchResult::machine`] ("2 cores (...)").
    pub fn cores(&self) -> usize {
        self.machine
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Up(#[from] crate::up::UpError),
    #[error(transparent)]
    Store(#[from] saga_infra::store::StoreError),
    #[error("{0}")]
    Other(String),
}

/// Linux `/proc` readings of a process.
pub(crate) mod procfs {
    /// (current RSS, peak RSS) in KiB.
    pub fn rss_kib(pid: u32) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// (proportional set size, private memory) in KiB: what the process costs when its code
    /// pages are shared with others (all five map libc; under `saga serve`, one binary).
    pub fn pss_private_kib(pid: u32) -> (u64, u64) {
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            rollup
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (
            field("Pss:"),
            field("Private_Clean:") + field("Private_Dirty:"),
        )
    }

    /// User + system CPU time, in clock ticks (100 per second on Linux).
    pub fn cpu_ticks(pid: u32) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let get = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        get(11) + get(12)
    }

    pub const TICKS_PER_SECOND: f64 = 100.0;

    /// `pid` and every process below it.
    pub fn tree(pid: u32) -> Vec<u32> {
        let mut parents: Vec<(u32, u32)> = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
                if let Some(ppid) = after.split_whitespace().nth(1).and_then(|v| v.parse().ok()) {
                    parents.push((p, ppid));
                }
            }
        }
        let mut tree = vec![pid];
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            tree.extend(
                parents
                    .iter()
                    .filter(|(_, pp)| *pp == parent)
                    .map(|(p, _)| *p),
            );
            i += 1;
        }
        tree
    }
}

/// How often [`RssSumSampler`] reads the functions' RSS.
pub const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Sums some processes' current RSS every [`RSS_SAMPLE_EVERY`] and keeps the highest sum.
struct RssSumSampler {
    peak_kib: Arc<AtomicU64>,
    pids: Vec<u32>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSumSampler {
    fn start(pids: Vec<u32>) -> RssSumSampler {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (peak_kib, pids) = (peak_kib.clone(), pids.clone());
            async move {
                let mut every = tokio::time::interval(RSS_SAMPLE_EVERY);
                loop {
                    every.tick().await;
                    peak_kib.fetch_max(Self::sum(&pids), Ordering::Relaxed);
                }
            }
        });
        RssSumSampler {
            peak_kib,
            pids,
            task,
        }
    }

    fn sum(pids: &[u32]) -> u64 {
        pids.iter().map(|p| procfs::rss_kib(*p).0).sum()
    }

    /// The highest sum seen, in KiB (with one last sample); sampling stops.
    fn stop(self) -> u64 {
        self.peak_kib
            .load(Ordering::Relaxed)
            .max(Self::sum(&self.pids))
    }
}

impl Drop for RssSumSampler {
    /// Also when a run ends early with an error.
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// Spread orders go over this many items...
const ITEMS: usize = 500;
/// ...and every workload's over this many users, so no balance is a hot document.
const USERS: usize = 500;

fn user(i: usize) -> String {
    format!("bench-{:03}", (i * 31) % USERS)
}

/// The frontend's per-client rate while the bench drives it.
const BENCH_POST_RATE: f64 = 1_000_000.0;

/// Runs the benchmark; writes `<out>/<name>.json` and `<out>/<name>.svg`.
pub async fn bench(args: &BenchArgs) -> Result<BenchResult, BenchError> {
    let free = |n| saga_emulator::free_port().map_err(|e| BenchError::Other(format!("{n}: {e}")));
    let frontend_port = loop {
        let p = free("ports")?;
        if p < 60_000 && (p..p + 5).all(|q| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok()) {
            break p;
        }
    };
    let up = UpArgs {
        project: format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        pubsub_port: free("pubsub")?,
        firestore_port: free("firestore")?,
        frontend_port,
        no_fault_injection: false,
        reset_data: false,
        log_dir: PathBuf::from("target/bench/logs"),
        function_logs: true,
        functions_from: args.functions_from.clone(),
        sweep_interval: args.sweep_interval,
        outbox_grace: None,
        auth: false,
        auth_port: 0,
        control_port: 0,
        // The bench is one client placing every order: it raises the per-client limit for
        // itself (a million orders a second, a million at once).
        post_rate: Some(BENCH_POST_RATE),
    };
    let stack = Stack::start(&up).await?;
    let result = run(args, &stack).await;
    stack.stop().await;
    result
}

async fn run(args: &BenchArgs, stack: &Stack) -> Result<BenchResult, BenchError> {
    let store = Store::connect(&stack.config.project_id, &stack.config.firestore).await?;
    let mut baseline = Baseline::seed();
    // The workload's catalogue, and users who can pay for all of it, seeded concurrently.
    use futures::StreamExt;
    let seeded: Vec<_> = futures::stream::iter(0..ITEMS)
        .map(|i| {
            let store = store.clone();
            async move {
                let item = format!("bench-{i:03}");
                saga_emulator::seed::item(&store, &item, 1, 1_000_000, 1).await
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    seeded.into_iter().collect::<Result<Vec<_>, _>>()?;
    for i in 0..ITEMS {
        baseline.stock.insert(format!("bench-{i:03}"), 1_000_000);
    }
    saga_emulator::seed::item(&store, "bench-hot", 1, args.count as i64, args.shards).await?;
    baseline.stock.insert("bench-hot".into(), args.count as i64);
    saga_emulator::seed::item(&store, "bench-scarce", 1, 0, 1).await?;
    baseline.stock.insert("bench-scarce".into(), 0);
    let balance = 1_000_000_000_000;
    let seeded: Vec<_> = futures::stream::iter(0..USERS)
        .map(|i| {
            let store = store.clone();
            async move {
                let name = format!("bench-{i:03}");
                store
                    .set(collections::USERS, &name, &UserDoc { balance })
                    .await
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    seeded.into_iter().collect::<Result<Vec<_>, _>>()?;
    for i in 0..USERS {
        baseline.balances.insert(format!("bench-{i:03}"), balance);
    }

    let pids: BTreeMap<Function, u32> = Function::ALL
        .iter()
        .filter_map(|f| stack.pid(*f).map(|p| (*f, p)))
        .collect();
    let emulator_trees: Vec<(String, Vec<u32>)> = stack
        .emulators
        .iter()
        .map(|e| (e.kind.name().to_owned(), procfs::tree(e.pid())))
        .collect();
    let idle: BTreeMap<Function, u64> = pids
        .iter()
        .map(|(f, p)| (*f, procfs::rss_kib(*p).0))
        .collect();
    let base = format!("http://127.0.0.1:{}", stack.ports[&Function::Frontend]);
    let at_once = RssSumSampler::start(pids.values().copied().collect());
    if args.warmup > 0 {
        let warmup = BenchArgs {
            count: args.warmup,
            workload: Workload::Spread,
            ..args.clone()
        };
        let warm = drive(&warmup, &base, &store).await?;
        if warm.statuses.iter().any(|s| !s.is_terminal()) {
            return Err(BenchError::Other("warm-up orders did not finish".into()));
        }
    }

    let cpu = |ps: &[u32]| ps.iter().map(|p| procfs::cpu_ticks(*p)).sum::<u64>();
    let fn_cpu_before: BTreeMap<Function, u64> =
        pids.iter().map(|(f, p)| (*f, cpu(&[*p]))).collect();
    let emu_cpu_before: Vec<u64> = emulator_trees.iter().map(|(_, t)| cpu(t)).collect();
    let me = std::process::id();
    let driver_cpu_before = cpu(&[me]);
    let logs = crate::bench_bounds::LogMarks::now(&stack.logs);
    let meters_before = meters(stack).await?;

    let drive = drive(args, &base, &store).await?;
    let meters_after = meters(stack).await?;
    // Resources first, before reading the timeline adds its own load.
    let fn_cpu_after: BTreeMap<Function, u64> =
        pids.iter().map(|(f, p)| (*f, cpu(&[*p]))).collect();
    let emu_cpu_after: Vec<u64> = emulator_trees.iter().map(|(_, t)| cpu(t)).collect();
    let driver_cpu = cpu(&[me]).saturating_sub(driver_cpu_before);
    let five_at_once_kib = at_once.stop();
    let contention = logs.contention_since();
    let timings = timings(&store, &drive.ids).await?;

    let mut result = BenchResult {
        workload: Some(args.workload),
        count: args.count,
        concurrency: args.concurrency,
        shards: args.shards,
        machine: machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        seconds: round(timings.elapsed.as_secs_f64()),
        orders_per_s: round(args.count as f64 / timings.elapsed.as_secs_f64().max(1e-3)),
        end_to_end: Latency::of(&timings.e2e),
        post: Latency::of(&drive.post),
        completed: drive
            .statuses
            .iter()
            .filter(|s| **s == OrderStatus::Completed)
            .count(),
        compensated: drive
            .statuses
            .iter()
            .filter(|s| **s == OrderStatus::Compensated)
            .count(),
        unfinished: drive.statuses.iter().filter(|s| !s.is_terminal()).count(),
        samples_ms: timings
            .e2e
            .iter()
            .map(|d| round(d.as_secs_f64() * 1000.0))
            .collect(),
        hops: timings.hops,
        binaries: stack.launcher.describe(),
        warmup: args.warmup,
        contention: Some(contention),
        ..BenchResult::default()
    };
    let per_1000 =
        |ticks: u64| round(ticks as f64 / procfs::TICKS_PER_SECOND / args.count as f64 * 1000.0);
    for (f, p) in &pids {
        let (_, peak) = procfs::rss_kib(*p);
        let (pss, private) = procfs::pss_private_kib(*p);
        result.functions.insert(
            f.name().to_owned(),
            ProcessUse {
                ready_ms: stack.ready.get(f).map(|d| round(d.as_secs_f64() * 1000.0)),
                idle_rss_mib: mib(idle[f]),
                peak_rss_mib: mib(peak),
                pss_mib: mib(pss),
                private_mib: mib(private),
                cpu_s_per_1000_orders: per_1000(fn_cpu_after[f] - fn_cpu_before[f]),
            },
        );
    }
    for (((name, tree), before), after) in
        emulator_trees.iter().zip(emu_cpu_before).zip(emu_cpu_after)
    {
        let peak: u64 = tree.iter().map(|p| procfs::rss_kib(*p).1).sum();
        result.emulators.insert(
            name.clone(),
            ProcessUse {
                ready_ms: None,
                idle_rss_mib: 0.0,
                peak_rss_mib: mib(peak),
                pss_mib: 0.0,
                private_mib: 0.0,
                cpu_s_per_1000_orders: per_1000(after.saturating_sub(before)),
            },
        );
    }
    let fn_cpu_ms: f64 = pids
        .keys()
        .map(|f| (fn_cpu_after[f] - fn_cpu_before[f]) as f64)
        .sum::<f64>()
        / procfs::TICKS_PER_SECOND
        * 1000.0
        / args.count as f64;
    let orders = meters_after.orders.since(&meters_before.orders);
    result.cost = cost(&orders, args.count as f64, fn_cpu_ms);
    result.sweeps_per_minute = Some(sweep_round(stack).await?);
    let report = check_settled(&store, &baseline, crate::up::SETTLE).await?;
    result.invariants_held = report.holds() && result.unfinished == 0;
    result.checked_orders = report.orders.values().sum();
    result.driver_cpu_s_per_1000_orders = per_1000(driver_cpu);
    result.five_rss_at_once_peak_mib = mib(five_at_once_kib);
    result.violations = report.violations;
    if args.floor {
        result.floor = Some(crate::bench_floor::measure(stack, args).await?);
    }
    write(args, &result)?;
    Ok(result)
}

/// Every function's operation counts, summed.
async fn meters(stack: &Stack) -> Result<saga_infra::meter::Metered, BenchError> {
    let http = reqwest::Client::new();
    let mut sum = saga_infra::meter::Metered::default();
    for (function, port) in &stack.ports {
        let url = format!("http://127.0.0.1:{port}{}", saga_infra::step::METER_PATH);
        let m: saga_infra::meter::Metered = http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| BenchError::Other(format!("{function}'s meter: {e}")))?
            .json()
            .await
            .map_err(|e| BenchError::Other(format!("{function}'s meter: {e}")))?;
        sum.orders = sum.orders.plus(&m.orders);
        sum.sweeps = sum.sweeps.plus(&m.sweeps);
    }
    Ok(sum)
}

/// The price of `counts` over `orders` orders, with `cpu_ms` of function CPU an order. Each
/// publish is one request to a function (the POST for the first, a push for the others).
pub(crate) fn cost(
    counts: &saga_infra::meter::Counts,
    orders: f64,
    cpu_ms: f64,
) -> Option<crate::bench_cost::OrderCost> {
    use crate::bench_cost::{Ops, OrderCost, PRICES, Prices, per_million};
    let prices = match Prices::load(Path::new(PRICES)) {
        Ok(prices) => prices,
        Err(error) => {
            eprintln!("no cost per million orders: {error}");
            return None;
        }
    };
    let per_order = Ops::per(counts, orders);
    Some(OrderCost {
        cpu_ms: round(cpu_ms),
        requests: per_order.publishes,
        per_million_usd: per_million(&prices, &per_order, cpu_ms, per_order.publishes),
        per_order,
        prices_as_of: prices.as_of,
    })
}

/// Calls every function's sweep once, as the schedule does every minute, and counts what
/// the round cost.
async fn sweep_round(stack: &Stack) -> Result<crate::bench_cost::Ops, BenchError> {
    let http = reqwest::Client::new();
    let before = meters(stack).await?;
    for (function, port) in &stack.ports {
        let Some(path) = function.sweep_path() else {
            continue;
        };
        let url = format!("http://127.0.0.1:{port}{path}");
        http.post(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| BenchError::Other(format!("{function}'s sweep: {e}")))?;
    }
    let after = meters(stack).await?;
    Ok(crate::bench_cost::Ops::per(
        &after.sweeps.since(&before.sweeps),
        1.0,
    ))
}

pub(crate) fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

struct Drive {
    post: Vec<Duration>,
    statuses: Vec<OrderStatus>,
    /// Each order's id and the wall-clock time its POST started.
    ids: Vec<(String, jiff::Timestamp)>,
}

/// How often the orders in flight are looked up: only to keep `concurrency` orders in
/// flight; latencies come from the commit times in the orders' records, not from this.
const POLL: Duration = Duration::from_millis(20);

/// The orders in flight: when each was placed, and who waits for its end.
type Waiting = Arc<
    std::sync::Mutex<
        std::collections::HashMap<String, (Instant, tokio::sync::oneshot::Sender<OrderStatus>)>,
    >,
>;

/// Orders younger than this share of the typical order's time in flight are not looked up:
/// they are unlikely to have ended, and every lookup is work for the emulator the saga is
/// measured on.
const POLL_FROM: f64 = 0.6;

/// Tells each waiting order's sender when its order ends. One poller reads the status (and
/// only the status) of the orders in flight that may have ended, in one batch get, so the
/// bench's own load on the emulator stays small next to the saga's. (A watch of the ended
/// orders costs the emulator far more: it re-evaluates the growing result set on every
/// write.)
async fn poll(store: Store, waiting: Waiting) {
    // The typical time from placing an order to seeing it end (a moving average).
    let mut typical = Duration::ZERO;
    loop {
        tokio::time::sleep(POLL).await;
        let due = typical.mul_f64(POLL_FROM);
        let ids: Vec<String> = waiting
            .lock()
            .map(|w| {
                w.iter()
                    .filter(|(_, (placed, _))| placed.elapsed() >= due)
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default();
        if ids.is_empty() {
            continue;
        }
        let Ok(found) = store.order_statuses(&ids).await else {
            continue;
        };
        for (id, status) in found {
            if let Some(status) = status.filter(|s| s.is_terminal())
                && let Some((placed, tx)) = waiting.lock().ok().and_then(|mut w| w.remove(&id))
            {
                typical = (typical * 7 + placed.elapsed()) / 8;
                let _ = tx.send(status);
            }
        }
    }
}

/// The order body of the i-th order of a workload.
fn order(workload: Workload, i: usize) -> serde_json::Value {
    let spread = format!("bench-{:03}", (i * 7919) % ITEMS);
    let user = user(i);
    match workload {
        Workload::Spread => json!({"item": spread, "quantity": 1, "user": user}),
        Workload::Hot => json!({"item": "bench-hot", "quantity": 1, "user": user}),
        Workload::Failures => match i % 20 {
            0..=2 => json!({"item": "bench-scarce", "quantity": 1, "user": user}),
            3..=5 => json!({"item": spread, "quantity": 1, "user": user, "payment-error": "x"}),
            _ => json!({"item": spread, "quantity": 1, "user": user}),
        },
    }
}

/// Places the orders, `concurrency` in flight at once; each is timed from its POST until its
/// terminal status is visible in Firestore.
async fn drive(args: &BenchArgs, base: &str, store: &Store) -> Result<Drive, BenchError> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = ProgressBar::new(args.count as u64);
        if let Ok(style) =
            ProgressStyle::with_template("orders [{bar:30}] {pos}/{len} {per_sec} ({eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let waiting: Waiting = Arc::default();
    let poller = tokio::spawn(poll(store.clone(), waiting.clone()));
    let mut tasks = Vec::new();
    for i in 0..args.count {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| BenchError::Other(e.to_string()))?;
        let (http, waiting, bar) = (http.clone(), waiting.clone(), bar.clone());
        let url = format!("{base}/order");
        let body = order(args.workload, i);
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let t0 = Instant::now();
            let wall = jiff::Timestamp::now();
            let response = http
                .post(&url)
                .json(&body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let post = t0.elapsed();
            let view: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
            let id = view["order_id"].as_str().ok_or("no order id")?.to_owned();
            let (tx, rx) = tokio::sync::oneshot::channel();
            if let Ok(mut w) = waiting.lock() {
                w.insert(id.clone(), (Instant::now(), tx));
            }
            let status = tokio::time::timeout(Duration::from_secs(120), rx)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(OrderStatus::Pending);
            bar.inc(1);
            Ok::<_, String>((id, wall, post, status))
        }));
    }
    let mut drive = Drive {
        post: Vec::new(),
        statuses: Vec::new(),
        ids: Vec::new(),
    };
    for task in tasks {
        let (id, wall, post, status) = task
            .await
            .map_err(|e| BenchError::Other(e.to_string()))?
            .map_err(BenchError::Other)?;
        drive.ids.push((id, wall));
        drive.post.push(post);
        drive.statuses.push(status);
    }
    let _ = started;
    poller.abort();
    bar.finish_and_clear();
    Ok(drive)
}

/// From the timeline: each order's end-to-end time (its POST until the commit that made it
/// COMPLETED or COMPENSATED), the whole run's duration (first POST to last such commit), and
/// per hop, from one step's `emitted` entry to the next step's `consumed` entry.
struct Timings {
    e2e: Vec<Duration>,
    elapsed: Duration,
    hops: BTreeMap<String, Latency>,
}

async fn timings(store: &Store, ids: &[(String, jiff::Timestamp)]) -> Result<Timings, BenchError> {
    let mut hops: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut e2e = Vec::new();
    let first = ids
        .iter()
        .map(|(_, t)| *t)
        .min()
        .unwrap_or_else(jiff::Timestamp::now);
    let mut last = first;
    for (id, posted) in ids {
        let Some(order) = store.order(id).await? else {
            continue;
        };
        let history = timeline::history(&order);
        if let Some(done) = history
            .iter()
            .filter(|e| e.kind == EntryKind::Consumed)
            .map(|e| e.at)
            .max()
        {
            e2e.push(Duration::try_from(done.duration_since(*posted)).unwrap_or_default());
            last = last.max(done);
        }
        for emitted in history.iter().filter(|e| e.kind == EntryKind::Emitted) {
            if let Some(consumed) = history.iter().find(|c| {
                c.kind == EntryKind::Consumed
                    && c.event_id == emitted.event_id
                    && c.step != emitted.step
            }) {
                let d = consumed.at.duration_since(emitted.at);
                let d = Duration::try_from(d).unwrap_or_default();
                hops.entry(format!("{} → {}", emitted.step, consumed.step))
                    .or_default()
                    .push(d);
            }
        }
    }
    Ok(Timings {
        e2e,
        elapsed: Duration::try_from(last.duration_since(first)).unwrap_or_default(),
        hops: hops
            .into_iter()
            .map(|(k, v)| (k, Latency::of(&v)))
            .collect(),
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024 / 1024);
    format!("{cores} cores ({cpu}), {mem} GiB")
}

/// The file name of a run: workload, concurrency, count, shards.
pub fn name(r: &BenchResult) -> String {
    let workload = match r.workload {
        Some(Workload::Hot) => "hot",
        Some(Workload::Failures) => "failures",
        _ => "spread",
    };
    let shards = if r.shards > 1 {
        format!("-s{}", r.shards)
    } else {
        String::new()
    };
    format!("{workload}-c{}-n{}{shards}", r.concurrency, r.count)
}

fn write(args: &BenchArgs, result: &BenchResult) -> Result<(), BenchError> {
    let io = |e: std::io::Error| BenchError::Other(format!("writing results: {e}"));
    std::fs::create_dir_all(&args.out).map_err(io)?;
    let base = args.out.join(name(result));
    let json =
        serde_json::to_string_pretty(result).map_err(|e| BenchError::Other(e.to_string()))?;
    std::fs::write(base.with_extension("json"), json).map_err(io)?;
    std::fs::write(base.with_extension("svg"), histogram(result)).map_err(io)?;
    Ok(())
}

/// An SVG histogram of the end-to-end latencies.
pub fn histogram(r: &BenchResult) -> String {
    let (w, h, left, bottom, top) = (640.0, 300.0, 50.0, 40.0, 30.0);
    let max = r
        .samples_ms
        .iter()
        .cloned()
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let bins = 40usize;
    let width = max / bins as f64;
    let mut counts = vec![0usize; bins];
    for s in &r.samples_ms {
        counts[((s / width) as usize).min(bins - 1)] += 1;
    }
    let tallest = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let plot_w = w - left - 10.0;
    let plot_h = h - top - bottom;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="18" font-size="13">{} - end-to-end latency, {} orders at concurrency {} (p50 {} ms, p99 {} ms)</text>
"##,
        name(r),
        r.count,
        r.concurrency,
        r.end_to_end.p50,
        r.end_to_end.p99
    );
    for (i, c) in counts.iter().enumerate() {
        let bh = *c as f64 / tallest * plot_h;
        let x = left + i as f64 * plot_w / bins as f64;
        svg.push_str(&format!(
            r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="#4a78b5"/>
"##,
            top + plot_h - bh,
            plot_w / bins as f64 - 1.0
        ));
    }
    let axis_y = top + plot_h;
    svg.push_str(&format!(
        r##"<line x1="{left}" y1="{axis_y}" x2="{}" y2="{axis_y}" stroke="black"/>
<text x="{left}" y="{}">0 ms</text><text x="{}" y="{}" text-anchor="end">{max:.0} ms</text>
<text x="{}" y="{}" text-anchor="middle">latency (ms)</text><text x="12" y="{}" transform="rotate(-90 12 {})">orders</text>
</svg>
"##,
        left + plot_w,
        axis_y + 15.0,
        left + plot_w,
        axis_y + 15.0,
        left + plot_w / 2.0,
        axis_y + 30.0,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    ));
    svg
}

/// The result as a table.
pub fn table(r: &BenchResult) -> String {
    let mut t = String::new();
    let l = |x: &Latency| {
        format!(
            "p50 {} / p90 {} / p99 {} / max {} ms",
            x.p50, x.p90, x.p99, x.max
        )
    };
    t.push_str(&format!("{}  ({})\n", name(r), r.machine));
    t.push_str(&format!(
        "  orders/s           {} ({} orders in {:.1} s)\n",
        r.orders_per_s, r.count, r.seconds
    ));
    if r.warmup > 0 {
        t.push_str(&format!(
            "  warm-up            {} spread orders before, not measured\n",
            r.warmup
        ));
    }
    t.push_str(&format!("  end to end         {}\n", l(&r.end_to_end)));
    t.push_str(&format!("  POST               {}\n", l(&r.post)));
    for (hop, lat) in &r.hops {
        t.push_str(&format!("  hop {hop:<26} {}\n", l(lat)));
    }
    t.push_str(&format!(
        "  outcome            {} completed, {} compensated, {} unfinished; invariants {}{}\n",
        r.completed,
        r.compensated,
        r.unfinished,
        if r.invariants_held { "held" } else { "BROKEN" },
        if r.checked_orders > r.count {
            format!(" (checked over all {} orders)", r.checked_orders)
        } else {
            String::new()
        }
    ));
    for v in &r.violations {
        t.push_str(&format!("    VIOLATION {v}\n"));
    }
    if !r.binaries.is_empty() {
        t.push_str(&format!("  functions run as   {}\n", r.binaries));
    }
    for (name, p) in &r.functions {
        t.push_str(&format!(
            "  {name:<10} ready {:>5} ms   RSS idle {:>5} / peak {:>5} MiB   PSS {:>5} MiB   private {:>4} MiB   {:>5} CPU s/1000 orders\n",
            p.ready_ms.unwrap_or(0.0),
            p.idle_rss_mib,
            p.peak_rss_mib,
            p.pss_mib,
            p.private_mib,
            p.cpu_s_per_1000_orders
        ));
    }
    let sum = |f: fn(&ProcessUse) -> f64| round(r.functions.values().map(f).sum::<f64>());
    t.push_str(&format!(
        "  five functions      RSS at once peak {} MiB; sum of the peaks {} MiB (code pages counted five times), PSS {} MiB, private {} MiB\n",
        r.five_rss_at_once_peak_mib,
        sum(|p| p.peak_rss_mib),
        sum(|p| p.pss_mib),
        sum(|p| p.private_mib)
    ));
    for (name, p) in &r.emulators {
        t.push_str(&format!(
            "  {name:<18}  peak {:>6} MiB   {:>5} CPU s/1000 orders\n",
            p.peak_rss_mib, p.cpu_s_per_1000_orders
        ));
    }
    if r.driver_cpu_s_per_1000_orders > 0.0 {
        t.push_str(&format!(
            "  bench driver                      {:>5} CPU s/1000 orders\n",
            r.driver_cpu_s_per_1000_orders
        ));
    }
    if let Some(cost) = &r.cost {
        t.push_str(&crate::bench_cost::lines("operations", cost));
    }
    if let Some(sweeps) = &r.sweeps_per_minute {
        t.push_str(&format!(
            "  sweeps             per minute (one round of every function's, nothing in flight): {} reads ({} queries), {} writes, {} publishes\n",
            sweeps.billed_reads, sweeps.queries, sweeps.writes, sweeps.publishes
        ));
    }
    if let Some(bounds) = crate::bench_bounds::Bounds::of(r) {
        t.push_str(&bounds.lines(r));
    }
    if let Some(f) = &r.floor {
        t.push_str(&format!(
            "  floor              {} trivial orders/s => this run at {:.0}% of the floor\n                     trivial order {}\n                     push hop {}\n                     bare txn {}\n",
            f.orders_per_s,
            if f.orders_per_s > 0.0 { r.orders_per_s / f.orders_per_s * 100.0 } else { 0.0 },
            l(&f.end_to_end),
            l(&f.pubsub_hop),
            l(&f.firestore_txn),
        ));
        for (name, ms) in &f.emulator_cpu_ms {
            t.push_str(&format!(
                "                     {name} {ms} CPU ms a trivial order\n"
            ));
        }
        if let Some(cost) = &f.cost {
            t.push_str(&crate::bench_cost::lines("floor operations", cost));
        }
    }
    t
}

/// Rewrites the results section of `markdown` from every result in `dir`.
pub fn report(dir: &Path) -> Result<String, BenchError> {
    let mut results: Vec<BenchResult> = std::fs::read_dir(dir)
        .map_err(|e| BenchError::Other(format!("reading {}: {e}", dir.display())))?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect();
    results.sort_by_key(|r| (name(r).starts_with("spread"), r.concurrency, r.shards));
    let mut md = String::new();
    md.push_str("| run | orders/s | e2e p50 | e2e p99 | POST p50 | completed / compensated | invariants | floor orders/s | writes / reads an order | $ a million orders |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for r in &results {
        let (ops, usd) = r.cost.as_ref().map_or(("-".into(), "-".into()), |c| {
            (
                format!("{} / {}", c.per_order.writes, c.per_order.billed_reads),
                c.per_million_usd.total.to_string(),
            )
        });
        md.push_str(&format!(
            "| `{}` | {} | {} ms | {} ms | {} ms | {} / {} | {} | {} | {ops} | {usd} |\n",
            name(r),
            r.orders_per_s,
            r.end_to_end.p50,
            r.end_to_end.p99,
            r.post.p50,
            r.completed,
            r.compensated,
            if r.invariants_held { "held" } else { "BROKEN" },
            r.floor
                .as_ref()
                .map_or("-".into(), |f| f.orders_per_s.to_string())
        ));
    }
    for r in &results {
        md.push_str(&format!(
            "\n### `{}`\n\n`{}`\n\n```\n{}```\n\n![{}]({}.svg)\n",
            name(r),
            r.command,
            table(r),
            name(r),
            name(r)
        ));
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(&samples);
        assert_eq!(
            (l.count, l.p50, l.p90, l.p99, l.max),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(Latency::of(&[]).count, 0);
    }

    #[test]
    fn the_failures_workload_mixes_stock_and_payment_failures() {
        let bodies: Vec<_> = (0..20).map(|i| order(Workload::Failures, i)).collect();
        let scarce = bodies
            .iter()
            .filter(|b| b["item"] == "bench-scarce")
            .count();
        let faulty = bodies
            .iter()
            .filter(|b| b.get("payment-error").is_some())
            .count();
        assert_eq!((scarce, faulty), (3, 3));
        assert!((0..100).all(|i| order(Workload::Hot, i)["item"] == "bench-hot"));
    }

    #[test]
    fn the_histogram_is_an_svg_with_a_bar_per_bin() {
        let r = BenchResult {
            samples_ms: vec![10.0, 20.0, 20.0, 90.0],
            count: 4,
            ..BenchResult::default()
        };
        let svg = histogram(&r);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("fill=\"#4a78b5\"").count(), 40);
    }
}
