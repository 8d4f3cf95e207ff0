//! [`Health`]: whether the database can write, shared by everything that writes it. The
//! first failed write logs one line and turns the server not ready (`/readyz`), the API
//! refuses changes with `503` while it lasts, and [`Health::failed_commits`] counts them for
//! the metrics; it also keeps the tokens the failing-closed code of `durable` must restore
//! again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

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
