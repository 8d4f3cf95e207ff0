//! The device packet path (SPEC.md §5–§9): cheap checks, lookup, tag, body, replay,
//! freshness, then the state change, its mutation and events, and the reply.

use std::net::SocketAddr;

use zerocopy::IntoBytes;
use zoftoken_proto::aead::PacketKey;
use zoftoken_proto::clock::{is_fresh, offset_ms};
use zoftoken_proto::packet::{open_checked_request, seal_reply, OpenedRequest};
use zoftoken_proto::pairing::Ephemeral;
use zoftoken_proto::pin::{check_proof, PinMatch};
use zoftoken_proto::pin_keys::SEALED_VERIFIERS_LEN;
use zoftoken_proto::replay::{compact_accept, compact_check, ReplayWindow};
use zoftoken_proto::wire::{
    check_request, Be16, Be32, Be64, Header, MsgType, PairInitReply, RequestBody, StatusBlock,
    TxDecideReply, TxFetchReply, VerifierBlock, SERVICE_FLAG_DURESS, TX_MESSAGE_MAX,
};
use zoftoken_proto::{DropReason, PinVerifier, ReplyStatus, TokenId, TxState, WireState};

use crate::event::{Actor, DuressOp, DuressUse, Event, EventKind};
use crate::mutation::{Batch, Mutation};
use crate::side::Candidate;
use crate::state::{
    TokenEntry, TokenState, FLAG_HAS_DURESS, FLAG_HAS_WINDOW, FLAG_OPEN_DURESS, FLAG_TOTP,
    MAX_FAILURES,
};
use crate::{lock, Engine, Services};

/// What became of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketOutcome {
    /// Send the first `n` bytes of the output buffer back to the source.
    Reply(usize),
    /// Send nothing; the reason is counted.
    Drop(DropReason),
}

pub(crate) fn status_block(e: &TokenEntry, status: ReplyStatus, now_ms: u64) -> StatusBlock {
    let state = e.effective_state(now_ms);
    let open_until = if state == TokenState::Open {
        e.open_until_ms
    } else {
        0
    };
    StatusBlock::new(status, state.wire(), e.attempts_left(), open_until, now_ms)
}

pub(crate) fn event(kind: EventKind, e: &TokenEntry, now_ms: u64, actor: Actor) -> Event {
    Event {
        kind,
        token_id: TokenId(e.id),
        service: e.service,
        time_ms: now_ms,
        actor,
        open_until_ms: (e.effective_state(now_ms) == TokenState::Open).then_some(e.open_until_ms),
        duress: false,
        tx_id: None,
        operation: None,
        sequence: crate::event::next_sequence(&TokenId(e.id)),
    }
}

/// Records a use of the duress PIN in `op` (SPEC.md §6.4): it becomes the token's last duress
/// use (persisted with its state, shown in the API's status) and a `duress` event naming the
/// operation. Only for services that allow duress: elsewhere a duress proof is an ordinary
/// success.
pub(crate) fn record_duress(
    e: &mut TokenEntry,
    now_ms: u64,
    op: DuressOp,
    actor: Actor,
    tx_id: Option<[u8; 16]>,
    batch: &mut Batch,
) {
    e.set_last_duress(Some(DuressUse {
        time_ms: now_ms,
        operation: op,
    }));
    let mut ev = event(EventKind::Duress, e, now_ms, actor).with_duress();
    ev.operation = Some(op);
    ev.tx_id = tx_id;
    batch.event(ev);
}

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

/// The result of checking an authentication of the user (PIN proof, code, response).
pub(crate) enum Auth {
    Ok { duress: bool },
    Failed,
    Blocked,
}

impl Engine {
    /// Processes one device datagram received from `src` at `now_ms`. The reply (if any) is
    /// written into `out` (at least 1200 bytes); state changes go into `batch`, which the
    /// caller commits before sending the replies of the batch.
    pub fn handle_packet(
        &self,
        now_ms: u64,
        src: SocketAddr,
        datagram: &mut [u8],
        out: &mut [u8],
        batch: &mut Batch,
    ) -> PacketOutcome {
        let head = match check_request(datagram) {
            Ok(h) => (h.msg_type, *h.key_id()),
            Err(reason) => {
                // Count under the shard of the id bytes if present, else shard 0.
                let id = datagram
                    .get(8..24)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .unwrap_or([0; 16]);
                Engine::count_drop(&mut self.shard(&id).counters, reason);
                return PacketOutcome::Drop(reason);
            }
        };
        let (msg_type, id) = head;
        // Replies are counted by the paths themselves, under the shard lock they hold.
        let result = if msg_type == MsgType::PairInit {
            let r = self.pair_init(now_ms, &id, datagram, out);
            if r.is_ok() {
                let mut shard = self.shard(&id);
                if let Some(c) = shard
                    .counters
                    .replies
                    .get_mut(usize::from(msg_type.request_byte()))
                {
                    *c += 1;
                }
            }
            r
        } else {
            self.token_request(now_ms, src, msg_type, &id, datagram, out, batch)
        };
        match result {
            Ok(n) => PacketOutcome::Reply(n),
            Err(reason) => {
                Engine::count_drop(&mut self.shard(&id).counters, reason);
                PacketOutcome::Drop(reason)
            }
        }
    }

    /// PAIR_INIT (SPEC.md §5.3).
    fn pair_init(
        &self,
        now_ms: u64,
        pairing_id: &[u8; 16],
        datagram: &mut [u8],
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        let services = self.services();
        let mut pending = lock(&self.pending);
        let token = *pending
            .by_pairing
            .get(pairing_id)
            .ok_or(DropReason::UnknownToken)?;
        let p = pending
            .by_token
            .get_mut(&token)
            .ok_or(DropReason::UnknownToken)?;
        if p.expires_ms <= now_ms {
            return Err(DropReason::UnknownToken);
        }
        let form = p
            .forms
            .iter()
            .find(|f| f.pairing_id == *pairing_id)
            .ok_or(DropReason::UnknownToken)?;
        let (d2s, s2d) = (PacketKey::new(form.d2s), PacketKey::new(form.s2d));
        let req = open_checked_request(&d2s, MsgType::PairInit, datagram)?;
        let RequestBody::PairInit(body) = req.body else {
            return Err(DropReason::UnknownType);
        };
        let counter = req.header.counter.get();
        if counter <= p.max_init_counter {
            return Err(DropReason::Replayed);
        }
        p.max_init_counter = counter;
        let mut random = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut *lock(&self.rng), &mut random);
        let server = Ephemeral::from_random(random);
        zeroize::Zeroize::zeroize(&mut random);
        let agreement = server.server_agree(&body.device_public, pairing_id)?;
        let root = crate::pin_root(&self.pin_tree_secret, agreement.secret.expose());
        let pin_root_sealed = agreement.seal_pin_root(&root);
        let secret = agreement.secret;
        let service = services.get(p.service).ok_or(DropReason::UnknownToken)?;
        let keys = secret.keys();
        p.candidate = Some(Candidate {
            secret,
            keys,
            offset_ms: offset_ms(body.device_time_ms.get(), now_ms),
            window: ReplayWindow::new(),
        });
        let otp = service.config.otp;
        let reply = PairInitReply {
            status: StatusBlock::new(ReplyStatus::Ok, WireState::Pending, MAX_FAILURES, 0, now_ms),
            server_public: server.public(),
            token_id: token,
            otp_length: otp.length,
            otp_alphabet: otp.alphabet as u8,
            otp_period_s: Be16::new(otp.period_s),
            window_s: Be32::new(service.config.window_s),
            service_flags: if service.config.duress_allowed {
                SERVICE_FLAG_DURESS
            } else {
                0
            },
            reserved: [0; 3],
            pin_root_sealed,
        };
        seal_reply(&s2d, self.epoch, req.header, reply.as_bytes(), out)
            .map_err(|_| DropReason::WrongLength)
    }

    /// PAIR_COMPLETE for a token that is pending with a candidate secret (SPEC.md §5.6).
    fn pair_complete(
        &self,
        now_ms: u64,
        id: &[u8; 16],
        datagram: &mut [u8],
        out: &mut [u8],
        batch: &mut Batch,
    ) -> Result<usize, DropReason> {
        let services = self.services();
        let mut pending = lock(&self.pending);
        let p = pending
            .by_token
            .get_mut(id)
            .ok_or(DropReason::UnknownToken)?;
        if p.expires_ms <= now_ms {
            return Err(DropReason::UnknownToken);
        }
        let c = p.candidate.as_mut().ok_or(DropReason::UnknownToken)?;
        let req = open_checked_request(&c.keys.d2s, MsgType::PairComplete, datagram)?;
        let RequestBody::PairComplete(body) = req.body else {
            return Err(DropReason::UnknownType);
        };
        let counter = req.header.counter.get();
        if !c.window.check(counter) {
            return Err(DropReason::Replayed);
        }
        if !is_fresh(body.device_time_ms.get(), now_ms, c.offset_ms) {
            return Err(DropReason::Stale);
        }
        let verifiers = self.open_verifiers(
            c.secret.expose(),
            body.pin.index.get(),
            req.header,
            &body.verifiers,
        )?;
        c.window.accept(counter);
        let service_index = p.service;
        let service = services
            .get(service_index)
            .ok_or(DropReason::UnknownToken)?;
        let with_duress = verifiers.has_duress();
        if with_duress && !service.config.duress_allowed {
            let block = StatusBlock::new(
                ReplyStatus::Refused,
                WireState::Pending,
                MAX_FAILURES,
                0,
                now_ms,
            );
            return seal_reply(&c.keys.s2d, self.epoch, req.header, block.as_bytes(), out)
                .map_err(|_| DropReason::WrongLength);
        }
        // The candidate's window becomes the token's: compact in the entry when it can be
        // (always, unless earlier PAIR_COMPLETEs left an unseen counter far below).
        let compact = c.window.to_compact();
        let entry = TokenEntry {
            id: *id,
            secret: *c.secret.expose(),
            d2s: c.keys.d2s.clone(),
            s2d: c.keys.s2d.clone(),
            pin: verifiers.pin_verifier,
            duress: verifiers.duress_verifier,
            highest: c.window.highest(),
            open_until_ms: 0,
            offset_ms: c.offset_ms,
            last_seen_s: (now_ms / 1000) as u32,
            otp_last_step: 0,
            service: service_index,
            state: TokenState::Closed,
            failures: 0,
            flags: if compact.is_none() {
                FLAG_HAS_WINDOW
            } else {
                0
            } | if with_duress { FLAG_HAS_DURESS } else { 0 },
            otp_drift: 0,
            version: 0,
            recent: compact.unwrap_or(u32::MAX),
            duress_op: 0,
            duress_ms: 0,
        };
        let window = compact.is_none().then(|| c.window.clone());
        let reply_key = c.keys.s2d.clone();
        let mut shard = self.shard(id);
        if shard.is_unsettled(id, batch) {
            return Err(DropReason::Unsettled);
        }
        shard.mark(id, batch);
        pending.remove(id);
        let slot = match shard.table.find(id) {
            Some(slot) => {
                if let Some(e) = shard.table.get_mut(slot) {
                    // A re-enrolled token: its versions continue, so that the new state is
                    // newer than anything stored for the old pairing.
                    // A duress use stays reported until the token is deleted.
                    let (version, duress) = (e.version, e.last_duress());
                    *e = entry;
                    e.version = version;
                    e.set_last_duress(duress);
                }
                slot
            }
            None => self.insert_entry(&mut shard, entry),
        };
        match window {
            Some(w) => shard.windows.insert(slot, (w, now_ms)),
            None => shard.windows.remove(&slot),
        };
        shard.presence.remove(&slot);
        let e = shard.table.get_mut(slot).ok_or(DropReason::UnknownToken)?;
        batch.mutations.push(Mutation::DeletePending(TokenId(*id)));
        batch
            .mutations
            .push(Mutation::Token(Box::new(self.record(e))));
        batch.event(event(EventKind::Paired, e, now_ms, Actor::Device));
        let block = status_block(e, ReplyStatus::Ok, now_ms);
        Engine::notify_in(&mut shard, id);
        if let Some(c) = shard
            .counters
            .replies
            .get_mut(usize::from(MsgType::PairComplete.request_byte()))
        {
            *c += 1;
        }
        drop(shard);
        seal_reply(&reply_key, self.epoch, req.header, block.as_bytes(), out)
            .map_err(|_| DropReason::WrongLength)
    }

    #[allow(clippy::too_many_arguments)]
    fn token_request(
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
        let crate::Shard {
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
        if crate::settle::unsettled_for(unsettled, id, batch) {
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
            crate::state::schedule_expiry(timers, e, slot);
            // Secrets change only with a PIN change; every other change is state only.
            batch.mutations.push(if msg_type == MsgType::ChangePin {
                Mutation::Token(Box::new(self.record(e)))
            } else {
                Mutation::TokenState(crate::state_record(e))
            });
        }
        if batch.mutations.len() > mutations_before {
            crate::settle::mark_in(unsettled, id, batch);
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

    /// The state change of an authentic, fresh, new request, and its reply body.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        now_ms: u64,
        e: &mut TokenEntry,
        service: &crate::Service,
        services: &Services,
        req: &OpenedRequest<'_>,
        verifiers: Option<&VerifierBlock>,
        batch: &mut Batch,
        changed: &mut bool,
        resync: bool,
        device_time: u64,
    ) -> Result<ReplyBytes, DropReason> {
        let counter = req.header.counter.get();
        let t = req.msg_type;
        let duress_ok = service.config.duress_allowed;
        Ok(match req.body {
            RequestBody::Open(o) => {
                let auth = self.authenticate(e, |n, d| {
                    self.check_proof(e, o.pin.index.get(), &o.proof, n, d, t, counter)
                });
                *changed = true;
                self.settle(
                    now_ms,
                    e,
                    auth,
                    duress_ok,
                    Actor::Device,
                    batch,
                    true,
                    services,
                )
            }
            RequestBody::Close(_) => {
                if e.state == TokenState::Blocked {
                    ReplyBytes::status(status_block(e, ReplyStatus::Blocked, now_ms))
                } else {
                    if e.effective_state(now_ms) == TokenState::Open {
                        e.state = TokenState::Closed;
                        e.open_until_ms = 0;
                        *changed = true;
                        batch.event(event(EventKind::Closed, e, now_ms, Actor::Device));
                    }
                    ReplyBytes::status(status_block(e, ReplyStatus::Ok, now_ms))
                }
            }
            RequestBody::Status(_) => ReplyBytes::status(status_block(e, ReplyStatus::Ok, now_ms)),
            RequestBody::TimeSync(_) => {
                if resync {
                    // The offset now measures the phone's clock directly; drift measured
                    // against the old offset would count the skew twice (SPEC.md §10.3).
                    e.offset_ms = offset_ms(device_time, now_ms);
                    e.otp_drift = 0;
                    *changed = true;
                }
                ReplyBytes::status(status_block(e, ReplyStatus::Ok, now_ms))
            }
            RequestBody::PairComplete(_) => {
                // A paired token's PAIR_COMPLETE is a retransmission only if it carries the
                // stored verifiers. Anything else tests PIN material, so it counts as a failed
                // authentication like a wrong PIN (three block the token), and a blocked
                // token compares nothing (SPEC.md §5.6, §6.5).
                if e.state == TokenState::Blocked {
                    return Ok(ReplyBytes::status(status_block(
                        e,
                        ReplyStatus::Blocked,
                        now_ms,
                    )));
                }
                let v = verifiers.ok_or(DropReason::Unauthentic)?;
                use subtle::ConstantTimeEq;
                let same = v.pin_verifier.ct_eq(&e.pin)
                    & v.duress_verifier.ct_eq(&e.duress)
                    & subtle::Choice::from(u8::from(v.has_duress() == e.has_duress()));
                if bool::from(same) {
                    ReplyBytes::status(status_block(e, ReplyStatus::Ok, now_ms))
                } else {
                    *changed = true;
                    self.settle(
                        now_ms,
                        e,
                        Auth::Failed,
                        duress_ok,
                        Actor::Device,
                        batch,
                        false,
                        services,
                    )
                }
            }
            RequestBody::ChangePin(c) => {
                let v = verifiers.ok_or(DropReason::Unauthentic)?;
                let auth = self.authenticate(e, |n, d| {
                    self.check_proof(e, c.pin.index.get(), &c.proof, n, d, t, counter)
                });
                let wants_duress = v.has_duress();
                match auth {
                    Auth::Ok { duress: false } if wants_duress && !duress_ok => {
                        ReplyBytes::status(status_block(e, ReplyStatus::Refused, now_ms))
                    }
                    Auth::Ok { duress: false } => {
                        e.pin = v.pin_verifier;
                        e.duress = v.duress_verifier;
                        e.flags = if wants_duress {
                            e.flags | FLAG_HAS_DURESS
                        } else {
                            e.flags & !FLAG_HAS_DURESS
                        };
                        e.failures = 0;
                        *changed = true;
                        ReplyBytes::status(status_block(e, ReplyStatus::Ok, now_ms))
                    }
                    // Duress: looks like success, changes nothing, reported (SPEC.md §7.11).
                    Auth::Ok { duress: true } => {
                        *changed = true;
                        e.failures = 0;
                        if duress_ok {
                            record_duress(
                                e,
                                now_ms,
                                DuressOp::ChangePin,
                                Actor::Device,
                                None,
                                batch,
                            );
                        }
                        ReplyBytes::status(status_block(e, ReplyStatus::Ok, now_ms))
                    }
                    other => {
                        *changed = true;
                        self.settle(
                            now_ms,
                            e,
                            other,
                            duress_ok,
                            Actor::Device,
                            batch,
                            false,
                            services,
                        )
                    }
                }
            }
            RequestBody::TxFetch(_) => {
                let side = lock(&self.side);
                let mut r = TxFetchReply {
                    status: status_block(e, ReplyStatus::NoTransaction, now_ms),
                    tx_id: [0; 16],
                    tx_expires_ms: Be64::new(0),
                    message_len: Be16::new(0),
                    message: [0; TX_MESSAGE_MAX],
                };
                if let Some(tx) = side.waiting(&e.id, now_ms) {
                    r.status = status_block(e, ReplyStatus::Ok, now_ms);
                    r.tx_id = tx.tx_id;
                    r.tx_expires_ms = Be64::new(tx.expires_ms);
                    let bytes = tx.message.as_bytes();
                    let n = bytes.len().min(TX_MESSAGE_MAX);
                    r.message_len = Be16::new(n as u16);
                    if let (Some(dst), Some(src)) = (r.message.get_mut(..n), bytes.get(..n)) {
                        dst.copy_from_slice(src);
                    }
                }
                ReplyBytes::TxFetch(Box::new(r))
            }
            RequestBody::TxApprove(d) | RequestBody::TxDeny(d) => {
                let approve = t == MsgType::TxApprove;
                let waiting = {
                    let side = lock(&self.side);
                    side.transactions
                        .get(&d.tx_id)
                        .filter(|tx| tx.token_id.0 == e.id)
                        .map(|tx| (tx.state, tx.expires_ms > now_ms))
                };
                let decide =
                    |e: &mut TokenEntry, state: TxState, duress: bool, batch: &mut Batch| {
                        let mut side = lock(&self.side);
                        if let Some(tx) = side.transactions.get_mut(&d.tx_id) {
                            tx.state = state;
                            tx.duress = duress && duress_ok;
                            batch
                                .mutations
                                .push(Mutation::Transaction(Box::new(tx.clone())));
                        }
                        let kind = if state == TxState::Approved {
                            EventKind::TxApproved
                        } else {
                            EventKind::TxDenied
                        };
                        let mut ev = event(kind, e, now_ms, Actor::Device);
                        ev.tx_id = Some(d.tx_id);
                        ev.duress = duress && duress_ok;
                        batch.event(ev);
                    };
                let (status, tx_state) = match waiting {
                    Some((TxState::Waiting, true)) if !approve => {
                        // A decision wakes long polls of the token (the API's transaction read).
                        *changed = true;
                        decide(e, TxState::Denied, false, batch);
                        (ReplyStatus::Ok, TxState::Denied)
                    }
                    Some((TxState::Waiting, true)) => {
                        let auth = self.authenticate(e, |n, du| {
                            self.check_proof(e, d.pin.index.get(), &d.proof, n, du, t, counter)
                        });
                        *changed = true;
                        match auth {
                            Auth::Ok { duress } => {
                                e.failures = 0;
                                if duress && duress_ok {
                                    record_duress(
                                        e,
                                        now_ms,
                                        DuressOp::TxApprove,
                                        Actor::Device,
                                        Some(d.tx_id),
                                        batch,
                                    );
                                }
                                decide(e, TxState::Approved, duress, batch);
                                (ReplyStatus::Ok, TxState::Approved)
                            }
                            other => {
                                let block = self.settle(
                                    now_ms,
                                    e,
                                    other,
                                    duress_ok,
                                    Actor::Device,
                                    batch,
                                    false,
                                    services,
                                );
                                (
                                    ReplyStatus::from_byte(block.status_byte())
                                        .unwrap_or(ReplyStatus::Blocked),
                                    TxState::Waiting,
                                )
                            }
                        }
                    }
                    Some((TxState::Waiting, false)) => {
                        (ReplyStatus::NoTransaction, TxState::Expired)
                    }
                    Some((s, _)) => (ReplyStatus::NoTransaction, s),
                    None => (ReplyStatus::NoTransaction, TxState::Expired),
                };
                ReplyBytes::TxDecide(TxDecideReply {
                    status: status_block(e, status, now_ms),
                    tx_id: d.tx_id,
                    tx_state: tx_state as u8,
                    reserved: [0; 3],
                })
            }
            RequestBody::PairInit(_) => return Err(DropReason::UnknownType),
        })
    }

    /// Checks a user authentication against the token's verifiers; a blocked token is never
    /// checked (SPEC.md §6.5).
    /// Checks a PIN proof under the request's PIN key (SPEC.md §6.3): the token's PIN root
    /// from the instance secret and `K`, then the key of `index` (validated when the body was
    /// parsed; an index out of range could only read as a wrong proof).
    #[allow(clippy::too_many_arguments)]
    fn check_proof(
        &self,
        e: &TokenEntry,
        index: u32,
        proof: &[u8; 16],
        normal: &PinVerifier,
        duress: Option<&PinVerifier>,
        t: MsgType,
        counter: u64,
    ) -> PinMatch {
        match crate::pin_root(&self.pin_tree_secret, &e.secret).key(index) {
            Ok(key) => check_proof(proof, &key, normal, duress, t, &e.id, counter),
            Err(_) => PinMatch::Wrong,
        }
    }

    /// Opens and parses a sealed verifier block of PAIR_COMPLETE or CHANGE_PIN.
    fn open_verifiers(
        &self,
        token_secret: &[u8; 32],
        index: u32,
        header: &Header,
        sealed: &[u8; SEALED_VERIFIERS_LEN],
    ) -> Result<VerifierBlock, DropReason> {
        let key = crate::pin_root(&self.pin_tree_secret, token_secret).key(index)?;
        let mut plain = key.open_verifiers(header, sealed)?;
        let block = VerifierBlock::parse(&plain);
        zeroize::Zeroize::zeroize(&mut plain);
        block
    }

    pub(crate) fn authenticate(
        &self,
        e: &TokenEntry,
        check: impl Fn(&PinVerifier, Option<&PinVerifier>) -> PinMatch,
    ) -> Auth {
        if e.state == TokenState::Blocked {
            return Auth::Blocked;
        }
        let normal = PinVerifier::from_bytes(e.pin);
        let duress = e.has_duress().then(|| PinVerifier::from_bytes(e.duress));
        match check(&normal, duress.as_ref()) {
            PinMatch::Normal => Auth::Ok { duress: false },
            PinMatch::Duress => Auth::Ok { duress: true },
            PinMatch::Wrong => Auth::Failed,
        }
    }

    /// Applies an authentication result: open on success (when `open` is set), count a
    /// failure and block at three. Returns the reply status block.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn settle(
        &self,
        now_ms: u64,
        e: &mut TokenEntry,
        auth: Auth,
        duress_allowed: bool,
        actor: Actor,
        batch: &mut Batch,
        open: bool,
        services: &Services,
    ) -> ReplyBytes {
        match auth {
            Auth::Blocked => ReplyBytes::status(status_block(e, ReplyStatus::Blocked, now_ms)),
            Auth::Ok { duress } => {
                e.failures = 0;
                if open {
                    self.open_token(now_ms, e, duress && duress_allowed, actor, batch, services);
                }
                ReplyBytes::status(status_block(e, ReplyStatus::Ok, now_ms))
            }
            Auth::Failed => {
                e.failures = e.failures.saturating_add(1);
                batch.event(event(EventKind::FailedAttempt, e, now_ms, actor));
                if e.failures >= MAX_FAILURES {
                    e.state = TokenState::Blocked;
                    e.open_until_ms = 0;
                    batch.event(event(EventKind::Blocked, e, now_ms, actor));
                    ReplyBytes::status(status_block(e, ReplyStatus::Blocked, now_ms))
                } else {
                    ReplyBytes::status(status_block(e, ReplyStatus::WrongPin, now_ms))
                }
            }
        }
    }

    /// Opens a token for its service's window (window 0: an instant event, stays closed).
    pub(crate) fn open_token(
        &self,
        now_ms: u64,
        e: &mut TokenEntry,
        duress: bool,
        actor: Actor,
        batch: &mut Batch,
        services: &Services,
    ) {
        let window_ms = services
            .get(e.service)
            .map_or(0, |s| u64::from(s.config.window_s) * 1000);
        if window_ms > 0 {
            e.state = TokenState::Open;
            e.open_until_ms = now_ms + window_ms;
        } else if e.state != TokenState::Blocked {
            e.state = TokenState::Closed;
            e.open_until_ms = 0;
        }
        e.flags = if duress {
            e.flags | FLAG_OPEN_DURESS
        } else {
            e.flags & !FLAG_OPEN_DURESS
        };
        let mut ev = event(EventKind::Opened, e, now_ms, actor);
        ev.open_until_ms = (window_ms > 0).then_some(e.open_until_ms);
        ev.duress = duress;
        batch.event(ev);
        if duress {
            // Only the app (OPEN) and an operator (offline response) open with a PIN.
            let op = if actor == Actor::Operator {
                DuressOp::OfflineResponse
            } else {
                DuressOp::Open
            };
            record_duress(e, now_ms, op, actor, None, batch);
        }
    }

    /// The persistent record of an entry.
    pub(crate) fn record(&self, e: &mut TokenEntry) -> crate::TokenRecord {
        crate::TokenRecord {
            kind: e.kind(),
            service: e.service,
            secret: zoftoken_proto::SecretBytes::new(e.secret),
            pin_verifier: zoftoken_proto::SecretBytes::new(e.pin),
            duress_verifier: e
                .has_duress()
                .then(|| zoftoken_proto::SecretBytes::new(e.duress)),
            status: crate::state_record(e),
        }
    }
}

/// A reply body, by layout.
pub(crate) enum ReplyBytes {
    Status(StatusBlock),
    TxFetch(Box<TxFetchReply>),
    TxDecide(TxDecideReply),
}

impl ReplyBytes {
    pub fn status(b: StatusBlock) -> ReplyBytes {
        ReplyBytes::Status(b)
    }

    pub fn status_byte(&self) -> u8 {
        match self {
            ReplyBytes::Status(b) => b.status,
            ReplyBytes::TxFetch(r) => r.status.status,
            ReplyBytes::TxDecide(r) => r.status.status,
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            ReplyBytes::Status(b) => b.as_bytes(),
            ReplyBytes::TxFetch(r) => r.as_bytes(),
            ReplyBytes::TxDecide(r) => r.as_bytes(),
        }
    }
}
