//! A paired token's request, from the lookup to the sealed reply: the tag under the entry's
//! key, the settle check, the replay window (compact in the entry, or whole in the shard),
//! freshness, the PIN material, the per-token rate limit; then the state change (`apply`),
//! its mutation, and the reply. A pending token's PAIR_COMPLETE goes to `pairing`.

use std::net::SocketAddr;

use zoftoken_proto::clock::is_fresh;
use zoftoken_proto::packet::{open_checked_request, seal_reply};
use zoftoken_proto::replay::{compact_accept, compact_check, ReplayWindow};
use zoftoken_proto::wire::{MsgType, RequestBody};
use zoftoken_proto::{DropReason, ReplyStatus};

use super::reply::{status_block, ReplyBytes};
use crate::mutation::{state_record, token_record, Batch, Mutation};
use crate::settle::{mark_in, unsettled_for};
use crate::shard::Shard;
use crate::state::{schedule_expiry, TokenState, FLAG_HAS_WINDOW, FLAG_TOTP};
use crate::Engine;

/// Whether a request type may change the token's state (and so produce events): what the
/// per-token limit counts.
fn changes_state(t: MsgType) -> bool {
    matches!(
        t,
        MsgType::Open
            | MsgType::Close
            | MsgType::ChangePin
            | MsgType::PairComplete
            | MsgType::TxApprove
            | MsgType::TxDeny
    )
}

impl Engine {
    /// Every request but PAIR_INIT: a paired (or re-enrolled) token's request, or the
    /// PAIR_COMPLETE of a pending one. Returns the reply's length in `out`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn token_request(
        &self,
        now_ms: u64,
        src: SocketAddr,
        msg_type: MsgType,
        id: &[u8; 16],
        datagram: &mut [u8],
        out: &mut [u8],
        batch: &mut Batch,
    ) -> Result<usize, DropReason> {
        let mut guard = self.shard(id);
        let Some(slot) = guard.table.find(id) else {
            drop(guard);
            if msg_type == MsgType::PairComplete {
                return self.pair_complete(now_ms, id, datagram, out, batch);
            }
            return Err(DropReason::UnknownToken);
        };
        let Shard {
            table,
            windows,
            services,
            presence,
            timers,
            counters,
            unsettled,
            rate,
            rate_second,
            ..
        } = &mut *guard;
        let e = table.get(slot).ok_or(DropReason::UnknownToken)?;
        let (highest, recent, offset, state) = (e.highest, e.recent, e.offset_ms, e.state);
        let has_window = e.flags & FLAG_HAS_WINDOW != 0;
        // A re-enrolled token: the new app's PAIR_COMPLETE is under the candidate key.
        if state == TokenState::Pending && msg_type == MsgType::PairComplete {
            let mut copy = [0u8; zoftoken_proto::wire::MAX_DATAGRAM];
            let len = datagram.len();
            if let Some(c) = copy.get_mut(..len) {
                c.copy_from_slice(datagram);
            }
            if open_checked_request(&e.d2s, msg_type, copy.get_mut(..len).unwrap_or_default())
                .is_err()
            {
                drop(guard);
                return self.pair_complete(now_ms, id, datagram, out, batch);
            }
        }
        // A standard authenticator (TOTP) token has no app: nothing can authenticate as it,
        // whatever keys its entry holds, so its packets are dropped as unauthentic (counted,
        // never answered). Only a re-enrollment as an app token (above) leads anywhere.
        if e.flags & FLAG_TOTP != 0 {
            return Err(DropReason::Unauthentic);
        }
        let req = open_checked_request(&e.d2s, msg_type, datagram)?;
        // Nothing is answered from a change that is not yet durable (the `settle` module).
        if unsettled_for(unsettled, id, batch) {
            return Err(DropReason::Unsettled);
        }
        let counter = req.header.counter.get();
        // Replay (SPEC.md §8.1): the compact window in the entry, or the whole window in the
        // shard's map while the token has an unseen counter more than 32 below its highest.
        let mut whole = if has_window {
            windows.get_mut(&slot)
        } else {
            None
        };
        // (A flag without its map entry cannot happen; if it did, the window reads as
        // restored: everything up to `highest` seen.)
        let recent = if has_window { u32::MAX } else { recent };
        let window_ok = match &whole {
            Some(w) => w.0.check(counter),
            None => compact_check(highest, recent, counter),
        };
        if !window_ok {
            return Err(DropReason::Replayed);
        }
        let device_time = req.body.device_time_ms();
        let resync = msg_type == MsgType::TimeSync && counter > highest;
        if !resync && !is_fresh(device_time, now_ms, offset) {
            return Err(DropReason::Stale);
        }
        // New verifiers are sealed under the request's PIN key (SPEC.md §6.3): a block that
        // does not open is dropped like any unauthentic request, before the counter is used.
        let verifiers = match req.body {
            RequestBody::PairComplete(p) if state != TokenState::Pending => {
                Some(self.open_verifiers(&e.secret, p.pin.index.get(), req.header, &p.verifiers)?)
            }
            RequestBody::ChangePin(c) => {
                Some(self.open_verifiers(&e.secret, c.pin.index.get(), req.header, &c.verifiers)?)
            }
            _ => None,
        };
        // One token may not flood its service's backend: state-changing requests are limited
        // per token and second (counted only for authentic, fresh, new requests; the
        // counter is not consumed, so the app's next attempt can still be answered).
        if self.max_changes_per_s > 0 && changes_state(msg_type) {
            let second = now_ms / 1000;
            if *rate_second != second {
                rate.clear();
                *rate_second = second;
            }
            let n = rate.entry(slot).or_insert(0);
            if *n >= self.max_changes_per_s {
                return Err(DropReason::RateLimited);
            }
            *n += 1;
        }
        let e = table.get_mut(slot).ok_or(DropReason::UnknownToken)?;
        match whole.as_mut() {
            Some(w) => {
                w.0.accept(counter);
                w.1 = now_ms;
                if let Some(recent) = w.0.to_compact() {
                    e.recent = recent;
                    e.flags &= !FLAG_HAS_WINDOW;
                    windows.remove(&slot);
                }
            }
            None => match compact_accept(highest, recent, counter) {
                Some((_, recent)) => {
                    e.recent = recent;
                    e.flags &= !FLAG_HAS_WINDOW;
                }
                None => {
                    let mut w = ReplayWindow::from_compact(highest, recent);
                    w.accept(counter);
                    windows.insert(slot, (w, now_ms));
                    e.flags |= FLAG_HAS_WINDOW;
                }
            },
        }
        e.highest = e.highest.max(counter);
        e.last_seen_s = (now_ms / 1000) as u32;
        let service = services.get(e.service).ok_or(DropReason::UnknownToken)?;
        let mut changed = false;
        let mutations_before = batch.mutations.len();
        let reply: ReplyBytes = if e.state == TokenState::Pending {
            ReplyBytes::status(status_block(e, ReplyStatus::NotPaired, now_ms))
        } else {
            self.apply(
                now_ms,
                e,
                service,
                services,
                &req,
                verifiers.as_ref(),
                batch,
                &mut changed,
                resync,
                device_time,
            )?
        };
        if msg_type == MsgType::TimeSync {
            presence.insert(slot, src);
        }
        if changed {
            schedule_expiry(timers, e, slot);
            // Secrets change only with a PIN change; every other change is state only.
            batch.mutations.push(if msg_type == MsgType::ChangePin {
                Mutation::Token(Box::new(token_record(e)))
            } else {
                Mutation::TokenState(state_record(e))
            });
        }
        if batch.mutations.len() > mutations_before {
            mark_in(unsettled, id, batch);
        }
        if let Some(c) = counters
            .replies
            .get_mut(usize::from(msg_type.request_byte()))
        {
            *c += 1;
        }
        let len = seal_reply(&e.s2d, self.epoch, req.header, reply.as_slice(), out)
            .map_err(|_| DropReason::WrongLength)?;
        if changed {
            Engine::notify_in(&mut guard, id);
        }
        Ok(len)
    }
}
