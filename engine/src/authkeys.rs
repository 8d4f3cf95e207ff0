//! Authkeys (`docs/product.md`, "Authkeys"): who may ask what through the API.
//!
//! A key is kept only as the BLAKE3 hash of its secret and found by that hash, so a lookup
//! costs one hash, no stored value is compared with a secret, and the stored value is useless
//! to someone who reads it. Masks are regular
//! expressions anchored at both ends and compiled once; both must match for any access.
//! Unknown keys and keys without the right are told apart (401 and 403 in the API), but a
//! refusal never says whether the token exists.
//!
//! The table is replaced as a whole at every change ([`Engine::reload_authkeys`]), so a
//! [`FoundKey`] (a key found by its secret's hash in one table) answers further checks without
//! hashing the secret again for exactly as long as its table is the one in force
//! ([`FoundKey::is_in_force`]): the API keeps one per connection, and a revoked or changed key
//! stops working at the next request.

use std::collections::HashMap;
use std::sync::Arc;

pub use crate::config::AuthkeyConfig;
use crate::config::ConfigError;

/// The hash under which a secret is stored and looked up.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    blake3::derive_key("zoftoken 2026-11-23 v1 authkey", secret.as_bytes())
}

/// What an operation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    /// Status, code validation, reading transactions, verifying backup codes.
    Any,
    /// Everything else.
    Admin,
}

/// The answer to an authorisation question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// No such key (HTTP 401).
    Unknown,
    /// The key exists but may not do this here (HTTP 403).
    Forbidden,
    /// Allowed; the key's name, for logs.
    Allowed(String),
}

struct Authkey {
    name: String,
    admin: bool,
    service_mask: Mask,
    user_mask: Mask,
    /// The masks as configured (for listings).
    masks: (String, String),
}

/// An authkey as listed (never its secret or hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthkeyInfo {
    /// Its name.
    pub name: String,
    /// Admin flag.
    pub admin: bool,
    /// Service mask as configured.
    pub service_mask: String,
    /// User mask as configured.
    pub user_mask: String,
}

/// The compiled authkey table.
#[derive(Default)]
pub struct Authkeys {
    keys: Vec<Authkey>,
    /// Index into `keys` by the hash of the key's secret.
    by_hash: HashMap<[u8; 32], usize>,
}

/// A key found in one [`Authkeys`] table by its secret's hash: checks it answers need no
/// further hash. It keeps its table alive, so the table's identity is its generation: while
/// [`FoundKey::is_in_force`] says so, the key is exactly what a new lookup would find.
#[derive(Clone)]
pub struct FoundKey {
    table: Arc<Authkeys>,
    index: usize,
}

impl std::fmt::Debug for FoundKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash stays out of logs as the secret does.
        f.debug_struct("FoundKey")
            .field("name", &self.key().map(|k| &k.name))
            .finish_non_exhaustive()
    }
}

impl FoundKey {
    /// The key in its table (always there: the table is immutable and kept alive).
    fn key(&self) -> Option<&Authkey> {
        self.table.keys.get(self.index)
    }

    /// Whether the key may do an operation needing `right` on `username` in `service` (both
    /// masks must match).
    pub fn allows(&self, right: Right, service: &str, username: &str) -> bool {
        self.key().is_some_and(|key| {
            (key.admin || right == Right::Any)
                && key.service_mask.is_match(service)
                && key.user_mask.is_match(username)
        })
    }

    /// Whether the key may do an operation needing `right` in `service` for some users (its
    /// service mask matches; each user is still checked with [`FoundKey::allows`]).
    pub fn allows_service(&self, right: Right, service: &str) -> bool {
        self.key().is_some_and(|key| {
            (key.admin || right == Right::Any) && key.service_mask.is_match(service)
        })
    }

    /// Whether the key is an admin key whose masks both match every name (`.*`, `(?s).*`,
    /// as compiled): the keys that may manage services and authkeys, which belong to no
    /// single service or user.
    pub fn is_unrestricted(&self) -> bool {
        self.key().is_some_and(|key| {
            key.admin && key.service_mask.is_unrestricted() && key.user_mask.is_unrestricted()
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        self.key().map_or("", |k| k.name.as_str())
    }

    /// Whether the key's table is still the engine's table in force (no reload or change of
    /// authkeys since it was found).
    pub fn is_in_force(&self, engine: &crate::Engine) -> bool {
        engine.authkeys_in_force(&self.table)
    }

    /// The answer for a found key: allowed (with its name) or forbidden.
    fn access(&self, allowed: bool) -> Access {
        if allowed {
            Access::Allowed(self.name().to_owned())
        } else {
            Access::Forbidden
        }
    }
}

fn anchored(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

/// A compiled, anchored mask. The common masks are answered without the regex engine (on
/// every API request): everything, any single line (`.*`, whose `.` does not match a
/// newline), and plain names; every other pattern runs as an anchored regex.
#[derive(Clone, Debug)]
enum Mask {
    /// `(?s).*`: matches every string.
    Everything,
    /// `.*`: matches every string without a newline.
    AnyLine,
    /// Letters, digits, `_` and `-` only: matches exactly itself.
    Literal(String),
    /// Anything else.
    Pattern(regex::Regex),
}

impl Mask {
    fn compile(pattern: &str) -> Result<Mask, regex::Error> {
        // Compiled in every case, so that an invalid pattern is refused the same way.
        let regex = anchored(pattern)?;
        Ok(match pattern {
            "(?s).*" | "(?s:.*)" => Mask::Everything,
            ".*" => Mask::AnyLine,
            p if !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                Mask::Literal(p.to_owned())
            }
            _ => Mask::Pattern(regex),
        })
    }

    /// Whether the mask matches every name a service or a user can have (names never hold
    /// control characters, so `.*` is one): decided on the compiled form, never on the text.
    fn is_unrestricted(&self) -> bool {
        matches!(self, Mask::Everything | Mask::AnyLine)
    }

    fn is_match(&self, s: &str) -> bool {
        match self {
            Mask::Everything => true,
            Mask::AnyLine => !s.contains('\n'),
            Mask::Literal(l) => l == s,
            Mask::Pattern(r) => r.is_match(s),
        }
    }
}

impl Authkeys {
    /// Compiles the table; reports every invalid entry with its path.
    pub fn new(keys: &[AuthkeyConfig]) -> Result<Authkeys, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut by_hash = HashMap::new();
        let mut compiled = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let err = |field: &str, message: String| ConfigError {
                path: format!("authkeys[{i}].{field}"),
                message,
            };
            if let Err(m) = crate::config::check_name(&k.name) {
                errors.push(err("name", m.into()));
            }
            let compile = |field: &str, mask: &str| {
                if mask.trim() != mask {
                    // `".* "` would be a different, narrower mask than it reads as.
                    return Err(err(field, "must not begin or end with whitespace".into()));
                }
                Mask::compile(mask).map_err(|e| err(field, e.to_string()))
            };
            let service_mask = compile("service_mask", &k.service_mask);
            let user_mask = compile("user_mask", &k.user_mask);
            match (service_mask, user_mask) {
                (Ok(service_mask), Ok(user_mask)) => {
                    let key = Authkey {
                        name: k.name.clone(),
                        admin: k.admin,
                        service_mask,
                        user_mask,
                        masks: (k.service_mask.clone(), k.user_mask.clone()),
                    };
                    if by_hash.insert(k.secret_hash, compiled.len()).is_some() {
                        errors.push(err("secret", "the same secret is configured twice".into()));
                    }
                    compiled.push(key);
                }
                (a, b) => errors.extend(a.err().into_iter().chain(b.err())),
            }
        }
        if errors.is_empty() {
            Ok(Authkeys {
                keys: compiled,
                by_hash,
            })
        } else {
            Err(errors)
        }
    }

    /// The key whose secret is `secret`, if any: one hash and one lookup. Looking up by
    /// hash compares hashes, not secrets: its timing can tell an attacker about BLAKE3
    /// outputs of their own guesses, nothing about a stored secret.
    pub fn find(self: &Arc<Self>, secret: &str) -> Option<FoundKey> {
        let index = *self.by_hash.get(&hash_secret(secret))?;
        Some(FoundKey {
            table: self.clone(),
            index,
        })
    }

    /// Whether `secret` may do an operation needing `right` on `username` in `service`.
    pub fn check(
        self: &Arc<Self>,
        secret: &str,
        right: Right,
        service: &str,
        username: &str,
    ) -> Access {
        match self.find(secret) {
            Some(key) => key.access(key.allows(right, service, username)),
            None => Access::Unknown,
        }
    }

    /// Whether `secret` is an unrestricted admin key ([`FoundKey::is_unrestricted`]).
    pub fn check_unrestricted(self: &Arc<Self>, secret: &str) -> Access {
        match self.find(secret) {
            Some(key) => key.access(key.is_unrestricted()),
            None => Access::Unknown,
        }
    }

    /// The keys, sorted by name (no secrets: none is kept).
    pub fn list(&self) -> Vec<AuthkeyInfo> {
        let mut out: Vec<AuthkeyInfo> = self
            .keys
            .iter()
            .map(|k| AuthkeyInfo {
                name: k.name.clone(),
                admin: k.admin,
                service_mask: k.masks.0.clone(),
                user_mask: k.masks.1.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

impl crate::Engine {
    /// Replaces the authkeys (reload); on error the old ones stay.
    pub fn reload_authkeys(&self, keys: &[AuthkeyConfig]) -> Result<(), crate::EngineError> {
        let compiled = Authkeys::new(keys).map_err(crate::EngineError::Config)?;
        *self.authkeys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(compiled);
        Ok(())
    }

    /// The authkey table in force (replaced as a whole at every reload or change).
    pub fn authkeys(&self) -> Arc<Authkeys> {
        self.authkeys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `table` is the authkey table in force.
    fn authkeys_in_force(&self, table: &Arc<Authkeys>) -> bool {
        Arc::ptr_eq(
            &self.authkeys.read().unwrap_or_else(|p| p.into_inner()),
            table,
        )
    }

    /// Whether the API caller holding `secret` may do an operation needing `right` on
    /// `username` in `service` (both masks must match).
    pub fn authorize(&self, secret: &str, right: Right, service: &str, username: &str) -> Access {
        self.authkeys().check(secret, right, service, username)
    }

    /// [`Authkeys::check_unrestricted`] on the current keys.
    pub fn authorize_unrestricted(&self, secret: &str) -> Access {
        self.authkeys().check_unrestricted(secret)
    }

    /// The current keys as listed ([`Authkeys::list`]).
    pub fn authkey_list(&self) -> Vec<AuthkeyInfo> {
        self.authkeys().list()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, secret: &str, admin: bool, s: &str, u: &str) -> AuthkeyConfig {
        AuthkeyConfig {
            name: name.into(),
            secret_hash: hash_secret(secret),
            admin,
            service_mask: s.into(),
            user_mask: u.into(),
        }
    }

    #[test]
    fn fast_masks_match_exactly_as_the_anchored_regex() {
        let inputs = [
            "", "bank", "Bank", "bank2", "bank\n", "a\nb", "x-y_z", "bänk", "bank.", " bank",
        ];
        for pattern in [
            ".*", "(?s).*", "(?s:.*)", "bank", "x-y_z", "b.nk", "[a-z]+", "bank|x",
        ] {
            let fast = Mask::compile(pattern).unwrap();
            let slow = anchored(pattern).unwrap();
            for s in inputs {
                assert_eq!(fast.is_match(s), slow.is_match(s), "{pattern:?} on {s:?}");
            }
        }
        assert!(matches!(Mask::compile("bank").unwrap(), Mask::Literal(_)));
        assert!(matches!(Mask::compile(".*").unwrap(), Mask::AnyLine));
        assert!(Mask::compile("(").is_err());
    }

    #[test]
    fn rights_and_anchored_masks() {
        let keys = Arc::new(
            Authkeys::new(&[
                key("root", "s3cret", true, ".*", ".*"),
                key("web", "web-key", false, "bank", "[a-z]+"),
            ])
            .unwrap(),
        );
        assert_eq!(
            keys.check("nope", Right::Any, "bank", "alice"),
            Access::Unknown
        );
        assert_eq!(
            keys.check("s3cret", Right::Admin, "x", "y"),
            Access::Allowed("root".into())
        );
        assert_eq!(
            keys.check("web-key", Right::Any, "bank", "alice"),
            Access::Allowed("web".into())
        );
        assert_eq!(
            keys.check("web-key", Right::Admin, "bank", "alice"),
            Access::Forbidden
        );
        // Anchored: a mask matching inside the name is not enough.
        assert_eq!(
            keys.check("web-key", Right::Any, "bank2", "alice"),
            Access::Forbidden
        );
        assert_eq!(
            keys.check("web-key", Right::Any, "mybank", "alice"),
            Access::Forbidden
        );
        assert_eq!(
            keys.check("web-key", Right::Any, "bank", "alice1"),
            Access::Forbidden
        );
        // An alternation cannot escape the anchors.
        let k = Arc::new(Authkeys::new(&[key("alt", "k", false, "a|b", ".*")]).unwrap());
        assert_eq!(k.check("k", Right::Any, "ab", "u"), Access::Forbidden);
        assert_eq!(
            k.check("k", Right::Any, "b", "u"),
            Access::Allowed("alt".into())
        );
    }

    #[test]
    fn unrestricted_keys_and_listing() {
        let keys = Arc::new(
            Authkeys::new(&[
                key("root", "r", true, ".*", "(?s).*"),
                key("narrow", "n", true, "bank", ".*"),
                key("reader", "x", false, ".*", ".*"),
            ])
            .unwrap(),
        );
        assert_eq!(keys.check_unrestricted("r"), Access::Allowed("root".into()));
        assert_eq!(keys.check_unrestricted("n"), Access::Forbidden);
        assert_eq!(keys.check_unrestricted("x"), Access::Forbidden);
        assert_eq!(keys.check_unrestricted("?"), Access::Unknown);
        let names: Vec<String> = keys.list().into_iter().map(|k| k.name).collect();
        assert_eq!(names, vec!["narrow", "reader", "root"]);
        assert_eq!(keys.list()[0].service_mask, "bank");
    }

    #[test]
    fn unrestricted_is_decided_by_the_compiled_mask_and_padded_masks_are_refused() {
        // A mask with surrounding whitespace reads as `.*` but is not: refused everywhere
        // keys are compiled (configuration file, database, API, command line).
        for (s, u) in [
            (".* ", ".*"),
            (".*", " .*"),
            ("\t(?s).*", ".*"),
            (".*\n", ".*"),
        ] {
            let errors = Authkeys::new(&[key("pad", "p", true, s, u)]).err().unwrap();
            assert_eq!(errors.len(), 1, "{s:?} {u:?}");
            assert!(errors[0].message.contains("whitespace"), "{errors:?}");
        }
        // Masks that merely look unrestricted do not make a key unrestricted.
        let keys = Arc::new(
            Authkeys::new(&[
                key("alt", "a", true, ".*|x", ".*"),
                key("plus", "p", true, ".+", ".*"),
                key("group", "g", true, "(?:.*)", ".*"),
                key("s", "s", true, "(?s:.*)", "(?s).*"),
            ])
            .unwrap(),
        );
        assert_eq!(keys.check_unrestricted("a"), Access::Forbidden);
        assert_eq!(keys.check_unrestricted("p"), Access::Forbidden);
        assert_eq!(keys.check_unrestricted("g"), Access::Forbidden);
        assert_eq!(keys.check_unrestricted("s"), Access::Allowed("s".into()));
        // Control characters in key names are refused too.
        let errors = Authkeys::new(&[key("a\nb", "n", false, ".*", ".*")])
            .err()
            .unwrap();
        assert_eq!(errors[0].path, "authkeys[0].name");
    }

    #[test]
    fn a_found_key_is_in_force_until_the_table_is_replaced() {
        let mut config = crate::EngineConfig::new(
            vec![crate::ServiceConfig::new("bank", &["127.0.0.1:1"])],
            1,
            [0; 32],
        );
        config.authkeys = vec![key("web", "web-key", false, "bank", ".*")];
        let engine = crate::Engine::new(config.clone()).unwrap();
        let found = engine.authkeys().find("web-key").unwrap();
        assert!(engine.authkeys().find("other").is_none());
        assert_eq!(found.name(), "web");
        assert!(found.is_in_force(&engine));
        assert!(found.allows(Right::Any, "bank", "alice"));
        assert!(!found.allows(Right::Admin, "bank", "alice"));
        assert!(!found.allows(Right::Any, "bank2", "alice"));
        assert!(!found.is_unrestricted());
        // A refused reload keeps the table, and the key with it.
        let mut bad = config.authkeys.clone();
        bad[0].user_mask = "(".into();
        assert!(engine.reload_authkeys(&bad).is_err());
        assert!(found.is_in_force(&engine));
        // Any accepted reload replaces it, even with the same keys: found again, by its hash.
        engine.reload_authkeys(&config.authkeys).unwrap();
        assert!(!found.is_in_force(&engine));
        let again = engine.authkeys().find("web-key").unwrap();
        assert!(again.is_in_force(&engine));
        // A revoked key is not found in the new table.
        engine.reload_authkeys(&[]).unwrap();
        assert!(!again.is_in_force(&engine));
        assert!(engine.authkeys().find("web-key").is_none());
        // The debug form names the key and shows nothing of its secret or hash.
        let shown = format!("{again:?}");
        assert!(shown.contains("web") && !shown.contains("hash"), "{shown}");
    }

    #[test]
    fn bad_masks_are_reported_with_their_path() {
        let errors = Authkeys::new(&[
            key("ok", "a", false, ".*", ".*"),
            key("bad", "b", false, "(", ".*"),
            key("dup", "a", false, ".*", "["),
        ])
        .err()
        .unwrap();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec!["authkeys[1].service_mask", "authkeys[2].user_mask"]
        );
    }
}
