//! The authkey verified last on one connection: a client that sends the same key on every
//! request of a keep-alive connection pays its secret's hash once per connection, not once
//! per request.
//!
//! The presented secret is kept (zeroized when replaced or dropped) and a later request's
//! secret is compared with it in constant time; the key found then is reused only while the
//! engine's authkey table is still the one it was found in ([`FoundKey::is_in_force`]: every
//! reload or change of authkeys replaces the table), so a revoked or changed key stops working
//! at the connection's next request. Masks and rights are checked at every request, and a
//! secret that finds no key is never remembered.

use std::sync::Mutex;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;
use zoftoken_engine::authkeys::FoundKey;
use zoftoken_engine::Engine;

/// The key verified last on one connection (requests of a connection come one at a time, so
/// the lock is never contended).
#[derive(Default)]
pub(crate) struct ConnectionKey {
    last: Mutex<Option<Verified>>,
}

struct Verified {
    /// The secret as presented.
    secret: Zeroizing<Vec<u8>>,
    key: FoundKey,
}

impl ConnectionKey {
    /// `check` on the key whose secret is `secret`, or `None` if there is no such key: the
    /// key verified last on this connection when `secret` is the same (compared in constant
    /// time) and the authkeys have not changed since, otherwise a lookup (one hash) whose key
    /// is remembered.
    pub fn check<R>(
        &self,
        engine: &Engine,
        secret: &str,
        check: impl FnOnce(&FoundKey) -> R,
    ) -> Option<R> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = last.as_ref() {
            if same_secret(&v.secret, secret.as_bytes()) && v.key.is_in_force(engine) {
                return Some(check(&v.key));
            }
        }
        let key = engine.authkeys().find(secret)?;
        let answer = check(&key);
        *last = Some(Verified {
            secret: Zeroizing::new(secret.as_bytes().to_vec()),
            key,
        });
        Some(answer)
    }
}

/// Whether `a` and `b` are the same bytes, in a time that depends on their lengths only:
/// the differences of all their words are gathered without a branch, and the result is
/// compared in constant time.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a
        .chunks(8)
        .zip(b.chunks(8))
        .fold(0u64, |d, (x, y)| d | (word(x) ^ word(y)));
    bool::from(difference.ct_eq(&0))
}

/// Up to eight bytes as a word (zero-padded).
fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    for (to, from) in w.iter_mut().zip(bytes) {
        *to = *from;
    }
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use zoftoken_engine::authkeys::hash_secret;
    use zoftoken_engine::{AuthkeyConfig, EngineConfig, Right, ServiceConfig};

    use super::*;

    fn key(name: &str, secret: &str, service_mask: &str) -> AuthkeyConfig {
        AuthkeyConfig {
            name: name.into(),
            secret_hash: hash_secret(secret),
            admin: false,
            service_mask: service_mask.into(),
            user_mask: ".*".into(),
        }
    }

    fn allowed(c: &ConnectionKey, e: &Engine, secret: &str, service: &str) -> Option<bool> {
        c.check(e, secret, |k| k.allows(Right::Any, service, "alice"))
    }

    #[test]
    fn secrets_are_compared_whole() {
        let base = b"0123456789abcdef0123456789abcdef!".to_vec();
        assert!(same_secret(&base, &base.clone()));
        assert!(same_secret(b"", b""));
        assert!(!same_secret(&base, &base[..32]));
        for i in 0..base.len() {
            let mut other = base.clone();
            other[i] ^= 1;
            assert!(!same_secret(&base, &other), "byte {i}");
        }
        // Zero padding of the last word does not make a shorter secret equal.
        assert!(!same_secret(b"abc", b"abc\0"));
    }

    #[test]
    fn a_remembered_key_follows_every_change_of_the_authkeys() {
        let mut config = EngineConfig::new(
            vec![ServiceConfig::new("bank", &["127.0.0.1:1"])],
            1,
            [0; 32],
        );
        config.authkeys = vec![key("a", "secret-a", "bank"), key("b", "secret-b", "shop")];
        let engine = Engine::new(config).unwrap();
        let conn = ConnectionKey::default();
        assert_eq!(allowed(&conn, &engine, "secret-a", "bank"), Some(true));
        assert_eq!(allowed(&conn, &engine, "secret-a", "bank"), Some(true));
        // Masks are checked at every request, with the remembered key too.
        assert_eq!(allowed(&conn, &engine, "secret-a", "shop"), Some(false));
        // Another secret on the same connection: its own key, or none.
        assert_eq!(allowed(&conn, &engine, "secret-b", "shop"), Some(true));
        assert_eq!(allowed(&conn, &engine, "secret-b", "bank"), Some(false));
        assert_eq!(allowed(&conn, &engine, "secret-", "bank"), None);
        assert_eq!(allowed(&conn, &engine, "secret-bb", "shop"), None);
        assert_eq!(allowed(&conn, &engine, "secret-b", "shop"), Some(true));
        // A changed mask applies at the next request.
        engine
            .reload_authkeys(&[key("b", "secret-b", "bank")])
            .unwrap();
        assert_eq!(allowed(&conn, &engine, "secret-b", "shop"), Some(false));
        assert_eq!(allowed(&conn, &engine, "secret-b", "bank"), Some(true));
        // A revoked key stops working at the next request.
        engine
            .reload_authkeys(&[key("a", "secret-a", "bank")])
            .unwrap();
        assert_eq!(allowed(&conn, &engine, "secret-b", "bank"), None);
        assert_eq!(allowed(&conn, &engine, "secret-a", "bank"), Some(true));
        engine.reload_authkeys(&[]).unwrap();
        assert_eq!(allowed(&conn, &engine, "secret-a", "bank"), None);
    }
}
