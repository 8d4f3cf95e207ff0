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
//! When the batch's write succeeds, [`Engine::commit`] publishes it (which calls
//! [`Engine::settle_committed`]): its tokens are usable again. When it fails, the driver
//! restores each of the batch's tokens from storage (the `restore` module): the engine's
//! memory is again what the store holds, and only then are the tokens released.

use std::collections::HashSet;

use crate::mutation::Batch;
use crate::shard::{MixState, Shard};
use crate::{lock, Engine, EngineError};

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
    unsettled: &HashSet<[u8; 16], MixState>,
    id: &[u8; 16],
    batch: &Batch,
) -> bool {
    !unsettled.is_empty() && unsettled.contains(id) && !batch.marked.contains(id)
}

/// [`Shard::mark`] for code that holds the shard's fields apart.
pub(crate) fn mark_in(
    unsettled: &mut HashSet<[u8; 16], MixState>,
    id: &[u8; 16],
    batch: &mut Batch,
) {
    batch.marked.insert(*id);
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
    /// changed again. Only [`Engine::commit`] calls it (after a successful write).
    pub(crate) fn settle_committed(&self, batch: &mut Batch) {
        for id in batch.marked.take() {
            self.shard(&id).unsettled.remove(&id);
        }
    }

    /// Tokens with a change not yet known durable (in flight, or waiting for a restore).
    pub fn unsettled_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).unsettled.len()).sum()
    }
}
