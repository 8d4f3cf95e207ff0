//! The outbox watermark: raised by every write that puts events in the outbox (and by no
//! other), it wakes a reader waiting on another thread; a wait without writes times out; a
//! nudge wakes without a write.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use zoftoken_engine::{
    Actor, Engine, EngineConfig, Event, EventKind, Mutation, ServiceConfig, WebhookConfig,
};
use zoftoken_proto::TokenId;
use zoftoken_storage::{Durability, MasterKey, MemoryKv, Store};

fn setup() -> (Arc<Store>, Engine) {
    let mut bank = ServiceConfig::new("bank", &["127.0.0.1:4500"]);
    let mut hook = WebhookConfig::new("https://hooks.example/zt", "test-secret");
    hook.events = vec!["opened".into()];
    bank.webhook = Some(hook);
    let engine = Engine::new(EngineConfig::new(vec![bank], 1, [1; 32])).unwrap();
    let store = Store::open(
        Arc::new(MemoryKv::new()),
        MasterKey::from_bytes([7; 32]),
        Durability::Wal,
    )
    .unwrap();
    (Arc::new(store), engine)
}

fn event(kind: EventKind) -> Mutation {
    Mutation::Event(Event::new(kind, TokenId([1; 16]), 0, 1_000, Actor::Device))
}

#[test]
fn a_write_with_events_raises_the_watermark_and_wakes_a_waiter() {
    let (store, engine) = setup();
    let before = store.outbox_watermark().mark();
    assert_eq!(before.high, 0, "a new database has no outbox");
    let waiter = std::thread::spawn({
        let store = store.clone();
        move || {
            let started = Instant::now();
            let after = store
                .outbox_watermark()
                .wait_after(before, Duration::from_secs(30));
            (after, started.elapsed())
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    let seq = store.commit(&[event(EventKind::Opened)], &engine).unwrap();
    let (after, waited) = waiter.join().unwrap();
    assert!(waited < Duration::from_secs(10), "woken by the write");
    assert_eq!(after.high, seq);
    assert_ne!(after, before);
    assert_eq!(store.outbox_watermark().mark(), after);
}

#[test]
fn writes_without_outbox_events_do_not_move_it_and_a_wait_times_out() {
    let (store, engine) = setup();
    let seq = store.commit(&[event(EventKind::Opened)], &engine).unwrap();
    let mark = store.outbox_watermark().mark();
    assert_eq!(mark.high, seq);
    // An event no webhook receives is not kept in the outbox: nothing to signal.
    assert_eq!(
        store.commit(&[event(EventKind::Closed)], &engine).unwrap(),
        0
    );
    assert_eq!(store.outbox_watermark().mark(), mark);
    let started = Instant::now();
    let after = store
        .outbox_watermark()
        .wait_after(mark, Duration::from_millis(50));
    assert_eq!(after, mark);
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[test]
fn a_nudge_wakes_a_waiter_without_a_write() {
    let (store, _engine) = setup();
    let mark = store.outbox_watermark().mark();
    let waiter = std::thread::spawn({
        let store = store.clone();
        move || {
            store
                .outbox_watermark()
                .wait_after(mark, Duration::from_secs(30))
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    store.outbox_watermark().nudge();
    let after = waiter.join().unwrap();
    assert_eq!(after.high, mark.high, "no write");
    assert_ne!(after, mark);
}

#[test]
fn a_reopened_store_starts_at_the_highest_outbox_sequence() {
    let kv = Arc::new(MemoryKv::new());
    let (_, engine) = setup();
    let store = Store::open(kv.clone(), MasterKey::from_bytes([7; 32]), Durability::Wal).unwrap();
    let seq = store.commit(&[event(EventKind::Opened)], &engine).unwrap();
    drop(store);
    let store = Store::open(kv, MasterKey::from_bytes([7; 32]), Durability::Wal).unwrap();
    assert_eq!(store.outbox_watermark().mark().high, seq);
}
