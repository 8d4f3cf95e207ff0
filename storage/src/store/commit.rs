//! Committing: engine mutations become one atomic write, with one outbox record for the
//! events a webhook receives ([`ServiceNames::outbox_wants`]) and, when the events' numbers
//! reach the durable floor, a higher floor record. After a successful write with events the
//! outbox watermark rises ([`crate::OutboxWatermark`]).
//!
//! [`StoreWrite`] is the store as the engine's [`DurableWrite`]: what
//! [`Engine::commit`](zoftoken_engine::Engine::commit) runs before it publishes a batch.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use zoftoken_engine::{DurableWrite, Engine, EventKind, Mutation};
use zoftoken_proto::TokenId;

use crate::error::StoreError;
use crate::kv::{Cf, Durability, KvError, WriteBatch};
use crate::schema::{self, meta, Secrets};
use crate::Store;

/// Event sequence numbers reserved by one floor record beyond the highest one written.
const EVENT_FLOOR_STEP: u64 = 1 << 20;

/// The username of `token` if one of `batches` creates it.
fn created_in<'a>(batches: &[&'a [Mutation]], token: &TokenId) -> Option<&'a str> {
    batches.iter().flat_map(|b| b.iter()).find_map(|m| match m {
        Mutation::TokenCreated {
            token_id, username, ..
        } if token_id == token => Some(username.as_ref()),
        _ => None,
    })
}

/// Names of services by engine index (the engine's [`Engine::service_name`]).
pub trait ServiceNames {
    /// The name of service `index`.
    fn service_name(&self, index: u16) -> Option<Arc<str>>;

    /// Whether events of `kind` of service `index` go into the outbox, i.e. whether the
    /// service has a webhook that receives them (default: every event).
    fn outbox_wants(&self, index: u16, kind: EventKind) -> bool {
        let _ = (index, kind);
        true
    }
}

impl ServiceNames for Engine {
    fn service_name(&self, index: u16) -> Option<Arc<str>> {
        Engine::service_name(self, index)
    }

    fn outbox_wants(&self, index: u16, kind: EventKind) -> bool {
        self.webhook_wants(index, kind)
    }
}

/// The store as the engine's durable write ([`Store::durable_write`]): each
/// [`DurableWrite::write`] is one [`Store::commit_group`].
pub struct StoreWrite<'a> {
    store: &'a Store,
    names: &'a dyn ServiceNames,
    durability: Durability,
}

impl DurableWrite for StoreWrite<'_> {
    type Error = StoreError;

    fn write(&mut self, batches: &[&[Mutation]]) -> Result<u64, StoreError> {
        self.store
            .commit_group(batches, self.names, self.durability)
    }
}

impl Store {
    /// This store as the engine's [`DurableWrite`], writing with `durability`: hand it to
    /// [`Engine::commit`](zoftoken_engine::Engine::commit) (or `commit_group`), which
    /// publishes a batch only once this wrote it. ([`Store::commit_batch`] does that and
    /// restores the tokens of a batch that could not be written.)
    pub fn durable_write<'a>(
        &'a self,
        names: &'a dyn ServiceNames,
        durability: Durability,
    ) -> StoreWrite<'a> {
        StoreWrite {
            store: self,
            names,
            durability,
        }
    }

    /// Writes a batch of engine mutations in one atomic write, with the batch's events that a
    /// webhook receives ([`ServiceNames::outbox_wants`]; one outbox record per 65 535 events).
    /// Returns the (last) outbox sequence number used, or 0 when the batch had no event.
    /// Sequence numbers are unique (among every writer of a shared database too) and increase
    /// in the order this store's commits start; two concurrent commits may become visible in
    /// either order, and a failed commit leaves a gap.
    ///
    /// A raw write: it publishes nothing on the engine (its tokens stay unsettled, its events
    /// uncounted); [`Store::commit_batch`] and [`Store::durable_write`] are the ways to commit
    /// an engine batch.
    pub fn commit(
        &self,
        mutations: &[Mutation],
        names: &dyn ServiceNames,
    ) -> Result<u64, StoreError> {
        self.commit_with(mutations, names, self.durability)
    }

    /// As [`Store::commit`] with another durability than the configured one (benchmarks
    /// compare both on one database).
    pub fn commit_with(
        &self,
        mutations: &[Mutation],
        names: &dyn ServiceNames,
        durability: Durability,
    ) -> Result<u64, StoreError> {
        self.commit_group(&[mutations], names, durability)
    }

    /// Writes several batches of engine mutations, in order, in one atomic write with one
    /// outbox record for all their events: the group commit of [`crate::Committer`]. Returns
    /// as [`Store::commit`]; once written with events, raises the outbox watermark
    /// ([`Store::outbox_watermark`]) to the returned number and wakes its waiters.
    pub fn commit_group(
        &self,
        batches: &[&[Mutation]],
        names: &dyn ServiceNames,
        durability: Durability,
    ) -> Result<u64, StoreError> {
        let records: usize = batches.iter().map(|b| b.len()).sum();
        if records == 0 {
            return Ok(0);
        }
        let mut b = WriteBatch::with_capacity(records * 80);
        let mut events = Vec::new();
        for m in batches.iter().flat_map(|b| b.iter()) {
            match m {
                Mutation::TokenCreated {
                    token_id,
                    service,
                    username,
                } => b.put(
                    Cf::Tokens,
                    token_id.0,
                    schema::encode_info(service, username),
                ),
                Mutation::Token(r) => {
                    let service =
                        names
                            .service_name(r.service)
                            .ok_or(StoreError::Invalid(format!(
                                "service index {} unknown",
                                r.service
                            )))?;
                    let secrets = Secrets {
                        kind: r.kind,
                        service: service.to_string(),
                        secret: r.secret.clone(),
                        pin_verifier: r.pin_verifier.clone(),
                        duress_verifier: r.duress_verifier.clone(),
                    };
                    let id = r.token_id();
                    b.put(
                        Cf::Secrets,
                        id.0,
                        schema::encode_secrets(&self.key, &id, &secrets),
                    );
                    b.put_newer(Cf::State, id.0, schema::encode_state(&r.status));
                }
                Mutation::TokenState(s) => {
                    b.put_newer_with(Cf::State, s.token_id.0, |v| schema::encode_state_into(s, v))
                }
                Mutation::DeleteToken(id) => {
                    for cf in [
                        Cf::Tokens,
                        Cf::Secrets,
                        Cf::State,
                        Cf::Enrollments,
                        Cf::BackupCodes,
                        Cf::OfflineChallenges,
                    ] {
                        b.delete(cf, id.0);
                    }
                }
                Mutation::Pending(p) => b.put(
                    Cf::Enrollments,
                    p.token_id.0,
                    schema::encode_pending(&self.key, p),
                ),
                Mutation::DeletePending(id) => b.delete(Cf::Enrollments, id.0),
                Mutation::Transaction(t) => b.put(
                    Cf::Transactions,
                    t.tx_id,
                    schema::encode_transaction(&self.key, t),
                ),
                Mutation::DeleteTransaction(id) => b.delete(Cf::Transactions, *id),
                Mutation::Challenge(c) => b.put(
                    Cf::OfflineChallenges,
                    c.token_id.0,
                    schema::encode_challenge(&self.key, c),
                ),
                Mutation::DeleteChallenge(id) => b.delete(Cf::OfflineChallenges, id.0),
                Mutation::BackupCodes(id, hashes) if hashes.is_empty() => {
                    b.delete(Cf::BackupCodes, id.0)
                }
                Mutation::BackupCodes(id, hashes) => b.put(
                    Cf::BackupCodes,
                    id.0,
                    schema::encode_backup(&self.key, id, hashes),
                ),
                // Only events some webhook will deliver are kept: the outbox exists for them.
                Mutation::Event(e) if names.outbox_wants(e.service, e.kind) => events.push(e),
                Mutation::Event(_) => {}
            }
        }
        // One outbox record per 65 535 events (its count is a u16): a timer tick that expires
        // more tokens than that at once writes several records, in the same atomic write.
        // Numbers at or above the durable floor: this write raises it (a record of its own, so
        // that a concurrent commit written later with lower numbers cannot lower it). The
        // in-memory floor rises only once the write succeeded.
        let highest = events.iter().map(|e| e.sequence).max();
        let raised = highest
            .filter(|h| *h >= self.event_floor.load(Ordering::Acquire))
            .map(|h| h.saturating_add(EVENT_FLOOR_STEP));
        if let Some(f) = raised {
            b.put(Cf::Meta, meta::event_floor_key(f), []);
        }
        let mut seq = 0;
        for chunk in events.chunks(usize::from(u16::MAX)) {
            let mut v = schema::outbox_header(u16::try_from(chunk.len()).unwrap_or(u16::MAX));
            for e in chunk {
                let service = names.service_name(e.service);
                // The username of a deleted token is gone once this batch is written: from
                // the database, or from this group if the token was created in it.
                let username = if e.kind == EventKind::Deleted {
                    match created_in(batches, &e.token_id) {
                        Some(u) => Some(u.to_owned()),
                        None => self
                            .kv
                            .get(Cf::Tokens, &e.token_id.0)?
                            .and_then(|v| schema::decode_info(&v))
                            .map(|(_, u)| u),
                    }
                } else {
                    None
                };
                schema::push_event(
                    &mut v,
                    e,
                    service.as_deref().unwrap_or(""),
                    username.as_deref(),
                );
            }
            seq = match self.take_outbox_seq() {
                Ok(s) => s,
                Err(e) => {
                    self.health.write_failed(&e);
                    return Err(e);
                }
            };
            b.put(Cf::Outbox, seq.to_be_bytes(), v);
        }
        match self.kv.write(&b, durability) {
            Ok(()) => {
                self.health.write_ok();
                if let Some(f) = raised {
                    self.event_floor.fetch_max(f, Ordering::AcqRel);
                }
                if seq > 0 {
                    self.outbox_watermark.advance(seq);
                }
                Ok(seq)
            }
            Err(KvError::Conflict(source)) => {
                self.health.write_conflicted();
                Err(StoreError::Kv(KvError::Conflict(source)))
            }
            Err(e) => {
                let e = StoreError::from(e);
                self.health.write_failed(&e);
                Err(e)
            }
        }
    }
}
