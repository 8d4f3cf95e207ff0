//! A store several servers write (each case passes on a store no other process writes): what
//! two servers' engines, each with its own memory of the database, may both decide.

use zoftoken_engine::{Batch, Engine, EngineConfig, EventKind};
use zoftoken_proto::TxState;
use zoftoken_storage::{Durability, KvError, Store, StoreError};

use crate::fixtures::{key, service, token, write_tokens};
use crate::Harness;

fn shared_engine() -> Engine {
    let mut config = EngineConfig::new(vec![service()], 7, [3; 32]);
    config.shared_database = true;
    Engine::new(config).unwrap()
}

/// Both servers' timers find a transaction expired: the second write, made from a view of
/// the token older than the first, is refused whole (a compare-and-set of the token's
/// state), so the transaction's `tx_expired` event is in the outbox once, and the refused
/// server reads the transaction back as expired, with nothing left to write later.
pub fn store_shared_timers_expire_a_transaction_once(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    if !kv.is_shared() {
        return;
    }
    let (a, b) = (
        Store::open(kv.clone(), key(1), Durability::Wal).unwrap(),
        Store::open(kv, key(1), Durability::Wal).unwrap(),
    );
    let (ea, eb) = (shared_engine(), shared_engine());
    write_tokens(&a, &ea, 1..2);
    let id = token(1, 1).token_id();
    let now = 1_000_000;
    a.load(&ea, now, 1, &|_| {}).unwrap();
    let mut batch = Batch::new();
    let tx = ea
        .create_transaction(now, &id, "pay 10 EUR", 1_000, &mut batch)
        .unwrap();
    a.commit_batch(&ea, now, &mut batch).unwrap();
    b.load(&eb, now, 1, &|_| {}).unwrap();
    assert_eq!(eb.transaction(now, &tx).unwrap().state, TxState::Waiting);

    let later = now + 2_000;
    let mut batch = Batch::new();
    ea.tick(later, &mut batch);
    a.commit_timers(&ea, later, &mut batch).unwrap();
    let mut batch = Batch::new();
    eb.tick(later, &mut batch);
    let second = b.commit_timers(&eb, later, &mut batch);
    assert!(
        matches!(second, Err(StoreError::Kv(KvError::Conflict(_)))),
        "{second:?}"
    );
    assert_eq!(eb.transaction(later, &tx).unwrap().state, TxState::Expired);
    // What the refused tick kept is written with the next one: no second expiry in it.
    b.commit_timers(&eb, later + 1_000, &mut batch).unwrap();
    let mut batch = Batch::new();
    eb.tick(later + 1_000, &mut batch);
    b.commit_timers(&eb, later + 1_000, &mut batch).unwrap();
    let expired = a
        .outbox(0, 100)
        .unwrap()
        .iter()
        .filter(|e| e.kind == EventKind::TxExpired)
        .count();
    assert_eq!(expired, 1);
}
