//! The group commit ([`Committer`]) over a store whose writes fail on demand: answers in
//! submission order, everything written (events in the outbox, the outbox watermark raised,
//! events counted once), a failed write reported and publishing nothing, the engine's memory
//! left as the store holds it, and a clean shutdown.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use zoftoken_engine::{Batch, Engine, EngineConfig, EventKind, Mutation, ServiceConfig};
use zoftoken_storage::{
    Cf, CommitError, Committer, CommitterConfig, Durability, KvError, KvStore, MasterKey, MemoryKv,
    Store, StoreError, Submitter,
};
use zoftoken_storage_conformance::FaultyKv;

/// A committer with the store it writes (to look at its health).
struct Rig {
    committer: Committer,
    store: Arc<Store>,
}

impl std::ops::Deref for Rig {
    type Target = Committer;
    fn deref(&self) -> &Committer {
        &self.committer
    }
}

impl Rig {
    fn shutdown(self) {
        self.committer.shutdown();
    }
}

/// A store on a [`FaultyKv`] (writes fail on demand), an engine with one service, and
/// their committer.
fn start(queue: usize, writer_thread: bool) -> (Rig, Arc<Engine>, Arc<FaultyKv>) {
    let kv = Arc::new(FaultyKv::new(Arc::new(MemoryKv::new())));
    let store = Store::open(kv.clone(), MasterKey::from_bytes([7; 32]), Durability::Wal).unwrap();
    let mut demo = ServiceConfig::new("demo", &["127.0.0.1:4500"]);
    // A webhook for every event: the outbox keeps only events a webhook receives.
    demo.webhook = Some(zoftoken_engine::WebhookConfig::new(
        "https://hooks.example/zt",
        "test-secret",
    ));
    let engine = Arc::new(Engine::new(EngineConfig::new(vec![demo], 1, [1; 32])).unwrap());
    let config = CommitterConfig {
        queue,
        writer_thread,
        ..CommitterConfig::new(Durability::Wal, 1)
    };
    let store = Arc::new(store);
    let committer = Committer::start(store.clone(), engine.clone(), config).unwrap();
    (Rig { committer, store }, engine, kv)
}

fn count(kv: &FaultyKv, cf: Cf) -> usize {
    let mut n = 0;
    kv.scan(cf, &[], None, &mut |_, _| {
        n += 1;
        true
    })
    .unwrap();
    n
}

/// Events in the outbox.
fn outbox_events(store: &Store) -> usize {
    store.outbox(0, usize::MAX).unwrap().len()
}

fn enroll(engine: &Engine, user: &str) -> Batch {
    let mut batch = Batch::new();
    let r = engine.enroll(1_000, "demo", user, &mut batch);
    assert!(r.is_ok(), "enroll {user}: {:?}", r.err());
    batch
}

#[test]
fn answers_in_order_and_writes_everything() {
    for writer_thread in [true, false] {
        let (committer, engine, kv) = start(4, writer_thread);
        let watermark = committer.store.outbox_watermark().mark();
        let mut a = committer.submitter();
        let mut b = committer.submitter();
        for i in 0..40 {
            let batch = enroll(&engine, &format!("user{i}"));
            let s = if i % 2 == 0 { &mut a } else { &mut b };
            assert!(s.submit(batch).is_ok());
        }
        assert_eq!(a.in_flight() + b.in_flight(), 40);
        for s in [&mut a, &mut b] {
            let mut answers = 0;
            while let Some(done) = s.wait_done() {
                assert!(done.result.is_ok());
                assert!(done.batch.is_empty(), "the batch comes back emptied");
                answers += 1;
            }
            assert_eq!(answers, 20);
            assert!(s.try_done().is_none());
        }
        // Every enrollment is durable, its event in the outbox (the same write) and counted
        // once; the outbox watermark rose to the last commit.
        assert_eq!(count(&kv, Cf::Enrollments), 40);
        assert_eq!(outbox_events(&committer.store), 40);
        assert_eq!(engine.committed_events(EventKind::Enrolled), 40);
        let last = committer.store.last_outbox_seq().unwrap().unwrap();
        let now = committer.store.outbox_watermark().mark();
        assert_eq!(now.high, last);
        assert!(now.high > watermark.high);
        let stats = committer.stats();
        assert_eq!(stats.batches.load(Ordering::Relaxed), 40);
        let writes = stats.writes.load(Ordering::Relaxed);
        assert!((1..=40).contains(&writes), "{writes} writes");
        if !writer_thread {
            assert_eq!(writes, 40, "inline: one write per batch");
        }
    }
}

#[test]
fn a_failed_write_is_reported_and_publishes_nothing() {
    for writer_thread in [true, false] {
        let (committer, engine, kv) = start(4, writer_thread);
        let watermark = committer.store.outbox_watermark().mark();
        let mut s = committer.submitter();
        kv.set_failing(true);
        assert!(s.submit(enroll(&engine, "lost")).is_ok());
        let done = s.wait_done().unwrap();
        assert!(
            matches!(&done.result, Err(CommitError::Write(e)) if matches!(**e, StoreError::Kv(KvError::Io(_)))),
            "{:?}",
            done.result
        );
        assert!(done.batch.is_empty());
        assert_eq!(
            outbox_events(&committer.store),
            0,
            "no event for an unwritten batch"
        );
        assert_eq!(engine.committed_events(EventKind::Enrolled), 0);
        assert_eq!(
            committer.store.outbox_watermark().mark(),
            watermark,
            "no signal for an unwritten batch"
        );
        assert_eq!(committer.stats().failed_writes.load(Ordering::Relaxed), 1);
        // The disk recovers: the next batch is written.
        kv.set_failing(false);
        assert!(s.submit(enroll(&engine, "kept")).is_ok());
        assert!(s.wait_done().unwrap().result.is_ok());
        assert_eq!(count(&kv, Cf::Enrollments), 1);
        assert_eq!(outbox_events(&committer.store), 1);
        assert_eq!(engine.committed_events(EventKind::Enrolled), 1);
        assert!(committer.store.outbox_watermark().mark().high > watermark.high);
    }
}

/// A paired token, alice of `demo`, written (closed).
fn durable_alice(engine: &Engine, s: &mut Submitter) -> zoftoken_proto::TokenId {
    let id = zoftoken_proto::TokenId::derive("demo", "alice");
    let record = zoftoken_engine::TokenRecord {
        kind: zoftoken_engine::TokenKind::App,
        service: 0,
        secret: zoftoken_proto::SecretBytes::new([3; 32]),
        pin_verifier: zoftoken_proto::SecretBytes::new([4; 32]),
        duress_verifier: None,
        status: zoftoken_engine::TokenStateRecord::new(id),
    };
    engine.load_token(&record).unwrap();
    let mut batch = Batch::new();
    batch.mutations.push(Mutation::Token(Box::new(record)));
    assert!(s.submit(batch).is_ok());
    assert!(s.wait_done().unwrap().result.is_ok());
    id
}

#[test]
fn a_failed_write_leaves_memory_as_the_store_holds_it() {
    use zoftoken_engine::{Force, TokenState};
    for writer_thread in [true, false] {
        let (committer, engine, kv) = start(4, writer_thread);
        let mut s = committer.submitter();
        let id = durable_alice(&engine, &mut s);
        // An enrollment and a block that cannot be written.
        kv.set_failing(true);
        assert!(s.submit(enroll(&engine, "bob")).is_ok());
        let mut block = Batch::new();
        engine
            .force(1_000, &id, Force::Blocked, &mut block)
            .unwrap();
        assert!(s.submit(block).is_ok());
        for _ in 0..2 {
            assert!(s.wait_done().unwrap().result.is_err());
        }
        // Nothing of either is visible: alice is closed as stored, bob does not exist,
        // no event was published, and nothing waits for a restore.
        let st = engine.status(1_000, "demo", "alice").unwrap();
        assert_eq!((st.state, st.failures), (TokenState::Closed, 0));
        assert_eq!(
            engine.status(1_000, "demo", "bob").err(),
            Some(zoftoken_engine::EngineError::UnknownToken)
        );
        assert_eq!(outbox_events(&committer.store), 0);
        for kind in [EventKind::Enrolled, EventKind::Blocked] {
            assert_eq!(engine.committed_events(kind), 0);
        }
        assert_eq!(engine.unsettled_count(), 0);
        assert!(!committer.store.health().writable());
        // The disk recovers: the same change is written and seen.
        kv.set_failing(false);
        let mut block = Batch::new();
        engine
            .force(2_000, &id, Force::Blocked, &mut block)
            .unwrap();
        assert!(s.submit(block).is_ok());
        assert!(s.wait_done().unwrap().result.is_ok());
        assert!(committer.store.health().writable());
        assert_eq!(
            engine.status(2_000, "demo", "alice").unwrap().state,
            TokenState::Blocked
        );
    }
}

#[test]
fn a_conflicting_write_restores_the_token_and_keeps_the_server_ready() {
    use zoftoken_engine::{Force, TokenState};
    for writer_thread in [true, false] {
        let (committer, engine, kv) = start(4, writer_thread);
        let mut s = committer.submitter();
        let id = durable_alice(&engine, &mut s);
        // Another server of a shared database changed alice first: this block is refused.
        kv.set_conflicting(true);
        let mut block = Batch::new();
        engine
            .force(1_000, &id, Force::Blocked, &mut block)
            .unwrap();
        assert!(s.submit(block).is_ok());
        let done = s.wait_done().unwrap();
        assert!(
            matches!(&done.result, Err(CommitError::Write(e)) if matches!(**e, StoreError::Kv(KvError::Conflict(_)))),
            "{:?}",
            done.result
        );
        // Nothing of it is visible, alice is what the database holds, and the database is
        // not reported as failing: a conflict is not an outage.
        assert_eq!(
            engine.status(1_000, "demo", "alice").unwrap().state,
            TokenState::Closed
        );
        assert_eq!(engine.committed_events(EventKind::Blocked), 0);
        assert_eq!(outbox_events(&committer.store), 0);
        assert_eq!(engine.unsettled_count(), 0);
        let health = committer.store.health();
        assert!(health.writable());
        assert_eq!((health.conflicts(), health.failed_commits()), (1, 1));
        kv.set_conflicting(false);
        let mut block = Batch::new();
        engine
            .force(2_000, &id, Force::Blocked, &mut block)
            .unwrap();
        assert!(s.submit(block).is_ok());
        assert!(s.wait_done().unwrap().result.is_ok());
        assert_eq!(
            engine.status(2_000, "demo", "alice").unwrap().state,
            TokenState::Blocked
        );
    }
}

#[test]
fn shutdown_writes_the_queue_then_refuses() {
    for writer_thread in [true, false] {
        let (committer, engine, kv) = start(64, writer_thread);
        let mut s = committer.submitter();
        for i in 0..10 {
            assert!(s.submit(enroll(&engine, &format!("u{i}"))).is_ok());
        }
        committer.shutdown();
        assert_eq!(count(&kv, Cf::Enrollments), 10);
        let mut ok = 0;
        while let Some(done) = s.wait_done() {
            ok += usize::from(done.result.is_ok());
        }
        assert_eq!(ok, 10);
        let refused = s.submit(enroll(&engine, "late"));
        assert!(matches!(refused, Err((_, CommitError::Stopped))));
    }
}
