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
        let mut expired_tx = Vec::new();
        {
            let mut items = lock(&self.pending_items);
            for tx in items.transactions.values_mut() {
                if tx.state == TxState::Waiting && tx.expires_ms <= now_ms {
                    tx.state = TxState::Expired;
                    batch
                        .mutations
                        .push(Mutation::Transaction(Box::new(tx.clone())));
                    expired_tx.push((tx.token_id, tx.tx_id));
                }
            }
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
            batch.mutations.push(Mutation::DeletePending(TokenId(id)));
        }
    }
}
