//! Event sequence numbers: made in order by the engine for every kind of change of a token
//! (enrollment, re-enrollment, deletion, expiry, transactions), stored with the events, and
//! never handed out again after a restart, even once the outbox that held them is empty.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::sync::Arc;

use zoftoken_engine::event::{next_sequence, raise_sequence_floor};
use zoftoken_engine::*;
use zoftoken_proto::TokenId;
use zoftoken_storage::{Cf, Durability, KvStore, MasterKey, MemoryKv, Store};

fn open(kv: &MemoryKv) -> Store {
    Store::open(
        Arc::new(kv.clone()),
        MasterKey::from_bytes([4; 32]),
        Durability::Wal,
    )
    .unwrap()
}

fn engine() -> Engine {
    let mut bank = ServiceConfig::new("bank", &["127.0.0.1:4500"]);
    bank.webhook = Some(WebhookConfig::new("https://hooks.example/zt", "s"));
    Engine::new(EngineConfig::new(vec![bank], 3, [3; 32])).unwrap()
}

fn sequences(batch: &Batch) -> Vec<(EventKind, u64)> {
    batch.events().map(|e| (e.kind, e.sequence)).collect()
}

#[test]
fn every_change_of_a_token_gets_a_higher_number() {
    let kv = MemoryKv::new();
    let store = open(&kv);
    let engine = engine();
    let now = 1_800_000_000_000;
    let mut seen = Vec::new();
    for step in 0..4 {
        let mut batch = Batch::new();
        match step {
            0 => drop(engine.enroll(now, "bank", "ana", &mut batch).unwrap()),
            1 => drop(engine.enroll(now, "bank", "ana", &mut batch).unwrap()),
            2 => engine
                .delete(now, &TokenId::derive("bank", "ana"), &mut batch)
                .unwrap(),
            _ => drop(engine.enroll_totp(now, "bank", "ana", &mut batch).unwrap()),
        }
        store.commit(&batch.mutations, &engine).unwrap();
        seen.extend(sequences(&batch));
    }
    let kinds: Vec<EventKind> = seen.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Enrolled,
            EventKind::Enrolled,
            EventKind::Deleted,
            EventKind::Enrolled
        ]
    );
    assert!(
        seen.windows(2).all(|w| w[0].1 < w[1].1),
        "strictly increasing: {seen:?}"
    );
    // The outbox holds them with their numbers.
    let stored: Vec<u64> = store
        .outbox(0, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(stored, seen.iter().map(|(_, s)| *s).collect::<Vec<_>>());
}

#[test]
fn numbers_keep_rising_across_a_restart_with_an_empty_outbox() {
    let kv = MemoryKv::new();
    let store = open(&kv);
    let engine = engine();
    // Far above anything this process handed out: as if a previous process had.
    let high = next_sequence() + (1 << 36);
    raise_sequence_floor(high);
    let mut batch = Batch::new();
    engine.enroll(1, "bank", "bob", &mut batch).unwrap();
    let made = sequences(&batch)[0].1;
    assert!(made >= high);
    store.commit(&batch.mutations, &engine).unwrap();
    // Delivered: the outbox forgets the event.
    let seq = store.outbox(0, 10).unwrap()[0].seq;
    let mut b = zoftoken_storage::WriteBatch::new();
    b.delete(Cf::Outbox, seq.to_be_bytes());
    store.kv().write(&b, Durability::Wal).unwrap();
    drop(store);
    // The floor was written with the event: opening the database puts the counter above it
    // (in a new process the counter starts at 1; here it is already high, so check the floor
    // the store keeps instead of relying on it).
    let mut floors = Vec::new();
    kv.scan(Cf::Meta, b"event_seq_floor", None, &mut |k, _| {
        if let Some(n) = k.strip_prefix(b"event_seq_floor".as_slice()) {
            floors.push(u64::from_be_bytes(n.try_into().unwrap()));
        }
        true
    })
    .unwrap();
    assert!(floors.iter().any(|f| *f > made), "{floors:?} vs {made}");
    let _store = open(&kv);
    assert!(next_sequence() > made);
}
