//! The live list of recent orders that open pages show: one poller per process, shared by
//! every page. A page that opens adds a subscriber, not a query: on the emulator each query
//! scans the whole project, so a query per page per refresh grew with every open tab.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// The latest rendering of the recent orders (JSON), and whether a poller is running.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

struct Inner {
    latest: watch::Sender<Arc<str>>,
    polling: AtomicBool,
    every: Duration,
}

impl Live {
    /// Polls every `every` while any page is subscribed.
    pub fn new(every: Duration) -> Live {
        Live {
            inner: Arc::new(Inner {
                latest: watch::Sender::new(Arc::from("")),
                polling: AtomicBool::new(false),
                every,
            }),
        }
    }

    /// Subscribes a page. The first subscriber starts the poller, which calls `fetch` every
    /// interval until no page is left; `fetch` gives the rendering, or `None` when it could
    /// not (the page keeps what it has).
    pub fn subscribe<F, Fut>(&self, fetch: F) -> watch::Receiver<Arc<str>>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        let page = self.inner.latest.subscribe();
        if !self.inner.polling.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().poll(fetch));
        }
        page
    }

    async fn poll<F, Fut>(self, fetch: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        let inner = &self.inner;
        loop {
            if inner.latest.receiver_count() == 0 {
                inner.polling.store(false, Ordering::SeqCst);
                // A page may have subscribed between the count and the store, and seen a
                // poller still running: keep polling for it, unless it started its own.
                if inner.latest.receiver_count() == 0 || inner.polling.swap(true, Ordering::SeqCst)
                {
                    return;
                }
            }
            if let Some(rendering) = fetch().await {
                inner.latest.send_if_modified(|latest| {
                    let changed = **latest != *rendering;
                    if changed {
                        *latest = Arc::from(rendering);
                    }
                    changed
                });
            }
            tokio::time::sleep(inner.every).await;
        }
    }
}

/// What a page receives: each new rendering once, starting with the current one.
pub async fn next(page: &mut watch::Receiver<Arc<str>>, first: bool) -> Option<Arc<str>> {
    if first && !page.borrow().is_empty() {
        return Some(page.borrow_and_update().clone());
    }
    loop {
        page.changed().await.ok()?;
        let rendering = page.borrow_and_update().clone();
        if !rendering.is_empty() {
            return Some(rendering);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    const EVERY: Duration = Duration::from_millis(500);

    fn counting(
        fetches: &Arc<AtomicUsize>,
    ) -> impl Fn() -> std::future::Ready<Option<String>> + use<> {
        let fetches = fetches.clone();
        move || {
            let n = fetches.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Some(format!("[{}]", n / 3)))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pages_open_at_once_share_one_query_per_interval() {
        let live = Live::new(EVERY);
        let fetches = Arc::new(AtomicUsize::new(0));
        let pages: Vec<_> = (0..5).map(|_| live.subscribe(counting(&fetches))).collect();
        tokio::time::sleep(EVERY * 10 + EVERY / 2).await;
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            11,
            "one fetch per interval, not per page"
        );
        drop(pages);
    }

    #[tokio::test(start_paused = true)]
    async fn every_page_sees_the_current_rendering_then_each_change() {
        let live = Live::new(EVERY);
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut first = live.subscribe(counting(&fetches));
        assert_eq!(next(&mut first, true).await.as_deref(), Some("[0]"));
        let mut second = live.subscribe(counting(&fetches));
        assert_eq!(next(&mut second, true).await.as_deref(), Some("[0]"));
        // The rendering changes every third fetch; unchanged ones are not sent again.
        assert_eq!(next(&mut first, false).await.as_deref(), Some("[1]"));
        assert_eq!(next(&mut second, false).await.as_deref(), Some("[1]"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_poller_stops_when_the_last_page_closes_and_starts_again_for_the_next() {
        let live = Live::new(EVERY);
        let fetches = Arc::new(AtomicUsize::new(0));
        let page = live.subscribe(counting(&fetches));
        tokio::time::sleep(EVERY * 2).await;
        drop(page);
        tokio::time::sleep(EVERY * 2).await;
        let stopped_at = fetches.load(Ordering::SeqCst);
        tokio::time::sleep(EVERY * 10).await;
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            stopped_at,
            "no page, no query"
        );

        let mut page = live.subscribe(counting(&fetches));
        assert!(next(&mut page, true).await.is_some());
        tokio::time::sleep(EVERY * 2).await;
        assert!(fetches.load(Ordering::SeqCst) > stopped_at, "polling again");
    }
}
