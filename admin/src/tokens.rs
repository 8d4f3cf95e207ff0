//! Tokens: changes on an engine's tables made durable under one procedure ([`Tokens`]), and
//! the tokens as stored ([`stored_tokens`], [`stored_token`]).
//!
//! A change is refused while the database cannot write; the token is loaded first if it is
//! stored but not in memory (its service was missing at start, or the engine is a command
//! line's, built empty); it is asked again while another change to the token is still being
//! written; its batch is committed whatever the operation answered (a wrong code still
//! counts as a failure) and published only once written: a failed write restores the token
//! from the database, so nothing that was not written is ever shown. A write refused because
//! another server changed the token first (a conflict on a shared database) runs the
//! operation again on the token as read back: a one-time code accepted there is refused here.
//! On such a database, a token found missing or not yet paired is read from the database
//! once before the answer says so (another server may have paired it a moment ago).

use std::time::{Duration, Instant};

use zoftoken_engine::{
    Batch, Engine, EngineError, EnrollmentTicket, Mutation, TokenStateRecord, TotpEnrollment,
};
use zoftoken_proto::TokenId;
use zoftoken_storage::{KvError, Store, StoreError};

use crate::error::AdminError;

/// How long a change waits for a token whose change is being written by another caller
/// before it gives up with [`EngineError::Unsettled`] (a commit takes microseconds to
/// milliseconds).
pub(crate) const UNSETTLED_WAIT: Duration = Duration::from_secs(1);
pub(crate) const UNSETTLED_POLL: Duration = Duration::from_millis(2);

/// Token changes on `engine`'s tables, made durable in `store`. Blocking: an async caller
/// runs them on its blocking pool.
#[derive(Clone, Copy)]
pub struct Tokens<'a> {
    pub(crate) store: &'a Store,
    pub(crate) engine: &'a Engine,
}

impl std::fmt::Debug for Tokens<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

impl<'a> Tokens<'a> {
    /// Changes of `engine`'s tokens, written to `store`.
    pub fn new(store: &'a Store, engine: &'a Engine) -> Tokens<'a> {
        Tokens { store, engine }
    }

    /// Runs `op` on the token of `username` in `service` and commits what it changed.
    /// `op` may run more than once (while another change to the token is being written).
    pub fn change<R>(
        &self,
        now_ms: u64,
        service: &str,
        username: &str,
        mut op: impl FnMut(&Engine, u64, &TokenId, &mut Batch) -> Result<R, EngineError>,
    ) -> Result<R, AdminError> {
        self.durably(now_ms, service, username, |id, batch| {
            Ok(op(self.engine, now_ms, id, batch)?)
        })
    }

    /// Enrolls a user with our app: the deeplink and the manual code, single use.
    pub fn enroll(
        &self,
        now_ms: u64,
        service: &str,
        username: &str,
    ) -> Result<EnrollmentTicket, AdminError> {
        self.change(now_ms, service, username, |e, now, _, batch| {
            e.enroll(now, service, username, batch)
        })
    }

    /// Enrolls a user with a standard authenticator app (RFC 6238): its secret, once.
    pub fn enroll_totp(
        &self,
        now_ms: u64,
        service: &str,
        username: &str,
    ) -> Result<TotpEnrollment, AdminError> {
        self.change(now_ms, service, username, |e, now, _, batch| {
            e.enroll_totp(now, service, username, batch)
        })
    }

    /// Deletes a token and everything of it (its app stops working); returns its id.
    pub fn delete(
        &self,
        now_ms: u64,
        service: &str,
        username: &str,
    ) -> Result<TokenId, AdminError> {
        self.durably(now_ms, service, username, |id, batch| {
            match self.engine.delete(now_ms, id, batch) {
                Ok(()) => {}
                // Stored but neither paired nor pending (an expired enrollment): remove the
                // rest.
                Err(EngineError::UnknownToken) if self.store.token_info(id)?.is_some() => {
                    batch.mutations.push(Mutation::DeleteToken(*id))
                }
                Err(e) => return Err(e.into()),
            }
            Ok(*id)
        })
    }

    /// The procedure of every change (see the module's documentation).
    fn durably<R>(
        &self,
        now_ms: u64,
        service: &str,
        username: &str,
        mut op: impl FnMut(&TokenId, &mut Batch) -> Result<R, AdminError>,
    ) -> Result<R, AdminError> {
        let named = |e: AdminError| match e {
            AdminError::Engine(EngineError::UnknownService) => {
                AdminError::UnknownService(service.to_owned())
            }
            AdminError::Engine(EngineError::UnknownToken) => AdminError::UnknownToken {
                service: service.to_owned(),
                username: username.to_owned(),
            },
            e => e,
        };
        if self.engine.service_index_of(service).is_none() {
            return Err(AdminError::UnknownService(service.to_owned()));
        }
        self.writable(now_ms)?;
        let id = TokenId::derive(service, username);
        self.ensure_loaded(now_ms, &id)?;
        let started = Instant::now();
        let mut refreshed = false;
        loop {
            let mut batch = Batch::new();
            let r = op(&id, &mut batch);
            // A failed operation may still have counted a failure: commit what it changed.
            match self.commit(now_ms, &mut batch) {
                // Another server changed the token first: nothing was written, the token was
                // read again; the operation runs again on what the database holds.
                Err(AdminError::Store(StoreError::Kv(KvError::Conflict(_))))
                    if started.elapsed() < UNSETTLED_WAIT =>
                {
                    continue
                }
                other => other?,
            }
            match r {
                Err(AdminError::Engine(EngineError::Unsettled))
                    if started.elapsed() < UNSETTLED_WAIT =>
                {
                    std::thread::sleep(UNSETTLED_POLL)
                }
                // Another server may have paired or enrolled it (or made its offline
                // challenge) a moment ago, before this one's memory followed: read it from
                // the database once and ask again (after the follower's own read of it, if
                // that is under way).
                Err(AdminError::Engine(
                    EngineError::UnknownToken | EngineError::NotPaired | EngineError::NoChallenge,
                )) if !refreshed
                    && self.store.kv().is_shared()
                    && started.elapsed() < UNSETTLED_WAIT =>
                {
                    if self.store.refresh_token(self.engine, now_ms, &id)? {
                        refreshed = true;
                    } else {
                        std::thread::sleep(UNSETTLED_POLL)
                    }
                }
                r => return r.map_err(named),
            }
        }
    }

    /// Refuses a change up front while the database cannot write (after trying whether it
    /// can again: a small write).
    pub(crate) fn writable(&self, now_ms: u64) -> Result<(), AdminError> {
        let health = self.store.health();
        if !health.writable() {
            self.store.probe(self.engine, now_ms);
        }
        if health.writable() {
            Ok(())
        } else {
            Err(AdminError::StorageUnavailable)
        }
    }

    /// Loads a token that is stored but not in memory. A loaded token costs no storage read.
    fn ensure_loaded(&self, now_ms: u64, id: &TokenId) -> Result<(), AdminError> {
        if matches!(
            self.engine.status_by_id(now_ms, id),
            Err(EngineError::UnknownToken)
        ) && self.store.token_info(id)?.is_some()
        {
            self.store.load_one(self.engine, now_ms, id)?;
        }
        Ok(())
    }

    /// Commits the batch: the engine publishes it only once written; a failed write publishes
    /// nothing and restores the batch's tokens from the database ([`Store::commit_batch`]).
    pub(crate) fn commit(&self, now_ms: u64, batch: &mut Batch) -> Result<(), AdminError> {
        if !batch.is_empty() {
            self.store.commit_batch(self.engine, now_ms, batch)?;
        }
        Ok(())
    }
}

/// A token as stored: its names, its state record (none while pending) and its pending
/// enrollment's expiry. No secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredToken {
    /// The token id.
    pub token_id: TokenId,
    /// The service.
    pub service: String,
    /// The username.
    pub username: String,
    /// Its state (`None`: enrolled, not paired yet).
    pub state: Option<TokenStateRecord>,
    /// When its pending enrollment expires (Unix ms), if one is pending.
    pub enrollment_expires_ms: Option<u64>,
}

impl StoredToken {
    fn read(store: &Store, id: TokenId, service: &str, username: &str) -> Result<Self, AdminError> {
        Ok(StoredToken {
            token_id: id,
            service: service.to_owned(),
            username: username.to_owned(),
            state: store.token_state(&id)?,
            enrollment_expires_ms: store.enrollment_expiry(&id)?,
        })
    }
}

/// Every stored token, or those of one service, in the database's order.
pub fn stored_tokens(store: &Store, service: Option<&str>) -> Result<Vec<StoredToken>, AdminError> {
    let mut rows = Vec::new();
    let mut failed = None;
    store.for_each_token(&mut |id, s, u| {
        if service.is_some_and(|want| want != s) {
            return true;
        }
        match StoredToken::read(store, id, s, u) {
            Ok(t) => {
                rows.push(t);
                true
            }
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(rows),
    }
}

/// The stored token of `username` in `service`.
pub fn stored_token(
    store: &Store,
    service: &str,
    username: &str,
) -> Result<StoredToken, AdminError> {
    let id = TokenId::derive(service, username);
    if store.token_info(&id)?.is_none() {
        return Err(AdminError::UnknownToken {
            service: service.to_owned(),
            username: username.to_owned(),
        });
    }
    StoredToken::read(store, id, service, username)
}
