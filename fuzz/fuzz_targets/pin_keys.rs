//! The PIN material round trip (SPEC.md §6.3), with the real cipher: a key ring driven from a
//! fuzzed start and number of takes yields the root's keys in order and survives its encoding;
//! any byte string either decodes to a ring that re-encodes to the same bytes or is refused;
//! sealed verifier blocks open only unchanged, under their key and header; proofs are
//! classified as the keys and verifiers say.
#![no_main]
#[cfg(feature = "insecure-fuzzing-aead")]
compile_error!("pin_keys checks the real cipher: build it without insecure-fuzzing-aead");

use libfuzzer_sys::fuzz_target;
use zoftoken_proto::pin::check_proof;
use zoftoken_proto::pin_keys::{PinKeyRing, PIN_INDEX_LIMIT};
use zoftoken_proto::wire::{Header, MsgType};
use zoftoken_proto::{PinMatch, PinRoot, PinVerifier};

fuzz_target!(|data: &[u8]| {
    // Any bytes as an encoded ring: refused, or a fixed point of decode/encode.
    if let Ok(ring) = PinKeyRing::from_bytes(data) {
        assert_eq!(ring.to_bytes(), data);
    }
    let Some((head, rest)) = data.split_first_chunk::<40>() else {
        return;
    };
    let (root_bytes, tail) = head.split_at(32);
    let root = PinRoot::from_bytes(root_bytes.try_into().unwrap());
    let takes = usize::from(tail[0] % 8);
    let index = u32::from_be_bytes([0, tail[1], tail[2], tail[3]]);
    let counter = u64::from(u32::from_be_bytes([tail[4], tail[5], tail[6], tail[7]])).max(1);
    // A fresh ring's first keys are the root's first keys, and the encoding keeps the state.
    let mut ring = PinKeyRing::new(root.clone());
    for i in 0..takes {
        let (n, key) = ring.take().unwrap();
        assert_eq!(n, i as u32);
        assert_eq!(key, root.key(n).unwrap());
        assert_eq!(PinKeyRing::from_bytes(&ring.to_bytes()).unwrap(), ring);
    }
    assert!(root.key(PIN_INDEX_LIMIT).is_err());
    let key = root.key(index).unwrap();
    // Sealed verifiers: the block from the input, a round trip, and no tampered variant opens.
    let mut block = [0u8; 72];
    for (b, x) in block.iter_mut().zip(rest.iter().cycle()) {
        *b = *x;
    }
    let header = Header::request(MsgType::ChangePin, [tail[0]; 16], counter);
    let sealed = key.seal_verifiers(&header, &block).unwrap();
    assert_eq!(key.open_verifiers(&header, &sealed).unwrap(), block);
    let mut flipped = sealed;
    let at = usize::from(tail[1]) % flipped.len();
    flipped[at] ^= 1 << (tail[2] % 8);
    assert!(key.open_verifiers(&header, &flipped).is_err());
    let other = Header::request(MsgType::ChangePin, [tail[0]; 16], counter + 1);
    assert!(key.open_verifiers(&other, &sealed).is_err());
    if index + 1 < PIN_INDEX_LIMIT {
        assert!(root.key(index + 1).unwrap().open_verifiers(&header, &sealed).is_err());
    }
    // Proofs: the normal and duress verifiers from the block.
    let normal = PinVerifier::from_bytes(block[..32].try_into().unwrap());
    let duress = PinVerifier::from_bytes(block[32..64].try_into().unwrap());
    let id = [tail[3]; 16];
    let p = normal.proof(&key, MsgType::Open, &id, counter);
    assert_eq!(
        check_proof(&p, &key, &normal, Some(&duress), MsgType::Open, &id, counter),
        PinMatch::Normal
    );
    let d = duress.proof(&key, MsgType::Open, &id, counter);
    let expect = if d == p { PinMatch::Normal } else { PinMatch::Duress };
    assert_eq!(
        check_proof(&d, &key, &normal, Some(&duress), MsgType::Open, &id, counter),
        expect
    );
    if index + 1 < PIN_INDEX_LIMIT {
        let next = root.key(index + 1).unwrap();
        assert_eq!(
            check_proof(&p, &next, &normal, None, MsgType::Open, &id, counter),
            PinMatch::Wrong
        );
    }
});
