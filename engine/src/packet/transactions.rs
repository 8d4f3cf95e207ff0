//! The transaction requests of a paired token (SPEC.md §7.9–7.10): TX_FETCH reads the oldest
//! waiting transaction; TX_APPROVE (with a PIN proof) and TX_DENY decide one.

use zoftoken_proto::wire::{
    Be16, Be64, MsgType, TxDecideReply, TxDecideRequest, TxFetchReply, TX_MESSAGE_MAX,
};
use zoftoken_proto::{ReplyStatus, TxState};

use super::reply::{status_block, ReplyBytes};
use crate::auth::{record_duress, Auth};
use crate::event::{Actor, DuressOp, EventKind};
use crate::mutation::{Batch, Mutation};
use crate::services::Services;
use crate::state::{event, TokenEntry};
use crate::{lock, Engine};

impl Engine {
    /// TX_FETCH: the oldest waiting, unexpired transaction of the token, if any.
    pub(super) fn tx_fetch(&self, e: &TokenEntry, now_ms: u64) -> ReplyBytes {
        let items = lock(&self.pending_items);
        let mut r = TxFetchReply {
            status: status_block(e, ReplyStatus::NoTransaction, now_ms),
            tx_id: [0; 16],
            tx_expires_ms: Be64::new(0),
            message_len: Be16::new(0),
            message: [0; TX_MESSAGE_MAX],
        };
        if let Some(tx) = items.waiting(&e.id, now_ms) {
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

    /// TX_APPROVE (`t`, with a PIN proof) or TX_DENY of the transaction `d` names: only a
    /// waiting, unexpired transaction of this token is decided; a wrong PIN counts as a failed
    /// authentication and leaves it waiting.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn tx_decide(
        &self,
        now_ms: u64,
        e: &mut TokenEntry,
        d: &TxDecideRequest,
        t: MsgType,
        counter: u64,
        duress_ok: bool,
        services: &Services,
        batch: &mut Batch,
        changed: &mut bool,
    ) -> ReplyBytes {
        let approve = t == MsgType::TxApprove;
        let waiting = {
            let items = lock(&self.pending_items);
            items
                .transactions
                .get(&d.tx_id)
                .filter(|tx| tx.token_id.0 == e.id)
                .map(|tx| (tx.state, tx.expires_ms > now_ms))
        };
        let decide = |e: &mut TokenEntry, state: TxState, duress: bool, batch: &mut Batch| {
            let mut items = lock(&self.pending_items);
            if let Some(tx) = items.transactions.get_mut(&d.tx_id) {
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
                        let status = self.apply_auth(
                            now_ms,
                            e,
                            other,
                            duress_ok,
                            Actor::Device,
                            batch,
                            false,
                            services,
                        );
                        (status, TxState::Waiting)
                    }
                }
            }
            Some((TxState::Waiting, false)) => (ReplyStatus::NoTransaction, TxState::Expired),
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
}
