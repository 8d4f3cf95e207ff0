//! Replays `proto-spec/vectors/session.json` through the device state machine: every request
//! it builds must be byte-identical to the vector, and every vector reply must decode to the
//! vector's fields. Then checks the device's own safety rules.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_arguments,
    missing_docs
)]

use serde_json::Value;
use zoftoken_device::{DeviceError, MemoryStore, Pairing, Reply, Request, StateStore, Token};
use zoftoken_proto::deeplink::Deeplink;
use zoftoken_proto::{DropReason, PinVerifier, ReplyStatus, WireState};

fn session() -> Value {
    // The directory at run time, not baked in at compile time: a shared target directory may
    // hold a test binary built in another checkout.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test");
    let path = std::path::Path::new(&dir).join("../proto-spec/vectors/session.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn arr16(v: &Value) -> [u8; 16] {
    unhex(v).try_into().unwrap()
}

/// Pairs through the vectors; returns the token, its store and the PINs' verifiers.
fn pair(v: &Value) -> (Token, MemoryStore, PinVerifier, PinVerifier) {
    let link = Deeplink::parse(v["deeplink"].as_str().unwrap()).unwrap();
    let mut pairing = Pairing::from_deeplink(&link);
    let pi = &v["pair_init"];
    let mut out = [0u8; 1200];
    let random: [u8; 32] = unhex(&pi["device_ephemeral_random"]).try_into().unwrap();
    let tx = pairing
        .init_request(pi["device_time_ms"].as_u64().unwrap(), random, &mut out)
        .unwrap();
    assert_eq!(
        &out[..tx.len],
        unhex(&pi["request"]["datagram"]).as_slice(),
        "PAIR_INIT bytes"
    );
    let offer = pairing
        .handle_init_reply(&mut unhex(&pi["reply"]["datagram"]))
        .unwrap();
    assert_eq!(offer.token_id.to_hex(), v["token_id"].as_str().unwrap());
    assert!(offer.service.duress_allowed);
    assert_eq!(
        (
            offer.service.otp_length,
            offer.service.otp_period_s,
            offer.service.window_s
        ),
        (8, 30, 600)
    );
    let pin = PinVerifier::derive(v["pins"]["pin"].as_str().unwrap(), &offer.token_id).unwrap();
    let duress =
        PinVerifier::derive(v["pins"]["duress_pin"].as_str().unwrap(), &offer.token_id).unwrap();
    let m = &v["messages"][0];
    let t = m["request"]["fields"]["device_time_ms"].as_u64().unwrap();
    let tx = pairing
        .complete_request(&pin, Some(&duress), t, &mut out)
        .unwrap();
    assert_eq!(
        &out[..tx.len],
        unhex(&m["request"]["datagram"]).as_slice(),
        "PAIR_COMPLETE bytes"
    );
    let mut store = MemoryStore::default();
    let token = pairing
        .handle_complete_reply(&mut store, &mut unhex(&m["reply"]["datagram"]))
        .unwrap()
        .unwrap();
    assert_eq!(store.saves, 1);
    (token, store, pin, duress)
}

#[test]
fn device_reproduces_the_session_vectors() {
    let v = session();
    let (mut token, mut store, pin, duress) = pair(&v);
    let id = token.token_id();
    let wrong = PinVerifier::derive("0000", &id).unwrap();
    let new_pin = PinVerifier::derive("97531", &id).unwrap();
    let new_duress = PinVerifier::derive("8642", &id).unwrap();
    let mut out = [0u8; 1200];
    let mut seen_types = std::collections::BTreeSet::new();
    for m in v["messages"].as_array().unwrap().iter().skip(1) {
        let name = m["name"].as_str().unwrap();
        let f = &m["request"]["fields"];
        let pin_named = |p: &str| match p {
            "2468" => &pin,
            "1357" => &duress,
            _ => &wrong,
        };
        let msg_type = m["type"].as_str().unwrap();
        seen_types.insert(msg_type.to_owned());
        let request = match msg_type {
            "OPEN" => Request::Open(pin_named(f["pin"].as_str().unwrap())),
            "CLOSE" => Request::Close,
            "STATUS" => Request::Status,
            "TIME_SYNC" => Request::TimeSync,
            "TX_FETCH" => Request::TxFetch,
            "TX_APPROVE" => Request::TxApprove {
                tx_id: arr16(&f["tx_id"]),
                pin: pin_named(f["pin"].as_str().unwrap()),
            },
            "TX_DENY" => Request::TxDeny {
                tx_id: arr16(&f["tx_id"]),
            },
            "CHANGE_PIN" => Request::ChangePin {
                current: &pin,
                new: &new_pin,
                new_duress: Some(&new_duress),
            },
            other => panic!("unexpected type {other}"),
        };
        let saves = store.saves;
        let tx = token
            .request(
                &mut store,
                request,
                f["device_time_ms"].as_u64().unwrap(),
                &mut out,
            )
            .unwrap();
        assert_eq!(
            store.saves,
            saves + 1,
            "{name}: counter saved before sending"
        );
        assert_eq!(tx.counter, m["counter"].as_u64().unwrap());
        assert_eq!(
            &out[..tx.len],
            unhex(&m["request"]["datagram"]).as_slice(),
            "{name}: request bytes"
        );
        let reply = token
            .handle_reply(&mut unhex(&m["reply"]["datagram"]))
            .unwrap();
        let rf = &m["reply"]["fields"];
        let sf = rf.get("status").filter(|s| s.is_object()).unwrap_or(rf);
        let s = reply.status();
        assert_eq!(s.status as u64, sf["status"].as_u64().unwrap(), "{name}");
        assert_eq!(s.state as u64, sf["state"].as_u64().unwrap(), "{name}");
        assert_eq!(
            u64::from(s.attempts_left),
            sf["attempts_left"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            s.open_until_ms,
            sf["open_until_ms"].as_u64().unwrap(),
            "{name}"
        );
        match (&reply, msg_type) {
            (Reply::Transaction(_, Some(tx)), "TX_FETCH") => {
                assert_eq!(tx.message, rf["message"].as_str().unwrap());
                assert_eq!(tx.tx_id, arr16(&rf["tx_id"]));
            }
            (Reply::Transaction(s, None), "TX_FETCH") => {
                assert_eq!(s.status, ReplyStatus::NoTransaction)
            }
            (Reply::TxDecided(_, tx_id, state), "TX_APPROVE" | "TX_DENY") => {
                assert_eq!(*tx_id, arr16(&rf["tx_id"]));
                assert_eq!(*state as u64, rf["tx_state"].as_u64().unwrap());
            }
            (Reply::Status(_), _) => {}
            other => panic!("{name}: unexpected reply {other:?}"),
        }
    }
    // Every message type after pairing is in the session.
    assert_eq!(seen_types.len(), 8, "{seen_types:?}");
    // One-time codes and the offline exchange need no network.
    for c in v["one_time_codes"]["codes"].as_array().unwrap() {
        let t = c["device_time_ms"].as_u64().unwrap();
        assert_eq!(
            token.one_time_code(&pin, t).unwrap(),
            c["code_pin"].as_str().unwrap()
        );
        assert_eq!(
            token.one_time_code(&duress, t).unwrap(),
            c["code_duress_pin"].as_str().unwrap()
        );
    }
    let off = &v["offline"];
    let vc = off["validation_code"].as_str().unwrap();
    assert_eq!(
        token.offline_response(&pin, vc).unwrap(),
        off["response_pin"].as_str().unwrap()
    );
    assert_eq!(
        token.offline_response(&duress, &vc.to_lowercase()).unwrap(),
        off["response_duress_pin"].as_str().unwrap()
    );
    // The saved state restores the token with the counter where it left off.
    let restored = Token::load(&store).unwrap().unwrap();
    assert_eq!(restored.next_counter(), token.next_counter());
    assert_eq!(restored.token_id(), token.token_id());
}

#[test]
fn device_drops_replies_that_do_not_answer_it() {
    let v = session();
    let (mut token, mut store, pin, _) = pair(&v);
    let open = &v["messages"][1];
    let mut out = [0u8; 1200];
    // Nothing outstanding yet: even an authentic reply is dropped.
    let err = token
        .handle_reply(&mut unhex(&open["reply"]["datagram"]))
        .unwrap_err();
    assert!(
        matches!(err, DeviceError::Dropped(DropReason::UnexpectedReply)),
        "{err}"
    );
    let t = open["request"]["fields"]["device_time_ms"]
        .as_u64()
        .unwrap();
    token
        .request(&mut store, Request::Open(&pin), t, &mut out)
        .unwrap();
    // Every single-bit flip of the reply is refused, and the request stays outstanding.
    let reply = unhex(&open["reply"]["datagram"]);
    for bit in 0..reply.len() * 8 {
        let mut r = reply.clone();
        r[bit / 8] ^= 1 << (bit % 8);
        assert!(token.handle_reply(&mut r).is_err(), "bit {bit}");
    }
    let ok = token.handle_reply(&mut reply.clone()).unwrap();
    assert_eq!(ok.status().state, WireState::Open);
    // A reply is accepted once.
    assert!(token.handle_reply(&mut reply.clone()).is_err());
    // A request-typed datagram is not a reply.
    assert!(token
        .handle_reply(&mut unhex(&open["request"]["datagram"]))
        .is_err());
}

#[test]
fn a_failing_store_means_nothing_is_sent() {
    struct Broken;
    impl StateStore for Broken {
        fn save(&mut self, _: &[u8]) -> Result<(), DeviceError> {
            Err(DeviceError::Store("disk full".into()))
        }
        fn load(&self) -> Result<Option<Vec<u8>>, DeviceError> {
            Ok(None)
        }
    }
    let v = session();
    let (mut token, _, _, _) = pair(&v);
    let before = token.next_counter();
    let mut out = [0u8; 1200];
    assert!(token
        .request(&mut Broken, Request::Status, 0, &mut out)
        .is_err());
    // The counter moved on anyway: it is never reused even if a later save succeeds.
    assert_eq!(token.next_counter(), before + 1);
    assert!(out.iter().all(|b| *b == 0), "no datagram written");
}

#[test]
fn corrupt_state_is_a_clear_error() {
    assert!(matches!(
        Token::from_bytes(b"{}"),
        Err(DeviceError::CorruptState(_))
    ));
    assert!(matches!(
        Token::from_bytes(b"not json"),
        Err(DeviceError::CorruptState(_))
    ));
    let v = session();
    let (token, _, _, _) = pair(&v);
    let mut state: Value = serde_json::from_slice(&token.to_bytes().unwrap()).unwrap();
    let secret_hex = state["secret"].as_str().unwrap().to_owned();
    assert!(
        !format!("{token:?}").contains(&secret_hex),
        "Debug must not print the secret"
    );
    state["secret"] = Value::from("abcd");
    let bytes = serde_json::to_vec(&state).unwrap();
    assert!(matches!(
        Token::from_bytes(&bytes),
        Err(DeviceError::CorruptState(_))
    ));
}

#[test]
fn duress_pin_is_refused_locally_when_the_service_forbids_it() {
    let v = session();
    let (token, mut store, pin, duress) = pair(&v);
    let mut out = [0u8; 1200];
    let mut state: Value = serde_json::from_slice(&token.to_bytes().unwrap()).unwrap();
    state["service"]["duress_allowed"] = Value::from(false);
    let mut strict = Token::from_bytes(&serde_json::to_vec(&state).unwrap()).unwrap();
    let change = Request::ChangePin {
        current: &pin,
        new: &pin,
        new_duress: Some(&duress),
    };
    assert!(matches!(
        strict.request(&mut store, change, 0, &mut out),
        Err(DeviceError::OutOfOrder(_))
    ));
    let change = Request::ChangePin {
        current: &pin,
        new: &pin,
        new_duress: None,
    };
    assert!(strict.request(&mut store, change, 0, &mut out).is_ok());
}
