//! Authentications of the user and what follows from them, the same for the app (OPEN,
//! TX_APPROVE, CHANGE_PIN) and for the API (one-time codes, offline responses, backup codes):
//! a blocked token is never checked; a success resets the failures and may open the token; a
//! failure is counted and the third in a row blocks (SPEC.md §6.5); a duress PIN is reported
//! where the service allows it (§6.4).

use zoftoken_proto::pin::PinMatch;
use zoftoken_proto::{PinVerifier, ReplyStatus};

use crate::event::{Actor, DuressOp, DuressUse, EventKind};
use crate::mutation::Batch;
use crate::services::Services;
use crate::state::{event, TokenEntry, TokenState, FLAG_OPEN_DURESS, MAX_FAILURES};
use crate::Engine;

/// The result of checking an authentication of the user (PIN proof, code, response).
pub(crate) enum Auth {
    /// Correct, with the normal PIN or (`duress`) the duress PIN.
    Ok { duress: bool },
    /// Wrong.
    Failed,
    /// The token is blocked: nothing was checked.
    Blocked,
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

impl Engine {
    /// Checks a user authentication against the token's verifiers with `check`; a blocked
    /// token is never checked (SPEC.md §6.5).
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
    /// failure and block at three. Returns the reply status that says so (the caller builds
    /// the status block from the entry as it is now).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply_auth(
        &self,
        now_ms: u64,
        e: &mut TokenEntry,
        auth: Auth,
        duress_allowed: bool,
        actor: Actor,
        batch: &mut Batch,
        open: bool,
        services: &Services,
    ) -> ReplyStatus {
        match auth {
            Auth::Blocked => ReplyStatus::Blocked,
            Auth::Ok { duress } => {
                e.failures = 0;
                if open {
                    self.open_token(now_ms, e, duress && duress_allowed, actor, batch, services);
                }
                ReplyStatus::Ok
            }
            Auth::Failed => {
                e.failures = e.failures.saturating_add(1);
                batch.event(event(EventKind::FailedAttempt, e, now_ms, actor));
                if e.failures >= MAX_FAILURES {
                    e.state = TokenState::Blocked;
                    e.open_until_ms = 0;
                    batch.event(event(EventKind::Blocked, e, now_ms, actor));
                    ReplyStatus::Blocked
                } else {
                    ReplyStatus::WrongPin
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
}
