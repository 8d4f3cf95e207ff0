//! Events: every state change produces one, as a [`crate::Mutation::Event`] record of its
//! batch. Events are data only where they are written (storage keeps them in its outbox, with
//! the batch's other records, in one atomic write); the engine keeps no queue of them. What
//! the engine keeps is a count per kind of the events of committed batches
//! ([`crate::Engine::committed_events`], exported as metrics).
//!
//! Every event carries a sequence number ([`Event::sequence`]) taken when it is made, while
//! the lock that orders its token's changes is held, from one of [`SEQUENCE_STRIPES`]
//! counters chosen by the token id (one counter for the whole process would be a cache line
//! that every IO thread writes for every event): of two events of a token, the later change
//! has the higher number, whatever order their commits reach the disk in. Numbers of
//! different tokens are not comparable. Storage persists the numbers with the events and
//! raises every counter above everything it has handed out when it opens
//! ([`raise_sequence_floor`]), so the numbers keep increasing across restarts.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of event sequence numbers, each on a cache line of its own.
pub const SEQUENCE_STRIPES: usize = 64;

#[repr(align(128))]
struct Stripe(AtomicU64);

/// The next event sequence number of each stripe. 0 is never handed out: it marks events
/// written before events were numbered.
static NEXT_SEQUENCE: [Stripe; SEQUENCE_STRIPES] =
    [const { Stripe(AtomicU64::new(1)) }; SEQUENCE_STRIPES];

fn stripe(token: &TokenId) -> &'static AtomicU64 {
    let i = usize::from(token.0[0]) % SEQUENCE_STRIPES;
    // `i < SEQUENCE_STRIPES`, the array's length.
    #[allow(clippy::indexing_slicing)]
    &NEXT_SEQUENCE[i].0
}

/// A new event sequence number for `token`, higher than every number handed out before for
/// it in this process (and, once storage raised the floor, in this database).
pub fn next_sequence(token: &TokenId) -> u64 {
    stripe(token).fetch_add(1, Ordering::Relaxed)
}

/// Makes every later [`next_sequence`] at least `floor` (never lowers a counter). Storage
/// calls it when it opens, with the floor it keeps durable.
pub fn raise_sequence_floor(floor: u64) {
    for s in &NEXT_SEQUENCE {
        s.0.fetch_max(floor, Ordering::Relaxed);
    }
}

use zoftoken_proto::TokenId;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventKind {
    /// A token was enrolled (pending, waiting for the app).
    Enrolled,
    /// The app completed pairing.
    Paired,
    /// The token was opened (by the user, the offline response, or an administrator).
    Opened,
    /// The token was closed (by the user or an administrator).
    Closed,
    /// The open window ran out.
    Expired,
    /// The token was blocked (three failures, or an administrator).
    Blocked,
    /// An administrator unblocked the token (forced it closed or open).
    Unblocked,
    /// The user authenticated with the duress PIN (where the service allows duress).
    Duress,
    /// The token was deleted.
    Deleted,
    /// A failed authentication (wrong PIN, one-time code, offline response or backup code).
    FailedAttempt,
    /// A transaction was approved.
    TxApproved,
    /// A transaction was denied.
    TxDenied,
    /// A transaction expired unanswered.
    TxExpired,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 13] = [
        EventKind::Enrolled,
        EventKind::Paired,
        EventKind::Opened,
        EventKind::Closed,
        EventKind::Expired,
        EventKind::Blocked,
        EventKind::Unblocked,
        EventKind::Duress,
        EventKind::Deleted,
        EventKind::FailedAttempt,
        EventKind::TxApproved,
        EventKind::TxDenied,
        EventKind::TxExpired,
    ];

    /// The stable name used in webhooks and configuration.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Enrolled => "enrolled",
            EventKind::Paired => "paired",
            EventKind::Opened => "opened",
            EventKind::Closed => "closed",
            EventKind::Expired => "expired",
            EventKind::Blocked => "blocked",
            EventKind::Unblocked => "unblocked",
            EventKind::Duress => "duress",
            EventKind::Deleted => "deleted",
            EventKind::FailedAttempt => "failed_attempt",
            EventKind::TxApproved => "transaction_approved",
            EventKind::TxDenied => "transaction_denied",
            EventKind::TxExpired => "transaction_expired",
        }
    }

    /// The kind for a name.
    pub fn from_name(name: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Which PIN-proved operation a duress use was (SPEC.md §6.4): every one is reported, as a
/// [`EventKind::Duress`] event naming it and in the token's status (the last use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DuressOp {
    /// OPEN from the app (§7.5).
    Open = 1,
    /// An offline response read to an operator (§11.3).
    OfflineResponse = 2,
    /// An app one-time code validated through the API (§10.3).
    OneTimeCode = 3,
    /// TX_APPROVE from the app (§7.10).
    TxApprove = 4,
    /// CHANGE_PIN from the app (§7.11): nothing was changed.
    ChangePin = 5,
}

impl DuressOp {
    /// Every operation.
    pub const ALL: [DuressOp; 5] = [
        DuressOp::Open,
        DuressOp::OfflineResponse,
        DuressOp::OneTimeCode,
        DuressOp::TxApprove,
        DuressOp::ChangePin,
    ];

    /// The stable name used in webhooks and the API.
    pub fn name(self) -> &'static str {
        match self {
            DuressOp::Open => "open",
            DuressOp::OfflineResponse => "offline_response",
            DuressOp::OneTimeCode => "one_time_code",
            DuressOp::TxApprove => "transaction_approve",
            DuressOp::ChangePin => "change_pin",
        }
    }

    /// The operation of a byte as [`DuressOp::byte`] writes it (1–5).
    pub fn from_byte(b: u8) -> Option<DuressOp> {
        Self::ALL.into_iter().find(|o| o.byte() == b)
    }

    /// Its byte (1–5; 0 is never an operation), as stored.
    pub fn byte(self) -> u8 {
        self as u8
    }
}

/// The last duress use of a token: when and in which operation. Kept with the token's state
/// (persisted, restored at start) until the token is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DuressUse {
    /// When (Unix ms, the server's clock).
    pub time_ms: u64,
    /// Which operation.
    pub operation: DuressOp,
}

/// Who caused a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Actor {
    /// The phone app over UDP.
    Device,
    /// An administrator through the API.
    Admin,
    /// An operator's offline challenge/response or code validation through the API.
    Operator,
    /// The clock (expiry).
    Timer,
}

/// One event. The username is cold data: consumers resolve it from storage by token id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The token.
    pub token_id: TokenId,
    /// Index of the service in the engine's service list.
    pub service: u16,
    /// When (Unix ms).
    pub time_ms: u64,
    /// Who caused it.
    pub actor: Actor,
    /// End of the open window after the event, if open.
    pub open_until_ms: Option<u64>,
    /// Whether the authentication behind it used the duress PIN.
    pub duress: bool,
    /// The transaction, for transaction events.
    pub tx_id: Option<[u8; 16]>,
    /// For a [`EventKind::Duress`] event, the operation the duress PIN was used for; `None`
    /// for every other event.
    pub operation: Option<DuressOp>,
    /// Its sequence number ([`next_sequence`]): higher for every later change of the same
    /// token, across restarts; not consecutive (a counter numbers the events of many tokens).
    pub sequence: u64,
}

impl Event {
    /// An event with no open window, no duress and no transaction, numbered now
    /// ([`next_sequence`]): make it while holding the lock that orders its token's changes.
    pub fn new(
        kind: EventKind,
        token_id: TokenId,
        service: u16,
        time_ms: u64,
        actor: Actor,
    ) -> Event {
        Event {
            kind,
            token_id,
            service,
            time_ms,
            actor,
            open_until_ms: None,
            duress: false,
            tx_id: None,
            operation: None,
            sequence: next_sequence(&token_id),
        }
    }

    /// The same event, marked as made with the duress PIN.
    pub fn with_duress(mut self) -> Event {
        self.duress = true;
        self
    }

    /// The same event, about transaction `tx_id`.
    pub fn with_tx(mut self, tx_id: [u8; 16]) -> Event {
        self.tx_id = Some(tx_id);
        self
    }
}

/// The events of committed batches, counted per kind (kept apart from the packet path's
/// shard counters: one add per committed batch).
#[derive(Debug)]
pub(crate) struct EventCounts {
    by_kind: [AtomicU64; EventKind::ALL.len()],
}

impl Default for EventCounts {
    fn default() -> EventCounts {
        EventCounts {
            by_kind: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl EventCounts {
    /// Adds a committed batch's counts (indexed as [`EventKind::ALL`]).
    pub(crate) fn add(&self, counts: &[u64; EventKind::ALL.len()]) {
        for (c, n) in self.by_kind.iter().zip(counts) {
            if *n > 0 {
                c.fetch_add(*n, Ordering::Relaxed);
            }
        }
    }

    /// Committed events of `kind` so far.
    pub(crate) fn get(&self, kind: EventKind) -> u64 {
        self.by_kind
            .get(kind as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}
