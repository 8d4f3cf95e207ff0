//! Mutations: every state change is also a record that storage persists before the reply of
//! its packet leaves (group commit per batch of packets). The engine appends to a [`Batch`];
//! the driver commits the batch with [`crate::Engine::commit`] (the write, then the publish),
//! then sends the batch's replies.

use std::collections::HashSet;
use std::sync::Arc;

use zoftoken_proto::{SecretBytes, TokenId};

use crate::event::Event;
use crate::shard::MixState;
use crate::state::{TokenEntry, TokenState};
use crate::transaction::Transaction;

/// The persistent record of a paired (or re-enrolled) token: its secrets and its state.
/// Secrets are redacted in `Debug`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// App or standard authenticator (TOTP). For a TOTP token, `secret` holds its HMAC key and
    /// TOTP parameters and both verifiers are zero (see the engine's `state` module).
    pub kind: crate::state::TokenKind,
    /// Its service's index in the engine's list (storage persists the name, from
    /// [`crate::Engine::service_name`]; indexes are stable across reloads).
    pub service: u16,
    /// The token secret `K`.
    pub secret: SecretBytes,
    /// The PIN verifier.
    pub pin_verifier: SecretBytes,
    /// The duress verifier, if set.
    pub duress_verifier: Option<SecretBytes>,
    /// Everything else (the token id included).
    pub status: TokenStateRecord,
}

impl TokenRecord {
    /// The token.
    pub fn token_id(&self) -> TokenId {
        self.status.token_id
    }

    /// Applies a later state update to a full record (replaying a mutation log).
    pub fn apply_state(&mut self, s: &TokenStateRecord) {
        self.status = *s;
    }
}

/// The non-secret part of a token's persistent state: what every open, close, failure, block,
/// counter and clock change writes (no secret is re-written, so storage need not re-encrypt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenStateRecord {
    /// The token.
    pub token_id: TokenId,
    /// Bumped (wrapping) at every change of the token: of two records of one token, the one
    /// whose version is ahead in serial-number order (RFC 1982) is the newer.
    pub version: u32,
    /// State.
    pub state: TokenState,
    /// End of the open window (Unix ms), meaningful when open.
    pub open_until_ms: u64,
    /// Whether the current open was made with the duress PIN.
    pub open_duress: bool,
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
    /// Last time the device was heard from (Unix ms), 0 if never.
    pub last_seen_ms: u64,
    /// The last use of the duress PIN, in any operation (SPEC.md §6.4), if any.
    pub last_duress: Option<crate::DuressUse>,
}

impl TokenStateRecord {
    /// Whether `self` is a newer version of the token's state than `other` (serial-number
    /// order: correct while the two are less than 2^31 changes apart).
    pub fn is_newer_than(&self, other: &TokenStateRecord) -> bool {
        version_is_newer(self.version, other.version)
    }

    /// A freshly paired token: closed, no failures, nothing seen yet.
    pub fn new(token_id: TokenId) -> TokenStateRecord {
        TokenStateRecord {
            token_id,
            version: 0,
            state: TokenState::Closed,
            open_until_ms: 0,
            open_duress: false,
            failures: 0,
            highest_counter: 0,
            clock_offset_ms: 0,
            otp_last_step: 0,
            otp_drift: 0,
            last_seen_ms: 0,
            last_duress: None,
        }
    }
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
    /// The highest PAIR_INIT counter accepted (0: none yet).
    pub max_init_counter: u64,
    /// The token secret the last PAIR_INIT offered, waiting for PAIR_COMPLETE: kept when
    /// several servers share the database, so that the app's PAIR_COMPLETE may reach
    /// another server than its PAIR_INIT.
    pub candidate: Option<CandidateRecord>,
    /// The deeplink's enrollment secret, kept so that the link and its QR code can be shown
    /// again while the enrollment waits (none in records written before it was kept). It
    /// grants nothing the forms' keys do not: they already open and seal PAIR_INIT.
    pub link_secret: Option<SecretBytes>,
}

/// A pairing candidate as storage keeps it (sealed with the enrollment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandidateRecord {
    /// The token secret PAIR_INIT agreed.
    pub secret: SecretBytes,
    /// The device's clock offset measured at PAIR_INIT (ms).
    pub offset_ms: i64,
}

/// An offline challenge (SPEC.md §11) as storage keeps it (sealed): kept so that the
/// response may reach another server of the instance than the one that made the challenge.
/// The code is redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ChallengeRecord {
    /// The token.
    pub token_id: TokenId,
    /// The validation code (its symbols, without the group separators).
    pub code: String,
    /// When it stops being answerable (Unix ms).
    pub expires_ms: u64,
}

impl std::fmt::Debug for ChallengeRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChallengeRecord")
            .field("token_id", &self.token_id)
            .field("code", &"<redacted>")
            .field("expires_ms", &self.expires_ms)
            .finish()
    }
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
    /// Put the token's whole record (pairing, PIN change: secrets changed).
    Token(Box<TokenRecord>),
    /// Update the token's state (everything else).
    TokenState(TokenStateRecord),
    /// Delete the token and everything attached to it.
    DeleteToken(TokenId),
    /// Put a pending enrollment.
    Pending(Box<PendingRecord>),
    /// Remove a pending enrollment (paired, expired, or replaced).
    DeletePending(TokenId),
    /// Put a transaction.
    Transaction(Box<Transaction>),
    /// Forget a finished transaction (after its retention time).
    DeleteTransaction([u8; 16]),
    /// Put the token's backup-code hashes (replacing the previous set).
    BackupCodes(TokenId, Vec<[u8; 16]>),
    /// Put the token's offline challenge (replacing an earlier one).
    Challenge(Box<ChallengeRecord>),
    /// Remove the token's offline challenge (answered, or the token re-enrolled).
    DeleteChallenge(TokenId),
    /// Append an event to the webhook outbox.
    Event(Event),
}

/// The mutations of one batch of packets or API commands; its events are the
/// [`Mutation::Event`] records (the webhook outbox). Committed, and then published, by
/// [`crate::Engine::commit`].
#[derive(Debug, Default)]
pub struct Batch {
    /// Records to persist, in order.
    pub mutations: Vec<Mutation>,
    /// Tokens this batch marked unsettled (see [`crate::Engine::settle_committed`]).
    pub(crate) marked: Marks,
}

/// The tokens a batch marked unsettled, in the order marked. Looked up at every mark (under a
/// shard's lock): a receive batch marks a few, searched in a list; a timer tick can mark
/// hundreds of thousands (every open window that ended while the server was down), which a
/// list would make quadratic, so past [`Marks::INDEX_FROM`] a set indexes them.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    ids: Vec<[u8; 16]>,
    index: Option<HashSet<[u8; 16], MixState>>,
}

impl Marks {
    /// Marks beyond which the set is kept.
    const INDEX_FROM: usize = 32;

    pub(crate) fn contains(&self, id: &[u8; 16]) -> bool {
        match &self.index {
            Some(set) => set.contains(id),
            None => self.ids.contains(id),
        }
    }

    /// Adds `id` unless it is there.
    pub(crate) fn insert(&mut self, id: [u8; 16]) {
        if self.contains(&id) {
            return;
        }
        self.ids.push(id);
        match &mut self.index {
            Some(set) => {
                set.insert(id);
            }
            None if self.ids.len() > Marks::INDEX_FROM => {
                self.index = Some(self.ids.iter().copied().collect());
            }
            None => {}
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The marks, in order; none are left.
    pub(crate) fn take(&mut self) -> Vec<[u8; 16]> {
        self.index = None;
        std::mem::take(&mut self.ids)
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.mutations.is_empty() && self.marked.is_empty()
    }

    /// The batch's events, in order.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.mutations.iter().filter_map(|m| match m {
            Mutation::Event(e) => Some(e),
            _ => None,
        })
    }

    pub(crate) fn event(&mut self, event: Event) {
        self.mutations.push(Mutation::Event(event));
    }
}

/// The state-only record of an entry, with a new version (every change bumps it).
pub(crate) fn state_record(e: &mut TokenEntry) -> TokenStateRecord {
    e.version = e.version.wrapping_add(1);
    TokenStateRecord {
        version: e.version,
        token_id: TokenId(e.id),
        state: e.state,
        open_until_ms: e.open_until_ms,
        open_duress: e.flags & crate::state::FLAG_OPEN_DURESS != 0,
        failures: e.failures,
        highest_counter: e.highest,
        clock_offset_ms: e.offset_ms,
        otp_last_step: u64::from(e.otp_last_step),
        otp_drift: e.otp_drift,
        last_seen_ms: u64::from(e.last_seen_s) * 1000,
        last_duress: e.last_duress(),
    }
}

/// The whole persistent record of an entry (its secrets too), with a new version.
pub(crate) fn token_record(e: &mut TokenEntry) -> TokenRecord {
    TokenRecord {
        kind: e.kind(),
        service: e.service,
        secret: SecretBytes::new(e.secret),
        pin_verifier: SecretBytes::new(e.pin),
        duress_verifier: e.has_duress().then(|| SecretBytes::new(e.duress)),
        status: state_record(e),
    }
}

/// Serial-number comparison of state versions (RFC 1982): `a` is newer than `b`.
pub fn version_is_newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 31
}

#[cfg(test)]
mod tests {
    use super::Marks;

    #[test]
    fn marks_keep_their_order_and_no_duplicates_past_the_index() {
        let mut marks = Marks::default();
        let ids: Vec<[u8; 16]> = (0..100u8).map(|i| [i; 16]).collect();
        for id in &ids {
            marks.insert(*id);
            marks.insert(*id);
            assert!(marks.contains(id));
        }
        // Again, with the set in use: nothing is added twice.
        for id in ids.iter().rev() {
            marks.insert(*id);
        }
        assert!(!marks.contains(&[200; 16]));
        assert!(!marks.is_empty());
        assert_eq!(marks.take(), ids);
        assert!(marks.is_empty());
        assert!(!marks.contains(&ids[0]));
        marks.insert(ids[1]);
        assert_eq!(marks.take(), vec![ids[1]]);
    }
}
