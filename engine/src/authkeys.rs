//! Authkeys (`docs/product.md`, "Authkeys"): who may ask what through the API.
//!
//! A key is kept only as the BLAKE3 hash of its secret and found by that hash, so a lookup
//! costs one hash, no stored value is compared with a secret, and the stored value is useless
//! to someone who reads it. Masks are regular
//! expressions anchored at both ends and compiled once; both must match for any access.
//! Unknown keys and keys without the right are told apart (401 and 403 in the API), but a
//! refusal never says whether the token exists.

use std::collections::HashMap;

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
    by_hash: HashMap<[u8; 32], Authkey>,
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
                    if by_hash.insert(k.secret_hash, key).is_some() {
                        errors.push(err("secret", "the same secret is configured twice".into()));
                    }
                }
                (a, b) => errors.extend(a.err().into_iter().chain(b.err())),
            }
        }
        if errors.is_empty() {
            Ok(Authkeys { by_hash })
        } else {
            Err(errors)
        }
    }

    /// Whether `secret` may do an operation needing `right` on `username` in `service`.
    pub fn check(&self, secret: &str, right: Right, service: &str, username: &str) -> Access {
        let hash = hash_secret(secret);
        // Looking up by hash compares hashes, not secrets: its timing can tell an attacker
        // about BLAKE3 outputs of their own guesses, nothing about a stored secret.
        let Some(key) = self.by_hash.get(&hash) else {
            return Access::Unknown;
        };
        let allowed = (key.admin || right == Right::Any)
            && key.service_mask.is_match(service)
            && key.user_mask.is_match(username);
        if allowed {
            Access::Allowed(key.name.clone())
        } else {
            Access::Forbidden
        }
    }

    /// Whether `secret` is an admin key whose masks both match every name (`.*`, `(?s).*`,
    /// as compiled): the keys that may manage services and authkeys, which belong to no
    /// single service or user.
    pub fn check_unrestricted(&self, secret: &str) -> Access {
        let Some(key) = self.by_hash.get(&hash_secret(secret)) else {
            return Access::Unknown;
        };
        if key.admin && key.service_mask.is_unrestricted() && key.user_mask.is_unrestricted() {
            Access::Allowed(key.name.clone())
        } else {
            Access::Forbidden
        }
    }

    /// The keys, sorted by name (no secrets: none is kept).
    pub fn list(&self) -> Vec<AuthkeyInfo> {
        let mut out: Vec<AuthkeyInfo> = self
            .by_hash
            .values()
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
        *self.authkeys.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(compiled);
        Ok(())
    }

    /// Whether the API caller holding `secret` may do an operation needing `right` on
    /// `username` in `service` (both masks must match).
    pub fn authorize(&self, secret: &str, right: Right, service: &str, username: &str) -> Access {
        let keys = self
            .authkeys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        keys.check(secret, right, service, username)
    }

    /// [`Authkeys::check_unrestricted`] on the current keys.
    pub fn authorize_unrestricted(&self, secret: &str) -> Access {
        let keys = self
            .authkeys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        keys.check_unrestricted(secret)
    }

    /// The current keys as listed ([`Authkeys::list`]).
    pub fn authkey_list(&self) -> Vec<AuthkeyInfo> {
        let keys = self
            .authkeys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        keys.list()
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
        let keys = Authkeys::new(&[
            key("root", "s3cret", true, ".*", ".*"),
            key("web", "web-key", false, "bank", "[a-z]+"),
        ])
        .unwrap();
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
        let k = Authkeys::new(&[key("alt", "k", false, "a|b", ".*")]).unwrap();
        assert_eq!(k.check("k", Right::Any, "ab", "u"), Access::Forbidden);
        assert_eq!(
            k.check("k", Right::Any, "b", "u"),
            Access::Allowed("alt".into())
        );
    }

    #[test]
    fn unrestricted_keys_and_listing() {
        let keys = Authkeys::new(&[
            key("root", "r", true, ".*", "(?s).*"),
            key("narrow", "n", true, "bank", ".*"),
            key("reader", "x", false, ".*", ".*"),
        ])
        .unwrap();
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
        let keys = Authkeys::new(&[
            key("alt", "a", true, ".*|x", ".*"),
            key("plus", "p", true, ".+", ".*"),
            key("group", "g", true, "(?:.*)", ".*"),
            key("s", "s", true, "(?s:.*)", "(?s).*"),
        ])
        .unwrap();
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
