//! Restoring tokens after a failed commit: the driver takes the failed batch's tokens
//! ([`crate::CommitFailed::unsettled`]), forgets what the engine holds of each
//! ([`Engine::forget_for_restore`]), loads what storage holds (the `load` module), then
//! releases them ([`Engine::finish_restore`]). A token whose restore could not read the store
//! stays unsettled (unusable, never wrong) until a later restore succeeds.

use zoftoken_proto::TokenId;

use crate::mutation::Batch;
use crate::{lock, Engine};

impl Engine {
    /// After `batch` could not be written: the tokens it changed, to restore from storage
    /// ([`Engine::commit`] hands them over in its error). The batch's marks are handed over:
    /// the tokens stay unsettled (unusable) until [`Engine::finish_restore`]. (Changes that
    /// follow from the clock alone, a transaction's or an enrollment's expiry, are not marked:
    /// whether written or not, every read derives them from the time again.)
    pub(crate) fn unsettled_tokens(&self, batch: &mut Batch) -> Vec<TokenId> {
        let mut ids = batch.marked.take();
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
        let highest = self.forget_for_refresh(id);
        let mut items = lock(&self.pending_items);
        if let Some(txs) = items.tx_by_token.remove(&id.0) {
            for tx in txs {
                items.transactions.remove(&tx);
            }
        }
        highest
    }

    /// Forgets a token whose records storage holds (entry, pending enrollment, transactions,
    /// backup codes), for a process that writes many tokens and serves none: the command
    /// line's mass enrollment keeps its memory bounded this way. A server never calls it
    /// for a token it serves (a counter seen is forgotten with it).
    pub fn unload(&self, id: &TokenId) {
        self.forget_for_restore(id);
    }

    /// As [`Engine::forget_for_restore`], but the token's transactions stay: for a token that
    /// another server changed, whose changed transactions are replaced one by one
    /// ([`Engine::load_transaction`], [`Engine::forget_transaction`]).
    pub fn forget_for_refresh(&self, id: &TokenId) -> u64 {
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
        lock(&self.enrollments).remove(&id.0);
        lock(&self.pending_items).backup.remove(&id.0);
        highest
    }

    /// Forgets one transaction (another server removed it from the database). Call with its
    /// token marked for a restore.
    pub fn forget_transaction(&self, tx_id: &[u8; 16]) {
        let mut items = lock(&self.pending_items);
        if let Some(tx) = items.transactions.remove(tx_id) {
            if let Some(q) = items.tx_by_token.get_mut(&tx.token_id.0) {
                q.retain(|t| t != tx_id);
                if q.is_empty() {
                    items.tx_by_token.remove(&tx.token_id.0);
                }
            }
        }
    }

    /// The token of a transaction held in memory.
    pub fn transaction_token(&self, tx_id: &[u8; 16]) -> Option<TokenId> {
        lock(&self.pending_items)
            .transactions
            .get(tx_id)
            .map(|t| t.token_id)
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
}
