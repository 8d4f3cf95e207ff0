//! [`FaultyKv`]: a [`KvStore`] wrapper that makes writes slow or failing on demand, to test
//! and measure how the server behaves when its disk is slow or full (the packet path must keep
//! going with bounded queues and say clearly that it cannot write). Reads are passed through.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use zoftoken_storage::kv::{KeyValue, Visitor};
use zoftoken_storage::{Cf, Durability, KvError, KvStore, WriteBatch};

/// Wraps a store; every write first sleeps for the configured delay, then fails while
/// failing is switched on, else goes to the inner store.
pub struct FaultyKv {
    inner: Arc<dyn KvStore>,
    write_delay_us: AtomicU64,
    failing: AtomicBool,
    conflicting: AtomicBool,
    writes: AtomicU64,
}

impl FaultyKv {
    /// A wrapper that adds nothing until told to.
    pub fn new(inner: Arc<dyn KvStore>) -> FaultyKv {
        FaultyKv {
            inner,
            write_delay_us: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            conflicting: AtomicBool::new(false),
            writes: AtomicU64::new(0),
        }
    }

    /// Every following write takes at least `delay` (a slow disk).
    pub fn set_write_delay(&self, delay: Duration) {
        self.write_delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// While `true`, writes fail with an IO error (a full or broken disk).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    /// While `true`, writes fail as a shared database refuses a write whose token another
    /// server changed first ([`KvError::Conflict`]).
    pub fn set_conflicting(&self, conflicting: bool) {
        self.conflicting.store(conflicting, Ordering::Relaxed);
    }

    /// Writes attempted so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

impl KvStore for FaultyKv {
    fn write(&self, batch: &WriteBatch, durability: Durability) -> Result<(), KvError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let delay = self.write_delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        if self.failing.load(Ordering::Relaxed) {
            return Err(KvError::Io("injected write failure (no space left)".into()));
        }
        if self.conflicting.load(Ordering::Relaxed) {
            return Err(KvError::Conflict(
                "injected conflict (changed by another writer)".into(),
            ));
        }
        self.inner.write(batch, durability)
    }

    fn compare_and_put(
        &self,
        cf: Cf,
        key: &[u8],
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, KvError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        if self.failing.load(Ordering::Relaxed) {
            return Err(KvError::Io("injected write failure (no space left)".into()));
        }
        self.inner.compare_and_put(cf, key, expected, value)
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.inner.get(cf, key)
    }

    fn get_many(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        self.inner.get_many(cf, keys)
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        visit: Visitor<'_>,
    ) -> Result<(), KvError> {
        self.inner.scan(cf, start, end, visit)
    }

    fn last(&self, cf: Cf) -> Result<Option<KeyValue>, KvError> {
        self.inner.last(cf)
    }

    fn flush(&self) -> Result<(), KvError> {
        self.inner.flush()
    }

    fn reopen(&self) -> Result<bool, KvError> {
        self.inner.reopen()
    }
}
