//! The pipeline against real HTTP receivers on loopback, with signatures checked by a
//! verifier written from the Standard Webhooks specification (both in `common`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;
use common::*;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use zoftoken_engine::{Engine, EngineConfig, Event, EventKind};
use zoftoken_storage::webhooks::event_id;
use zoftoken_storage::{Durability, MasterKey, MemoryKv, Store};
use zoftoken_testkit::now_ms;
use zoftoken_webhooks::{Pipeline, PipelineConfig};

fn outbox_empty(store: &Store) -> bool {
    store.outbox(0, 10).unwrap().is_empty()
}

// ---------------------------------------------------------------------------------------

#[test]
fn every_event_type_arrives_signed_with_its_fields() {
    let rt = runtime();
    let bank = ok_receiver(&rt);
    let shop = ok_receiver(&rt);
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut bank_svc = service("bank", &bank.url(), secret);
    // A rotation in progress: both secrets sign.
    bank_svc.webhook.as_mut().unwrap().previous_secret = Some("old plain secret".into());
    bank_svc.webhook.as_mut().unwrap().shared_token = Some("a plain shared value".into());
    let mut shop_svc = service("shop", &shop.url(), "shop-secret");
    // Only opens for this one.
    shop_svc.webhook.as_mut().unwrap().events = vec!["opened".into()];
    let (store, engine) = setup(vec![bank_svc, shop_svc]);
    let pipeline = Pipeline::start(fast(), store.clone(), engine.clone()).unwrap();

    let t = now_ms();
    let mut events = Vec::new();
    for (i, kind) in EventKind::ALL.into_iter().enumerate() {
        let user = format!("user-{}", kind.name());
        let mut e = ev(&engine, "bank", &user, kind, t + i as u64);
        match kind {
            EventKind::Opened => e.open_until_ms = Some(t + 600_000),
            EventKind::Duress => {
                e.open_until_ms = Some(t + 600_000);
                e = e.with_duress();
                e.operation = Some(zoftoken_engine::DuressOp::Open);
            }
            EventKind::TxApproved | EventKind::TxDenied | EventKind::TxExpired => {
                e = e.with_tx([i as u8; 16]);
            }
            _ => {}
        }
        events.push(("bank", user, e));
    }
    for (i, kind) in [EventKind::Opened, EventKind::Closed, EventKind::Blocked]
        .into_iter()
        .enumerate()
    {
        events.push((
            "shop",
            "sam".into(),
            ev(&engine, "shop", "sam", kind, t + 100 + i as u64),
        ));
    }
    let refs: Vec<(&str, &str, Event)> = events
        .iter()
        .map(|(s, u, e)| (*s, u.as_str(), e.clone()))
        .collect();
    let seq = commit(&store, &engine, &refs);

    wait_until("13 bank deliveries", Duration::from_secs(10), || {
        bank.distinct().len() == 13
    });
    wait_until("the outbox to empty", Duration::from_secs(10), || {
        outbox_empty(&store)
    });
    let got = bank.deliveries();
    assert_eq!(got.len(), 13, "each event once");
    for d in &got {
        assert!(verify(secret, d), "new secret verifies {}", d.id);
        assert!(
            verify("old plain secret", d),
            "old secret verifies {}",
            d.id
        );
        assert!(!verify("whsec_AAAAAAAA", d));
        let j = &d.json;
        assert_eq!(j["id"], d.id.as_str());
        assert_eq!(j["service"], "bank");
        // The body never carries a signing secret; the separately configured shared token
        // is there for receivers that only compare a value.
        let text = String::from_utf8(d.body.clone()).unwrap();
        assert!(!text.contains(secret) && !text.contains("old plain secret"));
        assert!(!text.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert!(j.get("secret").is_none(), "{text}");
        assert_eq!(j["shared_token"], "a plain shared value");
        let kind = EventKind::from_name(j["type"].as_str().unwrap()).unwrap();
        let i = EventKind::ALL.iter().position(|k| *k == kind).unwrap();
        assert_eq!(
            d.id,
            event_id(seq, i as u16),
            "stable id from the outbox position"
        );
        assert_eq!(j["username"], format!("user-{}", kind.name()));
        assert_eq!(j["time_ms"], t + i as u64);
        assert_eq!(j["actor"], "device");
        let state = match kind {
            EventKind::Enrolled => "pending",
            EventKind::Deleted => "deleted",
            EventKind::Blocked => "blocked",
            EventKind::Opened | EventKind::Duress => "open",
            _ => "closed",
        };
        assert_eq!(j["state"], state, "{kind:?}");
        match kind {
            EventKind::Opened | EventKind::Duress => {
                assert_eq!(j["open_until_ms"], t + 600_000)
            }
            _ => assert!(j["open_until_ms"].is_null()),
        }
        assert_eq!(j["duress"], kind == EventKind::Duress);
        // A duress event names the operation the duress PIN was used for; no other has one.
        if kind == EventKind::Duress {
            assert_eq!(j["operation"], "open");
        } else {
            assert!(j["operation"].is_null(), "{kind:?}");
        }
        match kind {
            EventKind::TxApproved | EventKind::TxDenied | EventKind::TxExpired => {
                assert_eq!(j["transaction_id"], hex::encode([i as u8; 16]))
            }
            _ => assert!(j["transaction_id"].is_null()),
        }
        assert!(j["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            j["sequence"], events[i].2.sequence,
            "the number the event was made with"
        );
        assert!(events[i].2.sequence > 0);
    }
    let shop_got = shop.deliveries();
    assert_eq!(shop_got.len(), 1, "only the subscribed event");
    assert_eq!(shop_got[0].json["type"], "opened");
    assert!(
        shop_got[0].json.get("shared_token").is_none(),
        "none configured"
    );
    assert!(!String::from_utf8_lossy(&shop_got[0].body).contains("shop-secret"));
    assert!(verify("shop-secret", &shop_got[0]));
    assert!(!verify(secret, &shop_got[0]));
    pipeline.shutdown();
}

#[test]
fn receiver_down_then_up_gets_everything_in_token_order() {
    let rt = runtime();
    // A port with nobody listening yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (store, engine) = setup(vec![service("bank", &format!("http://{addr}/"), "s3cret")]);
    let pipeline = Pipeline::start(fast(), store.clone(), engine.clone()).unwrap();
    let t = now_ms();
    let mut expected = HashMap::new();
    for round in 0..20u64 {
        for user in 0..5u64 {
            let name = format!("u{user}");
            let kind = if round % 2 == 0 {
                EventKind::Opened
            } else {
                EventKind::Closed
            };
            let e = ev(&engine, "bank", &name, kind, t + round * 10 + user);
            let seq = commit(&store, &engine, &[("bank", &name, e)]);
            expected.insert(event_id(seq, 0), (name, t + round * 10 + user));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !outbox_empty(&store),
        "nothing delivered while the receiver is down"
    );
    let up = receiver(&rt, Some(addr), Arc::new(|_| Answer::Status(200)));
    wait_until("100 deliveries", Duration::from_secs(20), || {
        up.distinct().len() == 100
    });
    wait_until("the outbox to empty", Duration::from_secs(10), || {
        outbox_empty(&store)
    });
    let got = up.deliveries();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut seen = HashSet::new();
    for d in &got {
        assert!(verify("s3cret", d));
        let (user, time) = expected.get(&d.id).expect("an expected id");
        assert_eq!(d.json["username"], user.as_str());
        if seen.insert(d.id.clone()) {
            let prev = last.insert(user.clone(), *time);
            assert!(prev.is_none_or(|p| p < *time), "per-token order for {user}");
        }
    }
    assert!(zoftoken_webhooks::dead_letters(&store, 10)
        .unwrap()
        .is_empty());
    pipeline.shutdown();
}

#[test]
fn a_restart_without_acknowledgements_redelivers_with_the_same_ids() {
    let rt = runtime();
    let recv = ok_receiver(&rt);
    let (store, engine) = setup(vec![service("bank", &recv.url(), "s3cret")]);
    let t = now_ms();
    let mut expected = HashSet::new();
    for i in 0..200u64 {
        let name = format!("u{}", i % 40);
        let seq = commit(
            &store,
            &engine,
            &[(
                "bank",
                &name,
                ev(&engine, "bank", &name, EventKind::Opened, t + i),
            )],
        );
        expected.insert(event_id(seq, 0));
    }
    // The first pipeline acknowledges nothing before it "crashes".
    let first = Pipeline::start(
        PipelineConfig {
            ack_interval: Duration::from_secs(3600),
            ..fast()
        },
        store.clone(),
        engine.clone(),
    )
    .unwrap();
    wait_until("some deliveries", Duration::from_secs(10), || {
        recv.distinct().len() >= 50
    });
    first.abandon();
    let before: Vec<Delivery> = recv.deliveries();
    assert_eq!(
        store.outbox(0, 1000).unwrap().len(),
        200,
        "no acknowledgement was written"
    );

    let second = Pipeline::start(fast(), store.clone(), engine.clone()).unwrap();
    wait_until("the outbox to empty", Duration::from_secs(20), || {
        outbox_empty(&store)
    });
    let all = recv.deliveries();
    assert_eq!(recv.distinct(), expected, "every event arrived");
    for d in &before {
        let again: Vec<&Delivery> = all[before.len()..]
            .iter()
            .filter(|x| x.id == d.id)
            .collect();
        assert_eq!(
            again.len(),
            1,
            "{} delivered again once, same webhook-id",
            d.id
        );
        assert_eq!(again[0].body, d.body, "same event");
        assert!(verify("s3cret", again[0]));
    }
    second.shutdown();
}

#[test]
fn gone_disables_the_endpoint_until_the_configuration_changes_or_a_replay() {
    let rt = runtime();
    let gone = Arc::new(Mutex::new(true));
    let g = gone.clone();
    let recv = receiver(
        &rt,
        None,
        Arc::new(move |_| {
            if *g.lock().unwrap() {
                Answer::Status(410)
            } else {
                Answer::Status(200)
            }
        }),
    );
    let (store, engine) = setup(vec![service("bank", &recv.url(), "s3cret")]);
    let pipeline = Pipeline::start(fast(), store.clone(), engine.clone()).unwrap();
    let t = now_ms();
    for i in 0..3 {
        commit(
            &store,
            &engine,
            &[(
                "bank",
                "ana",
                ev(&engine, "bank", "ana", EventKind::Opened, t + i),
            )],
        );
    }
    wait_until("three dead letters", Duration::from_secs(10), || {
        zoftoken_webhooks::dead_letters(&store, 10).unwrap().len() == 3
    });
    assert_eq!(
        recv.deliveries().len(),
        1,
        "one attempt, then the endpoint is disabled"
    );
    let disabled = zoftoken_webhooks::disabled_endpoints(&store).unwrap();
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0].service, "bank");
    assert_eq!(disabled[0].status, 410);
    let dead = zoftoken_webhooks::dead_letters(&store, 10).unwrap();
    assert_eq!(dead[0].last_status, Some(410));
    assert_eq!(dead[0].username.as_deref(), Some("ana"));
    // Still disabled: a new event is not attempted.
    commit(
        &store,
        &engine,
        &[(
            "bank",
            "ana",
            ev(&engine, "bank", "ana", EventKind::Closed, t + 9),
        )],
    );
    wait_until("a fourth dead letter", Duration::from_secs(10), || {
        zoftoken_webhooks::dead_letters(&store, 10).unwrap().len() == 4
    });
    assert_eq!(recv.deliveries().len(), 1);
    wait_until("the outbox to empty", Duration::from_secs(10), || {
        outbox_empty(&store)
    });

    // A new secret re-enables it; the dead letters come back by replay, same ids.
    *gone.lock().unwrap() = false;
    engine
        .reload_services(vec![service("bank", &recv.url(), "n3w-secret")])
        .unwrap();
    wait_until("re-enabled", Duration::from_secs(10), || {
        zoftoken_webhooks::disabled_endpoints(&store)
            .unwrap()
            .is_empty()
    });
    let ids: HashSet<String> = zoftoken_webhooks::dead_letters(&store, 10)
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert!(!zoftoken_webhooks::replay_dead_letter(&store, "msg_nonsense").unwrap());
    assert_eq!(
        zoftoken_webhooks::replay_all_dead_letters(&store).unwrap(),
        4
    );
    wait_until("four replays delivered", Duration::from_secs(10), || {
        recv.deliveries()
            .iter()
            .filter(|d| verify("n3w-secret", d))
            .count()
            == 4
    });
    let replayed: HashSet<String> = recv.deliveries()[1..]
        .iter()
        .map(|d| d.id.clone())
        .collect();
    assert_eq!(replayed, ids);
    assert!(recv.deliveries()[1..]
        .iter()
        .all(|d| verify("n3w-secret", d)));
    wait_until("replays acknowledged", Duration::from_secs(10), || {
        store.replays(10).unwrap().is_empty()
    });
    assert!(zoftoken_webhooks::dead_letters(&store, 10)
        .unwrap()
        .is_empty());
    pipeline.shutdown();
}

#[test]
fn too_many_requests_with_retry_after_is_honoured() {
    let rt = runtime();
    let recv = receiver(
        &rt,
        None,
        Arc::new(|n| {
            if n == 0 {
                Answer::RetryAfter(429, "1")
            } else {
                Answer::Status(200)
            }
        }),
    );
    let (store, engine) = setup(vec![service("bank", &recv.url(), "s3cret")]);
    let pipeline = Pipeline::start(fast(), store.clone(), engine.clone()).unwrap();
    commit(
        &store,
        &engine,
        &[(
            "bank",
            "ana",
            ev(&engine, "bank", "ana", EventKind::Opened, now_ms()),
        )],
    );
    wait_until("two attempts", Duration::from_secs(10), || {
        recv.deliveries().len() == 2
    });
    let d = recv.deliveries();
    assert_eq!(d[0].id, d[1].id, "the same event, same webhook-id");
    let waited = d[1].at - d[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "waited {waited:?} although the schedule says 30 ms"
    );
    pipeline.shutdown();
}

#[test]
fn an_exhausted_schedule_makes_a_dead_letter() {
    let rt = runtime();
    let recv = receiver(&rt, None, Arc::new(|_| Answer::Status(500)));
    let (store, engine) = setup(vec![service("bank", &recv.url(), "s3cret")]);
    let config = PipelineConfig {
        // Three attempts: at once, 100 ms later, and at the 200 ms bound.
        retry_delays: vec![Duration::from_millis(100)],
        retry_for: Duration::from_millis(200),
        jitter_percent: 0,
        ..fast()
    };
    let pipeline = Pipeline::start(config, store.clone(), engine.clone()).unwrap();
    let seq = commit(
        &store,
        &engine,
        &[(
            "bank",
            "ana",
            ev(&engine, "bank", "ana", EventKind::Blocked, now_ms()),
        )],
    );
    wait_until("a dead letter", Duration::from_secs(10), || {
        !zoftoken_webhooks::dead_letters(&store, 10)
            .unwrap()
            .is_empty()
    });
    let dead = zoftoken_webhooks::dead_letters(&store, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, event_id(seq, 0));
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].last_status, Some(500));
    assert_eq!(dead[0].kind, "blocked");
    assert_eq!(recv.deliveries().len(), 3);
    wait_until("the outbox to empty", Duration::from_secs(10), || {
        outbox_empty(&store)
    });
    assert!(zoftoken_webhooks::delete_dead_letter(&store, &dead[0].id).unwrap());
    assert!(zoftoken_webhooks::dead_letters(&store, 10)
        .unwrap()
        .is_empty());
    pipeline.shutdown();
}

#[test]
fn a_hanging_receiver_does_not_hold_up_another_service() {
    let rt = runtime();
    let hang = receiver(&rt, None, Arc::new(|_| Answer::Hang));
    let fine = ok_receiver(&rt);
    let (store, engine) = setup(vec![
        service("slow", &hang.url(), "a"),
        service("fast", &fine.url(), "b"),
    ]);
    let config = PipelineConfig {
        attempt_timeout: Duration::from_secs(60),
        concurrency_per_endpoint: 4,
        ..fast()
    };
    let pipeline = Pipeline::start(config, store.clone(), engine.clone()).unwrap();
    let t = now_ms();
    for i in 0..50u64 {
        let u = format!("u{i}");
        commit(
            &store,
            &engine,
            &[
                (
                    "slow",
                    &u,
                    ev(&engine, "slow", &u, EventKind::Opened, t + i),
                ),
                (
                    "fast",
                    &u,
                    ev(&engine, "fast", &u, EventKind::Opened, t + i),
                ),
            ],
        );
    }
    wait_until("the other service's 50", Duration::from_secs(10), || {
        fine.distinct().len() == 50
    });
    assert!(fine.deliveries().iter().all(|d| verify("b", d)));
    assert!(hang.deliveries().is_empty());
    assert!(
        !outbox_empty(&store),
        "the hanging service's events are kept"
    );
    pipeline.shutdown();
}

/// Takes an outbox commit out of sight (as if its write were still in flight).
fn hide(store: &Store, seq: u64) -> Vec<u8> {
    use zoftoken_storage::{Cf, WriteBatch};
    let v = store
        .kv()
        .get(Cf::Outbox, &seq.to_be_bytes())
        .unwrap()
        .unwrap();
    let mut b = WriteBatch::new();
    b.delete(Cf::Outbox, seq.to_be_bytes());
    store.kv().write(&b, Durability::Wal).unwrap();
    v
}

fn unhide(store: &Store, seq: u64, v: &[u8]) {
    use zoftoken_storage::{Cf, WriteBatch};
    let mut b = WriteBatch::new();
    b.put(Cf::Outbox, seq.to_be_bytes(), v);
    store.kv().write(&b, Durability::Wal).unwrap();
}

/// A key-value store whose next write, once armed, waits until released: a commit that
/// becomes visible after a later one (two concurrent commits reaching the disk in the other
/// order than their sequence numbers).
struct HeldKv {
    inner: MemoryKv,
    state: Mutex<Hold>,
    changed: std::sync::Condvar,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hold {
    Off,
    Armed,
    Holding,
    Released,
}

impl HeldKv {
    fn new() -> HeldKv {
        HeldKv {
            inner: MemoryKv::new(),
            state: Mutex::new(Hold::Off),
            changed: std::sync::Condvar::new(),
        }
    }

    fn set(&self, to: Hold) {
        *self.state.lock().unwrap() = to;
        self.changed.notify_all();
    }

    fn wait_for(&self, want: Hold) {
        let mut g = self.state.lock().unwrap();
        while *g != want {
            g = self.changed.wait(g).unwrap();
        }
    }
}

impl zoftoken_storage::KvStore for HeldKv {
    fn write(
        &self,
        batch: &zoftoken_storage::WriteBatch,
        durability: Durability,
    ) -> Result<(), zoftoken_storage::KvError> {
        let held = {
            let mut g = self.state.lock().unwrap();
            if *g == Hold::Armed {
                *g = Hold::Holding;
                self.changed.notify_all();
                true
            } else {
                false
            }
        };
        if held {
            self.wait_for(Hold::Released);
        }
        self.inner.write(batch, durability)
    }

    fn compare_and_put(
        &self,
        cf: zoftoken_storage::Cf,
        key: &[u8],
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, zoftoken_storage::KvError> {
        self.inner.compare_and_put(cf, key, expected, value)
    }

    fn get(
        &self,
        cf: zoftoken_storage::Cf,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, zoftoken_storage::KvError> {
        self.inner.get(cf, key)
    }

    fn scan(
        &self,
        cf: zoftoken_storage::Cf,
        start: &[u8],
        end: Option<&[u8]>,
        visit: zoftoken_storage::kv::Visitor<'_>,
    ) -> Result<(), zoftoken_storage::KvError> {
        self.inner.scan(cf, start, end, visit)
    }

    fn last(
        &self,
        cf: zoftoken_storage::Cf,
    ) -> Result<Option<zoftoken_storage::kv::KeyValue>, zoftoken_storage::KvError> {
        self.inner.last(cf)
    }

    fn flush(&self) -> Result<(), zoftoken_storage::KvError> {
        self.inner.flush()
    }
}

#[test]
fn a_commit_that_becomes_visible_late_below_later_ones_is_delivered() {
    let rt = runtime();
    let recv = ok_receiver(&rt);
    let kv = Arc::new(HeldKv::new());
    let store =
        Arc::new(Store::open(kv.clone(), MasterKey::from_bytes([9; 32]), Durability::Wal).unwrap());
    let engine = Arc::new(
        Engine::new(EngineConfig::new(
            vec![service("bank", &recv.url(), "s3cret")],
            7,
            [1; 32],
        ))
        .unwrap(),
    );
    // Slow polling: the reader reads when a write raises the outbox watermark.
    let config = PipelineConfig {
        poll_interval: Duration::from_secs(30),
        ..fast()
    };
    let pipeline = Pipeline::start(config, store.clone(), engine.clone()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = now_ms();
    let event = |u: &str, i: u64| ev(&engine, "bank", u, EventKind::Opened, t + i);
    let a = commit(&store, &engine, &[("bank", "a", event("a", 0))]);
    // Delivered and acknowledged first: the only write from here on is b's.
    wait_until("a", Duration::from_secs(10), || {
        recv.distinct().len() == 1 && outbox_empty(&store)
    });
    // b's write is held after its sequence number was taken; c's, later, lands first.
    kv.set(Hold::Armed);
    let b = std::thread::spawn({
        let (store, engine, e) = (store.clone(), engine.clone(), event("b", 1));
        move || commit(&store, &engine, &[("bank", "b", e)])
    });
    kv.wait_for(Hold::Holding);
    let c = commit(&store, &engine, &[("bank", "c", event("c", 2))]);
    wait_until("a and c", Duration::from_secs(10), || {
        recv.distinct().len() == 2
    });
    let got = recv.distinct();
    assert!(got.contains(&event_id(a, 0)) && got.contains(&event_id(c, 0)));
    // b becomes visible below c: found, delivered.
    kv.set(Hold::Released);
    let b = b.join().unwrap();
    assert!(a < b && b < c, "{a} < {b} < {c}");
    wait_until("b", Duration::from_secs(10), || recv.distinct().len() == 3);
    assert!(recv.distinct().contains(&event_id(b, 0)));
    wait_until("the outbox to empty", Duration::from_secs(10), || {
        outbox_empty(&store)
    });
    pipeline.shutdown();
}

#[test]
fn the_periodic_rescan_finds_a_commit_missed_below_the_start() {
    let rt = runtime();
    let recv = ok_receiver(&rt);
    let (store, engine) = setup(vec![service("bank", &recv.url(), "s3cret")]);
    let t = now_ms();
    let mut seqs = Vec::new();
    for (i, u) in ["a", "b", "c"].into_iter().enumerate() {
        let e = ev(&engine, "bank", u, EventKind::Opened, t + i as u64);
        seqs.push(commit(&store, &engine, &[("bank", u, e)]));
    }
    let hidden = hide(&store, seqs[0]);
    let config = PipelineConfig {
        rescan_interval: Duration::from_millis(200),
        ..fast()
    };
    let pipeline = Pipeline::start(config, store.clone(), engine.clone()).unwrap();
    wait_until("b and c", Duration::from_secs(10), || {
        recv.distinct().len() == 2
    });
    unhide(&store, seqs[0], &hidden);
    wait_until("a", Duration::from_secs(10), || recv.distinct().len() == 3);
    wait_until("the outbox to empty", Duration::from_secs(10), || {
        outbox_empty(&store)
    });
    assert_eq!(recv.deliveries().len(), 3, "nothing twice");
    pipeline.shutdown();
}

/// A CA and a server certificate for 127.0.0.1, made with the `openssl` command.
#[test]
fn https_with_a_ca_file_is_delivered_and_an_unknown_issuer_is_not() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let dir = std::env::temp_dir().join(format!("zoftoken-webhooks-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    zoftoken_testkit::make_certs(&dir, &["DNS:localhost", "IP:127.0.0.1"]);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("srv.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("srv.key")).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let rt = runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = Arc::new(Mutex::new(Vec::<Value>::new()));
    let b2 = bodies.clone();
    rt.spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (acceptor, bodies) = (acceptor.clone(), b2.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let bodies = bodies.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        bodies
                            .lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let url = format!("https://127.0.0.1:{}/hook", addr.port());
    let mut trusted = service("trusted", &url, "s1");
    trusted.webhook.as_mut().unwrap().ca_file = Some(dir.join("ca.pem").display().to_string());
    let untrusted = service("untrusted", &url, "s2");
    let (store, engine) = setup(vec![trusted, untrusted]);
    let config = PipelineConfig {
        retry_delays: vec![Duration::from_millis(20)],
        retry_for: Duration::from_millis(100),
        ..fast()
    };
    let pipeline = Pipeline::start(config, store.clone(), engine.clone()).unwrap();
    let t = now_ms();
    commit(
        &store,
        &engine,
        &[
            (
                "trusted",
                "ana",
                ev(&engine, "trusted", "ana", EventKind::Opened, t),
            ),
            (
                "untrusted",
                "ana",
                ev(&engine, "untrusted", "ana", EventKind::Opened, t),
            ),
        ],
    );
    wait_until(
        "the untrusted one's dead letter",
        Duration::from_secs(10),
        || {
            !zoftoken_webhooks::dead_letters(&store, 10)
                .unwrap()
                .is_empty()
        },
    );
    wait_until("the trusted delivery", Duration::from_secs(10), || {
        !bodies.lock().unwrap().is_empty()
    });
    let got = bodies.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["service"], "trusted");
    let dead = zoftoken_webhooks::dead_letters(&store, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].service, "untrusted");
    assert_eq!(dead[0].last_status, None);
    assert!(
        dead[0].last_error.to_lowercase().contains("certificate"),
        "{}",
        dead[0].last_error
    );
    pipeline.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A receiver that answers after `delay` and records the most requests it had at once; the
/// behaviour decides the status from the body (a 429 comes with `Retry-After: 1`); only
/// successes are logged.
fn slow_receiver(
    rt: &tokio::runtime::Runtime,
    delay: Duration,
    status: Arc<dyn Fn(&Value) -> u16 + Send + Sync>,
) -> (Receiver, Arc<Mutex<(usize, usize)>>) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let conc = Arc::new(Mutex::new((0usize, 0usize)));
    let (log2, conc2) = (log.clone(), conc.clone());
    let task = rt.spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (log, conc, status) = (log2.clone(), conc2.clone(), status.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (log, conc, status) = (log.clone(), conc.clone(), status.clone());
                    async move {
                        {
                            let mut c = conc.lock().unwrap();
                            c.0 += 1;
                            c.1 = c.1.max(c.0);
                        }
                        let id = req.headers()["webhook-id"].to_str().unwrap().to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                        let json: Value = serde_json::from_slice(&body).unwrap();
                        tokio::time::sleep(delay).await;
                        let code = status(&json);
                        if code < 300 {
                            log.lock().unwrap().push(Delivery {
                                id,
                                timestamp: String::new(),
                                signature: String::new(),
                                body,
                                json,
                                at: Instant::now(),
                            });
                        }
                        conc.lock().unwrap().0 -= 1;
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = code.try_into().unwrap();
                        if code == 429 {
                            r.headers_mut().insert("retry-after", "1".parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (Receiver { addr, log, task }, conc)
}

#[test]
fn concurrency_per_endpoint_is_bounded_and_used() {
    let rt = runtime();
    let (recv, conc) = slow_receiver(&rt, Duration::from_millis(40), Arc::new(|_| 200));
    let (store, engine) = setup(vec![service("bank", &recv.url(), "s")]);
    let config = PipelineConfig {
        concurrency_per_endpoint: 3,
        ..fast()
    };
    let pipeline = Pipeline::start(config, store.clone(), engine.clone()).unwrap();
    let t = now_ms();
    let events: Vec<(String, Event)> = (0..30u64)
        .map(|i| {
            let u = format!("u{i}");
            let e = ev(&engine, "bank", &u, EventKind::Opened, t + i);
            (u, e)
        })
        .collect();
    let refs: Vec<(&str, &str, Event)> = events
        .iter()
        .map(|(u, e)| ("bank", u.as_str(), e.clone()))
        .collect();
    commit(&store, &engine, &refs);
    wait_until("30 deliveries", Duration::from_secs(20), || {
        recv.distinct().len() == 30
    });
    let max = conc.lock().unwrap().1;
    assert_eq!(
        max, 3,
        "at most three at once, and three tokens in parallel"
    );
    pipeline.shutdown();
}

#[test]
fn a_failing_event_holds_back_only_its_own_token() {
    let rt = runtime();
    // Ana's first event fails until the clock passes `until`.
    let until = Arc::new(Mutex::new(Instant::now() + Duration::from_millis(2000)));
    let u2 = until.clone();
    let (recv, _) = slow_receiver(
        &rt,
        Duration::ZERO,
        Arc::new(move |j| {
            if j["username"] == "ana"
                && j["type"] == "opened"
                && Instant::now() < *u2.lock().unwrap()
            {
                500
            } else {
                200
            }
        }),
    );
    let (store, engine) = setup(vec![service("bank", &recv.url(), "s")]);
    let pipeline = Pipeline::start(fast(), store.clone(), engine.clone()).unwrap();
    let t = now_ms();
    commit(
        &store,
        &engine,
        &[
            (
                "bank",
                "ana",
                ev(&engine, "bank", "ana", EventKind::Opened, t),
            ),
            (
                "bank",
                "ana",
                ev(&engine, "bank", "ana", EventKind::Closed, t + 1),
            ),
            (
                "bank",
                "bob",
                ev(&engine, "bank", "bob", EventKind::Opened, t + 2),
            ),
            (
                "bank",
                "bob",
                ev(&engine, "bank", "bob", EventKind::Closed, t + 3),
            ),
        ],
    );
    wait_until("bob's two events", Duration::from_secs(5), || {
        recv.distinct().len() == 2
    });
    let got = recv.deliveries();
    assert!(
        got.iter().all(|d| d.json["username"] == "bob"),
        "ana is held back"
    );
    assert!(
        Instant::now() < *until.lock().unwrap(),
        "bob did not wait for ana"
    );
    wait_until("all four", Duration::from_secs(10), || {
        recv.distinct().len() == 4
    });
    let ana: Vec<String> = recv
        .deliveries()
        .iter()
        .filter(|d| d.json["username"] == "ana")
        .map(|d| d.json["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ana, ["opened", "closed"], "ana's events in order");
    pipeline.shutdown();
}

#[test]
fn retry_after_for_longer_than_a_count_of_attempts_dead_letters_nothing_and_keeps_order() {
    let rt = runtime();
    // 429 with `Retry-After: 1` for 4.5 s (the old count-based schedule, eight attempts,
    // ran out long before), then 200.
    let until = Instant::now() + Duration::from_millis(4500);
    let tries = Arc::new(Mutex::new(0usize));
    let t2 = tries.clone();
    let (limited, _) = slow_receiver(
        &rt,
        Duration::ZERO,
        Arc::new(move |_| {
            *t2.lock().unwrap() += 1;
            if Instant::now() < until {
                429
            } else {
                200
            }
        }),
    );
    let (store, engine) = setup(vec![service("bank", &limited.url(), "s3cret")]);
    let config = PipelineConfig {
        // Scaled down: a short backoff, retried for 20 s.
        retry_delays: vec![Duration::from_millis(20)],
        retry_for: Duration::from_secs(20),
        ..fast()
    };
    let pipeline = Pipeline::start(config, store.clone(), engine.clone()).unwrap();
    let t = now_ms();
    let mut made = Vec::new();
    for (i, (user, kind)) in [
        ("ana", EventKind::Opened),
        ("bob", EventKind::Opened),
        ("ana", EventKind::Closed),
        ("ana", EventKind::Opened),
        ("bob", EventKind::Closed),
    ]
    .into_iter()
    .enumerate()
    {
        let e = ev(&engine, "bank", user, kind, t + i as u64);
        made.push(e.sequence);
        commit(&store, &engine, &[("bank", user, e)]);
    }
    wait_until("five deliveries", Duration::from_secs(30), || {
        limited.distinct().len() == 5
    });
    assert!(zoftoken_webhooks::dead_letters(&store, 10)
        .unwrap()
        .is_empty());
    wait_until("the outbox to empty", Duration::from_secs(10), || {
        outbox_empty(&store)
    });
    // Each token's events arrived in the order they were made, by sequence number.
    let ok = limited.deliveries();
    assert_eq!(ok.len(), 5, "each once");
    for user in ["ana", "bob"] {
        let seqs: Vec<u64> = ok
            .iter()
            .filter(|d| d.json["username"] == user)
            .map(|d| d.json["sequence"].as_u64().unwrap())
            .collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "{user}'s events in order");
    }
    let all: HashSet<u64> = ok
        .iter()
        .map(|d| d.json["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(all, made.into_iter().collect());
    // The receiver's pace was kept: about one attempt per token and second while limited.
    let n = *tries.lock().unwrap();
    assert!((5..=30).contains(&n), "{n} attempts");
    pipeline.shutdown();
}

#[test]
fn a_dead_letter_does_not_hold_back_its_token_and_its_replay_is_recognisably_older() {
    let rt = runtime();
    // Ana's `opened` fails until told otherwise; everything else succeeds.
    let failing = Arc::new(Mutex::new(true));
    let f2 = failing.clone();
    let (recv, _) = slow_receiver(
        &rt,
        Duration::ZERO,
        Arc::new(move |j| {
            if j["type"] == "opened" && *f2.lock().unwrap() {
                500
            } else {
                200
            }
        }),
    );
    let (store, engine) = setup(vec![service("bank", &recv.url(), "s")]);
    let config = PipelineConfig {
        retry_delays: vec![Duration::from_millis(20)],
        retry_for: Duration::from_millis(300),
        ..fast()
    };
    let pipeline = Pipeline::start(config, store.clone(), engine.clone()).unwrap();
    let t = now_ms();
    let opened = ev(&engine, "bank", "ana", EventKind::Opened, t);
    let closed = ev(&engine, "bank", "ana", EventKind::Closed, t + 1);
    commit(&store, &engine, &[("bank", "ana", opened.clone())]);
    wait_until("the dead letter", Duration::from_secs(10), || {
        zoftoken_webhooks::dead_letters(&store, 10).unwrap().len() == 1
    });
    let dead = zoftoken_webhooks::dead_letters(&store, 10).unwrap();
    assert_eq!(dead[0].sequence, opened.sequence);
    // The later event is delivered although the earlier one is a dead letter.
    commit(&store, &engine, &[("bank", "ana", closed.clone())]);
    wait_until("the close", Duration::from_secs(10), || {
        recv.deliveries().len() == 1
    });
    *failing.lock().unwrap() = false;
    assert!(zoftoken_webhooks::replay_dead_letter(&store, &dead[0].id).unwrap());
    wait_until("the replay", Duration::from_secs(10), || {
        recv.deliveries().len() == 2
    });
    let got = recv.deliveries();
    assert_eq!(
        (got[0].json["type"].as_str(), got[1].json["type"].as_str()),
        (Some("closed"), Some("opened")),
        "the replay arrives after the newer event"
    );
    // A receiver keeping the highest number per token ignores the replay.
    let newest = got[0].json["sequence"].as_u64().unwrap();
    let replayed = got[1].json["sequence"].as_u64().unwrap();
    assert_eq!((newest, replayed), (closed.sequence, opened.sequence));
    assert!(replayed < newest, "the replayed dead letter is older");
    pipeline.shutdown();
}

#[test]
fn an_unusable_ca_file_fails_only_its_service() {
    let rt = runtime();
    let fine = ok_receiver(&rt);
    let bad_url = "https://127.0.0.1:9/hook";
    let mut zero = service("zero", bad_url, "a");
    zero.webhook.as_mut().unwrap().ca_file = Some("/dev/zero".into());
    let mut dir = service("dir", bad_url, "b");
    dir.webhook.as_mut().unwrap().ca_file = Some(std::env::temp_dir().display().to_string());
    let (store, engine) = setup(vec![zero, dir, service("fine", &fine.url(), "c")]);
    let config = PipelineConfig {
        retry_delays: vec![Duration::from_millis(20)],
        retry_for: Duration::from_millis(100),
        ..fast()
    };
    let pipeline = Pipeline::start(config, store.clone(), engine.clone()).unwrap();
    let t = now_ms();
    commit(
        &store,
        &engine,
        &[
            (
                "zero",
                "ana",
                ev(&engine, "zero", "ana", EventKind::Opened, t),
            ),
            (
                "dir",
                "ana",
                ev(&engine, "dir", "ana", EventKind::Opened, t),
            ),
            (
                "fine",
                "ana",
                ev(&engine, "fine", "ana", EventKind::Opened, t),
            ),
        ],
    );
    wait_until("two dead letters", Duration::from_secs(10), || {
        zoftoken_webhooks::dead_letters(&store, 10).unwrap().len() == 2
    });
    for d in zoftoken_webhooks::dead_letters(&store, 10).unwrap() {
        assert!(
            d.last_error.contains("not a regular file"),
            "{}: {}",
            d.service,
            d.last_error
        );
    }
    wait_until("the other service", Duration::from_secs(10), || {
        fine.distinct().len() == 1
    });
    pipeline.shutdown();
}
