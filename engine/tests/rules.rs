//! Every rule of the engine on a virtual clock, driven by the real device state machine
//! (`zoftoken-device`) over the real codec.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::net::SocketAddr;

use zoftoken_device::{MemoryStore, Pairing, Reply, Request};
use zoftoken_engine::*;
use zoftoken_proto::codes::{self, OtpParams};
use zoftoken_proto::deeplink::Deeplink;
use zoftoken_proto::wire::Alphabet;
use zoftoken_proto::{DropReason, PinVerifier, ReplyStatus, TokenId, TxState, WireState};
use zoftoken_testkit::harness::SRC;
use zoftoken_testkit::{commit_in_memory, FullDisk, Harness, Phone, T0};

/// The engine and its log in memory, on a virtual clock (the test kit's harness).
type World = Harness;

fn services() -> Vec<ServiceConfig> {
    let mut bank = ServiceConfig::new("bank", &["127.0.0.1:4500"]);
    bank.window_s = 600;
    let mut instant = ServiceConfig::new("door", &["127.0.0.1:4500"]);
    instant.window_s = 0;
    let mut strict = ServiceConfig::new("strict", &["127.0.0.1:4500"]);
    strict.duress_allowed = false;
    strict.otp = OtpParams {
        length: 8,
        period_s: 30,
        alphabet: Alphabet::Base32,
    };
    vec![bank, instant, strict]
}

/// The engine of most tests: the three services above, epoch 7.
fn world() -> World {
    World::new(EngineConfig::new(services(), 7, [9; 32]))
}

fn status(r: &Reply) -> (ReplyStatus, WireState, u8) {
    let s = r.status();
    (s.status, s.state, s.attempts_left)
}

#[test]
fn pairing_opening_and_closing() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", true);
    assert_eq!(w.kinds(), vec![EventKind::Enrolled, EventKind::Paired]);
    let r = w.open(&mut p).unwrap();
    assert_eq!(status(&r), (ReplyStatus::Ok, WireState::Open, 3));
    assert_eq!(r.status().open_until_ms, T0 + 600_000);
    assert_eq!(w.kinds(), vec![EventKind::Opened]);
    let st = w.engine.status(w.now, "bank", "alice").unwrap();
    assert_eq!(
        (st.state, st.open_until_ms, st.duress),
        (TokenState::Open, Some(T0 + 600_000), false)
    );
    let r = w.send(&mut p, Request::Status).unwrap();
    assert_eq!(status(&r).1, WireState::Open);
    let r = w.send(&mut p, Request::Close).unwrap();
    assert_eq!(status(&r), (ReplyStatus::Ok, WireState::Closed, 3));
    assert_eq!(w.kinds(), vec![EventKind::Closed]);
    assert_eq!(
        w.engine.status(w.now, "bank", "alice").unwrap().state,
        TokenState::Closed
    );
}

#[test]
fn a_replayed_open_after_close_is_ignored() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    w.open(&mut p).unwrap();
    let recorded_open = p.last_request.clone();
    w.send(&mut p, Request::Close).unwrap();
    w.kinds();
    assert_eq!(w.deliver(&recorded_open), Err(DropReason::Replayed));
    assert_eq!(
        w.engine.status(w.now, "bank", "alice").unwrap().state,
        TokenState::Closed
    );
    assert!(w.kinds().is_empty());
    // Also after the replay window was collapsed (as after a restart or a long idle time).
    w.now += 10 * 60_000;
    w.admin(|e, now, b| e.tick(now, b));
    assert_eq!(w.deliver(&recorded_open), Err(DropReason::Replayed));
    assert_eq!(w.engine.drops(DropReason::Replayed), 2);
}

#[test]
fn a_pin_brute_force_stops_at_exactly_three() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", true);
    w.kinds();
    let guesses: Vec<PinVerifier> = ["0000", "1111", "2222", "3333"]
        .iter()
        .map(|g| PinVerifier::derive(g, &p.token.token_id()).unwrap())
        .collect();
    let r = w.send(&mut p, Request::Open(&guesses[0])).unwrap();
    assert_eq!(status(&r), (ReplyStatus::WrongPin, WireState::Closed, 2));
    let r = w.send(&mut p, Request::Open(&guesses[1])).unwrap();
    assert_eq!(status(&r), (ReplyStatus::WrongPin, WireState::Closed, 1));
    let r = w.send(&mut p, Request::Open(&guesses[2])).unwrap();
    assert_eq!(status(&r), (ReplyStatus::Blocked, WireState::Blocked, 0));
    assert_eq!(
        w.kinds(),
        vec![
            EventKind::FailedAttempt,
            EventKind::FailedAttempt,
            EventKind::FailedAttempt,
            EventKind::Blocked
        ]
    );
    // Blocked: even the right PIN is refused, and no further guess is checked or counted.
    let r = w.open(&mut p).unwrap();
    assert_eq!(status(&r), (ReplyStatus::Blocked, WireState::Blocked, 0));
    let r = w.send(&mut p, Request::Open(&guesses[3])).unwrap();
    assert_eq!(status(&r).0, ReplyStatus::Blocked);
    assert!(w.kinds().is_empty());
    assert_eq!(
        w.engine.status(w.now, "bank", "alice").unwrap().state,
        TokenState::Blocked
    );
    // Force closed unblocks; the user can open again.
    let id = p.token.token_id();
    let st = w
        .admin(|e, now, b| e.force(now, &id, Force::Closed, b))
        .unwrap();
    assert_eq!((st.state, st.failures), (TokenState::Closed, 0));
    assert_eq!(w.kinds(), vec![EventKind::Unblocked]);
    let r = w.open(&mut p).unwrap();
    assert_eq!(status(&r), (ReplyStatus::Ok, WireState::Open, 3));
}

#[test]
fn a_success_resets_the_failure_count() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let wrong = PinVerifier::derive("0000", &p.token.token_id()).unwrap();
    w.send(&mut p, Request::Open(&wrong)).unwrap();
    w.send(&mut p, Request::Open(&wrong)).unwrap();
    let r = w.open(&mut p).unwrap();
    assert_eq!(status(&r), (ReplyStatus::Ok, WireState::Open, 3));
    let r = w.send(&mut p, Request::Open(&wrong)).unwrap();
    // Still open: a failure does not close an open token (SPEC.md §7.5).
    assert_eq!(status(&r), (ReplyStatus::WrongPin, WireState::Open, 2));
}

#[test]
fn a_duress_open_looks_normal_to_the_device_but_emits_duress() {
    let mut w = world();
    let mut normal_phone = w.pair("bank", "alice", true);
    let mut duress_phone = w.pair("bank", "bob", true);
    w.kinds();
    let a = w.open(&mut normal_phone).unwrap();
    let normal_events = w.kinds();
    let b = w.open_duress(&mut duress_phone).unwrap();
    assert_eq!(a, b, "the device sees the same reply");
    assert_eq!(normal_events, vec![EventKind::Opened]);
    let events = std::mem::take(&mut w.seen);
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        vec![EventKind::Opened, EventKind::Duress]
    );
    assert!(events.iter().all(|e| e.duress));
    assert!(w.engine.status(w.now, "bank", "bob").unwrap().duress);
    assert!(!w.engine.status(w.now, "bank", "alice").unwrap().duress);
}

#[test]
fn duress_is_reported_only_where_the_service_allows_it() {
    let mut w = world();
    // The strict service refuses a duress verifier at pairing…
    let ticket = w
        .admin(|e, now, b| e.enroll(now, "strict", "carol", b))
        .unwrap();
    let mut pairing = Pairing::from_deeplink(&Deeplink::parse(&ticket.deeplink).unwrap());
    let mut out = [0u8; 1200];
    let tx = pairing.init_request(w.now, [3; 32], &mut out).unwrap();
    let mut reply = w.deliver(&out[..tx.len]).unwrap();
    let offer = pairing.handle_init_reply(&mut reply).unwrap();
    assert!(!offer.service.duress_allowed);
    let pin = PinVerifier::derive("2468", &offer.token_id).unwrap();
    // …and the device itself will not send one.
    assert!(pairing
        .complete_request(&pin, Some(&pin), w.now, &mut out)
        .is_err());
    let tx = pairing
        .complete_request(&pin, None, w.now, &mut out)
        .unwrap();
    let mut reply = w.deliver(&out[..tx.len]).unwrap();
    let mut store = MemoryStore::default();
    let token = pairing
        .handle_complete_reply(&mut store, &mut reply)
        .unwrap()
        .unwrap();
    let mut p = Phone {
        token,
        store,
        pin: pin.clone(),
        duress: pin,
        clock_skew_ms: 0,
        last_request: vec![],
    };
    w.kinds();
    let r = w.open(&mut p).unwrap();
    assert_eq!(status(&r).0, ReplyStatus::Ok);
    assert_eq!(w.kinds(), vec![EventKind::Opened]);
}

#[test]
fn an_expired_window_reads_as_closed_and_emits_expired() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    w.open(&mut p).unwrap();
    w.kinds();
    w.now += 600_000 - 1;
    assert_eq!(
        w.engine.status(w.now, "bank", "alice").unwrap().state,
        TokenState::Open
    );
    w.now += 1;
    assert_eq!(
        w.engine.status(w.now, "bank", "alice").unwrap().state,
        TokenState::Closed
    );
    let r = w.send(&mut p, Request::Status).unwrap();
    assert_eq!(
        (status(&r).1, r.status().open_until_ms),
        (WireState::Closed, 0)
    );
    w.admin(|e, now, b| e.tick(now, b));
    assert_eq!(w.kinds(), vec![EventKind::Expired]);
    // Only once.
    w.admin(|e, now, b| e.tick(now, b));
    assert!(w.kinds().is_empty());
}

/// A start after downtime can find far more lapsed windows than one tick ends: each tick ends
/// at most `MAX_EXPIRED_PER_TICK` (one bounded write), every lapsed window reads as closed
/// meanwhile, and the following ticks end the rest, each once.
#[test]
fn a_tick_ends_a_bounded_number_of_windows_and_the_next_ticks_the_rest() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let alice = p.token.token_id();
    w.open(&mut p).unwrap();
    // Other open tokens, loaded as at a start: alice's record under other ids.
    let record = w.stored_token(&alice).unwrap();
    let others = MAX_EXPIRED_PER_TICK + 9;
    for i in 0..others {
        let mut r = record.clone();
        let mut id = [0xA5u8; 16];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        r.status.token_id = TokenId(id);
        w.engine.load_token(&r).unwrap();
    }
    w.kinds();
    w.now += 600_000;
    assert_eq!(
        w.engine.status_by_id(w.now, &alice).unwrap().state,
        TokenState::Closed
    );
    w.admin(|e, now, b| e.tick(now, b));
    assert_eq!(w.kinds().len(), MAX_EXPIRED_PER_TICK);
    w.admin(|e, now, b| e.tick(now, b));
    let rest = w.kinds();
    assert_eq!(rest.len(), others + 1 - MAX_EXPIRED_PER_TICK);
    assert!(rest.iter().all(|k| *k == EventKind::Expired));
    w.admin(|e, now, b| e.tick(now, b));
    assert!(w.kinds().is_empty());
    assert_eq!(
        w.engine.status_by_id(w.now, &alice).unwrap().state,
        TokenState::Closed
    );
}

#[test]
fn reopening_extends_the_window_and_only_the_last_window_expires() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    w.open(&mut p).unwrap();
    w.now += 300_000;
    w.open(&mut p).unwrap();
    w.kinds();
    w.now += 300_000;
    w.admin(|e, now, b| e.tick(now, b));
    assert!(w.kinds().is_empty(), "the first window was superseded");
    w.now += 300_000;
    w.admin(|e, now, b| e.tick(now, b));
    assert_eq!(w.kinds(), vec![EventKind::Expired]);
}

#[test]
fn window_zero_makes_an_open_an_instant_event() {
    let mut w = world();
    let mut p = w.pair("door", "dave", false);
    w.kinds();
    let r = w.open(&mut p).unwrap();
    assert_eq!(status(&r), (ReplyStatus::Ok, WireState::Closed, 3));
    assert_eq!(r.status().open_until_ms, 0);
    assert_eq!(w.kinds(), vec![EventKind::Opened]);
    assert_eq!(
        w.engine.status(w.now, "door", "dave").unwrap().state,
        TokenState::Closed
    );
}

#[test]
fn a_one_time_code_is_refused_the_second_time() {
    let mut w = world();
    let p = w.pair("bank", "alice", true);
    let id = p.token.token_id();
    let code = p.token.one_time_code(&p.pin, w.now).unwrap();
    let first = w
        .admin(|e, now, b| e.validate_code(now, &id, &code, b))
        .unwrap();
    assert_eq!(first, OfflineOutcome::Accepted { duress: false });
    let second = w
        .admin(|e, now, b| e.validate_code(now, &id, &code, b))
        .unwrap();
    assert_eq!(second, OfflineOutcome::Rejected { attempts_left: 2 });
    // The next period's code works; a duress code is reported.
    w.now += 30_000;
    let code = p.token.one_time_code(&p.duress, w.now).unwrap();
    let r = w
        .admin(|e, now, b| e.validate_code(now, &id, &code, b))
        .unwrap();
    assert_eq!(r, OfflineOutcome::Accepted { duress: true });
    assert!(w.kinds().contains(&EventKind::Duress));
}

#[test]
fn one_time_code_drift_is_tracked() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    // The phone's clock runs 40 s fast: one step ahead, inside the ±1 search.
    let code = p.token.one_time_code(&p.pin, w.now + 40_000).unwrap();
    assert_eq!(
        w.admin(|e, now, b| e.validate_code(now, &id, &code, b))
            .unwrap(),
        OfflineOutcome::Accepted { duress: false }
    );
    // Drifting further (+70 s = two steps ahead): the remembered drift still finds it.
    w.now += 60_000;
    let code = p.token.one_time_code(&p.pin, w.now + 70_000).unwrap();
    assert_eq!(
        w.admin(|e, now, b| e.validate_code(now, &id, &code, b))
            .unwrap(),
        OfflineOutcome::Accepted { duress: false }
    );
    // A TIME_SYNC tells the engine the phone's clock directly.
    p.clock_skew_ms = 200_000;
    w.send(&mut p, Request::TimeSync).unwrap();
    w.now += 60_000;
    let code = p.token.one_time_code(&p.pin, w.now + 200_000).unwrap();
    assert_eq!(
        w.admin(|e, now, b| e.validate_code(now, &id, &code, b))
            .unwrap(),
        OfflineOutcome::Accepted { duress: false }
    );
}

#[test]
fn wrong_codes_count_towards_blocking_with_pins() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    let wrong = PinVerifier::derive("0000", &id).unwrap();
    w.send(&mut p, Request::Open(&wrong)).unwrap();
    let r = w
        .admin(|e, now, b| e.validate_code(now, &id, "000000", b))
        .unwrap();
    assert_eq!(r, OfflineOutcome::Rejected { attempts_left: 1 });
    w.admin(|e, now, b| e.offline_challenge(now, &id, 8, b))
        .unwrap();
    let r = w
        .admin(|e, now, b| e.offline_response(now, &id, "AAAA-AAAA", b))
        .unwrap();
    assert_eq!(r, OfflineOutcome::Blocked);
    assert_eq!(
        w.engine.status(w.now, "bank", "alice").unwrap().state,
        TokenState::Blocked
    );
}

#[test]
fn an_offline_response_with_the_duress_pin_opens_with_duress() {
    let mut w = world();
    let p = w.pair("bank", "alice", true);
    let id = p.token.token_id();
    let challenge = w
        .admin(|e, now, b| e.offline_challenge(now, &id, 8, b))
        .unwrap();
    assert_eq!(challenge.len(), 9);
    let response = p.token.offline_response(&p.duress, &challenge).unwrap();
    w.kinds();
    let r = w
        .admin(|e, now, b| e.offline_response(now, &id, &response, b))
        .unwrap();
    assert_eq!(r, OfflineOutcome::Accepted { duress: true });
    assert_eq!(w.kinds(), vec![EventKind::Opened, EventKind::Duress]);
    let st = w.engine.status(w.now, "bank", "alice").unwrap();
    assert_eq!((st.state, st.duress), (TokenState::Open, true));
    // Single use.
    let again = w.admin(|e, now, b| e.offline_response(now, &id, &response, b));
    assert_eq!(again, Err(EngineError::NoChallenge));
}

#[test]
fn a_deleted_tokens_packets_are_silently_dropped() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    w.admin(|e, now, b| e.delete(now, &id, b)).unwrap();
    assert!(w.kinds().contains(&EventKind::Deleted));
    assert_eq!(
        w.send(&mut p, Request::Status),
        Err(DropReason::UnknownToken)
    );
    assert_eq!(w.open(&mut p), Err(DropReason::UnknownToken));
    assert_eq!(
        w.engine.status(w.now, "bank", "alice"),
        Err(EngineError::UnknownToken)
    );
    assert!(w.sink.log.iter().any(|m| *m == Mutation::DeleteToken(id)));
}

#[test]
fn a_service_removed_by_a_reload_is_gone_until_it_returns() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    w.open(&mut p).unwrap();
    w.kinds();
    let bank = w.engine.service_index_of("bank").unwrap();
    let without_bank: Vec<ServiceConfig> = services()
        .into_iter()
        .filter(|s| s.name != "bank")
        .collect();
    w.engine.reload_services(without_bank).unwrap();
    assert_eq!(w.engine.service_index_of("bank"), None);
    // Its index keeps its name: records of its tokens (an expiry, say) are still written.
    assert_eq!(w.engine.service_name(bank).as_deref(), Some("bank"));
    assert!(!w.engine.webhook_wants(bank, EventKind::Expired));
    // The phone's packets are dropped unanswered, the API does not know the service, and
    // nothing can be enrolled in it.
    assert_eq!(
        w.send(&mut p, Request::Status),
        Err(DropReason::UnknownToken)
    );
    assert_eq!(
        w.engine.status(w.now, "bank", "alice"),
        Err(EngineError::UnknownService)
    );
    assert_eq!(
        w.admin(|e, now, b| e.enroll(now, "bank", "bob", b)).err(),
        Some(EngineError::UnknownService)
    );
    assert!(w.engine.service_configs().iter().all(|s| s.name != "bank"));
    assert!(w.kinds().is_empty());
    // Its open window still runs out, with an event that names the service.
    w.now += 601_000;
    w.admin(|e, now, b| e.tick(now, b));
    assert_eq!(w.kinds(), vec![EventKind::Expired]);
    // When the service returns, so does its token.
    w.engine.reload_services(services()).unwrap();
    let r = w.send(&mut p, Request::Status).unwrap();
    assert_eq!(status(&r).1, WireState::Closed);
    assert_eq!(
        w.engine.status(w.now, "bank", "alice").unwrap().state,
        TokenState::Closed
    );
}

#[test]
fn stale_and_forged_packets_are_dropped_and_time_sync_recovers_a_changed_clock() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    p.clock_skew_ms = 91_000;
    assert_eq!(w.send(&mut p, Request::Status), Err(DropReason::Stale));
    p.clock_skew_ms = 89_000;
    assert!(w.send(&mut p, Request::Status).is_ok());
    // The user sets the phone's clock an hour off: TIME_SYNC (newest counter) re-learns it.
    p.clock_skew_ms = 3_600_000;
    assert_eq!(w.send(&mut p, Request::Status), Err(DropReason::Stale));
    assert!(w.send(&mut p, Request::TimeSync).is_ok());
    assert!(w.send(&mut p, Request::Status).is_ok());
    // A forged packet (one bit changed) gets nothing.
    w.send(&mut p, Request::Status).unwrap();
    let mut forged = p.last_request.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(w.deliver(&forged), Err(DropReason::Unauthentic));
    assert_eq!(w.deliver(&forged[..40]), Err(DropReason::WrongLength));
    assert_eq!(w.deliver(&[0u8; 3]), Err(DropReason::Truncated));
}

#[test]
fn an_old_time_sync_cannot_move_the_clock_offset() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    w.send(&mut p, Request::TimeSync).unwrap();
    let held = p.last_request.clone();
    // The attacker held a TIME_SYNC; a later request went through.
    w.send(&mut p, Request::Status).unwrap();
    // Replayed as is: seen already. Within the window but older than H and stale: dropped.
    assert_eq!(w.deliver(&held), Err(DropReason::Replayed));
}

#[test]
fn transactions_are_approved_denied_and_expire() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", true);
    let id = p.token.token_id();
    let tx1 = w
        .admin(|e, now, b| e.create_transaction(now, &id, "Pay 10 EUR?", 60_000, b))
        .unwrap();
    let r = w.send(&mut p, Request::TxFetch).unwrap();
    let Reply::Transaction(_, Some(pending)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        (pending.tx_id, pending.message.as_str()),
        (tx1, "Pay 10 EUR?")
    );
    let wrong = PinVerifier::derive("0000", &id).unwrap();
    let r = w
        .send(
            &mut p,
            Request::TxApprove {
                tx_id: tx1,
                pin: &wrong,
            },
        )
        .unwrap();
    assert!(
        matches!(r, Reply::TxDecided(s, _, TxState::Waiting) if s.status == ReplyStatus::WrongPin)
    );
    let pin = p.pin.clone();
    let r = w
        .send(
            &mut p,
            Request::TxApprove {
                tx_id: tx1,
                pin: &pin,
            },
        )
        .unwrap();
    assert!(matches!(r, Reply::TxDecided(s, _, TxState::Approved) if s.status == ReplyStatus::Ok));
    assert_eq!(
        w.engine.transaction(w.now, &tx1).unwrap().state,
        TxState::Approved
    );
    assert!(w.kinds().contains(&EventKind::TxApproved));
    // Decided: a second answer is refused.
    let r = w.send(&mut p, Request::TxDeny { tx_id: tx1 }).unwrap();
    assert!(
        matches!(r, Reply::TxDecided(s, _, TxState::Approved) if s.status == ReplyStatus::NoTransaction)
    );
    let tx2 = w
        .admin(|e, now, b| e.create_transaction(now, &id, "Log in?", 60_000, b))
        .unwrap();
    let r = w.send(&mut p, Request::TxDeny { tx_id: tx2 }).unwrap();
    assert!(matches!(r, Reply::TxDecided(_, _, TxState::Denied)));
    assert!(w.kinds().contains(&EventKind::TxDenied));
    let tx3 = w
        .admin(|e, now, b| e.create_transaction(now, &id, "Late?", 60_000, b))
        .unwrap();
    w.now += 60_000;
    assert_eq!(
        w.engine.transaction(w.now, &tx3).unwrap().state,
        TxState::Expired
    );
    w.admin(|e, now, b| e.tick(now, b));
    assert_eq!(w.kinds(), vec![EventKind::TxExpired]);
    let r = w.send(&mut p, Request::TxFetch).unwrap();
    assert!(matches!(r, Reply::Transaction(s, None) if s.status == ReplyStatus::NoTransaction));
    assert!(w
        .admin(|e, now, b| e.create_transaction(now, &id, &"x".repeat(201), 60_000, b))
        .is_err());
}

#[test]
fn a_duress_approval_looks_normal_and_is_reported() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", true);
    let id = p.token.token_id();
    let tx = w
        .admin(|e, now, b| e.create_transaction(now, &id, "Pay?", 60_000, b))
        .unwrap();
    w.kinds();
    let duress = p.duress.clone();
    let r = w
        .send(
            &mut p,
            Request::TxApprove {
                tx_id: tx,
                pin: &duress,
            },
        )
        .unwrap();
    assert!(matches!(r, Reply::TxDecided(s, _, TxState::Approved) if s.status == ReplyStatus::Ok));
    assert!(w.engine.transaction(w.now, &tx).unwrap().duress);
    assert_eq!(w.kinds(), vec![EventKind::Duress, EventKind::TxApproved]);
}

#[test]
fn an_admin_blocked_token_has_no_attempts_left_in_any_reply() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", true);
    let id = p.token.token_id();
    // One failure first: the block must not report what the failures would leave.
    let wrong = PinVerifier::derive("0000", &id).unwrap();
    let r = w.send(&mut p, Request::Open(&wrong)).unwrap();
    assert_eq!(status(&r), (ReplyStatus::WrongPin, WireState::Closed, 2));
    let st = w
        .admin(|e, now, b| e.force(now, &id, Force::Blocked, b))
        .unwrap();
    assert_eq!((st.state, st.attempts_left), (TokenState::Blocked, 0));
    assert_eq!(w.engine.status_by_id(w.now, &id).unwrap().attempts_left, 0);
    let pin = p.pin.clone();
    let duress = p.duress.clone();
    let tx = w
        .admin(|e, now, b| e.create_transaction(now, &id, "Pay?", 60_000, b))
        .unwrap();
    for req in [
        Request::Open(&pin),
        Request::Open(&duress),
        Request::Open(&wrong),
        Request::Close,
        Request::Status,
        Request::TimeSync,
        Request::TxFetch,
        Request::TxApprove {
            tx_id: tx,
            pin: &pin,
        },
        Request::TxDeny { tx_id: tx },
    ] {
        let name = format!("{req:?}");
        let r = w.send(&mut p, req).unwrap();
        assert_eq!(r.status().state, WireState::Blocked, "{name}");
        assert_eq!(r.status().attempts_left, 0, "{name}");
    }
    let code = p.token.one_time_code(&pin, w.now).unwrap();
    assert_eq!(
        w.admin(|e, now, b| e.validate_code(now, &id, &code, b)),
        Ok(OfflineOutcome::Blocked)
    );
    // Unblocked: all three attempts again.
    let st = w
        .admin(|e, now, b| e.force(now, &id, Force::Closed, b))
        .unwrap();
    assert_eq!((st.state, st.attempts_left), (TokenState::Closed, 3));
    let r = w.send(&mut p, Request::Status).unwrap();
    assert_eq!(status(&r), (ReplyStatus::Ok, WireState::Closed, 3));
}

#[test]
fn waiting_and_kept_transactions_per_token_are_capped() {
    let mut w = world();
    let p = w.pair("bank", "alice", false);
    let q = w.pair("bank", "bob", false);
    let (id, other) = (p.token.token_id(), q.token.token_id());
    let create = |w: &mut World, id: TokenId, timeout_ms: u64| {
        w.admin(|e, now, b| e.create_transaction(now, &id, "Pay?", timeout_ms, b))
    };
    for _ in 0..MAX_WAITING_TRANSACTIONS {
        create(&mut w, id, 60_000).unwrap();
    }
    let before = w.sink.log.len();
    assert_eq!(
        create(&mut w, id, 60_000),
        Err(EngineError::TooManyTransactions)
    );
    assert_eq!(w.sink.log.len(), before, "a refusal writes nothing");
    // Another token is not affected.
    create(&mut w, other, 60_000).unwrap();
    // Once they expire they no longer wait (even before a tick marks them expired): room
    // for more, until the token keeps MAX_KEPT_TRANSACTIONS, finished ones included.
    let mut kept = MAX_WAITING_TRANSACTIONS;
    w.now += 60_000;
    while kept < MAX_KEPT_TRANSACTIONS {
        create(&mut w, id, 1_000).unwrap();
        kept += 1;
        if kept % MAX_WAITING_TRANSACTIONS == 0 {
            w.now += 1_000;
        }
    }
    w.now += 1_000;
    w.admin(|e, now, b| e.tick(now, b));
    assert_eq!(
        create(&mut w, id, 60_000),
        Err(EngineError::TooManyTransactions),
        "none waits, but {MAX_KEPT_TRANSACTIONS} are kept"
    );
    // Finished ones go an hour after their expiry; then there is room again.
    w.now += TX_RETENTION_MS;
    w.admin(|e, now, b| e.tick(now, b));
    create(&mut w, id, 60_000).unwrap();
}

#[test]
fn many_transactions_of_one_token_load_in_creation_order() {
    // A database written before the cap may hold thousands of transactions on one token;
    // they load in any order and come back in creation order.
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    let n: u32 = 5_000;
    let now = w.now;
    let tx = |i: u32, state: TxState| Transaction {
        tx_id: {
            // Ids in another order than creation.
            let mut t = [0u8; 16];
            t[..4].copy_from_slice(&(i.wrapping_mul(2_654_435_761)).to_be_bytes());
            t[4..8].copy_from_slice(&i.to_be_bytes());
            t
        },
        token_id: id,
        message: format!("tx {i}"),
        // Two by two at the same millisecond: ties are ordered by id.
        created_ms: now - 10_000 + u64::from(i / 2),
        expires_ms: now + 600_000,
        state,
        duress: false,
    };
    // The oldest 4 000 are decided; the oldest waiting one is number 4 000.
    let all: Vec<Transaction> = (0..n)
        .map(|i| {
            tx(
                i,
                if i < 4_000 {
                    TxState::Denied
                } else {
                    TxState::Waiting
                },
            )
        })
        .collect();
    let mut shuffled = all.clone();
    shuffled.sort_by_key(|t| t.tx_id);
    let (first, rest) = shuffled.split_at(100);
    // One at a time and in bulk, both in id order.
    for t in first {
        w.engine.load_transaction(t.clone());
    }
    w.engine.load_transactions(rest.to_vec());
    for t in &all {
        assert_eq!(&w.engine.transaction(w.now, &t.tx_id).unwrap(), t);
    }
    // Of two created at the same millisecond the lower id comes first.
    let (a, b) = (&all[4_000], &all[4_001]);
    let oldest = if a.tx_id < b.tx_id { a } else { b };
    let r = w.send(&mut p, Request::TxFetch).unwrap();
    let Reply::Transaction(_, Some(pending)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(pending.tx_id, oldest.tx_id);
    // Denying it shows the next one; after the retention everything goes in one tick.
    w.send(
        &mut p,
        Request::TxDeny {
            tx_id: oldest.tx_id,
        },
    )
    .unwrap();
    let next = if a.tx_id < b.tx_id { b } else { a };
    let r = w.send(&mut p, Request::TxFetch).unwrap();
    assert!(matches!(r, Reply::Transaction(_, Some(t)) if t.tx_id == next.tx_id));
    w.now += 600_000 + TX_RETENTION_MS;
    w.admin(|e, now, b| e.tick(now, b));
    assert_eq!(
        w.engine.transaction(w.now, &all[0].tx_id),
        Err(EngineError::UnknownTransaction)
    );
    let r = w.send(&mut p, Request::TxFetch).unwrap();
    assert!(matches!(r, Reply::Transaction(_, None)));
    // The token takes new ones again.
    w.admin(|e, now, b| e.create_transaction(now, &id, "Pay?", 60_000, b))
        .unwrap();
}

#[test]
fn backup_codes_work_once_each() {
    let mut w = world();
    let p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    let codes = w
        .admin(|e, _, b| e.generate_backup_codes(&id, BACKUP_CODES, BACKUP_DIGITS, b))
        .unwrap();
    assert_eq!(codes.len(), 10);
    assert!(codes
        .iter()
        .all(|c| c.len() == 8 && c.bytes().all(|b| b.is_ascii_digit())));
    // Stored hashed only.
    let stored = w.sink.log.iter().find_map(|m| match m {
        Mutation::BackupCodes(_, h) => Some(h.clone()),
        _ => None,
    });
    assert_eq!(stored.unwrap().len(), 10);
    let ok = w
        .admin(|e, now, b| e.verify_backup_code(now, &id, &codes[3], b))
        .unwrap();
    assert_eq!(ok, OfflineOutcome::Accepted { duress: false });
    let again = w
        .admin(|e, now, b| e.verify_backup_code(now, &id, &codes[3], b))
        .unwrap();
    assert_eq!(again, OfflineOutcome::Rejected { attempts_left: 2 });
    let other = w
        .admin(|e, now, b| e.verify_backup_code(now, &id, &codes[4], b))
        .unwrap();
    assert_eq!(other, OfflineOutcome::Accepted { duress: false });
}

#[test]
fn change_pin_with_the_pin_works_and_with_the_duress_pin_only_pretends() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", true);
    let id = p.token.token_id();
    let new = PinVerifier::derive("97531", &id).unwrap();
    // Coerced: the duress PIN "changes" the PIN; the reply says OK, nothing changes.
    let (pin, duress) = (p.pin.clone(), p.duress.clone());
    let r = w
        .send(
            &mut p,
            Request::ChangePin {
                current: &duress,
                new: &new,
                new_duress: None,
            },
        )
        .unwrap();
    assert_eq!(status(&r).0, ReplyStatus::Ok);
    assert!(w.kinds().contains(&EventKind::Duress));
    let r = w.send(&mut p, Request::Open(&new)).unwrap();
    assert_eq!(status(&r).0, ReplyStatus::WrongPin);
    let r = w
        .send(
            &mut p,
            Request::ChangePin {
                current: &pin,
                new: &new,
                new_duress: None,
            },
        )
        .unwrap();
    assert_eq!(status(&r), (ReplyStatus::Ok, WireState::Closed, 3));
    let r = w.send(&mut p, Request::Open(&new)).unwrap();
    assert_eq!(status(&r).0, ReplyStatus::Ok);
    let r = w.open(&mut p).unwrap();
    assert_eq!(status(&r).0, ReplyStatus::WrongPin);
}

#[test]
fn manual_code_pairing_and_single_use_enrollments() {
    let mut w = world();
    let ticket = w
        .admin(|e, now, b| e.enroll(now, "bank", "erin", b))
        .unwrap();
    assert_eq!(
        w.engine.status(w.now, "bank", "erin").unwrap().state,
        TokenState::Pending
    );
    let pairing = Pairing::from_manual_code(
        &ticket.manual_code.to_lowercase(),
        "bank",
        vec!["127.0.0.1:4500".into()],
        None,
    )
    .unwrap();
    let _p = w.pair_with(pairing, false);
    assert_eq!(
        w.engine.status(w.now, "bank", "erin").unwrap().state,
        TokenState::Closed
    );
    // The deeplink of the same enrollment is now dead: its PAIR_INIT gets nothing.
    let mut dead = Pairing::from_deeplink(&Deeplink::parse(&ticket.deeplink).unwrap());
    let mut out = [0u8; 1200];
    let tx = dead.init_request(w.now, [1; 32], &mut out).unwrap();
    assert_eq!(w.deliver(&out[..tx.len]), Err(DropReason::UnknownToken));
}

#[test]
fn enrollments_expire() {
    let mut w = world();
    let ticket = w
        .admin(|e, now, b| e.enroll(now, "bank", "frank", b))
        .unwrap();
    w.now = ticket.expires_ms;
    let mut pairing = Pairing::from_deeplink(&Deeplink::parse(&ticket.deeplink).unwrap());
    let mut out = [0u8; 1200];
    let tx = pairing.init_request(w.now, [1; 32], &mut out).unwrap();
    assert_eq!(w.deliver(&out[..tx.len]), Err(DropReason::UnknownToken));
    w.admin(|e, now, b| e.tick(now, b));
    assert_eq!(
        w.engine.status(w.now, "bank", "frank"),
        Err(EngineError::UnknownToken)
    );
}

#[test]
fn re_enrolling_tells_the_old_app_it_is_not_paired() {
    let mut w = world();
    let mut old = w.pair("bank", "alice", false);
    let mut new = w.pair("bank", "alice", false);
    let _ = &mut new;
    // The second pairing replaced the first: the old app's secret is gone.
    assert_eq!(
        w.send(&mut old, Request::Status),
        Err(DropReason::Unauthentic)
    );
    // Re-enroll again: until the next pairing, the current app hears NOT_PAIRED.
    w.admin(|e, now, b| e.enroll(now, "bank", "alice", b))
        .unwrap();
    let r = w.send(&mut new, Request::Status).unwrap();
    assert_eq!(status(&r).0, ReplyStatus::NotPaired);
    assert_eq!(status(&r).1, WireState::Pending);
}

#[test]
fn force_open_and_block() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    w.kinds();
    let st = w
        .admin(|e, now, b| e.force(now, &id, Force::Open, b))
        .unwrap();
    assert_eq!(st.state, TokenState::Open);
    let st = w
        .admin(|e, now, b| e.force(now, &id, Force::Blocked, b))
        .unwrap();
    assert_eq!(st.state, TokenState::Blocked);
    let r = w.open(&mut p).unwrap();
    assert_eq!(status(&r).0, ReplyStatus::Blocked);
    let r = w.send(&mut p, Request::Close).unwrap();
    assert_eq!(status(&r), (ReplyStatus::Blocked, WireState::Blocked, 0));
    assert_eq!(w.kinds(), vec![EventKind::Opened, EventKind::Blocked]);
    let st = w
        .admin(|e, now, b| e.force(now, &id, Force::Open, b))
        .unwrap();
    assert_eq!(st.state, TokenState::Open);
    assert_eq!(w.kinds(), vec![EventKind::Unblocked, EventKind::Opened]);
}

#[test]
fn every_state_change_is_a_mutation_and_reads_are_not() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let before = w.sink.log.len();
    w.send(&mut p, Request::Status).unwrap();
    assert_eq!(w.sink.log.len(), before, "STATUS changes nothing");
    w.open(&mut p).unwrap();
    // A state change writes the state only: no secret is re-written.
    assert!(!w.sink.log[before..]
        .iter()
        .any(|m| matches!(m, Mutation::Token(_))));
    let token_puts: Vec<&TokenStateRecord> = w.sink.log[before..]
        .iter()
        .filter_map(|m| match m {
            Mutation::TokenState(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(token_puts.len(), 1);
    assert_eq!(token_puts[0].state, TokenState::Open);
    assert_eq!(
        token_puts[0].highest_counter,
        p.token.next_counter() - 1,
        "the counter is persisted with the change"
    );
    assert!(w.sink.log[before..]
        .iter()
        .any(|m| matches!(m, Mutation::Event(e) if e.kind == EventKind::Opened)));
}

#[test]
fn a_close_of_a_closed_token_is_written_only_on_a_shared_database() {
    let state_writes = |w: &World, from: usize| {
        w.sink.log[from..]
            .iter()
            .filter(|m| matches!(m, Mutation::TokenState(_)))
            .count()
    };
    // One server: memory is the truth, a repeated CLOSE writes nothing.
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let before = w.sink.log.len();
    let r = w.send(&mut p, Request::Close).unwrap();
    assert_eq!(status(&r).1, WireState::Closed);
    assert_eq!(state_writes(&w, before), 0);
    // Several servers: the database must confirm it (a compare-and-set of the state), and
    // nothing happened, so there is no event.
    let mut config = EngineConfig::new(services(), 7, [9; 32]);
    config.shared_database = true;
    let mut w = World::new(config);
    let mut p = w.pair("bank", "alice", false);
    w.kinds();
    let before = w.sink.log.len();
    let r = w.send(&mut p, Request::Close).unwrap();
    assert_eq!(status(&r).1, WireState::Closed);
    assert_eq!(state_writes(&w, before), 1);
    assert_eq!(w.kinds(), vec![]);
    let before = w.sink.log.len();
    w.send(&mut p, Request::Status).unwrap();
    assert_eq!(w.sink.log.len(), before, "STATUS still changes nothing");
}

#[test]
fn on_a_shared_database_a_transactions_expiry_writes_its_tokens_state_and_no_enrollment_is_deleted()
{
    let writes = |w: &World, from: usize| -> Vec<&'static str> {
        w.sink.log[from..]
            .iter()
            .filter_map(|m| match m {
                Mutation::TokenState(_) => Some("state"),
                Mutation::Transaction(_) => Some("transaction"),
                Mutation::DeletePending(_) => Some("delete enrollment"),
                Mutation::Event(e) if e.kind == EventKind::TxExpired => Some("tx_expired"),
                _ => None,
            })
            .collect()
    };
    for shared in [false, true] {
        let mut config = EngineConfig::new(services(), 7, [9; 32]);
        config.shared_database = shared;
        let mut w = World::new(config);
        let p = w.pair("bank", "alice", false);
        let id = p.token.token_id();
        let tx = w
            .admin(|e, now, b| e.create_transaction(now, &id, "Pay?", 1_000, b))
            .unwrap();
        w.admin(|e, now, b| e.enroll(now, "bank", "bob", b))
            .unwrap();
        let version = |w: &World| {
            w.sink.log.iter().rev().find_map(|m| match m {
                Mutation::TokenState(s) if s.token_id == id => Some(s.version),
                _ => None,
            })
        };
        let before_version = version(&w);
        w.now += 2_000;
        let before = w.sink.log.len();
        w.admin(|e, now, b| e.tick(now, b));
        if shared {
            // The expiry is a compare-and-set of the token: of two servers expiring it, or
            // one expiring it while another records the app's decision, one write fails.
            assert_eq!(writes(&w, before), ["transaction", "state", "tx_expired"]);
            assert_ne!(version(&w), before_version);
        } else {
            assert_eq!(writes(&w, before), ["transaction", "tx_expired"]);
            assert_eq!(version(&w), before_version);
        }
        assert_eq!(
            w.engine.transaction(w.now, &tx).unwrap().state,
            TxState::Expired
        );
        // Bob's enrollment expires: forgotten, and deleted only where no other server may
        // have just written a new one.
        w.now += 30 * 24 * 3_600_000;
        let before = w.sink.log.len();
        w.admin(|e, now, b| e.tick(now, b));
        let deleted = writes(&w, before).contains(&"delete enrollment");
        assert_eq!(deleted, !shared);
        assert_eq!(
            w.engine.status(w.now, "bank", "bob").map(|s| s.state),
            Err(EngineError::UnknownToken)
        );
    }
}

#[test]
fn a_restart_restores_tokens_and_still_refuses_replays() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", true);
    w.open(&mut p).unwrap();
    let recorded = p.last_request.clone();
    // A new engine (new epoch) loaded from the committed records.
    w.restart_from_log(EngineConfig::new(services(), 8, [1; 32]));
    assert_eq!(
        w.engine.status(w.now, "bank", "alice").unwrap().state,
        TokenState::Open
    );
    assert_eq!(w.deliver(&recorded), Err(DropReason::Replayed));
    let r = w.send(&mut p, Request::Close).unwrap();
    assert_eq!(status(&r).1, WireState::Closed);
}

#[test]
fn a_batch_is_published_only_by_a_successful_write() {
    let engine = Engine::new(EngineConfig::new(services(), 7, [9; 32])).unwrap();
    let mut batch = Batch::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        let user = format!("user{i}");
        engine.enroll(T0, "bank", &user, &mut batch).unwrap();
        ids.push(TokenId::derive("bank", &user));
    }
    ids.sort_unstable();
    // Nothing is published before the write: the tokens are unsettled, no event is counted.
    assert_eq!(engine.unsettled_count(), 5);
    assert_eq!(engine.committed_events(EventKind::Enrolled), 0);
    // A failed write publishes nothing and hands the tokens over for a restore.
    let failed = engine.commit(&mut FullDisk, &mut batch).unwrap_err();
    assert_eq!(failed.unsettled, ids);
    assert_eq!(failed.source.kind(), std::io::ErrorKind::Other);
    assert_eq!(engine.committed_events(EventKind::Enrolled), 0);
    assert_eq!(engine.unsettled_count(), 5, "unusable until restored");
    assert_eq!(
        batch.events().count(),
        5,
        "the records stay with the caller"
    );
    assert_eq!(
        engine.status(T0, "bank", "user0").err(),
        Some(EngineError::Unsettled)
    );
    // Written again: published once, every event counted once.
    let mut log = MemoryCommit::default();
    engine.commit(&mut log, &mut batch).unwrap();
    assert!(batch.is_empty(), "a committed batch comes back empty");
    assert_eq!(log.events().count(), 5);
    assert_eq!(engine.committed_events(EventKind::Enrolled), 5);
    // The failed write's tokens are still waiting for their restore.
    assert_eq!(engine.unsettled_count(), 5);
    let restored: Vec<(TokenId, u64)> = failed.unsettled.iter().map(|t| (*t, 0)).collect();
    engine.finish_restore(&restored);
    assert_eq!(engine.unsettled_count(), 0);
    // A group: one write, every batch published.
    let (mut a, mut b) = (Batch::new(), Batch::new());
    engine.enroll(T0, "bank", "ann", &mut a).unwrap();
    engine.enroll(T0, "bank", "bob", &mut b).unwrap();
    engine
        .commit_group(&mut log, &mut [&mut a, &mut b])
        .unwrap();
    assert_eq!(log.commits, 2);
    assert!(a.is_empty() && b.is_empty());
    assert_eq!(engine.committed_events(EventKind::Enrolled), 7);
    assert_eq!(engine.unsettled_count(), 0);
}

#[test]
fn long_poll_wakes_on_change() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    let mut rx = w.engine.watch(&id);
    assert_eq!(rx.try_recv(), Ok(None));
    w.send(&mut p, Request::Status).unwrap();
    assert_eq!(rx.try_recv(), Ok(None), "a read is not a change");
    w.open(&mut p).unwrap();
    assert_eq!(rx.try_recv(), Ok(Some(())));
}

#[test]
fn api_inputs_are_checked() {
    let mut w = world();
    assert_eq!(
        w.admin(|e, now, b| e.enroll(now, "nope", "x", b)),
        Err(EngineError::UnknownService)
    );
    assert!(w.admin(|e, now, b| e.enroll(now, "bank", "", b)).is_err());
    let p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    assert!(w
        .admin(|e, now, b| e.offline_challenge(now, &id, 6, b))
        .is_err());
    assert!(w
        .admin(|e, now, b| e.offline_challenge(now, &id, 36, b))
        .is_err());
    assert_eq!(
        w.admin(|e, now, b| e.offline_response(now, &id, "AAAA", b)),
        Err(EngineError::NoChallenge)
    );
    let ghost = TokenId::derive("bank", "ghost");
    assert_eq!(
        w.admin(|e, now, b| e.force(now, &ghost, Force::Open, b)),
        Err(EngineError::UnknownToken)
    );
    w.admin(|e, now, b| e.enroll(now, "bank", "pending", b))
        .unwrap();
    let pending = TokenId::derive("bank", "pending");
    assert_eq!(
        w.admin(|e, now, b| e.validate_code(now, &pending, "123456", b)),
        Err(EngineError::NotPaired)
    );
    assert!(Engine::new(EngineConfig::new(services(), 0, [0; 32])).is_err());
    let mut bad = services();
    bad[0].window_s = 100_000;
    bad[1].endpoints.clear();
    let Err(EngineError::Config(errors)) = Engine::new(EngineConfig::new(bad, 1, [0; 32])) else {
        panic!()
    };
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["services[0].window_s", "services[1].endpoints"]);
    let _ = codes::group4("ABCD");
}

#[test]
fn out_of_order_counters_are_accepted_once_and_never_lower_the_highest() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    // Three requests leave the phone; the network delivers them 3, 1, 2.
    let sent = w.status_requests(&mut p, 3);
    assert!(w.deliver(&sent[2]).is_ok());
    assert!(w.deliver(&sent[0]).is_ok());
    assert!(w.deliver(&sent[1]).is_ok());
    for s in &sent {
        assert_eq!(w.deliver(s), Err(DropReason::Replayed));
    }
    // After the window is collapsed (idle), nothing old comes back either.
    w.now += 10 * 60_000;
    w.admin(|e, now, b| e.tick(now, b));
    for s in &sent {
        assert_eq!(w.deliver(s), Err(DropReason::Replayed));
    }
    let r = w.send(&mut p, Request::Status);
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn late_counters_far_and_near_below_the_highest_are_accepted_once() {
    // 20 late requests fit the window kept in the token's entry; 45 need the whole window
    // (an unseen counter more than 32 below the highest). Both accept each exactly once.
    for n in [20usize, 45] {
        let mut w = world();
        let mut p = w.pair("bank", "alice", false);
        let mut sent = w.status_requests(&mut p, n);
        let last = sent.pop().unwrap();
        assert!(w.deliver(&last).is_ok());
        // The late ones, odd positions first and then the even ones, each from the top.
        let order: Vec<usize> = (0..sent.len())
            .rev()
            .filter(|i| i % 2 == 1)
            .chain((0..sent.len()).rev().filter(|i| i % 2 == 0))
            .collect();
        for (k, &i) in order.iter().enumerate() {
            assert!(w.deliver(&sent[i]).is_ok(), "n {n}: late request {i}");
            // Everything delivered so far stays refused.
            for &j in &order[..=k] {
                assert_eq!(w.deliver(&sent[j]), Err(DropReason::Replayed), "n {n}: {j}");
            }
            assert_eq!(w.deliver(&last), Err(DropReason::Replayed));
        }
        let r = w.send(&mut p, Request::Status);
        assert!(r.is_ok(), "n {n}: {r:?}");
    }
}

#[test]
fn metrics_count_packets_drops_and_events() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mut w = world();
    let mut p = w.pair("bank", "alice", true);
    w.open(&mut p).unwrap();
    w.open_duress(&mut p).unwrap();
    w.send(&mut p, Request::Status).unwrap();
    let replayed = p.last_request.clone();
    assert!(w.deliver(&replayed).is_err());
    assert!(w.deliver(&[1, 2, 3]).is_err());
    metrics::with_local_recorder(&recorder, || w.engine.export_metrics());
    let values: std::collections::HashMap<String, f64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let k = key.key();
            let labels: Vec<String> = k
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let v = match value {
                DebugValue::Counter(c) => c as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => f64::NAN,
            };
            (format!("{}{{{}}}", k.name(), labels.join(",")), v)
        })
        .collect();
    let get = |k: &str| {
        values
            .get(k)
            .copied()
            .unwrap_or_else(|| panic!("missing {k}: {values:?}"))
    };
    assert_eq!(get("zoftoken_packets_total{type=OPEN,outcome=reply}"), 2.0);
    assert_eq!(
        get("zoftoken_packets_total{type=STATUS,outcome=reply}"),
        1.0
    );
    assert_eq!(
        get("zoftoken_packets_total{type=PAIR_INIT,outcome=reply}"),
        1.0
    );
    assert_eq!(get("zoftoken_drops_total{reason=replayed}"), 1.0);
    assert_eq!(get("zoftoken_drops_total{reason=truncated}"), 1.0);
    assert_eq!(get("zoftoken_events_total{event=opened}"), 2.0);
    assert_eq!(get("zoftoken_events_total{event=duress}"), 1.0);
    assert_eq!(get("zoftoken_events_total{event=blocked}"), 0.0);
    assert_eq!(get("zoftoken_tokens{}"), 1.0);
}

#[test]
fn authkeys_come_from_the_configuration_and_reload() {
    let mut config = EngineConfig::new(services(), 1, [0; 32]);
    config.authkeys = vec![AuthkeyConfig {
        name: "frontend".into(),
        secret_hash: authkeys::hash_secret("k1"),
        admin: false,
        service_mask: "bank".into(),
        user_mask: ".*".into(),
    }];
    let engine = Engine::new(config.clone()).unwrap();
    assert_eq!(
        engine.authorize("k1", Right::Any, "bank", "alice"),
        Access::Allowed("frontend".into())
    );
    assert_eq!(
        engine.authorize("k1", Right::Admin, "bank", "alice"),
        Access::Forbidden
    );
    assert_eq!(
        engine.authorize("k2", Right::Any, "bank", "alice"),
        Access::Unknown
    );
    let mut bad = config.authkeys.clone();
    bad[0].user_mask = "(".into();
    assert!(engine.reload_authkeys(&bad).is_err());
    assert_eq!(
        engine.authorize("k1", Right::Any, "bank", "alice"),
        Access::Allowed("frontend".into()),
        "old keys kept"
    );
    engine.reload_authkeys(&[]).unwrap();
    assert_eq!(
        engine.authorize("k1", Right::Any, "bank", "alice"),
        Access::Unknown
    );
    config.authkeys[0].service_mask = "[".into();
    assert!(matches!(Engine::new(config), Err(EngineError::Config(_))));
}

#[test]
fn pairing_and_admin_operations_run_concurrently() {
    // Admin lookups of pending tokens (pending table) race with pairing (pending, then
    // shard); a lock-order inversion would deadlock here.
    let w = world();
    let engine = &w.engine;
    let users: Vec<String> = (0..150).map(|i| format!("u{i}")).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            for u in &users {
                let mut batch = Batch::new();
                let ticket = engine.enroll(T0, "bank", u, &mut batch).unwrap();
                // Committed (this test has no storage): the token is settled again.
                commit_in_memory(engine, &mut batch);
                let mut pairing =
                    Pairing::from_deeplink(&Deeplink::parse(&ticket.deeplink).unwrap());
                let mut out = [0u8; 1200];
                let mut reply = [0u8; 1200];
                let src: SocketAddr = SRC.parse().unwrap();
                let tx = pairing.init_request(T0, [7; 32], &mut out).unwrap();
                let PacketOutcome::Reply(n) =
                    engine.handle_packet(T0, src, &mut out[..tx.len], &mut reply, &mut batch)
                else {
                    panic!("PAIR_INIT dropped")
                };
                let offer = pairing.handle_init_reply(&mut reply[..n]).unwrap();
                let pin = PinVerifier::from_bytes([1; 32]);
                let tx = pairing.complete_request(&pin, None, T0, &mut out).unwrap();
                assert!(matches!(
                    engine.handle_packet(T0, src, &mut out[..tx.len], &mut reply, &mut batch),
                    PacketOutcome::Reply(_)
                ));
                commit_in_memory(engine, &mut batch);
                assert_eq!(
                    engine.status_by_id(T0, &offer.token_id).unwrap().state,
                    TokenState::Closed
                );
            }
        });
        s.spawn(|| {
            for _ in 0..20 {
                for u in &users {
                    let id = TokenId::derive("bank", u);
                    let mut batch = Batch::new();
                    let r = engine.force(T0, &id, Force::Closed, &mut batch);
                    commit_in_memory(engine, &mut batch);
                    // Unsettled: the pairing thread's change was not committed yet.
                    assert!(
                        r.is_ok()
                            || matches!(
                                r,
                                Err(EngineError::NotPaired
                                    | EngineError::UnknownToken
                                    | EngineError::Unsettled)
                            )
                    );
                }
            }
        });
    });
    assert_eq!(engine.token_count(), 150);
}

#[test]
fn presence_remembers_the_last_source_and_time() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    assert_eq!(w.engine.presence(&id), None);
    w.now += 5_000;
    w.send(&mut p, Request::TimeSync).unwrap();
    let (addr, seen) = w.engine.presence(&id).unwrap();
    assert_eq!(addr, SRC.parse().unwrap());
    assert_eq!(seen, w.now / 1000 * 1000);
    assert_eq!(
        w.engine
            .status(w.now, "bank", "alice")
            .unwrap()
            .last_seen_ms,
        Some(seen)
    );
}

#[test]
fn finished_transactions_and_abandoned_long_polls_are_cleaned_up() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    let tx = w
        .admin(|e, now, b| e.create_transaction(now, &id, "Pay?", 60_000, b))
        .unwrap();
    w.send(&mut p, Request::TxDeny { tx_id: tx }).unwrap();
    // Readable for an hour after its expiry, then gone (and deleted from storage).
    w.now += 60_000 + TX_RETENTION_MS - 1;
    w.admin(|e, now, b| e.tick(now, b));
    assert_eq!(
        w.engine.transaction(w.now, &tx).unwrap().state,
        TxState::Denied
    );
    w.now += 1;
    w.admin(|e, now, b| e.tick(now, b));
    assert_eq!(
        w.engine.transaction(w.now, &tx),
        Err(EngineError::UnknownTransaction)
    );
    assert!(w
        .sink
        .log
        .iter()
        .any(|m| *m == Mutation::DeleteTransaction(tx)));
    // A long poll that gave up does not stay registered forever, and live ones still wake.
    let mut live = w.engine.watch(&id);
    let abandoned = w.engine.watch(&id);
    drop(abandoned);
    assert_eq!(w.engine.waiters(), 2);
    w.admin(|e, now, b| e.tick(now, b));
    assert_eq!(
        w.engine.waiters(),
        1,
        "the abandoned poll is pruned, the live one kept"
    );
    let pin = p.pin.clone();
    p.clock_skew_ms = 0;
    w.send(&mut p, Request::TimeSync).unwrap();
    w.send(&mut p, Request::Open(&pin)).unwrap();
    assert_eq!(live.try_recv(), Ok(Some(())));
}

#[test]
fn every_persisted_change_of_a_token_has_a_newer_version() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    w.open(&mut p).unwrap();
    w.send(&mut p, Request::Status).unwrap();
    w.send(&mut p, Request::Close).unwrap();
    let id = p.token.token_id();
    w.admin(|e, now, b| e.force(now, &id, Force::Blocked, b))
        .unwrap();
    // Re-enrolling keeps counting from the old pairing's versions.
    w.admin(|e, now, b| e.enroll(now, "bank", "alice", b))
        .unwrap();
    let versions: Vec<u32> = w
        .sink
        .log
        .iter()
        .filter_map(|m| match m {
            Mutation::TokenState(s) if s.token_id == id => Some(s.version),
            Mutation::Token(r) if r.token_id() == id => Some(r.status.version),
            _ => None,
        })
        .collect();
    assert!(versions.len() >= 5, "{versions:?}");
    assert!(
        versions.windows(2).all(|v| v[1] > v[0]),
        "versions must increase: {versions:?}"
    );
    let latest = *versions.last().unwrap();
    let mut older = TokenStateRecord::new(id);
    older.version = latest - 1;
    let mut newer = older;
    newer.version = latest;
    assert!(newer.is_newer_than(&older) && !older.is_newer_than(&newer));
    // Serial-number order survives wrap-around.
    older.version = u32::MAX;
    newer.version = 2;
    assert!(newer.is_newer_than(&older));
}

/// A PAIR_COMPLETE for a paired token, sealed by someone who holds the phone's storage (the
/// token secret, the next counter and the phone's unused PIN keys) but not the PIN, with
/// `verifier` as the PIN guess. The PIN key of `index` is one the copied ring still holds
/// (computed here from the PIN root the engine uses, as the phone's ring would give it).
fn forged_pair_complete(
    w: &World,
    id: &TokenId,
    counter: u64,
    index: u32,
    verifier: &PinVerifier,
) -> Vec<u8> {
    forged_pair_complete_sealed(w, id, counter, index, verifier, |_| {})
}

/// [`forged_pair_complete`] with `tamper` applied to the sealed verifier block.
fn forged_pair_complete_sealed(
    w: &World,
    id: &TokenId,
    counter: u64,
    index: u32,
    verifier: &PinVerifier,
    tamper: impl Fn(&mut [u8]),
) -> Vec<u8> {
    use zerocopy::IntoBytes;
    use zoftoken_proto::wire::{Header, PairCompleteRequest, PinIndex, VerifierBlock};
    let secret = w
        .sink
        .log
        .iter()
        .rev()
        .find_map(|m| match m {
            Mutation::Token(r) if r.token_id() == *id => Some(*r.secret.expose()),
            _ => None,
        })
        .unwrap();
    let keys = zoftoken_proto::TokenSecret::from_bytes(secret).keys();
    let pin_key = pin_root(&test_pin_tree_secret(), &secret)
        .key(index)
        .unwrap();
    let block = VerifierBlock {
        pin_verifier: *verifier.expose(),
        duress_verifier: [0; 32],
        flags: 0,
        zero: [0; 7],
    };
    let header = Header::request(zoftoken_proto::MsgType::PairComplete, id.0, counter);
    let mut body = PairCompleteRequest {
        device_time_ms: zoftoken_proto::wire::Be64::new(w.now),
        pin: PinIndex::new(index),
        verifiers: pin_key.seal_verifiers(&header, &block.to_bytes()).unwrap(),
    };
    tamper(&mut body.verifiers);
    let mut out = [0u8; 1200];
    let n = zoftoken_proto::packet::seal_request(
        &keys.d2s,
        zoftoken_proto::MsgType::PairComplete,
        id.0,
        counter,
        body.as_bytes(),
        &mut out,
    )
    .unwrap();
    out[..n].to_vec()
}

/// The PIN-tree secret of `World::new`'s engine (`EngineConfig::new`'s test default).
fn test_pin_tree_secret() -> [u8; 32] {
    EngineConfig::new(services(), 7, [9; 32]).pin_tree_secret
}

#[test]
fn pair_complete_on_a_paired_token_counts_wrong_verifiers_as_failures() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    w.kinds();
    let mut counter = p.token.next_counter() + 10;
    // Three guesses: each wrong verifier is a failed authentication; the third blocks.
    for (n, guess) in ["0000", "1111", "2222"].iter().enumerate() {
        let v = PinVerifier::derive(guess, &id).unwrap();
        let d = forged_pair_complete(&w, &id, counter, 1000 + n as u32, &v);
        counter += 1;
        assert!(w.deliver(&d).is_ok(), "answered");
        assert_eq!(
            w.engine.status_by_id(w.now, &id).unwrap().failures,
            n as u8 + 1
        );
    }
    assert_eq!(
        w.kinds(),
        vec![
            EventKind::FailedAttempt,
            EventKind::FailedAttempt,
            EventKind::FailedAttempt,
            EventKind::Blocked
        ]
    );
    assert_eq!(
        w.engine.status_by_id(w.now, &id).unwrap().state,
        TokenState::Blocked
    );
    // Blocked: the right verifier is not compared (no oracle), nothing more is counted.
    let right = forged_pair_complete(&w, &id, counter, 1010, &p.pin);
    assert!(w.deliver(&right).is_ok());
    assert!(w.kinds().is_empty());
    let r = w.open(&mut p).unwrap();
    assert_eq!(status(&r), (ReplyStatus::Blocked, WireState::Blocked, 0));
}

#[test]
fn a_verifier_block_that_does_not_open_is_dropped_before_its_counter_is_used() {
    let mut w = world();
    let p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    w.kinds();
    let counter = p.token.next_counter() + 1;
    let wrong = PinVerifier::derive("0000", &id).unwrap();
    // A flipped bit in the sealed block, or a block sealed under another index's key: no
    // reply, nothing counted, and the counter still free.
    let flipped = forged_pair_complete_sealed(&w, &id, counter, 7, &wrong, |b| b[3] ^= 1);
    assert_eq!(w.deliver(&flipped).unwrap_err(), DropReason::Unauthentic);
    let moved = forged_pair_complete_sealed(&w, &id, counter, 7, &wrong, |b| {
        let other = pin_root(&test_pin_tree_secret(), &[0; 32]).key(7).unwrap();
        let header = zoftoken_proto::wire::Header::request(
            zoftoken_proto::MsgType::PairComplete,
            id.0,
            counter,
        );
        b.copy_from_slice(&other.seal_verifiers(&header, &[0; 72]).unwrap());
    });
    assert_eq!(w.deliver(&moved).unwrap_err(), DropReason::Unauthentic);
    assert_eq!(w.engine.status_by_id(w.now, &id).unwrap().failures, 0);
    assert!(w.kinds().is_empty());
    let honest = forged_pair_complete(&w, &id, counter, 7, &p.pin);
    assert!(w.deliver(&honest).is_ok(), "the counter was not used up");
}

#[test]
fn a_retransmitted_pair_complete_with_the_stored_verifiers_is_still_ok() {
    let mut w = world();
    let p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    w.kinds();
    let again = forged_pair_complete(&w, &id, p.token.next_counter() + 1, 1011, &p.pin);
    assert!(w.deliver(&again).is_ok());
    let st = w.engine.status_by_id(w.now, &id).unwrap();
    assert_eq!((st.state, st.failures), (TokenState::Closed, 0));
    assert!(w.kinds().is_empty());
}

#[test]
fn a_token_with_a_change_not_yet_written_is_not_answered_by_another_batch() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    w.open(&mut p).unwrap();
    // A CLOSE handled but its batch not yet committed.
    let mut out = [0u8; 1200];
    let tx = p
        .token
        .request(&mut p.store, Request::Close, w.now, &mut out)
        .unwrap();
    let mut close = out[..tx.len].to_vec();
    let mut pending = Batch::new();
    let mut reply = [0u8; 1200];
    let src: SocketAddr = SRC.parse().unwrap();
    let outcome = w
        .engine
        .handle_packet(w.now, src, &mut close, &mut reply, &mut pending);
    assert!(matches!(outcome, PacketOutcome::Reply(_)));
    // Meanwhile: a STATUS in another batch is dropped, the API's read and changes wait.
    let r = w.send(&mut p, Request::Status);
    assert_eq!(r.err(), Some(DropReason::Unsettled));
    assert_eq!(
        w.engine.status_by_id(w.now, &id).err(),
        Some(EngineError::Unsettled)
    );
    assert_eq!(
        w.admin(|e, now, b| e.force(now, &id, Force::Blocked, b))
            .err(),
        Some(EngineError::Unsettled)
    );
    assert_eq!(w.engine.unsettled_count(), 1);
    // Written: everything sees the change.
    w.commit(pending);
    assert_eq!(w.engine.unsettled_count(), 0);
    let r = w.send(&mut p, Request::Status).unwrap();
    assert_eq!(status(&r).1, WireState::Closed);
    assert_eq!(
        w.engine.status_by_id(w.now, &id).unwrap().state,
        TokenState::Closed
    );
}

#[test]
fn a_failed_commit_is_undone_by_restoring_the_token() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    w.open(&mut p).unwrap();
    // What storage holds of the token: its last record and state written.
    let durable = w.stored_token(&id).unwrap();
    // A CLOSE whose batch cannot be written.
    let mut out = [0u8; 1200];
    let tx = p
        .token
        .request(&mut p.store, Request::Close, w.now, &mut out)
        .unwrap();
    let recorded = out[..tx.len].to_vec();
    let mut close = recorded.clone();
    let mut failed = Batch::new();
    let mut reply = [0u8; 1200];
    let src: SocketAddr = SRC.parse().unwrap();
    w.engine
        .handle_packet(w.now, src, &mut close, &mut reply, &mut failed);
    // The write fails: nothing is published, and the driver restores what storage holds:
    // the token is open again in memory.
    let ids = w
        .engine
        .commit(&mut FullDisk, &mut failed)
        .unwrap_err()
        .unsettled;
    assert_eq!(ids, vec![id]);
    let mut restored = Vec::new();
    for t in &ids {
        let highest = w.engine.forget_for_restore(t);
        assert_eq!(highest, tx.counter, "the counter seen in memory is kept");
        w.engine.load_token(&durable).unwrap();
        restored.push((*t, highest));
    }
    w.engine.finish_restore(&restored);
    assert_eq!(w.engine.unsettled_count(), 0);
    assert_eq!(
        w.engine.status_by_id(w.now, &id).unwrap().state,
        TokenState::Open
    );
    // The failed request's counter is not accepted again (its reply would reuse a nonce).
    assert_eq!(w.deliver(&recorded), Err(DropReason::Replayed));
    let r = w.send(&mut p, Request::Status).unwrap();
    assert_eq!(status(&r).1, WireState::Open);
}

#[test]
fn state_changes_per_token_are_limited_per_second() {
    let mut config = EngineConfig::new(services(), 7, [9; 32]);
    config.max_changes_per_s = 3;
    let mut w = World::new(config);
    w.now += 1_000;
    let mut p = w.pair("bank", "alice", false);
    w.now += 1_000;
    w.kinds();
    w.open(&mut p).unwrap();
    w.send(&mut p, Request::Close).unwrap();
    w.open(&mut p).unwrap();
    assert_eq!(
        w.send(&mut p, Request::Close).err(),
        Some(DropReason::RateLimited)
    );
    assert_eq!(w.open(&mut p).err(), Some(DropReason::RateLimited));
    // Reads are not limited.
    assert!(w.send(&mut p, Request::Status).is_ok());
    assert_eq!(w.engine.drops(DropReason::RateLimited), 2);
    assert_eq!(
        w.kinds(),
        vec![EventKind::Opened, EventKind::Closed, EventKind::Opened]
    );
    // The next second allows more.
    w.now += 1_000;
    let r = w.send(&mut p, Request::Close).unwrap();
    assert_eq!(status(&r).1, WireState::Closed);
}

#[test]
fn every_event_of_a_token_has_a_higher_sequence_number_than_the_one_before() {
    let mut w = world();
    let id = TokenId::derive("bank", "alice");
    let mut p = w.pair("bank", "alice", true);
    w.open(&mut p).unwrap();
    w.now += 10 * 60_000;
    w.admin(|e, now, b| e.tick(now, b)); // expired
    w.admin(|e, now, b| e.create_transaction(now, &id, "Pay?", 1_000, b))
        .unwrap();
    w.now += 2_000;
    w.admin(|e, now, b| e.tick(now, b)); // transaction expired
    let wrong = PinVerifier::derive("0000", &p.token.token_id()).unwrap();
    for _ in 0..3 {
        w.send(&mut p, Request::Open(&wrong)).unwrap(); // failures, then a block
    }
    w.admin(|e, now, b| e.force(now, &id, Force::Closed, b))
        .unwrap();
    w.admin(|e, now, b| e.delete(now, &id, b)).unwrap();
    w.admin(|e, now, b| e.enroll(now, "bank", "alice", b))
        .unwrap();
    let seen: Vec<(EventKind, u64)> = w.seen.iter().map(|e| (e.kind, e.sequence)).collect();
    let kinds: Vec<EventKind> = seen.iter().map(|(k, _)| *k).collect();
    for k in [
        EventKind::Enrolled,
        EventKind::Paired,
        EventKind::Opened,
        EventKind::Expired,
        EventKind::TxExpired,
        EventKind::FailedAttempt,
        EventKind::Blocked,
        EventKind::Unblocked,
        EventKind::Deleted,
    ] {
        assert!(kinds.contains(&k), "{k:?} in {kinds:?}");
    }
    assert!(
        seen.windows(2).all(|p| p[0].1 < p[1].1),
        "strictly increasing in the order the changes were made: {seen:?}"
    );
}

/// What the duress tests add to the harness.
trait DuressWorld {
    /// A new engine (new epoch) loaded from the committed records, as after a restart.
    fn restart(&mut self);
    /// The duress events seen since the last call: (operation, actor, transaction).
    fn duress_events(&mut self) -> Vec<(Option<DuressOp>, Actor, Option<[u8; 16]>)>;
}

impl DuressWorld for World {
    fn restart(&mut self) {
        self.restart_from_log(EngineConfig::new(services(), 8, [1; 32]));
    }

    fn duress_events(&mut self) -> Vec<(Option<DuressOp>, Actor, Option<[u8; 16]>)> {
        std::mem::take(&mut self.seen)
            .into_iter()
            .filter(|e| e.kind == EventKind::Duress)
            .inspect(|e| assert!(e.duress))
            .map(|e| (e.operation, e.actor, e.tx_id))
            .collect()
    }
}

#[test]
fn every_duress_use_is_an_event_naming_it_and_the_tokens_last_duress_use() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", true);
    let id = p.token.token_id();
    let duress = p.duress.clone();
    let last = |w: &World| w.engine.status_by_id(w.now, &id).unwrap().last_duress;
    // Nothing yet, and a normal use reports none.
    w.open(&mut p).unwrap();
    assert_eq!(last(&w), None);
    assert!(w.duress_events().is_empty());
    let use_at = |w: &World, op| {
        Some(DuressUse {
            time_ms: w.now,
            operation: op,
        })
    };

    // OPEN.
    w.now += 1_000;
    w.open_duress(&mut p).unwrap();
    assert_eq!(
        w.duress_events(),
        vec![(Some(DuressOp::Open), Actor::Device, None)]
    );
    assert_eq!(last(&w), use_at(&w, DuressOp::Open));

    // An app one-time code.
    w.now += 30_000;
    let code = p.token.one_time_code(&duress, w.now).unwrap();
    let r = w.admin(|e, now, b| e.validate_code(now, &id, &code, b));
    assert_eq!(r, Ok(OfflineOutcome::Accepted { duress: true }));
    assert_eq!(
        w.duress_events(),
        vec![(Some(DuressOp::OneTimeCode), Actor::Operator, None)]
    );
    assert_eq!(last(&w), use_at(&w, DuressOp::OneTimeCode));

    // An offline response.
    w.now += 1_000;
    let challenge = w
        .admin(|e, now, b| e.offline_challenge(now, &id, 8, b))
        .unwrap();
    let response = p.token.offline_response(&duress, &challenge).unwrap();
    let r = w.admin(|e, now, b| e.offline_response(now, &id, &response, b));
    assert_eq!(r, Ok(OfflineOutcome::Accepted { duress: true }));
    assert_eq!(
        w.duress_events(),
        vec![(Some(DuressOp::OfflineResponse), Actor::Operator, None)]
    );
    assert_eq!(last(&w), use_at(&w, DuressOp::OfflineResponse));

    // TX_APPROVE: the event names the transaction too.
    w.now += 1_000;
    let tx = w
        .admin(|e, now, b| e.create_transaction(now, &id, "Pay?", 60_000, b))
        .unwrap();
    let r = w
        .send(
            &mut p,
            Request::TxApprove {
                tx_id: tx,
                pin: &duress,
            },
        )
        .unwrap();
    assert!(matches!(r, Reply::TxDecided(s, _, TxState::Approved) if s.status == ReplyStatus::Ok));
    assert_eq!(
        w.duress_events(),
        vec![(Some(DuressOp::TxApprove), Actor::Device, Some(tx))]
    );
    assert_eq!(last(&w), use_at(&w, DuressOp::TxApprove));

    // CHANGE_PIN: nothing changes, but the use is recorded.
    w.now += 1_000;
    let new = PinVerifier::derive("97531", &id).unwrap();
    let r = w
        .send(
            &mut p,
            Request::ChangePin {
                current: &duress,
                new: &new,
                new_duress: None,
            },
        )
        .unwrap();
    assert_eq!(status(&r).0, ReplyStatus::Ok);
    assert_eq!(
        w.duress_events(),
        vec![(Some(DuressOp::ChangePin), Actor::Device, None)]
    );
    let at = use_at(&w, DuressOp::ChangePin);
    assert_eq!(last(&w), at);

    // Normal uses afterwards do not clear it; a restart restores it; so does re-enrollment.
    w.now += 1_000;
    w.open(&mut p).unwrap();
    assert_eq!(last(&w), at);
    w.restart();
    assert_eq!(last(&w), at);
    let st = w.engine.status_by_id(w.now, &id).unwrap();
    assert!(!st.duress, "the current open was not made under duress");
    let _new_phone = w.pair("bank", "alice", true);
    assert_eq!(last(&w), at);
    w.restart();
    assert_eq!(last(&w), at);
    // Deleting the token is what forgets it.
    w.admin(|e, now, b| e.delete(now, &id, b)).unwrap();
    w.admin(|e, now, b| e.enroll_totp(now, "bank", "alice", b))
        .unwrap();
    assert_eq!(last(&w), None);
}

#[test]
fn a_duress_use_is_not_recorded_where_the_service_does_not_allow_duress() {
    let mut w = world();
    let p = w.pair("bank", "alice", true);
    let id = p.token.token_id();
    // The service stops allowing duress after pairing: a duress code is an ordinary success.
    let mut svc = services();
    svc[0].duress_allowed = false;
    w.engine.reload_services(svc).unwrap();
    let code = p.token.one_time_code(&p.duress, w.now).unwrap();
    let r = w.admin(|e, now, b| e.validate_code(now, &id, &code, b));
    assert_eq!(r, Ok(OfflineOutcome::Accepted { duress: false }));
    assert!(w.duress_events().is_empty());
    assert_eq!(w.engine.status_by_id(w.now, &id).unwrap().last_duress, None);
}

#[test]
fn resubmitting_an_accepted_app_code_is_a_failed_authentication() {
    let mut w = world();
    let p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    let code = p.token.one_time_code(&p.pin, w.now).unwrap();
    let ok = w.admin(|e, now, b| e.validate_code(now, &id, &code, b));
    assert_eq!(ok, Ok(OfflineOutcome::Accepted { duress: false }));
    w.kinds();
    for left in [2, 1] {
        let again = w.admin(|e, now, b| e.validate_code(now, &id, &code, b));
        assert_eq!(
            again,
            Ok(OfflineOutcome::Rejected {
                attempts_left: left
            })
        );
        assert_eq!(w.kinds(), vec![EventKind::FailedAttempt]);
    }
    let third = w.admin(|e, now, b| e.validate_code(now, &id, &code, b));
    assert_eq!(third, Ok(OfflineOutcome::Blocked));
    assert_eq!(
        w.kinds(),
        vec![EventKind::FailedAttempt, EventKind::Blocked]
    );
}

#[test]
fn status_on_a_blocked_token_is_ok_while_close_is_blocked() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    w.admin(|e, now, b| e.force(now, &id, Force::Blocked, b))
        .unwrap();
    let r = w.send(&mut p, Request::Status).unwrap();
    assert_eq!(status(&r), (ReplyStatus::Ok, WireState::Blocked, 0));
    let r = w.send(&mut p, Request::TimeSync).unwrap();
    assert_eq!(status(&r), (ReplyStatus::Ok, WireState::Blocked, 0));
    let r = w.send(&mut p, Request::Close).unwrap();
    assert_eq!(status(&r), (ReplyStatus::Blocked, WireState::Blocked, 0));
    // CLOSE does not unblock.
    assert_eq!(
        w.engine.status_by_id(w.now, &id).unwrap().state,
        TokenState::Blocked
    );
}

#[test]
fn an_admin_blocked_token_answers_a_pair_complete_retransmission_with_no_attempts_left() {
    let mut w = world();
    let p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    let wrong = PinVerifier::derive("0000", &id).unwrap();
    let mut counter = p.token.next_counter() + 5;
    // One failure (attempts_left 2), then an administrator blocks the token.
    let d = forged_pair_complete(&w, &id, counter, 2000, &wrong);
    counter += 1;
    let reply = w.deliver(&d).unwrap();
    let r = open_status_reply(&w, &id, reply);
    assert_eq!(r, (ReplyStatus::WrongPin as u8, WireState::Closed as u8, 2));
    w.admin(|e, now, b| e.force(now, &id, Force::Blocked, b))
        .unwrap();
    for (index, v) in [(2001, &p.pin), (2002, &wrong)] {
        let d = forged_pair_complete(&w, &id, counter, index, v);
        counter += 1;
        let reply = w.deliver(&d).unwrap();
        let r = open_status_reply(&w, &id, reply);
        assert_eq!(r, (ReplyStatus::Blocked as u8, WireState::Blocked as u8, 0));
    }
    let st = w.engine.status_by_id(w.now, &id).unwrap();
    assert_eq!(
        (st.state, st.attempts_left, st.failures),
        (TokenState::Blocked, 0, 1)
    );
}

/// (status, state, attempts_left) of a reply to a forged request of token `id`.
fn open_status_reply(w: &World, id: &TokenId, mut reply: Vec<u8>) -> (u8, u8, u8) {
    let secret = w
        .sink
        .log
        .iter()
        .rev()
        .find_map(|m| match m {
            Mutation::Token(r) if r.token_id() == *id => Some(*r.secret.expose()),
            _ => None,
        })
        .unwrap();
    let keys = zoftoken_proto::TokenSecret::from_bytes(secret).keys();
    let r = zoftoken_proto::packet::open_reply(&keys.s2d, &mut reply).unwrap();
    let b = r.body.status();
    (b.status, b.state, b.attempts_left)
}

#[test]
fn a_duress_pair_complete_refused_on_a_pending_token_reads_pending() {
    let mut w = world();
    let ticket = w
        .admin(|e, now, b| e.enroll(now, "bank", "alice", b))
        .unwrap();
    let mut pairing = Pairing::from_deeplink(&Deeplink::parse(&ticket.deeplink).unwrap());
    let mut out = [0u8; 1200];
    let tx = pairing.init_request(w.now, [3; 32], &mut out).unwrap();
    let mut reply = w.deliver(&out[..tx.len]).unwrap();
    let offer = pairing.handle_init_reply(&mut reply).unwrap();
    assert!(offer.service.duress_allowed);
    // The service stops allowing duress between PAIR_INIT and PAIR_COMPLETE.
    let mut svc = services();
    svc[0].duress_allowed = false;
    w.engine.reload_services(svc).unwrap();
    let pin = PinVerifier::derive("2468", &offer.token_id).unwrap();
    let duress = PinVerifier::derive("1357", &offer.token_id).unwrap();
    w.kinds();
    let tx = pairing
        .complete_request(&pin, Some(&duress), w.now, &mut out)
        .unwrap();
    let mut reply = w.deliver(&out[..tx.len]).unwrap();
    let refused = pairing
        .handle_complete_reply(&mut MemoryStore::default(), &mut reply)
        .unwrap()
        .unwrap_err();
    assert_eq!(
        (refused.status, refused.state, refused.attempts_left),
        (ReplyStatus::Refused, WireState::Pending, 3)
    );
    assert_eq!(
        w.engine.status(w.now, "bank", "alice").unwrap().state,
        TokenState::Pending
    );
    assert!(w.kinds().is_empty(), "nothing changed");
}

#[test]
fn a_wrong_offline_response_does_not_use_up_the_validation_code() {
    let mut w = world();
    let p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    let challenge = w
        .admin(|e, now, b| e.offline_challenge(now, &id, 8, b))
        .unwrap();
    for left in [2, 1] {
        let r = w.admin(|e, now, b| e.offline_response(now, &id, "AAAA-AAAA", b));
        assert_eq!(
            r,
            Ok(OfflineOutcome::Rejected {
                attempts_left: left
            })
        );
    }
    let response = p.token.offline_response(&p.pin, &challenge).unwrap();
    let r = w.admin(|e, now, b| e.offline_response(now, &id, &response, b));
    assert_eq!(r, Ok(OfflineOutcome::Accepted { duress: false }));
    // A correct response uses it up.
    let again = w.admin(|e, now, b| e.offline_response(now, &id, &response, b));
    assert_eq!(again, Err(EngineError::NoChallenge));
}

#[test]
fn a_decision_naming_another_tokens_transaction_is_no_transaction_and_changes_nothing() {
    let mut w = world();
    let mut alice = w.pair("bank", "alice", true);
    let bob = w.pair("bank", "bob", false);
    let bob_id = bob.token.token_id();
    let tx = w
        .admin(|e, now, b| e.create_transaction(now, &bob_id, "Pay?", 60_000, b))
        .unwrap();
    w.kinds();
    let (pin, wrong) = (
        alice.pin.clone(),
        PinVerifier::derive("0000", &alice.token.token_id()).unwrap(),
    );
    for req in [
        Request::TxApprove {
            tx_id: tx,
            pin: &pin,
        },
        Request::TxApprove {
            tx_id: tx,
            pin: &wrong,
        },
        Request::TxDeny { tx_id: tx },
    ] {
        let name = format!("{req:?}");
        let r = w.send(&mut alice, req).unwrap();
        match r {
            Reply::TxDecided(s, id, state) => {
                assert_eq!(
                    (s.status, s.attempts_left, id, state),
                    (ReplyStatus::NoTransaction, 3, tx, TxState::Expired),
                    "{name}"
                );
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // No PIN was checked (no failure), nothing was decided, nothing happened.
    assert!(w.kinds().is_empty());
    assert_eq!(
        w.engine.transaction(w.now, &tx).unwrap().state,
        TxState::Waiting
    );
}

/// Runs PAIR_INIT for `ticket` as the device does, and also derives the candidate token keys
/// the way the device does, for forging requests under them.
fn pair_init_with_keys(
    w: &mut World,
    ticket: &EnrollmentTicket,
) -> (Pairing, zoftoken_proto::TokenKeys, TokenId) {
    let link = Deeplink::parse(&ticket.deeplink).unwrap();
    let enrollment = link.secret.keys();
    let mut pairing = Pairing::from_deeplink(&link);
    let random = [0x42; 32];
    let mut out = [0u8; 1200];
    let tx = pairing.init_request(w.now, random, &mut out).unwrap();
    let reply = w.deliver(&out[..tx.len]).unwrap();
    let mut copy = reply.clone();
    let opened = zoftoken_proto::packet::open_reply(&enrollment.s2d, &mut copy).unwrap();
    let zoftoken_proto::wire::ReplyBody::PairInit(init) = opened.body else {
        panic!("a PAIR_INIT reply");
    };
    let secret = zoftoken_proto::pairing::Ephemeral::from_random(random)
        .device_agree(&init.server_public, &enrollment.pairing_id)
        .unwrap()
        .secret;
    let mut reply = reply;
    let offer = pairing.handle_init_reply(&mut reply).unwrap();
    (pairing, secret.keys(), offer.token_id)
}

fn forged_status(
    w: &World,
    keys: &zoftoken_proto::TokenKeys,
    id: &TokenId,
    counter: u64,
) -> Vec<u8> {
    let mut body = [0u8; 24];
    body[..8].copy_from_slice(&w.now.to_be_bytes());
    let mut out = [0u8; 1200];
    let n = zoftoken_proto::packet::seal_request(
        &keys.d2s,
        zoftoken_proto::MsgType::Status,
        id.0,
        counter,
        &body,
        &mut out,
    )
    .unwrap();
    out[..n].to_vec()
}

#[test]
fn requests_under_a_candidate_key_before_pair_complete_are_dropped() {
    let mut w = world();
    // A new token: only PAIR_COMPLETE may use the candidate key.
    let ticket = w
        .admin(|e, now, b| e.enroll(now, "bank", "alice", b))
        .unwrap();
    let (mut pairing, keys, id) = pair_init_with_keys(&mut w, &ticket);
    let d = forged_status(&w, &keys, &id, 1);
    assert_eq!(w.deliver(&d), Err(DropReason::UnknownToken));
    // A re-enrolled token: the old key is still the token's, the candidate opens nothing
    // but PAIR_COMPLETE.
    let mut old = w.pair("bank", "bob", false);
    let ticket = w
        .admin(|e, now, b| e.enroll(now, "bank", "bob", b))
        .unwrap();
    let (_, bob_keys, bob_id) = pair_init_with_keys(&mut w, &ticket);
    let d = forged_status(&w, &bob_keys, &bob_id, 50);
    assert_eq!(w.deliver(&d), Err(DropReason::Unauthentic));
    let r = w.send(&mut old, Request::Status).unwrap();
    assert_eq!(status(&r).0, ReplyStatus::NotPaired);
    // The dropped request consumed nothing: alice's pairing completes with counter 1.
    let pin = PinVerifier::derive("2468", &id).unwrap();
    let mut out = [0u8; 1200];
    let tx = pairing
        .complete_request(&pin, None, w.now, &mut out)
        .unwrap();
    let mut reply = w.deliver(&out[..tx.len]).unwrap();
    assert!(pairing
        .handle_complete_reply(&mut MemoryStore::default(), &mut reply)
        .unwrap()
        .is_ok());
}

#[test]
fn re_enrolling_a_pending_token_invalidates_the_older_deeplink_and_manual_code() {
    let mut w = world();
    let first = w
        .admin(|e, now, b| e.enroll(now, "bank", "alice", b))
        .unwrap();
    // The first deeplink's PAIR_INIT already has a candidate when the token is re-enrolled.
    let mut started = Pairing::from_deeplink(&Deeplink::parse(&first.deeplink).unwrap());
    let mut out = [0u8; 1200];
    let tx = started.init_request(w.now, [1; 32], &mut out).unwrap();
    let mut reply = w.deliver(&out[..tx.len]).unwrap();
    let offer = started.handle_init_reply(&mut reply).unwrap();
    let second = w
        .admin(|e, now, b| e.enroll(now, "bank", "alice", b))
        .unwrap();
    assert_ne!(first.deeplink, second.deeplink);
    // The pairing begun with the first link cannot complete…
    let pin = PinVerifier::derive("2468", &offer.token_id).unwrap();
    let tx = started
        .complete_request(&pin, None, w.now, &mut out)
        .unwrap();
    assert_eq!(w.deliver(&out[..tx.len]), Err(DropReason::UnknownToken));
    // …and neither form of the first enrollment starts a new one.
    let mut by_link = Pairing::from_deeplink(&Deeplink::parse(&first.deeplink).unwrap());
    let tx = by_link.init_request(w.now, [2; 32], &mut out).unwrap();
    assert_eq!(w.deliver(&out[..tx.len]), Err(DropReason::UnknownToken));
    let mut by_code = Pairing::from_manual_code(
        &first.manual_code,
        "bank",
        vec!["127.0.0.1:4500".into()],
        None,
    )
    .unwrap();
    let tx = by_code.init_request(w.now, [3; 32], &mut out).unwrap();
    assert_eq!(w.deliver(&out[..tx.len]), Err(DropReason::UnknownToken));
    // The second enrollment's manual code works.
    let by_code = Pairing::from_manual_code(
        &second.manual_code,
        "bank",
        vec!["127.0.0.1:4500".into()],
        None,
    )
    .unwrap();
    let _p = w.pair_with(by_code, false);
    assert_eq!(
        w.engine.status(w.now, "bank", "alice").unwrap().state,
        TokenState::Closed
    );
}

#[test]
fn the_clock_offset_and_code_drift_survive_a_restart() {
    let mut w = world();
    let mut p = w.pair("bank", "alice", false);
    let id = p.token.token_id();
    // The phone's clock is set 10 minutes ahead; TIME_SYNC records the offset.
    p.clock_skew_ms = 600_000;
    w.send(&mut p, Request::TimeSync).unwrap();
    // A code made one step further ahead sets the drift to 1.
    let code = p.token.one_time_code(&p.pin, w.now + 630_000).unwrap();
    let r = w.admin(|e, now, b| e.validate_code(now, &id, &code, b));
    assert_eq!(r, Ok(OfflineOutcome::Accepted { duress: false }));
    w.restart();
    // Without the offset, a request 10 minutes ahead would be stale.
    w.now += 1_000;
    let r = w.send(&mut p, Request::Status).unwrap();
    assert_eq!(status(&r).0, ReplyStatus::Ok);
    // Two steps later and still one step ahead: found only with the remembered drift.
    w.now += 59_000;
    let code = p.token.one_time_code(&p.pin, w.now + 630_000).unwrap();
    let r = w.admin(|e, now, b| e.validate_code(now, &id, &code, b));
    assert_eq!(r, Ok(OfflineOutcome::Accepted { duress: false }));
}
