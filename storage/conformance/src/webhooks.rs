//! Webhook delivery records on a key-value implementation: progress across a crash, finished
//! commits, dead letters, replays and disabled endpoints.

use zoftoken_engine::{Actor, Event, EventKind, Mutation};
use zoftoken_proto::TokenId;
use zoftoken_storage::webhooks::{set_bit, DeadLetterRecord, DeliveryWrite, DisabledEndpoint};
use zoftoken_storage::{Durability, Store};

use crate::fixtures::{engine, key};
use crate::Harness;

/// Webhook delivery state: per-event progress survives a crash, finished commits leave the
/// outbox without their sequence numbers being reused, dead letters are kept, replayed and
/// deleted, disabled endpoints are listed and re-enabled by a replay.
pub fn store_tracks_webhook_deliveries(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let store = Store::open(kv.clone(), key(1), Durability::Wal).unwrap();
    let e = engine();
    let ev = |n: u8, t: u64| {
        Mutation::Event(Event::new(
            EventKind::Opened,
            TokenId([n; 16]),
            0,
            t,
            Actor::Device,
        ))
    };
    let s1 = store
        .commit(&[ev(1, 10), ev(2, 11), ev(3, 12)], &e)
        .unwrap();
    let s2 = store.commit(&[ev(4, 13)], &e).unwrap();
    let (pending, last) = store.pending_commits(0, 100, &mut |_| false).unwrap();
    assert_eq!(last, Some(s2));
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].events.len(), 3);
    assert_eq!(pending[0].total, 3);
    // Skipped commits are not decoded but still visited.
    let (only2, last) = store.pending_commits(0, 100, &mut |s| s == s1).unwrap();
    assert_eq!((only2.len(), only2[0].seq, last), (1, s2, Some(s2)));

    // Events 0 and 2 of the first commit are done, one dead-lettered; the second is finished.
    let mut bits = Vec::new();
    set_bit(&mut bits, 0);
    set_bit(&mut bits, 2);
    let mut w = DeliveryWrite::new();
    w.progress(s1, &bits);
    w.finished(s2);
    let mut dead_event = pending[0].events[2].clone();
    dead_event.username = Some("carol".into());
    w.dead_letter(&DeadLetterRecord {
        event: dead_event.clone(),
        attempts: 8,
        last_status: Some(500),
        last_error: "HTTP 500".into(),
        dead_at_ms: 99,
    });
    w.disable(&DisabledEndpoint {
        service: "bank".into(),
        url: "https://hooks.example/x".into(),
        status: 410,
        at_ms: 98,
        fingerprint: [7; 32],
    });
    store.write_deliveries(w).unwrap();
    drop(store);
    h.crash(kv);

    let kv = h.open().unwrap();
    let store = Store::open(kv, key(1), Durability::Wal).unwrap();
    let (pending, _) = store.pending_commits(0, 100, &mut |_| false).unwrap();
    assert_eq!(pending.len(), 1, "the finished commit left the outbox");
    assert_eq!(pending[0].seq, s1);
    assert_eq!(pending[0].events.len(), 1);
    assert_eq!(pending[0].events[0].index, 1);
    assert_eq!(store.pending_commit(s2).unwrap(), None);
    assert_eq!(store.pending_commit(s1).unwrap().unwrap().events.len(), 1);
    assert_eq!(store.outbox_seqs(0, u64::MAX).unwrap(), vec![s1]);
    // Sequence numbers continue above the finished commit even though the outbox's last
    // record is below it.
    let s3 = store.commit(&[ev(5, 14)], &e).unwrap();
    assert!(s3 > s2, "{s3} > {s2}");
    assert_eq!(store.last_outbox_seq().unwrap(), Some(s3));

    let dead = store.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event, dead_event);
    assert_eq!(dead[0].last_status, Some(500));
    let disabled = store.disabled_endpoints().unwrap();
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0].url, "https://hooks.example/x");
    assert_eq!(disabled[0].fingerprint, [7; 32]);

    assert!(store.replay_dead_letter(s1, 2).unwrap());
    assert!(!store.replay_dead_letter(s1, 2).unwrap());
    assert!(store.dead_letters(10).unwrap().is_empty());
    assert_eq!(store.replays(10).unwrap()[0].event, dead_event);
    assert!(
        store.disabled_endpoints().unwrap().is_empty(),
        "replay re-enables"
    );
    let mut w = DeliveryWrite::new();
    w.replay_done(s1, 2);
    store.write_deliveries(w).unwrap();
    assert!(store.replays(10).unwrap().is_empty());
    let check = store.check().unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
}
