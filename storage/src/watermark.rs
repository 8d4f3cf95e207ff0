//! The outbox watermark: how the store tells readers of its outbox (the webhook pipeline) that
//! the outbox grew, without handing them any event.
//!
//! After every successful write that put events in the outbox, [`crate::Store`] raises the
//! watermark to that write's outbox sequence number and wakes whoever waits
//! ([`OutboxWatermark::wait_after`]). The events themselves are read from the outbox, which is
//! the truth: the watermark is only a wake-up, so a reader still polls (with a timeout) and
//! still looks for commits that became visible late below what it read. Raising it never
//! blocks the writer: with nobody waiting it costs two atomic operations, and it never waits
//! for a reader.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The highest outbox sequence number written, and a wake-up for its readers.
#[derive(Debug, Default)]
pub struct OutboxWatermark {
    /// The highest outbox sequence number written (at open: the database's highest).
    high: AtomicU64,
    /// Bumped at every signalled write and every [`OutboxWatermark::nudge`]: what a waiter
    /// compares (a commit landing late below `high` does not raise `high`, and still wakes).
    version: AtomicU64,
    /// Threads in [`OutboxWatermark::wait_after`]: writers take the lock and notify only when
    /// one waits.
    waiters: AtomicUsize,
    lock: Mutex<()>,
    changed: Condvar,
}

/// What a reader saw of the watermark ([`OutboxWatermark::mark`]), to wait for what comes
/// after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxMark {
    /// The highest outbox sequence number written when the mark was taken (at open: the
    /// database's highest; 0: none ever).
    pub high: u64,
    version: u64,
}

impl OutboxWatermark {
    /// A watermark at `high`, the highest outbox sequence number the database holds.
    pub(crate) fn new(high: u64) -> OutboxWatermark {
        OutboxWatermark {
            high: AtomicU64::new(high),
            ..OutboxWatermark::default()
        }
    }

    /// The watermark now. Take it before reading the outbox: a write that lands during the
    /// read then ends the next [`OutboxWatermark::wait_after`] at once.
    pub fn mark(&self) -> OutboxMark {
        OutboxMark {
            version: self.version.load(Ordering::SeqCst),
            high: self.high.load(Ordering::SeqCst),
        }
    }

    /// Waits until a write put events in the outbox after `seen` was taken (or a
    /// [`OutboxWatermark::nudge`]), at most `timeout`; returns the watermark then.
    pub fn wait_after(&self, seen: OutboxMark, timeout: Duration) -> OutboxMark {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // Registered before the check below: a writer that bumps `version` after the check
        // sees a waiter, and notifies under the lock this thread holds until it waits.
        self.waiters.fetch_add(1, Ordering::SeqCst);
        while self.version.load(Ordering::SeqCst) == seen.version {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            if left.is_zero() {
                break;
            }
            guard = match self.changed.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
        self.mark()
    }

    /// Wakes every waiter without a new write (a reader that stops, or that has room for
    /// more events again).
    pub fn nudge(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
        self.wake();
    }

    /// A write put events in the outbox up to sequence number `seq`: raises the watermark and
    /// wakes the waiters. Never blocks for long (the lock is held by waiters only between
    /// their check and their wait).
    pub(crate) fn advance(&self, seq: u64) {
        self.high.fetch_max(seq, Ordering::SeqCst);
        self.version.fetch_add(1, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            // Taking the lock orders this wake-up after a waiter's check (see `wait_after`).
            drop(self.lock.lock().unwrap_or_else(|p| p.into_inner()));
            self.changed.notify_all();
        }
    }
}
