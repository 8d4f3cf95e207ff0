//! The key schedule of SPEC.md §3: every key is BLAKE3 `derive_key` under its own context
//! string. Secrets are zeroized on drop and never printed.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::aead::PacketKey;
use crate::wire::TOKEN_ID_LEN;

/// The BLAKE3 `derive_key` context strings (SPEC.md §3.1). Each is used for exactly one key.
pub mod context {
    /// Token id from service and username.
    pub const TOKEN_ID: &str = "zoftoken 2026-11-23 v1 token id";
    /// Pairing id (the PAIR_INIT header's id field) from the enrollment secret.
    pub const PAIRING_ID: &str = "zoftoken 2026-11-23 v1 pairing id";
    /// PAIR_INIT request key from the enrollment secret.
    pub const ENROLLMENT_D2S: &str = "zoftoken 2026-11-23 v1 enrollment device-to-server";
    /// PAIR_INIT reply key from the enrollment secret.
    pub const ENROLLMENT_S2D: &str = "zoftoken 2026-11-23 v1 enrollment server-to-device";
    /// Token secret from the X25519 exchange and the pairing transcript.
    pub const TOKEN_SECRET: &str = "zoftoken 2026-11-23 v1 token secret";
    /// Request key from the token secret.
    pub const D2S: &str = "zoftoken 2026-11-23 v1 device-to-server";
    /// Reply key from the token secret.
    pub const S2D: &str = "zoftoken 2026-11-23 v1 server-to-device";
    /// One-time-code key from the token secret.
    pub const OTP: &str = "zoftoken 2026-11-23 v1 one-time codes";
    /// Offline challenge/response key from the token secret.
    pub const OFFLINE: &str = "zoftoken 2026-11-23 v1 offline codes";
    /// Check symbol of a manual enrollment code.
    pub const MANUAL_CHECK: &str = "zoftoken 2026-11-23 v1 manual code check";
    /// The pad that seals the PIN root in the PAIR_INIT reply, from the X25519 exchange.
    pub const PIN_ROOT_PAD: &str = "zoftoken 2026-11-23 v1 pin root pad";
    /// The key that seals new verifiers, from a request's PIN key.
    pub const PIN_SEAL: &str = "zoftoken 2026-11-23 v1 pin seal";
}

/// 32 bytes of key material: zeroized on drop, compared in constant time, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes([u8; 32]);

impl SecretBytes {
    /// Wraps key material.
    pub fn new(bytes: [u8; 32]) -> SecretBytes {
        SecretBytes(bytes)
    }

    /// The key material. Callers must not copy it into storage that is not zeroized.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes(<redacted>)")
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SecretBytes {}

/// A token id: the first 16 bytes of `derive_key(TOKEN_ID, len(service) ‖ service ‖
/// len(username) ‖ username)` with 8-byte big-endian lengths (SPEC.md §2.2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(pub [u8; TOKEN_ID_LEN]);

impl TokenId {
    /// The token id of `username` in `service`. Both are used byte for byte, unnormalised.
    pub fn derive(service: &str, username: &str) -> TokenId {
        let mut hasher = blake3::Hasher::new_derive_key(context::TOKEN_ID);
        for part in [service.as_bytes(), username.as_bytes()] {
            hasher.update(&(part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        TokenId(first16(hasher.finalize().as_bytes()))
    }

    /// Lower-case hex, as used in logs and APIs.
    pub fn to_hex(&self) -> String {
        hex_lower(&self.0)
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({})", self.to_hex())
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            if let Some(d) = DIGITS.get(usize::from(nibble)) {
                s.push(char::from(*d));
            }
        }
    }
    s
}

pub(crate) fn first16(bytes: &[u8; 32]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(bytes.split_at(16).0);
    out
}

/// The long-term token secret established by pairing (SPEC.md §5.4).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TokenSecret(SecretBytes);

impl TokenSecret {
    /// Wraps a stored token secret.
    pub fn from_bytes(bytes: [u8; 32]) -> TokenSecret {
        TokenSecret(SecretBytes::new(bytes))
    }

    /// The secret. Only storage (encrypted at rest) should need this.
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }

    /// Derives every key of the token (SPEC.md §3.2).
    pub fn keys(&self) -> TokenKeys {
        let k = self.0.expose();
        TokenKeys {
            d2s: PacketKey::new(blake3::derive_key(context::D2S, k)),
            s2d: PacketKey::new(blake3::derive_key(context::S2D, k)),
            otp: SecretBytes::new(blake3::derive_key(context::OTP, k)),
            offline: SecretBytes::new(blake3::derive_key(context::OFFLINE, k)),
        }
    }
}

/// The keys of a paired token.
#[derive(Clone, Debug)]
pub struct TokenKeys {
    /// Seals requests (device to server).
    pub d2s: PacketKey,
    /// Seals replies (server to device).
    pub s2d: PacketKey,
    /// Keys one-time codes.
    pub otp: SecretBytes,
    /// Keys offline responses.
    pub offline: SecretBytes,
}

/// The enrollment secret `E` (SPEC.md §5.1): 32 random bytes from a deeplink, or the 20 ASCII
/// symbols of a manual code.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct EnrollmentSecret(Vec<u8>);

impl EnrollmentSecret {
    /// Wraps the secret bytes.
    pub fn new(bytes: Vec<u8>) -> EnrollmentSecret {
        EnrollmentSecret(bytes)
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Derives the pairing id and the PAIR_INIT keys (SPEC.md §3.2).
    pub fn keys(&self) -> EnrollmentKeys {
        EnrollmentKeys {
            pairing_id: first16(&blake3::derive_key(context::PAIRING_ID, &self.0)),
            d2s: PacketKey::new(blake3::derive_key(context::ENROLLMENT_D2S, &self.0)),
            s2d: PacketKey::new(blake3::derive_key(context::ENROLLMENT_S2D, &self.0)),
        }
    }
}

impl fmt::Debug for EnrollmentSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnrollmentSecret(<redacted>)")
    }
}

/// What the server derives from `E` to pair a pending enrollment.
#[derive(Clone, Debug)]
pub struct EnrollmentKeys {
    /// The id in the PAIR_INIT header.
    pub pairing_id: [u8; TOKEN_ID_LEN],
    /// Opens PAIR_INIT requests.
    pub d2s: PacketKey,
    /// Seals PAIR_INIT replies.
    pub s2d: PacketKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_id_is_length_prefixed() {
        // Moving a byte between service and username must change the id.
        assert_ne!(TokenId::derive("ab", "c"), TokenId::derive("a", "bc"));
        assert_eq!(
            TokenId::derive("bank", "alice"),
            TokenId::derive("bank", "alice")
        );
    }

    #[test]
    fn every_context_is_distinct() {
        let all = [
            context::TOKEN_ID,
            context::PAIRING_ID,
            context::ENROLLMENT_D2S,
            context::ENROLLMENT_S2D,
            context::TOKEN_SECRET,
            context::D2S,
            context::S2D,
            context::OTP,
            context::OFFLINE,
            context::MANUAL_CHECK,
            context::PIN_ROOT_PAD,
            context::PIN_SEAL,
        ];
        let set: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = TokenSecret::from_bytes([0xAB; 32]);
        assert!(!format!("{s:?}").contains("ab"));
        assert!(!format!("{:?}", s.keys()).to_lowercase().contains("abab"));
        let e = EnrollmentSecret::new(vec![0xCD; 32]);
        assert!(!format!("{e:?}").to_lowercase().contains("cd"));
    }
}
