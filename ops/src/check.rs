//! The saga's invariants, checked from Firestore alone, so the same check runs after a test,
//! against `saga up`, and against a deployed project (`saga check`).

use std::collections::BTreeMap;

use saga_contracts::docs::{ItemDoc, StockShard, UserDoc, collections};
use saga_contracts::events::OrderStatus;
use saga_contracts::order::{OrderDoc, PaymentStatus, ReservationStatus};
use saga_infra::store::{Store, StoreError};
use serde::Serialize;

/// How long `saga check` (settled) and the bench give the last outbox marks to land.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// What the data started from: stock per item and balance per user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baseline {
    pub stock: BTreeMap<String, i64>,
    pub balances: BTreeMap<String, i64>,
}

impl Baseline {
    /// The seed data of `saga up` and the tests.
    pub fn seed() -> Baseline {
        Baseline {
            stock: saga_emulator::seed::ITEMS
                .iter()
                .map(|(item, _, stock)| (item.to_string(), *stock))
                .collect(),
            balances: saga_emulator::seed::USERS
                .iter()
                .map(|(user, balance)| (user.to_string(), *balance))
                .collect(),
        }
    }
}

/// The result of a check: counts, every invariant that does not hold, and the messages an
/// operator should look at (parked and dead-lettered; listed, not violations: each has its
/// saga compensated or its own reason).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub orders: BTreeMap<String, usize>,
    pub violations: Vec<String>,
    #[serde(skip)]
    pub letters: Vec<crate::DeadLetter>,
}

impl Report {
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts: Vec<String> = self
            .orders
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        writeln!(f, "orders: {}", counts.join(", "))?;
        if !self.letters.is_empty() {
            writeln!(
                f,
                "parked and dead-lettered messages: {}",
                self.letters.len()
            )?;
            for l in &self.letters {
                writeln!(
                    f,
                    "  {} {} {} order {} (from {}): {}",
                    l.place, l.id, l.event_type, l.order_id, l.source, l.reason
                )?;
            }
        }
        if self.violations.is_empty() {
            return writeln!(f, "all invariants hold");
        }
        for v in &self.violations {
            writeln!(f, "VIOLATION: {v}")?;
        }
        Ok(())
    }
}

/// [`check`] of a settled project, given up to `patience` to settle: sagas still moving when
/// the check starts (a compensation on its way, a last delivery) get that long to end.
pub async fn check_settled(
    store: &Store,
    baseline: &Baseline,
    patience: std::time::Duration,
) -> Result<Report, StoreError> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        let report = check(store, baseline, Mode::Settled).await?;
        if report.holds() || std::time::Instant::now() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The steps a completed order has records of (the frontend's too, unless its request came
/// another way than `POST /order`).
const COMPLETED_STEPS: [&str; 3] = ["order", "inventory", "payments"];

/// What a check may assume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing is moving: every order must have reached COMPLETED or COMPENSATED with the
    /// records of the steps that took it there.
    Settled,
    /// Sagas are in flight; but none may be unfinished longer than `stuck_after` since its
    /// last change (the saga timeout and a sweep interval or two): the timeout sweep fails
    /// and compensates those, so one still there is stuck.
    InFlight { stuck_after: std::time::Duration },
}

/// Checks every invariant against `baseline`, from one snapshot of the database (every
/// collection read at the same instant, so sagas moving meanwhile cannot make conserved
/// stock or money look broken).
pub async fn check(store: &Store, baseline: &Baseline, mode: Mode) -> Result<Report, StoreError> {
    let settled = mode == Mode::Settled;
    let store = &store.snapshot().await?;
    let orders: Vec<(String, OrderDoc)> = store.all(collections::ORDERS).await?;
    let items: BTreeMap<String, ItemDoc> = store
        .all(collections::INVENTORY)
        .await?
        .into_iter()
        .collect();
    let users: BTreeMap<String, UserDoc> =
        store.all(collections::USERS).await?.into_iter().collect();
    let shards: Vec<(String, StockShard)> = store.all(collections::STOCK_SHARDS).await?;

    let mut report = Report::default();
    let v = &mut report.violations;
    for (_, order) in &orders {
        *report.orders.entry(order.status().to_string()).or_default() += 1;
    }

    // Stock: what was there = what is there + what is held by reservations.
    let mut held: BTreeMap<&str, i64> = BTreeMap::new();
    // Money: what users had = what they have + what was captured from them.
    let mut captured: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, order) in &orders {
        if let Some(r) = &order.reservation
            && r.status == ReservationStatus::Reserved
        {
            *held.entry(&order.item).or_default() += r.quantity;
        }
        if let Some(p) = &order.payment
            && p.status == PaymentStatus::Captured
        {
            *captured.entry(&order.user).or_default() += p.amount;
        }
    }
    let mut sharded: BTreeMap<&str, i64> = BTreeMap::new();
    for (id, shard) in &shards {
        if shard.stock < 0 {
            v.push(format!("stock shard {id} is negative: {}", shard.stock));
        }
        *sharded.entry(&shard.item).or_default() += shard.stock;
    }
    for (item, seeded) in &baseline.stock {
        let now = items.get(item).map_or(0, |i| i.stock)
            + sharded.get(item.as_str()).copied().unwrap_or(0);
        let reserved = held.get(item.as_str()).copied().unwrap_or(0);
        if now < 0 {
            v.push(format!("stock of {item} is negative: {now}"));
        }
        if *seeded != now + reserved {
            v.push(format!(
                "stock of {item} not conserved: seeded {seeded} != {now} in stock + {reserved} reserved"
            ));
        }
    }
    for (user, seeded) in &baseline.balances {
        let now = users.get(user).map_or(0, |u| u.balance);
        let taken = captured.get(user.as_str()).copied().unwrap_or(0);
        if now < 0 {
            v.push(format!("balance of {user} is negative: {now}"));
        }
        if *seeded != now + taken {
            v.push(format!(
                "money of {user} not conserved: seeded {seeded} != {now} balance + {taken} captured"
            ));
        }
    }

    // Each order's records agree with its status, and each step ran once.
    for (id, order) in &orders {
        let reserved = order
            .reservation
            .as_ref()
            .is_some_and(|r| r.status == ReservationStatus::Reserved);
        let charged = order
            .payment
            .is_some_and(|p| p.status == PaymentStatus::Captured);
        match order.status() {
            OrderStatus::Completed if !(reserved && charged) => v.push(format!(
                "order {id} COMPLETED without a held reservation ({reserved}) and a captured payment ({charged})"
            )),
            OrderStatus::Compensated if reserved || charged => v.push(format!(
                "order {id} COMPENSATED but still holds stock ({reserved}) or money ({charged})"
            )),
            status if settled && !status.is_terminal() => {
                v.push(format!("order {id} is not over: {status}"))
            }
            status if !status.is_terminal() => {
                if let Mode::InFlight { stuck_after } = mode
                    && let Ok(since) = jiff::SignedDuration::try_from(stuck_after)
                    && order.updated_at < jiff::Timestamp::now() - since
                {
                    v.push(format!(
                        "order {id} is stuck: {status} since {}, longer than {}s",
                        order.updated_at,
                        stuck_after.as_secs()
                    ));
                }
            }
            _ => {}
        }
        let mut steps: BTreeMap<&str, usize> = BTreeMap::new();
        for r in order.steps() {
            *steps.entry(&r.step).or_default() += 1;
        }
        for (step, n) in &steps {
            if *n > 1 {
                v.push(format!("order {id}: step {step} recorded {n} times"));
            }
        }
        // Settled, every event emitted was taken by the step it was for: each forward step
        // of a completed order ran, and a compensated one was compensated by the janitor.
        if settled {
            let missing: Vec<&str> = match order.status() {
                OrderStatus::Completed => COMPLETED_STEPS
                    .iter()
                    .copied()
                    .filter(|s| !steps.contains_key(s))
                    .collect(),
                OrderStatus::Compensated if !steps.contains_key("janitor") => vec!["janitor"],
                _ => Vec::new(),
            };
            if !missing.is_empty() {
                v.push(format!(
                    "order {id} is {} without a record of {}",
                    order.status(),
                    missing.join(", ")
                ));
            }
        }
    }
    Ok(report)
}
