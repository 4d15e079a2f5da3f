//! What an order costs, counted where the money goes: every Firestore and Pub/Sub operation a
//! process makes passes through one [`Meter`] (the store's and the publisher's calls add to
//! it), and `GET /internal/meter` shows the totals, which `saga bench` reads before and after
//! a run. On Google Cloud an order's price is almost all Firestore operations.
//!
//! How Firestore bills them (Firestore pricing, standard edition): one read per document a
//! get returns or finds missing, one read per document a query returns (at least one per
//! query), one write per document written, one delete per document deleted; commits and
//! transactions are not billed themselves, but are counted here because each is a round trip.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Operation counts, as a snapshot or a difference of two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Documents read by id (found or not).
    pub reads: u64,
    /// Documents written (created, replaced or updated).
    pub writes: u64,
    pub deletes: u64,
    /// Queries run, the documents they returned, and those that returned none (each billed a
    /// read all the same).
    pub queries: u64,
    pub query_docs: u64,
    pub empty_queries: u64,
    /// Commit requests (each writes any number of documents atomically).
    pub commits: u64,
    /// Transactions run, and the attempts among them that ran again after a conflict.
    pub transactions: u64,
    pub retries: u64,
    /// Messages published, and their bytes (data and attributes).
    pub publishes: u64,
    pub publish_bytes: u64,
}

impl Counts {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            reads: self.reads.saturating_sub(earlier.reads),
            writes: self.writes.saturating_sub(earlier.writes),
            deletes: self.deletes.saturating_sub(earlier.deletes),
            queries: self.queries.saturating_sub(earlier.queries),
            query_docs: self.query_docs.saturating_sub(earlier.query_docs),
            empty_queries: self.empty_queries.saturating_sub(earlier.empty_queries),
            commits: self.commits.saturating_sub(earlier.commits),
            transactions: self.transactions.saturating_sub(earlier.transactions),
            retries: self.retries.saturating_sub(earlier.retries),
            publishes: self.publishes.saturating_sub(earlier.publishes),
            publish_bytes: self.publish_bytes.saturating_sub(earlier.publish_bytes),
        }
    }

    pub fn plus(&self, other: &Counts) -> Counts {
        Counts {
            reads: self.reads + other.reads,
            writes: self.writes + other.writes,
            deletes: self.deletes + other.deletes,
            queries: self.queries + other.queries,
            query_docs: self.query_docs + other.query_docs,
            empty_queries: self.empty_queries + other.empty_queries,
            commits: self.commits + other.commits,
            transactions: self.transactions + other.transactions,
            retries: self.retries + other.retries,
            publishes: self.publishes + other.publishes,
            publish_bytes: self.publish_bytes + other.publish_bytes,
        }
    }

    /// Documents read as Firestore bills them: by id, and returned by queries (one at least
    /// for each query).
    pub fn billed_reads(&self) -> u64 {
        self.reads + self.query_docs + self.empty_queries
    }
}

/// What `GET /internal/meter` answers: a process's operations for orders, and for its
/// scheduled sweeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metered {
    pub orders: Counts,
    pub sweeps: Counts,
}

/// A process's operation counters; cheap to clone, shared.
#[derive(Clone, Debug, Default)]
pub struct Meter {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    reads: AtomicU64,
    writes: AtomicU64,
    deletes: AtomicU64,
    queries: AtomicU64,
    query_docs: AtomicU64,
    empty_queries: AtomicU64,
    commits: AtomicU64,
    transactions: AtomicU64,
    retries: AtomicU64,
    publishes: AtomicU64,
    publish_bytes: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Meter {
    pub fn read(&self, documents: usize) {
        add(&self.inner.reads, documents as u64);
    }

    pub fn write(&self, documents: usize) {
        add(&self.inner.writes, documents as u64);
    }

    pub fn delete(&self, documents: usize) {
        add(&self.inner.deletes, documents as u64);
    }

    pub fn query(&self, returned: usize) {
        add(&self.inner.queries, 1);
        add(&self.inner.query_docs, returned as u64);
        if returned == 0 {
            add(&self.inner.empty_queries, 1);
        }
    }

    /// A commit of `documents` writes.
    pub fn commit(&self, documents: usize) {
        add(&self.inner.commits, 1);
        self.write(documents);
    }

    /// A transaction attempt; `retry` if it runs again after a conflict.
    pub fn transaction(&self, retry: bool) {
        add(
            if retry {
                &self.inner.retries
            } else {
                &self.inner.transactions
            },
            1,
        );
    }

    pub fn publish(&self, bytes: usize) {
        add(&self.inner.publishes, 1);
        add(&self.inner.publish_bytes, bytes as u64);
    }

    pub fn counts(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let i = &self.inner;
        Counts {
            reads: get(&i.reads),
            writes: get(&i.writes),
            deletes: get(&i.deletes),
            queries: get(&i.queries),
            query_docs: get(&i.query_docs),
            empty_queries: get(&i.empty_queries),
            commits: get(&i.commits),
            transactions: get(&i.transactions),
            retries: get(&i.retries),
            publishes: get(&i.publishes),
            publish_bytes: get(&i.publish_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_differences_are_what_happened_between() {
        let meter = Meter::default();
        meter.read(2);
        let before = meter.counts();
        meter.read(1);
        meter.commit(3);
        meter.query(0);
        meter.query(5);
        meter.transaction(false);
        meter.transaction(true);
        meter.publish(120);
        let d = meter.counts().since(&before);
        assert_eq!(
            d,
            Counts {
                reads: 1,
                writes: 3,
                queries: 2,
                query_docs: 5,
                empty_queries: 1,
                commits: 1,
                transactions: 1,
                retries: 1,
                publishes: 1,
                publish_bytes: 120,
                ..Counts::default()
            }
        );
        assert_eq!(
            d.billed_reads(),
            7,
            "one read by id, five returned by a query, one for the query that returned none"
        );
    }
}
