//! Offline mode (SPEC.md §11): an operator reads a validation code to the user (the
//! challenge), the user's app computes the response from it and the PIN, and the operator
//! enters that response, which opens the token when correct.

use zoftoken_proto::codes;
use zoftoken_proto::pin::PinMatch;
use zoftoken_proto::{TokenId, TokenSecret};

use crate::auth::Auth;
use crate::mutation::Batch;
use crate::pending::OfflineChallenge;
use crate::state::TokenKind;
use crate::{lock, Engine, EngineError};

use super::outcome::OfflineOutcome;

impl Engine {
    /// Offline mode, step 1 (admin): a validation code of `len` symbols (4–32, groups of 4)
    /// for the operator to read to the user. Replaces any earlier one.
    pub fn offline_challenge(
        &self,
        now_ms: u64,
        id: &TokenId,
        len: usize,
    ) -> Result<String, EngineError> {
        let random = self.random::<32>();
        let code = codes::validation_code(len, &random).map_err(|_| {
            EngineError::Invalid("length must be 4, 8, 12, … or 32 (a multiple of 4)")
        })?;
        if self.paired_kind(id)? == TokenKind::Totp {
            return Err(EngineError::NotForTotp);
        }
        lock(&self.pending_items).challenges.insert(
            id.0,
            OfflineChallenge {
                code: code.clone(),
                expires_ms: now_ms + self.challenge_ttl_ms,
            },
        );
        Ok(codes::group4(&code))
    }

    /// Offline mode, step 2 (admin): the user's response. Correct opens the token (duress
    /// reported where allowed); three wrong in a row block it. The challenge is single use.
    pub fn offline_response(
        &self,
        now_ms: u64,
        id: &TokenId,
        response: &str,
        batch: &mut Batch,
    ) -> Result<OfflineOutcome, EngineError> {
        if self.paired_kind(id)? == TokenKind::Totp {
            return Err(EngineError::NotForTotp);
        }
        let challenge = {
            let items = lock(&self.pending_items);
            match items.challenges.get(&id.0) {
                Some(c) if c.expires_ms > now_ms => c.code.clone(),
                _ => return Err(EngineError::NoChallenge),
            }
        };
        let services = self.services();
        let r = self.change_paired(id, batch, |e, shard, slot, batch| {
            let duress_ok = services
                .get(e.service)
                .is_some_and(|s| s.config.duress_allowed);
            let keys = TokenSecret::from_bytes(e.secret).keys();
            let auth = self.authenticate(e, |n, d| {
                codes::offline_verify(&keys.offline, n, d, &challenge, response)
                    .unwrap_or(PinMatch::Wrong)
            });
            let accepted = matches!(auth, Auth::Ok { .. });
            let out = self.outcome(now_ms, e, auth, duress_ok, true, batch);
            self.persist(e, shard, slot, batch);
            (out, accepted)
        })?;
        if r.1 {
            lock(&self.pending_items).challenges.remove(&id.0);
        }
        self.notify(&id.0);
        Ok(r.0)
    }
}
