//! The documents besides the order (`crate::order`): what the steps take from and give back
//! to, and what could never be processed.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Collection names.
pub mod collections {
    /// `orders/{order_id}`: each saga's state and history (`crate::order::OrderDoc`).
    pub const ORDERS: &str = "orders";
    /// `inventory/{item}`: price and stock.
    pub const INVENTORY: &str = "inventory";
    /// `users/{user}`: balance.
    pub const USERS: &str = "users";
    /// `stock_shards/{item}--{index}`: a hot item's stock, split.
    pub const STOCK_SHARDS: &str = "stock_shards";
    /// `parked/{id}`: deliveries that can never succeed, kept for an operator.
    pub const PARKED: &str = "parked";
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemDoc {
    pub price: i64,
    /// The stock, unless the item is sharded: then the shards hold it and this is 0.
    pub stock: i64,
    /// A hot item's stock is split over this many `stock_shards` documents, so concurrent
    /// reservations do not all serialise on one document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
}

impl ItemDoc {
    pub fn new(price: i64, stock: i64) -> ItemDoc {
        ItemDoc {
            price,
            stock,
            shards: None,
        }
    }
}

/// `stock_shards/{item}--{index}`: part of a sharded item's stock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockShard {
    pub item: String,
    pub index: u32,
    pub stock: i64,
}

pub fn stock_shard_id(item: &str, index: u32) -> String {
    format!("{item}--{index}")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDoc {
    pub balance: i64,
}

/// A delivery that can never succeed, acknowledged and kept here with the reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParkedMessage {
    pub function: String,
    pub subscription: String,
    #[serde(default)]
    pub message_id: Option<String>,
    pub reason: String,
    /// The raw push body (truncated), for inspection and redrive.
    pub body: String,
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub parked_at: Timestamp,
}
