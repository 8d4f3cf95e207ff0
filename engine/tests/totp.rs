//! Standard authenticator (RFC 6238 TOTP) tokens on a virtual clock. Codes are computed by an
//! independent implementation written here (HMAC-SHA-1 through `ring` directly), not by the
//! engine's own.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::net::SocketAddr;

use zoftoken_engine::*;
use zoftoken_proto::codes::OtpParams;
use zoftoken_proto::packet::seal_request;
use zoftoken_proto::wire::{Alphabet, MsgType};
use zoftoken_proto::{DropReason, TokenId, TokenSecret};
use zoftoken_testkit::Harness;

/// RFC 6238 with HMAC-SHA-1 and T0 = 0, written from the RFC (dynamic truncation of RFC 4226
/// §5.3).
fn reference_totp(key: &[u8], unix_s: u64, period_s: u64, digits: u32) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let mac = ring::hmac::sign(&k, &(unix_s / period_s).to_be_bytes());
    let m = mac.as_ref();
    let offset = usize::from(m[19] & 0x0f);
    let binary = u32::from_be_bytes([
        m[offset] & 0x7f,
        m[offset + 1],
        m[offset + 2],
        m[offset + 3],
    ]);
    format!(
        "{:0width$}",
        binary % 10u32.pow(digits),
        width = digits as usize
    )
}

/// RFC 4648 base32 without padding, decoded.
fn base32_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32: {c}"),
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

/// `(label, query parameters)` of an `otpauth://totp/` URI.
fn parse_uri(uri: &str) -> (String, Vec<(String, String)>) {
    let rest = uri
        .strip_prefix("otpauth://totp/")
        .expect("otpauth://totp/");
    let (label, query) = rest.split_once('?').expect("a query");
    let params = query
        .split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').expect("key=value");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    (label.to_owned(), params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
    let found: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(found.len(), 1, "exactly one {name}");
    found[0]
}

fn services() -> Vec<ServiceConfig> {
    let mut bank = ServiceConfig::new("bank", &["127.0.0.1:4500"]);
    bank.window_s = 600;
    let mut eight = ServiceConfig::new("eight", &["127.0.0.1:4500"]);
    eight.otp = OtpParams {
        length: 8,
        period_s: 60,
        alphabet: Alphabet::Digits,
    };
    let mut letters = ServiceConfig::new("letters", &["127.0.0.1:4500"]);
    letters.otp = OtpParams {
        length: 8,
        period_s: 60,
        alphabet: Alphabet::Base32,
    };
    vec![bank, eight, letters]
}

/// The engine and its log in memory, on a virtual clock (the test kit's harness).
type World = Harness;

fn world() -> World {
    World::new(EngineConfig::new(services(), 7, [9; 32]))
}

/// What the TOTP tests add to the harness.
trait TotpWorld {
    fn validate(&mut self, id: &TokenId, code: &str) -> Result<OfflineOutcome, EngineError>;
    /// The last full record committed for the token.
    fn record(&self, id: &TokenId) -> TokenRecord;
    /// The last state committed for the token.
    fn state(&self, id: &TokenId) -> TokenStateRecord;
    fn now_s(&self) -> u64;
}

impl TotpWorld for World {
    fn validate(&mut self, id: &TokenId, code: &str) -> Result<OfflineOutcome, EngineError> {
        let code = code.to_owned();
        self.admin(|e, now, b| e.validate_code(now, id, &code, b))
    }

    fn record(&self, id: &TokenId) -> TokenRecord {
        self.sink
            .log
            .iter()
            .rev()
            .find_map(|m| match m {
                Mutation::Token(r) if r.token_id() == *id => Some((**r).clone()),
                _ => None,
            })
            .expect("a token record")
    }

    fn state(&self, id: &TokenId) -> TokenStateRecord {
        self.sink
            .log
            .iter()
            .rev()
            .find_map(|m| match m {
                Mutation::Token(r) if r.token_id() == *id => Some(r.status),
                Mutation::TokenState(s) if s.token_id == *id => Some(*s),
                _ => None,
            })
            .expect("a state record")
    }

    fn now_s(&self) -> u64 {
        self.now / 1000
    }
}

/// The token's 20-byte HMAC key, from the enrollment's base32 secret.
fn key_of(enrollment: &TotpEnrollment) -> Vec<u8> {
    base32_decode(&enrollment.secret_base32)
}

#[test]
fn the_reference_implementation_matches_rfc6238() {
    // Checks the test's own RFC 6238 code before trusting it (Appendix B, SHA-1).
    let key = b"12345678901234567890";
    assert_eq!(reference_totp(key, 59, 30, 8), "94287082");
    assert_eq!(reference_totp(key, 1_111_111_109, 30, 8), "07081804");
    assert_eq!(reference_totp(key, 20_000_000_000, 30, 8), "65353130");
    assert_eq!(base32_decode("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"), key);
}

#[test]
fn enrollment_hands_out_a_well_formed_uri_and_a_usable_closed_token() {
    let mut w = world();
    let t = w
        .admin(|e, now, b| e.enroll_totp(now, "bank", "alice@example.com", b))
        .unwrap();
    assert_eq!(t.token_id, TokenId::derive("bank", "alice@example.com"));
    let (label, params) = parse_uri(&t.otpauth_uri);
    assert_eq!(label, "bank:alice%40example.com");
    assert_eq!(param(&params, "issuer"), "bank");
    assert_eq!(param(&params, "algorithm"), "SHA1");
    assert_eq!(param(&params, "digits"), "6");
    assert_eq!(param(&params, "period"), "30");
    assert_eq!(param(&params, "secret"), t.secret_base32.as_str());
    assert!(!t.secret_base32.contains('='));
    let key = key_of(&t);
    assert_eq!(key.len(), 20, "160-bit secret");
    // The secret is the entry's: the persisted record holds the same key.
    let record = w.record(&t.token_id);
    assert_eq!(record.kind, TokenKind::Totp);
    assert_eq!(&record.secret.expose()[..20], key.as_slice());
    assert_eq!(record.pin_verifier.expose(), &[0u8; 32]);
    assert_eq!(record.duress_verifier, None);
    assert!(w.sink.log.iter().any(|m| matches!(
        m,
        Mutation::TokenCreated { token_id, username, .. }
            if *token_id == t.token_id && username == "alice@example.com"
    )));
    assert_eq!(w.kinds(), vec![EventKind::Enrolled]);
    // The Debug form does not show the secret.
    let debug = format!("{t:?}");
    assert!(!debug.contains(t.secret_base32.as_str()), "{debug}");
    // Usable at once: closed, and a code validates.
    let st = w.engine.status(w.now, "bank", "alice@example.com").unwrap();
    assert_eq!(
        (st.kind, st.state, st.failures),
        (TokenKind::Totp, TokenState::Closed, 0)
    );
    let code = reference_totp(&key, w.now_s(), 30, 6);
    assert_eq!(
        w.validate(&t.token_id, &code),
        Ok(OfflineOutcome::Accepted { duress: false })
    );
    // It never opens by a code.
    let st = w.engine.status_by_id(w.now, &t.token_id).unwrap();
    assert_eq!(st.state, TokenState::Closed);
    // Two enrollments draw different secrets.
    let t2 = w
        .admin(|e, now, b| e.enroll_totp(now, "bank", "bob", b))
        .unwrap();
    assert_ne!(key_of(&t2), key);
}

#[test]
fn a_code_is_never_accepted_twice_and_a_replay_is_a_failure() {
    let mut w = world();
    let t = w
        .admin(|e, now, b| e.enroll_totp(now, "bank", "alice", b))
        .unwrap();
    let key = key_of(&t);
    let code = reference_totp(&key, w.now_s(), 30, 6);
    assert_eq!(
        w.validate(&t.token_id, &code),
        Ok(OfflineOutcome::Accepted { duress: false })
    );
    let step = w.now_s() / 30;
    assert_eq!(w.state(&t.token_id).otp_last_step, step);
    w.kinds();
    // Same code, same step: refused, and counted as a failed attempt.
    assert_eq!(
        w.validate(&t.token_id, &code),
        Ok(OfflineOutcome::Rejected { attempts_left: 2 })
    );
    assert_eq!(w.kinds(), vec![EventKind::FailedAttempt]);
    // Still refused 20 s later (same step, within the ±1 window of the next one).
    w.now += 20_000;
    assert_eq!(
        w.validate(&t.token_id, &code),
        Ok(OfflineOutcome::Rejected { attempts_left: 1 })
    );
    // The next step's code is accepted and resets the failures.
    let next = reference_totp(&key, (step + 1) * 30, 30, 6);
    assert_eq!(
        w.validate(&t.token_id, &next),
        Ok(OfflineOutcome::Accepted { duress: false })
    );
    assert_eq!(
        w.engine.status_by_id(w.now, &t.token_id).unwrap().failures,
        0
    );
    // An older step than the last accepted one is refused even inside the window.
    let mut batch = Batch::new();
    let older = reference_totp(&key, step * 30, 30, 6);
    assert_ne!(older, next);
    assert_eq!(
        w.engine
            .validate_code(w.now, &t.token_id, &older, &mut batch),
        Ok(OfflineOutcome::Rejected { attempts_left: 2 })
    );
}

#[test]
fn one_step_of_drift_either_way_is_accepted_and_tracked() {
    let mut w = world();
    let t = w
        .admin(|e, now, b| e.enroll_totp(now, "bank", "alice", b))
        .unwrap();
    let key = key_of(&t);
    let base = w.now_s() / 30;
    let at = |step: u64| reference_totp(&key, step * 30, 30, 6);
    // Two steps ahead of the server: outside the window.
    let far = at(base + 2);
    assert_eq!(
        w.validate(&t.token_id, &far),
        Ok(OfflineOutcome::Rejected { attempts_left: 2 })
    );
    // The authenticator's clock is one step ahead: accepted, drift +1.
    assert_eq!(
        w.validate(&t.token_id, &at(base + 1)),
        Ok(OfflineOutcome::Accepted { duress: false })
    );
    let s = w.state(&t.token_id);
    assert_eq!((s.otp_last_step, s.otp_drift), (base + 1, 1));
    // Around the tracked drift: base + 2 is now inside the window (base + 1 ± 1).
    assert_eq!(
        w.validate(&t.token_id, &at(base + 2)),
        Ok(OfflineOutcome::Accepted { duress: false })
    );
    let s = w.state(&t.token_id);
    assert_eq!((s.otp_last_step, s.otp_drift), (base + 2, 2));
    // Ten steps later the clock fell back: one step earlier than expected is accepted.
    w.now += 10 * 30_000;
    let base = w.now_s() / 30;
    assert_eq!(
        w.validate(&t.token_id, &at(base + 1)),
        Ok(OfflineOutcome::Accepted { duress: false })
    );
    let s = w.state(&t.token_id);
    assert_eq!((s.otp_last_step, s.otp_drift), (base + 1, 1));
    // With the drift at +1, the server's own step (one below expected) works too once it is
    // above the last accepted one (two steps on), and brings the drift back to 0.
    w.now += 60_000;
    let base = w.now_s() / 30;
    assert_eq!(
        w.validate(&t.token_id, &at(base)),
        Ok(OfflineOutcome::Accepted { duress: false })
    );
    assert_eq!(w.state(&t.token_id).otp_drift, 0);
}

#[test]
fn three_wrong_codes_block_and_force_closed_unblocks() {
    let mut w = world();
    let t = w
        .admin(|e, now, b| e.enroll_totp(now, "bank", "alice", b))
        .unwrap();
    let key = key_of(&t);
    let good = reference_totp(&key, w.now_s(), 30, 6);
    let wrong = format!("{:06}", (good.parse::<u32>().unwrap() + 1) % 1_000_000);
    w.kinds();
    assert_eq!(
        w.validate(&t.token_id, &wrong),
        Ok(OfflineOutcome::Rejected { attempts_left: 2 })
    );
    assert_eq!(
        w.validate(&t.token_id, "12a456"),
        Ok(OfflineOutcome::Rejected { attempts_left: 1 })
    );
    assert_eq!(w.validate(&t.token_id, &wrong), Ok(OfflineOutcome::Blocked));
    assert_eq!(
        w.kinds(),
        vec![
            EventKind::FailedAttempt,
            EventKind::FailedAttempt,
            EventKind::FailedAttempt,
            EventKind::Blocked
        ]
    );
    let st = w.engine.status_by_id(w.now, &t.token_id).unwrap();
    assert_eq!((st.state, st.failures), (TokenState::Blocked, 3));
    // A blocked token rejects even the right code, without consuming it.
    assert_eq!(w.validate(&t.token_id, &good), Ok(OfflineOutcome::Blocked));
    assert_eq!(w.state(&t.token_id).otp_last_step, 0);
    let st = w
        .admin(|e, now, b| e.force(now, &t.token_id, Force::Closed, b))
        .unwrap();
    assert_eq!(
        (st.kind, st.state, st.failures),
        (TokenKind::Totp, TokenState::Closed, 0)
    );
    assert!(w.kinds().contains(&EventKind::Unblocked));
    assert_eq!(
        w.validate(&t.token_id, &good),
        Ok(OfflineOutcome::Accepted { duress: false })
    );
    // Force blocked works too.
    let st = w
        .admin(|e, now, b| e.force(now, &t.token_id, Force::Blocked, b))
        .unwrap();
    assert_eq!(st.state, TokenState::Blocked);
}

#[test]
fn a_success_resets_the_failure_count() {
    let mut w = world();
    let t = w
        .admin(|e, now, b| e.enroll_totp(now, "bank", "alice", b))
        .unwrap();
    let key = key_of(&t);
    for round in 0..3u64 {
        w.now += 30_000;
        assert_eq!(
            w.validate(&t.token_id, "000000x"),
            Ok(OfflineOutcome::Rejected { attempts_left: 2 })
        );
        assert_eq!(
            w.validate(&t.token_id, "0000000"),
            Ok(OfflineOutcome::Rejected { attempts_left: 1 })
        );
        let code = reference_totp(&key, w.now_s(), 30, 6);
        assert_eq!(
            w.validate(&t.token_id, &code),
            Ok(OfflineOutcome::Accepted { duress: false }),
            "round {round}"
        );
        assert_eq!(
            w.engine.status_by_id(w.now, &t.token_id).unwrap().failures,
            0
        );
    }
}

#[test]
fn app_only_operations_are_refused_and_backup_codes_work() {
    let mut w = world();
    let t = w
        .admin(|e, now, b| e.enroll_totp(now, "bank", "alice", b))
        .unwrap();
    let id = t.token_id;
    assert_eq!(
        w.admin(|e, now, b| e.offline_challenge(now, &id, 8, b)),
        Err(EngineError::NotForTotp)
    );
    assert_eq!(
        w.admin(|e, now, b| e.offline_response(now, &id, "1234-5678", b)),
        Err(EngineError::NotForTotp)
    );
    assert_eq!(
        w.admin(|e, now, b| e.create_transaction(now, &id, "pay 10 EUR", 60_000, b)),
        Err(EngineError::NotForTotp)
    );
    let codes = w
        .admin(|e, _, b| e.generate_backup_codes(&id, 3, 8, b))
        .unwrap();
    assert_eq!(
        w.admin(|e, now, b| e.verify_backup_code(now, &id, &codes[1], b)),
        Ok(OfflineOutcome::Accepted { duress: false })
    );
    assert_eq!(
        w.admin(|e, now, b| e.verify_backup_code(now, &id, &codes[1], b)),
        Ok(OfflineOutcome::Rejected { attempts_left: 2 })
    );
    // An app token of the same service still gets them (the refusal is by kind).
    let app = w
        .admin(|e, now, b| e.enroll(now, "bank", "bob", b))
        .unwrap();
    assert_eq!(
        w.admin(|e, now, b| e.offline_challenge(now, &app.token_id, 8, b)),
        Err(EngineError::NotPaired)
    );
}

#[test]
fn delete_removes_a_totp_token() {
    let mut w = world();
    let t = w
        .admin(|e, now, b| e.enroll_totp(now, "bank", "alice", b))
        .unwrap();
    let key = key_of(&t);
    w.admin(|e, now, b| e.delete(now, &t.token_id, b)).unwrap();
    assert!(w.kinds().contains(&EventKind::Deleted));
    assert!(w
        .sink
        .log
        .iter()
        .any(|m| *m == Mutation::DeleteToken(t.token_id)));
    assert_eq!(
        w.engine.status(w.now, "bank", "alice"),
        Err(EngineError::UnknownToken)
    );
    let code = reference_totp(&key, w.now_s(), 30, 6);
    assert_eq!(
        w.validate(&t.token_id, &code),
        Err(EngineError::UnknownToken)
    );
    assert_eq!(
        w.admin(|e, now, b| e.delete(now, &t.token_id, b)),
        Err(EngineError::UnknownToken)
    );
}

#[test]
fn device_packets_for_a_totp_token_are_dropped_unanswered() {
    let mut w = world();
    let t = w
        .admin(|e, now, b| e.enroll_totp(now, "bank", "alice", b))
        .unwrap();
    // The user knows the secret: a packet sealed under keys derived from it, as an app
    // token's keys are, must not get anywhere.
    let record = w.record(&t.token_id);
    let keys = TokenSecret::from_bytes(*record.secret.expose()).keys();
    let mut body = [0u8; 24];
    body[..8].copy_from_slice(&w.now.to_be_bytes());
    for (counter, msg) in [(1u64, MsgType::Status), (2, MsgType::TimeSync)] {
        let mut datagram = [0u8; 1200];
        let n = seal_request(&keys.d2s, msg, t.token_id.0, counter, &body, &mut datagram).unwrap();
        let mut out = [0u8; 1200];
        let mut batch = Batch::new();
        let src: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let outcome = w
            .engine
            .handle_packet(w.now, src, &mut datagram[..n], &mut out, &mut batch);
        assert_eq!(outcome, PacketOutcome::Drop(DropReason::Unauthentic));
        assert!(batch.is_empty());
    }
    assert_eq!(w.engine.drops(DropReason::Unauthentic), 2);
    assert_eq!(w.engine.presence(&t.token_id), None);
    let st = w.engine.status_by_id(w.now, &t.token_id).unwrap();
    assert_eq!((st.state, st.last_seen_ms), (TokenState::Closed, None));
}

#[test]
fn digits_and_period_follow_the_service_where_an_app_can() {
    let mut w = world();
    let t = w
        .admin(|e, now, b| e.enroll_totp(now, "eight", "alice", b))
        .unwrap();
    let (_, params) = parse_uri(&t.otpauth_uri);
    assert_eq!(param(&params, "digits"), "8");
    assert_eq!(param(&params, "period"), "60");
    let key = key_of(&t);
    let code = reference_totp(&key, w.now_s(), 60, 8);
    assert_eq!(
        w.validate(&t.token_id, &code),
        Ok(OfflineOutcome::Accepted { duress: false })
    );
    // A 6-digit or 30-second code of the same key is not one.
    w.now += 60_000;
    let six = reference_totp(&key, w.now_s(), 60, 6);
    assert_eq!(
        w.validate(&t.token_id, &six),
        Ok(OfflineOutcome::Rejected { attempts_left: 2 })
    );
    // Base32 codes cannot be shown by an authenticator app: 6 digits every 30 s instead.
    let t = w
        .admin(|e, now, b| e.enroll_totp(now, "letters", "alice", b))
        .unwrap();
    let (label, params) = parse_uri(&t.otpauth_uri);
    assert_eq!(label, "letters:alice");
    assert_eq!(param(&params, "digits"), "6");
    assert_eq!(param(&params, "period"), "30");
    let code = reference_totp(&key_of(&t), w.now_s(), 30, 6);
    assert_eq!(
        w.validate(&t.token_id, &code),
        Ok(OfflineOutcome::Accepted { duress: false })
    );
    // The parameters are the token's: a later change of the service does not break it.
    let mut changed = services();
    changed[1].otp.length = 6;
    changed[1].otp.period_s = 30;
    w.engine.reload_services(changed).unwrap();
    let t8 = TokenId::derive("eight", "alice");
    w.now += 120_000;
    let code = reference_totp(&key, w.now_s(), 60, 8);
    assert_eq!(
        w.validate(&t8, &code),
        Ok(OfflineOutcome::Accepted { duress: false })
    );
}

#[test]
fn re_enrolling_replaces_the_token_either_way() {
    let mut w = world();
    // App enrollment pending, then TOTP: the pending enrollment is withdrawn.
    let app = w
        .admin(|e, now, b| e.enroll(now, "bank", "alice", b))
        .unwrap();
    assert_eq!(
        w.engine.status_by_id(w.now, &app.token_id).unwrap().state,
        TokenState::Pending
    );
    let first = w
        .admin(|e, now, b| e.enroll_totp(now, "bank", "alice", b))
        .unwrap();
    assert_eq!(first.token_id, app.token_id);
    assert!(w
        .sink
        .log
        .iter()
        .any(|m| *m == Mutation::DeletePending(app.token_id)));
    let st = w.engine.status_by_id(w.now, &first.token_id).unwrap();
    assert_eq!((st.kind, st.state), (TokenKind::Totp, TokenState::Closed));
    // One failure, a backup code: both go with a re-enrollment.
    let id = first.token_id;
    w.validate(&id, "000000x").unwrap();
    w.admin(|e, _, b| e.generate_backup_codes(&id, 2, 8, b))
        .unwrap();
    let v1 = w.state(&id).version;
    // TOTP again: a new secret, the old one's codes fail.
    let second = w
        .admin(|e, now, b| e.enroll_totp(now, "bank", "alice", b))
        .unwrap();
    assert_ne!(key_of(&first), key_of(&second));
    assert!(w.state(&id).version > v1, "versions continue");
    assert_eq!(w.engine.status_by_id(w.now, &id).unwrap().failures, 0);
    assert!(w
        .sink
        .log
        .iter()
        .any(|m| *m == Mutation::BackupCodes(id, Vec::new())));
    let old = reference_totp(&key_of(&first), w.now_s(), 30, 6);
    let new = reference_totp(&key_of(&second), w.now_s(), 30, 6);
    assert_ne!(old, new);
    assert_eq!(
        w.validate(&id, &old),
        Ok(OfflineOutcome::Rejected { attempts_left: 2 })
    );
    assert_eq!(
        w.validate(&id, &new),
        Ok(OfflineOutcome::Accepted { duress: false })
    );
    // Back to the app: pending, no codes until the app pairs.
    w.admin(|e, now, b| e.enroll(now, "bank", "alice", b))
        .unwrap();
    let st = w.engine.status_by_id(w.now, &id).unwrap();
    assert_eq!((st.kind, st.state), (TokenKind::App, TokenState::Pending));
    w.now += 30_000;
    let code = reference_totp(&key_of(&second), w.now_s(), 30, 6);
    assert_eq!(w.validate(&id, &code), Err(EngineError::NotPaired));
}

#[test]
fn a_reload_from_the_committed_records_keeps_the_kind_and_the_last_step() {
    let mut w = world();
    let t = w
        .admin(|e, now, b| e.enroll_totp(now, "bank", "alice", b))
        .unwrap();
    let key = key_of(&t);
    let code = reference_totp(&key, w.now_s(), 30, 6);
    assert_eq!(
        w.validate(&t.token_id, &code),
        Ok(OfflineOutcome::Accepted { duress: false })
    );
    w.restart_from_log(EngineConfig::new(services(), 8, [1; 32]));
    assert_eq!(
        w.engine.status_by_id(w.now, &t.token_id).unwrap().kind,
        TokenKind::Totp
    );
    assert_eq!(
        w.validate(&t.token_id, &code),
        Ok(OfflineOutcome::Rejected { attempts_left: 2 })
    );
    w.now += 30_000;
    let next = reference_totp(&key, w.now_s(), 30, 6);
    assert_eq!(
        w.validate(&t.token_id, &next),
        Ok(OfflineOutcome::Accepted { duress: false })
    );
}

#[test]
fn a_totp_token_re_enrolled_for_the_app_pairs_and_becomes_an_app_token() {
    use zoftoken_device::Pairing;
    use zoftoken_proto::deeplink::Deeplink;
    let mut w = world();
    let t = w
        .admin(|e, now, b| e.enroll_totp(now, "bank", "alice", b))
        .unwrap();
    let ticket = w
        .admin(|e, now, b| e.enroll(now, "bank", "alice", b))
        .unwrap();
    let pairing = Pairing::from_deeplink(&Deeplink::parse(&ticket.deeplink).unwrap());
    let mut phone = w.pair_with(pairing, false);
    assert_eq!(phone.token.token_id(), t.token_id);
    let st = w.engine.status_by_id(w.now, &t.token_id).unwrap();
    assert_eq!((st.kind, st.state), (TokenKind::App, TokenState::Closed));
    assert_eq!(w.record(&t.token_id).kind, TokenKind::App);
    // The app's packets are answered now, and the old TOTP codes are no longer valid.
    w.open(&mut phone).unwrap();
    assert_eq!(
        w.engine.status_by_id(w.now, &t.token_id).unwrap().state,
        TokenState::Open
    );
    let old = reference_totp(&key_of(&t), w.now_s(), 30, 6);
    assert_eq!(
        w.validate(&t.token_id, &old),
        Ok(OfflineOutcome::Rejected { attempts_left: 2 })
    );
}
