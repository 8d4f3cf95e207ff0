//! Failing closed: what happens around a commit so that nothing that was not written is ever
//! visible, and what the server knows about its database's health.
//!
//! - [`Store::commit_batch`] (the API, the command line) and [`Store::commit_timers`] (the
//!   timer loop) commit an engine [`Batch`] through
//!   [`Engine::commit`](zoftoken_engine::Engine::commit) with this store as its durable write
//!   ([`Store::durable_write`]), as the group commit does for its groups: the engine publishes
//!   the batch (settles its tokens, counts its events) only once the write succeeded. On
//!   failure nothing is published, and every token the batch changed is restored from the
//!   database ([`Store::restore_tokens`]), so that the engine's memory is again what the
//!   database holds (see the engine's `settle` module).
//! - [`crate::Health`] records whether the database can write; [`Store::probe`] (called
//!   every second by the server while writes fail) finds out when writes work again, logs one
//!   line, and retries the restores that could not read the database.

use std::collections::HashSet;

use zoftoken_engine::{Batch, CommitFailed, Engine, EventKind, Mutation};
use zoftoken_proto::TokenId;

use crate::error::StoreError;
use crate::kv::{Cf, Durability, KvError, WriteBatch};
use crate::schema::meta;
use crate::Store;

/// Least time between two tries of a database that cannot write.
const PROBE_INTERVAL_MS: u64 = 900;

impl Store {
    /// Commits an engine batch: on success its tokens are settled and its events counted
    /// (the batch comes back empty); on failure nothing is published, the batch's tokens are
    /// restored from the database and the batch is emptied. Nothing the batch changed is
    /// visible unless this returns `Ok` (the outbox sequence number of its events, or 0).
    pub fn commit_batch(
        &self,
        engine: &Engine,
        now_ms: u64,
        batch: &mut Batch,
    ) -> Result<u64, StoreError> {
        let written = engine.commit(&mut self.durable_write(engine, self.durability()), batch);
        written.map_err(|failed| {
            batch.mutations.clear();
            self.restore_failed(engine, now_ms, failed)
        })
    }

    /// After a failed write of engine batches ([`Engine::commit`] or `commit_group`): restores
    /// their tokens from the database (or keeps them for a later try, see [`crate::Health`]);
    /// returns the write's error.
    pub(crate) fn restore_failed(
        &self,
        engine: &Engine,
        now_ms: u64,
        failed: CommitFailed<StoreError>,
    ) -> StoreError {
        let CommitFailed {
            source, unsettled, ..
        } = failed;
        if matches!(source, StoreError::Kv(KvError::Conflict(_))) {
            // Another server changed a token first: its events must stay before this one's
            // next events of the token.
            if let Err(e) = self.raise_to_shared_event_floor() {
                tracing::debug!("reading the event sequence floors failed: {e}");
            }
        }
        self.restore_or_keep(engine, now_ms, unsettled);
        source
    }

    /// Commits the timers' batch ([`zoftoken_engine::Engine::tick`]). On failure the tokens
    /// it held are restored (their next tick decides again from what the database holds) and
    /// their changes leave the batch (window ends, transaction expiries and their events);
    /// what is left (expiries of tokens it did not hold, which follow from the clock alone,
    /// deletions) stays in the batch, to be written with the next tick's changes, so that
    /// their events are not lost.
    pub fn commit_timers(
        &self,
        engine: &Engine,
        now_ms: u64,
        batch: &mut Batch,
    ) -> Result<u64, StoreError> {
        let written = engine.commit(&mut self.durable_write(engine, self.durability()), batch);
        written.map_err(|failed| {
            let restored: HashSet<[u8; 16]> = failed.unsettled.iter().map(|t| t.0).collect();
            // What the tick decided from the restored tokens' memory goes with it: the next
            // tick decides again from what the database holds (a window another server
            // closed, a transaction another server expired or the app decided).
            batch.mutations.retain(|m| match m {
                Mutation::TokenState(s) => !restored.contains(&s.token_id.0),
                Mutation::Transaction(t) => !restored.contains(&t.token_id.0),
                Mutation::Event(ev)
                    if matches!(ev.kind, EventKind::Expired | EventKind::TxExpired) =>
                {
                    !restored.contains(&ev.token_id.0)
                }
                _ => true,
            });
            self.restore_failed(engine, now_ms, failed)
        })
    }

    fn restore_or_keep(&self, engine: &Engine, now_ms: u64, ids: Vec<TokenId>) {
        if ids.is_empty() {
            return;
        }
        self.health().remember_restored(&ids);
        if let Err(e) = self.restore_tokens(engine, now_ms, &ids) {
            tracing::error!(
                tokens = ids.len(),
                "cannot read {} token(s) back from the database after a failed \
                 write: {e}; they stay unusable until it can",
                ids.len()
            );
            self.health().keep_unrestored(ids);
        }
    }

    /// Makes the engine's memory of `ids` what the database holds (their changes could not
    /// be written), then releases them. On a read error nothing is released: the tokens stay
    /// unusable (never wrong) and the call may be repeated.
    pub fn restore_tokens(
        &self,
        engine: &Engine,
        now_ms: u64,
        ids: &[TokenId],
    ) -> Result<(), StoreError> {
        let wanted: HashSet<[u8; 16]> = ids.iter().map(|t| t.0).collect();
        // Read everything first: a read error leaves the engine untouched.
        let mut txs = self.transactions_of(&wanted)?;
        let loaded = self.read_tokens(engine, ids)?;
        let mut restored = Vec::with_capacity(ids.len());
        for (id, records) in ids.iter().zip(loaded) {
            let highest = engine.forget_for_restore(id);
            records.apply(engine, now_ms)?;
            engine.load_transactions(txs.remove(&id.0).unwrap_or_default());
            restored.push((*id, highest));
        }
        engine.finish_restore(&restored);
        Ok(())
    }

    /// While writes fail: reopens the database if it needs that, then tries a small write; if
    /// it works, the database is writable again. At most once per [`PROBE_INTERVAL_MS`] (by
    /// `now_ms`). Also retries the restores that could not read the database.
    pub fn probe(&self, engine: &Engine, now_ms: u64) {
        let health = self.health();
        self.restore_or_keep(engine, now_ms, health.take_unrestored());
        if health.writable() {
            self.keep_alive();
            return;
        }
        if !health.claim_probe(now_ms, PROBE_INTERVAL_MS) {
            return;
        }
        match self.kv().reopen() {
            Ok(true) => {
                tracing::info!("the database was opened again after failed writes");
                let again = health.restored_while_failing();
                // A token in use by a batch under way is left to that batch's outcome (a
                // failed commit restores it anyway).
                let again = again
                    .into_iter()
                    .filter(|id| engine.mark_for_restore(id))
                    .collect();
                self.restore_or_keep(engine, now_ms, again);
            }
            Ok(false) => {}
            Err(e) => return health.note_error(e.to_string()),
        }
        let mut b = WriteBatch::new();
        b.put(Cf::Meta, meta::WRITE_PROBE, now_ms.to_be_bytes());
        match self.kv().write(&b, Durability::Wal) {
            Ok(()) => {
                health.write_ok();
                health.forget_restored();
            }
            Err(e) => health.note_error(e.to_string()),
        }
    }

    /// While writes work, on a database other processes change too: if nothing reached it
    /// for [`KEEP_ALIVE`], one small read does, so that the staleness of answers from memory
    /// is known even when nothing is written ([`crate::Health::reads_fresh`]). A read that
    /// cannot reach the database turns the store failing, as a failed write does.
    fn keep_alive(&self) {
        let health = self.health();
        if !self.kv().is_shared() || health.unreached_for() < KEEP_ALIVE {
            return;
        }
        match self.kv().get(Cf::Meta, meta::WRITE_PROBE) {
            Ok(_) => health.reached(),
            Err(e) => {
                let e = self.unreachable(StoreError::from(e));
                tracing::debug!("keep-alive read of the database failed: {e}");
            }
        }
    }
}

/// How long the database may go unasked while writes work before [`Store::probe`] reads it.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_millis(900);

/// The wall clock in Unix milliseconds, for the restores of the group commit (which expire
/// enrollments loaded back by the time).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
