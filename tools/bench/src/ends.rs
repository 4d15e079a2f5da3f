//! How the bench driver hears that an order ended, so that it keeps `concurrency` orders in
//! flight: from the line the step that ended it logs ("step done", with the order's status
//! after the step), the moment it is written; and, in slow rounds, from Firestore (the
//! status only, in one batch get) for any order whose line was missed.
//!
//! The floor's driver hears of a trivial order's end the moment its last stage is done (in
//! the same process); the saga's hears of it from the terminal steps' own log lines, written
//! once their commit and their publish are done. Before, it polled the orders in flight every 20 ms:
//! on average half a round late, an eighth of a c=10 order's time, and a cost to the
//! emulator the saga is measured on. Latencies never come from this: they come from the
//! commit times in the orders' records.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use saga_contracts::events::OrderStatus;
use saga_infra::store::Store;
use tokio::sync::oneshot;

/// The orders in flight: when each was placed, and who waits for its end.
pub type Waiting = Arc<Mutex<HashMap<String, (Instant, oneshot::Sender<OrderStatus>)>>>;

/// How often the terminal steps' logs are read for orders they finished.
const TAIL_EVERY: Duration = Duration::from_millis(2);

/// How often every order in flight that may have ended is looked up, whatever the logs said
/// (a line lost, a log not written).
const ROUND_EVERY: Duration = Duration::from_millis(100);

/// How long an order's end logged before its sender waits for it is kept.
const EARLY_KEPT: Duration = Duration::from_secs(10);

/// Orders younger than this share of the typical order's time in flight are not looked up
/// in a round: they are unlikely to have ended, and every lookup is work for the emulator
/// the saga is measured on.
const ROUND_FROM: f64 = 0.6;

/// The new lines of the logs of the steps that end orders (payments, the janitor).
pub struct LogTail {
    /// Each log, and what was read of it after its last whole line.
    files: Vec<(std::fs::File, Vec<u8>)>,
}

impl LogTail {
    /// Follows `paths` from their current ends; a log that cannot be opened is left out (the
    /// rounds still find its orders).
    pub fn from_end(paths: &[PathBuf]) -> LogTail {
        use std::io::{Seek, SeekFrom};
        LogTail {
            files: paths
                .iter()
                .filter_map(|p| {
                    let mut f = std::fs::File::open(p).ok()?;
                    f.seek(SeekFrom::End(0)).ok()?;
                    Some((f, Vec::new()))
                })
                .collect(),
        }
    }

    /// The orders a step logged "step done" for since the last call, with the order's
    /// status after the step when the line says it.
    pub fn orders_done(&mut self) -> Vec<(String, Option<OrderStatus>)> {
        let mut done = Vec::new();
        for (file, partial) in &mut self.files {
            // Bytes, not text: a read may end inside a character.
            if file.read_to_end(partial).is_err() {
                continue;
            }
            let Some(end) = partial.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            done.extend(
                partial[..end]
                    .split(|b| *b == b'\n')
                    .filter_map(|line| std::str::from_utf8(line).ok())
                    .filter_map(order_done),
            );
            partial.drain(..=end);
        }
        done
    }
}

/// The order of a step's "step done" (or duplicate) log line, and its status after the step.
fn order_done(line: &str) -> Option<(String, Option<OrderStatus>)> {
    if !line.contains(r#""message":"step done""#)
        && !line.contains(r#""message":"duplicate delivery, step already done""#)
    {
        return None;
    }
    let entry: serde_json::Value = serde_json::from_str(line).ok()?;
    let id = entry["order_id"].as_str()?.to_owned();
    let status = serde_json::from_value(entry["status"].clone()).ok();
    Some((id, status))
}

/// Tells each waiting order's sender when its order ends: the orders the tail names as
/// over at once, from the status their line gives (read, if it gives none), and every order
/// in flight that may have ended each round, in one batch get of their statuses.
pub async fn follow(store: Store, waiting: Waiting, mut tail: LogTail) {
    // The typical time from placing an order to seeing it end (a moving average).
    let mut typical = Duration::ZERO;
    let mut last_round = Instant::now();
    // Whether the order was waiting (and is now told).
    let end = |id: &str, status: OrderStatus, typical: &mut Duration| -> bool {
        let Some((placed, tx)) = waiting.lock().ok().and_then(|mut w| w.remove(id)) else {
            return false;
        };
        *typical = (*typical * 7 + placed.elapsed()) / 8;
        let _ = tx.send(status);
        true
    };
    // Ends logged before their order's sender began to wait for them (its POST's answer
    // still on its way), kept a while for when it does.
    let mut early: HashMap<String, (OrderStatus, Instant)> = HashMap::new();
    loop {
        tokio::time::sleep(TAIL_EVERY).await;
        early.retain(|id, (status, seen)| {
            !end(id, *status, &mut typical) && seen.elapsed() < EARLY_KEPT
        });
        let mut ids = Vec::new();
        for (id, status) in tail.orders_done() {
            match status {
                Some(status) if status.is_terminal() => {
                    if !end(&id, status, &mut typical) {
                        early.insert(id, (status, Instant::now()));
                    }
                }
                Some(_) => {}
                None => ids.push(id),
            }
        }
        if last_round.elapsed() >= ROUND_EVERY {
            last_round = Instant::now();
            let due = typical.mul_f64(ROUND_FROM);
            if let Ok(w) = waiting.lock() {
                ids.extend(
                    w.iter()
                        .filter(|(_, (placed, _))| placed.elapsed() >= due)
                        .map(|(id, _)| id.clone()),
                );
            }
        }
        if let Ok(w) = waiting.lock() {
            ids.retain(|id| w.contains_key(id));
        }
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            continue;
        }
        let Ok(found) = store.order_statuses(&ids).await else {
            continue;
        };
        for (id, status) in found {
            if let Some(status) = status.filter(|s| s.is_terminal()) {
                end(&id, status, &mut typical);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_names_the_orders_logged_done_and_only_whole_lines() {
        let path = std::env::temp_dir().join(format!("ends-{}.log", std::process::id()));
        std::fs::write(&path, "{\"message\":\"step done\",\"order_id\":\"old\"}\n").expect("write");
        let mut tail = LogTail::from_end(std::slice::from_ref(&path));
        let append = |text: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .expect("open");
            f.write_all(text.as_bytes()).expect("append");
        };
        // Given a done line, another line, and half of a done line,
        append(concat!(
            r#"{"message":"step done","order_id":"a","step":"payments","status":"COMPLETED"}"#,
            "\n",
            r#"{"message":"event published","order_id":"b"}"#,
            "\n",
            r#"{"message":"step done","ord"#,
        ));
        // then only the whole done line is named, not what was there before,
        assert_eq!(
            tail.orders_done(),
            vec![("a".to_owned(), Some(OrderStatus::Completed))]
        );
        // and the half line once it is whole.
        append(concat!(r#"er_id":"c"}"#, "\n"));
        assert_eq!(tail.orders_done(), vec![("c".to_owned(), None)]);
        assert!(tail.orders_done().is_empty());
        // A duplicate's line names its order too, and a read that ends inside a character
        // loses nothing.
        let line = r#"{"message":"duplicate delivery, step already done","order_id":"d","status":"COMPENSATED","outcome":"café"}"#;
        let cut = line.find('é').expect("an é") + 1;
        append(&line[..cut - 1]);
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .expect("open");
            f.write_all(&line.as_bytes()[cut - 1..cut])
                .expect("half a character");
        }
        assert!(tail.orders_done().is_empty());
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .expect("open");
            f.write_all(&line.as_bytes()[cut..]).expect("the rest");
            f.write_all(b"\n").expect("newline");
        }
        assert_eq!(
            tail.orders_done(),
            vec![("d".to_owned(), Some(OrderStatus::Compensated))]
        );
        let _ = std::fs::remove_file(&path);
    }
}
