//! The seed data of the original design: a catalogue with stock, users with balances.

use saga_infra::store::{Store, StoreError};

use saga_contracts::docs::{ItemDoc, StockShard, UserDoc, collections, stock_shard_id};

/// The seeded stock of each item, and its price.
pub const WIDGET_STOCK: i64 = 10_000;
pub const WIDGET_PRICE: i64 = 10;
pub const WOTSIT_STOCK: i64 = 20_000;
pub const WOTSIT_PRICE: i64 = 15;
/// jack's and jill's seeded balance: the original design's examples many times over.
pub const BALANCE: i64 = 100_000;
/// penny's: not even one widget (a real payment failure, no fault switch).
pub const PENNY_BALANCE: i64 = 5;

/// `(item, price, stock)`.
pub const ITEMS: [(&str, i64, i64); 2] = [
    ("widget", WIDGET_PRICE, WIDGET_STOCK),
    ("wotsit", WOTSIT_PRICE, WOTSIT_STOCK),
];

/// `(user, balance)`.
pub const USERS: [(&str, i64); 3] = [
    ("jack", BALANCE),
    ("jill", BALANCE),
    ("penny", PENNY_BALANCE),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedMode {
    /// Create what is missing, leave what exists (safe to run on every start).
    IfAbsent,
    /// Put every seeded document back to its seed state.
    Reset,
}

/// Seeds the catalogue and users; returns how many documents it wrote.
pub async fn seed(store: &Store, mode: SeedMode) -> Result<usize, StoreError> {
    let mut written = 0;
    for (item, price, stock) in ITEMS {
        if mode == SeedMode::Reset
            || store
                .get::<ItemDoc>(collections::INVENTORY, item)
                .await?
                .is_none()
        {
            store
                .set(collections::INVENTORY, item, &ItemDoc::new(price, stock))
                .await?;
            written += 1;
        }
    }
    for (user, balance) in USERS {
        if mode == SeedMode::Reset
            || store
                .get::<UserDoc>(collections::USERS, user)
                .await?
                .is_none()
        {
            store
                .set(collections::USERS, user, &UserDoc { balance })
                .await?;
            written += 1;
        }
    }
    Ok(written)
}

/// Creates (or resets) `item` with `stock` split as evenly as possible over `shards` stock
/// shards: the hot-item design. `shards` of 0 or 1 keeps the stock on the item document.
pub async fn item(
    store: &Store,
    item: &str,
    price: i64,
    stock: i64,
    shards: u32,
) -> Result<(), StoreError> {
    if shards <= 1 {
        return store
            .set(collections::INVENTORY, item, &ItemDoc::new(price, stock))
            .await;
    }
    let k = i64::from(shards);
    for index in 0..shards {
        let i = i64::from(index);
        let part = stock / k + i64::from(i < stock % k);
        let shard = StockShard {
            item: item.to_owned(),
            index,
            stock: part,
        };
        store
            .set(
                collections::STOCK_SHARDS,
                &stock_shard_id(item, index),
                &shard,
            )
            .await?;
    }
    let doc = ItemDoc {
        price,
        stock: 0,
        shards: Some(shards),
    };
    store.set(collections::INVENTORY, item, &doc).await
}
