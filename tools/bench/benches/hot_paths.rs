//! Micro-benchmarks of the code every delivery runs: decoding a push, encoding an event into
//! the record its step commits, validating an order, and the steps' pure decisions.
//! `cargo bench --bench hot_paths`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use saga_contracts::docs::{ItemDoc, UserDoc};
use saga_contracts::events::{Event, EventBody, OrderDetails, OrderStatus, wire};
use saga_contracts::order::{Emitted, Reservation, ReservationStatus};
use saga_contracts::trace::TraceContext;
use saga_infra::testing::order_at;
use uuid::Uuid;

fn details() -> OrderDetails {
    OrderDetails {
        item: "widget".into(),
        quantity: 5,
        user: "jack".into(),
        payment_error: false,
    }
}

fn hot_paths(c: &mut Criterion) {
    let event = Event::new(Uuid::new_v4(), EventBody::OrderCreated { order: details() });
    let body = saga_infra::push::encode("projects/p/subscriptions/order-created-sub", "1", &event)
        .to_string()
        .into_bytes();
    c.bench_function("push envelope decode", |b| {
        b.iter(|| saga_infra::push::decode(black_box(&body), wire::CURRENT))
    });

    let trace = TraceContext::root();
    c.bench_function("event encode to its emitted record", |b| {
        b.iter(|| Emitted::of(black_box(&event), wire::CURRENT, &trace))
    });
    let traceparent = trace.to_string();
    c.bench_function("traceparent continue", |b| {
        b.iter(|| TraceContext::continue_from(Some(black_box(&traceparent))))
    });

    let request = br#"{"item":"widget","quantity":5,"user":"jack"}"#;
    c.bench_function("order request validate", |b| {
        b.iter(|| saga_frontend::validate::order(black_box(request), false))
    });

    let created = order_at(OrderStatus::OrderCreated, 5);
    let item = ItemDoc::new(10, 10_000);
    c.bench_function("inventory decide", |b| {
        b.iter(|| saga_inventory::decide(Some(black_box(created.clone())), Some(item.clone()), 5))
    });
    let visited = [(3, 0), (0, 2), (1, 9)];
    c.bench_function("inventory plan shards", |b| {
        b.iter(|| saga_inventory::plan_shards(black_box(&visited), 5))
    });

    let reserved = order_at(OrderStatus::InventoryReserved, 5);
    let user = UserDoc { balance: 100_000 };
    c.bench_function("payments decide", |b| {
        b.iter(|| {
            saga_payments::decide(
                Some(black_box(reserved.clone())),
                Some(user.clone()),
                50,
                false,
            )
        })
    });

    let mut failed = order_at(OrderStatus::Failed, 5);
    failed.reservation = Some(Reservation {
        quantity: 5,
        allocations: Vec::new(),
        status: ReservationStatus::Reserved,
    });
    c.bench_function("janitor plan", |b| {
        b.iter(|| saga_janitor::plan(black_box(&failed)))
    });
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
