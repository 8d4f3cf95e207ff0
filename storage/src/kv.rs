//! The key-value layer every storage implementation provides: named column families,
//! atomic write batches, point reads and ordered scans. Nothing here knows what a token is.

use std::fmt;

/// A column family (a key space of its own). The order is the on-disk order of creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Schema version, master-key check value, sequence numbers.
    Meta,
    /// Token id → service name and username (cold data, never loaded into the engine).
    Tokens,
    /// Token id → service name and encrypted secret, PIN verifier and duress verifier.
    Secrets,
    /// Token id → the token's non-secret state (written by most packets).
    State,
    /// Token id → a pending enrollment with its encrypted key material.
    Enrollments,
    /// Service name → the service's configuration (encrypted: it holds the webhook secret).
    Services,
    /// Authkey name → the authkey (the secret only as its hash).
    Authkeys,
    /// Token id → the token's encrypted backup-code hashes.
    BackupCodes,
    /// Transaction id → the transaction.
    Transactions,
    /// Commit sequence number (big-endian) → the events of that commit, for the webhooks.
    Outbox,
    /// Webhook delivery state: per-commit delivered bitmaps, dead letters, replays and
    /// disabled endpoints (layouts in `storage/src/webhooks.rs`).
    Webhooks,
}

impl Cf {
    /// Every column family.
    pub const ALL: [Cf; 11] = [
        Cf::Meta,
        Cf::Tokens,
        Cf::Secrets,
        Cf::State,
        Cf::Enrollments,
        Cf::Services,
        Cf::Authkeys,
        Cf::BackupCodes,
        Cf::Transactions,
        Cf::Outbox,
        Cf::Webhooks,
    ];

    /// Its name on disk and in exports.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Tokens => "tokens",
            Cf::Secrets => "secrets",
            Cf::State => "state",
            Cf::Enrollments => "enrollments",
            Cf::Services => "services",
            Cf::Authkeys => "authkeys",
            Cf::BackupCodes => "backup_codes",
            Cf::Transactions => "transactions",
            Cf::Outbox => "outbox",
            Cf::Webhooks => "webhooks",
        }
    }

    /// The column family of a name.
    pub fn from_name(name: &str) -> Option<Cf> {
        Cf::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Cf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One write of a batch, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// Insert or replace.
    Put(Cf, &'a [u8], &'a [u8]),
    /// Remove (no error when absent).
    Delete(Cf, &'a [u8]),
    /// Put a versioned token state (`state` column family only): of the stored value and this
    /// one, the newer version wins ([`crate::schema::newer_state`]), whatever order two
    /// concurrent batches are written in. RocksDB does this with a merge operator.
    PutNewer(Cf, &'a [u8], &'a [u8]),
}

const PUT: u8 = 0;
const DELETE: u8 = 1;
const PUT_NEWER: u8 = 2;

/// Writes applied all together or not at all, in order. Kept in one flat buffer
/// (`kind, cf, key length, key, value length, value` per write), so building a batch of many
/// small records allocates once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    data: Vec<u8>,
    count: usize,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// An empty batch with room for `bytes` of records.
    pub fn with_capacity(bytes: usize) -> WriteBatch {
        WriteBatch {
            data: Vec::with_capacity(bytes),
            count: 0,
        }
    }

    fn header(&mut self, kind: u8, cf: Cf, key: &[u8]) {
        self.data.push(kind);
        self.data.push(cf as u8);
        // Keys are ids and names: far below 4 GiB.
        self.data
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.data.extend_from_slice(key);
        self.count += 1;
    }

    fn value_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let at = self.data.len();
        self.data.extend_from_slice(&[0; 4]);
        f(&mut self.data);
        let len = (self.data.len() - at - 4) as u32;
        if let Some(slot) = self.data.get_mut(at..at + 4) {
            slot.copy_from_slice(&len.to_le_bytes());
        }
    }

    /// Adds a put.
    pub fn put(&mut self, cf: Cf, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.header(PUT, cf, key.as_ref());
        self.value_with(|d| d.extend_from_slice(value.as_ref()));
    }

    /// Adds a versioned put (see [`Op::PutNewer`]).
    pub fn put_newer(&mut self, cf: Cf, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.header(PUT_NEWER, cf, key.as_ref());
        self.value_with(|d| d.extend_from_slice(value.as_ref()));
    }

    /// Adds a versioned put whose value `encode` appends (see [`Op::PutNewer`]).
    pub fn put_newer_with(
        &mut self,
        cf: Cf,
        key: impl AsRef<[u8]>,
        encode: impl FnOnce(&mut Vec<u8>),
    ) {
        self.header(PUT_NEWER, cf, key.as_ref());
        self.value_with(encode);
    }

    /// Adds a delete.
    pub fn delete(&mut self, cf: Cf, key: impl AsRef<[u8]>) {
        self.header(DELETE, cf, key.as_ref());
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.count
    }

    /// The writes, in order.
    pub fn ops(&self) -> impl Iterator<Item = Op<'_>> {
        let mut rest: &[u8] = &self.data;
        std::iter::from_fn(move || {
            let mut r = crate::schema::Reader::new(rest);
            let kind = r.u8()?;
            let cf = *Cf::ALL.get(usize::from(r.u8()?))?;
            let klen = u32::from_le_bytes(r.array()?) as usize;
            let key = r.bytes(klen)?;
            let op = if kind == DELETE {
                Op::Delete(cf, key)
            } else {
                let vlen = u32::from_le_bytes(r.array()?) as usize;
                let value = r.bytes(vlen)?;
                if kind == PUT_NEWER {
                    Op::PutNewer(cf, key, value)
                } else {
                    Op::Put(cf, key, value)
                }
            };
            rest = r.rest();
            Some(op)
        })
    }
}

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

/// Errors of a storage implementation.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The database's files are damaged or not a database of ours.
    #[error("database corrupt: {0}")]
    Corrupt(String),
    /// The database is in use by another process (the server is running).
    #[error("database is locked by another process (is the server running?): {0}")]
    Locked(String),
    /// Any other failure of the underlying store (disk full, permissions, …).
    #[error("storage error: {0}")]
    Io(String),
}

/// An owned `(key, value)` pair.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Visits `(key, value)` pairs in key order; return `false` to stop.
pub type Visitor<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> bool;

/// A durable, ordered key-value store with column families and atomic batches.
///
/// Implementations: [`crate::MemoryKv`] (tests) and the RocksDB store of
/// `zoftoken-storage-rocksdb`. [`crate::conformance`] holds the tests every implementation must
/// pass.
pub trait KvStore: Send + Sync {
    /// Applies the batch atomically: after a crash either every write is there or none is.
    /// Returns once the batch is as durable as `durability` says.
    fn write(&self, batch: &WriteBatch, durability: Durability) -> Result<(), KvError>;

    /// The value of one key.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;

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

    /// After a failed write, makes the store able to write again if it cannot recover by
    /// itself (RocksDB: close and open again). Returns whether it did anything; stores that
    /// need nothing of the kind keep the default, which does nothing.
    fn reopen(&self) -> Result<bool, KvError> {
        Ok(false)
    }
}
