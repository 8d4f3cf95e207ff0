//! The state change of an authentic, fresh, new request of a paired token, by request type:
//! OPEN, CLOSE, STATUS, TIME_SYNC, CHANGE_PIN and a repeated PAIR_COMPLETE here; the
//! transaction requests in `transactions`.

use zoftoken_proto::clock::offset_ms;
use zoftoken_proto::packet::OpenedRequest;
use zoftoken_proto::wire::{RequestBody, VerifierBlock};
use zoftoken_proto::{DropReason, ReplyStatus};

use super::reply::{status_block, ReplyBytes};
use crate::auth::{record_duress, Auth};
use crate::event::{Actor, DuressOp, EventKind};
use crate::mutation::Batch;
use crate::services::{Service, Services};
use crate::state::{event, TokenEntry, TokenState, FLAG_HAS_DURESS};
use crate::Engine;

impl Engine {
    /// The state change of an authentic, fresh, new request, and its reply body.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn apply(
        &self,
        now_ms: u64,
        e: &mut TokenEntry,
        service: &Service,
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
                let status = self.apply_auth(
                    now_ms,
                    e,
                    auth,
                    duress_ok,
                    Actor::Device,
                    batch,
                    true,
                    services,
                );
                ReplyBytes::status(status_block(e, status, now_ms))
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
                    } else if self.shared_database {
                        // Closed in memory; the database confirms it (compare-and-set), as
                        // another server may have opened it a moment ago.
                        *changed = true;
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
                    let status = self.apply_auth(
                        now_ms,
                        e,
                        Auth::Failed,
                        duress_ok,
                        Actor::Device,
                        batch,
                        false,
                        services,
                    );
                    ReplyBytes::status(status_block(e, status, now_ms))
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
                        ReplyBytes::status(status_block(e, status, now_ms))
                    }
                }
            }
            RequestBody::TxFetch(_) => self.tx_fetch(e, now_ms),
            RequestBody::TxApprove(d) | RequestBody::TxDeny(d) => self.tx_decide(
                now_ms, e, d, t, counter, duress_ok, services, batch, changed,
            ),
            RequestBody::PairInit(_) => return Err(DropReason::UnknownType),
        })
    }
}
