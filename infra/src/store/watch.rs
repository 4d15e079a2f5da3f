//! Orders as they change: one Firestore listener (the Listen API, a watch) per process, its
//! targets (queries) added and removed while it runs. Firestore pushes each order that enters
//! or changes within a target, so a reader of many orders does not poll them: one read is
//! billed per order added or changed in a target (Firestore pricing, "Listening to query
//! results"), counted on the store's meter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use firestore::gcloud_sdk::google::firestore::v1::listen_response::ResponseType;
use firestore::{
    FirestoreDb, FirestoreListenEvent, FirestoreListener, FirestoreListenerTarget,
    FirestoreMemListenStateStorage,
};
use tokio::sync::{Mutex, mpsc};

use super::{Context, Store, StoreError, collections};
use crate::meter::Meter;
use crate::order::OrderDoc;

/// One of a watch's queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target(u32);

/// An order that entered or changed in some of a watch's targets.
#[derive(Debug, Clone)]
pub struct Change {
    pub targets: Vec<Target>,
    pub order: OrderDoc,
}

type Listener = FirestoreListener<FirestoreDb, FirestoreMemListenStateStorage>;

/// A running listener; its changes arrive on the receiver [`Store::watch_orders`] returned.
pub struct Watch {
    db: FirestoreDb,
    listener: Mutex<Listener>,
    next: AtomicU32,
}

impl Store {
    /// Starts a watch of the orders, with no target yet.
    pub async fn watch_orders(
        &self,
    ) -> Result<(Arc<Watch>, mpsc::UnboundedReceiver<Change>), StoreError> {
        let what = "starting a watch of the orders";
        let mut listener: Listener = self
            .db
            .create_listener(FirestoreMemListenStateStorage::new())
            .await
            .context(what)?;
        let (sender, changes) = mpsc::unbounded_channel();
        let meter = self.meter.clone();
        listener
            .start(move |event| {
                let (sender, meter) = (sender.clone(), meter.clone());
                async move {
                    deliver(event, &sender, &meter);
                    Ok(())
                }
            })
            .await
            .context(what)?;
        let watch = Watch {
            db: self.db.clone(),
            listener: Mutex::new(listener),
            next: AtomicU32::new(1),
        };
        Ok((Arc::new(watch), changes))
    }
}

fn deliver(event: FirestoreListenEvent, sender: &mpsc::UnboundedSender<Change>, meter: &Meter) {
    let ResponseType::DocumentChange(change) = event else {
        return;
    };
    let Some(document) = change.document else {
        return;
    };
    meter.read(1);
    match FirestoreDb::deserialize_doc_to::<OrderDoc>(&document) {
        Ok(order) => {
            let targets = change
                .target_ids
                .iter()
                .filter_map(|id| u32::try_from(*id).ok().map(Target))
                .collect();
            // The receiver gone means nobody watches any more.
            let _ = sender.send(Change { targets, order });
        }
        Err(error) => tracing::warn!(%error, name = %document.name, "watched order not decoded"),
    }
}

impl Watch {
    fn target(&self) -> Target {
        Target(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// The `limit` orders changed last, anyone's (the page's live list with sign-in off).
    pub async fn recent(&self, limit: u32) -> Result<Target, StoreError> {
        let target = self.target();
        let mut listener = self.listener.lock().await;
        self.db
            .fluent()
            .select()
            .from(collections::ORDERS)
            .order(|o| o.fields([o.field("updated_at").desc()]))
            .limit(limit)
            .listen()
            .add_target(FirestoreListenerTarget::new(target.0), &mut listener)
            .context("watching the recent orders")?;
        Ok(target)
    }

    /// The `limit` orders of `user` changed last (a signed-in user's live list). Firestore
    /// needs a composite index on (user, updated_at) for this (terraform/main.tf).
    pub async fn of_user(&self, user: &str, limit: u32) -> Result<Target, StoreError> {
        let target = self.target();
        let user = user.to_owned();
        let mut listener = self.listener.lock().await;
        self.db
            .fluent()
            .select()
            .from(collections::ORDERS)
            .filter(|q| q.for_all([q.field("user").eq(user.clone())]))
            .order(|o| o.fields([o.field("updated_at").desc()]))
            .limit(limit)
            .listen()
            .add_target(FirestoreListenerTarget::new(target.0), &mut listener)
            .context(format!("watching the orders of {user}"))?;
        Ok(target)
    }

    /// Stops listening to `target`.
    pub async fn remove(&self, target: Target) -> Result<(), StoreError> {
        let listener = self.listener.lock().await;
        listener
            .remove_target(&FirestoreListenerTarget::new(target.0))
            .await
            .context("removing a watch target")
            .map(drop)
    }
}
