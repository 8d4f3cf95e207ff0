//! The database's schema, by version: the tables of every column family and the conflict
//! guard. [`apply`] brings a database to [`VERSION`] in one transaction, serialised between
//! servers starting at once, and refuses a database of a newer version.
//!
//! A version's statements never change once released; a change is a new version appended to
//! [`MIGRATIONS`].

use postgres::Client;
use zoftoken_storage::Cf;

use crate::error::{kv_error, PgOpenError};

/// The schema version this build writes: one per entry of [`MIGRATIONS`].
pub const VERSION: u32 = MIGRATIONS.len() as u32;

/// The check constraint whose violation means "a compare-and-set write found another
/// writer's change": the batch statement inserts a refused row into its table when fewer
/// versioned state rows were written than asked ([`crate::KvStore::is_shared`]).
pub(crate) const CONFLICT_CONSTRAINT: &str = "zoftoken_write_conflict";

/// Each version's statements, in order; version `i + 1` is `MIGRATIONS[i]`.
pub const MIGRATIONS: &[&[&str]] = &[&[
    "CREATE TABLE zoftoken_meta (k bytea PRIMARY KEY, v bytea NOT NULL)",
    "CREATE TABLE zoftoken_tokens (k bytea PRIMARY KEY, v bytea NOT NULL)",
    "CREATE TABLE zoftoken_secrets (k bytea PRIMARY KEY, v bytea NOT NULL)",
    // The version is bytes 1..5 of `v` (the storage crate's state layout), kept in a column of
    // its own for the compare-and-set.
    "CREATE TABLE zoftoken_state (k bytea PRIMARY KEY, v bytea NOT NULL, version bigint NOT NULL)",
    "CREATE TABLE zoftoken_enrollments (k bytea PRIMARY KEY, v bytea NOT NULL)",
    "CREATE TABLE zoftoken_services (k bytea PRIMARY KEY, v bytea NOT NULL)",
    "CREATE TABLE zoftoken_authkeys (k bytea PRIMARY KEY, v bytea NOT NULL)",
    "CREATE TABLE zoftoken_backup_codes (k bytea PRIMARY KEY, v bytea NOT NULL)",
    "CREATE TABLE zoftoken_transactions (k bytea PRIMARY KEY, v bytea NOT NULL)",
    "CREATE TABLE zoftoken_outbox (k bytea PRIMARY KEY, v bytea NOT NULL)",
    "CREATE TABLE zoftoken_webhooks (k bytea PRIMARY KEY, v bytea NOT NULL)",
    // Never holds a row: inserting `false` fails the whole statement.
    "CREATE TABLE zoftoken_write_conflict (ok boolean NOT NULL, \
     CONSTRAINT zoftoken_write_conflict CHECK (ok))",
], &[
    // The change feed (`crate::feed`): one row per commit, keyed by its transaction id, with
    // its writer and the keys it wrote.
    "CREATE TABLE zoftoken_changes (xid bigint PRIMARY KEY \
     DEFAULT (pg_current_xact_id()::text::bigint), writer bigint NOT NULL, \
     at timestamptz NOT NULL DEFAULT now(), keys bytea NOT NULL)",
    "CREATE INDEX zoftoken_changes_at ON zoftoken_changes (at)",
    // The transaction id below which the feed was pruned (one row once it was).
    "CREATE TABLE zoftoken_changes_pruned (one boolean PRIMARY KEY DEFAULT true CHECK (one), \
     below bigint NOT NULL)",
], &[
    // Offline challenges, kept so that a response may reach another server than the one
    // that made the challenge.
    "CREATE TABLE zoftoken_offline_challenges (k bytea PRIMARY KEY, v bytea NOT NULL)",
]];

/// The table of a column family.
pub(crate) fn table(cf: Cf) -> &'static str {
    match cf {
        Cf::Meta => "zoftoken_meta",
        Cf::Tokens => "zoftoken_tokens",
        Cf::Secrets => "zoftoken_secrets",
        Cf::State => "zoftoken_state",
        Cf::Enrollments => "zoftoken_enrollments",
        Cf::Services => "zoftoken_services",
        Cf::Authkeys => "zoftoken_authkeys",
        Cf::BackupCodes => "zoftoken_backup_codes",
        Cf::Transactions => "zoftoken_transactions",
        Cf::Outbox => "zoftoken_outbox",
        Cf::Webhooks => "zoftoken_webhooks",
        Cf::OfflineChallenges => "zoftoken_offline_challenges",
    }
}

const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS zoftoken_schema \
     (one boolean PRIMARY KEY DEFAULT true CHECK (one), version integer NOT NULL)";

fn version_table_exists(client: &mut Client) -> Result<bool, postgres::Error> {
    client
        .query_one("SELECT to_regclass('zoftoken_schema') IS NOT NULL", &[])?
        .try_get(0)
}

/// The database's schema version (0: none yet), without changing anything.
pub fn current(client: &mut Client) -> Result<u32, postgres::Error> {
    if !version_table_exists(client)? {
        return Ok(0);
    }
    let version: Option<i32> = client
        .query_opt("SELECT version FROM zoftoken_schema", &[])?
        .map(|r| r.try_get(0))
        .transpose()?;
    Ok(version.map_or(0, |v| u32::try_from(v).unwrap_or(0)))
}

/// Brings the schema to [`VERSION`]: every missing version's statements and the new version
/// number in one transaction, which holds the version row's lock, so that two servers
/// starting at once apply each version once. A database of a newer version is refused
/// untouched.
pub fn apply(client: &mut Client) -> Result<(), PgOpenError> {
    let schema = |e| PgOpenError::Schema(kv_error(e));
    // Two servers creating the version table at the same moment: `IF NOT EXISTS` does not
    // serialise them, and the loser fails on whichever catalogue entry (table, row type,
    // index) it reached second, with one of several error codes. The winner has committed
    // by then; the creation succeeded if the table is there.
    if let Err(e) = client.batch_execute(VERSION_TABLE) {
        if !version_table_exists(client).map_err(schema)? {
            return Err(schema(e));
        }
    }
    let mut tx = client.transaction().map_err(schema)?;
    tx.execute(
        "INSERT INTO zoftoken_schema (version) VALUES (0) ON CONFLICT (one) DO NOTHING",
        &[],
    )
    .map_err(schema)?;
    let found: i32 = tx
        .query_one("SELECT version FROM zoftoken_schema FOR UPDATE", &[])
        .and_then(|r| r.try_get(0))
        .map_err(schema)?;
    let found = u32::try_from(found).unwrap_or(u32::MAX);
    if found > VERSION {
        return Err(PgOpenError::NewerSchema {
            found,
            known: VERSION,
        });
    }
    if found == VERSION {
        return Ok(());
    }
    for (i, statements) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        for s in *statements {
            tx.batch_execute(s).map_err(schema)?;
        }
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute("UPDATE zoftoken_schema SET version = $1", &[&version])
            .map_err(schema)?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    tx.commit().map_err(schema)
}
