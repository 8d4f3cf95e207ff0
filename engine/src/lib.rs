//! The ZofToken engine: every token in memory in sharded tables, the complete token state
//! machine of SPEC.md and `docs/product.md`, sans-IO.
//!
//! [`Engine::handle_packet`] takes one device datagram and writes its reply into the caller's
//! buffer (or says why it is dropped, silently); the API operations ([`Engine::enroll`],
//! [`Engine::status`], [`Engine::force`], [`Engine::validate_code`], offline challenges,
//! backup codes, transactions, …) are methods too. Every state change appends a
//! [`Mutation`] and an [`Event`] to the caller's [`Batch`]. [`Engine::tick`] runs timers
//! (window expiry, transaction expiry, housekeeping).
//!
//! **Commit, then publish** (module `commit`), a rule of the types: a batch becomes visible
//! only through [`Engine::commit`] or [`Engine::commit_group`], which write it through a
//! [`DurableWrite`] (storage implements it; [`MemoryCommit`] keeps it in memory for tests)
//! and publish it (settle its tokens, count its events) only if the write succeeded; the
//! driver sends the batch's replies only after that. A token changed by a batch not yet
//! committed is read or changed by no other batch, and a failed write ([`CommitFailed`]) hands
//! back the batch's tokens to restore from storage (modules `settle` and `restore`): nothing
//! that was not written is ever shown. Events are data of the write (storage's outbox) and
//! nothing else: the engine queues none; it counts them per kind once committed.
//!
//! Two kinds of token ([`TokenKind`]): app tokens, which our phone app pairs and drives over
//! UDP, and standard authenticator tokens (RFC 6238 TOTP, [`Engine::enroll_totp`]), usable at
//! once from an `otpauth://` URI. Both validate one-time codes ([`Engine::validate_code`]),
//! can be forced, deleted and given backup codes; a TOTP token never opens by itself, its
//! device packets are dropped, and offline challenges and transactions are refused for it
//! ([`EngineError::NotForTotp`]).
//!
//! It does no IO and reads no clock: `now_ms` is an argument everywhere, and randomness comes
//! from seeded generators, so every rule is tested on a virtual clock. Storage, sockets, HTTP
//! and webhooks are other crates' business. Usernames are cold data: the engine keeps token
//! ids only, and storage keeps the names.
//!
//! Key types: [`Engine`] (built from an [`EngineConfig`]), [`Batch`] and [`Mutation`] (what
//! storage writes), [`DurableWrite`] and [`CommitFailed`] (the write a commit runs, and its
//! failure), [`Event`], [`PacketOutcome`], [`TokenStatus`], [`Transaction`], [`EngineError`].
//!
//! Where things are (every module is one concern; `ARCHITECTURE.md` lists them all): the
//! device packet path in `packet/` (one module per request family), the API operations in
//! `ops/` (one module per operation family), user authentication and its consequences in
//! `auth`, timers in `timers`, the start-up loads in `load`, durability in `commit`, `settle`
//! and `restore`, the shards and their tables in `shard` and `table`, what sits beside the tables
//! (pending enrollments, transactions, challenges, backup codes) in `pending`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod auth;
pub mod authkeys;
mod commit;
pub mod config;
mod counters;
mod error;
pub mod event;
mod load;
pub mod mutation;
mod ops;
mod packet;
mod pending;
mod pin_root;
mod prefetch;
mod restore;
mod services;
mod settle;
mod shard;
pub mod state;
mod table;
mod timers;
mod transaction;
mod watch;

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

pub use authkeys::{Access, AuthkeyConfig, AuthkeyInfo, Authkeys, Right};
pub use commit::{CommitFailed, DurableWrite, MemoryCommit};
pub use config::{EngineConfig, ServiceConfig, WebhookConfig};
pub use error::EngineError;
pub use event::{Actor, DuressOp, DuressUse, Event, EventKind};
pub use mutation::{
    Batch, CandidateRecord, ChallengeRecord, Mutation, PendingRecord, TokenRecord, TokenStateRecord,
};
pub use ops::{
    EnrollmentTicket, Force, OfflineOutcome, TokenStatus, TotpEnrollment, BACKUP_CODES,
    BACKUP_DIGITS, MAX_KEPT_TRANSACTIONS, MAX_WAITING_TRANSACTIONS, TX_RETENTION_MS,
};
pub use packet::PacketOutcome;
pub use pin_root::pin_root;
pub use prefetch::Prefetcher;
pub use state::{TokenKind, TokenState};
pub use timers::MAX_EXPIRED_PER_TICK;
pub use transaction::Transaction;

use counters::Counters;
use services::Services;
use shard::Shard;

/// The engine. Shareable between threads (`&self` everywhere).
///
/// Lock order, everywhere in the engine: `enrollments` → shard → `pending_items`, and `rng`
/// only as a leaf (nothing else is taken while it is held). No path takes a lock earlier in
/// that order while holding a later one.
pub struct Engine {
    services: RwLock<Arc<Services>>,
    authkeys: RwLock<Arc<Authkeys>>,
    shards: Box<[Mutex<Shard>]>,
    shard_mask: usize,
    /// Each shard's table view, for [`Engine::prefetch_batch`] (replaced when a table grows).
    views: RwLock<Arc<[table::TableView]>>,
    /// Bumped at each replacement of `views`.
    views_generation: AtomicU64,
    /// Enrollments waiting for their app's pairing.
    enrollments: Mutex<pending::Enrollments>,
    /// Transactions, offline challenges and backup codes.
    pending_items: Mutex<pending::PendingItems>,
    rng: Mutex<ChaCha20Rng>,
    /// Events of committed batches, per kind.
    event_counts: event::EventCounts,
    epoch: u32,
    /// The instance's PIN-tree secret ([`pin_root`]); zeroized on drop.
    pin_tree_secret: zeroize::Zeroizing<[u8; 32]>,
    enrollment_ttl_ms: u64,
    challenge_ttl_ms: u64,
    max_changes_per_s: u16,
    /// [`EngineConfig::shared_database`].
    shared_database: bool,
}

/// Locks `m`, also when a panic poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave a token half-updated in a way that matters
    // more than stopping service would; keep serving with the inner value.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Engine {
    /// Builds an engine with no tokens (storage loads them with [`Engine::load_token`]).
    pub fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        config::validate_services(&config.services).map_err(EngineError::Config)?;
        let authkeys = Authkeys::new(&config.authkeys).map_err(EngineError::Config)?;
        if config.epoch == 0 {
            return Err(EngineError::Invalid("epoch must not be zero"));
        }
        let shards = config.shards.clamp(1, 4096).next_power_of_two();
        let mut seed_rng = ChaCha20Rng::from_seed(config.seed);
        let services = Arc::new(Self::build_services(
            config.services.into_iter().map(|s| (s, false)).collect(),
        ));
        let shard_list: Vec<Mutex<Shard>> = (0..shards)
            .map(|_| {
                Mutex::new(Shard {
                    table: table::Table::new(rand_core::RngCore::next_u64(&mut seed_rng)),
                    windows: HashMap::new(),
                    timers: BinaryHeap::new(),
                    presence: HashMap::new(),
                    services: services.clone(),
                    watchers: HashMap::new(),
                    counters: Counters::default(),
                    view_version: 0,
                    unsettled: HashSet::default(),
                    rate: HashMap::default(),
                    rate_second: 0,
                })
            })
            .collect();
        let views: Arc<[table::TableView]> =
            shard_list.iter().map(|s| lock(s).table.view()).collect();
        let mut rng_seed = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut seed_rng, &mut rng_seed);
        Ok(Engine {
            services: RwLock::new(services),
            authkeys: RwLock::new(Arc::new(authkeys)),
            shards: shard_list.into_boxed_slice(),
            shard_mask: shards - 1,
            views: RwLock::new(views),
            views_generation: AtomicU64::new(1),
            enrollments: Mutex::new(pending::Enrollments::default()),
            pending_items: Mutex::new(pending::PendingItems::default()),
            rng: Mutex::new(ChaCha20Rng::from_seed(rng_seed)),
            event_counts: event::EventCounts::default(),
            epoch: config.epoch,
            pin_tree_secret: zeroize::Zeroizing::new(config.pin_tree_secret),
            enrollment_ttl_ms: config.enrollment_ttl_ms,
            challenge_ttl_ms: config.challenge_ttl_ms,
            max_changes_per_s: config.max_changes_per_s,
            shared_database: config.shared_database,
        })
    }

    /// `N` bytes from the engine's generator (`rng` is a leaf lock: callable under any other).
    pub(crate) fn random<const N: usize>(&self) -> [u8; N] {
        let mut b = [0u8; N];
        rand_core::RngCore::fill_bytes(&mut *lock(&self.rng), &mut b);
        b
    }

    /// Events of `kind` in the batches committed so far ([`Engine::commit`]): each counted
    /// once, when its batch was written.
    pub fn committed_events(&self, kind: EventKind) -> u64 {
        self.event_counts.get(kind)
    }

    /// This process's epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }
}
