//! A token's status for the API (by service and username, or by id), and its app's presence.

use zoftoken_proto::TokenId;

use crate::event::DuressUse;
use crate::mutation::Batch;
use crate::state::{TokenKind, TokenState, FLAG_OPEN_DURESS, MAX_FAILURES};
use crate::{lock, Engine, EngineError};

/// A token's status for the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenStatus {
    /// The token.
    pub token_id: TokenId,
    /// App or standard authenticator (TOTP). A token re-enrolled for the app and waiting for
    /// it (pending) is `App`.
    pub kind: TokenKind,
    /// State at `now` (an ended window reads closed).
    pub state: TokenState,
    /// End of the open window, when open.
    pub open_until_ms: Option<u64>,
    /// Whether the current open was made with the duress PIN (services allowing duress).
    pub duress: bool,
    /// Consecutive failed authentications.
    pub failures: u8,
    /// Failed authentications left before the token blocks (0 while blocked, by failures or
    /// by an administrator), as the app's status block says.
    pub attempts_left: u8,
    /// Last time the device was heard from (Unix ms), if ever.
    pub last_seen_ms: Option<u64>,
    /// The last use of the duress PIN in any operation (OPEN, offline response, one-time
    /// code, TX_APPROVE, CHANGE_PIN), if any: kept, across restarts and re-enrollments, until
    /// the token is deleted.
    pub last_duress: Option<DuressUse>,
}

impl Engine {
    /// The status of a token by service and username.
    pub fn status(
        &self,
        now_ms: u64,
        service: &str,
        username: &str,
    ) -> Result<TokenStatus, EngineError> {
        self.service_index(service)?;
        self.status_by_id(now_ms, &TokenId::derive(service, username))
    }

    /// The status of a token by id. A token whose last change is not yet durable is
    /// refused ([`EngineError::Unsettled`]): ask again in a moment.
    pub fn status_by_id(&self, now_ms: u64, id: &TokenId) -> Result<TokenStatus, EngineError> {
        self.status_in(now_ms, id, &Batch::new())
    }

    /// [`Engine::status_by_id`] as seen by `batch`, which may read its own changes.
    pub(super) fn status_in(
        &self,
        now_ms: u64,
        id: &TokenId,
        batch: &Batch,
    ) -> Result<TokenStatus, EngineError> {
        let shard = self.shard(&id.0);
        if shard.is_unsettled(&id.0, batch) {
            return Err(EngineError::Unsettled);
        }
        if let Some(e) = shard.table.find(&id.0).and_then(|s| shard.table.get(s)) {
            let state = e.effective_state(now_ms);
            let services = self.services();
            let duress_ok = services
                .get(e.service)
                .is_some_and(|s| s.config.duress_allowed);
            return Ok(TokenStatus {
                token_id: *id,
                kind: if state == TokenState::Pending {
                    TokenKind::App
                } else {
                    e.kind()
                },
                state,
                open_until_ms: (state == TokenState::Open).then_some(e.open_until_ms),
                duress: state == TokenState::Open && duress_ok && e.flags & FLAG_OPEN_DURESS != 0,
                failures: e.failures,
                attempts_left: e.attempts_left(),
                last_seen_ms: (e.last_seen_s > 0).then_some(u64::from(e.last_seen_s) * 1000),
                last_duress: e.last_duress(),
            });
        }
        drop(shard);
        if lock(&self.enrollments)
            .by_token
            .get(&id.0)
            .is_some_and(|p| p.expires_ms > now_ms)
        {
            return Ok(TokenStatus {
                token_id: *id,
                kind: TokenKind::App,
                state: TokenState::Pending,
                open_until_ms: None,
                duress: false,
                failures: 0,
                attempts_left: MAX_FAILURES,
                last_seen_ms: None,
                last_duress: None,
            });
        }
        Err(EngineError::UnknownToken)
    }

    /// Where and when the token's app last announced itself (TIME_SYNC, SPEC.md §7.8): the
    /// source address of its last presence and the last time it was heard from.
    pub fn presence(&self, id: &TokenId) -> Option<(std::net::SocketAddr, u64)> {
        let shard = self.shard(&id.0);
        let slot = shard.table.find(&id.0)?;
        let addr = *shard.presence.get(&slot)?;
        let seen = shard
            .table
            .get(slot)
            .map(|e| u64::from(e.last_seen_s) * 1000)?;
        Some((addr, seen))
    }
}
