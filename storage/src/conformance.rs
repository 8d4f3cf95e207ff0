//! The conformance suite: every [`KvStore`] implementation must pass these tests, run through
//! [`conformance_tests!`](crate::conformance_tests) with a [`Harness`] that opens, reopens and
//! "crashes" its kind of database. They cover the key-value contract (atomic ordered batches,
//! versioned state puts, ordered bounded scans, separate column families, durability across a
//! clean reopen and a crash) and the store on top of it (initialisation, master-key and schema
//! checks, commit and load, export and import).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use zoftoken_engine::{
    Actor, Batch, Engine, EngineConfig, Event, EventKind, Mutation, ServiceConfig, TokenRecord,
    TokenState, TokenStateRecord,
};
use zoftoken_proto::{SecretBytes, TokenId};

use crate::kv::{Cf, Durability, KvError, KvStore, WriteBatch};
use crate::{MasterKey, Store, StoreError};

/// Opens one database of the implementation under test, again and again.
pub trait Harness {
    /// Opens the database (creating it the first time). At most one handle is open at once.
    fn open(&mut self) -> Result<Arc<dyn KvStore>, KvError>;
    /// Simulates a crash: the handle goes away without a flush or a clean close.
    fn crash(&mut self, kv: Arc<dyn KvStore>);
    /// A new, empty database of the same kind.
    fn fresh(&self) -> Box<dyn Harness>;
}

/// Generates one `#[test]` per conformance case; `$make` builds a fresh [`Harness`].
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            kv_batches_are_atomic_and_ordered,
            kv_scans_are_ordered_and_bounded,
            kv_column_families_are_separate,
            kv_put_newer_keeps_the_newest_version,
            kv_survives_clean_reopen,
            kv_survives_crash,
            store_initialises_and_checks_the_master_key,
            store_refuses_a_newer_schema_and_data_without_schema,
            store_commit_and_load_round_trip,
            store_commits_survive_crash,
            store_writes_any_number_of_events,
            store_keeps_only_events_a_webhook_receives,
            store_reports_corruption,
            store_export_import_round_trip,
            store_import_never_reuses_an_epoch_or_outbox_sequence,
            store_tracks_webhook_deliveries,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let mut h = $make;
                $crate::conformance::$case(&mut h);
            }
        )*
    };
}

fn put(b: &mut WriteBatch, cf: Cf, k: &str, v: &str) {
    b.put(cf, k.as_bytes(), v.as_bytes());
}

fn get(kv: &dyn KvStore, cf: Cf, k: &str) -> Option<String> {
    kv.get(cf, k.as_bytes())
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

fn keys(kv: &dyn KvStore, cf: Cf, start: &str, end: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    kv.scan(cf, start.as_bytes(), end.map(str::as_bytes), &mut |k, _| {
        out.push(String::from_utf8(k.to_vec()).unwrap());
        true
    })
    .unwrap();
    out
}

/// Later writes of a batch win over earlier ones; the whole batch lands.
pub fn kv_batches_are_atomic_and_ordered(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let mut b = WriteBatch::new();
    put(&mut b, Cf::Tokens, "a", "1");
    put(&mut b, Cf::Tokens, "a", "2");
    put(&mut b, Cf::Tokens, "b", "1");
    b.delete(Cf::Tokens, "b");
    b.delete(Cf::Tokens, "c");
    put(&mut b, Cf::Tokens, "c", "3");
    kv.write(&b, Durability::Wal).unwrap();
    assert_eq!(get(&*kv, Cf::Tokens, "a").as_deref(), Some("2"));
    assert_eq!(get(&*kv, Cf::Tokens, "b"), None);
    assert_eq!(get(&*kv, Cf::Tokens, "c").as_deref(), Some("3"));
    let mut b = WriteBatch::new();
    b.delete(Cf::Tokens, "a");
    put(&mut b, Cf::State, "x", "y");
    kv.write(&b, Durability::Fsync).unwrap();
    assert_eq!(get(&*kv, Cf::Tokens, "a"), None);
    assert_eq!(get(&*kv, Cf::State, "x").as_deref(), Some("y"));
}

/// Scans visit `start <= key < end` in byte order and stop when told.
pub fn kv_scans_are_ordered_and_bounded(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let mut b = WriteBatch::new();
    for k in ["d", "a", "c", "b", "e", "ab"] {
        put(&mut b, Cf::Outbox, k, "v");
    }
    kv.write(&b, Durability::Wal).unwrap();
    assert_eq!(
        keys(&*kv, Cf::Outbox, "", None),
        ["a", "ab", "b", "c", "d", "e"]
    );
    assert_eq!(keys(&*kv, Cf::Outbox, "ab", Some("d")), ["ab", "b", "c"]);
    assert_eq!(keys(&*kv, Cf::Outbox, "f", None), Vec::<String>::new());
    let mut seen = 0;
    kv.scan(Cf::Outbox, b"", None, &mut |_, _| {
        seen += 1;
        seen < 2
    })
    .unwrap();
    assert_eq!(seen, 2);
    let (k, _) = kv.last(Cf::Outbox).unwrap().unwrap();
    assert_eq!(k, b"e");
    assert_eq!(kv.last(Cf::Transactions).unwrap(), None);
}

/// The same key in two column families is two records.
pub fn kv_column_families_are_separate(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let mut b = WriteBatch::new();
    for (i, cf) in Cf::ALL.into_iter().enumerate() {
        put(&mut b, cf, "k", &i.to_string());
    }
    kv.write(&b, Durability::Wal).unwrap();
    for (i, cf) in Cf::ALL.into_iter().enumerate() {
        assert_eq!(get(&*kv, cf, "k"), Some(i.to_string()), "{cf}");
    }
}

fn state_value(version: u32, tag: u8) -> Vec<u8> {
    let mut v = vec![1];
    v.extend_from_slice(&version.to_be_bytes());
    v.push(tag);
    v
}

/// Versioned state puts keep the newest version whatever the write order, in one batch or
/// across batches and reopenings, across version wrap-around, and after a delete.
pub fn kv_put_newer_keeps_the_newest_version(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let write = |kv: &dyn KvStore, key: &str, version: u32, tag: u8| {
        let mut b = WriteBatch::new();
        b.put_newer(Cf::State, key.as_bytes(), state_value(version, tag));
        kv.write(&b, Durability::Wal).unwrap();
    };
    write(&*kv, "in-order", 1, 1);
    write(&*kv, "in-order", 2, 2);
    write(&*kv, "reordered", 5, 5);
    write(&*kv, "reordered", 4, 4);
    write(&*kv, "wrapped", u32::MAX, 1);
    write(&*kv, "wrapped", 0, 2);
    write(&*kv, "wrapped", u32::MAX - 1, 3);
    let mut b = WriteBatch::new();
    b.put_newer(Cf::State, "same-batch", state_value(9, 9));
    b.put_newer(Cf::State, "same-batch", state_value(8, 8));
    kv.write(&b, Durability::Wal).unwrap();
    let value = |kv: &dyn KvStore, k: &str| kv.get(Cf::State, k.as_bytes()).unwrap();
    assert_eq!(value(&*kv, "in-order"), Some(state_value(2, 2)));
    assert_eq!(value(&*kv, "reordered"), Some(state_value(5, 5)));
    assert_eq!(value(&*kv, "wrapped"), Some(state_value(0, 2)));
    assert_eq!(value(&*kv, "same-batch"), Some(state_value(9, 9)));
    kv.flush().unwrap();
    write(&*kv, "reordered", 3, 3);
    assert_eq!(value(&*kv, "reordered"), Some(state_value(5, 5)));
    drop(kv);
    let kv = h.open().unwrap();
    assert_eq!(value(&*kv, "reordered"), Some(state_value(5, 5)));
    write(&*kv, "reordered", 6, 6);
    assert_eq!(value(&*kv, "reordered"), Some(state_value(6, 6)));
    let mut b = WriteBatch::new();
    b.delete(Cf::State, "reordered");
    kv.write(&b, Durability::Wal).unwrap();
    write(&*kv, "reordered", 1, 7);
    assert_eq!(value(&*kv, "reordered"), Some(state_value(1, 7)));
    let mut seen = Vec::new();
    kv.scan(Cf::State, b"", None, &mut |k, v| {
        seen.push((k.to_vec(), v.to_vec()));
        true
    })
    .unwrap();
    assert_eq!(seen.len(), 4);
    assert!(seen.contains(&(b"wrapped".to_vec(), state_value(0, 2))));
}

/// Everything written is there after a flush and a clean reopen.
pub fn kv_survives_clean_reopen(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let mut b = WriteBatch::new();
    for i in 0..1000 {
        put(&mut b, Cf::Secrets, &format!("{i:05}"), &i.to_string());
    }
    kv.write(&b, Durability::Wal).unwrap();
    kv.flush().unwrap();
    drop(kv);
    let kv = h.open().unwrap();
    assert_eq!(keys(&*kv, Cf::Secrets, "", None).len(), 1000);
    assert_eq!(get(&*kv, Cf::Secrets, "00999").as_deref(), Some("999"));
}

/// Every completed write survives a crash (no flush, no clean close), with either durability.
pub fn kv_survives_crash(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    for i in 0..200 {
        let mut b = WriteBatch::new();
        put(&mut b, Cf::State, &format!("{i:05}"), "a");
        put(&mut b, Cf::Outbox, &format!("{i:05}"), "b");
        let d = if i % 2 == 0 {
            Durability::Wal
        } else {
            Durability::Fsync
        };
        kv.write(&b, d).unwrap();
    }
    h.crash(kv);
    let kv = h.open().unwrap();
    assert_eq!(keys(&*kv, Cf::State, "", None).len(), 200);
    assert_eq!(keys(&*kv, Cf::Outbox, "", None).len(), 200);
}

fn key(n: u8) -> MasterKey {
    MasterKey::from_bytes([n; 32])
}

/// A new database is initialised; reopening needs the same master key.
pub fn store_initialises_and_checks_the_master_key(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let store = Store::open(kv, key(1), Durability::Wal).unwrap();
    store
        .put_service(&crate::ServiceDoc::from_config(&service()))
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
    put(&mut b, Cf::Tokens, "stray", "x");
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

/// A service with a webhook for every event: the outbox keeps only events a webhook receives.
fn service() -> ServiceConfig {
    let mut s = ServiceConfig::new("bank", &["127.0.0.1:7878"]);
    s.webhook = Some(zoftoken_engine::WebhookConfig {
        url: "https://hooks.example/zt".into(),
        secret: "conformance-secret".into(),
        events: Vec::new(),
        previous_secret: None,
        ca_file: None,
        shared_token: None,
        allow_insecure_http: false,
    });
    s
}

fn engine() -> Engine {
    Engine::new(EngineConfig::new(vec![service()], 7, [3; 32])).unwrap()
}

fn token(n: u32, version: u32) -> TokenRecord {
    let id = TokenId::derive("bank", &format!("user{n}"));
    let mut status = TokenStateRecord::new(id);
    status.version = version;
    status.highest_counter = u64::from(n) * 10;
    status.state = if n % 3 == 0 {
        TokenState::Open
    } else {
        TokenState::Closed
    };
    status.open_until_ms = if n % 3 == 0 { 10_000_000 } else { 0 };
    status.failures = (n % 3) as u8;
    status.clock_offset_ms = -(i64::from(n));
    TokenRecord {
        kind: zoftoken_engine::TokenKind::App,
        service: 0,
        secret: SecretBytes::new([n as u8; 32]),
        pin_verifier: SecretBytes::new([(n + 1) as u8; 32]),
        duress_verifier: (n % 2 == 0).then(|| SecretBytes::new([(n + 2) as u8; 32])),
        status,
    }
}

fn write_tokens(store: &Store, names: &Engine, range: std::ops::Range<u32>) {
    let mut batch = Batch::new();
    for n in range {
        let r = token(n, 1);
        batch.mutations.push(Mutation::TokenCreated {
            token_id: r.token_id(),
            service: Arc::from("bank"),
            username: format!("user{n}"),
        });
        batch.mutations.push(Mutation::Event(Event::new(
            EventKind::Paired,
            r.token_id(),
            0,
            5,
            Actor::Device,
        )));
        batch.mutations.push(Mutation::Token(Box::new(r)));
    }
    store.commit(&batch.mutations, names).unwrap();
}

/// Committed tokens, state updates, deletions, transactions and backup codes load back into
/// a new engine; the events are in the outbox.
pub fn store_commit_and_load_round_trip(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let store = Store::open(kv, key(1), Durability::Wal).unwrap();
    let e1 = engine();
    write_tokens(&store, &e1, 0..300);
    // A state update of token 7, then an older one landing later (a reordered group commit).
    let mut newer = token(7, 3).status;
    newer.failures = 2;
    newer.state = TokenState::Blocked;
    let mut older = token(7, 2).status;
    older.failures = 1;
    store.commit(&[Mutation::TokenState(newer)], &e1).unwrap();
    store.commit(&[Mutation::TokenState(older)], &e1).unwrap();
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
        .put_service(&crate::ServiceDoc::from_config(&service()))
        .unwrap();
    let mut dump = Vec::new();
    let exported = store.export(&mut dump).unwrap();
    let text = String::from_utf8(dump.clone()).unwrap();
    // No secret appears in clear in the export.
    let secret_hex = hex::encode([3u8; 32]);
    assert!(!text.contains(&secret_hex));

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
    // Record for record, but for the header and the epoch and outbox cursor, which the
    // import moves on (see the next case).
    let moved_on = |l: &&str| {
        l.contains("zoftoken_export")
            || l.contains(&hex::encode("master_key_check"))
            || l.contains(&format!("\"{}\"", hex::encode("epoch")))
            || l.contains(&hex::encode("outbox_acked"))
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
        assert!(epoch > 3 + crate::IMPORT_EPOCH_MARGIN);
        let seq = copy.commit(&[event(4)], &e).unwrap();
        assert!(seq > source_seq, "outbox sequence {seq} reused");
        assert!(seq > undelivered + crate::IMPORT_SEQ_MARGIN);
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

/// Webhook delivery state: per-event progress survives a crash, finished commits leave the
/// outbox without their sequence numbers being reused, dead letters are kept, replayed and
/// deleted, disabled endpoints are listed and re-enabled by a replay.
pub fn store_tracks_webhook_deliveries(h: &mut dyn Harness) {
    use crate::webhooks::{set_bit, DeadLetterRecord, DeliveryWrite, DisabledEndpoint};
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
