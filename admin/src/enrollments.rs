//! Mass enrollment: many users of one service enrolled with one call and one group commit
//! ([`Tokens::enroll_batch`]), each with its own answer ([`BatchEnrolled`]): enrolled, left
//! as it is (`if_absent`: the user already has a paired token or a pending enrollment, so a
//! mass enrollment run again never invalidates a token in use), or its own error, without
//! failing the others. A pending enrollment's deeplink can be asked for again
//! ([`Tokens::enrollment_link`]) for the page that shows its QR code.

use std::collections::HashSet;
use std::time::Instant;

use zoftoken_engine::{Batch, EngineError, EnrollmentTicket, TokenState};
use zoftoken_proto::TokenId;
use zoftoken_storage::{Cf, KvError, StoreError};

use crate::error::AdminError;
use crate::tokens::{Tokens, UNSETTLED_POLL, UNSETTLED_WAIT};

/// Most usernames one batch enrollment takes.
pub const MAX_BATCH_ENROLLMENT: usize = 10_000;

/// What a batch enrollment did for one username.
#[derive(Debug)]
#[non_exhaustive]
pub enum BatchEnrolled {
    /// Enrolled: its deeplink and manual code, single use until they expire.
    Enrolled(EnrollmentTicket),
    /// Left as it was (`if_absent`).
    Skipped(Existing),
    /// Not enrolled, for this reason; the others were.
    Failed(AdminError),
}

/// What a user skipped by `if_absent` already has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Existing {
    /// A paired token (whatever its state: open, closed or blocked).
    Paired,
    /// An enrollment its app has not completed yet, still usable.
    Pending,
}

impl Existing {
    /// Its name in the API and the command line's output.
    pub fn name(self) -> &'static str {
        match self {
            Existing::Paired => "paired",
            Existing::Pending => "pending",
        }
    }
}

/// A pending enrollment's deeplink, asked for again ([`Tokens::enrollment_link`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct EnrollmentLink {
    /// The token.
    pub token_id: TokenId,
    /// `zoftoken://enroll?…`, with the service's endpoints as configured now.
    pub deeplink: zeroize::Zeroizing<String>,
    /// When the enrollment stops working (Unix ms).
    pub expires_ms: u64,
}

impl Tokens<'_> {
    /// The deeplink of the enrollment of `username` waiting for its app, read from the
    /// database (the enrollment another server made too): for showing it, or its QR code,
    /// again. [`AdminError::NoEnrollment`] if none waits: never enrolled, paired, expired, or
    /// made by a version that did not keep the link.
    pub fn enrollment_link(
        &self,
        now_ms: u64,
        service: &str,
        username: &str,
    ) -> Result<EnrollmentLink, AdminError> {
        if self.engine.service_index_of(service).is_none() {
            return Err(AdminError::UnknownService(service.to_owned()));
        }
        let none = || AdminError::NoEnrollment {
            service: service.to_owned(),
            username: username.to_owned(),
        };
        let id = TokenId::derive(service, username);
        let record = self.store.enrollment(&id)?.ok_or_else(none)?;
        if record.expires_ms <= now_ms || *record.service != *service {
            return Err(none());
        }
        let secret = record.link_secret.as_ref().ok_or_else(none)?;
        Ok(EnrollmentLink {
            token_id: id,
            deeplink: self.engine.enrollment_deeplink(service, secret)?,
            expires_ms: record.expires_ms,
        })
    }

    /// Enrolls each of `usernames` in `service` (as [`Tokens::enroll`]) in one group commit;
    /// with `if_absent`, a user who already has a paired token or a pending enrollment is
    /// skipped. The answers are in the order of `usernames`. A username given twice fails
    /// the second time. The whole call fails, writing nothing, for an unknown service, more
    /// than [`MAX_BATCH_ENROLLMENT`] usernames, or a database that cannot write.
    pub fn enroll_batch(
        &self,
        now_ms: u64,
        service: &str,
        usernames: &[String],
        if_absent: bool,
    ) -> Result<Vec<BatchEnrolled>, AdminError> {
        if self.engine.service_index_of(service).is_none() {
            return Err(AdminError::UnknownService(service.to_owned()));
        }
        if usernames.len() > MAX_BATCH_ENROLLMENT {
            return Err(AdminError::Engine(EngineError::Invalid(
                "at most 10 000 usernames per batch",
            )));
        }
        self.writable(now_ms)?;
        let ids: Vec<TokenId> = usernames
            .iter()
            .map(|u| TokenId::derive(service, u))
            .collect();
        self.load_stored(now_ms, &ids)?;
        let mut answers: Vec<Option<BatchEnrolled>> = Vec::with_capacity(usernames.len());
        let mut seen = HashSet::with_capacity(usernames.len());
        for id in &ids {
            answers.push((!seen.insert(id.0)).then(|| {
                BatchEnrolled::Failed(AdminError::Engine(EngineError::Invalid(
                    "username listed twice in the batch",
                )))
            }));
        }
        let started = Instant::now();
        loop {
            let mut batch = Batch::new();
            let mut enrolled = Vec::new();
            for (i, username) in usernames.iter().enumerate() {
                let (Some(slot), Some(id)) = (answers.get_mut(i), ids.get(i)) else {
                    continue;
                };
                if slot.is_some() {
                    continue;
                }
                if if_absent {
                    match self.existing(now_ms, id) {
                        Ok(Some(e)) => {
                            *slot = Some(BatchEnrolled::Skipped(e));
                            continue;
                        }
                        Ok(None) => {}
                        Err(AdminError::Engine(EngineError::Unsettled)) => continue,
                        Err(e) => {
                            *slot = Some(BatchEnrolled::Failed(e));
                            continue;
                        }
                    }
                }
                match self.engine.enroll(now_ms, service, username, &mut batch) {
                    Ok(ticket) => {
                        *slot = Some(BatchEnrolled::Enrolled(ticket));
                        enrolled.push(i);
                    }
                    // Another change to the token is being written: asked again below.
                    Err(EngineError::Unsettled) => {}
                    Err(e) => *slot = Some(BatchEnrolled::Failed(AdminError::Engine(e))),
                }
            }
            match self.commit(now_ms, &mut batch) {
                Ok(()) => {}
                // Another server changed one of the tokens first: nothing was written and
                // the tokens were read back; this round's enrollments are made again.
                Err(AdminError::Store(StoreError::Kv(KvError::Conflict(_))))
                    if started.elapsed() < UNSETTLED_WAIT =>
                {
                    for i in enrolled {
                        if let Some(slot) = answers.get_mut(i) {
                            *slot = None;
                        }
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
            if answers.iter().all(Option::is_some) {
                break;
            }
            if started.elapsed() >= UNSETTLED_WAIT {
                for slot in answers.iter_mut().filter(|a| a.is_none()) {
                    *slot = Some(BatchEnrolled::Failed(AdminError::Engine(
                        EngineError::Unsettled,
                    )));
                }
                break;
            }
            std::thread::sleep(UNSETTLED_POLL);
        }
        Ok(answers.into_iter().flatten().collect())
    }

    /// Loads the tokens of `ids` that are stored but not in memory (one read of their cold
    /// records, then each found one loaded), so that a user enrolled or paired before (at
    /// another server, or by a command line whose engine starts empty) is seen.
    fn load_stored(&self, now_ms: u64, ids: &[TokenId]) -> Result<(), AdminError> {
        let unknown: Vec<&TokenId> = ids
            .iter()
            .filter(|id| {
                matches!(
                    self.engine.status_by_id(now_ms, id),
                    Err(EngineError::UnknownToken)
                )
            })
            .collect();
        let keys: Vec<&[u8]> = unknown.iter().map(|id| &id.0[..]).collect();
        let stored = self
            .store
            .kv()
            .get_many(Cf::Tokens, &keys)
            .map_err(|e| AdminError::Store(e.into()))?;
        for (id, record) in unknown.into_iter().zip(stored) {
            if record.is_some() {
                self.store.load_one(self.engine, now_ms, id)?;
            }
        }
        Ok(())
    }

    /// What the user of `id` already has, if anything: a paired token, or an enrollment
    /// still usable (a re-enrollment of a paired token whose time ran out counts as none).
    fn existing(&self, now_ms: u64, id: &TokenId) -> Result<Option<Existing>, AdminError> {
        match self.engine.status_by_id(now_ms, id) {
            Ok(st) if st.state != TokenState::Pending => Ok(Some(Existing::Paired)),
            Ok(_) => {
                let usable = self
                    .store
                    .enrollment_expiry(id)?
                    .is_some_and(|expires| expires > now_ms);
                Ok(usable.then_some(Existing::Pending))
            }
            Err(EngineError::UnknownToken) => Ok(None),
            Err(e) => Err(AdminError::Engine(e)),
        }
    }
}
