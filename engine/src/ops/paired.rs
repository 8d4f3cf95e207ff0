//! Reading and changing a paired token for an API operation, under the durability rules: a
//! token with another batch's change not yet durable is refused ([`EngineError::Unsettled`]),
//! and a change marks the token unsettled for the caller's batch.

use zoftoken_proto::TokenId;

use crate::mutation::{state_record, Batch, Mutation};
use crate::shard::Shard;
use crate::state::{schedule_expiry, TokenEntry, TokenKind, TokenState};
use crate::{lock, Engine, EngineError};

impl Engine {
    /// The kind of a paired token.
    pub(super) fn paired_kind(&self, id: &TokenId) -> Result<TokenKind, EngineError> {
        self.with_paired(id, |e, _, _| e.kind())
    }

    /// Runs `f` on a paired token's entry (re-enrolled tokens count as not paired), reading
    /// only: [`Engine::change_paired`] for changes.
    pub(super) fn with_paired<R>(
        &self,
        id: &TokenId,
        f: impl FnOnce(&mut TokenEntry, &mut Shard, u32) -> R,
    ) -> Result<R, EngineError> {
        self.change_paired(id, &mut Batch::new(), |e, shard, slot, _| f(e, shard, slot))
    }

    /// Runs `f` on a paired token's entry, which may change it and append to `batch`; the
    /// token is marked unsettled for `batch` if `f` appended anything. A token with a change
    /// of another batch not yet durable is refused ([`EngineError::Unsettled`]).
    pub(super) fn change_paired<R>(
        &self,
        id: &TokenId,
        batch: &mut Batch,
        f: impl FnOnce(&mut TokenEntry, &mut Shard, u32, &mut Batch) -> R,
    ) -> Result<R, EngineError> {
        let mut shard = self.shard(&id.0);
        if shard.is_unsettled(&id.0, batch) {
            return Err(EngineError::Unsettled);
        }
        let Some(slot) = shard.table.find(&id.0) else {
            // Lock order is enrollments → shard (pairing): release the shard first.
            drop(shard);
            let pending = lock(&self.enrollments).by_token.contains_key(&id.0);
            return Err(if pending {
                EngineError::NotPaired
            } else {
                EngineError::UnknownToken
            });
        };
        let shard = &mut *shard;
        let mut entry = shard
            .table
            .get(slot)
            .cloned()
            .ok_or(EngineError::UnknownToken)?;
        if entry.state == TokenState::Pending {
            return Err(EngineError::NotPaired);
        }
        let before = batch.mutations.len();
        let r = f(&mut entry, shard, slot, batch);
        if let Some(e) = shard.table.get_mut(slot) {
            *e = entry;
        }
        if batch.mutations.len() > before {
            shard.mark(&id.0, batch);
        }
        Ok(r)
    }

    /// Records the entry's new state for storage (with a new version) and schedules its
    /// expiry if it is open.
    pub(super) fn persist(
        &self,
        e: &mut TokenEntry,
        shard: &mut Shard,
        slot: u32,
        batch: &mut Batch,
    ) {
        schedule_expiry(&mut shard.timers, e, slot);
        batch.mutations.push(Mutation::TokenState(state_record(e)));
    }
}
