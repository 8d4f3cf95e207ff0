//! Authkeys: listed without secrets (hashes abbreviated), created with 256 random bits shown
//! once and stored as a hash, revoked; names and masks validated with the whole list, as the
//! engine will compile it.

use serde::Deserialize;
use zeroize::Zeroizing;
use zoftoken_storage::{AuthkeyDoc, Store};

use crate::error::{AdminError, ConfigProblems};
use crate::registry::{Registry, Source};

/// Longest authkey name (bytes).
pub const AUTHKEY_NAME_MAX: usize = 255;

/// Hexadecimal digits of a secret's hash shown in listings.
pub const SECRET_HASH_PREFIX: usize = 8;

/// How a new secret is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretFormat {
    /// 64 hexadecimal digits.
    #[default]
    Hex,
    /// 43 characters of URL-safe base64 without padding.
    Base64,
}

impl SecretFormat {
    /// 256 random bits from the operating system, written in this format.
    fn generate(self) -> Zeroizing<String> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, bytes.as_mut());
        Zeroizing::new(match self {
            SecretFormat::Hex => hex::encode(bytes.as_ref()),
            SecretFormat::Base64 => {
                use base64::Engine as _;
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref())
            }
        })
    }
}

/// An authkey to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAuthkey {
    /// A name for listings and logs, 1 to [`AUTHKEY_NAME_MAX`] bytes, no control characters.
    pub name: String,
    /// Whether it may do every operation (otherwise: status, code validation, reading
    /// transactions).
    pub admin: bool,
    /// Regular expression the service name must match (anchored).
    pub service_mask: String,
    /// Regular expression the username must match (anchored).
    pub user_mask: String,
    /// How its secret is written.
    pub format: SecretFormat,
}

impl NewAuthkey {
    /// A key of this name that is not admin, with unrestricted masks (`.*`), hex secret.
    pub fn new(name: &str) -> NewAuthkey {
        NewAuthkey {
            name: name.to_owned(),
            admin: false,
            service_mask: ".*".into(),
            user_mask: ".*".into(),
            format: SecretFormat::Hex,
        }
    }
}

/// A created authkey: its secret, shown this once.
pub struct CreatedAuthkey {
    /// The name.
    pub name: String,
    /// The secret (never stored, never shown again).
    pub secret: Zeroizing<String>,
    /// The hash of the secret (64 hexadecimal digits), as stored.
    pub secret_hash: String,
    /// Whether it is an admin key.
    pub admin: bool,
    /// Its service mask.
    pub service_mask: String,
    /// Its user mask.
    pub user_mask: String,
    /// Whether it was stored (database mode); with a configuration file nothing is: the
    /// entry is for the operator to add to the file.
    pub stored: bool,
}

impl std::fmt::Debug for CreatedAuthkey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedAuthkey")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("admin", &self.admin)
            .field("service_mask", &self.service_mask)
            .field("user_mask", &self.user_mask)
            .field("stored", &self.stored)
            .finish()
    }
}

/// An authkey as listed: never a secret; the hash abbreviated to [`SECRET_HASH_PREFIX`]
/// digits where it is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthkeySummary {
    /// The name.
    pub name: String,
    /// Whether it is an admin key.
    pub admin: bool,
    /// Its service mask.
    pub service_mask: String,
    /// Its user mask.
    pub user_mask: String,
    /// The first digits of its hash (`None` when only the running engine is asked, or a
    /// configuration file gives the secret itself).
    pub secret_hash_prefix: Option<String>,
}

impl AuthkeySummary {
    fn of(d: &AuthkeyDoc) -> AuthkeySummary {
        AuthkeySummary {
            name: d.name.clone(),
            admin: d.admin,
            service_mask: d.service_mask.clone(),
            user_mask: d.user_mask.clone(),
            secret_hash_prefix: d
                .secret_hash
                .as_deref()
                .map(|h| h.get(..SECRET_HASH_PREFIX).unwrap_or(h).to_owned()),
        }
    }
}

impl Registry {
    /// Every authkey, without secrets.
    pub fn authkeys(&self) -> Result<Vec<AuthkeySummary>, AdminError> {
        Ok(match &self.source {
            Source::Database(store) => store.authkeys()?.iter().map(AuthkeySummary::of).collect(),
            Source::File(docs) => docs.authkeys.iter().map(AuthkeySummary::of).collect(),
            Source::Engine(engine) => engine
                .authkey_list()
                .into_iter()
                .map(|k| AuthkeySummary {
                    name: k.name,
                    admin: k.admin,
                    service_mask: k.service_mask,
                    user_mask: k.user_mask,
                    secret_hash_prefix: None,
                })
                .collect(),
        })
    }

    /// Creates an authkey: 256 random bits, returned once. In the database only its hash is
    /// stored, and the running engine accepts it at once; for a configuration file nothing
    /// is stored ([`CreatedAuthkey::stored`] is false: the operator adds the entry to the
    /// file). A running server whose authkeys come from its file makes none.
    pub fn authkey_create(&self, new: NewAuthkey) -> Result<CreatedAuthkey, AdminError> {
        let _changes = self.lock();
        let (store, existing): (Option<&Store>, Vec<AuthkeyDoc>) = match &self.source {
            Source::Database(s) => {
                check_name(&new.name)?;
                (Some(s), s.authkeys()?)
            }
            Source::File(docs) => {
                check_name(&new.name)?;
                (None, docs.authkeys.clone())
            }
            Source::Engine(_) => return Err(AdminError::ConfigSourceFile),
        };
        let secret = new.format.generate();
        let doc = AuthkeyDoc::new(
            &new.name,
            &secret,
            new.admin,
            &new.service_mask,
            &new.user_mask,
        );
        if existing.iter().any(|d| d.name == doc.name) {
            return Err(AdminError::AuthkeyExists(new.name));
        }
        let mut all = existing;
        all.push(doc.clone());
        let at = format!("authkeys[{}]", all.len() - 1);
        let configs = zoftoken_storage::authkeys_to_config(&all)
            .map_err(|e| AdminError::InvalidAuthkey(ConfigProblems::renamed(e, &at, "authkey")))?;
        if let Some(store) = store {
            store.put_authkey(&doc)?;
            if let Some(engine) = &self.running {
                engine.reload_authkeys(&configs)?;
            }
            // Never the secret: only who may now do what.
            tracing::info!(
                authkey = %new.name,
                admin = new.admin,
                service_mask = %new.service_mask,
                user_mask = %new.user_mask,
                "admin: authkey created"
            );
        }
        Ok(CreatedAuthkey {
            name: new.name,
            secret,
            secret_hash: doc.secret_hash.unwrap_or_default(),
            admin: new.admin,
            service_mask: new.service_mask,
            user_mask: new.user_mask,
            stored: store.is_some(),
        })
    }

    /// Revokes an authkey (database mode): it stops working at once in the running engine.
    pub fn authkey_revoke(&self, name: &str) -> Result<(), AdminError> {
        let store = self.ensure_editable()?;
        let _changes = self.lock();
        // What the running engine will accept is checked before anything is written.
        let configs = match &self.running {
            Some(_) => {
                let remaining: Vec<AuthkeyDoc> = store
                    .authkeys()?
                    .into_iter()
                    .filter(|d| d.name != name)
                    .collect();
                Some(
                    zoftoken_storage::authkeys_to_config(&remaining)
                        .map_err(|e| AdminError::StoredConfigInvalid(ConfigProblems(e)))?,
                )
            }
            None => None,
        };
        if !store.delete_authkey(name)? {
            return Err(AdminError::UnknownAuthkey(name.to_owned()));
        }
        if let (Some(engine), Some(configs)) = (&self.running, configs) {
            engine.reload_authkeys(&configs)?;
        }
        tracing::info!(authkey = %name, "admin: authkey revoked");
        Ok(())
    }
}

/// Refuses a name that is empty or longer than [`AUTHKEY_NAME_MAX`] bytes (the rest of the
/// name's rules are the engine's, checked with the whole list).
fn check_name(name: &str) -> Result<(), AdminError> {
    if name.is_empty() || name.len() > AUTHKEY_NAME_MAX {
        Err(AdminError::InvalidAuthkeyName)
    } else {
        Ok(())
    }
}
