//! The packet AEAD (SPEC.md §4): ChaCha20-Poly1305 with a 12-byte nonce of `epoch ‖ counter`
//! (both big-endian) and the 32-byte header as associated data.
//!
//! This is the only module that knows which crate computes the AEAD. `ring` 0.17 was chosen by
//! measurement (see BENCHMARKS.md and `bench/benches/aead.rs`): about 10× faster than RustCrypto
//! `chacha20poly1305` 0.10 in its default build for our packet sizes.
//!
//! With the `insecure-fuzzing-aead` feature the cipher is replaced by a transparent stand-in
//! whose tag is always accepted, so fuzzers can reach the code behind the AEAD.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{DropReason, Error};
use crate::wire::TAG_LEN;

/// The AEAD nonce for a packet (SPEC.md §4.1).
pub fn nonce(epoch: u32, counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    let (e, c) = n.split_at_mut(4);
    e.copy_from_slice(&epoch.to_be_bytes());
    c.copy_from_slice(&counter.to_be_bytes());
    n
}

/// A ChaCha20-Poly1305 key for one direction of one token (or enrollment).
///
/// The 32 key bytes are zeroized on drop. `ring`'s key object is built per operation on the
/// stack (a plain copy of the key words for ChaCha20) and is not zeroized by `ring`; see
/// SECURITY.md.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PacketKey([u8; 32]);

impl fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PacketKey(<redacted>)")
    }
}

impl PacketKey {
    /// Wraps 32 bytes of derived key material.
    pub fn new(bytes: [u8; 32]) -> PacketKey {
        PacketKey(bytes)
    }

    /// Encrypts `in_out` in place and returns the tag.
    #[cfg(not(feature = "insecure-fuzzing-aead"))]
    pub fn seal_in_place(
        &self,
        epoch: u32,
        counter: u64,
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], Error> {
        use ring::aead;
        let key = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &self.0)
            .map(aead::LessSafeKey::new)
            .map_err(|_| Error::InvalidMessage("key"))?;
        let tag = key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce(epoch, counter)),
                aead::Aad::from(aad),
                in_out,
            )
            .map_err(|_| Error::InvalidMessage("body too long"))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Verifies the tag at the end of `ciphertext_and_tag` and decrypts in place; returns the
    /// plaintext (the slice without the tag).
    #[cfg(not(feature = "insecure-fuzzing-aead"))]
    pub fn open_in_place<'a>(
        &self,
        epoch: u32,
        counter: u64,
        aad: &[u8],
        ciphertext_and_tag: &'a mut [u8],
    ) -> Result<&'a mut [u8], DropReason> {
        use ring::aead;
        let key = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &self.0)
            .map(aead::LessSafeKey::new)
            .map_err(|_| DropReason::Unauthentic)?;
        key.open_in_place(
            aead::Nonce::assume_unique_for_key(nonce(epoch, counter)),
            aead::Aad::from(aad),
            ciphertext_and_tag,
        )
        .map_err(|_| DropReason::Unauthentic)
    }

    /// Fuzzing stand-in: leaves the plaintext as it is and returns a zero tag.
    #[cfg(feature = "insecure-fuzzing-aead")]
    pub fn seal_in_place(
        &self,
        _epoch: u32,
        _counter: u64,
        _aad: &[u8],
        _in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], Error> {
        Ok([0u8; TAG_LEN])
    }

    /// Fuzzing stand-in: accepts any tag and returns the bytes before it unchanged.
    #[cfg(feature = "insecure-fuzzing-aead")]
    pub fn open_in_place<'a>(
        &self,
        _epoch: u32,
        _counter: u64,
        _aad: &[u8],
        ciphertext_and_tag: &'a mut [u8],
    ) -> Result<&'a mut [u8], DropReason> {
        let len = ciphertext_and_tag
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(DropReason::Unauthentic)?;
        Ok(ciphertext_and_tag.split_at_mut(len).0)
    }
}

/// A ChaCha20-Poly1305 key for data at rest (storage's master key): the same cipher as the
/// packets, with a caller-chosen 12-byte nonce (storage uses random nonces). Unlike
/// [`PacketKey`], it is never replaced by the fuzzing stand-in, so a build with the
/// `insecure-fuzzing-aead` feature cannot write plaintext secrets to disk.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RestKey([u8; 32]);

impl fmt::Debug for RestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RestKey(<redacted>)")
    }
}

impl RestKey {
    /// Wraps 32 bytes of key material.
    pub fn new(bytes: [u8; 32]) -> RestKey {
        RestKey(bytes)
    }

    fn key(&self) -> Result<ring::aead::LessSafeKey, Error> {
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &self.0)
            .map(ring::aead::LessSafeKey::new)
            .map_err(|_| Error::InvalidMessage("key"))
    }

    /// Encrypts `in_out` in place and appends the 16-byte tag.
    pub fn seal(&self, nonce: [u8; 12], aad: &[u8], in_out: &mut Vec<u8>) -> Result<(), Error> {
        self.key()?
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(aad),
                in_out,
            )
            .map_err(|_| Error::InvalidMessage("value too long"))
    }

    /// Verifies and decrypts `ciphertext_and_tag` in place; returns the plaintext.
    pub fn open<'a>(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        ciphertext_and_tag: &'a mut [u8],
    ) -> Result<&'a mut [u8], Error> {
        self.key()?
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(aad),
                ciphertext_and_tag,
            )
            .map_err(|_| Error::InvalidMessage("authentication failed"))
    }
}
