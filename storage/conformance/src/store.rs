//! The store on a key-value implementation: initialisation, master-key and schema checks,
//! commit and load, crashes, corruption, export and import.

use zoftoken_engine::{
    Actor, Batch, ChallengeRecord, Engine, EngineConfig, EngineError, Event, EventKind, Mutation,
    OfflineOutcome, ServiceConfig, TokenState,
};
use zoftoken_proto::TokenId;
use zoftoken_storage::{Cf, Durability, KvError, Store, StoreError, WriteBatch};

use crate::fixtures::{engine, key, service, token, write_tokens};
use crate::Harness;

/// A new database is initialised; reopening needs the same master key.
pub fn store_initialises_and_checks_the_master_key(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let store = Store::open(kv, key(1), Durability::Wal).unwrap();
    store
        .put_service(&zoftoken_storage::ServiceDoc::from_config(&service()))
        .unwrap();
    drop(store);
    let kv = h.open().unwrap();
    assert!(matches!(
        Store::open(kv, key(2), Durability::Wal),
        Err(StoreError::WrongMasterKey)
    ));
    let kv = h.open().unwrap();
    let store = Store::open(kv, key(1), Durability::Wal).unwrap();
    assert_eq!(store.services().unwrap()[0].name, "bank");
}

/// A database from a newer version, or records without a schema version, are errors.
pub fn store_refuses_a_newer_schema_and_data_without_schema(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let mut b = WriteBatch::new();
    b.put(Cf::Tokens, "stray", "x");
    kv.write(&b, Durability::Wal).unwrap();
    assert!(matches!(
        Store::open(kv.clone(), key(1), Durability::Wal),
        Err(StoreError::Corrupt { cf: Cf::Meta, .. })
    ));
    let mut b = WriteBatch::new();
    b.put(Cf::Meta, "schema_version", 99u32.to_be_bytes());
    kv.write(&b, Durability::Wal).unwrap();
    assert!(matches!(
        Store::open(kv, key(1), Durability::Wal),
        Err(StoreError::NewerSchema { found: 99, .. })
    ));
}

/// Committed tokens, state updates, deletions, transactions and backup codes load back into
/// a new engine; the events are in the outbox.
pub fn store_commit_and_load_round_trip(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let shared = kv.is_shared();
    let raw = kv.clone();
    let store = Store::open(kv, key(1), Durability::Wal).unwrap();
    let e1 = engine();
    write_tokens(&store, &e1, 0..300);
    // A state update of token 7, then an older one landing later (a reordered group commit,
    // or, in a store shared by several servers, a server whose view is stale).
    let mut newer = token(7, 3).status;
    newer.failures = 2;
    newer.state = TokenState::Blocked;
    let mut older = token(7, 2).status;
    older.failures = 1;
    if shared {
        // Compare-and-set: version 2 follows the stored 1, then 3; 2 again is refused whole.
        store.commit(&[Mutation::TokenState(older)], &e1).unwrap();
        store.commit(&[Mutation::TokenState(newer)], &e1).unwrap();
        let stale = store.commit(
            &[
                Mutation::TokenState(older),
                Mutation::BackupCodes(token(3, 1).token_id(), vec![[3; 16]]),
            ],
            &e1,
        );
        assert!(
            matches!(stale, Err(StoreError::Kv(KvError::Conflict(_)))),
            "{stale:?}"
        );
        let codes_of_3 = raw.get(Cf::BackupCodes, &token(3, 1).token_id().0).unwrap();
        assert_eq!(codes_of_3, None, "nothing of a refused batch is written");
    } else {
        store.commit(&[Mutation::TokenState(newer)], &e1).unwrap();
        store.commit(&[Mutation::TokenState(older)], &e1).unwrap();
    }
    drop(raw);
    // Offline challenges: kept (4), expired by the time of the load (5), answered (6), and of
    // a token deleted later (8).
    let challenge = |n: u32, expires_ms: u64| {
        Mutation::Challenge(Box::new(ChallengeRecord {
            token_id: token(n, 1).token_id(),
            code: format!("CODE{n}XYZ"),
            expires_ms,
        }))
    };
    store
        .commit(
            &[
                challenge(4, u64::MAX),
                challenge(5, 0),
                challenge(6, u64::MAX),
                challenge(8, u64::MAX),
            ],
            &e1,
        )
        .unwrap();
    store
        .commit(&[Mutation::DeleteChallenge(token(6, 1).token_id())], &e1)
        .unwrap();
    let gone = token(8, 1).token_id();
    store
        .commit(
            &[
                Mutation::DeleteToken(gone),
                Mutation::Event(Event::new(EventKind::Deleted, gone, 0, 6, Actor::Admin)),
            ],
            &e1,
        )
        .unwrap();
    let tx = zoftoken_engine::Transaction {
        tx_id: [9; 16],
        token_id: token(1, 1).token_id(),
        message: "pay 10 €".into(),
        created_ms: 1,
        expires_ms: u64::MAX,
        state: zoftoken_proto::TxState::Waiting,
        duress: false,
    };
    store
        .commit(
            &[
                Mutation::Transaction(Box::new(tx.clone())),
                Mutation::BackupCodes(token(2, 1).token_id(), vec![[1; 16], [2; 16]]),
            ],
            &e1,
        )
        .unwrap();
    drop(store);

    let kv = h.open().unwrap();
    let store = Store::open(kv, key(1), Durability::Wal).unwrap();
    let e2 = engine();
    let report = store.load(&e2, 0, 3, &|_| {}).unwrap();
    assert_eq!(report.tokens, 299);
    assert_eq!(report.transactions, 1);
    assert_eq!(e2.token_count(), 299);
    let s7 = e2.status_by_id(0, &token(7, 1).token_id()).unwrap();
    assert_eq!(s7.state, TokenState::Blocked);
    assert!(e2.status_by_id(0, &gone).is_err());
    assert_eq!(store.token_info(&gone).unwrap(), None);
    for n in [0u32, 1, 3, 299] {
        let id = token(n, 1).token_id();
        let want = token(n, 1).status;
        assert_eq!(store.token_state(&id).unwrap(), Some(want), "token {n}");
        assert_eq!(
            store.token_info(&id).unwrap(),
            Some(("bank".to_owned(), format!("user{n}")))
        );
        let s = e2.status_by_id(0, &id).unwrap();
        assert_eq!(s.state, want.state, "token {n}");
    }
    assert_eq!(e2.transaction(0, &[9; 16]).unwrap(), tx);
    let respond = |n: u32, now_ms: u64| {
        e2.offline_response(
            now_ms,
            &token(n, 1).token_id(),
            "AAAA-AAAA",
            &mut Batch::new(),
        )
    };
    assert!(
        matches!(respond(4, 20), Ok(OfflineOutcome::Rejected { .. })),
        "{:?}",
        respond(4, 20)
    );
    assert_eq!(
        respond(5, 0),
        Err(EngineError::NoChallenge),
        "expired when loaded"
    );
    assert_eq!(respond(6, 0), Err(EngineError::NoChallenge), "answered");
    let events = store.outbox(0, 100).unwrap();
    assert_eq!(events.len(), 301);
    let deleted = events.last().unwrap();
    assert_eq!(deleted.kind, EventKind::Deleted);
    assert_eq!(deleted.username.as_deref(), Some("user8"));
    assert_eq!(deleted.service, "bank");
    assert!(events[0].seq < deleted.seq);
    store.ack_outbox(events[0].seq).unwrap();
    assert_eq!(store.outbox(0, 100).unwrap().len(), 1);
    let check = store.check().unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    // Kept: 4 and 5 (an expired challenge stays until replaced, answered or deleted).
    assert_eq!(check.records.get("offline_challenges"), Some(&2));
    // An enrollment keeps its deeplink's secret, sealed: the link made from the stored record
    // is the one handed out.
    let mut batch = Batch::new();
    let ticket = e2.enroll(10, "bank", "newcomer", &mut batch).unwrap();
    store.commit(&batch.mutations, &e2).unwrap();
    let pending = store.enrollment(&ticket.token_id).unwrap().unwrap();
    assert_eq!(pending.expires_ms, ticket.expires_ms);
    let secret = pending.link_secret.unwrap();
    assert_eq!(
        e2.enrollment_deeplink("bank", &secret).unwrap().as_str(),
        ticket.deeplink
    );
}

/// A batch with more events than one outbox record holds (65 535, e.g. a timer tick expiring
/// that many tokens) is written whole, as several records.
pub fn store_writes_any_number_of_events(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let store = Store::open(kv, key(1), Durability::Wal).unwrap();
    let e = engine();
    let mutations: Vec<Mutation> = (0..70_000u32)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            Mutation::Event(Event::new(
                EventKind::Expired,
                TokenId(id),
                0,
                u64::from(i),
                Actor::Timer,
            ))
        })
        .collect();
    let seq = store.commit(&mutations, &e).unwrap();
    let events = store.outbox(0, 10).unwrap();
    assert_eq!(events.len(), 70_000);
    assert!(events.iter().all(|ev| ev.kind == EventKind::Expired));
    assert_eq!(events.last().unwrap().seq, seq);
    assert!(events.first().unwrap().seq < seq, "two records");
}

/// The outbox holds only the events some webhook receives: none for a service without a
/// webhook, only the subscribed kinds for a webhook with an event list.
pub fn store_keeps_only_events_a_webhook_receives(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let store = Store::open(kv, key(1), Durability::Wal).unwrap();
    let mut quiet = ServiceConfig::new("quiet", &["127.0.0.1:7878"]);
    quiet.webhook = None;
    let mut picky = service();
    picky.name = "picky".into();
    if let Some(w) = picky.webhook.as_mut() {
        w.events = vec!["blocked".into()];
    }
    let e = Engine::new(EngineConfig::new(vec![quiet, picky], 7, [3; 32])).unwrap();
    let event = |kind, service| {
        Mutation::Event(Event::new(
            kind,
            TokenId([service as u8; 16]),
            service,
            1,
            Actor::Device,
        ))
    };
    let mutations = vec![
        event(EventKind::Opened, 0),
        event(EventKind::Blocked, 0),
        event(EventKind::Opened, 1),
        event(EventKind::Blocked, 1),
    ];
    store.commit(&mutations, &e).unwrap();
    let events = store.outbox(0, 10).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].kind, events[0].service.as_str()),
        (EventKind::Blocked, "picky")
    );
}

/// Every committed batch is there after a crash; sequence numbers continue after it.
pub fn store_commits_survive_crash(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let store = Store::open(kv.clone(), key(1), Durability::Wal).unwrap();
    let e = engine();
    let mut last = 0;
    for i in 0..50 {
        write_tokens(&store, &e, i * 2..i * 2 + 2);
        let mut s = token(0, 1).status;
        s.version = 2 + i;
        s.highest_counter = u64::from(i);
        last = store
            .commit(
                &[
                    Mutation::TokenState(s),
                    Mutation::Event(Event::new(
                        EventKind::Opened,
                        s.token_id,
                        0,
                        1,
                        Actor::Device,
                    )),
                ],
                &e,
            )
            .unwrap();
    }
    drop(store);
    h.crash(kv);
    let kv = h.open().unwrap();
    let store = Store::open(kv, key(1), Durability::Wal).unwrap();
    let e2 = engine();
    assert_eq!(store.load(&e2, 0, 2, &|_| {}).unwrap().tokens, 100);
    assert_eq!(
        store
            .token_state(&token(0, 1).token_id())
            .unwrap()
            .unwrap()
            .highest_counter,
        49
    );
    let next = store
        .commit(
            &[Mutation::Event(Event::new(
                EventKind::Closed,
                token(0, 1).token_id(),
                0,
                1,
                Actor::Device,
            ))],
            &e2,
        )
        .unwrap();
    assert!(next > last);
}

/// A damaged secret is a clear error at load, never a silently missing token.
pub fn store_reports_corruption(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let store = Store::open(kv.clone(), key(1), Durability::Wal).unwrap();
    let e = engine();
    write_tokens(&store, &e, 0..10);
    let id = token(4, 1).token_id();
    let mut v = kv.get(Cf::Secrets, &id.0).unwrap().unwrap();
    let last = v.len() - 1;
    v[last] ^= 0x55;
    let mut b = WriteBatch::new();
    b.put(Cf::Secrets, id.0, v);
    kv.write(&b, Durability::Wal).unwrap();
    let err = store.load(&engine(), 0, 2, &|_| {}).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { cf: Cf::Secrets, key, .. } if *key == hex::encode(id.0)),
        "{err}"
    );
    assert_eq!(store.check().unwrap().problems.len(), 1);
}

/// An export imports into a new database with the same master key, record for record; a
/// store with another key refuses it; a non-empty store refuses it.
pub fn store_export_import_round_trip(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let store = Store::open(kv, key(1), Durability::Wal).unwrap();
    let e = engine();
    write_tokens(&store, &e, 0..50);
    store
        .put_service(&zoftoken_storage::ServiceDoc::from_config(&service()))
        .unwrap();
    store
        .commit(
            &[
                Mutation::Challenge(Box::new(ChallengeRecord {
                    token_id: token(3, 1).token_id(),
                    code: "K3D97QX2".into(),
                    expires_ms: u64::MAX,
                })),
                Mutation::BackupCodes(token(3, 1).token_id(), vec![[7; 16]]),
            ],
            &e,
        )
        .unwrap();
    let mut dump = Vec::new();
    let exported = store.export(&mut dump).unwrap();
    let text = String::from_utf8(dump.clone()).unwrap();
    // No secret appears in clear in the export.
    let secret_hex = hex::encode([3u8; 32]);
    assert!(!text.contains(&secret_hex));
    assert!(!text.contains(&hex::encode("K3D97QX2")));
    assert!(text.contains("\"cf\":\"offline_challenges\""));

    let mut other = h.fresh();
    let kv2 = other.open().unwrap();
    let wrong = Store::open(kv2, key(2), Durability::Wal).unwrap();
    assert!(matches!(
        wrong.import(&mut dump.as_slice()),
        Err(StoreError::WrongMasterKey)
    ));
    drop(wrong);

    let mut fresh = h.fresh();
    let kv3 = fresh.open().unwrap();
    let copy = Store::open(kv3, key(1), Durability::Wal).unwrap();
    let imported = copy.import(&mut dump.as_slice()).unwrap();
    assert_eq!(imported, exported);
    let mut again = Vec::new();
    copy.export(&mut again).unwrap();
    // Record for record, but for the header, the epoch and the outbox cursor and block,
    // which the import moves on (see the next case), and a delivery lease, which it drops.
    let moved_on = |l: &&str| {
        l.contains("zoftoken_export")
            || l.contains(&hex::encode("master_key_check"))
            || l.contains(&format!("\"{}\"", hex::encode("epoch")))
            || l.contains(&hex::encode("outbox_acked"))
            || l.contains(&hex::encode("outbox_next_block"))
            || l.contains(&hex::encode("webhook_lease"))
    };
    let mut a: Vec<&str> = text.lines().filter(|l| !moved_on(l)).collect();
    let again = String::from_utf8(again).unwrap();
    let mut b: Vec<&str> = again.lines().filter(|l| !moved_on(l)).collect();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
    let e2 = engine();
    assert_eq!(copy.load(&e2, 0, 2, &|_| {}).unwrap().tokens, 50);
    assert!(copy.import(&mut dump.as_slice()).is_err());
}

/// An imported copy never reuses what its source used: its next epoch is past every epoch
/// the source handed out (before the export, and up to the margin after it), and its next
/// outbox sequence number (a `webhook-id`) past every one the source used; the source's
/// undelivered events are still delivered. Exports without the header's marks (earlier
/// versions) move on from the exported records alone.
pub fn store_import_never_reuses_an_epoch_or_outbox_sequence(h: &mut dyn Harness) {
    let e = engine();
    let event = |n: u32| {
        Mutation::Event(Event::new(
            EventKind::Opened,
            token(n, 1).token_id(),
            0,
            9,
            Actor::Device,
        ))
    };
    let kv = h.open().unwrap();
    let source = Store::open(kv, key(1), Durability::Wal).unwrap();
    for _ in 0..3 {
        source.next_epoch().unwrap();
    }
    write_tokens(&source, &e, 0..5);
    let delivered = source.commit(&[event(1)], &e).unwrap();
    let undelivered = source.commit(&[event(2)], &e).unwrap();
    source.ack_outbox(delivered).unwrap();
    let mut dump = Vec::new();
    source.export(&mut dump).unwrap();
    // The source goes on after the export: one more start, one more commit.
    let source_epoch = source.next_epoch().unwrap();
    let source_seq = source.commit(&[event(3)], &e).unwrap();
    assert!(source_seq > undelivered);

    let text = String::from_utf8(dump.clone()).unwrap();
    let (_, records) = text.split_once('\n').unwrap();
    let old_dump = format!("{{\"zoftoken_export\":1,\"schema_version\":1}}\n{records}");
    for (dump, started_before) in [(dump.as_slice(), true), (old_dump.as_bytes(), false)] {
        let mut fresh = h.fresh();
        let kv = fresh.open().unwrap();
        let copy = Store::open(kv, key(1), Durability::Wal).unwrap();
        if started_before {
            // The new database served once before the import: its own epoch counts too.
            copy.next_epoch().unwrap();
        }
        copy.import(&mut &dump[..]).unwrap();
        let epoch = copy.next_epoch().unwrap();
        assert!(epoch > source_epoch, "epoch {epoch} reused");
        assert!(epoch > 3 + zoftoken_storage::IMPORT_EPOCH_MARGIN);
        let seq = copy.commit(&[event(4)], &e).unwrap();
        assert!(seq > source_seq, "outbox sequence {seq} reused");
        assert!(seq > undelivered + zoftoken_storage::IMPORT_SEQ_MARGIN);
        // The undelivered event came along and is read first.
        assert_eq!(copy.outbox_start().unwrap(), undelivered);
        let pending = copy.outbox(undelivered, 10).unwrap();
        assert_eq!(
            pending.iter().map(|ev| ev.seq).collect::<Vec<_>>(),
            vec![undelivered, seq]
        );
        // The marks are durable: a restart of the copy goes on past them.
        drop(copy);
        let kv = fresh.open().unwrap();
        let copy = Store::open(kv, key(1), Durability::Wal).unwrap();
        assert!(copy.next_epoch().unwrap() > epoch);
        assert!(copy.commit(&[event(5)], &e).unwrap() > seq);
    }
}
