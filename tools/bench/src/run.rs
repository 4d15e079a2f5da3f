//! `saga bench`: real orders through a real local stack (the same one `saga up` runs, on free
//! ports, with a fresh project), measured end to end, with the resources each process used,
//! the floor the emulators alone allow, and the invariants checked afterwards: a run that
//! breaks one has failed, whatever its speed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use saga_contracts::docs::{UserDoc, collections};
use saga_contracts::events::OrderStatus;
use saga_contracts::topology::Function;
use saga_infra::store::Store;
use saga_infra::timeline::{self, EntryKind};
use serde_json::json;
use tokio::sync::Semaphore;

use saga_emulator::stack::{Ports, Stack, UpArgs};
use saga_ops::check::{Baseline, check_settled};

use crate::ends::{LogTail, Waiting, follow};
use crate::model::*;

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
    let frontend_port = saga_emulator::free_block(Function::ALL.len() as u16)
        .map_err(|e| BenchError::Other(format!("ports: {e}")))?;
    let ports = Ports {
        pubsub: free("pubsub")?,
        firestore: free("firestore")?,
        frontend: frontend_port,
    };
    let project = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let up = UpArgs {
        functions_from: args.functions_from.clone(),
        sweep_interval: args.sweep_interval,
        // The bench is one client placing every order: it raises the per-client limit for
        // itself (a million orders a second, a million at once).
        post_rate: Some(BENCH_POST_RATE),
        emulator_heap: args.emulator_heap.clone(),
        ..UpArgs::for_tool(project, "target/bench/logs", ports)
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
    // The logs of the steps that end orders, which the driver follows to hear of ends.
    let ends: Vec<PathBuf> = stack
        .logs
        .iter()
        .filter(|p| {
            [Function::Payments, Function::Janitor]
                .iter()
                .any(|f| p.file_stem().is_some_and(|s| s == f.name()))
        })
        .cloned()
        .collect();
    // The floor set up and warmed up first; it is measured in passes between the saga's.
    let mut floor = match args.floor {
        true => Some(crate::floor::prepare(stack, args, emulator_trees.clone()).await?),
        false => None,
    };
    if args.warmup > 0 {
        let warmup = BenchArgs {
            count: args.warmup,
            workload: Workload::Spread,
            concurrency: args.warmup_concurrency(),
            think_ms: 0,
            ..args.clone()
        };
        let warm = drive(&warmup, 0..args.warmup, &base, &store, &ends).await?;
        if warm.statuses.iter().any(|s| !s.is_terminal()) {
            return Err(BenchError::Other("warm-up orders did not finish".into()));
        }
        // The peaks are the measured orders', at their concurrency, not the warm-up's.
        for pid in pids
            .values()
            .chain(emulator_trees.iter().flat_map(|(_, tree)| tree))
        {
            procfs::reset_peak_rss(*pid);
        }
    }
    let at_once = RssSumSampler::start(pids.values().copied().collect());
    let logs = crate::bounds::LogMarks::now(&stack.logs);
    let meters_before = meters(stack).await?;

    // With the floor, the orders are measured in `--passes` passes, each after a pass of
    // the floor's (floor, saga, floor, saga, ...), so that neither side is one draw of the push
    // loops' phases ([`crate::floor::Rig`]); the CPU is counted over the saga's passes only.
    let mut cpu = [
        procfs::Ticks::of(pids.values().map(|p| vec![*p]).collect()),
        procfs::Ticks::of(emulator_trees.iter().map(|(_, t)| t.clone()).collect()),
        procfs::Ticks::of(vec![vec![std::process::id()]]),
    ];
    let mut drives: Vec<Drive> = Vec::new();
    let turns = if floor.is_some() {
        usize::from(args.passes)
    } else {
        1
    };
    for orders in passes(args.count, turns) {
        if let Some(rig) = &mut floor {
            rig.measure(orders.clone(), args).await?;
        }
        cpu.iter_mut().for_each(procfs::Ticks::start);
        drives.push(drive(args, orders, &base, &store, &ends).await?);
        cpu.iter_mut().for_each(procfs::Ticks::stop);
    }
    let [fn_cpu, emu_cpu, driver_cpu] = &cpu;
    let fn_ticks: BTreeMap<Function, u64> = pids
        .keys()
        .copied()
        .zip(fn_cpu.counted().iter().copied())
        .collect();
    let meters_after = meters(stack).await?;
    let five_at_once_kib = at_once.stop();
    let logged = logs.since();
    let pass_ids: Vec<&[(String, jiff::Timestamp)]> =
        drives.iter().map(|d| d.ids.as_slice()).collect();
    let timings = timings(&store, &pass_ids).await?;
    let drive = Drive::joined(drives);

    let mut result = BenchResult {
        workload: Some(args.workload),
        count: args.count,
        concurrency: args.concurrency,
        shards: args.shards,
        machine: machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        seconds: round(timings.elapsed.as_secs_f64()),
        orders_per_s: round(args.count as f64 / timings.elapsed.as_secs_f64().max(1e-3)),
        passes: match timings.passes.len() {
            1 => Vec::new(),
            _ => timings.passes,
        },
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
        emulator_heap: args.emulator_heap.to_string(),
        warmup: args.warmup,
        think_ms: args.think_ms,
        contention: Some(logged.contention),
        pushes: logged.pushes,
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
                cpu_s_per_1000_orders: per_1000(fn_ticks[f]),
            },
        );
    }
    for ((name, tree), ticks) in emulator_trees.iter().zip(emu_cpu.counted()) {
        let peak: u64 = tree.iter().map(|p| procfs::rss_kib(*p).1).sum();
        result.emulators.insert(
            name.clone(),
            ProcessUse {
                ready_ms: None,
                idle_rss_mib: 0.0,
                peak_rss_mib: mib(peak),
                pss_mib: 0.0,
                private_mib: 0.0,
                cpu_s_per_1000_orders: per_1000(*ticks),
            },
        );
    }
    let fn_cpu_ms: f64 =
        fn_ticks.values().map(|t| *t as f64).sum::<f64>() / procfs::TICKS_PER_SECOND * 1000.0
            / args.count as f64;
    let orders = meters_after.orders.since(&meters_before.orders);
    result.cost = crate::cost::cost(&orders, args.count as f64, fn_cpu_ms);
    result.sweeps_per_minute = Some(sweep_round(stack).await?);
    let report = check_settled(&store, &baseline, saga_ops::check::SETTLE).await?;
    result.invariants_held = report.holds() && result.unfinished == 0;
    result.checked_orders = report.orders.values().sum();
    result.driver_cpu_s_per_1000_orders = per_1000(driver_cpu.counted().iter().sum());
    result.five_rss_at_once_peak_mib = mib(five_at_once_kib);
    result.violations = report.violations;
    if let Some(rig) = floor.take() {
        result.floor = Some(rig.result(args)?);
    }
    crate::report::write(args, &result)?;
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

/// Calls every function's sweep once, as the schedule does every minute, and counts what
/// the round cost.
async fn sweep_round(stack: &Stack) -> Result<crate::cost::Ops, BenchError> {
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
    Ok(crate::cost::Ops::per(
        &after.sweeps.since(&before.sweeps),
        1.0,
    ))
}

struct Drive {
    post: Vec<Duration>,
    statuses: Vec<OrderStatus>,
    /// Each order's id and the wall-clock time its POST started.
    ids: Vec<(String, jiff::Timestamp)>,
}

impl Drive {
    /// The passes' orders as one list, in the order they were placed.
    fn joined(passes: Vec<Drive>) -> Drive {
        let mut all = Drive {
            post: Vec::new(),
            statuses: Vec::new(),
            ids: Vec::new(),
        };
        for pass in passes {
            all.post.extend(pass.post);
            all.statuses.extend(pass.statuses);
            all.ids.extend(pass.ids);
        }
        all
    }
}

/// The measured orders' indices split into `count` passes, as even as they go.
fn passes(orders: usize, count: usize) -> Vec<std::ops::Range<usize>> {
    let count = count.max(1);
    (0..count)
        .map(|p| orders * p / count..orders * (p + 1) / count)
        .collect()
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

/// Places the orders, `concurrency` in flight at once, the next as soon as the driver hears
/// one ended ([`crate::ends`]); each order's own times come from its records afterwards.
async fn drive(
    args: &BenchArgs,
    orders: std::ops::Range<usize>,
    base: &str,
    store: &Store,
    ends: &[PathBuf],
) -> Result<Drive, BenchError> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = ProgressBar::new(orders.len() as u64);
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
    let waiting: Waiting = Arc::default();
    let poller = tokio::spawn(follow(
        store.clone(),
        waiting.clone(),
        LogTail::from_end(ends),
    ));
    let mut tasks = Vec::new();
    for i in orders {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| BenchError::Other(e.to_string()))?;
        let (http, waiting, bar) = (http.clone(), waiting.clone(), bar.clone());
        let url = format!("{base}/order");
        let body = order(args.workload, i);
        let think_ms = args.think_ms;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            crate::model::think_first(think_ms, i).await;
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
    poller.abort();
    bar.finish_and_clear();
    Ok(drive)
}

/// From the timeline: each order's end-to-end time (its POST until the commit that made it
/// COMPLETED or COMPENSATED), each pass's duration (its first POST to its last such commit)
/// and their sum, and per hop, from one step's `emitted` entry to the next step's `consumed`
/// entry.
struct Timings {
    e2e: Vec<Duration>,
    elapsed: Duration,
    /// Each pass's orders a second.
    passes: Vec<f64>,
    hops: BTreeMap<String, Latency>,
}

async fn timings(
    store: &Store,
    passes: &[&[(String, jiff::Timestamp)]],
) -> Result<Timings, BenchError> {
    let mut hops: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut e2e = Vec::new();
    let mut elapsed = Duration::ZERO;
    let mut rates = Vec::new();
    for ids in passes {
        let first = ids
            .iter()
            .map(|(_, t)| *t)
            .min()
            .unwrap_or_else(jiff::Timestamp::now);
        let mut last = first;
        for (id, posted) in ids.iter() {
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
        let took = Duration::try_from(last.duration_since(first)).unwrap_or_default();
        rates.push(round(ids.len() as f64 / took.as_secs_f64().max(1e-3)));
        elapsed += took;
    }
    Ok(Timings {
        e2e,
        elapsed,
        passes: rates,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::histogram;

    #[test]
    fn the_measured_orders_split_into_passes_that_cover_each_once() {
        assert_eq!(passes(1000, 2), vec![0..500, 500..1000]);
        assert_eq!(passes(101, 2), vec![0..50, 50..101]);
        assert_eq!(passes(20, 1), vec![0..20]);
        assert_eq!(passes(20, 0), vec![0..20]);
    }

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
