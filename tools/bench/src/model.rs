//! What a bench run measures and reports: its arguments, the result, the latency
//! percentiles, each process's use, the floor's figures; and how a process's use is read.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// publishes, push hops between them) on the same emulators. The two are then measured
    /// in turns, `--passes` passes each (floor, saga, floor, saga, ...).
    #[arg(long)]
    pub floor: bool,
    /// With `--floor`, how many passes each side's orders are measured in, taking turns
    /// (each side's figure pools that many draws of the emulator's push-loop phases and of
    /// its warming up; docs/benchmarks.md says what they average and what they cannot).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub passes: u16,
    /// Each emulator's JVM heap, fixed (`-Xms` and `-Xmx`, e.g. `4g`), or `auto` for the
    /// JVM's own sizing, which grows and shrinks the heap with what the emulator holds
    /// (see `saga up --emulator-heap`).
    #[arg(long, value_name = "SIZE", default_value = "4g")]
    pub emulator_heap: saga_emulator::process::Heap,
    /// Run each function from its own binary in DIR, as deployed, instead of `saga serve`
    /// (see `saga up --functions-from`).
    #[arg(long, value_name = "DIR")]
    pub functions_from: Option<PathBuf>,
    /// Orders placed first and not measured (`spread` orders, at least 50 at a time), so
    /// the emulators' JIT, heaps and caches are warm, as a long-running stack's are; with
    /// `--floor`, as many trivial orders run first, not measured, before the floor's.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Before each measured order its slot pauses a think time, spread evenly over 0..MS
    /// (the same for the floor's trivial orders; none for the warm-up). Placed back to back
    /// (0), one at a time, the orders fall into step with the Pub/Sub emulator's 100 ms
    /// push-loop sleeps and a pass's p50 is one of two modes, one sleep or two; a think time
    /// spread over a whole sleep meets the loops at every phase, as orders arriving at
    /// random times do.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub think_ms: u64,
    /// Seconds between each function's sweeps (see `saga up --sweep-interval`).
    #[arg(long, value_name = "SECS", default_value_t = saga_emulator::stack::DEFAULT_SWEEP_INTERVAL_SECS)]
    pub sweep_interval: u64,
    /// Where the JSON result and the latency histogram (SVG) go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
}

/// Warm-up orders go at least this many at a time, whatever the run's concurrency: what
/// warms the emulators (JVMs) is how many orders they have handled, not how many at once,
/// and a sequential run's warm-up would otherwise take longer than the run by far.
const WARMUP_CONCURRENCY: usize = 50;

impl BenchArgs {
    /// How many warm-up orders go at once, the saga's and the floor's.
    pub fn warmup_concurrency(&self) -> usize {
        self.concurrency.max(WARMUP_CONCURRENCY)
    }
}

/// The think time before the `i`-th order: the fraction of `i` times the golden ratio, of
/// `think_ms` (a Weyl sequence), so that any run of consecutive orders spreads evenly over
/// 0..`think_ms`, the same in every run.
pub fn think(think_ms: u64, i: usize) -> Duration {
    const GOLDEN: f64 = 0.618_033_988_749_894_9;
    Duration::from_secs_f64(think_ms as f64 / 1000.0 * (i as f64 * GOLDEN).fract())
}

/// Waits out the `i`-th order's [`think`] time; with none, touches no timer, so that orders
/// placed back to back are placed as before there was a think time.
pub async fn think_first(think_ms: u64, i: usize) {
    let pause = think(think_ms, i);
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub count: usize,
    #[serde(default)]
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(samples: &[Duration]) -> Latency {
        Latency::of_ms(samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect())
    }

    /// Of samples already in milliseconds.
    pub fn of_ms(mut ms: Vec<f64>) -> Latency {
        ms.sort_by(f64::total_cmp);
        let mean = if ms.is_empty() {
            0.0
        } else {
            round(ms.iter().sum::<f64>() / ms.len() as f64)
        };
        let at = |q: f64| {
            if ms.is_empty() {
                return 0.0;
            }
            let i = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1;
            (ms[i] * 10.0).round() / 10.0
        };
        Latency {
            count: ms.len(),
            mean,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// The pushes of one step (or the floor's stages) during the measured orders: Pub/Sub's part
/// of each hop, publish until push (the message's `publishTime` to its arrival), and the
/// step's, push until its commit. Their sum over an order's pushes is most of its time end
/// to end; which of the two grew is what a slow run's hops are made of.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PushTimes {
    pub delivery: Latency,
    pub handling: Latency,
    /// Each push until it was answered (its commit, then its publish): how long it held one
    /// of its subscription's push loops. Empty in results recorded before.
    #[serde(default)]
    pub held: Latency,
}

impl PushTimes {
    /// Of (delivery, handling, held) in milliseconds.
    pub fn of(times: impl IntoIterator<Item = (f64, f64, f64)>) -> PushTimes {
        let (mut delivery, mut handling, mut held) = (Vec::new(), Vec::new(), Vec::new());
        for (d, h, a) in times {
            delivery.push(d);
            handling.push(h);
            held.push(a);
        }
        PushTimes {
            delivery: Latency::of_ms(delivery),
            handling: Latency::of_ms(handling),
            held: Latency::of_ms(held),
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
    /// Each measured pass's trivial orders a second, in the order they ran, each before one
    /// of the saga's passes ([`crate::floor::Rig`]); `orders_per_s` pools them. Empty in
    /// results recorded when the floor ran once, after the saga.
    #[serde(default)]
    pub passes: Vec<f64>,
    /// Trivial orders run first and not measured (0 in results recorded before the floor
    /// had a warm-up of its own).
    #[serde(default)]
    pub warmup: usize,
    /// A trivial order from its first transaction until its last publish.
    #[serde(default)]
    pub end_to_end: Latency,
    /// Publish until push, within that run.
    pub pubsub_hop: Latency,
    /// A bare read-then-write transaction, within that run.
    pub firestore_txn: Latency,
    /// Its stages' pushes, measured as the saga's steps measure theirs: all of them, and
    /// each stage's (the first hop's pushes reach stage 1).
    #[serde(default)]
    pub pushes: PushTimes,
    #[serde(default)]
    pub pushes_by_stage: BTreeMap<String, PushTimes>,
    /// A trivial order's operations (counted by its store, as the functions count theirs).
    #[serde(default)]
    pub cost: Option<crate::cost::OrderCost>,
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
    /// With the floor, each pass's orders a second (the orders are measured in `--passes`
    /// passes, each after one of the floor's); `orders_per_s` pools them. Empty without
    /// the floor, and in results recorded before.
    #[serde(default)]
    pub passes: Vec<f64>,
    pub end_to_end: Latency,
    pub post: Latency,
    /// Time between one step emitting an event and the next step consuming it.
    pub hops: BTreeMap<String, Latency>,
    /// Each push step's deliveries, from its log: Pub/Sub's part and the step's.
    #[serde(default)]
    pub pushes: BTreeMap<String, PushTimes>,
    pub completed: usize,
    pub compensated: usize,
    pub unfinished: usize,
    pub invariants_held: bool,
    pub violations: Vec<String>,
    pub functions: BTreeMap<String, ProcessUse>,
    /// What ran the functions: `saga serve`, or the per-function binaries.
    #[serde(default)]
    pub binaries: String,
    /// The emulators' JVM heap (`--emulator-heap`): `auto`, or the size it was fixed at.
    /// Empty in results recorded before the bench fixed it (the JVM's own sizing).
    #[serde(default)]
    pub emulator_heap: String,
    pub emulators: BTreeMap<String, ProcessUse>,
    /// Orders placed before the measured ones (warm-up), not counted in any figure (the
    /// peak RSS is reset after them, where Linux allows it).
    #[serde(default)]
    pub warmup: usize,
    /// Each measured order's slot paused a think time before it, spread over 0..this many
    /// ms ([`think`]); 0: back to back.
    #[serde(default)]
    pub think_ms: u64,
    /// Orders in the project when the invariants were checked: the measured ones and the
    /// warm-up's.
    #[serde(default)]
    pub checked_orders: usize,
    /// The bench's own CPU while it drove the measured orders (its HTTP client and the
    /// poller that batch-reads the orders in flight), per 1,000 orders: it shares the machine.
    #[serde(default)]
    pub driver_cpu_s_per_1000_orders: f64,
    /// The five functions' RSS summed at one instant, the highest sum seen (sampled every
    /// [`RSS_SAMPLE_EVERY`] over the measured orders): what they hold
    /// resident together. The sum of each one's own peak is an upper bound: it may add peaks
    /// that came at different moments.
    #[serde(default)]
    pub five_rss_at_once_peak_mib: f64,
    pub floor: Option<Floor>,
    /// Transactions that collided and ran again during the measured orders, from the
    /// functions' logs.
    #[serde(default)]
    pub contention: Option<crate::bounds::Contention>,
    /// The measured orders' Firestore and Pub/Sub operations and CPU, per order, counted by
    /// the functions, and their price.
    #[serde(default)]
    pub cost: Option<crate::cost::OrderCost>,
    /// One round of every function's sweep (the schedule runs one a minute), after the
    /// measured orders: not counted in the orders' cost.
    #[serde(default)]
    pub sweeps_per_minute: Option<crate::cost::Ops>,
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
    Up(#[from] saga_emulator::stack::UpError),
    #[error(transparent)]
    Store(#[from] saga_infra::store::StoreError),
    #[error("{0}")]
    Other(String),
}

/// Linux `/proc` readings of a process.
pub mod procfs {
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

    /// Resets the process's peak RSS to its current RSS (`echo 5 > /proc/PID/clear_refs`,
    /// proc(5)), so that [`rss_kib`]'s peak is from then on; where Linux refuses, the peak
    /// stays the process's lifetime one.
    pub fn reset_peak_rss(pid: u32) {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
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
    fn cpu_ticks(pid: u32) -> u64 {
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

    /// The CPU of `pids` together (a process tree, or one process), in clock ticks.
    fn cpu_ticks_of(pids: &[u32]) -> u64 {
        pids.iter().map(|p| cpu_ticks(*p)).sum()
    }

    /// The CPU of groups of processes (each a tree, or one process), each counted only
    /// between [`Ticks::start`] and [`Ticks::stop`], over as many such stretches as there
    /// are: a run's measured passes, not what runs between them.
    #[derive(Debug)]
    pub struct Ticks {
        groups: Vec<Vec<u32>>,
        started: Vec<u64>,
        counted: Vec<u64>,
    }

    impl Ticks {
        pub fn of(groups: Vec<Vec<u32>>) -> Ticks {
            Ticks {
                counted: vec![0; groups.len()],
                started: Vec::new(),
                groups,
            }
        }

        fn now(&self) -> Vec<u64> {
            self.groups.iter().map(|g| cpu_ticks_of(g)).collect()
        }

        pub fn start(&mut self) {
            self.started = self.now();
        }

        /// Adds what each group spent since [`Ticks::start`].
        pub fn stop(&mut self) {
            let now = self.now();
            for ((sum, now), started) in self.counted.iter_mut().zip(now).zip(&self.started) {
                *sum += now.saturating_sub(*started);
            }
        }

        /// Each group's ticks, in the order given.
        pub fn counted(&self) -> &[u64] {
            &self.counted
        }
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

/// Rounds to one decimal, as the results show figures.
pub fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_think_time_is_none() {
        assert!((0..100).all(|i| think(0, i).is_zero()));
    }

    #[test]
    fn think_times_spread_evenly_over_the_range_in_any_run_of_orders() {
        for start in [0, 500, 7919] {
            let mut tenths = [0; 10];
            for i in start..start + 100 {
                let t = think(100, i);
                assert!(t < Duration::from_millis(100), "{t:?}");
                tenths[(t.as_secs_f64() * 100.0) as usize] += 1;
            }
            // Any run of consecutive orders meets every phase of a 100 ms sleep about
            // equally often (a Weyl sequence: 9 to 11 in each tenth).
            assert!(tenths.iter().all(|n| (8..=12).contains(n)), "{tenths:?}");
        }
    }
}
