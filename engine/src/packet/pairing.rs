//! Pairing (SPEC.md §5): PAIR_INIT under an enrollment's keys, and PAIR_COMPLETE of a pending
//! token under the candidate secret that PAIR_INIT offered, which makes the token's entry.

use zerocopy::IntoBytes;
use zoftoken_proto::aead::PacketKey;
use zoftoken_proto::clock::{is_fresh, offset_ms};
use zoftoken_proto::packet::{open_checked_request, seal_reply};
use zoftoken_proto::pairing::Ephemeral;
use zoftoken_proto::replay::ReplayWindow;
use zoftoken_proto::wire::{
    Be16, Be32, MsgType, PairInitReply, RequestBody, StatusBlock, SERVICE_FLAG_DURESS,
};
use zoftoken_proto::{DropReason, ReplyStatus, TokenId, WireState};

use super::reply::status_block;
use crate::event::{Actor, EventKind};
use crate::mutation::{token_record, Batch, Mutation};
use crate::pending::PairingCandidate;
use crate::state::{event, TokenEntry, TokenState, FLAG_HAS_DURESS, FLAG_HAS_WINDOW, MAX_FAILURES};
use crate::{lock, Engine};

impl Engine {
    /// PAIR_INIT (SPEC.md §5.3).
    pub(super) fn pair_init(
        &self,
        now_ms: u64,
        pairing_id: &[u8; 16],
        datagram: &mut [u8],
        out: &mut [u8],
        batch: &mut Batch,
    ) -> Result<usize, DropReason> {
        let services = self.services();
        let mut enrollments = lock(&self.enrollments);
        let token = *enrollments
            .by_pairing
            .get(pairing_id)
            .ok_or(DropReason::UnknownToken)?;
        let p = enrollments
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
        // On a shared database the candidate is written before the reply (the app's
        // PAIR_COMPLETE may reach another server): not while an earlier write of this
        // enrollment is under way.
        if self.shared_database && self.shard(&token).is_unsettled(&token, batch) {
            return Err(DropReason::Unsettled);
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
        p.candidate = Some(PairingCandidate {
            secret,
            keys,
            offset_ms: offset_ms(body.device_time_ms.get(), now_ms),
            window: ReplayWindow::new(),
        });
        if self.shared_database {
            if let Some(record) = enrollments.record(&token, service.name.clone()) {
                batch.mutations.push(Mutation::Pending(Box::new(record)));
                self.shard(&token).mark(&token, batch);
            }
        }
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
    pub(super) fn pair_complete(
        &self,
        now_ms: u64,
        id: &[u8; 16],
        datagram: &mut [u8],
        out: &mut [u8],
        batch: &mut Batch,
    ) -> Result<usize, DropReason> {
        let services = self.services();
        let mut enrollments = lock(&self.enrollments);
        let p = enrollments
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
        enrollments.remove(id);
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
            .push(Mutation::Token(Box::new(token_record(e))));
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
}
