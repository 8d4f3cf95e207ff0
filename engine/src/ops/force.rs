//! An administrator's changes of a token's state: forced open, closed (which unblocks) or
//! blocked, and deletion (of a paired or a pending token).

use zoftoken_proto::TokenId;

use crate::event::{next_sequence, Actor, Event, EventKind};
use crate::mutation::{Batch, Mutation};
use crate::state::{event, TokenState};
use crate::{lock, Engine, EngineError};

use super::status::TokenStatus;

/// An administrator's forced state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Force {
    /// Open for the service's window (no PIN).
    Open,
    /// Close; unblocks a blocked token.
    Closed,
    /// Block.
    Blocked,
}

impl Engine {
    /// Forces a token open, closed or blocked (admin). Forcing a blocked token open or closed
    /// unblocks it and resets its failures.
    pub fn force(
        &self,
        now_ms: u64,
        id: &TokenId,
        to: Force,
        batch: &mut Batch,
    ) -> Result<TokenStatus, EngineError> {
        self.change_paired(id, batch, |e, shard, slot, batch| {
            let was_blocked = e.state == TokenState::Blocked;
            match to {
                Force::Blocked => {
                    if !was_blocked {
                        e.state = TokenState::Blocked;
                        e.open_until_ms = 0;
                        batch.event(event(EventKind::Blocked, e, now_ms, Actor::Admin));
                    }
                }
                Force::Closed | Force::Open => {
                    if was_blocked {
                        e.state = TokenState::Closed;
                        e.failures = 0;
                        batch.event(event(EventKind::Unblocked, e, now_ms, Actor::Admin));
                    }
                    if to == Force::Open {
                        e.failures = 0;
                        self.open_token(now_ms, e, false, Actor::Admin, batch, &self.services());
                    } else if e.effective_state(now_ms) == TokenState::Open {
                        e.state = TokenState::Closed;
                        e.open_until_ms = 0;
                        batch.event(event(EventKind::Closed, e, now_ms, Actor::Admin));
                    }
                }
            }
            self.persist(e, shard, slot, batch);
        })?;
        self.notify(&id.0);
        self.status_in(now_ms, id, batch)
    }

    /// Deletes a token (paired or pending): its app's packets are dropped from now on.
    pub fn delete(&self, now_ms: u64, id: &TokenId, batch: &mut Batch) -> Result<(), EngineError> {
        // Lock order: enrollments → shard.
        let mut enrollments = lock(&self.enrollments);
        let removed = {
            let mut shard = self.shard(&id.0);
            if shard.is_unsettled(&id.0, batch) {
                return Err(EngineError::Unsettled);
            }
            let slot = shard.table.find(&id.0);
            if slot.is_some() || enrollments.by_token.contains_key(&id.0) {
                shard.mark(&id.0, batch);
            }
            let service = slot.and_then(|s| shard.table.get(s)).map(|e| e.service);
            if let Some(slot) = slot {
                shard.windows.remove(&slot);
                shard.presence.remove(&slot);
                shard.table.remove(&id.0);
            }
            service
        };
        // Numbered under the `enrollments` lock, which orders enrollments, pairings and
        // deletions of the token.
        let sequence = next_sequence(id);
        let pending = enrollments.remove(&id.0).map(|p| p.service);
        drop(enrollments);
        let service = removed.or(pending).ok_or(EngineError::UnknownToken)?;
        lock(&self.pending_items).forget(&id.0, batch);
        batch.mutations.push(Mutation::DeleteToken(*id));
        let mut deleted = Event::new(EventKind::Deleted, *id, service, now_ms, Actor::Admin);
        deleted.sequence = sequence;
        batch.event(deleted);
        self.notify(&id.0);
        Ok(())
    }
}
