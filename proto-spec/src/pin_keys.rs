//! Per-request PIN keys (SPEC.md §6.3): a forward-secure key tree that keeps PIN material out
//! of reach of anyone who copies a phone's storage and recorded its earlier traffic.
//!
//! At pairing the server gives the device a 32-byte *PIN root* `R`, sealed under the pairing's
//! X25519 shared secret (never under the token secret `K`). `R` is the root of a tree of
//! [`PIN_TREE_DEPTH`] levels of 256 children; its 2²⁴ leaves are the *PIN keys*
//! `M_0 … M_(2²⁴−1)`. Every PIN-bearing request names one index `p` and uses `M_p` for its
//! proof and, when it carries new verifiers, to seal them ([`PinKey`]).
//!
//! The device keeps only the nodes that cover indices it has not used yet ([`PinKeyRing`]) and
//! takes each index once: a copy of its storage therefore holds nothing from which the keys of
//! earlier requests can be computed (each child is a one-way function of its parent). The
//! server keeps `R` (or recomputes it) and derives `M_p` in three keyed hashes ([`PinRoot::key`]).
//!
//! This module does not decide how the server remembers `R`; the engine derives it from an
//! instance secret and `K`.

use std::fmt;

use zeroize::Zeroize;

use crate::aead::PacketKey;
use crate::error::{DropReason, Error};
use crate::keys::{context, SecretBytes};
use crate::wire::Header;

/// Number of PIN keys of one pairing (indices `0 .. PIN_INDEX_LIMIT`), and the length of a
/// sealed verifier block: wire constants (a request's PIN index field is checked against the
/// first when its body is parsed), re-exported where the key tree is.
pub use crate::wire::{PIN_INDEX_LIMIT, SEALED_VERIFIERS_LEN};

/// Levels below the root.
pub const PIN_TREE_DEPTH: usize = 3;
/// Children per node.
pub const PIN_TREE_ARITY: usize = 256;
// The tree's leaves are exactly the indices a request may name.
const _: () = assert!(PIN_INDEX_LIMIT as usize == PIN_TREE_ARITY.pow(PIN_TREE_DEPTH as u32));

/// The child of `node` at `depth` (1–3) with digit `digit`: `BLAKE3-keyed(node, u8(depth) ‖
/// u8(digit))`.
fn child(node: &[u8; 32], depth: u8, digit: u8) -> SecretBytes {
    SecretBytes::new(*blake3::keyed_hash(node, &[depth, digit]).as_bytes())
}

/// The digit of `index` at `depth` (1 is the most significant of the three bytes).
fn digit(index: u32, depth: usize) -> u8 {
    let shift = 8 * (PIN_TREE_DEPTH - depth);
    ((index >> shift) & 0xff) as u8
}

/// The PIN root of a token (the server's copy, or the device's before its first request).
#[derive(Clone, PartialEq, Eq)]
pub struct PinRoot(SecretBytes);

impl fmt::Debug for PinRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinRoot(<redacted>)")
    }
}

impl PinRoot {
    /// Wraps 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> PinRoot {
        PinRoot(SecretBytes::new(bytes))
    }

    /// The root bytes (sealed into the PAIR_INIT reply by the server).
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }

    /// The PIN key of index `index` (server side, and for tests). An index at or above
    /// [`PIN_INDEX_LIMIT`] is refused.
    pub fn key(&self, index: u32) -> Result<PinKey, DropReason> {
        if index >= PIN_INDEX_LIMIT {
            return Err(DropReason::InvalidField);
        }
        let mut node = child(self.expose(), 1, digit(index, 1));
        for depth in 2..=PIN_TREE_DEPTH {
            node = child(node.expose(), depth as u8, digit(index, depth));
        }
        Ok(PinKey(node))
    }
}

/// The key of one PIN-bearing request (`M_p`).
#[derive(Clone, PartialEq, Eq)]
pub struct PinKey(SecretBytes);

impl fmt::Debug for PinKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinKey(<redacted>)")
    }
}

impl PinKey {
    /// Wraps 32 bytes (tests and the vectors).
    pub fn from_bytes(bytes: [u8; 32]) -> PinKey {
        PinKey(SecretBytes::new(bytes))
    }

    /// The key bytes (they enter the PIN proof, SPEC.md §6.3).
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }

    /// The key that seals new verifiers: `BLAKE3-derive("… pin seal", M_p)`.
    fn seal_key(&self) -> PacketKey {
        PacketKey::new(blake3::derive_key(context::PIN_SEAL, self.expose()))
    }

    /// Seals the 72-byte verifier block of PAIR_COMPLETE or CHANGE_PIN with ChaCha20-Poly1305
    /// under the seal key, the request's nonce and its header as associated data.
    pub fn seal_verifiers(
        &self,
        header: &Header,
        block: &[u8; 72],
    ) -> Result<[u8; SEALED_VERIFIERS_LEN], Error> {
        let mut out = [0u8; SEALED_VERIFIERS_LEN];
        let (text, tag) = out.split_at_mut(72);
        text.copy_from_slice(block);
        let t = self.seal_key().seal_in_place(
            0,
            header.counter.get(),
            zerocopy::IntoBytes::as_bytes(header),
            text,
        )?;
        tag.copy_from_slice(&t);
        Ok(out)
    }

    /// Opens a sealed verifier block; a block that does not authenticate is dropped.
    pub fn open_verifiers(
        &self,
        header: &Header,
        sealed: &[u8; SEALED_VERIFIERS_LEN],
    ) -> Result<[u8; 72], DropReason> {
        let mut buf = *sealed;
        let result = self
            .seal_key()
            .open_in_place(
                0,
                header.counter.get(),
                zerocopy::IntoBytes::as_bytes(header),
                &mut buf,
            )
            .ok()
            .and_then(|plain| <[u8; 72]>::try_from(&*plain).ok());
        buf.zeroize();
        result.ok_or(DropReason::Unauthentic)
    }
}

/// The device's PIN keys: the nodes of the tree that cover the indices not used yet, and
/// nothing else (SPEC.md §6.3).
///
/// For the next index `q` with digits `(d1, d2, d3)` it holds the depth-1 nodes `d1+1 ..= 255`,
/// the depth-2 nodes `d2+1 ..= 255` under `d1`, and the leaves `d3 ..= 255` under `(d1, d2)`:
/// at most 765 keys. Its canonical encoding ([`PinKeyRing::to_bytes`]) is `u32(q)` followed by
/// those keys in that order.
#[derive(Clone, PartialEq, Eq)]
pub struct PinKeyRing {
    next: u32,
    /// Per depth (index 0 = depth 1), the remaining nodes in increasing digit order.
    levels: [Vec<SecretBytes>; PIN_TREE_DEPTH],
}

impl fmt::Debug for PinKeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PinKeyRing(next={}, <redacted>)", self.next)
    }
}

impl PinKeyRing {
    /// The ring of a new pairing: expands the root down to leaf 0 and forgets the root.
    pub fn new(root: PinRoot) -> PinKeyRing {
        let mut ring = PinKeyRing {
            next: 0,
            levels: Default::default(),
        };
        ring.levels[0] = (0..=255u8).map(|d| child(root.expose(), 1, d)).collect();
        ring.refill();
        drop(root);
        ring
    }

    /// The index the next [`PinKeyRing::take`] returns.
    pub fn next_index(&self) -> u32 {
        self.next
    }

    /// Whether every index has been used (the token must be paired again).
    pub fn is_exhausted(&self) -> bool {
        self.next >= PIN_INDEX_LIMIT
    }

    /// Takes the next unused index and its key, and forgets that key. The caller MUST persist
    /// the ring (its new state) before the request that uses the key leaves the device.
    pub fn take(&mut self) -> Result<(u32, PinKey), Error> {
        if self.is_exhausted() {
            return Err(Error::PinKeysExhausted);
        }
        let leaves = &mut self.levels[PIN_TREE_DEPTH - 1];
        if leaves.is_empty() {
            return Err(Error::PinKeysExhausted);
        }
        let key = PinKey(leaves.remove(0));
        let index = self.next;
        self.next += 1;
        self.refill();
        Ok((index, key))
    }

    /// When the leaves ran out, walks up to the nearest level that still has a node and
    /// expands down to the leaf of `next`, erasing every expanded parent.
    fn refill(&mut self) {
        if self.is_exhausted() {
            self.levels.iter_mut().for_each(Vec::clear);
            return;
        }
        // The deepest level that still has a node (the leaves, unless they ran out).
        let Some(from) = self.levels.iter().rposition(|level| !level.is_empty()) else {
            return;
        };
        for i in from..PIN_TREE_DEPTH - 1 {
            let (upper, lower) = self.levels.split_at_mut(i + 1);
            let (Some(parents), Some(children)) = (upper.last_mut(), lower.first_mut()) else {
                return;
            };
            if parents.is_empty() {
                return;
            }
            let parent = parents.remove(0);
            *children = (0..=255u8)
                .map(|d| child(parent.expose(), i as u8 + 2, d))
                .collect();
        }
    }

    /// The canonical encoding: `u32(next)` then the keys, depth 1 first.
    pub fn to_bytes(&self) -> Vec<u8> {
        let count: usize = self.levels.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(4 + 32 * count);
        out.extend_from_slice(&self.next.to_be_bytes());
        for level in &self.levels {
            for key in level {
                out.extend_from_slice(key.expose());
            }
        }
        out
    }

    /// Decodes [`PinKeyRing::to_bytes`]; the number of keys must be the one `next` implies.
    pub fn from_bytes(bytes: &[u8]) -> Result<PinKeyRing, Error> {
        let bad = || Error::InvalidMessage("PIN key ring encoding");
        let (next, mut rest) = bytes.split_first_chunk::<4>().ok_or_else(bad)?;
        let next = u32::from_be_bytes(*next);
        if next > PIN_INDEX_LIMIT {
            return Err(bad());
        }
        let mut levels: [Vec<SecretBytes>; PIN_TREE_DEPTH] = Default::default();
        if next < PIN_INDEX_LIMIT {
            for (i, level) in levels.iter_mut().enumerate() {
                let depth = i + 1;
                let first = usize::from(digit(next, depth)) + usize::from(depth < PIN_TREE_DEPTH);
                for _ in first..PIN_TREE_ARITY {
                    let (key, tail) = rest.split_first_chunk::<32>().ok_or_else(bad)?;
                    level.push(SecretBytes::new(*key));
                    rest = tail;
                }
            }
        }
        if !rest.is_empty() {
            return Err(bad());
        }
        Ok(PinKeyRing { next, levels })
    }

    /// Every key the ring holds (for tests that play an attacker who copied the device).
    pub fn held_keys(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.levels.iter().flatten().map(SecretBytes::expose)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_yields_the_roots_keys_in_order() {
        let root = PinRoot::from_bytes([9; 32]);
        let mut ring = PinKeyRing::new(root.clone());
        for i in 0..600u32 {
            let (index, key) = ring.take().unwrap();
            assert_eq!(index, i);
            assert_eq!(key, root.key(i).unwrap());
        }
        assert_eq!(ring.next_index(), 600);
    }

    #[test]
    fn the_ring_crosses_every_group_boundary() {
        let root = PinRoot::from_bytes([3; 32]);
        // Start just below the end of a depth-2 group and of a depth-1 group.
        for start in [65_534u32, PIN_INDEX_LIMIT - 2] {
            let mut ring = ring_at(&root, start);
            for i in start..start.saturating_add(3).min(PIN_INDEX_LIMIT) {
                let (index, key) = ring.take().unwrap();
                assert_eq!((index, &key), (i, &root.key(i).unwrap()));
                let copy = PinKeyRing::from_bytes(&ring.to_bytes()).unwrap();
                assert_eq!(copy, ring, "the encoding keeps the state after {i}");
            }
        }
        let mut last = ring_at(&root, PIN_INDEX_LIMIT - 1);
        assert!(last.take().is_ok());
        assert!(last.is_exhausted());
        assert_eq!(last.take().unwrap_err(), Error::PinKeysExhausted);
        assert_eq!(last.to_bytes(), PIN_INDEX_LIMIT.to_be_bytes().to_vec());
        assert!(root.key(PIN_INDEX_LIMIT).is_err());
    }

    /// A ring whose next index is `start`, built the way a device would have reached it.
    fn ring_at(root: &PinRoot, start: u32) -> PinKeyRing {
        let mut levels: [Vec<SecretBytes>; PIN_TREE_DEPTH] = Default::default();
        let mut node = SecretBytes::new(*root.expose());
        for (i, level) in levels.iter_mut().enumerate() {
            let depth = i + 1;
            let d = digit(start, depth);
            let from = usize::from(d) + usize::from(depth < PIN_TREE_DEPTH);
            for c in from..PIN_TREE_ARITY {
                level.push(child(node.expose(), depth as u8, c as u8));
            }
            node = child(node.expose(), depth as u8, d);
        }
        PinKeyRing {
            next: start,
            levels,
        }
    }

    #[test]
    fn a_copied_ring_holds_no_key_of_an_index_already_used() {
        let root = PinRoot::from_bytes([5; 32]);
        let mut ring = PinKeyRing::new(root.clone());
        let used: Vec<u32> = (0..300).map(|_| ring.take().unwrap().0).collect();
        // Everything derivable from the copy: the held keys and all their descendants cover
        // only indices >= 300. Check the held keys and one level of descendants directly.
        let held: Vec<[u8; 32]> = ring.held_keys().copied().collect();
        assert!(held.len() <= 3 * 255 + 1);
        for index in used {
            let key = root.key(index).unwrap();
            assert!(held.iter().all(|k| k != key.expose()));
            for k in &held {
                for depth in 1..=3u8 {
                    for d in 0..=255u8 {
                        assert_ne!(child(k, depth, d).expose(), key.expose());
                    }
                }
            }
        }
        assert!(held.iter().all(|k| k != root.expose()));
    }

    #[test]
    fn malformed_encodings_are_refused() {
        let ring = PinKeyRing::new(PinRoot::from_bytes([1; 32]));
        let bytes = ring.to_bytes();
        assert_eq!(bytes.len(), 4 + 32 * 766);
        assert!(PinKeyRing::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(PinKeyRing::from_bytes(&longer).is_err());
        assert!(PinKeyRing::from_bytes(&[0, 0]).is_err());
        assert!(PinKeyRing::from_bytes(&(PIN_INDEX_LIMIT + 1).to_be_bytes()).is_err());
    }

    #[test]
    fn sealed_verifiers_open_only_under_their_key_and_header() {
        let key = PinRoot::from_bytes([2; 32]).key(7).unwrap();
        let header = Header::request(crate::wire::MsgType::ChangePin, [4; 16], 12);
        let block = [0x42u8; 72];
        let sealed = key.seal_verifiers(&header, &block).unwrap();
        assert_eq!(key.open_verifiers(&header, &sealed).unwrap(), block);
        let other = PinRoot::from_bytes([2; 32]).key(8).unwrap();
        assert!(other.open_verifiers(&header, &sealed).is_err());
        let moved = Header::request(crate::wire::MsgType::ChangePin, [4; 16], 13);
        assert!(key.open_verifiers(&moved, &sealed).is_err());
        let mut flipped = sealed;
        flipped[0] ^= 1;
        assert!(key.open_verifiers(&header, &flipped).is_err());
    }
}
