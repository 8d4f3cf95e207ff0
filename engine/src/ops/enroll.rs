//! Enrollments: an app token (a pending token with a deeplink and a manual code, single use,
//! until its app pairs) and a standard authenticator (TOTP) token (its secret handed out once,
//! usable at once). Enrolling an existing token again replaces it.

use std::sync::Arc;

use zoftoken_proto::codes;
use zoftoken_proto::deeplink::Deeplink;
use zoftoken_proto::keys::context;
use zoftoken_proto::{EnrollmentSecret, SecretBytes, TokenId};

use crate::config::check_name;
use crate::event::{Actor, Event, EventKind};
use crate::mutation::{state_record, token_record, Batch, Mutation};
use crate::pending::{EnrollmentForm, PendingEnrollment};
use crate::services::{Service, Services};
use crate::state::{
    totp_params, TokenEntry, TokenState, TotpSecret, FLAG_TIMER, FLAG_TOTP, TOTP_KEY_LEN,
};
use crate::{lock, Engine, EngineError};

/// What an enrollment hands out (all single use, expiring).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrollmentTicket {
    /// The token.
    pub token_id: TokenId,
    /// `zoftoken://enroll?…` (also the QR code's content).
    pub deeplink: String,
    /// The manual one-time code, `XXXX-XXXX-XXXX-XXXX-XXXX`.
    pub manual_code: String,
    /// When both stop working (Unix ms).
    pub expires_ms: u64,
}

/// What a standard authenticator (TOTP) enrollment hands out: the secret, once. The token is
/// usable at once (closed); nothing expires.
#[derive(Clone)]
pub struct TotpEnrollment {
    /// The token.
    pub token_id: TokenId,
    /// `otpauth://totp/<issuer>:<account>?secret=<BASE32>&issuer=<issuer>&algorithm=SHA1&digits=<d>&period=<p>`
    /// (the QR code's content), with the service's name as issuer and the username as account,
    /// both percent-encoded (SPEC.md §10.5).
    pub otpauth_uri: zeroize::Zeroizing<String>,
    /// The secret in base32 (no padding), for manual entry.
    pub secret_base32: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for TotpEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpEnrollment")
            .field("token_id", &self.token_id)
            .field("otpauth_uri", &"<redacted>")
            .field("secret_base32", &"<redacted>")
            .finish()
    }
}

/// The deeplink of an enrollment secret in `svc`, with the service's endpoints and details
/// URL as configured now.
fn svc_deeplink(svc: &Service, secret: &SecretBytes) -> Result<String, EngineError> {
    Deeplink {
        secret: EnrollmentSecret::new(secret.expose().to_vec()),
        service: svc.name.to_string(),
        endpoints: svc.config.endpoints.clone(),
        details_url: svc.config.details_url.clone(),
    }
    .to_uri()
    .map_err(|_| EngineError::Invalid("service cannot be put in a deeplink"))
}

impl Engine {
    /// The deeplink of a kept enrollment secret (`PendingRecord::link_secret`) in `service`,
    /// with the service's endpoints and details URL as configured now: the link handed out
    /// when the enrollment was made, unless the service's endpoints changed since.
    pub fn enrollment_deeplink(
        &self,
        service: &str,
        secret: &SecretBytes,
    ) -> Result<zeroize::Zeroizing<String>, EngineError> {
        let services = self.services();
        let index = services
            .index_of(service)
            .ok_or(EngineError::UnknownService)?;
        let svc = services.get(index).ok_or(EngineError::UnknownService)?;
        svc_deeplink(svc, secret).map(zeroize::Zeroizing::new)
    }

    /// Checks an enrollment's username and finds its service: the services' snapshot and the
    /// service's index in it.
    fn enrollment_target(
        &self,
        service: &str,
        username: &str,
    ) -> Result<(Arc<Services>, u16), EngineError> {
        if username.is_empty() || username.len() > 1024 {
            return Err(EngineError::Invalid("username must be 1 to 1024 bytes"));
        }
        if check_name(username).is_err() {
            return Err(EngineError::Invalid(
                "username must not contain control characters",
            ));
        }
        let services = self.services();
        let index = services
            .index_of(service)
            .ok_or(EngineError::UnknownService)?;
        Ok((services, index))
    }

    /// Enrolls `username` in `service` (`docs/product.md`): a pending token with a deeplink and a
    /// manual code, both single use until `expires_ms`. Enrolling a paired token again
    /// re-enrolls it: its app gets NOT_PAIRED until the new pairing completes.
    pub fn enroll(
        &self,
        now_ms: u64,
        service: &str,
        username: &str,
        batch: &mut Batch,
    ) -> Result<EnrollmentTicket, EngineError> {
        let (services, index) = self.enrollment_target(service, username)?;
        let svc = services.get(index).ok_or(EngineError::UnknownService)?;
        let id = TokenId::derive(service, username);
        let link_bytes = SecretBytes::new(self.random::<32>());
        let link_secret = EnrollmentSecret::new(link_bytes.expose().to_vec());
        let manual_code = codes::manual_code(&self.random::<19>());
        let manual_secret = codes::parse_manual_code(&manual_code)
            .map_err(|_| EngineError::Invalid("manual code"))?;
        let deeplink = svc_deeplink(svc, &link_bytes)?;
        let form = |e: &EnrollmentSecret| {
            let material = e.expose();
            EnrollmentForm {
                pairing_id: e.keys().pairing_id,
                d2s: blake3::derive_key(context::ENROLLMENT_D2S, material),
                s2d: blake3::derive_key(context::ENROLLMENT_S2D, material),
            }
        };
        let expires_ms = now_ms + self.enrollment_ttl_ms;
        {
            let mut shard = self.shard(&id.0);
            if shard.is_unsettled(&id.0, batch) {
                return Err(EngineError::Unsettled);
            }
            shard.mark(&id.0, batch);
            if let Some(slot) = shard.table.find(&id.0) {
                if let Some(e) = shard.table.get_mut(slot) {
                    e.state = TokenState::Pending;
                    e.open_until_ms = 0;
                    e.failures = 0;
                    batch.mutations.push(Mutation::TokenState(state_record(e)));
                }
            }
        }
        lock(&self.pending_items).forget(&id.0, batch);
        let mut enrollments = lock(&self.enrollments);
        enrollments.insert(
            id.0,
            PendingEnrollment {
                service: index,
                forms: [form(&link_secret), form(&manual_secret)],
                expires_ms,
                max_init_counter: 0,
                candidate: None,
                link_secret: Some(link_bytes),
            },
        );
        batch.mutations.push(Mutation::TokenCreated {
            token_id: id,
            service: svc.name.clone(),
            username: username.to_owned(),
        });
        if let Some(r) = enrollments.record(&id.0, svc.name.clone()) {
            batch.mutations.push(Mutation::Pending(Box::new(r)));
        }
        // Numbered under the `enrollments` lock, which orders enrollments, pairings and
        // deletions of the token.
        let enrolled = Event::new(EventKind::Enrolled, id, index, now_ms, Actor::Admin);
        drop(enrollments);
        batch.event(enrolled);
        self.notify(&id.0);
        Ok(EnrollmentTicket {
            token_id: id,
            deeplink,
            manual_code,
            expires_ms,
        })
    }

    /// Enrolls `username` in `service` as a standard authenticator (RFC 6238 TOTP) token
    /// (SPEC.md §10.5): a fresh 160-bit secret, handed out once as an `otpauth://` URI and in
    /// base32. The token is usable at once (closed); it never opens by itself (no app, no
    /// PIN). Digits and period follow the service's one-time-code settings where an
    /// authenticator app can ([`crate::state::totp_params`]: else 6 digits every 30 s) and are
    /// fixed for the token's life.
    ///
    /// Enrolling an existing token again replaces it, as [`Engine::enroll`] does: the old
    /// secret (app or TOTP) stops working at once, failures are reset, its transactions,
    /// offline challenge and backup codes are forgotten and a pending app enrollment is
    /// withdrawn.
    pub fn enroll_totp(
        &self,
        now_ms: u64,
        service: &str,
        username: &str,
        batch: &mut Batch,
    ) -> Result<TotpEnrollment, EngineError> {
        use zoftoken_proto::totp::{self, TotpAlgorithm, TotpParams};
        let (services, index) = self.enrollment_target(service, username)?;
        let svc = services.get(index).ok_or(EngineError::UnknownService)?;
        let id = TokenId::derive(service, username);
        let (digits, period_s) = totp_params(svc.config.otp);
        let key = zeroize::Zeroizing::new(self.random::<{ TOTP_KEY_LEN }>());
        let params = TotpParams {
            digits,
            period_s: u32::from(period_s),
            algorithm: TotpAlgorithm::Sha1,
        };
        let otpauth_uri =
            zeroize::Zeroizing::new(totp::otpauth_uri(service, username, key.as_slice(), params));
        let secret_base32 = zeroize::Zeroizing::new(totp::base32_encode(key.as_slice()));
        // Nothing can authenticate as a TOTP token on the UDP path (its packets are dropped
        // first); its packet keys are random all the same, unrelated to the secret.
        let d2s = zoftoken_proto::aead::PacketKey::new(self.random::<32>());
        let s2d = zoftoken_proto::aead::PacketKey::new(self.random::<32>());
        let entry = TokenEntry {
            id: id.0,
            secret: TotpSecret::pack(&key, digits, period_s),
            d2s,
            s2d,
            pin: [0; 32],
            duress: [0; 32],
            highest: 0,
            open_until_ms: 0,
            offset_ms: 0,
            last_seen_s: 0,
            otp_last_step: 0,
            service: index,
            state: TokenState::Closed,
            failures: 0,
            flags: FLAG_TOTP,
            otp_drift: 0,
            version: 0,
            recent: u32::MAX,
            duress_op: 0,
            duress_ms: 0,
        };
        batch.mutations.push(Mutation::TokenCreated {
            token_id: id,
            service: svc.name.clone(),
            username: username.to_owned(),
        });
        let enrolled = {
            // Lock order: enrollments → shard. Holding both, no pairing can complete in between.
            let mut enrollments = lock(&self.enrollments);
            let mut shard = self.shard(&id.0);
            if shard.is_unsettled(&id.0, batch) {
                batch.mutations.clear();
                return Err(EngineError::Unsettled);
            }
            shard.mark(&id.0, batch);
            if enrollments.remove(&id.0).is_some() {
                batch.mutations.push(Mutation::DeletePending(id));
            }
            let shard = &mut *shard;
            let slot = match shard.table.find(&id.0) {
                Some(slot) => {
                    if let Some(e) = shard.table.get_mut(slot) {
                        // The versions continue, so that the new record is newer than
                        // anything stored for the old token; an expiry timer already in the
                        // heap for this slot stays accounted for.
                        let (version, timer) = (e.version, e.flags & FLAG_TIMER);
                        let duress = e.last_duress();
                        *e = entry;
                        e.version = version;
                        e.flags |= timer;
                        // A duress use stays reported until the token is deleted.
                        e.set_last_duress(duress);
                    }
                    slot
                }
                None => self.insert_entry(shard, entry),
            };
            shard.windows.remove(&slot);
            shard.presence.remove(&slot);
            if let Some(e) = shard.table.get_mut(slot) {
                batch
                    .mutations
                    .push(Mutation::Token(Box::new(token_record(e))));
            }
            Event::new(EventKind::Enrolled, id, index, now_ms, Actor::Admin)
        };
        lock(&self.pending_items).forget(&id.0, batch);
        batch.event(enrolled);
        self.notify(&id.0);
        Ok(TotpEnrollment {
            token_id: id,
            otpauth_uri,
            secret_base32,
        })
    }
}
