//! ZofToken storage on RocksDB: [`RocksKv`] implements the `zoftoken-storage` key-value layer
//! with one column family per [`Cf`], atomic `WriteBatch`es, the write-ahead log on (synced
//! per write only with [`Durability::Fsync`]), and a merge operator on `state` that keeps the
//! newest version of a token's state whatever order concurrent group commits land in.
//!
//! It knows nothing of tokens or of the schema beyond that merge rule; `zoftoken-storage`
//! does the rest. This is the only crate of the workspace that links RocksDB.
//!
//! A damaged write-ahead log never silently drops acknowledged changes: see
//! [`RocksKv::open`] and [`RocksKv::recover`] (module [`wal`] finds and measures the damage).
//!
//! Errors are reported by kind ([`KvError`]): RocksDB's own kind (`rocksdb::ErrorKind`)
//! decides between corruption, IO and other failures, and a database held by another process
//! is found by a lock of this crate's own ([`LOCK_FILE`]) before RocksDB is asked (RocksDB
//! reports its lock conflict as a plain IO error).
//!
//! Key types: [`RocksKv`], [`Recovery`], [`WalDamaged`], [`InUse`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, DBRecoveryMode, Env, ErrorKind,
    MemtableFactory, MergeOperands, Options, ReadOptions, WriteOptions, DB,
};

pub mod wal;
use zoftoken_storage::kv::{KeyValue, Visitor};
use zoftoken_storage::schema::newer_state;
use zoftoken_storage::{Cf, Durability, KvError, KvStore, Op, WriteBatch};

/// A RocksDB database holding every column family of [`Cf::ALL`].
///
/// After a failed write (a full disk), RocksDB refuses every later write until it is opened
/// again: [`KvStore::reopen`] closes and reopens it in place (the write lock waits for the
/// reads and writes under way), replaying its write-ahead log.
pub struct RocksKv {
    /// `None` only while a reopen failed (every call then fails until one succeeds).
    db: RwLock<Option<DB>>,
    path: PathBuf,
    /// A write failed since the last open.
    write_failed: AtomicBool,
    /// Serialises [`KvStore::compare_and_put`]'s read and write (this process holds the
    /// database alone).
    compare_and_put: Mutex<()>,
    /// The held lock of [`LOCK_FILE`] (after `db`: released once the database is closed).
    _lock: File,
}

/// The file in the data directory whose exclusive lock (`flock`) an open [`RocksKv`] holds for
/// its lifetime: a second open, by another process or in this one, is refused with
/// [`KvError::Locked`] before RocksDB is asked. RocksDB's own `LOCK` stays and still guards
/// the files.
pub const LOCK_FILE: &str = "ZOFTOKEN_LOCK";

/// The data directory is held by another open database: a running server, an admin command,
/// or another handle in this process. The source of a [`KvError::Locked`].
#[derive(Debug, thiserror::Error)]
#[error(
    "the database {} is open elsewhere (its lock file {} is held)",
    .path.display(),
    .path.join(LOCK_FILE).display()
)]
pub struct InUse {
    /// The data directory.
    pub path: PathBuf,
}

/// The write-ahead log is damaged in the middle: opening would drop the intact write batches
/// after the damage. The source of the [`KvError::Corruption`] of [`RocksKv::open`].
#[derive(Debug, thiserror::Error)]
#[error(
    "the write-ahead log {} is damaged at byte {}, and {} write batches ({} records) after the \
     damage would be lost. Nothing was changed. Restore a backup, or run `zoftoken db recover` \
     to start without them (RocksDB: {rocksdb})",
    .loss.path.display(),
    .loss.offset,
    .loss.batches,
    .loss.records
)]
pub struct WalDamaged {
    /// Where the damage is and what it would drop.
    pub loss: wal::Loss,
    /// What RocksDB said when it refused to open (quoted in the message).
    rocksdb: rocksdb::Error,
}

/// The data directory cannot take writes yet (the disk is still full): a reopen is not tried.
#[derive(Debug, thiserror::Error)]
#[error("the data directory cannot take writes yet: {cause}")]
struct NotWritableYet {
    /// Why the test write failed (quoted in the message).
    cause: std::io::Error,
}

/// Takes the exclusive lock of [`LOCK_FILE`] in `dir`, creating the directory (one level, as
/// RocksDB does) and the file if missing.
fn lock_dir(dir: &Path) -> Result<File, KvError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |e: std::io::Error| KvError::Io(Box::new(e));
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(dir)
            .map_err(io)?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(dir.join(LOCK_FILE))
        .map_err(io)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(KvError::Locked(Box::new(InUse {
            path: dir.to_owned(),
        }))),
        Err(e) => Err(io(e.into())),
    }
}

impl std::fmt::Debug for RocksKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksKv").field("path", &self.path).finish()
    }
}

/// Room needed in the data directory before a reopen is tried.
const REOPEN_ROOM: usize = 4 << 20;

/// Writes (and removes) [`REOPEN_ROOM`] bytes in `dir`: whether it can take writes again.
fn space_check(dir: &Path) -> Result<(), KvError> {
    use std::io::Write;
    let file = dir.join("ZOFTOKEN_SPACE_CHECK");
    let result = std::fs::File::create(&file).and_then(|mut f| {
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..REOPEN_ROOM / chunk.len() {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    });
    let _ = std::fs::remove_file(&file);
    result.map_err(|cause| KvError::Io(Box::new(NotWritableYet { cause })))
}

/// The column family handle of `cf`.
fn handle(db: &DB, cf: Cf) -> Result<&rocksdb::ColumnFamily, KvError> {
    let name = if cf == Cf::Meta { "default" } else { cf.name() };
    db.cf_handle(name)
        .ok_or_else(|| KvError::Corruption(format!("column family `{name}` missing").into()))
}

/// A RocksDB error by its kind: damaged files are [`KvError::Corruption`], an operation or
/// argument RocksDB does not support is [`KvError::Other`], anything else (the disk, the
/// file system, a busy or shut-down database) is [`KvError::Io`].
fn error(e: rocksdb::Error) -> KvError {
    match e.kind() {
        ErrorKind::Corruption => KvError::Corruption(Box::new(e)),
        ErrorKind::NotSupported | ErrorKind::InvalidArgument => KvError::Other(Box::new(e)),
        _ => KvError::Io(Box::new(e)),
    }
}

/// The `state` merge: of the stored value and the operands, in write order, keep the newest
/// version (see `zoftoken_storage::schema::newer_state`).
fn merge_newest(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut best: Option<&[u8]> = existing;
    for op in operands {
        best = Some(match best {
            Some(b) => newer_state(b, op),
            None => op,
        });
    }
    best.map(<[u8]>::to_vec)
}

fn cf_options(cf: Cf) -> Options {
    let mut o = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    o.set_block_based_table_factory(&table);
    o.set_compression_type(DBCompressionType::Lz4);
    o.set_bottommost_compression_type(DBCompressionType::Zstd);
    if cf == Cf::State {
        o.set_merge_operator_associative("zoftoken_newest_state_v1", merge_newest);
        // The hot column family, written by most packets at random keys: a vector memtable
        // appends in O(1) and sorts once when flushed (a skiplist insert is a chain of cache
        // misses). Point reads of `state` are rare (admin commands) and scan the memtable.
        o.set_memtable_factory(MemtableFactory::Vector);
        o.set_write_buffer_size(64 << 20);
    }
    o
}

/// What `zoftoken db recover` did: where the write-ahead log was damaged and what the
/// recovery dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The damage and the write batches after it, dropped; `None` if the log was intact.
    pub loss: Option<wal::Loss>,
}

impl RocksKv {
    /// Opens (or creates) the database in directory `path`.
    ///
    /// Every change in the write-ahead log is replayed, or the open fails: damage in the
    /// middle of a log (an intact record after a damaged one) stops it with
    /// [`KvError::Corruption`] (a [`WalDamaged`]), saying where and how much would be lost, and that
    /// [`RocksKv::recover`] (`zoftoken db recover`) opens it with that loss. Only a damaged
    /// *tail* (the last record of the newest log cut short or unreadable, what a crash in the
    /// middle of a write leaves) is accepted, and logged loudly: that last write never
    /// returned under `durability: fsync`; under `durability: wal` it may have been
    /// acknowledged before the machine lost power (SECURITY.md).
    ///
    /// A database open elsewhere (a running server) is refused with [`KvError::Locked`] (an
    /// [`InUse`]).
    pub fn open(path: &Path) -> Result<RocksKv, KvError> {
        let lock = lock_dir(path)?;
        let db = Self::open_db(path)?;
        Ok(RocksKv::new(db, path, lock))
    }

    /// Opens the database of `path` as [`RocksKv::open`] says (the lock already held).
    fn open_db(path: &Path) -> Result<DB, KvError> {
        let e = match Self::open_with(path, DBRecoveryMode::AbsoluteConsistency) {
            Err(e) if e.kind() == ErrorKind::Corruption => e,
            other => return other.map_err(error),
        };
        let report = wal::inspect(path).map_err(|e| KvError::Io(Box::new(e)))?;
        match report.loss() {
            Some(loss) if loss.batches == 0 => {
                let db = Self::open_with(path, DBRecoveryMode::TolerateCorruptedTailRecords)
                    .map_err(error)?;
                tracing::warn!(
                    "the write-ahead log {} ended in a damaged record at \
                     byte {} (a write cut short by a crash or a full disk); it was \
                     dropped. Under \
                     `durability: fsync` that write was never acknowledged; under \
                     `durability: wal` it may have been, if the machine lost power.",
                    loss.path.display(),
                    loss.offset
                );
                Ok(db)
            }
            Some(loss) => Err(KvError::Corruption(Box::new(WalDamaged {
                loss,
                rocksdb: e,
            }))),
            None => Err(error(e)),
        }
    }

    /// Opens a database whose write-ahead log is damaged, dropping everything from the first
    /// damage on (RocksDB's point-in-time recovery), flushes what was recovered so that the
    /// damaged log is no longer needed, and reports what was dropped.
    pub fn recover(path: &Path) -> Result<(RocksKv, Recovery), KvError> {
        let report = wal::inspect(path).map_err(|e| KvError::Io(Box::new(e)))?;
        let lock = lock_dir(path)?;
        let db = Self::open_with(path, DBRecoveryMode::PointInTime).map_err(error)?;
        let kv = RocksKv::new(db, path, lock);
        kv.flush()?;
        Ok((
            kv,
            Recovery {
                loss: report.loss(),
            },
        ))
    }

    fn new(db: DB, path: &Path, lock: File) -> RocksKv {
        RocksKv {
            db: RwLock::new(Some(db)),
            path: path.to_owned(),
            write_failed: AtomicBool::new(false),
            compare_and_put: Mutex::new(()),
            _lock: lock,
        }
    }

    /// Opens RocksDB with every column family and this crate's options.
    fn open_with(path: &Path, recovery: DBRecoveryMode) -> Result<DB, rocksdb::Error> {
        let mut opts = Options::default();
        opts.set_wal_recovery_mode(recovery);
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_enable_pipelined_write(true);
        // Required by the vector memtable of `state`.
        opts.set_allow_concurrent_memtable_write(false);
        opts.set_max_total_wal_size(512 << 20);
        opts.set_keep_log_file_num(4);
        opts.set_paranoid_checks(true);
        // Flushes and compactions run at a lower CPU priority (nice) than the packet path:
        // on a machine whose cores all run IO threads, a memtable flush must not delay replies.
        let mut env = Env::new()?;
        env.lower_thread_pool_cpu_priority();
        env.lower_high_priority_thread_pool_cpu_priority();
        opts.set_env(&env);
        let cfs = Cf::ALL
            .into_iter()
            .filter(|c| *c != Cf::Meta)
            .map(|c| ColumnFamilyDescriptor::new(c.name(), cf_options(c)));
        // `meta` is RocksDB's default column family.
        DB::open_cf_descriptors(&opts, path, cfs)
    }

    /// Runs `f` on the open database.
    fn with_db<R>(&self, f: impl FnOnce(&DB) -> Result<R, KvError>) -> Result<R, KvError> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        let db = guard.as_ref().ok_or_else(|| {
            KvError::Io(
                "the database is closed: reopening it after a failed write did not work yet".into(),
            )
        })?;
        f(db)
    }

    /// Stops background work at once, as a crash would (tests: drop right after this).
    pub fn simulate_crash(&self) {
        let _ = self.with_db(|db| {
            db.cancel_all_background_work(false);
            Ok(())
        });
    }
}

impl KvStore for RocksKv {
    fn write(&self, batch: &WriteBatch, durability: Durability) -> Result<(), KvError> {
        let r = self.with_db(|db| {
            let mut b = rocksdb::WriteBatch::default();
            for op in batch.ops() {
                match op {
                    Op::Put(cf, k, v) => b.put_cf(handle(db, cf)?, k, v),
                    Op::Delete(cf, k) => b.delete_cf(handle(db, cf)?, k),
                    Op::PutNewer(Cf::State, k, v) => b.merge_cf(handle(db, Cf::State)?, k, v),
                    Op::PutNewer(cf, _, _) => {
                        return Err(KvError::Other(
                            format!("versioned puts are only supported in `state`, not `{cf}`")
                                .into(),
                        ))
                    }
                }
            }
            let mut wo = WriteOptions::default();
            wo.set_sync(durability == Durability::Fsync);
            db.write_opt(b, &wo).map_err(error)
        });
        if r.is_err() {
            self.write_failed.store(true, Ordering::Release);
        }
        r
    }

    fn compare_and_put(
        &self,
        cf: Cf,
        key: &[u8],
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, KvError> {
        let _serialised = self
            .compare_and_put
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.get(cf, key)?.as_deref() != expected {
            return Ok(false);
        }
        let mut b = WriteBatch::new();
        b.put(cf, key, value);
        self.write(&b, Durability::Fsync)?;
        Ok(true)
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.with_db(|db| db.get_cf(handle(db, cf)?, key).map_err(error))
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        visit: Visitor<'_>,
    ) -> Result<(), KvError> {
        self.with_db(|db| {
            let mut ro = ReadOptions::default();
            if let Some(end) = end {
                ro.set_iterate_upper_bound(end.to_vec());
            }
            // A full scan should not push the hot working set out of the block cache.
            ro.fill_cache(false);
            let mut it = db.raw_iterator_cf_opt(handle(db, cf)?, ro);
            it.seek(start);
            while it.valid() {
                match (it.key(), it.value()) {
                    (Some(k), Some(v)) => {
                        if !visit(k, v) {
                            return Ok(());
                        }
                    }
                    _ => break,
                }
                it.next();
            }
            it.status().map_err(error)
        })
    }

    fn last(&self, cf: Cf) -> Result<Option<KeyValue>, KvError> {
        self.with_db(|db| {
            let mut it = db.raw_iterator_cf(handle(db, cf)?);
            it.seek_to_last();
            let out = match (it.valid(), it.key(), it.value()) {
                (true, Some(k), Some(v)) => Some((k.to_vec(), v.to_vec())),
                _ => None,
            };
            it.status().map_err(error)?;
            Ok(out)
        })
    }

    fn flush(&self) -> Result<(), KvError> {
        self.with_db(|db| {
            db.flush_wal(true).map_err(error)?;
            for cf in Cf::ALL {
                db.flush_cf(handle(db, cf)?).map_err(error)?;
            }
            Ok(())
        })
    }

    /// After a failed write: closes the database and opens it again (as at start: every
    /// intact record of the write-ahead log is replayed, a write cut short at its end is
    /// dropped and logged). Does nothing if no write failed. On failure the database stays
    /// closed until a later call succeeds.
    fn reopen(&self) -> Result<bool, KvError> {
        if !self.write_failed.load(Ordering::Acquire) {
            return Ok(false);
        }
        // Only when the directory can take writes again (the disk has room): a reopen on a
        // full disk fails and leaves the database closed, reads included.
        space_check(&self.path)?;
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        drop(guard.take());
        *guard = Some(Self::open_db(&self.path)?);
        self.write_failed.store(false, Ordering::Release);
        Ok(true)
    }
}
