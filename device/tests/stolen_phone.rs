//! The attack the per-request PIN keys exist to stop: someone copies a phone's storage and has
//! recorded all of its earlier traffic. With the token secret `K` from the copy they can read
//! every request, but no key they hold (`K`, every key derived from it, every key of the
//! stored PIN key ring and everything below those) recomputes a recorded PIN proof or opens a
//! recorded verifier block, so they have no offline test of a PIN guess. The server's PIN key
//! of a request would have given them one: the positive control shows that the attacker's
//! procedure finds the PIN with it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use base64::Engine as _;
use zoftoken_device::{Request, StateStore};
use zoftoken_proto::aead::PacketKey;
use zoftoken_proto::keys::context;
use zoftoken_proto::packet::open_request;
use zoftoken_proto::pin_keys::{PIN_TREE_DEPTH, SEALED_VERIFIERS_LEN};
use zoftoken_proto::wire::{Header, RequestBody};
use zoftoken_proto::{
    MsgType, PinKey, PinKeyRing, PinMatch, PinRoot, PinVerifier, TokenId, TokenSecret,
};

const ROOT: [u8; 32] = [0x9c; 32];

/// What the attacker reads in one recorded request.
struct Record {
    msg_type: MsgType,
    header: Header,
    index: Option<u32>,
    proof: Option<[u8; 16]>,
    sealed: Option<[u8; SEALED_VERIFIERS_LEN]>,
}

/// Decrypts a recorded request with the token secret's request key.
fn read(k: &TokenSecret, datagram: &[u8]) -> Record {
    let mut buf = datagram.to_vec();
    let opened = open_request(&k.keys().d2s, &mut buf).expect("K opens the recorded request");
    let (index, proof, sealed) = match opened.body {
        RequestBody::PairComplete(p) => (Some(p.pin.index.get()), None, Some(p.verifiers)),
        RequestBody::Open(o) => (Some(o.pin.index.get()), Some(o.proof), None),
        RequestBody::TxApprove(t) => (Some(t.pin.index.get()), Some(t.proof), None),
        RequestBody::ChangePin(c) => (Some(c.pin.index.get()), Some(c.proof), Some(c.verifiers)),
        _ => (None, None, None),
    };
    Record {
        msg_type: opened.msg_type,
        header: *opened.header,
        index,
        proof,
        sealed,
    }
}

/// The tree's child function (SPEC.md §6.3), as anyone can compute it.
fn child(node: &[u8; 32], depth: u8, digit: u8) -> [u8; 32] {
    *blake3::keyed_hash(node, &[depth, digit]).as_bytes()
}

fn digit(index: u32, depth: usize) -> u8 {
    (index >> (8 * (PIN_TREE_DEPTH - depth))) as u8
}

/// Every leaf-level key `node` gives for `index` if it sat at any depth of the tree (0: as a
/// root): the attacker does not need to know where a stored key belongs.
fn descend(node: &[u8; 32], index: u32) -> Vec<[u8; 32]> {
    let mut out = vec![*node];
    for start in 0..PIN_TREE_DEPTH {
        let mut n = *node;
        for depth in start + 1..=PIN_TREE_DEPTH {
            n = child(&n, depth as u8, digit(index, depth));
        }
        out.push(n);
    }
    out
}

/// The attacker's offline test: every key as a PIN key (and as the verifier seal key itself)
/// against every recorded sealed block, and every (key, PIN candidate) against every
/// recorded proof. Returns what it found.
fn attack(keys: &[[u8; 32]], pins: &[(&str, PinVerifier)], records: &[Record]) -> Vec<String> {
    let mut found = Vec::new();
    for key in keys {
        let pin_key = PinKey::from_bytes(*key);
        for r in records {
            if let Some(sealed) = &r.sealed {
                if pin_key.open_verifiers(&r.header, sealed).is_ok() {
                    found.push(format!("verifiers of {} opened", r.msg_type.name()));
                }
                let mut buf = *sealed;
                let direct = PacketKey::new(*key).open_in_place(
                    0,
                    r.header.counter.get(),
                    zerocopy::IntoBytes::as_bytes(&r.header),
                    &mut buf,
                );
                if direct.is_ok() {
                    found.push(format!(
                        "verifiers of {} opened directly",
                        r.msg_type.name()
                    ));
                }
            }
            if let Some(proof) = &r.proof {
                for (name, v) in pins {
                    let p = v.proof(
                        &pin_key,
                        r.msg_type,
                        &r.header.token_id,
                        r.header.counter.get(),
                    );
                    if &p == proof {
                        found.push(format!("PIN {name} matches {}", r.msg_type.name()));
                    }
                }
            }
        }
    }
    found
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_copy_of_the_phone_and_its_recorded_traffic_gives_no_offline_pin_test() {
    // Pairing (one PAIR_COMPLETE lost on the way), then a day of use: OPENs (one lost and
    // retransmitted), a transaction approved, the duress PIN once, a PIN change.
    let (mut w, mut token, pin, duress) = common::pair(ROOT, "2468", Some("1357"), 1);
    let duress = duress.unwrap();
    let id = token.token_id();
    assert!(w.send(&mut token, Request::Open(&pin), true).is_none());
    w.send(&mut token, Request::Open(&pin), false).unwrap();
    w.send(&mut token, Request::Status, false).unwrap();
    w.send(
        &mut token,
        Request::TxApprove {
            tx_id: [7; 16],
            pin: &pin,
        },
        false,
    )
    .unwrap();
    w.send(&mut token, Request::Open(&duress), false).unwrap();
    let new_pin = PinVerifier::derive("97531", &id).unwrap();
    w.send(
        &mut token,
        Request::ChangePin {
            current: &pin,
            new: &new_pin,
            new_duress: Some(&duress),
        },
        false,
    )
    .unwrap();
    w.send(&mut token, Request::Open(&new_pin), false).unwrap();
    // The server saw what the phone meant: the protocol works.
    let outcomes: Vec<_> = w
        .server
        .seen
        .iter()
        .map(|s| (s.msg_type, s.index, s.pin))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (MsgType::PairComplete, Some(1), None),
            (MsgType::Open, Some(3), Some(PinMatch::Normal)),
            (MsgType::Status, None, None),
            (MsgType::TxApprove, Some(4), Some(PinMatch::Normal)),
            (MsgType::Open, Some(5), Some(PinMatch::Duress)),
            (MsgType::ChangePin, Some(6), Some(PinMatch::Normal)),
            (MsgType::Open, Some(7), Some(PinMatch::Normal)),
        ]
    );
    assert_eq!(w.server.verifiers.as_ref().unwrap().0, new_pin);

    // The attacker: the phone's storage, as the store holds it, and every datagram sent.
    let stored = w.store.load().unwrap().unwrap();
    let state: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    let k: [u8; 32] = hex::decode(state["secret"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let ring_bytes = base64::engine::general_purpose::STANDARD
        .decode(state["pin_keys"].as_str().unwrap())
        .unwrap();
    let ring = PinKeyRing::from_bytes(&ring_bytes).unwrap();
    let secret = TokenSecret::from_bytes(k);

    // 1. The traffic is readable with K (PAIR_INIT is under the enrollment keys; it carries
    // no PIN material).
    let records: Vec<Record> = w.sent[1..].iter().map(|d| read(&secret, d)).collect();
    let indices: Vec<u32> = records.iter().filter_map(|r| r.index).collect();
    assert_eq!(indices, vec![0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(records.iter().filter(|r| r.proof.is_some()).count(), 6);
    assert_eq!(records.iter().filter(|r| r.sealed.is_some()).count(), 3);

    // 2. Every key the attacker holds, and everything below each for the recorded indices.
    let mut from_k = vec![k];
    for ctx in [
        context::D2S,
        context::S2D,
        context::OTP,
        context::OFFLINE,
        context::PIN_SEAL,
        context::PIN_ROOT_PAD,
        context::TOKEN_SECRET,
    ] {
        from_k.push(blake3::derive_key(ctx, &k));
    }
    let held: Vec<[u8; 32]> = ring.held_keys().copied().collect();
    // Next index 8: depth-1 nodes 1..=255, depth-2 nodes 1..=255 under 0, leaves 8..=255.
    assert_eq!(
        held.len(),
        255 + 255 + 248,
        "the ring holds its unused keys"
    );
    let mut keys = Vec::new();
    for node in from_k.iter().chain(&held) {
        for &index in &indices {
            keys.extend(descend(node, index));
        }
    }
    let candidates: Vec<(&str, PinVerifier)> = ["2468", "1357", "97531", "0000", "1234"]
        .into_iter()
        .map(|p| (p, PinVerifier::derive(p, &id).unwrap()))
        .collect();
    let found = attack(&keys, &candidates, &records);
    assert!(
        found.is_empty(),
        "offline PIN test from the copy: {found:?}"
    );

    // Positive control: the same procedure with the PIN keys only the server can compute
    // finds every PIN and opens every verifier block.
    let root = PinRoot::from_bytes(ROOT);
    let server_keys: Vec<[u8; 32]> = indices
        .iter()
        .map(|&p| *root.key(p).unwrap().expose())
        .collect();
    let found = attack(&server_keys, &candidates, &records);
    for expected in [
        "PIN 2468 matches OPEN",
        "PIN 2468 matches TX_APPROVE",
        "PIN 1357 matches OPEN",
        "PIN 2468 matches CHANGE_PIN",
        "PIN 97531 matches OPEN",
        "verifiers of PAIR_COMPLETE opened",
        "verifiers of CHANGE_PIN opened",
    ] {
        assert!(found.iter().any(|f| f == expected), "{expected}: {found:?}");
    }

    // 3. The copy holds neither the root, nor a verifier, nor the key of any index used, in
    // any form: raw, hex, or among the ring's keys.
    let mut secrets: Vec<[u8; 32]> = vec![ROOT, *pin.expose(), *duress.expose(), *new_pin.expose()];
    secrets.extend(&server_keys);
    for s in &secrets {
        assert!(!contains(&stored, s));
        assert!(!contains(&stored, hex::encode(s).as_bytes()));
        assert!(!contains(&ring_bytes, s));
        assert!(held.iter().all(|h| h != s));
    }
    assert_eq!(ring.next_index(), 8);
    assert_eq!(token.pin_keys_left(), (1 << 24) - 8);
}

#[test]
fn the_attack_would_work_against_proofs_keyed_by_the_token_secret_alone() {
    // Control of the control: a proof made with a key the copy does hold (a K-derived key in
    // the PIN key's place, as before per-request PIN keys) is found at once.
    let id = TokenId::derive("Banco Ejemplo", "alice");
    let k = [0x21; 32];
    let v = PinVerifier::derive("2468", &id).unwrap();
    let stand_in = blake3::derive_key(context::D2S, &k);
    let header = Header::request(MsgType::Open, id.0, 9);
    let proof = v.proof(&PinKey::from_bytes(stand_in), MsgType::Open, &id.0, 9);
    let record = Record {
        msg_type: MsgType::Open,
        header,
        index: Some(0),
        proof: Some(proof),
        sealed: None,
    };
    let found = attack(&[stand_in], &[("2468", v)], &[record]);
    assert_eq!(found, vec!["PIN 2468 matches OPEN".to_owned()]);
}
