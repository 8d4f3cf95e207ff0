//! Where a token's PIN root comes from (SPEC.md §6.3).
//!
//! The protocol asks the server to remember, per pairing, a secret PIN root `R` that the token
//! secret `K` does not reveal. This server keeps no extra bytes per token for it: `R` is
//! `BLAKE3-keyed(instance PIN-tree secret, K)`, recomputed when a PIN-bearing request arrives.
//! The instance secret comes from the master key (storage's `MasterKey::pin_tree_secret`), so
//! every server of an instance computes the same roots, and the database alone gives none.

use zoftoken_proto::PinRoot;

/// The PIN root of the token whose secret is `token_secret`.
pub fn pin_root(pin_tree_secret: &[u8; 32], token_secret: &[u8; 32]) -> PinRoot {
    PinRoot::from_bytes(*blake3::keyed_hash(pin_tree_secret, token_secret).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_depend_on_the_instance_and_the_token() {
        let a = pin_root(&[1; 32], &[2; 32]);
        assert_eq!(a, pin_root(&[1; 32], &[2; 32]));
        assert_ne!(a, pin_root(&[3; 32], &[2; 32]));
        assert_ne!(a, pin_root(&[1; 32], &[4; 32]));
        // Not the token secret itself, nor anything computable from it alone.
        assert_ne!(a.expose(), &[2; 32]);
    }
}
