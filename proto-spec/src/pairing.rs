//! Pairing (SPEC.md §5): an ephemeral X25519 exchange, bound to the enrollment proof, that
//! establishes the long-term token secret. Reading the enrollment secret after pairing
//! reveals nothing about the token secret: it never enters the derivation.

use x25519_dalek::{PublicKey, StaticSecret};

use crate::error::DropReason;
use crate::keys::{context, TokenSecret};

/// An ephemeral X25519 key pair. Built from caller-supplied randomness so that the codec stays
/// deterministic (the vectors fix it); callers MUST use fresh random bytes for every attempt.
pub struct Ephemeral(StaticSecret);

impl std::fmt::Debug for Ephemeral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ephemeral(public={:02x?})", self.public())
    }
}

impl Ephemeral {
    /// A key pair from 32 random bytes (clamped as X25519 requires).
    pub fn from_random(bytes: [u8; 32]) -> Ephemeral {
        Ephemeral(StaticSecret::from(bytes))
    }

    /// The public key sent to the peer.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.0).to_bytes()
    }

    fn shared(&self, peer: &[u8; 32]) -> Result<x25519_dalek::SharedSecret, DropReason> {
        let shared = self.0.diffie_hellman(&PublicKey::from(*peer));
        if shared.was_contributory() {
            Ok(shared)
        } else {
            Err(DropReason::WeakKeyExchange)
        }
    }

    /// Device side: the token secret from the server's public key.
    pub fn device_token_secret(
        &self,
        server_public: &[u8; 32],
        pairing_id: &[u8; 16],
    ) -> Result<TokenSecret, DropReason> {
        let shared = self.shared(server_public)?;
        Ok(token_secret(
            shared.as_bytes(),
            pairing_id,
            &self.public(),
            server_public,
        ))
    }

    /// Server side: the token secret from the device's public key. Call only after the
    /// PAIR_INIT tag verified (SPEC.md §5.3).
    pub fn server_token_secret(
        &self,
        device_public: &[u8; 32],
        pairing_id: &[u8; 16],
    ) -> Result<TokenSecret, DropReason> {
        let shared = self.shared(device_public)?;
        Ok(token_secret(
            shared.as_bytes(),
            pairing_id,
            device_public,
            &self.public(),
        ))
    }
}

/// `K = derive_key(TOKEN_SECRET, shared ‖ pairing_id ‖ device_public ‖ server_public)`.
fn token_secret(
    shared: &[u8; 32],
    pairing_id: &[u8; 16],
    device_public: &[u8; 32],
    server_public: &[u8; 32],
) -> TokenSecret {
    let mut hasher = blake3::Hasher::new_derive_key(context::TOKEN_SECRET);
    hasher.update(shared);
    hasher.update(pairing_id);
    hasher.update(device_public);
    hasher.update(server_public);
    TokenSecret::from_bytes(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree() {
        let d = Ephemeral::from_random([1; 32]);
        let s = Ephemeral::from_random([2; 32]);
        let pid = [9; 16];
        let kd = d.device_token_secret(&s.public(), &pid).unwrap();
        let ks = s.server_token_secret(&d.public(), &pid).unwrap();
        assert_eq!(kd, ks);
        // Binding: another pairing id gives another secret.
        assert_ne!(kd, d.device_token_secret(&s.public(), &[8; 16]).unwrap());
    }

    #[test]
    fn low_order_points_are_refused() {
        let s = Ephemeral::from_random([2; 32]);
        assert_eq!(
            s.server_token_secret(&[0; 32], &[0; 16]).unwrap_err(),
            DropReason::WeakKeyExchange
        );
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(s.server_token_secret(&one, &[0; 16]).is_err());
    }
}
