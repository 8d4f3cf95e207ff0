//! Secrets at rest: ChaCha20-Poly1305 under the master key, a random nonce per value, and the
//! column family and key as associated data (a value copied to another token's key does not
//! open). A database copied without the master key yields no usable secret.

use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;
use zoftoken_proto::aead::RestKey;

use crate::kv::Cf;

/// Length of the nonce stored in front of every sealed value.
pub const NONCE_LEN: usize = 12;
/// Length of the tag after every sealed value.
pub const TAG_LEN: usize = 16;

/// Why a master key could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The key text is not 64 hexadecimal digits.
    #[error("a master key is 64 hexadecimal digits (32 bytes)")]
    Format,
}

/// The master key (32 bytes, zeroized when dropped, never printed).
#[derive(Clone)]
pub struct MasterKey(RestKey, PinTreeSecret);

/// The instance's PIN-tree secret: every token's PIN root is derived from it and the token
/// secret (see `zoftoken_engine::pin_root`). It comes from the master key, so every server of
/// an instance has the same one and it never enters the database.
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct PinTreeSecret([u8; 32]);

impl PinTreeSecret {
    /// The secret bytes (given to the engine).
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for PinTreeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinTreeSecret(<redacted>)")
    }
}

/// The derivation context of [`PinTreeSecret`] from the master key.
const PIN_TREE_CONTEXT: &str = "zoftoken 2026-12-05 instance pin tree secret";

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Wraps 32 key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        let bytes = Zeroizing::new(bytes);
        let pin = PinTreeSecret(blake3::derive_key(PIN_TREE_CONTEXT, bytes.as_ref()));
        MasterKey(RestKey::new(*bytes), pin)
    }

    /// The instance's PIN-tree secret.
    pub fn pin_tree_secret(&self) -> &PinTreeSecret {
        &self.1
    }

    /// A new random key, with its hexadecimal form to store.
    pub fn generate() -> (MasterKey, Zeroizing<String>) {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(bytes.as_mut());
        let text = Zeroizing::new(hex::encode(bytes.as_ref()));
        (MasterKey::from_bytes(*bytes), text)
    }

    /// Parses 64 hexadecimal digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<MasterKey, KeyError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), bytes.as_mut()).map_err(|_| KeyError::Format)?;
        Ok(MasterKey::from_bytes(*bytes))
    }

    /// Seals `plaintext` for `(cf, key)`: `nonce ‖ ciphertext ‖ tag`.
    pub fn seal(&self, cf: Cf, key: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let mut body = Vec::with_capacity(plaintext.len() + TAG_LEN);
        body.extend_from_slice(plaintext);
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        // Sealing fails only for inputs of gigabytes; values here are bytes to kilobytes.
        if self.0.seal(nonce, &aad(cf, key), &mut body).is_ok() {
            out.extend_from_slice(&body);
        }
        zeroize::Zeroize::zeroize(&mut body);
        out
    }

    /// Opens a value sealed for `(cf, key)`; `None` if it was altered, moved, or sealed under
    /// another master key.
    pub fn open(&self, cf: Cf, key: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (nonce, body) = sealed.split_first_chunk::<NONCE_LEN>()?;
        let mut body = Zeroizing::new(body.to_vec());
        let len = self.0.open(*nonce, &aad(cf, key), &mut body).ok()?.len();
        body.truncate(len);
        Some(body)
    }
}

fn aad(cf: Cf, key: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(32 + key.len());
    a.extend_from_slice(b"zoftoken at rest v1\0");
    a.extend_from_slice(cf.name().as_bytes());
    a.push(0);
    a.extend_from_slice(key);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_place() {
        let (k, _) = MasterKey::generate();
        let (other, _) = MasterKey::generate();
        let sealed = k.seal(Cf::Secrets, b"id-1", b"secret bytes");
        assert_eq!(
            k.open(Cf::Secrets, b"id-1", &sealed).as_deref(),
            Some(&b"secret bytes".to_vec())
        );
        assert!(!sealed.windows(12).any(|w| w == b"secret bytes"));
        assert!(other.open(Cf::Secrets, b"id-1", &sealed).is_none());
        assert!(k.open(Cf::Secrets, b"id-2", &sealed).is_none());
        assert!(k.open(Cf::BackupCodes, b"id-1", &sealed).is_none());
        let mut flipped = sealed.clone();
        if let Some(b) = flipped.last_mut() {
            *b ^= 1;
        }
        assert!(k.open(Cf::Secrets, b"id-1", &flipped).is_none());
        assert!(k.open(Cf::Secrets, b"id-1", &sealed[..10]).is_none());
    }

    #[test]
    fn hex_keys_parse_strictly() {
        assert!(MasterKey::from_hex(&"ab".repeat(32)).is_ok());
        assert_eq!(
            MasterKey::from_hex("abc").map(|_| ()),
            Err(KeyError::Format)
        );
        assert_eq!(
            MasterKey::from_hex(&"zz".repeat(32)).map(|_| ()),
            Err(KeyError::Format)
        );
    }
}
