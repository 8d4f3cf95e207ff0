//! Offline mode (SPEC.md §11): an operator reads a validation code to the user (the
//! challenge), the user's app computes the response from it and the PIN, and the operator
//! enters that response, which opens the token when correct.

use zoftoken_proto::codes;
use zoftoken_proto::pin::PinMatch;
use zoftoken_proto::{TokenId, TokenSecret};

use crate::auth::Auth;
use crate::mutation::{Batch, ChallengeRecord, Mutation};
use crate::pending::OfflineChallenge;
use crate::state::TokenKind;
use crate::{lock, Engine, EngineError};

use super::outcome::OfflineOutcome;

impl Engine {
    /// Offline mode, step 1 (admin): a validation code of `len` symbols (4–32, groups of 4)
    /// for the operator to read to the user. Replaces any earlier one. The challenge is
    /// written with a new version of the token's state, so that a server that answers the
    /// response from an older view of the token fails its compare-and-set and reads it again.
    pub fn offline_challenge(
        &self,
        now_ms: u64,
        id: &TokenId,
        len: usize,
        batch: &mut Batch,
    ) -> Result<String, EngineError> {
        let random = self.random::<32>();
        let code = codes::validation_code(len, &random).map_err(|_| {
            EngineError::Invalid("length must be 4, 8, 12, … or 32 (a multiple of 4)")
        })?;
        let expires_ms = now_ms + self.challenge_ttl_ms;
        self.change_paired(id, batch, |e, shard, slot, batch| {
            if e.kind() == TokenKind::Totp {
                return Err(EngineError::NotForTotp);
            }
            // Lock order: shard before pending items.
            lock(&self.pending_items).challenges.insert(
                id.0,
                OfflineChallenge {
                    code: code.clone(),
                    expires_ms,
                },
            );
            batch
                .mutations
                .push(Mutation::Challenge(Box::new(ChallengeRecord {
                    token_id: *id,
                    code: code.clone(),
                    expires_ms,
                })));
            self.persist(e, shard, slot, batch);
            Ok(())
        })??;
        Ok(codes::group4(&code))
    }

    /// Offline mode, step 2 (admin): the user's response. Correct opens the token (duress
    /// reported where allowed); three wrong in a row block it. The challenge is single use:
    /// read, checked and removed while the token is held for this batch.
    pub fn offline_response(
        &self,
        now_ms: u64,
        id: &TokenId,
        response: &str,
        batch: &mut Batch,
    ) -> Result<OfflineOutcome, EngineError> {
        let services = self.services();
        let out = self.change_paired(id, batch, |e, shard, slot, batch| {
            if e.kind() == TokenKind::Totp {
                return Err(EngineError::NotForTotp);
            }
            // Lock order: shard before pending items.
            let challenge = match lock(&self.pending_items).challenges.get(&id.0) {
                Some(c) if c.expires_ms > now_ms => c.code.clone(),
                _ => return Err(EngineError::NoChallenge),
            };
            let duress_ok = services
                .get(e.service)
                .is_some_and(|s| s.config.duress_allowed);
            let keys = TokenSecret::from_bytes(e.secret).keys();
            let auth = self.authenticate(e, |n, d| {
                codes::offline_verify(&keys.offline, n, d, &challenge, response)
                    .unwrap_or(PinMatch::Wrong)
            });
            if matches!(auth, Auth::Ok { .. }) {
                lock(&self.pending_items).challenges.remove(&id.0);
                batch.mutations.push(Mutation::DeleteChallenge(*id));
            }
            let out = self.outcome(now_ms, e, auth, duress_ok, true, batch);
            self.persist(e, shard, slot, batch);
            Ok(out)
        })??;
        self.notify(&id.0);
        Ok(out)
    }
}
