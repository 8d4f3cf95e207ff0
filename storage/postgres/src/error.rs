//! PostgreSQL's errors as [`KvError`] kinds, decided on SQLSTATE codes and on the error's
//! kind, never on its text; and [`PgOpenError`], why a database could not be opened.

use postgres::error::SqlState;
use zoftoken_storage::KvError;

use crate::migrate::CONFLICT_CONSTRAINT;

/// Why [`crate::PgKv::open`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgOpenError {
    /// The database could not be reached or refused the connection (the error says which,
    /// without the connection string's password).
    #[error("cannot connect to PostgreSQL")]
    Connect(#[source] KvError),
    /// The TLS settings could not be used (a certificate or key file).
    #[error("TLS to PostgreSQL")]
    Tls(#[from] crate::tls::PgTlsError),
    /// Reading or applying the schema failed.
    #[error("PostgreSQL schema")]
    Schema(#[source] KvError),
    /// The database was written by a newer build: this one does not know its tables.
    #[error(
        "the PostgreSQL schema is version {found}, newer than this build's {known}: upgrade \
         zoftoken, or restore a backup made for this version"
    )]
    NewerSchema {
        /// The database's schema version.
        found: u32,
        /// The newest version this build knows.
        known: u32,
    },
}

/// The kind of a PostgreSQL error.
pub(crate) fn kv_error(e: postgres::Error) -> KvError {
    let Some(db) = e.as_db_error() else {
        // No answer from the server: a connection that could not be made or was lost, a
        // timeout. The operation may or may not have been applied only if it was a write whose
        // commit was in flight; callers treat the write as failed and restore from the database.
        return KvError::Io(Box::new(e));
    };
    let code = db.code();
    if *code == SqlState::CHECK_VIOLATION && db.constraint() == Some(CONFLICT_CONSTRAINT) {
        return KvError::Conflict(Box::new(e));
    }
    let class = code.code().get(..2).unwrap_or("");
    match class {
        // Connection exceptions, insufficient resources (disk full, out of memory, too many
        // connections), operator intervention (shutdown, statement timeout, cancel), a
        // read-only standby, a system error: the database cannot take the write now.
        "08" | "53" | "57" | "58" | "25" => KvError::Io(Box::new(e)),
        // Serialisation failures and deadlocks: nothing was written; another try may succeed.
        "40" => KvError::Conflict(Box::new(e)),
        // Internal errors: data corrupted, index corrupted.
        "XX" => KvError::Corruption(Box::new(e)),
        _ => KvError::Other(Box::new(e)),
    }
}
