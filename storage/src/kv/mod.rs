//! The key-value layer every storage implementation provides: named column families
//! ([`Cf`]), atomic write batches ([`WriteBatch`]), point reads and ordered scans
//! ([`KvStore`]), and their errors by kind ([`KvError`]). Nothing here knows what a token is.

mod batch;
mod cf;
mod error;
pub mod feed;

pub use batch::{Op, WriteBatch};
pub use cf::Cf;
pub use error::{BoxError, KvError};
pub use feed::{FeedChanges, FeedCursor, FeedError};

/// How durable a write must be before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// In the write-ahead log, not forced to disk: survives a crash of the process, not a
    /// power loss (the default).
    #[default]
    Wal,
    /// In the write-ahead log and forced to disk (`fsync`): survives a power loss.
    Fsync,
}

/// An owned `(key, value)` pair.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Visits `(key, value)` pairs in key order; return `false` to stop.
pub type Visitor<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> bool;

/// A durable, ordered key-value store with column families and atomic batches.
///
/// Implementations: [`crate::MemoryKv`] (tests), the RocksDB store of
/// `zoftoken-storage-rocksdb` and the PostgreSQL store of `zoftoken-storage-postgres`. The crate `zoftoken-storage-conformance` holds the tests every
/// implementation must pass.
pub trait KvStore: Send + Sync {
    /// Applies the batch atomically: after a crash either every write is there or none is.
    /// Returns once the batch is as durable as `durability` says.
    fn write(&self, batch: &WriteBatch, durability: Durability) -> Result<(), KvError>;

    /// The value of one key.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;

    /// The values of several keys of one column family, in the order of `keys` (`None` for
    /// a key without a record; a key asked for twice is answered twice). The default asks
    /// for each key in turn; a store whose reads are round trips (PostgreSQL) reads them
    /// together.
    fn get_many(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        keys.iter().map(|k| self.get(cf, k)).collect()
    }

    /// Visits the keys `start <= key < end` (`end = None`: to the last key) in order.
    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        visit: Visitor<'_>,
    ) -> Result<(), KvError>;

    /// The last key of a column family and its value.
    fn last(&self, cf: Cf) -> Result<Option<KeyValue>, KvError>;

    /// Makes everything written so far durable on disk (memtables flushed, WAL synced).
    fn flush(&self) -> Result<(), KvError>;

    /// Atomically replaces the value of `key` with `value` if its stored value is `expected`
    /// (`None`: no record), durable as [`Durability::Fsync`] before it returns; returns
    /// whether it did. For the few records several servers of one database may write at the
    /// same moment (the server epoch).
    fn compare_and_put(
        &self,
        cf: Cf,
        key: &[u8],
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, KvError>;

    /// Whether several servers may write this store at once (PostgreSQL), so that versioned
    /// state puts compare and set ([`Op::PutNewer`]). `false` for stores one process holds
    /// alone (RocksDB, memory).
    fn is_shared(&self) -> bool {
        false
    }

    /// Names the writer of this handle's later commits in the change feed (a server's epoch;
    /// 0, the default, for a writer without one: the command line). A store without a feed
    /// ignores it.
    fn set_writer(&self, writer: u64) {
        let _ = writer;
    }

    /// Where the change feed stands now (the cursor of a reader that has read everything
    /// committed so far; take it before reading the records it starts from), or `None` for a
    /// store without a feed (the default). See [`feed`].
    fn feed_start(&self) -> Result<Option<FeedCursor>, KvError> {
        Ok(None)
    }

    /// The keys other writers than `own` changed in commits after `cursor`, and the cursor to
    /// read from next ([`feed`]).
    fn feed_read(&self, cursor: &FeedCursor, own: u64) -> Result<FeedChanges, FeedError> {
        let _ = (cursor, own);
        Err(FeedError::Unsupported)
    }

    /// Removes the feed's commits older than `keep` (any process may call it; a reader that
    /// has not read them by then gets [`FeedError::Behind`]). Returns how many it removed.
    fn feed_prune(&self, keep: std::time::Duration) -> Result<u64, KvError> {
        let _ = keep;
        Ok(0)
    }

    /// After a failed write, makes the store able to write again if it cannot recover by
    /// itself (RocksDB: close and open again). Returns whether it did anything; stores that
    /// need nothing of the kind keep the default, which does nothing.
    fn reopen(&self) -> Result<bool, KvError> {
        Ok(false)
    }
}
