//! [`Health`]: whether the database can write, shared by everything that writes it. The
//! first failed write logs one line and turns the server not ready (`/readyz`), the API
//! refuses changes with `503` while it lasts, and [`Health::failed_commits`] counts them for
//! the metrics; it also keeps the tokens the failing-closed code of `durable` must restore
//! again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use zoftoken_proto::TokenId;

use crate::error::StoreError;

/// Whether the database can write, shared by everything that writes it.
#[derive(Debug)]
pub struct Health {
    writable: AtomicBool,
    failed_commits: AtomicU64,
    /// Commits refused because another writer of a shared database had changed a token
    /// first (the database itself is fine).
    conflicts: AtomicU64,
    /// The last write error, for the one log line and `/readyz`.
    last_error: Mutex<Option<String>>,
    /// Tokens whose restore could not read the database: still unsettled, retried by
    /// [`crate::Store::probe`].
    unrestored: Mutex<Vec<TokenId>>,
    /// When [`crate::Store::probe`] last tried the database (Unix ms): at most once a second.
    last_probe_ms: AtomicU64,
    /// Tokens restored since writes began to fail: restored again if the database is reopened
    /// (a write reported as failed may still be in its log, and the reopened database then
    /// holds it).
    restored_while_failing: Mutex<HashSet<TokenId>>,
    /// The origin of `reached_ms`.
    origin: Instant,
    /// When the database last answered (a write, a probe, a keep-alive read), in
    /// milliseconds since `origin`.
    reached_ms: AtomicU64,
    /// How long after that reads may still be answered from memory, in milliseconds
    /// (`u64::MAX`: without a bound, for a store no other process changes).
    staleness_bound_ms: AtomicU64,
    /// Whether memory follows other writers through the change feed: then the staleness
    /// counts from `followed_ms`, not `reached_ms`.
    following: AtomicBool,
    /// When the last change-feed read that memory has applied began, in milliseconds since
    /// `origin`: every commit finished before then is in memory.
    followed_ms: AtomicU64,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            writable: AtomicBool::new(true),
            failed_commits: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            last_error: Mutex::new(None),
            unrestored: Mutex::new(Vec::new()),
            last_probe_ms: AtomicU64::new(0),
            restored_while_failing: Mutex::new(HashSet::new()),
            origin: Instant::now(),
            reached_ms: AtomicU64::new(0),
            staleness_bound_ms: AtomicU64::new(u64::MAX),
            following: AtomicBool::new(false),
            followed_ms: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// Whether the last write succeeded.
    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// Commits that failed since start.
    pub fn failed_commits(&self) -> u64 {
        self.failed_commits.load(Ordering::Relaxed)
    }

    /// Commits refused since start because another writer of a shared database had changed
    /// one of their tokens first (counted in [`Health::failed_commits`] too).
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// A commit refused because another writer changed one of its tokens first: nothing of it
    /// was written, and its tokens are restored from the database as after any failed write,
    /// but the database can write, so the server stays ready.
    pub(crate) fn write_conflicted(&self) {
        self.reached();
        self.failed_commits.fetch_add(1, Ordering::Relaxed);
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    /// Why writes fail, while they do.
    pub fn last_error(&self) -> Option<String> {
        if self.writable() {
            return None;
        }
        lock(&self.last_error).clone()
    }

    /// A write failed: logged once, until writes work again.
    pub(crate) fn write_failed(&self, e: &StoreError) {
        self.failed_commits.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_error) = Some(e.to_string());
        if self.writable.swap(false, Ordering::AcqRel) {
            tracing::error!(
                error = %e,
                "cannot write to the database. Nothing that was not \
                 written is answered: state changes get no reply, the API answers 503 \
                 storage_unavailable, /readyz is not ready; retrying every second"
            );
        }
    }

    /// A write succeeded.
    pub(crate) fn write_ok(&self) {
        self.reached();
        if !self.writable.load(Ordering::Acquire) && !self.writable.swap(true, Ordering::AcqRel) {
            tracing::info!("the database can write again; serving normally");
        }
    }

    /// Records why the database still cannot write (a failed probe or reopen).
    pub(crate) fn note_error(&self, e: String) {
        *lock(&self.last_error) = Some(e);
    }

    /// Remembers tokens restored while writes fail (nothing while they work): they are
    /// restored again if the database is reopened.
    pub(crate) fn remember_restored(&self, ids: &[TokenId]) {
        if self.writable() {
            return;
        }
        lock(&self.restored_while_failing).extend(ids.iter().copied());
    }

    /// The tokens restored since writes began to fail.
    pub(crate) fn restored_while_failing(&self) -> Vec<TokenId> {
        lock(&self.restored_while_failing).iter().copied().collect()
    }

    /// Writes work again: the tokens restored meanwhile need nothing more.
    pub(crate) fn forget_restored(&self) {
        lock(&self.restored_while_failing).clear();
    }

    /// Keeps tokens whose restore could not read the database, for the next probe.
    pub(crate) fn keep_unrestored(&self, ids: Vec<TokenId>) {
        lock(&self.unrestored).extend(ids);
    }

    /// The tokens whose restore is to be tried again (taken: a failure keeps them again).
    pub(crate) fn take_unrestored(&self) -> Vec<TokenId> {
        std::mem::take(&mut *lock(&self.unrestored))
    }

    /// The database answered just now.
    pub(crate) fn reached(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.reached_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// How long ago the database last answered (a write, a probe, a keep-alive read).
    pub fn unreached_for(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.reached_ms.load(Ordering::Acquire)))
    }

    /// Bounds how stale an answer from memory may be: once the database has not answered
    /// for longer than `bound`, [`Health::reads_fresh`] says no. For a database other
    /// processes change too (several servers, the command line); without a bound (the
    /// default) memory is the truth, as for a database this process holds alone.
    pub fn set_staleness_bound(&self, bound: Duration) {
        let ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX - 1);
        self.staleness_bound_ms.store(ms, Ordering::Release);
        // The bound counts from now, not from the process's start.
        self.reached();
    }

    /// Whether reads may be answered from memory: the database answered within the
    /// staleness bound (always, without one); when memory follows other writers, the last
    /// change-feed read it applied began within the bound. Replies and API answers that show
    /// a token's state ask this first; when it says no they are withheld (UDP) or `503`
    /// (API).
    pub fn reads_fresh(&self) -> bool {
        let bound = self.staleness_bound_ms.load(Ordering::Acquire);
        bound == u64::MAX || self.stale_for() <= Duration::from_millis(bound)
    }

    /// How old the newest view of the database that memory holds may be: since the last
    /// change-feed read applied when memory follows other writers, else since the database
    /// last answered. Exported as the cache lag.
    pub fn stale_for(&self) -> Duration {
        if !self.following.load(Ordering::Acquire) {
            return self.unreached_for();
        }
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.followed_ms.load(Ordering::Acquire)))
    }

    /// Memory follows other writers through the change feed from now on; `began` is when
    /// the view it was loaded from was taken.
    pub(crate) fn start_following(&self, began: Instant) {
        self.followed(began);
        self.following.store(true, Ordering::Release);
    }

    /// A change-feed read that began at `began` has been applied.
    pub(crate) fn followed(&self, began: Instant) {
        let ms = began.saturating_duration_since(self.origin).as_millis() as u64;
        self.followed_ms.fetch_max(ms, Ordering::AcqRel);
        self.reached();
    }

    /// Whether a probe may try the database at `now_ms`: at most once per `interval_ms`,
    /// whoever asks (the server's timer, API calls). Claims the turn when it answers yes.
    pub(crate) fn claim_probe(&self, now_ms: u64, interval_ms: u64) -> bool {
        let last = self.last_probe_ms.load(Ordering::Acquire);
        now_ms >= last.saturating_add(interval_ms)
            && self
                .last_probe_ms
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
