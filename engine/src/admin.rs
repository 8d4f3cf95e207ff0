//! Operations for the API (PRODUCT.md "API operations") and the timers. Authorisation
//! (authkeys, masks) is the API's job; these methods trust their caller.
//!
//! Lock order, everywhere in the engine: `pending` → shard → `side`, and `rng` only as a leaf
//! (nothing else is taken while it is held). No path takes a lock earlier in that order while
//! holding a later one.

use zoftoken_proto::codes::{self, OtpParams};
use zoftoken_proto::deeplink::Deeplink;
use zoftoken_proto::keys::context;
use zoftoken_proto::pin::PinMatch;
use zoftoken_proto::{EnrollmentSecret, SecretBytes, TokenId, TokenSecret, TxState};

use crate::device::{event, Auth};
use crate::event::{Actor, EventKind};
use crate::mutation::{Batch, Mutation, PendingRecord};
use crate::side::{Challenge, Form, PendingToken, Transaction};
use crate::state::{TokenEntry, TokenKind, TokenState, TotpSecret, FLAG_TIMER, FLAG_TOTP};
use crate::{lock, Engine, EngineError, WINDOW_IDLE_MS};

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
    pub last_duress: Option<crate::DuressUse>,
}

/// An administrator's forced state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Force {
    /// Open for the service's window (no PIN).
    Open,
    /// Close; unblocks a blocked token.
    Closed,
    /// Block.
    Blocked,
}

/// The result of an offline response or a code validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfflineOutcome {
    /// Correct; the token opened (for offline responses) or the code is valid.
    Accepted {
        /// Made with the duress PIN (reported only where the service allows duress).
        duress: bool,
    },
    /// Wrong; one failure counted.
    Rejected {
        /// Failures left before blocking.
        attempts_left: u8,
    },
    /// The token is blocked; nothing was checked.
    Blocked,
}

const BACKUP_CONTEXT: &str = "zoftoken 2026-11-23 v1 backup code";
/// How long a finished (decided or expired) transaction stays readable after its expiry.
pub const TX_RETENTION_MS: u64 = 3_600_000;
/// Transactions a token may have waiting (neither decided nor expired) at once; one more is
/// refused ([`EngineError::TooManyTransactions`]). The app shows them one at a time.
pub const MAX_WAITING_TRANSACTIONS: usize = 16;
/// Transactions a token may have kept at once, waiting or finished and still readable
/// ([`TX_RETENTION_MS`]); one more is refused. Bounds the memory and start-up work one token
/// can cost, however short the transactions' timeouts.
pub const MAX_KEPT_TRANSACTIONS: usize = 256;
/// Default number of backup codes.
pub const BACKUP_CODES: usize = 10;
/// Default digits per backup code.
pub const BACKUP_DIGITS: usize = 8;

fn backup_hash(secret: &[u8; 32], code: &str) -> [u8; 16] {
    let mut h = blake3::Hasher::new_derive_key(BACKUP_CONTEXT);
    h.update(secret);
    h.update(code.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(h.finalize().as_bytes().split_at(16).0);
    out
}

impl Engine {
    fn random<const N: usize>(&self) -> [u8; N] {
        let mut b = [0u8; N];
        rand_core::RngCore::fill_bytes(&mut *lock(&self.rng), &mut b);
        b
    }

    fn service_index(&self, name: &str) -> Result<u16, EngineError> {
        self.services()
            .index_of(name)
            .ok_or(EngineError::UnknownService)
    }

    /// Checks an enrollment's username and finds its service: the services' snapshot and the
    /// service's index in it.
    fn enrollment_target(
        &self,
        service: &str,
        username: &str,
    ) -> Result<(std::sync::Arc<crate::Services>, u16), EngineError> {
        if username.is_empty() || username.len() > 1024 {
            return Err(EngineError::Invalid("username must be 1 to 1024 bytes"));
        }
        if crate::config::check_name(username).is_err() {
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

    /// Enrolls `username` in `service` (PRODUCT.md): a pending token with a deeplink and a
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
        let link_secret = EnrollmentSecret::new(self.random::<32>().to_vec());
        let manual_code = codes::manual_code(&self.random::<19>());
        let manual_secret = codes::parse_manual_code(&manual_code)
            .map_err(|_| EngineError::Invalid("manual code"))?;
        let deeplink = Deeplink {
            secret: link_secret.clone(),
            service: service.to_owned(),
            endpoints: svc.config.endpoints.clone(),
            details_url: svc.config.details_url.clone(),
        }
        .to_uri()
        .map_err(|_| EngineError::Invalid("service cannot be put in a deeplink"))?;
        let form = |e: &EnrollmentSecret| {
            let material = e.expose();
            Form {
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
                    batch
                        .mutations
                        .push(Mutation::TokenState(crate::state_record(e)));
                }
            }
        }
        lock(&self.side).forget(&id.0, batch);
        let mut pending = lock(&self.pending);
        pending.insert(
            id.0,
            PendingToken {
                service: index,
                forms: [form(&link_secret), form(&manual_secret)],
                expires_ms,
                max_init_counter: 0,
                candidate: None,
            },
        );
        batch.mutations.push(Mutation::TokenCreated {
            token_id: id,
            service: svc.name.clone(),
            username: username.to_owned(),
        });
        if let Some(r) = pending.record(&id.0, svc.name.clone()) {
            batch.mutations.push(Mutation::Pending(Box::new(r)));
        }
        // Numbered under the `pending` lock, which orders enrollments, pairings and deletions
        // of the token.
        let enrolled = crate::Event::new(EventKind::Enrolled, id, index, now_ms, Actor::Admin);
        drop(pending);
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
        let (digits, period_s) = crate::state::totp_params(svc.config.otp);
        let key = zeroize::Zeroizing::new(self.random::<{ crate::state::TOTP_KEY_LEN }>());
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
            // Lock order: pending → shard. Holding both, no pairing can complete in between.
            let mut pending = lock(&self.pending);
            let mut shard = self.shard(&id.0);
            if shard.is_unsettled(&id.0, batch) {
                batch.mutations.clear();
                return Err(EngineError::Unsettled);
            }
            shard.mark(&id.0, batch);
            if pending.remove(&id.0).is_some() {
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
                    .push(Mutation::Token(Box::new(self.record(e))));
            }
            crate::Event::new(EventKind::Enrolled, id, index, now_ms, Actor::Admin)
        };
        lock(&self.side).forget(&id.0, batch);
        batch.event(enrolled);
        self.notify(&id.0);
        Ok(TotpEnrollment {
            token_id: id,
            otpauth_uri,
            secret_base32,
        })
    }

    /// The kind of a paired token.
    fn paired_kind(&self, id: &TokenId) -> Result<TokenKind, EngineError> {
        self.with_paired(id, |e, _, _| e.kind())
    }

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
    fn status_in(
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
                duress: state == TokenState::Open
                    && duress_ok
                    && e.flags & crate::state::FLAG_OPEN_DURESS != 0,
                failures: e.failures,
                attempts_left: e.attempts_left(),
                last_seen_ms: (e.last_seen_s > 0).then_some(u64::from(e.last_seen_s) * 1000),
                last_duress: e.last_duress(),
            });
        }
        drop(shard);
        if lock(&self.pending)
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
                attempts_left: crate::state::MAX_FAILURES,
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

    /// Runs `f` on a paired token's entry (re-enrolled tokens count as not paired), reading
    /// only: [`Engine::change_paired`] for changes.
    fn with_paired<R>(
        &self,
        id: &TokenId,
        f: impl FnOnce(&mut TokenEntry, &mut crate::Shard, u32) -> R,
    ) -> Result<R, EngineError> {
        self.change_paired(id, &mut Batch::new(), |e, shard, slot, _| f(e, shard, slot))
    }

    /// Runs `f` on a paired token's entry, which may change it and append to `batch`; the
    /// token is marked unsettled for `batch` if `f` appended anything. A token with a change
    /// of another batch not yet durable is refused ([`EngineError::Unsettled`]).
    fn change_paired<R>(
        &self,
        id: &TokenId,
        batch: &mut Batch,
        f: impl FnOnce(&mut TokenEntry, &mut crate::Shard, u32, &mut Batch) -> R,
    ) -> Result<R, EngineError> {
        let mut shard = self.shard(&id.0);
        if shard.is_unsettled(&id.0, batch) {
            return Err(EngineError::Unsettled);
        }
        let Some(slot) = shard.table.find(&id.0) else {
            // Lock order is pending → shard (pairing): release the shard first.
            drop(shard);
            let pending = lock(&self.pending).by_token.contains_key(&id.0);
            return Err(if pending {
                EngineError::NotPaired
            } else {
                EngineError::UnknownToken
            });
        };
        let shard = &mut *shard;
        let mut entry = shard
            .table
            .get(slot)
            .cloned()
            .ok_or(EngineError::UnknownToken)?;
        if entry.state == TokenState::Pending {
            return Err(EngineError::NotPaired);
        }
        let before = batch.mutations.len();
        let r = f(&mut entry, shard, slot, batch);
        if let Some(e) = shard.table.get_mut(slot) {
            *e = entry;
        }
        if batch.mutations.len() > before {
            shard.mark(&id.0, batch);
        }
        Ok(r)
    }

    fn persist(&self, e: &mut TokenEntry, shard: &mut crate::Shard, slot: u32, batch: &mut Batch) {
        crate::state::schedule_expiry(&mut shard.timers, e, slot);
        batch
            .mutations
            .push(Mutation::TokenState(crate::state_record(e)));
    }

    /// Forces a token open, closed or blocked (admin). Forcing a blocked token open or closed
    /// unblocks it and resets its failures.
    pub fn force(
        &self,
        now_ms: u64,
        id: &TokenId,
        to: Force,
        batch: &mut Batch,
    ) -> Result<TokenStatus, EngineError> {
        self.change_paired(id, batch, |e, shard, slot, batch| {
            let was_blocked = e.state == TokenState::Blocked;
            match to {
                Force::Blocked => {
                    if !was_blocked {
                        e.state = TokenState::Blocked;
                        e.open_until_ms = 0;
                        batch.event(event(EventKind::Blocked, e, now_ms, Actor::Admin));
                    }
                }
                Force::Closed | Force::Open => {
                    if was_blocked {
                        e.state = TokenState::Closed;
                        e.failures = 0;
                        batch.event(event(EventKind::Unblocked, e, now_ms, Actor::Admin));
                    }
                    if to == Force::Open {
                        e.failures = 0;
                        self.open_token(now_ms, e, false, Actor::Admin, batch, &self.services());
                    } else if e.effective_state(now_ms) == TokenState::Open {
                        e.state = TokenState::Closed;
                        e.open_until_ms = 0;
                        batch.event(event(EventKind::Closed, e, now_ms, Actor::Admin));
                    }
                }
            }
            self.persist(e, shard, slot, batch);
        })?;
        self.notify(&id.0);
        self.status_in(now_ms, id, batch)
    }

    /// Deletes a token (paired or pending): its app's packets are dropped from now on.
    pub fn delete(&self, now_ms: u64, id: &TokenId, batch: &mut Batch) -> Result<(), EngineError> {
        // Lock order: pending → shard.
        let mut pending = lock(&self.pending);
        let removed = {
            let mut shard = self.shard(&id.0);
            if shard.is_unsettled(&id.0, batch) {
                return Err(EngineError::Unsettled);
            }
            let slot = shard.table.find(&id.0);
            if slot.is_some() || pending.by_token.contains_key(&id.0) {
                shard.mark(&id.0, batch);
            }
            let service = slot.and_then(|s| shard.table.get(s)).map(|e| e.service);
            if let Some(slot) = slot {
                shard.windows.remove(&slot);
                shard.presence.remove(&slot);
                shard.table.remove(&id.0);
            }
            service
        };
        // Numbered under the `pending` lock, which orders enrollments, pairings and deletions
        // of the token.
        let sequence = crate::event::next_sequence(id);
        let pending_service = pending.remove(&id.0).map(|p| p.service);
        drop(pending);
        let pending = pending_service;
        let service = removed.or(pending).ok_or(EngineError::UnknownToken)?;
        lock(&self.side).forget(&id.0, batch);
        batch.mutations.push(Mutation::DeleteToken(*id));
        let mut deleted = crate::Event::new(EventKind::Deleted, *id, service, now_ms, Actor::Admin);
        deleted.sequence = sequence;
        batch.event(deleted);
        self.notify(&id.0);
        Ok(())
    }

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

    fn outcome(
        &self,
        now_ms: u64,
        e: &mut TokenEntry,
        auth: Auth,
        duress_ok: bool,
        open: bool,
        batch: &mut Batch,
    ) -> OfflineOutcome {
        let out = match &auth {
            Auth::Ok { duress } => OfflineOutcome::Accepted {
                duress: *duress && duress_ok,
            },
            Auth::Blocked => OfflineOutcome::Blocked,
            Auth::Failed => OfflineOutcome::Rejected { attempts_left: 0 },
        };
        let duress = matches!(auth, Auth::Ok { duress: true });
        self.settle(
            now_ms,
            e,
            auth,
            duress_ok,
            Actor::Operator,
            batch,
            open,
            &self.services(),
        );
        // Opening records its own duress use (offline response); the one other duress
        // authentication here is an app one-time code (backup and TOTP codes have no duress).
        if duress && duress_ok && !open {
            crate::device::record_duress(
                e,
                now_ms,
                crate::DuressOp::OneTimeCode,
                Actor::Operator,
                None,
                batch,
            );
        }
        match out {
            OfflineOutcome::Rejected { .. } if e.state == TokenState::Blocked => {
                OfflineOutcome::Blocked
            }
            OfflineOutcome::Rejected { .. } => OfflineOutcome::Rejected {
                attempts_left: e.attempts_left(),
            },
            other => other,
        }
    }

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
        lock(&self.side).challenges.insert(
            id.0,
            Challenge {
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
            let side = lock(&self.side);
            match side.challenges.get(&id.0) {
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
            lock(&self.side).challenges.remove(&id.0);
        }
        self.notify(&id.0);
        Ok(r.0)
    }

    /// Generates `count` backup codes of `digits` digits (admin), replacing earlier ones.
    /// They are returned once; only keyed hashes are kept.
    pub fn generate_backup_codes(
        &self,
        id: &TokenId,
        count: usize,
        digits: usize,
        batch: &mut Batch,
    ) -> Result<Vec<String>, EngineError> {
        if !(1..=20).contains(&count) || !(6..=16).contains(&digits) {
            return Err(EngineError::Invalid("1 to 20 codes of 6 to 16 digits"));
        }
        let secret = self.with_paired(id, |e, _, _| e.secret)?;
        self.mark_unsettled(&id.0, batch)?;
        let mut codes_out = Vec::with_capacity(count);
        let mut hashes = Vec::with_capacity(count);
        while codes_out.len() < count {
            let random = self.random::<64>();
            let code: String = random
                .iter()
                .filter(|b| **b < 250)
                .take(digits)
                .map(|b| char::from(b'0' + b % 10))
                .collect();
            if code.len() == digits && !codes_out.contains(&code) {
                hashes.push(backup_hash(&secret, &code));
                codes_out.push(code);
            }
        }
        lock(&self.side).backup.insert(id.0, hashes.clone());
        batch.mutations.push(Mutation::BackupCodes(*id, hashes));
        Ok(codes_out)
    }

    /// Verifies a backup code (any key): each code works once; a wrong one is a failure.
    pub fn verify_backup_code(
        &self,
        now_ms: u64,
        id: &TokenId,
        code: &str,
        batch: &mut Batch,
    ) -> Result<OfflineOutcome, EngineError> {
        let code: String = code
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect();
        let services = self.services();
        let r = self.change_paired(id, batch, |e, shard, slot, batch| {
            let duress_ok = services
                .get(e.service)
                .is_some_and(|s| s.config.duress_allowed);
            let hash = backup_hash(&e.secret, &code);
            let auth = if e.state == TokenState::Blocked {
                Auth::Blocked
            } else {
                let mut side = lock(&self.side);
                let list = side.backup.get_mut(&e.id);
                let pos = list.as_ref().and_then(|l| {
                    l.iter()
                        .position(|h| bool::from(subtle::ConstantTimeEq::ct_eq(&h[..], &hash[..])))
                });
                match (list, pos) {
                    (Some(l), Some(p)) => {
                        l.swap_remove(p);
                        batch
                            .mutations
                            .push(Mutation::BackupCodes(TokenId(e.id), l.clone()));
                        Auth::Ok { duress: false }
                    }
                    _ => Auth::Failed,
                }
            };
            let out = self.outcome(now_ms, e, auth, duress_ok, false, batch);
            self.persist(e, shard, slot, batch);
            out
        })?;
        self.notify(&id.0);
        Ok(r)
    }

    /// Creates a push-approval transaction (admin): WAITING until the app approves or denies,
    /// expired after `timeout_ms`.
    pub fn create_transaction(
        &self,
        now_ms: u64,
        id: &TokenId,
        message: &str,
        timeout_ms: u64,
        batch: &mut Batch,
    ) -> Result<[u8; 16], EngineError> {
        if message.len() > zoftoken_proto::wire::TX_MESSAGE_MAX {
            return Err(EngineError::Invalid(
                "message longer than 200 bytes of UTF-8",
            ));
        }
        if !(1_000..=3_600_000).contains(&timeout_ms) {
            return Err(EngineError::Invalid("timeout must be 1 s to 1 h"));
        }
        if self.paired_kind(id)? == TokenKind::Totp {
            return Err(EngineError::NotForTotp);
        }
        {
            let side = lock(&self.side);
            if let Some(list) = side.tx_by_token.get(&id.0) {
                let waiting = list
                    .iter()
                    .filter_map(|t| side.transactions.get(t))
                    .filter(|t| t.state == TxState::Waiting && t.expires_ms > now_ms)
                    .count();
                if waiting >= MAX_WAITING_TRANSACTIONS || list.len() >= MAX_KEPT_TRANSACTIONS {
                    return Err(EngineError::TooManyTransactions);
                }
            }
        }
        // Lock order: shard (the mark) before side.
        self.mark_unsettled(&id.0, batch)?;
        let mut side = lock(&self.side);
        // `rng` is a leaf lock: taking it under `side` keeps the lock order.
        let tx_id = self.random::<16>();
        let tx = Transaction {
            tx_id,
            token_id: *id,
            message: message.to_owned(),
            created_ms: now_ms,
            expires_ms: now_ms + timeout_ms,
            state: TxState::Waiting,
            duress: false,
        };
        side.tx_by_token.entry(id.0).or_default().push_back(tx_id);
        batch
            .mutations
            .push(Mutation::Transaction(Box::new(tx.clone())));
        side.transactions.insert(tx_id, tx);
        Ok(tx_id)
    }

    /// Reads a transaction (any key).
    pub fn transaction(&self, now_ms: u64, tx_id: &[u8; 16]) -> Result<Transaction, EngineError> {
        let mut tx = lock(&self.side)
            .transactions
            .get(tx_id)
            .cloned()
            .ok_or(EngineError::UnknownTransaction)?;
        self.check_settled(&tx.token_id.0)?;
        if tx.state == TxState::Waiting && tx.expires_ms <= now_ms {
            tx.state = TxState::Expired;
        }
        Ok(tx)
    }

    /// Runs the timers at `now_ms`: ends open windows (`expired` events), expires
    /// transactions, drops expired enrollments and challenges, and collapses idle replay
    /// windows.
    pub fn tick(&self, now_ms: u64, batch: &mut Batch) {
        let mut changed = Vec::new();
        let mut deferred = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let shard = &mut *shard;
            while let Some(std::cmp::Reverse((until, slot))) = shard.timers.peek().copied() {
                if until > now_ms {
                    break;
                }
                shard.timers.pop();
                let crate::Shard {
                    table,
                    timers,
                    unsettled,
                    ..
                } = &mut *shard;
                if let Some(e) = table.get_mut(slot) {
                    if crate::settle::unsettled_for(unsettled, &e.id, batch) {
                        // Another batch's change is not yet durable: expire at a later tick.
                        deferred.push((until, slot));
                        continue;
                    }
                    e.flags &= !crate::state::FLAG_TIMER;
                    if e.state == TokenState::Open && e.open_until_ms <= now_ms {
                        crate::settle::mark_in(unsettled, &e.id, batch);
                        e.state = TokenState::Closed;
                        let mut ev = event(EventKind::Expired, e, now_ms, Actor::Timer);
                        ev.open_until_ms = Some(e.open_until_ms);
                        batch.event(ev);
                        batch
                            .mutations
                            .push(Mutation::TokenState(crate::state_record(e)));
                        changed.push(e.id);
                    } else {
                        // Reopened since: wait for the current window's end.
                        crate::state::schedule_expiry(timers, e, slot);
                    }
                }
            }
            shard
                .timers
                .extend(deferred.drain(..).map(std::cmp::Reverse));
            for id in changed.drain(..) {
                Engine::notify_in(shard, &id);
            }
            // Long polls that gave up (their receivers dropped) leave senders behind.
            shard.watchers.retain(|_, waiters| {
                waiters.retain(|w| !w.is_canceled());
                !waiters.is_empty()
            });
            let table = &mut shard.table;
            shard.windows.retain(|slot, (_, last)| {
                let keep = now_ms.saturating_sub(*last) < WINDOW_IDLE_MS;
                if !keep {
                    if let Some(e) = table.get_mut(*slot) {
                        e.flags &= !crate::state::FLAG_HAS_WINDOW;
                        e.recent = u32::MAX;
                    }
                }
                keep
            });
        }
        let mut expired_tx = Vec::new();
        {
            let mut side = lock(&self.side);
            for tx in side.transactions.values_mut() {
                if tx.state == TxState::Waiting && tx.expires_ms <= now_ms {
                    tx.state = TxState::Expired;
                    batch
                        .mutations
                        .push(Mutation::Transaction(Box::new(tx.clone())));
                    expired_tx.push((tx.token_id, tx.tx_id));
                }
            }
            side.challenges.retain(|_, c| c.expires_ms > now_ms);
            // Finished transactions stay readable for an hour after their expiry, then go.
            let old: Vec<[u8; 16]> = side
                .transactions
                .values()
                .filter(|t| t.expires_ms.saturating_add(TX_RETENTION_MS) <= now_ms)
                .map(|t| t.tx_id)
                .collect();
            // Each token's list is filtered once, however many of its transactions go.
            let mut touched = std::collections::HashSet::new();
            for id in old {
                if let Some(tx) = side.transactions.remove(&id) {
                    touched.insert(tx.token_id.0);
                    batch.mutations.push(Mutation::DeleteTransaction(id));
                }
            }
            let crate::side::Side {
                transactions,
                tx_by_token,
                ..
            } = &mut *side;
            for token in touched {
                if let Some(q) = tx_by_token.get_mut(&token) {
                    q.retain(|t| transactions.contains_key(t));
                    if q.is_empty() {
                        tx_by_token.remove(&token);
                    }
                }
            }
        }
        for (token, tx_id) in expired_tx {
            let service = {
                let shard = self.shard(&token.0);
                shard
                    .table
                    .find(&token.0)
                    .and_then(|s| shard.table.get(s))
                    .map_or(0, |e| e.service)
            };
            batch.event(
                crate::Event::new(EventKind::TxExpired, token, service, now_ms, Actor::Timer)
                    .with_tx(tx_id),
            );
        }
        let mut pending = lock(&self.pending);
        let stale: Vec<[u8; 16]> = pending
            .by_token
            .iter()
            .filter(|(_, p)| p.expires_ms <= now_ms)
            .map(|(k, _)| *k)
            .collect();
        for id in stale {
            pending.remove(&id);
            batch.mutations.push(Mutation::DeletePending(TokenId(id)));
        }
    }

    /// Loads a paired token's persisted record at start (storage rebuilds the tables).
    pub fn load_token(&self, record: &crate::TokenRecord) -> Result<(), EngineError> {
        let service = record.service;
        if self.services().get(service).is_none() {
            return Err(EngineError::UnknownService);
        }
        let secret = zeroize::Zeroizing::new(*record.secret.expose());
        let status = &record.status;
        let totp = record.kind == TokenKind::Totp;
        // A TOTP token's packet keys are random (see `enroll_totp`), never derived from its
        // secret, which its user knows.
        let (d2s, s2d) = if totp {
            (self.random::<32>(), self.random::<32>())
        } else {
            (
                blake3::derive_key(context::D2S, &*secret),
                blake3::derive_key(context::S2D, &*secret),
            )
        };
        let entry = TokenEntry {
            id: status.token_id.0,
            secret: *secret,
            d2s: zoftoken_proto::aead::PacketKey::new(d2s),
            s2d: zoftoken_proto::aead::PacketKey::new(s2d),
            pin: *record.pin_verifier.expose(),
            duress: record
                .duress_verifier
                .as_ref()
                .map_or([0; 32], |d| *d.expose()),
            highest: status.highest_counter,
            open_until_ms: status.open_until_ms,
            offset_ms: status.clock_offset_ms,
            last_seen_s: (status.last_seen_ms / 1000) as u32,
            otp_last_step: u32::try_from(status.otp_last_step).unwrap_or(u32::MAX),
            service,
            state: status.state,
            failures: status.failures,
            flags: if record.duress_verifier.is_some() {
                crate::state::FLAG_HAS_DURESS
            } else {
                0
            } | if status.open_duress {
                crate::state::FLAG_OPEN_DURESS
            } else {
                0
            } | if totp { FLAG_TOTP } else { 0 },
            otp_drift: status.otp_drift,
            version: status.version,
            recent: u32::MAX,
            duress_op: status.last_duress.map_or(0, |d| d.operation.byte()),
            duress_ms: status.last_duress.map_or(0, |d| d.time_ms),
        };
        let mut shard = self.shard(&status.token_id.0);
        let slot = match shard.table.find(&entry.id) {
            Some(slot) => {
                if let Some(e) = shard.table.get_mut(slot) {
                    *e = entry;
                }
                slot
            }
            None => self.insert_entry(&mut shard, entry),
        };
        let shard = &mut *shard;
        if let Some(e) = shard.table.get_mut(slot) {
            e.flags &= !crate::state::FLAG_TIMER;
            crate::state::schedule_expiry(&mut shard.timers, e, slot);
        }
        Ok(())
    }

    /// Loads a pending enrollment at start. An expired one is ignored (the next `tick` would
    /// drop it anyway).
    pub fn load_pending(&self, now_ms: u64, record: &PendingRecord) -> Result<(), EngineError> {
        if record.expires_ms <= now_ms {
            return Ok(());
        }
        let service = self.service_index(&record.service)?;
        let form = |(pairing_id, d2s, s2d): &([u8; 16], SecretBytes, SecretBytes)| Form {
            pairing_id: *pairing_id,
            d2s: *d2s.expose(),
            s2d: *s2d.expose(),
        };
        let [a, b] = &record.forms;
        lock(&self.pending).insert(
            record.token_id.0,
            PendingToken {
                service,
                forms: [form(a), form(b)],
                expires_ms: record.expires_ms,
                max_init_counter: 0,
                candidate: None,
            },
        );
        Ok(())
    }

    /// Loads a transaction at start (kept in creation order per token). Appending in that
    /// order costs O(1); otherwise its place is found by binary search. To load many, use
    /// [`Engine::load_transactions`].
    pub fn load_transaction(&self, tx: Transaction) {
        let mut side = lock(&self.side);
        Self::insert_loaded(&mut side, tx);
    }

    /// Loads transactions at start, in any order: sorted by creation first, so that each is
    /// appended to its token's list (O(n log n) in all).
    pub fn load_transactions(&self, mut txs: Vec<Transaction>) {
        txs.sort_unstable_by_key(|t| (t.created_ms, t.tx_id));
        let mut side = lock(&self.side);
        for tx in txs {
            Self::insert_loaded(&mut side, tx);
        }
    }

    fn insert_loaded(side: &mut crate::side::Side, tx: Transaction) {
        let order = |t: &Transaction| (t.created_ms, t.tx_id);
        let key = order(&tx);
        if let Some(old) = side.transactions.insert(tx.tx_id, tx) {
            // Loaded twice: keep one place in the list.
            if let Some(q) = side.tx_by_token.get_mut(&old.token_id.0) {
                q.retain(|t| *t != old.tx_id);
            }
        }
        let Some(token) = side.transactions.get(&key.1).map(|t| t.token_id.0) else {
            return;
        };
        let transactions = &side.transactions;
        let list = side.tx_by_token.entry(token).or_default();
        let before = |id: &[u8; 16]| transactions.get(id).is_some_and(|t| order(t) <= key);
        if list.back().is_none_or(before) {
            list.push_back(key.1);
        } else {
            let at = list.partition_point(before);
            list.insert(at, key.1);
        }
    }

    /// Loads a token's backup-code hashes at start.
    pub fn load_backup_codes(&self, id: &TokenId, hashes: Vec<[u8; 16]>) {
        if !hashes.is_empty() {
            lock(&self.side).backup.insert(id.0, hashes);
        }
    }

    /// The index of a service by name (what [`Engine::load_token`] records carry).
    pub fn service_index_of(&self, name: &str) -> Option<u16> {
        self.service_index(name).ok()
    }

    /// The name of a service by index.
    pub fn service_name(&self, index: u16) -> Option<std::sync::Arc<str>> {
        self.services().name_of(index).cloned()
    }

    /// Whether service `index` has a webhook that receives events of `kind` (storage writes
    /// only those events into the durable outbox; the others need no delivery).
    pub fn webhook_wants(&self, index: u16, kind: crate::EventKind) -> bool {
        self.services()
            .get(index)
            .and_then(|s| s.config.webhook.as_ref())
            .is_some_and(|w| w.events.is_empty() || w.events.iter().any(|e| e == kind.name()))
    }

    /// The otp parameters of a service (for the app's display and the API).
    pub fn otp_params(&self, service: &str) -> Result<OtpParams, EngineError> {
        let services = self.services();
        services
            .index_of(service)
            .and_then(|i| services.get(i))
            .map(|s| s.config.otp)
            .ok_or(EngineError::UnknownService)
    }
}
