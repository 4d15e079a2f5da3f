//! What bounds a bench run, from what the run measured: the CPU an order costs against the
//! cores there are, the orders in flight against their time end to end (Little's law), and
//! the transactions that collided and ran again. The bench prints these beside its figures
//! so a run that misses a target shows why, in numbers.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use saga_emulator::process::Kind;

use crate::model::{BenchResult, PushTimes, round};

/// Transactions that collided with another and ran again, as the functions logged them
/// ("contended transaction", once per transaction that took more than one attempt).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contention {
    /// Transactions that took more than one attempt.
    pub transactions: u64,
    /// Attempts beyond the first, over all of them.
    pub retries: u64,
    /// Transactions that ran out of retries (their step answered 5xx and was redelivered).
    pub gave_up: u64,
}

impl Contention {
    /// Adds up the "contended transaction" entries among JSON log lines.
    pub fn from_log_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Contention {
        Logged::from_log_lines(lines).contention
    }

    fn add(&mut self, entry: &serde_json::Value) {
        self.transactions += 1;
        self.retries += entry["attempts"].as_u64().unwrap_or(1).saturating_sub(1);
        if entry["ok"] == false {
            self.gave_up += 1;
        }
    }
}

/// What the functions logged during the measured orders that the bench reads: the
/// transactions that ran again, and each step's pushes (the `delivery_ms`, `committed_ms`
/// and `handled_ms` of its "step done" lines: the deliveries that did an order's work, not
/// the duplicates).
#[derive(Debug, Default)]
pub struct Logged {
    pub contention: Contention,
    pub pushes: BTreeMap<String, PushTimes>,
}

impl Logged {
    pub fn from_log_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Logged {
        let mut contention = Contention::default();
        let mut pushes: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
        for line in lines {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if entry["message"] == "contended transaction" {
                contention.add(&entry);
            } else if entry["message"] == "step done"
                && let (Some(step), Some(delivery), Some(committed), Some(answered)) = (
                    entry["step"].as_str(),
                    entry["delivery_ms"].as_f64(),
                    entry["committed_ms"].as_f64(),
                    entry["handled_ms"].as_f64(),
                )
            {
                pushes
                    .entry(step.to_owned())
                    .or_default()
                    .push((delivery, committed, answered));
            }
        }
        Logged {
            contention,
            pushes: pushes
                .into_iter()
                .map(|(step, times)| (step, PushTimes::of(times)))
                .collect(),
        }
    }
}

/// Where each function's log ended before the measured orders, so that only what they logged
/// during the measured orders is read afterwards.
pub struct LogMarks(Vec<(PathBuf, u64)>);

impl LogMarks {
    pub fn now(logs: &[PathBuf]) -> LogMarks {
        LogMarks(
            logs.iter()
                .map(|p| (p.clone(), std::fs::metadata(p).map_or(0, |m| m.len())))
                .collect(),
        )
    }

    /// What was logged since [`LogMarks::now`].
    pub fn since(&self) -> Logged {
        let logged: Vec<String> = self
            .0
            .iter()
            .map(|(path, offset)| read_from(path, *offset).unwrap_or_default())
            .collect();
        Logged::from_log_lines(logged.iter().flat_map(|text| text.lines()))
    }
}

fn read_from(path: &Path, offset: u64) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// The throughput each bound allows, beside the throughput measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    /// CPU milliseconds an order cost, over every process measured (functions, emulators,
    /// the bench driver).
    pub cpu_ms_per_order: f64,
    /// Of those, the emulators', the functions' and the driver's.
    pub emulators_ms: f64,
    pub functions_ms: f64,
    pub driver_ms: f64,
    pub cores: usize,
    /// Orders a second the cores allow at that cost: `cores × 1000 / cpu_ms_per_order`.
    pub cpu_orders_per_s: Option<f64>,
    /// Cores kept busy during the run: `orders_per_s × cpu_ms_per_order / 1000`.
    pub cores_busy: f64,
    /// The mean end-to-end time, ms.
    pub mean_end_to_end_ms: f64,
    /// Orders a second that `concurrency` orders in flight allow at that mean (Little's law):
    /// an upper bound, as the next order starts a little after one finishes.
    pub in_flight_orders_per_s: Option<f64>,
    /// The step that held its pushes longest, and the orders a second its push loops allow
    /// ([`PushLoops`]).
    pub push_loops: Option<PushLoops>,
}

/// What the Pub/Sub emulator's push loops allow. Each push subscription has two, and a loop
/// pushes one message, waits for the answer, then pulls the next (its `PushLoop`), so a
/// stage whose pushes are each held `h` ms takes at most `2 × 1000 / h` a second, whatever
/// the concurrency: an upper bound, as each push also costs the emulator its own time. The
/// stage that holds its pushes longest bounds a run with one push a stage an order; its
/// loops' share spent holding pushes at the run's rate says how near the run came.
#[derive(Debug, Clone, PartialEq)]
pub struct PushLoops {
    pub stage: String,
    /// Its mean push held, ms, and of it the part until its commit.
    pub held_ms: f64,
    pub committed_ms: f64,
    /// `2 × 1000 / held_ms`.
    pub orders_per_s: f64,
    /// Its two loops' time spent holding pushes at `rate` a second: `rate × held_ms / 2000`.
    pub busy: f64,
}

/// Loops a push subscription has on the emulator.
const PUSH_LOOPS: f64 = 2.0;

impl PushLoops {
    /// From each stage's push times, at `rate` pushes a second a stage; none without holds
    /// (results recorded before they were logged).
    pub fn of<'a>(
        stages: impl IntoIterator<Item = (&'a String, &'a PushTimes)>,
        rate: f64,
    ) -> Option<PushLoops> {
        let (stage, times) = stages
            .into_iter()
            .filter(|(_, t)| t.held.count > 0 && t.held.mean > 0.0)
            .max_by(|a, b| a.1.held.mean.total_cmp(&b.1.held.mean))?;
        let held_ms = times.held.mean;
        Some(PushLoops {
            stage: stage.clone(),
            held_ms,
            committed_ms: times.handling.mean,
            orders_per_s: PUSH_LOOPS * 1000.0 / held_ms,
            busy: rate * held_ms / (PUSH_LOOPS * 1000.0),
        })
    }

    /// `{stage} held its pushes {held} ms (…) => at most … orders/s; its two loops …% busy
    /// holding them`.
    fn describe(&self) -> String {
        format!(
            "{} held its pushes {} ms (its commit {}, then its publish and answer) => at most {} orders/s; its two loops {:.0}% busy holding them",
            self.stage,
            round(self.held_ms),
            round(self.committed_ms),
            round(self.orders_per_s),
            self.busy * 100.0,
        )
    }
}

impl Bounds {
    pub fn of(r: &BenchResult) -> Option<Bounds> {
        if r.count == 0 || r.orders_per_s <= 0.0 {
            return None;
        }
        // CPU seconds per 1,000 orders is CPU milliseconds per order.
        let functions_ms: f64 = r.functions.values().map(|p| p.cpu_s_per_1000_orders).sum();
        let emulators_ms: f64 = r.emulators.values().map(|p| p.cpu_s_per_1000_orders).sum();
        let driver_ms = r.driver_cpu_s_per_1000_orders;
        let cpu_ms_per_order = functions_ms + emulators_ms + driver_ms;
        let cores = r.cores();
        let cpu_orders_per_s =
            (cpu_ms_per_order > 0.0 && cores > 0).then(|| cores as f64 * 1000.0 / cpu_ms_per_order);
        let mean_end_to_end_ms = if r.samples_ms.is_empty() {
            0.0
        } else {
            r.samples_ms.iter().sum::<f64>() / r.samples_ms.len() as f64
        };
        let in_flight_orders_per_s =
            (mean_end_to_end_ms > 0.0).then(|| r.concurrency as f64 * 1000.0 / mean_end_to_end_ms);
        Some(Bounds {
            cpu_ms_per_order,
            emulators_ms,
            functions_ms,
            driver_ms,
            cores,
            cpu_orders_per_s,
            cores_busy: r.orders_per_s * cpu_ms_per_order / 1000.0,
            mean_end_to_end_ms,
            in_flight_orders_per_s,
            push_loops: PushLoops::of(&r.pushes, r.orders_per_s),
        })
    }

    /// The bound nearest the measured throughput, and how close the run came to it.
    pub fn nearest(&self, orders_per_s: f64) -> Option<(&'static str, f64)> {
        [
            ("CPU", self.cpu_orders_per_s),
            ("orders in flight", self.in_flight_orders_per_s),
            (
                "push loops",
                self.push_loops.as_ref().map(|p| p.orders_per_s),
            ),
        ]
        .into_iter()
        .filter_map(|(name, bound)| bound.map(|b| (name, b)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(name, bound)| (name, orders_per_s / bound * 100.0))
    }

    /// The lines of the bench's table.
    pub fn lines(&self, r: &BenchResult) -> String {
        let mut t = String::new();
        let cap = |x: Option<f64>| x.map_or("-".to_owned(), |x| round(x).to_string());
        t.push_str(&format!(
            "  bound: CPU         {} CPU ms an order (emulators {}, functions {}, driver {}) on {} cores => at most {} orders/s; {} cores busy\n",
            round(self.cpu_ms_per_order),
            round(self.emulators_ms),
            round(self.functions_ms),
            round(self.driver_ms),
            self.cores,
            cap(self.cpu_orders_per_s),
            (self.cores_busy * 100.0).round() / 100.0,
        ));
        t.push_str(&format!(
            "  bound: in flight   {} orders / {} ms mean end to end => at most {} orders/s (Little's law)\n",
            r.concurrency,
            round(self.mean_end_to_end_ms),
            cap(self.in_flight_orders_per_s),
        ));
        if let Some(loops) = &self.push_loops {
            let floor = r
                .floor
                .as_ref()
                .and_then(|f| PushLoops::of(&f.pushes_by_stage, f.orders_per_s))
                .map_or(String::new(), |f| format!("; the floor's {}", f.describe()));
            t.push_str(&format!(
                "  bound: push loops  two pushes at a time a subscription (the emulator's push loops): {}{floor}\n",
                loops.describe(),
            ));
        }
        if let Some(c) = &r.contention {
            t.push_str(&format!(
                "  contention         {} transactions ran again ({} retries, {} gave up)\n",
                c.transactions, c.retries, c.gave_up
            ));
        }
        if let Some((name, percent)) = self.nearest(r.orders_per_s) {
            t.push_str(&format!(
                "  nearest bound      {name}: this run at {percent:.0}% of it\n"
            ));
        }
        if let Some(line) = self.floor_budget(r) {
            t.push_str(&line);
        }
        if let Some(line) = per_operation(r) {
            t.push_str(&line);
        }
        t
    }

    /// What the CPU allows an order beside the floor: at the floor's orders/s the cores give
    /// each order so many CPU ms, against what this run's cost and what the emulators alone
    /// spent on a trivial order.
    fn floor_budget(&self, r: &BenchResult) -> Option<String> {
        let f = r.floor.as_ref().filter(|f| f.orders_per_s > 0.0)?;
        if self.cores == 0 {
            return None;
        }
        let budget = self.cores as f64 * 1000.0 / f.orders_per_s;
        let floor_emulators: f64 = f.emulator_cpu_ms.values().sum();
        Some(format!(
            "  CPU at the floor   the floor's {} orders/s on {} cores leave an order {} CPU ms; this run's cost {} (emulators {}); a trivial order's emulators alone {}\n",
            f.orders_per_s,
            self.cores,
            round(budget),
            round(self.cpu_ms_per_order),
            round(self.emulators_ms),
            round(floor_emulators),
        ))
    }
}

/// What each emulator spent on one operation, the saga's against the floor's: whether the
/// saga's orders cost the emulators more because they make more operations or because each
/// costs more (bigger documents). Firestore's are the documents read and written; Pub/Sub's
/// the publishes (each with the push it leads to, but the last). Each emulator's whole CPU
/// is divided over them: a commit's own cost is spread over its documents, and both make 4
/// commits an order. At the floor's cost an operation, the saga's operations alone would
/// take the emulators the sum, set beside what they took.
fn per_operation(r: &BenchResult) -> Option<String> {
    let f = r.floor.as_ref()?;
    let (ops, floor_ops) = (&r.cost.as_ref()?.per_order, &f.cost.as_ref()?.per_order);
    let documents = |o: &crate::cost::Ops| o.reads + o.writes + o.deletes;
    let spent = |name: &str| r.emulators.get(name).map(|p| p.cpu_s_per_1000_orders);
    let each = |ms: f64, n: f64| (n > 0.0).then(|| ms / n);
    let (firestore, pubsub) = (Kind::Firestore.name(), Kind::PubSub.name());
    let saga_firestore = each(spent(firestore)?, documents(ops))?;
    let floor_firestore = each(*f.emulator_cpu_ms.get(firestore)?, documents(floor_ops))?;
    let saga_pubsub = each(spent(pubsub)?, ops.publishes)?;
    let floor_pubsub = each(*f.emulator_cpu_ms.get(pubsub)?, floor_ops.publishes)?;
    let at_floor_cost = floor_firestore * documents(ops) + floor_pubsub * ops.publishes;
    let took = spent(firestore)? + spent(pubsub)?;
    Some(format!(
        "  per operation      {firestore} {} CPU ms a document read or written ({} an order), the floor's {} ({}); {pubsub} {} a publish ({}), the floor's {} ({}) => at the floor's cost an operation, this order's operations would take the emulators {} CPU ms (they took {})\n",
        crate::cost::round2(saga_firestore),
        round(documents(ops)),
        crate::cost::round2(floor_firestore),
        round(documents(floor_ops)),
        crate::cost::round2(saga_pubsub),
        round(ops.publishes),
        crate::cost::round2(floor_pubsub),
        round(floor_ops.publishes),
        round(at_floor_cost),
        round(took),
    ))
}

/// Where an order's time end to end went, in mean milliseconds an order: waiting for
/// Pub/Sub to push (from the moment Pub/Sub stamped each message published until it was
/// pushed, over every push the order took), in the steps (each push until its step's
/// commit), and the rest: the POST's own work, and each step's publish until Pub/Sub
/// stamps it. The parts do not overlap; an order's time ends at its last commit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    pub end_to_end: f64,
    pub waiting: f64,
    pub handling: f64,
}

impl Split {
    /// For `orders` orders of `end_to_end` ms on average, whose pushes were `pushes`.
    pub fn of<'a>(
        end_to_end: f64,
        orders: usize,
        pushes: impl IntoIterator<Item = &'a PushTimes>,
    ) -> Option<Split> {
        let (mut waiting, mut handling, mut any) = (0.0, 0.0, false);
        for p in pushes {
            waiting += p.delivery.mean * p.delivery.count as f64;
            handling += p.handling.mean * p.handling.count as f64;
            any |= p.delivery.count > 0;
        }
        (any && orders > 0 && end_to_end > 0.0).then(|| Split {
            end_to_end,
            waiting: waiting / orders as f64,
            handling: handling / orders as f64,
        })
    }

    pub fn rest(&self) -> f64 {
        self.end_to_end - self.waiting - self.handling
    }

    fn line(&self) -> String {
        let part = |ms: f64| {
            format!(
                "{} ms ({:.0} %)",
                round(ms),
                ms / self.end_to_end.max(1e-9) * 100.0
            )
        };
        format!(
            "waiting for Pub/Sub's pushes {}, in the steps {}, the rest {}",
            part(self.waiting),
            part(self.handling),
            part(self.rest())
        )
    }
}

/// The lines that say where a run's time went, and, beside the floor, where the difference
/// went: a run short of its floor with CPU to spare is slower per order, and this says in
/// which part.
pub fn time_lines(r: &BenchResult) -> String {
    let mut t = String::new();
    let saga = Split::of(r.end_to_end.mean, r.count, r.pushes.values());
    if let Some(split) = &saga {
        let steps: Vec<String> = r
            .pushes
            .iter()
            .map(|(step, p)| format!("{step} {} + {}", p.delivery.mean, p.handling.mean))
            .collect();
        t.push_str(&format!(
            "  time an order      {} ms mean end to end: {}\n                     its pushes, Pub/Sub's + the step's, means: {} ms\n",
            split.end_to_end,
            split.line(),
            steps.join(", ")
        ));
    }
    let Some(f) = &r.floor else { return t };
    let floor = Split::of(
        f.end_to_end.mean,
        f.end_to_end.count,
        std::iter::once(&f.pushes),
    );
    if let Some(floor) = &floor {
        let stages: Vec<String> = f
            .pushes_by_stage
            .iter()
            .map(|(stage, p)| format!("{stage} {} + {}", p.delivery.mean, p.handling.mean))
            .collect();
        let stages = match stages.is_empty() {
            true => String::new(),
            false => format!(" ({} ms)", stages.join(", ")),
        };
        t.push_str(&format!(
            "  floor time         {} ms mean a trivial order: {}\n                     its pushes, Pub/Sub's + the stage's, means: {} + {} ms{stages}\n",
            floor.end_to_end,
            floor.line(),
            f.pushes.delivery.mean,
            f.pushes.handling.mean,
        ));
    }
    if let (Some(saga), Some(floor)) = (saga, floor) {
        let signed = |ms: f64| format!("{:+}", round(ms));
        t.push_str(&format!(
            "  against the floor  {} ms an order end to end: waiting for Pub/Sub {}, in the steps {}, the rest {}\n",
            signed(saga.end_to_end - floor.end_to_end),
            signed(saga.waiting - floor.waiting),
            signed(saga.handling - floor.handling),
            signed(saga.rest() - floor.rest()),
        ));
        t.push_str(
            &at_equal_waits(
                r.concurrency,
                (r.orders_per_s, saga.waiting),
                (f.orders_per_s, floor.waiting),
            )
            .unwrap_or_default(),
        );
    }
    t
}

/// The ratio to the floor with the waits for Pub/Sub set equal: what the saga's own part of
/// an order sets, apart from the push waits.
///
/// A slot's round is what each of the `c` slots spends on an order, from placing it to
/// placing the next (`c` / orders a second, so a run's orders/s is `c` over it). Without its
/// waits for Pub/Sub, the rest of a round is the saga's own: its steps, its POST, its last
/// publish and the driver hearing of its end. The waits are mostly the emulator's: each
/// push subscription's two loops sleep 100 ms whenever they find nothing (its `PushLoop`),
/// the orders in flight fall into step with those sleeps for a pass at a time, and one pass
/// of the same code can wait tens of ms an order more than the next, the floor's as the
/// saga's. Not only: queueing behind the two loops also grows with how long each push holds
/// one, and the saga's steps hold theirs a little longer than the floor's stages. So the
/// figure bounds the ratio from above, it does not predict it. Given each side's orders a
/// second and mean waits an order, in ms.
fn at_equal_waits(
    c: usize,
    (saga_rate, saga_waits): (f64, f64),
    (floor_rate, floor_waits): (f64, f64),
) -> Option<String> {
    let round_ms = |rate: f64| (rate > 0.0).then(|| c as f64 * 1000.0 / rate);
    let (saga_round, floor_round) = (round_ms(saga_rate)?, round_ms(floor_rate)?);
    let saga_own = saga_round - saga_waits;
    let percent = floor_round / (floor_waits + saga_own) * 100.0;
    Some(format!(
        "  at equal waits     a slot's round an order (c / orders/s) {} ms: waiting for Pub/Sub {}, the saga's own {}; the floor's {} ms: {} + {} => with the floor's waits this run would be at {percent:.0}% of the floor ({:.0}% with its own)\n",
        round(saga_round),
        round(saga_waits),
        round(saga_own),
        round(floor_round),
        round(floor_waits),
        round(floor_round - floor_waits),
        saga_rate / floor_rate * 100.0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Floor, Latency, ProcessUse};

    fn cpu(ms: f64) -> ProcessUse {
        ProcessUse {
            cpu_s_per_1000_orders: ms,
            ..ProcessUse::default()
        }
    }

    fn run(concurrency: usize, orders_per_s: f64, samples_ms: Vec<f64>) -> BenchResult {
        BenchResult {
            count: 1000,
            concurrency,
            orders_per_s,
            machine: "2 cores (Test CPU), 23 GiB".into(),
            functions: [
                ("order".to_owned(), cpu(3.0)),
                ("inventory".to_owned(), cpu(3.4)),
            ]
            .into(),
            emulators: [
                ("Firestore emulator".to_owned(), cpu(16.8)),
                ("Pub/Sub emulator".to_owned(), cpu(9.5)),
            ]
            .into(),
            driver_cpu_s_per_1000_orders: 0.7,
            samples_ms,
            ..BenchResult::default()
        }
    }

    #[test]
    fn a_run_that_keeps_the_cores_busy_is_bound_by_cpu() {
        // Given 33.4 CPU ms an order on 2 cores, and 20 orders in flight for 300 ms each,
        let r = run(20, 59.4, vec![300.0; 10]);
        // when its bounds are worked out,
        let b = Bounds::of(&r).expect("bounds");
        // then the CPU allows 59.9 orders/s, Little's law 66.7, and the CPU is the nearer.
        assert_eq!(round(b.cpu_ms_per_order), 33.4);
        assert_eq!(b.cpu_orders_per_s.map(round), Some(59.9));
        assert_eq!(b.in_flight_orders_per_s.map(round), Some(66.7));
        assert_eq!((b.cores_busy * 100.0).round(), 198.0);
        let (name, percent) = b.nearest(r.orders_per_s).expect("a bound");
        assert_eq!((name, percent.round()), ("CPU", 99.0));
        let lines = b.lines(&r);
        assert!(
            lines.contains("at most 59.9 orders/s; 1.98 cores busy"),
            "{lines}"
        );
        assert!(
            lines.contains("nearest bound      CPU: this run at 99%"),
            "{lines}"
        );
        // Beside a floor of 80 trivial orders/s whose emulators spent 20 CPU ms on each, an
        // order at the floor's pace could cost 25 CPU ms: this one cost 33.4.
        let mut r = r;
        r.floor = Some(Floor {
            orders_per_s: 80.0,
            emulator_cpu_ms: [
                ("Firestore emulator".to_owned(), 12.0),
                ("Pub/Sub emulator".to_owned(), 8.0),
            ]
            .into(),
            ..Floor::default()
        });
        let lines = b.lines(&r);
        assert!(
            lines.contains("the floor's 80 orders/s on 2 cores leave an order 25 CPU ms; this run's cost 33.4 (emulators 26.3); a trivial order's emulators alone 20"),
            "{lines}"
        );
    }

    #[test]
    fn the_emulators_cost_an_operation_is_set_beside_the_floor_s() {
        use crate::cost::{Ops, OrderCost};
        let order = |reads, writes, publishes| OrderCost {
            per_order: Ops {
                reads,
                writes,
                publishes,
                ..Ops::default()
            },
            ..OrderCost::default()
        };
        // Given an order of 6 reads, 6 writes and 4 publishes on which the Firestore emulator
        // spent 16.8 CPU ms and the Pub/Sub emulator 9.5,
        let mut r = run(50, 80.0, vec![500.0]);
        r.cost = Some(order(6.0, 6.0, 4.0));
        // and the floor's trivial order of 4 reads, 4 writes and 4 publishes, 12 and 8,
        r.floor = Some(Floor {
            orders_per_s: 120.0,
            cost: Some(order(4.0, 4.0, 4.0)),
            emulator_cpu_ms: [
                ("Firestore emulator".to_owned(), 12.0),
                ("Pub/Sub emulator".to_owned(), 8.0),
            ]
            .into(),
            ..Floor::default()
        });
        // when the bounds are printed,
        let lines = Bounds::of(&r).expect("bounds").lines(&r);
        // then each emulator's cost an operation stands beside the floor's, and the saga's
        // operations at the floor's cost: 12 × 1.5 + 4 × 2 = 26 CPU ms.
        assert!(
            lines.contains("per operation      Firestore emulator 1.4 CPU ms a document read or written (12 an order), the floor's 1.5 (8); Pub/Sub emulator 2.38 a publish (4), the floor's 2 (4) => at the floor's cost an operation, this order's operations would take the emulators 26 CPU ms (they took 26.3)"),
            "{lines}"
        );
        // and without the floor's operations counted, there is no such line.
        r.floor.as_mut().expect("a floor").cost = None;
        let lines = Bounds::of(&r).expect("bounds").lines(&r);
        assert!(!lines.contains("per operation"), "{lines}");
    }

    #[test]
    fn a_run_with_few_orders_in_flight_is_bound_by_their_latency() {
        // Given 10 orders in flight taking 190 ms each on average, with CPU to spare,
        let r = run(10, 46.9, vec![150.0, 230.0]);
        let b = Bounds::of(&r).expect("bounds");
        // then Little's law allows 52.6 orders/s and is the nearer bound.
        assert_eq!(b.in_flight_orders_per_s.map(round), Some(52.6));
        assert_eq!(
            b.nearest(r.orders_per_s).map(|(n, _)| n),
            Some("orders in flight")
        );
    }

    #[test]
    fn the_stage_that_holds_its_pushes_longest_bounds_what_its_two_loops_carry() {
        // Given two steps whose pushes were held 5 and 7 ms (committed after 2 and 3),
        let pushes = BTreeMap::from([
            ("order".to_owned(), PushTimes::of([(50.0, 2.0, 5.0)])),
            (
                "payments".to_owned(),
                PushTimes::of([(50.0, 3.0, 7.0), (40.0, 3.0, 7.0)]),
            ),
        ]);
        // when the run made 200 orders a second,
        let loops = PushLoops::of(&pushes, 200.0).expect("holds were logged");
        // then payments bounds it: its two loops, 7 ms a push, carry at most 285.7 a
        // second, and at 200 they spent 70 % of their time holding pushes;
        assert_eq!(
            (loops.stage.as_str(), round(loops.orders_per_s)),
            ("payments", 285.7)
        );
        assert!((loops.busy - 0.7).abs() < 1e-9, "{loops:?}");
        assert!(
            loops.describe().starts_with(
                "payments held its pushes 7 ms (its commit 3, then its publish and answer) => at most 285.7 orders/s; its two loops 70% busy"
            ),
            "{}",
            loops.describe()
        );
        // and results recorded before holds were logged give no such bound.
        let before = BTreeMap::from([(
            "order".to_owned(),
            PushTimes {
                held: Latency::default(),
                ..PushTimes::of([(50.0, 2.0, 5.0)])
            },
        )]);
        assert_eq!(PushLoops::of(&before, 200.0), None);
    }

    #[test]
    fn the_time_an_order_splits_into_pub_sub_s_waits_and_the_steps() {
        // Given two steps' log lines, each with Pub/Sub's part and the step's (a duplicate's
        // does no order's work and is left out),
        let lines = [
            r#"{"message":"step done","step":"order","delivery_ms":40.0,"committed_ms":10.0,"handled_ms":12.0}"#,
            r#"{"message":"step done","step":"order","delivery_ms":60.0,"committed_ms":10.0,"handled_ms":14.0}"#,
            r#"{"message":"step done","step":"inventory","delivery_ms":50.0,"committed_ms":6.0,"handled_ms":8.0}"#,
            r#"{"message":"step done","step":"inventory","delivery_ms":50.0,"committed_ms":4.0,"handled_ms":6.0}"#,
            r#"{"message":"step done","step":"janitor","outcome":"a sweep's: no push"}"#,
            r#"{"message":"duplicate delivery, step already done","step":"order","delivery_ms":900.0,"committed_ms":3.0}"#,
        ];
        let logged = Logged::from_log_lines(lines);
        assert_eq!(logged.pushes.len(), 2);
        assert_eq!(logged.pushes["order"].delivery.mean, 50.0);
        assert_eq!(logged.pushes["inventory"].handling.mean, 5.0);
        // when two orders took 130 ms each on average, and the floor's one took 110 ms over
        // two pushes of 45 + 5,
        let mut r = run(10, 50.0, vec![130.0, 130.0]);
        r.count = 2;
        r.end_to_end = Latency::of_ms(vec![130.0, 130.0]);
        r.pushes = logged.pushes;
        r.floor = Some(Floor {
            end_to_end: Latency::of_ms(vec![110.0]),
            pushes: PushTimes::of([(45.0, 5.0, 7.0), (45.0, 5.0, 7.0)]),
            ..Floor::default()
        });
        // then each order waited 100 ms for Pub/Sub and spent 15 in the steps,
        let split = Split::of(130.0, 2, r.pushes.values()).expect("a split");
        assert_eq!(
            (split.waiting, split.handling, split.rest()),
            (100.0, 15.0, 15.0)
        );
        // and against the floor's 90 + 10 + 10, the lines say which part grew.
        let lines = time_lines(&r);
        assert!(
            lines.contains("waiting for Pub/Sub's pushes 100 ms (77 %), in the steps 15 ms (12 %)"),
            "{lines}"
        );
        assert!(
            lines.contains(
                "+20 ms an order end to end: waiting for Pub/Sub +10, in the steps +5, the rest +5"
            ),
            "{lines}"
        );
        // At 50 orders/s with 10 in flight, a slot's round is 200 ms, 100 of them the
        // saga's own; the floor's at 60, 166.7 of which 90 waiting: with the floor's waits,
        // 166.7 against 190.
        r.floor.as_mut().expect("the floor").orders_per_s = 60.0;
        let lines = time_lines(&r);
        assert!(
            lines.contains("round an order (c / orders/s) 200 ms: waiting for Pub/Sub 100, the saga's own 100; the floor's 166.7 ms: 90 + 76.7 => with the floor's waits this run would be at 88% of the floor (83% with its own)"),
            "{lines}"
        );
    }

    #[test]
    fn with_equal_waits_a_run_short_of_its_floor_says_how_much_is_its_own() {
        // Given a c=10 run at 60.3 orders/s whose orders waited 142.4 ms for Pub/Sub, and a
        // floor at 79.4 whose trivial orders waited 106.5 (a pass of it within one sleep of
        // the push loops),
        let line = at_equal_waits(10, (60.3, 142.4), (79.4, 106.5)).expect("a line");
        // then the saga's own part of a round is 23.4 ms against the floor's 19.4, and with
        // the floor's waits it would run at 97% of the floor, not 76%.
        assert!(line.contains("165.8 ms: waiting for Pub/Sub 142.4, the saga's own 23.4; the floor's 125.9 ms: 106.5 + 19.4"), "{line}");
        assert!(
            line.contains("at 97% of the floor (76% with its own)"),
            "{line}"
        );
        // Without a rate on either side there is no round to split.
        assert_eq!(at_equal_waits(10, (0.0, 1.0), (79.4, 106.5)), None);
    }

    #[test]
    fn contention_counts_the_transactions_that_ran_again() {
        let lines = [
            r#"{"message":"event published","topic":"x"}"#,
            r#"{"message":"contended transaction","attempts":2,"ok":true}"#,
            r#"{"message":"contended transaction","attempts":4,"ok":true}"#,
            r#"{"message":"contended transaction","attempts":13,"ok":false}"#,
            "not json",
        ];
        assert_eq!(
            Contention::from_log_lines(lines),
            Contention {
                transactions: 3,
                retries: 1 + 3 + 12,
                gave_up: 1
            }
        );
    }

    #[test]
    fn only_what_was_logged_after_the_mark_is_read() {
        let dir = std::env::temp_dir().join(format!("bounds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = dir.join("inventory.log");
        let line = r#"{"message":"contended transaction","attempts":3,"ok":true}"#;
        std::fs::write(&log, format!("{line}\n")).expect("write");
        let marks = LogMarks::now(std::slice::from_ref(&log));
        let mut text = std::fs::read_to_string(&log).expect("read");
        text.push_str(&format!("{line}\n"));
        std::fs::write(&log, text).expect("write");
        assert_eq!(
            marks.since().contention,
            Contention {
                transactions: 1,
                retries: 2,
                gave_up: 0
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
