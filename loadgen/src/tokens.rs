//! Prepared token sets: `count` paired tokens of one service, derived from a seed, so that the
//! server side (database mutations or engine records) and the load generator agree without a
//! token file.

use std::ops::Range;
use std::sync::Arc;

use zoftoken_engine::{Mutation, TokenRecord, TokenStateRecord};
use zoftoken_proto::{PinRoot, PinVerifier, SecretBytes, TokenId, TokenKeys, TokenSecret};

/// BLAKE3 context of the token secrets (shared with the engine benchmarks' fixture).
const SECRET_CONTEXT: &str = "zoftoken bench token secret";
/// BLAKE3 context of a non-zero seed's PIN verifier.
const VERIFIER_CONTEXT: &str = "zoftoken loadgen pin verifier";

/// A deterministic set of paired tokens: token `i` (`0 ≤ i < count`) is the user `user{i}` of
/// `service`, its secret and the set's one PIN verifier are derived from `seed`.
///
/// - token id: `TokenId::derive(service, "user{i}")` (SPEC.md §2.2);
/// - secret: `BLAKE3-derive("zoftoken bench token secret", u64le(i))` for seed 0 (the engine
///   benchmarks' tokens, unchanged), `… u64le(i) ‖ u64le(seed))` otherwise;
/// - PIN verifier (all tokens): 32 × `0x24` for seed 0, `BLAKE3-derive("zoftoken loadgen pin
///   verifier", u64le(seed))` otherwise. Loading needs no Argon2id.
///
/// Anyone who knows the seed holds every token's secret: load tokens belong on test instances
/// only, and a non-default seed is what keeps two prepared sets of one service apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSet {
    service: Arc<str>,
    seed: u64,
    count: u64,
}

/// What the device side of one token needs.
#[derive(Clone, Debug)]
pub struct DeviceToken {
    /// The token id.
    pub id: TokenId,
    /// Its packet keys.
    pub keys: TokenKeys,
    /// Its PIN root, as the server derives it (with the instance's PIN-tree secret): the
    /// generator is no phone and derives each request's PIN key from it directly. `None`
    /// when the run sends no PIN request.
    pub pin_root: Option<PinRoot>,
}

impl TokenSet {
    /// The set of `count` tokens of `service` derived from `seed`.
    pub fn new(service: &str, seed: u64, count: u64) -> TokenSet {
        TokenSet {
            service: Arc::from(service),
            seed,
            count,
        }
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// How many tokens.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The username of token `i`.
    pub fn username(&self, i: u64) -> String {
        format!("user{i}")
    }

    /// The id of token `i`.
    pub fn token_id(&self, i: u64) -> TokenId {
        TokenId::derive(&self.service, &self.username(i))
    }

    /// The secret `K` of token `i`.
    pub fn secret(&self, i: u64) -> [u8; 32] {
        if self.seed == 0 {
            blake3::derive_key(SECRET_CONTEXT, &i.to_le_bytes())
        } else {
            let mut m = [0u8; 16];
            let (a, b) = m.split_at_mut(8);
            a.copy_from_slice(&i.to_le_bytes());
            b.copy_from_slice(&self.seed.to_le_bytes());
            blake3::derive_key(SECRET_CONTEXT, &m)
        }
    }

    /// The PIN verifier every token of the set shares.
    pub fn verifier(&self) -> PinVerifier {
        if self.seed == 0 {
            PinVerifier::from_bytes([0x24; 32])
        } else {
            PinVerifier::from_bytes(blake3::derive_key(
                VERIFIER_CONTEXT,
                &self.seed.to_le_bytes(),
            ))
        }
    }

    /// The device side of token `i`: id and packet keys, and with the instance's PIN-tree
    /// secret (the server's `MasterKey::pin_tree_secret`) its PIN root.
    pub fn device_token(&self, i: u64, pin_tree_secret: Option<&SecretBytes>) -> DeviceToken {
        let secret = TokenSecret::from_bytes(self.secret(i));
        DeviceToken {
            id: self.token_id(i),
            keys: secret.keys(),
            pin_root: pin_tree_secret
                .map(|s| zoftoken_engine::pin_root(s.expose(), secret.expose())),
        }
    }

    /// The PIN root of token `i` as the server derives it from the instance's PIN-tree secret
    /// and the token secret (`zoftoken_engine::pin_root`).
    pub fn pin_root(&self, i: u64, pin_tree_secret: &SecretBytes) -> PinRoot {
        zoftoken_engine::pin_root(pin_tree_secret.expose(), &self.secret(i))
    }

    /// The engine's record of token `i`: paired, closed, nothing seen yet, in the service of
    /// index `service` (0: the first configured service, which must be [`Self::service`]).
    pub fn record(&self, i: u64, service: u16) -> TokenRecord {
        TokenRecord {
            kind: zoftoken_engine::TokenKind::App,
            service,
            secret: SecretBytes::new(self.secret(i)),
            pin_verifier: SecretBytes::new(*self.verifier().expose()),
            duress_verifier: None,
            status: TokenStateRecord::new(self.token_id(i)),
        }
    }

    /// The database mutations that create tokens `range` (clipped to the set) as paired,
    /// closed tokens of service index 0: `TokenCreated` (the cold record with the username)
    /// and `Token` (secrets and state), two per token. Commit them in chunks (e.g. 10 000
    /// tokens) with the storage's `Store::commit`; re-running overwrites the same records
    /// (their counters start again at 0, which the load generator's time-based counters
    /// tolerate).
    pub fn server_mutations(&self, range: Range<u64>) -> Vec<Mutation> {
        let range = range.start.min(self.count)..range.end.min(self.count);
        let mut out = Vec::with_capacity(2 * (range.end - range.start) as usize);
        for i in range {
            let record = self.record(i, 0);
            out.push(Mutation::TokenCreated {
                token_id: record.token_id(),
                service: Arc::clone(&self.service),
                username: self.username(i),
            });
            out.push(Mutation::Token(Box::new(record)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_zero_is_the_bench_fixture_scheme() {
        let set = TokenSet::new("bench", 0, 10);
        assert_eq!(set.token_id(3), TokenId::derive("bench", "user3"));
        assert_eq!(
            set.secret(3),
            blake3::derive_key("zoftoken bench token secret", &3u64.to_le_bytes())
        );
        assert_eq!(set.verifier().expose(), &[0x24; 32]);
        let instance = SecretBytes::new([8; 32]);
        let device = set.device_token(3, Some(&instance));
        assert_eq!(
            device.pin_root.as_ref(),
            Some(&zoftoken_engine::pin_root(&[8; 32], &set.secret(3)))
        );
        assert_eq!(set.pin_root(3, &instance), device.pin_root.unwrap());
        assert!(set.device_token(3, None).pin_root.is_none());
        let other = TokenSet::new("bench", 7, 10);
        assert_ne!(other.secret(3), set.secret(3));
        assert_eq!(other.token_id(3), set.token_id(3));
        assert_ne!(other.verifier().expose(), set.verifier().expose());
    }

    #[test]
    fn mutations_cover_the_range() {
        let set = TokenSet::new("demo", 5, 4);
        let m = set.server_mutations(1..10);
        assert_eq!(m.len(), 6);
        match (&m[0], &m[1]) {
            (
                Mutation::TokenCreated {
                    token_id,
                    service,
                    username,
                },
                Mutation::Token(r),
            ) => {
                assert_eq!(*token_id, set.token_id(1));
                assert_eq!(&**service, "demo");
                assert_eq!(username, "user1");
                assert_eq!(r.status.token_id, set.token_id(1));
                assert_eq!(r.secret.expose(), &set.secret(1));
                assert_eq!(r.service, 0);
            }
            _ => panic!("unexpected mutations"),
        }
    }
}
