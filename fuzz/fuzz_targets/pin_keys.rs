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

/// Where the cached rings start: the beginning and just before each kind of group boundary.
const STARTS: [u32; 7] = [0, 254, 255, 65_534, 65_535, PIN_INDEX_LIMIT - 2, PIN_INDEX_LIMIT - 1];

thread_local! {
    /// A fixed root and its ring at each of [`STARTS`] (building a ring costs up to 766
    /// hashes, so they are built once and cloned).
    static FIXED: (PinRoot, Vec<PinKeyRing>) = {
        let root = PinRoot::from_bytes([0x5a; 32]);
        let rings: Vec<PinKeyRing> = STARTS.iter().map(|s| ring_at(&root, *s)).collect();
        assert_eq!(rings[0], PinKeyRing::new(root.clone()), "the ring of a new pairing");
        (root, rings)
    };
}

/// `root`'s ring with `start` indices used, from its canonical encoding: the depth-1 nodes
/// after `start`'s first digit, the depth-2 nodes after its second, the leaves from its third.
fn ring_at(root: &PinRoot, start: u32) -> PinKeyRing {
    let keys_from = |node: [u8; 32], depth: u8, from: usize| -> Vec<u8> {
        (from..256)
            .flat_map(|d| *blake3::keyed_hash(&node, &[depth, d as u8]).as_bytes())
            .collect()
    };
    let d = start.to_be_bytes();
    let n1 = *blake3::keyed_hash(root.expose(), &[1, d[1]]).as_bytes();
    let n2 = *blake3::keyed_hash(&n1, &[2, d[2]]).as_bytes();
    let mut bytes = d.to_vec();
    bytes.extend(keys_from(*root.expose(), 1, usize::from(d[1]) + 1));
    bytes.extend(keys_from(n1, 2, usize::from(d[2]) + 1));
    bytes.extend(keys_from(n2, 3, usize::from(d[3])));
    PinKeyRing::from_bytes(&bytes).unwrap()
}

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
    let which = usize::from(tail[5]) % STARTS.len();
    let start = STARTS[which];
    let index = u32::from_be_bytes([0, tail[1], tail[2], tail[3]]);
    let counter = u64::from(u32::from_be_bytes([tail[4], tail[5], tail[6], tail[7]])).max(1);
    // A ring of a fixed root at a group boundary (or the start) yields that root's keys in
    // order, up to the last index, and its encoding keeps the state.
    let mut ring = FIXED.with(|(_, rings)| rings[which].clone());
    for i in 0..takes as u32 {
        let Ok((n, key)) = ring.take() else {
            assert!(start + i >= PIN_INDEX_LIMIT);
            break;
        };
        assert_eq!(n, start + i);
        assert_eq!(key, FIXED.with(|(root, _)| root.key(n).unwrap()));
    }
    // The encoding keeps the state after the takes (compared as encodings: the ring's own
    // equality is constant-time, byte by byte; once per input, as it is 24 KB).
    let bytes = ring.to_bytes();
    assert_eq!(PinKeyRing::from_bytes(&bytes).unwrap().to_bytes(), bytes);
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
