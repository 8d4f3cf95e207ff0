//! PIN handling (SPEC.md §6): the phone turns a PIN into a verifier with Argon2id; requests
//! that need the PIN carry a keyed proof over the request's PIN key ([`crate::pin_keys`]), its
//! type, token id and counter. The server keeps only verifiers and checks the normal and
//! duress proofs in constant time.

use subtle::{Choice, ConstantTimeEq};

use crate::error::Error;
use crate::keys::{first16, SecretBytes, TokenId};
use crate::pin_keys::PinKey;
use crate::wire::MsgType;

/// Argon2id memory cost in KiB (19 MiB, OWASP's minimum for Argon2id).
pub const ARGON2_MEMORY_KIB: u32 = 19_456;
/// Argon2id passes.
pub const ARGON2_ITERATIONS: u32 = 2;
/// Argon2id lanes.
pub const ARGON2_PARALLELISM: u32 = 1;
/// The salt is this prefix followed by the 16-byte token id.
pub const PIN_SALT_PREFIX: &[u8; 15] = b"zoftoken-pin-v1";
/// Shortest PIN, in bytes of UTF-8.
pub const PIN_MIN_LEN: usize = 4;
/// Longest PIN, in bytes of UTF-8.
pub const PIN_MAX_LEN: usize = 64;

/// A PIN verifier: `Argon2id(PIN, "zoftoken-pin-v1" ‖ token_id)`, 32 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinVerifier(SecretBytes);

impl PinVerifier {
    /// Computes the verifier of `pin` for `token_id` (tens of milliseconds by design).
    pub fn derive(pin: &str, token_id: &TokenId) -> Result<PinVerifier, Error> {
        if !(PIN_MIN_LEN..=PIN_MAX_LEN).contains(&pin.len()) {
            return Err(Error::PinLength);
        }
        let params = argon2::Params::new(
            ARGON2_MEMORY_KIB,
            ARGON2_ITERATIONS,
            ARGON2_PARALLELISM,
            Some(32),
        )
        .map_err(Error::PinHash)?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut salt = [0u8; 31];
        let (prefix, id) = salt.split_at_mut(PIN_SALT_PREFIX.len());
        prefix.copy_from_slice(PIN_SALT_PREFIX);
        id.copy_from_slice(&token_id.0);
        let mut out = [0u8; 32];
        argon
            .hash_password_into(pin.as_bytes(), &salt, &mut out)
            .map_err(Error::PinHash)?;
        let verifier = PinVerifier(SecretBytes::new(out));
        zeroize::Zeroize::zeroize(&mut out);
        Ok(verifier)
    }

    /// Wraps a stored verifier.
    pub fn from_bytes(bytes: [u8; 32]) -> PinVerifier {
        PinVerifier(SecretBytes::new(bytes))
    }

    /// The verifier bytes (sealed into PAIR_COMPLETE and CHANGE_PIN, stored by the server).
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }

    /// The proof for a request (SPEC.md §6.3): the first 16 bytes of
    /// `BLAKE3-keyed(verifier, M_p ‖ type ‖ token_id ‖ counter)`.
    pub fn proof(
        &self,
        pin_key: &PinKey,
        msg_type: MsgType,
        token_id: &[u8; 16],
        counter: u64,
    ) -> [u8; 16] {
        let mut msg = [0u8; 57];
        let (key, rest) = msg.split_at_mut(32);
        let (t, rest) = rest.split_at_mut(1);
        let (id, ctr) = rest.split_at_mut(16);
        key.copy_from_slice(pin_key.expose());
        t.copy_from_slice(&[msg_type.request_byte()]);
        id.copy_from_slice(token_id);
        ctr.copy_from_slice(&counter.to_be_bytes());
        let proof = first16(blake3::keyed_hash(self.expose(), &msg).as_bytes());
        zeroize::Zeroize::zeroize(&mut msg);
        proof
    }
}

/// Which PIN a proof or code was made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PinMatch {
    /// The user's PIN.
    Normal,
    /// The duress PIN.
    Duress,
    /// Neither.
    Wrong,
}

/// Compares `candidate` against the value computed from the normal verifier and from the
/// duress verifier (if any). Both are always computed and compared, so the time taken does
/// not depend on which matched (SPEC.md §6.4).
pub fn classify<const N: usize>(
    candidate: &[u8],
    normal: &PinVerifier,
    duress: Option<&PinVerifier>,
    compute: impl Fn(&PinVerifier) -> [u8; N],
) -> PinMatch {
    // Without a duress verifier, compute with the normal one again and ignore the result.
    let duress_present = Choice::from(u8::from(duress.is_some()));
    let with_normal = compute(normal);
    let with_duress = compute(duress.unwrap_or(normal));
    let is_normal = bytes_equal(&with_normal, candidate);
    let is_duress = bytes_equal(&with_duress, candidate) & duress_present & !is_normal;
    if bool::from(is_normal) {
        PinMatch::Normal
    } else if bool::from(is_duress) {
        PinMatch::Duress
    } else {
        PinMatch::Wrong
    }
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths: every byte
/// pair is XORed into one accumulator and only that is compared (`subtle` hides the result
/// from the optimiser). The same guarantee as `subtle`'s slice comparison, which puts each
/// byte through its optimisation barrier on its own; this runs twice for every PIN proof.
fn bytes_equal(a: &[u8], b: &[u8]) -> Choice {
    if a.len() != b.len() {
        return Choice::from(0);
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    diff.ct_eq(&0)
}

/// Checks a request's PIN proof against the normal and duress verifiers.
pub fn check_proof(
    proof: &[u8; 16],
    pin_key: &PinKey,
    normal: &PinVerifier,
    duress: Option<&PinVerifier>,
    msg_type: MsgType,
    token_id: &[u8; 16],
    counter: u64,
) -> PinMatch {
    classify(proof, normal, duress, |v| {
        v.proof(pin_key, msg_type, token_id, counter)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_equal_sees_every_byte_and_the_length() {
        let a = [0x5au8; 16];
        assert!(bool::from(bytes_equal(&a, &a)));
        for i in 0..a.len() {
            for bit in 0..8 {
                let mut b = a;
                b[i] ^= 1 << bit;
                assert!(!bool::from(bytes_equal(&a, &b)), "byte {i} bit {bit}");
            }
        }
        assert!(!bool::from(bytes_equal(&a, &a[..15])));
        assert!(!bool::from(bytes_equal(&a[..15], &a)));
        assert!(bool::from(bytes_equal(&[], &[])));
    }

    #[test]
    fn proofs_distinguish_pins_and_bind_the_counter_and_the_pin_key() {
        let id = TokenId::derive("svc", "user");
        let normal = PinVerifier::from_bytes([1; 32]);
        let duress = PinVerifier::from_bytes([2; 32]);
        let root = crate::pin_keys::PinRoot::from_bytes([3; 32]);
        let (k5, k6) = (root.key(5).unwrap(), root.key(6).unwrap());
        let p = normal.proof(&k5, MsgType::Open, &id.0, 5);
        let check = |proof, key, duress, t, counter| {
            check_proof(proof, key, &normal, duress, t, &id.0, counter)
        };
        assert_eq!(
            check(&p, &k5, Some(&duress), MsgType::Open, 5),
            PinMatch::Normal
        );
        assert_eq!(
            check(&p, &k5, Some(&duress), MsgType::Open, 6),
            PinMatch::Wrong
        );
        assert_eq!(
            check(&p, &k6, Some(&duress), MsgType::Open, 5),
            PinMatch::Wrong
        );
        assert_eq!(check(&p, &k5, None, MsgType::TxApprove, 5), PinMatch::Wrong);
        let d = duress.proof(&k5, MsgType::Open, &id.0, 5);
        assert_eq!(
            check(&d, &k5, Some(&duress), MsgType::Open, 5),
            PinMatch::Duress
        );
        // Duress not configured: the duress proof is just wrong.
        assert_eq!(check(&d, &k5, None, MsgType::Open, 5), PinMatch::Wrong);
    }

    #[test]
    fn pin_length_is_checked() {
        let id = TokenId::derive("svc", "user");
        assert_eq!(
            PinVerifier::derive("123", &id).unwrap_err(),
            Error::PinLength
        );
        assert_eq!(
            PinVerifier::derive(&"1".repeat(65), &id).unwrap_err(),
            Error::PinLength
        );
        let a = PinVerifier::derive("1234", &id).unwrap();
        assert_ne!(a, PinVerifier::derive("1235", &id).unwrap());
        assert_ne!(
            a,
            PinVerifier::derive("1234", &TokenId::derive("svc", "other")).unwrap()
        );
    }
}
