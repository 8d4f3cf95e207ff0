//! Durability of token changes: nothing a reply, an API answer or an event shows may be a
//! change that storage has not written.
//!
//! Every operation that changes a token marks it *unsettled* in its shard, under the shard
//! lock and before the change can be seen, and records the mark in its [`Batch`]. While a
//! token is unsettled, no other batch reads or changes it: its datagrams are dropped
//! ([`DropReason::Unsettled`](zoftoken_proto::DropReason::Unsettled), the app retries with a
//! new request) and API operations answer [`EngineError::Unsettled`] (the API waits a little
//! and asks again). So a reply, an answer or an event only ever shows state that is durable,
//! or the batch's own change, which is written before that batch's replies leave.
//!
//! When the batch's commit succeeds the driver calls [`Engine::publish`] (which calls
//! [`Engine::settle_committed`]): its tokens are usable
//! again. When it fails, the driver restores each of the batch's tokens from storage
//! ([`Engine::unsettled_tokens`], [`Engine::forget_for_restore`], then the load functions,
//! then [`Engine::finish_restore`]): the engine's memory is again what the store holds, and
//! only then are the tokens released. A token whose restore could not read the store stays
//! unsettled (unusable, never wrong) until a later restore succeeds.

use zoftoken_proto::TokenId;

use crate::mutation::Batch;
use crate::{lock, Engine, EngineError, Shard};

impl Shard {
    /// Whether `id` has a change not yet known to be durable, other than `batch`'s own
    /// (a batch's own changes are written together with it).
    pub(crate) fn is_unsettled(&self, id: &[u8; 16], batch: &Batch) -> bool {
        unsettled_for(&self.unsettled, id, batch)
    }

    /// Marks `id` as changed by `batch` (call with the shard locked, before the change can be
    /// seen by another thread).
    pub(crate) fn mark(&mut self, id: &[u8; 16], batch: &mut Batch) {
        mark_in(&mut self.unsettled, id, batch);
    }
}

/// [`Shard::is_unsettled`] for code that holds the shard's fields apart (cheap when nothing
/// is unsettled: the packet path asks for every request).
pub(crate) fn unsettled_for(
    unsettled: &std::collections::HashSet<[u8; 16], MixState>,
    id: &[u8; 16],
    batch: &Batch,
) -> bool {
    !unsettled.is_empty() && unsettled.contains(id) && !batch.marked.contains(id)
}

/// [`Shard::mark`] for code that holds the shard's fields apart.
pub(crate) fn mark_in(
    unsettled: &mut std::collections::HashSet<[u8; 16], MixState>,
    id: &[u8; 16],
    batch: &mut Batch,
) {
    if !batch.marked.contains(id) {
        batch.marked.push(*id);
    }
    unsettled.insert(*id);
}

impl Engine {
    /// Marks `id` unsettled for `batch`, locking its shard (for operations whose change lives
    /// outside the shard: call before making the change).
    pub(crate) fn mark_unsettled(
        &self,
        id: &[u8; 16],
        batch: &mut Batch,
    ) -> Result<(), EngineError> {
        let mut shard = self.shard(id);
        if shard.is_unsettled(id, batch) {
            return Err(EngineError::Unsettled);
        }
        shard.mark(id, batch);
        Ok(())
    }

    /// Fails with [`EngineError::Unsettled`] if `id` has a change not yet known durable.
    pub(crate) fn check_settled(&self, id: &[u8; 16]) -> Result<(), EngineError> {
        if self.shard(id).is_unsettled(id, &Batch::new()) {
            return Err(EngineError::Unsettled);
        }
        Ok(())
    }

    /// After `batch` was written: its tokens' changes are durable, so they may be read and
    /// changed again. Call before sending its replies or publishing its events.
    pub fn settle_committed(&self, batch: &mut Batch) {
        for id in batch.marked.drain(..) {
            self.shard(&id).unsettled.remove(&id);
        }
    }

    /// After `batch` could not be written: the tokens it changed, to restore from storage.
    /// The batch's marks are handed over: the tokens stay unsettled (unusable) until
    /// [`Engine::finish_restore`]. (Changes that follow from the clock alone, a transaction's
    /// or an enrollment's expiry, are not marked: whether written or not, every read derives
    /// them from the time again.)
    pub fn unsettled_tokens(&self, batch: &mut Batch) -> Vec<TokenId> {
        let mut ids = std::mem::take(&mut batch.marked);
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().map(TokenId).collect()
    }

    /// Marks a token unsettled for a restore that no failed batch asked for (storage was
    /// reopened); `false`, and nothing done, if a batch under way has it.
    pub fn mark_for_restore(&self, id: &TokenId) -> bool {
        let mut shard = self.shard(&id.0);
        if shard.unsettled.contains(&id.0) {
            return false;
        }
        shard.unsettled.insert(id.0);
        true
    }

    /// Step 1 of restoring a token whose change could not be written: forgets everything the
    /// engine holds about it (entry, pending enrollment, transactions, backup codes) so that
    /// storage can load what it holds. Returns the highest device counter seen in memory,
    /// which the restore must keep (a counter seen once is never accepted again, written or
    /// not: SPEC.md §8).
    pub fn forget_for_restore(&self, id: &TokenId) -> u64 {
        let highest = {
            let mut shard = self.shard(&id.0);
            let shard = &mut *shard;
            match shard.table.find(&id.0) {
                Some(slot) => {
                    let highest = shard.table.get(slot).map_or(0, |e| e.highest);
                    shard.windows.remove(&slot);
                    shard.presence.remove(&slot);
                    shard.table.remove(&id.0);
                    highest
                }
                None => 0,
            }
        };
        lock(&self.pending).remove(&id.0);
        let mut side = lock(&self.side);
        if let Some(txs) = side.tx_by_token.remove(&id.0) {
            for tx in txs {
                side.transactions.remove(&tx);
            }
        }
        side.backup.remove(&id.0);
        highest
    }

    /// Step 3 of a restore (after storage loaded what it holds): keeps the counters seen in
    /// memory seen, releases the tokens and wakes their long polls.
    pub fn finish_restore(&self, restored: &[(TokenId, u64)]) {
        for (id, highest) in restored {
            let mut shard = self.shard(&id.0);
            let shard = &mut *shard;
            if let Some(e) = shard.table.find(&id.0).and_then(|s| shard.table.get_mut(s)) {
                if *highest > e.highest {
                    // Everything up to the highest counter seen counts as seen (SPEC.md §8.2).
                    e.highest = *highest;
                    e.recent = u32::MAX;
                }
            }
            shard.unsettled.remove(&id.0);
            Engine::notify_in(shard, &id.0);
        }
    }

    /// Tokens with a change not yet known durable (in flight, or waiting for a restore).
    pub fn unsettled_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).unsettled.len()).sum()
    }
}

/// A cheap hasher for the per-shard sets and maps of the packet path: their keys are token ids
/// (already uniform: BLAKE3 output) and slot numbers, so a multiply-and-fold is enough, and
/// SipHash's flooding resistance buys nothing (no key is chosen by a sender before its
/// request authenticates).
#[derive(Default, Clone, Copy)]
pub(crate) struct MixHasher(u64);

impl std::hash::Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            if let Some(w) = word.get_mut(..chunk.len()) {
                w.copy_from_slice(chunk);
            }
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// [`MixHasher`] for `HashSet`/`HashMap`.
pub(crate) type MixState = std::hash::BuildHasherDefault<MixHasher>;
