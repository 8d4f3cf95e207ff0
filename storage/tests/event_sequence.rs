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
    let now = zoftoken_testkit::T0;
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
        seen.extend(sequences(&batch));
        store.commit_batch(&engine, now, &mut batch).unwrap();
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

/// The floor records in `meta`.
fn floors(kv: &MemoryKv) -> Vec<u64> {
    let mut out = Vec::new();
    kv.scan(Cf::Meta, b"event_seq_floor", None, &mut |k, _| {
        if let Some(n) = k.strip_prefix(b"event_seq_floor".as_slice()) {
            out.push(u64::from_be_bytes(n.try_into().unwrap()));
        }
        true
    })
    .unwrap();
    out
}

fn enroll(store: &Store, engine: &Engine, user: &str) -> u64 {
    let mut batch = Batch::new();
    engine.enroll(1, "bank", user, &mut batch).unwrap();
    store.commit(&batch.mutations, engine).unwrap();
    sequences(&batch)[0].1
}

#[test]
fn the_durable_floor_covers_every_stored_number_and_survives_an_empty_outbox() {
    // (A new process starts its counter at 1 and only this floor puts it above the numbers
    // handed out before: the command-line tests run that across processes.)
    let kv = MemoryKv::new();
    let store = open(&kv);
    let engine = engine();
    let first = enroll(&store, &engine, "ana");
    let f = floors(&kv);
    assert_eq!(f.len(), 1, "the first numbered commit writes a floor");
    assert!(f[0] > first);
    // Below the floor: no new record.
    let second = enroll(&store, &engine, "bob");
    assert!(second < f[0]);
    assert_eq!(floors(&kv), f);
    // At or above it (as after many events): a higher record, in the same write.
    raise_sequence_floor(f[0]);
    let third = enroll(&store, &engine, "cyd");
    let f2 = floors(&kv);
    assert_eq!(f2.len(), 2);
    assert!(f2.iter().all(|x| *x > first) && f2.iter().any(|x| *x > third));
    // Delivered: the outbox forgets the events, the floor stays.
    for e in store.outbox(0, 10).unwrap() {
        let mut b = zoftoken_storage::WriteBatch::new();
        b.delete(Cf::Outbox, e.seq.to_be_bytes());
        store.kv().write(&b, Durability::Wal).unwrap();
    }
    assert!(store.outbox(0, 10).unwrap().is_empty());
    drop(store);
    // Opening keeps the highest floor only, and the counter is above it.
    let _store = open(&kv);
    let f3 = floors(&kv);
    assert_eq!(f3, vec![*f2.iter().max().unwrap()]);
    assert!(next_sequence(&TokenId::derive("bank", "dee")) >= f3[0]);
}
