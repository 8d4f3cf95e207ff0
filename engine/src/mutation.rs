//! Mutations: every state change is also a record that storage persists before the reply of
//! its packet leaves (group commit per batch of packets). The engine appends to a [`Batch`];
//! the driver commits the batch through a [`Commit`] implementation, then sends the batch's
//! replies and publishes its events with [`crate::Engine::publish`].

use std::sync::Arc;

use zoftoken_proto::{SecretBytes, TokenId};

use crate::event::Event;
use crate::state::TokenState;

/// The persistent state of a paired (or re-enrolled) token. Secrets are redacted in `Debug`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// The token.
    pub token_id: TokenId,
    /// Its service's index in the engine's list (storage persists the name, from
    /// [`crate::Engine::service_name`]; indexes are stable across reloads).
    pub service: u16,
    /// The token secret `K`.
    pub secret: SecretBytes,
    /// The PIN verifier.
    pub pin_verifier: SecretBytes,
    /// The duress verifier, if set.
    pub duress_verifier: Option<SecretBytes>,
    /// State.
    pub state: TokenState,
    /// End of the open window (Unix ms), meaningful when open.
    pub open_until_ms: u64,
    /// Consecutive failed authentications.
    pub failures: u8,
    /// Highest accepted device counter (SPEC.md §8.2).
    pub highest_counter: u64,
    /// Device clock minus server clock (SPEC.md §8.3).
    pub clock_offset_ms: i64,
    /// Last accepted one-time-code step (never accepted again).
    pub otp_last_step: u64,
    /// One-time-code drift in steps.
    pub otp_drift: i8,
    /// Last time the device was heard from (Unix ms).
    pub last_seen_ms: u64,
}

/// A pending enrollment, as storage keeps it (never the enrollment secret itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRecord {
    /// The token.
    pub token_id: TokenId,
    /// Its service's name.
    pub service: Arc<str>,
    /// The two forms (deeplink, manual code): pairing id and enrollment key material
    /// (`derive_key` outputs for device-to-server and server-to-device).
    pub forms: [([u8; 16], SecretBytes, SecretBytes); 2],
    /// When the enrollment stops being usable (Unix ms).
    pub expires_ms: u64,
}

/// One record for storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Create the token's cold record (username) at enrollment.
    TokenCreated {
        /// The token.
        token_id: TokenId,
        /// Its service.
        service: Arc<str>,
        /// The username, as enrolled.
        username: String,
    },
    /// Put the token's state.
    Token(Box<TokenRecord>),
    /// Delete the token and everything attached to it.
    DeleteToken(TokenId),
    /// Put a pending enrollment.
    Pending(Box<PendingRecord>),
    /// Remove a pending enrollment (paired, expired, or replaced).
    DeletePending(TokenId),
    /// Put a transaction.
    Transaction(Box<crate::side::Transaction>),
    /// Put the token's backup-code hashes (replacing the previous set).
    BackupCodes(TokenId, Vec<[u8; 16]>),
    /// Append an event to the webhook outbox.
    Event(Event),
}

/// The mutations and events of one batch of packets or API commands.
#[derive(Debug, Default)]
pub struct Batch {
    /// Records to persist, in order.
    pub mutations: Vec<Mutation>,
    /// Events to publish once the batch is committed.
    pub events: Vec<Event>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.mutations.is_empty() && self.events.is_empty()
    }

    pub(crate) fn event(&mut self, event: Event) {
        self.mutations.push(Mutation::Event(event.clone()));
        self.events.push(event);
    }
}

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
#[error("commit failed: {0}")]
pub struct CommitError(pub String);

/// Persists a batch atomically; returns only when it is durable.
pub trait Commit {
    /// Writes every mutation of the batch in one atomic write.
    fn commit(&mut self, mutations: &[Mutation]) -> Result<(), CommitError>;
}

/// Keeps every committed mutation in memory, for tests.
#[derive(Debug, Default)]
pub struct MemoryCommit {
    /// Everything committed, in order.
    pub log: Vec<Mutation>,
    /// Number of commits.
    pub commits: usize,
}

impl Commit for MemoryCommit {
    fn commit(&mut self, mutations: &[Mutation]) -> Result<(), CommitError> {
        self.log.extend_from_slice(mutations);
        self.commits += 1;
        Ok(())
    }
}
