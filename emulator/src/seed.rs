//! The seed data of the original design: a catalogue with stock, users with balances.

use saga_infra::store::{ItemDoc, Store, StoreError, UserDoc, collections};

/// `(item, price, stock)`.
pub const ITEMS: [(&str, i64, i64); 2] = [("widget", 10, 10_000), ("wotsit", 15, 20_000)];

/// `(user, balance)`: jack and jill can afford the original design's examples many times
/// over; penny cannot afford even one widget (a real payment failure, no fault switch).
pub const USERS: [(&str, i64); 3] = [("jack", 100_000), ("jill", 100_000), ("penny", 5)];

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
                .set(collections::INVENTORY, item, &ItemDoc { price, stock })
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
