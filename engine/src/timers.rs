//! The timers, run by [`Engine::tick`]: open windows that end (`expired` events),
//! transactions that expire and, an hour later, are forgotten, enrollments and offline
//! challenges that expire, idle whole replay windows that collapse, and abandoned long polls.
//! Only the clock drives these: `now_ms` is the caller's.

use std::cmp::Reverse;
use std::collections::HashSet;

use zoftoken_proto::{TokenId, TxState};

use crate::event::{Actor, Event, EventKind};
use crate::mutation::{state_record, Batch, Mutation};
use crate::ops::TX_RETENTION_MS;
use crate::pending::PendingItems;
use crate::settle::{mark_in, unsettled_for};
use crate::shard::{Shard, WINDOW_IDLE_MS};
use crate::state::{event, schedule_expiry, TokenState, FLAG_HAS_WINDOW, FLAG_TIMER};
use crate::{lock, Engine};

/// Open windows one [`Engine::tick`] ends at most; the rest end at the next ticks. A start after
/// downtime can find hundreds of thousands of lapsed windows: one batch of them all would be
/// one huge write (on PostgreSQL one statement that may outlast its timeout), and a failed
/// write would have every one of those tokens read back. A lapsed window reads as closed from
/// its end on, whenever its tick writes it; only its `expired` event waits.
pub const MAX_EXPIRED_PER_TICK: usize = 20_000;

impl Engine {
    /// Runs the timers at `now_ms`: ends open windows (`expired` events; at most
    /// [`MAX_EXPIRED_PER_TICK`]), expires transactions, drops expired enrollments and
    /// challenges, and collapses idle replay windows.
    pub fn tick(&self, now_ms: u64, batch: &mut Batch) {
        let mut changed = Vec::new();
        let mut deferred = Vec::new();
        let mut expired = 0usize;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let shard = &mut *shard;
            while let Some(Reverse((until, slot))) = shard.timers.peek().copied() {
                if until > now_ms || expired >= MAX_EXPIRED_PER_TICK {
                    break;
                }
                shard.timers.pop();
                let Shard {
                    table,
                    timers,
                    unsettled,
                    ..
                } = &mut *shard;
                if let Some(e) = table.get_mut(slot) {
                    if unsettled_for(unsettled, &e.id, batch) {
                        // Another batch's change is not yet durable: expire at a later tick.
                        deferred.push((until, slot));
                        continue;
                    }
                    e.flags &= !FLAG_TIMER;
                    if e.state == TokenState::Open && e.open_until_ms <= now_ms {
                        expired += 1;
                        mark_in(unsettled, &e.id, batch);
                        e.state = TokenState::Closed;
                        let mut ev = event(EventKind::Expired, e, now_ms, Actor::Timer);
                        ev.open_until_ms = Some(e.open_until_ms);
                        batch.event(ev);
                        batch.mutations.push(Mutation::TokenState(state_record(e)));
                        changed.push(e.id);
                    } else {
                        // Reopened since: wait for the current window's end.
                        schedule_expiry(timers, e, slot);
                    }
                }
            }
            shard.timers.extend(deferred.drain(..).map(Reverse));
            for id in changed.drain(..) {
                Engine::notify_in(shard, &id);
            }
            // Long polls that gave up (their receivers dropped) leave senders behind.
            shard.watchers.retain(|_, waiters| {
                waiters.retain(|w| !w.is_canceled());
                !waiters.is_empty()
            });
            let table = &mut shard.table;
            shard.windows.retain(|slot, (_, last)| {
                let keep = now_ms.saturating_sub(*last) < WINDOW_IDLE_MS;
                if !keep {
                    if let Some(e) = table.get_mut(*slot) {
                        e.flags &= !FLAG_HAS_WINDOW;
                        e.recent = u32::MAX;
                    }
                }
                keep
            });
        }
        let expired_tx = if self.shared_database {
            self.expire_transactions_shared(now_ms, batch)
        } else {
            self.expire_transactions(now_ms, batch)
        };
        {
            let mut items = lock(&self.pending_items);
            items.challenges.retain(|_, c| c.expires_ms > now_ms);
            // Finished transactions stay readable for an hour after their expiry, then go.
            let old: Vec<[u8; 16]> = items
                .transactions
                .values()
                .filter(|t| t.expires_ms.saturating_add(TX_RETENTION_MS) <= now_ms)
                .map(|t| t.tx_id)
                .collect();
            // Each token's list is filtered once, however many of its transactions go.
            let mut touched = HashSet::new();
            for id in old {
                if let Some(tx) = items.transactions.remove(&id) {
                    touched.insert(tx.token_id.0);
                    batch.mutations.push(Mutation::DeleteTransaction(id));
                }
            }
            let PendingItems {
                transactions,
                tx_by_token,
                ..
            } = &mut *items;
            for token in touched {
                if let Some(q) = tx_by_token.get_mut(&token) {
                    q.retain(|t| transactions.contains_key(t));
                    if q.is_empty() {
                        tx_by_token.remove(&token);
                    }
                }
            }
        }
        for (token, tx_id) in expired_tx {
            let service = {
                let shard = self.shard(&token.0);
                shard
                    .table
                    .find(&token.0)
                    .and_then(|s| shard.table.get(s))
                    .map_or(0, |e| e.service)
            };
            batch.event(
                Event::new(EventKind::TxExpired, token, service, now_ms, Actor::Timer)
                    .with_tx(tx_id),
            );
        }
        let mut enrollments = lock(&self.enrollments);
        let stale: Vec<[u8; 16]> = enrollments
            .by_token
            .iter()
            .filter(|(_, p)| p.expires_ms <= now_ms)
            .map(|(k, _)| *k)
            .collect();
        for id in stale {
            enrollments.remove(&id);
            // On a shared database the record stays (an expired enrollment is never loaded
            // or used): another server may have just written a new enrollment of the token
            // under the same key, which a delete from this server's older view would remove.
            if !self.shared_database {
                batch.mutations.push(Mutation::DeletePending(TokenId(id)));
            }
        }
    }

    /// Marks the waiting transactions whose time is up as expired (one server writes the
    /// database): their tokens and ids, for the `tx_expired` events.
    fn expire_transactions(&self, now_ms: u64, batch: &mut Batch) -> Vec<(TokenId, [u8; 16])> {
        let mut expired = Vec::new();
        let mut items = lock(&self.pending_items);
        for tx in items.transactions.values_mut() {
            if tx.state == TxState::Waiting && tx.expires_ms <= now_ms {
                tx.state = TxState::Expired;
                batch
                    .mutations
                    .push(Mutation::Transaction(Box::new(tx.clone())));
                expired.push((tx.token_id, tx.tx_id));
            }
        }
        expired
    }

    /// As [`Engine::expire_transactions`] on a database several servers write: every
    /// server's timer finds the same transaction expired, and the app may decide it at
    /// another server in its last moment. So each expiry holds its token for the batch and
    /// writes a new version of the token's state with it: of two servers expiring one
    /// transaction, or one expiring it while another records the app's decision, one
    /// compare-and-set fails, that batch is not written (no second `tx_expired` event, no
    /// decision overwritten), and its server reads the token and its transactions again. A
    /// token another batch is writing waits for a later tick; a transaction whose token is
    /// gone is left to its retention time, unwritten.
    fn expire_transactions_shared(
        &self,
        now_ms: u64,
        batch: &mut Batch,
    ) -> Vec<(TokenId, [u8; 16])> {
        let due: Vec<(TokenId, [u8; 16])> = lock(&self.pending_items)
            .transactions
            .values()
            .filter(|tx| tx.state == TxState::Waiting && tx.expires_ms <= now_ms)
            .map(|tx| (tx.token_id, tx.tx_id))
            .collect();
        let mut expired = Vec::with_capacity(due.len());
        for (token, tx_id) in due {
            // Lock order: shard before pending items.
            let mut shard = self.shard(&token.0);
            let shard = &mut *shard;
            let Some(slot) = shard.table.find(&token.0) else {
                continue;
            };
            if unsettled_for(&shard.unsettled, &token.0, batch) {
                continue;
            }
            let mut items = lock(&self.pending_items);
            let Some(tx) = items
                .transactions
                .get_mut(&tx_id)
                .filter(|t| t.state == TxState::Waiting)
            else {
                continue;
            };
            let Some(e) = shard.table.get_mut(slot) else {
                continue;
            };
            tx.state = TxState::Expired;
            batch
                .mutations
                .push(Mutation::Transaction(Box::new(tx.clone())));
            mark_in(&mut shard.unsettled, &token.0, batch);
            batch.mutations.push(Mutation::TokenState(state_record(e)));
            expired.push((token, tx_id));
        }
        expired
    }
}
