//! Restarts with a real device: everything the engine held comes back from the store — paired
//! tokens (secrets decrypted, states, counters), pending enrollments, transactions and backup
//! codes — and the device keeps working across the restart. Runs on the in-memory store; the
//! conformance suite shows RocksDB stores the same records.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::sync::Arc;

use zoftoken_device::{Reply, Request};
use zoftoken_engine::*;
use zoftoken_proto::{DropReason, ReplyStatus, TxState, WireState};
use zoftoken_storage::{Durability, MasterKey, MemoryKv, Store};
use zoftoken_testkit::{Harness, Phone, T0};

/// A server process on a database that outlives it: the test kit's harness on a store.
struct Server {
    kv: MemoryKv,
    epoch: u32,
    harness: Harness<Store>,
}

impl std::ops::Deref for Server {
    type Target = Harness<Store>;
    fn deref(&self) -> &Harness<Store> {
        &self.harness
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Harness<Store> {
        &mut self.harness
    }
}

impl Server {
    fn start(kv: MemoryKv, epoch: u32, now: u64) -> Server {
        let key = MasterKey::from_bytes([4; 32]);
        // As a server does: the PIN-tree secret from the master key, the same at every start.
        let pin_tree_secret = *key.pin_tree_secret().expose();
        let store = Store::open(Arc::new(kv.clone()), key, Durability::Wal).unwrap();
        let mut bank = ServiceConfig::new("bank", &["127.0.0.1:4500"]);
        bank.window_s = 600;
        // A webhook for every event: the outbox keeps only events a webhook receives.
        bank.webhook = Some(WebhookConfig::new(
            "https://hooks.example/zt",
            "test-secret",
        ));
        let mut config = EngineConfig::new(vec![bank], epoch, [epoch as u8; 32]);
        config.pin_tree_secret = pin_tree_secret;
        let engine = Engine::new(config).unwrap();
        store.load(&engine, now, 2, &|_| {}).unwrap();
        Server {
            kv,
            epoch,
            harness: Harness::with_sink(Arc::new(engine), store, now),
        }
    }

    fn restart(self) -> Server {
        let (kv, epoch, now) = (self.kv.clone(), self.epoch + 1, self.now);
        drop(self);
        Server::start(kv, epoch, now)
    }
}

/// A phone paired with the deeplink of an enrollment.
fn pair(s: &mut Server, deeplink: &str) -> Phone {
    Phone::pair_deeplink(&mut s.harness, deeplink, false)
}

#[test]
fn a_paired_device_keeps_working_across_restarts() {
    let mut s = Server::start(MemoryKv::new(), 1, T0);
    let ticket = s
        .admin(|e, now, b| e.enroll(now, "bank", "alice", b))
        .unwrap();
    let mut p = pair(&mut s, &ticket.deeplink);
    let pin = p.pin.clone();
    let r = s.send(&mut p, Request::Open(&pin)).unwrap();
    let recorded_open = p.last_request.clone();
    assert_eq!(r.status().state, WireState::Open);
    let id = p.token.token_id();
    let codes = s
        .admin(|e, _, b| e.generate_backup_codes(&id, 3, 8, b))
        .unwrap();
    let tx = s
        .admin(|e, now, b| e.create_transaction(now, &id, "Pay 5?", 60_000, b))
        .unwrap();

    s.now += 1_000;
    let mut s = s.restart();
    // State, secrets (the device's packets open), counters (the old OPEN is a replay).
    assert_eq!(
        s.engine.status_by_id(s.now, &id).unwrap().state,
        TokenState::Open
    );
    let r = s.send(&mut p, Request::Status).unwrap();
    assert_eq!(r.status().state, WireState::Open);
    assert_eq!(s.deliver(&recorded_open), Err(DropReason::Replayed));
    // The transaction is still waiting and can be approved.
    let r = s.send(&mut p, Request::TxFetch).unwrap();
    assert!(
        matches!(r, Reply::Transaction(_, Some(ref p)) if p.tx_id == tx),
        "{r:?}"
    );
    let r = s
        .send(
            &mut p,
            Request::TxApprove {
                tx_id: tx,
                pin: &pin,
            },
        )
        .unwrap();
    assert!(
        matches!(r, Reply::TxDecided(st, _, TxState::Approved) if st.status == ReplyStatus::Ok)
    );
    // Backup codes still verify, once.
    let ok = s
        .admin(|e, now, b| e.verify_backup_code(now, &id, &codes[0], b))
        .unwrap();
    assert!(matches!(ok, OfflineOutcome::Accepted { .. }));

    let mut s = s.restart();
    assert_eq!(
        s.engine.transaction(s.now, &tx).unwrap().state,
        TxState::Approved
    );
    let again = s
        .admin(|e, now, b| e.verify_backup_code(now, &id, &codes[0], b))
        .unwrap();
    assert!(
        matches!(again, OfflineOutcome::Rejected { .. }),
        "{again:?}"
    );
    let other = s
        .admin(|e, now, b| e.verify_backup_code(now, &id, &codes[1], b))
        .unwrap();
    assert!(matches!(other, OfflineOutcome::Accepted { .. }));
    let r = s.send(&mut p, Request::Close).unwrap();
    assert_eq!(r.status().state, WireState::Closed);

    // Deleted tokens stay deleted.
    s.admin(|e, now, b| e.delete(now, &id, b)).unwrap();
    let mut s = s.restart();
    assert!(s.engine.status_by_id(s.now, &id).is_err());
    assert_eq!(
        s.send(&mut p, Request::Status).map(|_| ()),
        Err(DropReason::UnknownToken)
    );
    let events = s.sink.outbox(0, usize::MAX).unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(
        kinds,
        [
            "enrolled",
            "paired",
            "opened",
            "transaction_approved",
            "failed_attempt", // the reused backup code
            "closed",
            "deleted"
        ]
    );
    assert_eq!(events.last().unwrap().username.as_deref(), Some("alice"));
}

#[test]
fn thousands_of_stored_transactions_of_one_token_load_in_order() {
    use zoftoken_storage::{Cf, Durability as D, KvStore, WriteBatch};
    let mut s = Server::start(MemoryKv::new(), 1, T0);
    let ticket = s
        .admin(|e, now, b| e.enroll(now, "bank", "dora", b))
        .unwrap();
    let mut p = pair(&mut s, &ticket.deeplink);
    let id = p.token.token_id();
    // As a database written before transactions were capped may hold them: thousands on
    // one token, ids in another order than creation, half of them in the earlier record
    // format (duress flag and message in clear), written by hand.
    let n: u32 = 3_000;
    let tx = |i: u32| Transaction {
        tx_id: {
            let mut t = [0u8; 16];
            t[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
            t[4..8].copy_from_slice(&i.to_be_bytes());
            t
        },
        token_id: id,
        message: format!("Pay {i} EUR?"),
        created_ms: T0 - 100_000 + u64::from(i),
        expires_ms: T0 + 600_000,
        state: if i < n - 1 {
            TxState::Denied
        } else {
            TxState::Waiting
        },
        duress: i % 7 == 0,
    };
    let all: Vec<Transaction> = (0..n).map(tx).collect();
    let mut batch = Batch::new();
    let mut old = WriteBatch::new();
    for t in &all {
        if t.created_ms % 2 == 0 {
            batch
                .mutations
                .push(Mutation::Transaction(Box::new(t.clone())));
        } else {
            let mut v = vec![1u8];
            v.extend_from_slice(&t.token_id.0);
            v.extend_from_slice(&t.created_ms.to_be_bytes());
            v.extend_from_slice(&t.expires_ms.to_be_bytes());
            v.push(t.state as u8);
            v.push(u8::from(t.duress));
            v.extend_from_slice(t.message.as_bytes());
            old.put(Cf::Transactions, t.tx_id, v);
        }
    }
    s.sink.commit(&batch.mutations, &*s.engine).unwrap();
    s.kv.write(&old, D::Wal).unwrap();
    // New records keep neither the message nor the duress flag in clear.
    let sealed = s.kv.get(Cf::Transactions, &all[0].tx_id).unwrap().unwrap();
    assert_eq!(sealed[0], 2);
    assert!(!sealed
        .windows(all[0].message.len())
        .any(|w| w == all[0].message.as_bytes()));

    let mut s = s.restart();
    for t in &all {
        assert_eq!(&s.engine.transaction(s.now, &t.tx_id).unwrap(), t);
    }
    let report = s.sink.load(
        &Engine::new(EngineConfig::new(
            vec![ServiceConfig::new("bank", &["127.0.0.1:4500"])],
            9,
            [9; 32],
        ))
        .unwrap(),
        s.now,
        2,
        &|_| {},
    );
    assert_eq!(report.unwrap().transactions, u64::from(n));
    // The only waiting one is the newest: the app is shown it.
    let r = s.send(&mut p, Request::TxFetch).unwrap();
    assert!(
        matches!(r, Reply::Transaction(_, Some(ref p)) if p.tx_id == all[n as usize - 1].tx_id),
        "{r:?}"
    );
}

#[test]
fn an_enrollment_survives_a_restart_and_pairs_after_it() {
    let mut s = Server::start(MemoryKv::new(), 1, T0);
    let ticket = s
        .admin(|e, now, b| e.enroll(now, "bank", "bob", b))
        .unwrap();
    let mut s = s.restart();
    assert_eq!(
        s.engine.status(s.now, "bank", "bob").unwrap().state,
        TokenState::Pending
    );
    let mut p = pair(&mut s, &ticket.deeplink);
    let pin = p.pin.clone();
    let r = s.send(&mut p, Request::Open(&pin)).unwrap();
    assert_eq!(r.status().state, WireState::Open);
    // Re-enrolling a paired token: after a restart, it is pending and the old app is refused.
    let ticket2 = s
        .admin(|e, now, b| e.enroll(now, "bank", "bob", b))
        .unwrap();
    let mut s = s.restart();
    assert_eq!(
        s.engine.status(s.now, "bank", "bob").unwrap().state,
        TokenState::Pending
    );
    let r = s.send(&mut p, Request::Status).unwrap();
    assert_eq!(r.status().status, ReplyStatus::NotPaired);
    let mut p2 = pair(&mut s, &ticket2.deeplink);
    let pin2 = p2.pin.clone();
    let mut s = s.restart();
    let r = s.send(&mut p2, Request::Open(&pin2)).unwrap();
    assert_eq!(r.status().state, WireState::Open);
}

#[test]
fn an_expired_enrollment_is_not_loaded() {
    let mut s = Server::start(MemoryKv::new(), 1, T0);
    let ticket = s
        .admin(|e, now, b| e.enroll(now, "bank", "carol", b))
        .unwrap();
    s.now = ticket.expires_ms + 1;
    let s = s.restart();
    assert!(s.engine.status(s.now, "bank", "carol").is_err());
}
