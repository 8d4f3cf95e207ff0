//! One-time codes validated through the API: an app token's codes (SPEC.md §10.3, PIN-bound,
//! duress reported) and a TOTP token's RFC 6238 codes (§10.5).

use zoftoken_proto::codes::{self, OtpParams};
use zoftoken_proto::pin::PinMatch;
use zoftoken_proto::{TokenId, TokenSecret};

use crate::auth::Auth;
use crate::mutation::Batch;
use crate::state::{TokenEntry, TokenState, TotpSecret, FLAG_TOTP};
use crate::{Engine, EngineError};

use super::outcome::OfflineOutcome;

impl Engine {
    /// Validates a one-time code (SPEC.md §10.3 for app tokens, §10.5 for TOTP tokens): never
    /// accepted twice, nor a code of a step at or before the last accepted one; the current
    /// step (plus the tracked drift) ± 1 is accepted and the drift follows; a wrong code is a
    /// failure (three in a row block), a correct one resets the failures. A replayed code is
    /// a wrong code, so it counts as a failure too, as for app codes.
    pub fn validate_code(
        &self,
        now_ms: u64,
        id: &TokenId,
        code: &str,
        batch: &mut Batch,
    ) -> Result<OfflineOutcome, EngineError> {
        let services = self.services();
        let r = self.change_paired(id, batch, |e, shard, slot, batch| {
            if e.flags & FLAG_TOTP != 0 {
                let auth = Self::check_totp(now_ms, e, code);
                let out = self.outcome(now_ms, e, auth, false, false, batch);
                self.persist(e, shard, slot, batch);
                return out;
            }
            let svc = services.get(e.service);
            let params = svc.map_or(OtpParams::default(), |s| s.config.otp);
            let duress_ok = svc.is_some_and(|s| s.config.duress_allowed);
            let secret = TokenSecret::from_bytes(e.secret);
            let keys = secret.keys();
            let last = (e.otp_last_step > 0).then_some(u64::from(e.otp_last_step));
            let (offset, drift) = (e.offset_ms, e.otp_drift);
            let found = std::cell::Cell::new(None);
            let auth = self.authenticate(e, |n, d| {
                let m = codes::otp_verify_drifted(
                    &keys.otp, n, d, params, code, now_ms, offset, drift, last,
                );
                found.set(m);
                m.map_or(PinMatch::Wrong, |a| a.pin)
            });
            if let (Auth::Ok { .. }, Some(a)) = (&auth, found.get()) {
                e.otp_last_step = u32::try_from(a.step).unwrap_or(u32::MAX);
                e.otp_drift = a.drift;
            }
            let out = self.outcome(now_ms, e, auth, duress_ok, false, batch);
            self.persist(e, shard, slot, batch);
            out
        })?;
        self.notify(&id.0);
        Ok(r)
    }

    /// Checks a TOTP code (SPEC.md §10.5) against the steps `b + d − 1 ..= b + d + 1` (`b` the
    /// current step, `d` the tracked drift), above the last accepted step; on a match records
    /// that step and the new drift `m − b`.
    fn check_totp(now_ms: u64, e: &mut TokenEntry, code: &str) -> Auth {
        use zoftoken_proto::totp::{totp_verify_around, TotpAlgorithm, TotpParams};
        if e.state == TokenState::Blocked {
            return Auth::Blocked;
        }
        let (digits, period_s) = TotpSecret::params(&e.secret);
        let params = TotpParams {
            digits,
            period_s: u32::from(period_s),
            algorithm: TotpAlgorithm::Sha1,
        };
        let base = params.step(now_ms / 1000);
        let expected = base.saturating_add_signed(i64::from(e.otp_drift));
        let last = (e.otp_last_step > 0).then_some(u64::from(e.otp_last_step));
        match totp_verify_around(TotpSecret::key(&e.secret), code, expected, params, 1, last) {
            Some(step) => {
                e.otp_last_step = u32::try_from(step).unwrap_or(u32::MAX);
                e.otp_drift = i8::try_from(step as i64 - base as i64).unwrap_or(0);
                Auth::Ok { duress: false }
            }
            None => Auth::Failed,
        }
    }
}
