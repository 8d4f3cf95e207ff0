//! Pairing (SPEC.md §5): an ephemeral X25519 exchange, bound to the enrollment proof, that
//! establishes the long-term token secret and seals the token's PIN root (§6.3). Reading the
//! enrollment secret after pairing reveals nothing about either: it never enters the
//! derivation, and the PIN root's pad is derived apart from the token secret, so the token
//! secret does not open it.

use x25519_dalek::{PublicKey, StaticSecret};

use crate::error::DropReason;
use crate::keys::{context, SecretBytes, TokenSecret};
use crate::pin_keys::PinRoot;

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

    /// Device side: the token secret and the PIN-root pad from the server's public key.
    pub fn device_agree(
        &self,
        server_public: &[u8; 32],
        pairing_id: &[u8; 16],
    ) -> Result<Agreement, DropReason> {
        let shared = self.shared(server_public)?;
        Ok(Agreement::derive(
            shared.as_bytes(),
            pairing_id,
            &self.public(),
            server_public,
        ))
    }

    /// Server side: the token secret and the PIN-root pad from the device's public key. Call
    /// only after the PAIR_INIT tag verified (SPEC.md §5.3).
    pub fn server_agree(
        &self,
        device_public: &[u8; 32],
        pairing_id: &[u8; 16],
    ) -> Result<Agreement, DropReason> {
        let shared = self.shared(device_public)?;
        Ok(Agreement::derive(
            shared.as_bytes(),
            pairing_id,
            device_public,
            &self.public(),
        ))
    }
}

/// What one X25519 exchange of a pairing yields (SPEC.md §5.4): the token secret `K` and the
/// pad that seals the PIN root in the PAIR_INIT reply.
#[derive(Debug)]
pub struct Agreement {
    /// The token secret `K`.
    pub secret: TokenSecret,
    pad: SecretBytes,
}

impl Agreement {
    /// `K = derive(TOKEN_SECRET, transcript)` and `pad = derive(PIN_ROOT_PAD, transcript)`,
    /// with `transcript = shared ‖ pairing_id ‖ device_public ‖ server_public`.
    fn derive(
        shared: &[u8; 32],
        pairing_id: &[u8; 16],
        device_public: &[u8; 32],
        server_public: &[u8; 32],
    ) -> Agreement {
        let derive = |ctx: &str| {
            let mut hasher = blake3::Hasher::new_derive_key(ctx);
            hasher.update(shared);
            hasher.update(pairing_id);
            hasher.update(device_public);
            hasher.update(server_public);
            *hasher.finalize().as_bytes()
        };
        Agreement {
            secret: TokenSecret::from_bytes(derive(context::TOKEN_SECRET)),
            pad: SecretBytes::new(derive(context::PIN_ROOT_PAD)),
        }
    }

    /// Server side: the PIN root XOR the pad, for the PAIR_INIT reply.
    pub fn seal_pin_root(&self, root: &PinRoot) -> [u8; 32] {
        xor(root.expose(), self.pad.expose())
    }

    /// Device side: the PIN root from the reply's sealed field.
    pub fn open_pin_root(&self, sealed: &[u8; 32]) -> PinRoot {
        let mut bytes = xor(sealed, self.pad.expose());
        let root = PinRoot::from_bytes(bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        root
    }
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree() {
        let d = Ephemeral::from_random([1; 32]);
        let s = Ephemeral::from_random([2; 32]);
        let pid = [9; 16];
        let kd = d.device_agree(&s.public(), &pid).unwrap();
        let ks = s.server_agree(&d.public(), &pid).unwrap();
        assert_eq!(kd.secret, ks.secret);
        // Binding: another pairing id gives another secret.
        assert_ne!(
            kd.secret,
            d.device_agree(&s.public(), &[8; 16]).unwrap().secret
        );
        // The root crosses; the pad is not the token secret or anything derived from it.
        let root = PinRoot::from_bytes([0x5a; 32]);
        let sealed = ks.seal_pin_root(&root);
        assert_eq!(kd.open_pin_root(&sealed), root);
        assert_ne!(&sealed, root.expose());
        assert_ne!(kd.pad.expose(), kd.secret.expose());
    }

    #[test]
    fn low_order_points_are_refused() {
        let s = Ephemeral::from_random([2; 32]);
        assert_eq!(
            s.server_agree(&[0; 32], &[0; 16]).unwrap_err(),
            DropReason::WeakKeyExchange
        );
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(s.server_agree(&one, &[0; 16]).is_err());
    }
}
