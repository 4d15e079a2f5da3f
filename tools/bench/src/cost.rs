//! What an order costs: the operations the functions counted ([`saga_infra::meter`]) per
//! order, and what they come to per million orders at Google's list prices, read from one
//! file (`docs/prices.json`, with its date and region).

use std::path::Path;

use saga_infra::meter::Counts;
use serde::{Deserialize, Serialize};

/// Where the bench reads its prices.
pub const PRICES: &str = "docs/prices.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    pub as_of: String,
    pub firestore: FirestorePrices,
    pub pubsub: PubsubPrices,
    pub cloud_run: CloudRunPrices,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FirestorePrices {
    pub location: String,
    pub read_per_100k: f64,
    pub write_per_100k: f64,
    pub delete_per_100k: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PubsubPrices {
    pub per_tib: f64,
    pub min_bytes: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CloudRunPrices {
    pub region: String,
    pub vcpu_second: f64,
    pub gib_second: f64,
    pub per_million_requests: f64,
    pub memory_gib: f64,
}

impl Prices {
    pub fn load(path: &Path) -> Result<Prices, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading prices {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("prices {}: {e}", path.display()))
    }
}

/// Operations per order (or per minute, for the sweeps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Ops {
    pub reads: f64,
    pub writes: f64,
    pub deletes: f64,
    pub queries: f64,
    pub query_docs: f64,
    /// Reads as Firestore bills them: by id, returned by queries, one for an empty query.
    pub billed_reads: f64,
    pub commits: f64,
    pub transactions: f64,
    pub retries: f64,
    pub publishes: f64,
    pub publish_bytes: f64,
}

impl Ops {
    /// `counts` divided over `n` (orders, or minutes).
    pub fn per(counts: &Counts, n: f64) -> Ops {
        let n = n.max(1e-9);
        let r = |x: u64| round2(x as f64 / n);
        Ops {
            reads: r(counts.reads),
            writes: r(counts.writes),
            deletes: r(counts.deletes),
            queries: r(counts.queries),
            query_docs: r(counts.query_docs),
            billed_reads: r(counts.billed_reads()),
            commits: r(counts.commits),
            transactions: r(counts.transactions),
            retries: r(counts.retries),
            publishes: r(counts.publishes),
            publish_bytes: r(counts.publish_bytes),
        }
    }
}

/// What a million orders cost, in USD, by service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub firestore: f64,
    pub pubsub: f64,
    /// The functions' CPU (and the memory for that time) and their requests: a floor, since
    /// an instance is billed while it handles a request, also while it waits.
    pub cloud_run: f64,
    pub total: f64,
}

/// An order's operations and CPU, and their price.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderCost {
    pub per_order: Ops,
    /// The functions' CPU for one order, in milliseconds.
    pub cpu_ms: f64,
    /// Requests the functions served for one order (the POST and the pushes).
    pub requests: f64,
    pub per_million_usd: Cost,
    pub prices_as_of: String,
}

/// The cost of `per_order` operations, `cpu_ms` of function CPU and `requests` requests,
/// for a million orders. Each publish is delivered once (each event has one consumer) and
/// both are billed at least [`PubsubPrices::min_bytes`].
pub fn per_million(prices: &Prices, per_order: &Ops, cpu_ms: f64, requests: f64) -> Cost {
    let million = 1_000_000.0;
    let f = &prices.firestore;
    let firestore = (per_order.billed_reads * f.read_per_100k
        + per_order.writes * f.write_per_100k
        + per_order.deletes * f.delete_per_100k)
        / 100_000.0
        * million;
    let message = if per_order.publishes > 0.0 {
        (per_order.publish_bytes / per_order.publishes).max(prices.pubsub.min_bytes)
    } else {
        0.0
    };
    let tib = 1024f64.powi(4);
    let pubsub = per_order.publishes * 2.0 * message / tib * prices.pubsub.per_tib * million;
    let c = &prices.cloud_run;
    let seconds = cpu_ms / 1000.0;
    let cloud_run = (seconds * (c.vcpu_second + c.memory_gib * c.gib_second)
        + requests * c.per_million_requests / million)
        * million;
    Cost {
        firestore: round2(firestore),
        pubsub: round2(pubsub),
        cloud_run: round2(cloud_run),
        total: round2(firestore + pubsub + cloud_run),
    }
}

/// Rounds to two decimals, as the per-order operations show.
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The per-order lines of the bench's table.
pub fn lines(label: &str, cost: &OrderCost) -> String {
    let o = &cost.per_order;
    let c = &cost.per_million_usd;
    format!(
        "  {label:<18} per order: {} reads ({} by id, {} returned by {} queries), {} writes, {} deletes, {} commits, {} transactions ({} ran again), {} publishes ({} bytes), {} CPU ms\n  {:<18} per million orders: ${} (Firestore ${}, Pub/Sub ${}, Cloud Run ${}), prices of {}\n",
        o.billed_reads,
        o.reads,
        o.query_docs,
        o.queries,
        o.writes,
        o.deletes,
        o.commits,
        o.transactions,
        o.retries,
        o.publishes,
        o.publish_bytes,
        cost.cpu_ms,
        "",
        c.total,
        c.firestore,
        c.pubsub,
        c.cloud_run,
        cost.prices_as_of,
    )
}

/// The price of `counts` over `orders` orders, with `cpu_ms` of function CPU an order. Each
/// publish is one request to a function (the POST for the first, a push for the others).
pub fn cost(
    counts: &saga_infra::meter::Counts,
    orders: f64,
    cpu_ms: f64,
) -> Option<crate::cost::OrderCost> {
    use crate::cost::{Ops, OrderCost, PRICES, Prices, per_million};
    let prices = match Prices::load(Path::new(PRICES)) {
        Ok(prices) => prices,
        Err(error) => {
            eprintln!("no cost per million orders: {error}");
            return None;
        }
    };
    let per_order = Ops::per(counts, orders);
    Some(OrderCost {
        cpu_ms: crate::model::round(cpu_ms),
        requests: per_order.publishes,
        per_million_usd: per_million(&prices, &per_order, cpu_ms, per_order.publishes),
        per_order,
        prices_as_of: prices.as_of,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices() -> Prices {
        Prices {
            as_of: "2026-11-29".into(),
            firestore: FirestorePrices {
                location: "eur3".into(),
                read_per_100k: 0.06,
                write_per_100k: 0.18,
                delete_per_100k: 0.02,
            },
            pubsub: PubsubPrices {
                per_tib: 40.0,
                min_bytes: 1000.0,
            },
            cloud_run: CloudRunPrices {
                region: "europe-west1".into(),
                vcpu_second: 0.000024,
                gib_second: 0.0000025,
                per_million_requests: 0.40,
                memory_gib: 0.25,
            },
        }
    }

    #[test]
    fn the_project_prices_file_reads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let p = Prices::load(&root.join(PRICES)).unwrap();
        assert!(p.firestore.write_per_100k > 0.0 && !p.as_of.is_empty());
    }

    #[test]
    fn given_an_orders_operations_when_priced_then_firestore_writes_dominate() {
        // Given 6 writes and 6 reads, 4 publishes of 500 bytes and 6 CPU ms an order...
        let ops = Ops {
            reads: 6.0,
            billed_reads: 6.0,
            writes: 6.0,
            publishes: 4.0,
            publish_bytes: 2_000.0,
            ..Ops::default()
        };
        let c = per_million(&prices(), &ops, 6.0, 4.0);
        // ...Firestore is 6 * 0.18 + 6 * 0.06 per 100k = $14.40 a million orders...
        assert_eq!(c.firestore, 14.4);
        // ...Pub/Sub bills 8 messages of at least 1,000 bytes...
        assert_eq!(c.pubsub, 0.29);
        // ...Cloud Run 6 ms of a vCPU with 256 MiB, and 4 requests.
        assert_eq!(c.cloud_run, 1.75);
        assert_eq!(c.total, 16.44);
    }

    #[test]
    fn counts_are_divided_over_the_orders() {
        let counts = Counts {
            reads: 20,
            writes: 46,
            queries: 2,
            query_docs: 0,
            empty_queries: 2,
            ..Counts::default()
        };
        let o = Ops::per(&counts, 2.0);
        assert_eq!((o.reads, o.writes, o.billed_reads), (10.0, 23.0, 11.0));
    }
}
