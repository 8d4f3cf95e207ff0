//! The device's rules for per-request PIN keys: each key is taken once and the ring without it
//! is saved before the request leaves; retransmissions take new keys; a used-up ring or a
//! state from before PIN keys means pairing again.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use base64::Engine as _;
use zoftoken_device::{DeviceError, MemoryStore, Request, StateStore, Token};
use zoftoken_proto::pin_keys::PIN_INDEX_LIMIT;
use zoftoken_proto::{PinKeyRing, PinMatch};

fn saved_ring(store: &MemoryStore) -> PinKeyRing {
    let state: serde_json::Value = serde_json::from_slice(&store.load().unwrap().unwrap()).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(state["pin_keys"].as_str().unwrap())
        .unwrap();
    PinKeyRing::from_bytes(&bytes).unwrap()
}

#[test]
fn each_pin_request_saves_the_ring_without_its_key_before_it_leaves() {
    let (mut w, mut token, pin, _) = common::pair([1; 32], "2468", None, 2);
    // Three PAIR_COMPLETE attempts took indices 0, 1, 2; the token continues at 3.
    assert_eq!(saved_ring(&w.store).next_index(), 3);
    assert_eq!(w.server.seen[0].index, Some(2));
    let saves = w.store.saves;
    w.send(&mut token, Request::Open(&pin), true);
    assert_eq!(w.store.saves, saves + 1);
    assert_eq!(saved_ring(&w.store).next_index(), 4);
    // The retransmission: a new counter and a new index; the server accepts it.
    w.send(&mut token, Request::Open(&pin), false).unwrap();
    assert_eq!(saved_ring(&w.store).next_index(), 5);
    let last = w.server.seen.last().unwrap();
    assert_eq!((last.index, last.pin), (Some(4), Some(PinMatch::Normal)));
    // Requests without a PIN take no key; TX_DENY carries an all-zero index.
    w.send(&mut token, Request::Status, false).unwrap();
    w.send(&mut token, Request::TxDeny { tx_id: [3; 16] }, false)
        .unwrap();
    assert_eq!(saved_ring(&w.store).next_index(), 5);
    assert_eq!(w.sent.last().unwrap().len(), 96);
    // The saved state restores the ring.
    let restored = Token::load(&w.store).unwrap().unwrap();
    assert_eq!(restored.pin_keys_left(), PIN_INDEX_LIMIT - 5);
}

#[test]
fn a_failed_save_sends_nothing_and_the_key_is_not_used_again() {
    struct Broken;
    impl StateStore for Broken {
        fn save(&mut self, _: &[u8]) -> Result<(), DeviceError> {
            Err(DeviceError::Store("disk full".into()))
        }
        fn load(&self) -> Result<Option<Vec<u8>>, DeviceError> {
            Ok(None)
        }
    }
    let (mut w, mut token, pin, _) = common::pair([2; 32], "2468", None, 0);
    let mut out = [0u8; 1200];
    assert!(token
        .request(&mut Broken, Request::Open(&pin), common::NOW, &mut out)
        .is_err());
    assert!(out.iter().all(|b| *b == 0), "no datagram written");
    // The next request uses the next index, never index 1 again.
    w.send(&mut token, Request::Open(&pin), false).unwrap();
    assert_eq!(w.server.seen.last().unwrap().index, Some(2));
}

#[test]
fn a_used_up_ring_says_to_pair_again_and_sends_nothing() {
    let (w, token, pin, _) = common::pair([3; 32], "2468", None, 0);
    let mut state: serde_json::Value = serde_json::from_slice(&token.to_bytes().unwrap()).unwrap();
    state["pin_keys"] = base64::engine::general_purpose::STANDARD
        .encode(PIN_INDEX_LIMIT.to_be_bytes())
        .into();
    let mut token = Token::from_bytes(&serde_json::to_vec(&state).unwrap()).unwrap();
    assert_eq!(token.pin_keys_left(), 0);
    let mut store = w.store.clone();
    let (saves, counter) = (store.saves, token.next_counter());
    let mut out = [0u8; 1200];
    for request in [
        Request::Open(&pin),
        Request::TxApprove {
            tx_id: [1; 16],
            pin: &pin,
        },
        Request::ChangePin {
            current: &pin,
            new: &pin,
            new_duress: None,
        },
    ] {
        let e = token
            .request(&mut store, request, common::NOW, &mut out)
            .unwrap_err();
        assert!(matches!(e, DeviceError::PairAgain(_)), "{e}");
        assert!(e.to_string().contains("paired again"), "{e}");
    }
    assert_eq!((store.saves, token.next_counter()), (saves, counter));
    assert!(out.iter().all(|b| *b == 0));
    // Requests without a PIN still work.
    assert!(token
        .request(&mut store, Request::Status, common::NOW, &mut out)
        .is_ok());
}

#[test]
fn a_state_from_before_pin_keys_says_to_pair_again() {
    let (_, token, _, _) = common::pair([4; 32], "2468", None, 0);
    let mut state: serde_json::Value = serde_json::from_slice(&token.to_bytes().unwrap()).unwrap();
    assert_eq!(state["version"], 2);
    state["version"] = 1.into();
    state.as_object_mut().unwrap().remove("pin_keys");
    let e = Token::from_bytes(&serde_json::to_vec(&state).unwrap()).unwrap_err();
    assert!(matches!(e, DeviceError::PairAgain(_)), "{e}");
    state["version"] = 3.into();
    let e = Token::from_bytes(&serde_json::to_vec(&state).unwrap()).unwrap_err();
    assert!(matches!(e, DeviceError::CorruptState(_)), "{e}");
    // A version-2 state whose ring does not decode is corrupt, not silently repaired.
    let mut state: serde_json::Value = serde_json::from_slice(&token.to_bytes().unwrap()).unwrap();
    state["pin_keys"] = "AAAA".into();
    let e = Token::from_bytes(&serde_json::to_vec(&state).unwrap()).unwrap_err();
    assert!(matches!(e, DeviceError::CorruptState(_)), "{e}");
}
