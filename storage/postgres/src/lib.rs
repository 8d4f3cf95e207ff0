//! `KvStore` on PostgreSQL: the database that several servers of one instance share.
//!
//! Each column family is a table `zoftoken_<name>` of `(k bytea primary key, v bytea)`, in
//! bytewise key order as RocksDB's; `zoftoken_state` also keeps each token's state version in a
//! column of its own, so that a versioned state put is a compare-and-set ([`PgKv`] is
//! [`KvStore::is_shared`]): a write applies only if the stored version is the one just before
//! it, and a batch with a stale write fails whole with [`KvError::Conflict`]. A batch is one
//! SQL statement (data-modifying `WITH` clauses over arrays, one per table and kind), so it is
//! one transaction and one round trip, whatever its size. Every commit is synchronous
//! (`synchronous_commit` as the server sets it, `on` by default): an acknowledged write
//! survives a crash of PostgreSQL, whatever [`zoftoken_storage::Durability`] asks.
//!
//! The SQL is plain (tables, primary keys, `INSERT … ON CONFLICT`, `unnest`, data-modifying
//! `WITH`): no stored procedures, no sequences, no `LISTEN`/`NOTIFY`. Schema versions are in
//! [`migrate`]: applied at open, and a database of a newer version is refused.
//!
//! What it does not do: keep records in a relational shape (the records are the storage
//! crate's encodings; secrets stay sealed under the master key, which never enters the
//! database), decide anything about tokens, or hold a lock on the database (several servers and
//! the command line use it at once).
//!
//! Connections to another machine are TLS unless the connection string says `sslmode=disable`,
//! with the database's certificate verified and its name checked ([`PgTls`]); `prefer`, which
//! falls back to plaintext without a word, is never used.
//!
//! [`PgKv::replication`] says whether a failover could lose an acknowledged write
//! ([`Replication::loss_on_failover`]), for the server to refuse such a setup.
//!
//! Key types: [`PgKv`], [`PgConfig`], [`PgTls`], [`PgOpenError`], [`Replication`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod error;
mod feed;
pub mod migrate;
mod pool;
mod read;
mod replication;
mod tls;
mod write;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use zoftoken_storage::kv::{KeyValue, Visitor};
use zoftoken_storage::{
    Cf, Durability, FeedChanges, FeedCursor, FeedError, KvError, KvStore, WriteBatch,
};

pub use config::{PgConfig, PgConfigError, PgTls, PgTlsSettingsError};
pub use error::PgOpenError;
pub use replication::Replication;
pub use tls::PgTlsError;

use pool::Pool;

/// A PostgreSQL database holding every column family of [`Cf::ALL`], through a bounded pool
/// of connections.
pub struct PgKv {
    pool: Pool,
    /// The writer named in the change feed ([`KvStore::set_writer`]).
    writer: AtomicU64,
    /// How long the change feed keeps a commit ([`PgConfig::feed_retention`]).
    feed_retention: Duration,
}

impl fmt::Debug for PgKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgKv")
            .field("database", &self.pool.describe())
            .finish()
    }
}

impl PgKv {
    /// Connects and brings the schema to this build's version ([`migrate::apply`]); refuses a
    /// database whose schema is newer than this build knows.
    pub fn open(config: &PgConfig) -> Result<PgKv, PgOpenError> {
        let pool = Pool::new(config)?;
        {
            let mut conn = pool.get().map_err(PgOpenError::Connect)?;
            migrate::apply(conn.client().map_err(PgOpenError::Connect)?)?;
        }
        Ok(PgKv {
            pool,
            writer: AtomicU64::new(0),
            feed_retention: config.feed_retention,
        })
    }

    /// Connects without touching the schema, and says which version it has (0: none):
    /// `zoftoken db migrate --check`.
    pub fn schema_version(config: &PgConfig) -> Result<u32, PgOpenError> {
        let pool = Pool::new(config)?;
        let mut conn = pool.get().map_err(PgOpenError::Connect)?;
        let client = conn.client().map_err(PgOpenError::Connect)?;
        migrate::current(client).map_err(|e| PgOpenError::Schema(error::kv_error(e)))
    }
}

impl KvStore for PgKv {
    fn write(&self, batch: &WriteBatch, _durability: Durability) -> Result<(), KvError> {
        if batch.is_empty() {
            return Ok(());
        }
        let plan = write::Plan::of(batch, self.writer.load(Ordering::Relaxed))?;
        let mut conn = self.pool.get()?;
        conn.run(|c| plan.execute(c))
    }

    fn compare_and_put(
        &self,
        cf: Cf,
        key: &[u8],
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, KvError> {
        let mut conn = self.pool.get()?;
        let writer = self.writer.load(Ordering::Relaxed);
        conn.run(|c| write::compare_and_put(c, cf, key, expected, value, writer))
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let mut conn = self.pool.get()?;
        conn.run(|c| read::get(c, cf, key))
    }

    fn get_many(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        let mut conn = self.pool.get()?;
        conn.run(|c| read::get_many(c, cf, keys))
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        visit: Visitor<'_>,
    ) -> Result<(), KvError> {
        read::scan(&self.pool, cf, start, end, visit)
    }

    fn last(&self, cf: Cf) -> Result<Option<KeyValue>, KvError> {
        let mut conn = self.pool.get()?;
        conn.run(|c| read::last(c, cf))
    }

    /// Nothing to do: every commit was durable when it returned.
    fn flush(&self) -> Result<(), KvError> {
        Ok(())
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn set_writer(&self, writer: u64) {
        self.writer.store(writer, Ordering::Relaxed);
    }

    fn feed_start(&self) -> Result<Option<FeedCursor>, KvError> {
        let mut conn = self.pool.get()?;
        conn.run(feed::start).map(Some)
    }

    fn feed_read(&self, cursor: &FeedCursor, own: u64) -> Result<FeedChanges, FeedError> {
        let mut conn = self.pool.get()?;
        let retention = self.feed_retention;
        let conn = conn.conn()?;
        feed::read(conn, cursor, own, retention)
    }

    fn feed_prune(&self, keep: Duration) -> Result<u64, KvError> {
        let mut conn = self.pool.get()?;
        conn.run(|c| feed::prune(c, keep))
    }
}
