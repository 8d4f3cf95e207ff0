//! [`StoreError`]: why the store refused or failed, and the one way a corrupt record is
//! reported ([`corrupt`]).

use crate::kv::{Cf, KvError};

/// Errors of the store. Every one is a clear reason to stop at start; none is ever turned
/// into an empty database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The key-value store failed (see its kind: [`KvError`]).
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The master key is not the one this database was created with.
    #[error(
        "the master key does not match this database (wrong key file or ZOFTOKEN_MASTER_KEY?)"
    )]
    WrongMasterKey,
    /// The database was written by a newer version of ZofToken.
    #[error("database schema version {found} is newer than this program supports ({supported})")]
    NewerSchema {
        /// Version found.
        found: u32,
        /// Version this code writes.
        supported: u32,
    },
    /// A record could not be decoded or decrypted although the master key is right.
    #[error("corrupt record in `{cf}` at key {key}: {what}")]
    Corrupt {
        /// Column family.
        cf: Cf,
        /// The key, in hex.
        key: String,
        /// What is wrong.
        what: &'static str,
    },
    /// Invalid input to an import or an admin command.
    #[error("{0}")]
    Invalid(String),
    /// Every server epoch has been handed out (SPEC.md §4.3 forbids reusing one): this
    /// database cannot be served again; export the tokens into a new one.
    #[error("every server epoch of this database has been used; it must not be started again")]
    EpochsExhausted,
}

/// The error for the record at `key` of `cf` that is not what it must be.
pub(crate) fn corrupt(cf: Cf, key: &[u8], what: &'static str) -> StoreError {
    StoreError::Corrupt {
        cf,
        key: hex::encode(key),
        what,
    }
}
