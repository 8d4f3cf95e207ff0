//! Standard authenticator (TOTP) tokens survive commits, restarts and export/import: the kind,
//! the secret and the last accepted step (replay protection) all come back. Runs on the
//! in-memory store.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::sync::Arc;

use zoftoken_engine::*;
use zoftoken_proto::totp::totp_code;
use zoftoken_proto::TokenId;
use zoftoken_storage::{Durability, LoadReport, MasterKey, MemoryKv, Store};
use zoftoken_testkit::{Harness, T0};

const KEY: [u8; 32] = [4; 32];

/// A server on the database: the test kit's harness on a store.
type Server = Harness<Store>;

fn services() -> Vec<ServiceConfig> {
    let mut bank = ServiceConfig::new("bank", &["127.0.0.1:4500"]);
    bank.window_s = 600;
    vec![bank]
}

/// A server of `epoch` started on `kv` at `now`, and what it loaded.
fn start(kv: &MemoryKv, epoch: u32, now: u64) -> (Server, LoadReport) {
    let store = Store::open(
        Arc::new(kv.clone()),
        MasterKey::from_bytes(KEY),
        Durability::Wal,
    )
    .unwrap();
    let engine = Engine::new(EngineConfig::new(services(), epoch, [epoch as u8; 32])).unwrap();
    let report = store.load(&engine, now, 2, &|_| {}).unwrap();
    (Harness::with_sink(Arc::new(engine), store, now), report)
}

/// One-time code validation, committed.
trait Validate {
    fn validate(&mut self, id: &TokenId, code: &str) -> OfflineOutcome;
}

impl Validate for Server {
    fn validate(&mut self, id: &TokenId, code: &str) -> OfflineOutcome {
        self.admin(|e, now, b| e.validate_code(now, id, code, b))
            .unwrap()
    }
}

/// The 20-byte key from the enrollment's base32 secret.
fn key_of(t: &TotpEnrollment) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in t.secret_base32.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32"),
        };
        buffer = (buffer << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

const ACCEPTED: OfflineOutcome = OfflineOutcome::Accepted { duress: false };

#[test]
fn a_totp_token_survives_a_restart_with_its_kind_and_last_step() {
    let kv = MemoryKv::new();
    let (mut s, _) = start(&kv, 1, T0);
    let t = s
        .admin(|e, now, b| e.enroll_totp(now, "bank", "alice", b))
        .unwrap();
    let key = key_of(&t);
    let code = totp_code(&key, s.now / 1000, 30, 6);
    assert_eq!(s.validate(&t.token_id, &code), ACCEPTED);
    assert_eq!(
        s.sink.token_info(&t.token_id).unwrap(),
        Some(("bank".to_owned(), "alice".to_owned()))
    );
    drop(s);

    let (mut s, report) = start(&kv, 2, T0 + 5_000);
    assert_eq!(report.tokens, 1);
    let st = s.engine.status(s.now, "bank", "alice").unwrap();
    assert_eq!(
        (st.kind, st.state, st.failures),
        (TokenKind::Totp, TokenState::Closed, 0)
    );
    // The step used before the restart is still used.
    assert_eq!(
        s.validate(&t.token_id, &code),
        OfflineOutcome::Rejected { attempts_left: 2 }
    );
    s.now += 30_000;
    let next = totp_code(&key, s.now / 1000, 30, 6);
    assert_eq!(s.validate(&t.token_id, &next), ACCEPTED);
    let state = s.sink.token_state(&t.token_id).unwrap().unwrap();
    assert_eq!(state.otp_last_step, s.now / 1000 / 30);
    assert_eq!(state.failures, 0);
    let check = s.sink.check().unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    // The admin commands' single-token load brings the kind and the last step too.
    let one = Engine::new(EngineConfig::new(services(), 9, [9; 32])).unwrap();
    assert!(s.sink.load_one(&one, s.now, &t.token_id).unwrap());
    assert_eq!(
        one.status_by_id(s.now, &t.token_id).unwrap().kind,
        TokenKind::Totp
    );
    let mut batch = Batch::new();
    assert_eq!(
        one.validate_code(s.now, &t.token_id, &next, &mut batch),
        Ok(OfflineOutcome::Rejected { attempts_left: 2 })
    );

    // Export, import into a new database, load: still TOTP, still the same last step.
    let mut export = Vec::new();
    s.sink.export(&mut export).unwrap();
    let now = s.now;
    drop(s);
    let kv2 = MemoryKv::new();
    {
        let store = Store::open(
            Arc::new(kv2.clone()),
            MasterKey::from_bytes(KEY),
            Durability::Wal,
        )
        .unwrap();
        store.import(&mut export.as_slice()).unwrap();
    }
    let (mut s, report) = start(&kv2, 3, now);
    assert_eq!(report.tokens, 1);
    assert_eq!(
        s.engine.status_by_id(s.now, &t.token_id).unwrap().kind,
        TokenKind::Totp
    );
    assert_eq!(
        s.validate(&t.token_id, &next),
        OfflineOutcome::Rejected { attempts_left: 2 }
    );
    s.now += 30_000;
    let third = totp_code(&key, s.now / 1000, 30, 6);
    assert_eq!(s.validate(&t.token_id, &third), ACCEPTED);
}

#[test]
fn app_and_totp_tokens_load_side_by_side_and_a_delete_is_durable() {
    let kv = MemoryKv::new();
    let (mut s, _) = start(&kv, 1, T0);
    let t = s
        .admin(|e, now, b| e.enroll_totp(now, "bank", "alice", b))
        .unwrap();
    // An app token, as the load generator's records make it (paired, closed).
    let app_id = TokenId::derive("bank", "bob");
    let mut status = TokenStateRecord::new(app_id);
    status.version = 1;
    let record = TokenRecord {
        kind: TokenKind::App,
        service: 0,
        secret: zoftoken_proto::SecretBytes::new([7; 32]),
        pin_verifier: zoftoken_proto::SecretBytes::new([8; 32]),
        duress_verifier: None,
        status,
    };
    s.sink
        .commit(
            &[
                Mutation::TokenCreated {
                    token_id: app_id,
                    service: Arc::from("bank"),
                    username: "bob".into(),
                },
                Mutation::Token(Box::new(record)),
            ],
            &*s.engine,
        )
        .unwrap();
    drop(s);
    let (mut s, report) = start(&kv, 2, T0);
    assert_eq!(report.tokens, 2);
    assert_eq!(
        s.engine.status_by_id(s.now, &app_id).unwrap().kind,
        TokenKind::App
    );
    assert_eq!(
        s.engine.status_by_id(s.now, &t.token_id).unwrap().kind,
        TokenKind::Totp
    );
    // A TOTP re-enrollment of the app token is durable as TOTP.
    let bob = s
        .admin(|e, now, b| e.enroll_totp(now, "bank", "bob", b))
        .unwrap();
    s.admin(|e, now, b| e.delete(now, &t.token_id, b)).unwrap();
    drop(s);
    let (mut s, report) = start(&kv, 3, T0);
    assert_eq!(report.tokens, 1);
    assert_eq!(
        s.engine.status(s.now, "bank", "alice"),
        Err(EngineError::UnknownToken)
    );
    assert_eq!(
        s.engine.status_by_id(s.now, &app_id).unwrap().kind,
        TokenKind::Totp
    );
    let code = totp_code(&key_of(&bob), s.now / 1000, 30, 6);
    assert_eq!(s.validate(&app_id, &code), ACCEPTED);
}
