//! The live lists of recent orders that open pages show, fed by one Firestore listener per
//! process (a watch, [`saga_infra::store::Watch`]), not by polling: Firestore pushes each
//! order that changes in a list, and each open page gets the new rendering.
//!
//! A list is a watch target: a user's own orders (sign-in on), or everyone's (sign-in off).
//! Every page of one list shares its target; the target is added when the list's first page
//! opens and removed when its last one closes. Reads: one per order that enters or changes in
//! a list, whatever the number of pages; nothing while nothing changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use saga_contracts::order::OrderDoc;
use saga_infra::store::{Change, Store, StoreError, Target, Watch};
use tokio::sync::watch;

/// Which list.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum List {
    Everyone,
    User(String),
}

/// Turns a list's orders, newest change first, into what a page receives.
pub type Render = fn(&[OrderDoc]) -> String;

/// The process's live lists; cheap to clone.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// How many orders a list shows.
    limit: u32,
    render: Render,
    state: Mutex<State>,
    /// One start of the watch at a time.
    starting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    watch: Option<Arc<Watch>>,
    lists: HashMap<List, Feed>,
}

struct Feed {
    target: Target,
    pages: usize,
    orders: Vec<OrderDoc>,
    latest: watch::Sender<Arc<str>>,
}

/// An open page's view of its list; closing it (dropping) lets the list go when it was the
/// last.
pub struct Page {
    pub updates: watch::Receiver<Arc<str>>,
    live: Live,
    list: List,
}

impl Live {
    pub fn new(store: Store, limit: u32, render: Render) -> Live {
        Live {
            inner: Arc::new(Inner {
                store,
                limit,
                render,
                state: Mutex::new(State::default()),
                starting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a page on `list`.
    pub async fn open(&self, list: List) -> Result<Page, StoreError> {
        if let Some(feed) = self.state().lists.get_mut(&list) {
            feed.pages += 1;
            return Ok(self.page(list, feed.latest.subscribe()));
        }
        let watch = self.watch().await?;
        let target = match &list {
            List::Everyone => watch.recent(self.inner.limit).await?,
            List::User(user) => watch.of_user(user, self.inner.limit).await?,
        };
        let mut state = self.state();
        // Another page of the same list may have added it meanwhile: keep the first target.
        if let Some(feed) = state.lists.get_mut(&list) {
            feed.pages += 1;
            let updates = feed.latest.subscribe();
            drop(state);
            tokio::spawn(async move { watch.remove(target).await });
            return Ok(self.page(list, updates));
        }
        let (latest, updates) = watch::channel(Arc::from((self.inner.render)(&[])));
        state.lists.insert(
            list.clone(),
            Feed {
                target,
                pages: 1,
                orders: Vec::new(),
                latest,
            },
        );
        Ok(self.page(list, updates))
    }

    fn page(&self, list: List, updates: watch::Receiver<Arc<str>>) -> Page {
        Page {
            updates,
            live: self.clone(),
            list,
        }
    }

    /// The process's watch, started by the first page.
    async fn watch(&self) -> Result<Arc<Watch>, StoreError> {
        if let Some(watch) = &self.state().watch {
            return Ok(watch.clone());
        }
        let _one = self.inner.starting.lock().await;
        if let Some(watch) = &self.state().watch {
            return Ok(watch.clone());
        }
        let (watch, changes) = self.inner.store.watch_orders().await?;
        self.state().watch = Some(watch.clone());
        tokio::spawn(self.clone().dispatch(changes));
        Ok(watch)
    }

    /// Applies each change to the lists it is in, and sends the lists that changed.
    async fn dispatch(self, mut changes: tokio::sync::mpsc::UnboundedReceiver<Change>) {
        while let Some(change) = changes.recv().await {
            let mut state = self.state();
            for feed in state
                .lists
                .values_mut()
                .filter(|f| change.targets.contains(&f.target))
            {
                feed.orders.retain(|o| o.order_id != change.order.order_id);
                feed.orders.push(change.order.clone());
                feed.orders.sort_by_key(|o| std::cmp::Reverse(o.updated_at));
                feed.orders.truncate(self.inner.limit as usize);
                let rendering: Arc<str> = Arc::from((self.inner.render)(&feed.orders));
                feed.latest.send_if_modified(|latest| {
                    let changed = **latest != *rendering;
                    if changed {
                        *latest = rendering.clone();
                    }
                    changed
                });
            }
        }
    }

    fn close(&self, list: &List) {
        let mut state = self.state();
        let Some(feed) = state.lists.get_mut(list) else {
            return;
        };
        feed.pages -= 1;
        if feed.pages > 0 {
            return;
        }
        let target = feed.target;
        state.lists.remove(list);
        if let Some(watch) = state.watch.clone() {
            tokio::spawn(async move {
                if let Err(error) = watch.remove(target).await {
                    tracing::warn!(%error, "live list not removed from the watch");
                }
            });
        }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        self.live.close(&self.list);
    }
}

impl Page {
    /// The next rendering to send: the current one first (if any yet), then each change.
    pub async fn next(&mut self, first: bool) -> Option<Arc<str>> {
        if first && !self.updates.borrow().is_empty() {
            return Some(self.updates.borrow_and_update().clone());
        }
        loop {
            self.updates.changed().await.ok()?;
            let rendering = self.updates.borrow_and_update().clone();
            if !rendering.is_empty() {
                return Some(rendering);
            }
        }
    }
}
