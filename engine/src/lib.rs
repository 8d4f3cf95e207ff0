//! The ZofToken engine: every token in memory in sharded tables, the complete token state
//! machine of PRODUCT.md and SPEC.md, sans-IO.
//!
//! [`Engine::handle_packet`] takes one device datagram and writes its reply into the caller's
//! buffer (or says why it is dropped, silently); the API operations ([`Engine::enroll`],
//! [`Engine::status`], [`Engine::force`], [`Engine::validate_code`], offline challenges,
//! backup codes, transactions, …) are methods too. Every state change appends a
//! [`Mutation`] and an [`Event`] to the caller's [`Batch`]; the driver commits the batch to
//! storage, then sends the replies and calls [`Engine::publish`] to release the events onto the
//! bounded [`EventBus`]. [`Engine::tick`] runs timers (window expiry, transaction expiry,
//! housekeeping). A token changed by a batch not yet committed is read or changed by no other
//! batch, and a failed commit is undone by restoring the batch's tokens from storage (module
//! `settle`): nothing that was not written is ever shown.
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
#![forbid(unsafe_code)]

mod admin;
pub mod authkeys;
pub mod config;
mod device;
pub mod event;
pub mod mutation;
mod pin_root;
mod settle;
mod side;
pub mod state;
mod table;

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use zoftoken_proto::replay::ReplayWindow;
use zoftoken_proto::DropReason;

pub use admin::{
    EnrollmentTicket, Force, OfflineOutcome, TokenStatus, TotpEnrollment, BACKUP_CODES,
    BACKUP_DIGITS, MAX_KEPT_TRANSACTIONS, MAX_WAITING_TRANSACTIONS, TX_RETENTION_MS,
};
pub use authkeys::{Access, AuthkeyConfig, AuthkeyInfo, Authkeys, Right};
pub use config::{ServiceConfig, WebhookConfig};
pub use device::PacketOutcome;
pub use event::{Actor, DuressOp, DuressUse, Event, EventBus, EventKind};
pub use mutation::{
    Batch, Commit, CommitError, MemoryCommit, Mutation, PendingRecord, TokenRecord,
    TokenStateRecord,
};
pub use pin_root::pin_root;
pub use side::Transaction;
pub use state::{TokenKind, TokenState};

/// Errors of the API operations. Network input never produces these: bad packets are dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// No service of that name.
    #[error("unknown service")]
    UnknownService,
    /// No such token (or it was deleted).
    #[error("unknown token")]
    UnknownToken,
    /// The token is pending: the app has not paired yet.
    #[error("token not paired yet")]
    NotPaired,
    /// The request's input is invalid (message too long, bad length, …).
    #[error("invalid input: {0}")]
    Invalid(&'static str),
    /// No such transaction.
    #[error("unknown transaction")]
    UnknownTransaction,
    /// The token already has [`MAX_WAITING_TRANSACTIONS`] transactions waiting, or
    /// [`MAX_KEPT_TRANSACTIONS`] kept (waiting, or finished and still readable).
    #[error("too many transactions for this token")]
    TooManyTransactions,
    /// No offline challenge is outstanding for the token (none, used or expired).
    #[error("no offline challenge outstanding")]
    NoChallenge,
    /// The operation needs our phone app (offline challenge and response, transactions) and
    /// the token is a standard authenticator (TOTP) token, which has neither app nor PIN.
    #[error("not available for standard authenticator (TOTP) tokens")]
    NotForTotp,
    /// The configuration is invalid.
    #[error("invalid configuration: {0:?}")]
    Config(Vec<config::ConfigError>),
    /// The token has a change that is not yet durable (a commit in flight, or a failed one
    /// being undone from storage); nothing was done. Ask again in a moment.
    #[error("the token has a change that is not yet written; try again")]
    Unsettled,
}

/// How the engine is built.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The services.
    pub services: Vec<ServiceConfig>,
    /// The authkeys.
    pub authkeys: Vec<AuthkeyConfig>,
    /// Number of shards (rounded up to a power of two).
    pub shards: usize,
    /// This server process's epoch (SPEC.md §4.3): non-zero, unique per start.
    pub epoch: u32,
    /// Seed of the engine's random generators (from the OS in production, fixed in tests).
    pub seed: [u8; 32],
    /// The instance's PIN-tree secret ([`pin_root`]). A server MUST set it from its master
    /// key, the same on every start and every server of the instance; the default (derived
    /// from `seed`) is for tests only.
    pub pin_tree_secret: [u8; 32],
    /// Capacity of the event channel.
    pub event_capacity: usize,
    /// How long an enrollment stays usable.
    pub enrollment_ttl_ms: u64,
    /// How long an offline challenge stays usable.
    pub challenge_ttl_ms: u64,
    /// Most state-changing device requests (OPEN, CLOSE, CHANGE_PIN, transaction decisions)
    /// one token may make per second; further ones are dropped and counted
    /// ([`DropReason::RateLimited`]). 0: no limit.
    pub max_changes_per_s: u16,
}

impl EngineConfig {
    /// Defaults: 64 shards, 7-day enrollments, 10-minute challenges, 65 536 queued events.
    pub fn new(services: Vec<ServiceConfig>, epoch: u32, seed: [u8; 32]) -> EngineConfig {
        EngineConfig {
            services,
            authkeys: Vec::new(),
            shards: 64,
            epoch,
            seed,
            pin_tree_secret: blake3::derive_key("zoftoken engine test pin tree secret", &seed),
            event_capacity: 65_536,
            enrollment_ttl_ms: 7 * 24 * 3600 * 1000,
            challenge_ttl_ms: 10 * 60 * 1000,
            max_changes_per_s: 0,
        }
    }
}

pub(crate) struct Service {
    pub config: ServiceConfig,
    pub name: Arc<str>,
    /// Dropped from the configuration by a reload. Its index stays reserved (tokens record
    /// it) so that the service can return, but until then it does not exist: its tokens'
    /// packets are dropped, the API does not know it, and it receives no webhooks.
    pub removed: bool,
}

pub(crate) struct Services {
    list: Vec<Service>,
    /// Names of the services that are not removed.
    by_name: HashMap<String, u16>,
}

impl Services {
    /// The configured service at `index` (`None` if there is none or it was removed).
    pub fn get(&self, index: u16) -> Option<&Service> {
        self.list.get(usize::from(index)).filter(|s| !s.removed)
    }

    /// The index of a configured service.
    pub fn index_of(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }

    /// The configured services, in index order.
    pub fn configured(&self) -> impl Iterator<Item = &Service> {
        self.list.iter().filter(|s| !s.removed)
    }

    /// The name recorded for `index`, also of a removed service (its tokens' events, such as
    /// an expiry, still name it).
    pub fn name_of(&self, index: u16) -> Option<&Arc<str>> {
        self.list.get(usize::from(index)).map(|s| &s.name)
    }
}

/// Per-shard counters, kept without atomics on the packet path and exported by
/// [`Engine::export_metrics`].
#[derive(Default, Clone)]
pub(crate) struct Counters {
    /// Replies by request type (index = type byte).
    pub replies: [u64; 16],
    /// Drops by reason (index into `DropReason::ALL`).
    pub drops: [u64; 24],
}

pub(crate) struct Shard {
    pub table: table::Table,
    /// Whole replay windows (SPEC.md §8.1) of the tokens with an unseen counter more than 32
    /// below their highest; every other token's window is compact, in its entry.
    pub windows: HashMap<u32, (ReplayWindow, u64)>,
    /// `(open_until_ms, slot)` of open tokens, for expiry events.
    pub timers: state::Timers,
    /// Last source address of each token that sent presence.
    pub presence: HashMap<u32, std::net::SocketAddr>,
    /// The services, as of the last reload (a per-shard copy keeps the packet path free of
    /// shared atomics).
    pub services: Arc<Services>,
    /// Long-poll waiters by token id (woken at the token's next change).
    pub watchers: HashMap<[u8; 16], Vec<futures_channel::oneshot::Sender<()>>>,
    pub counters: Counters,
    /// The table's view version last published in [`Engine`]'s views.
    pub view_version: u64,
    /// Tokens with a change not yet known to be durable (see the `settle` module).
    pub unsettled: HashSet<[u8; 16], settle::MixState>,
    /// State-changing requests per token (by slot) in the second `rate_second`.
    pub rate: HashMap<u32, u16, settle::MixState>,
    /// The second (Unix s) that `rate` counts.
    pub rate_second: u64,
}

/// A replay window idle this long collapses to "everything up to the highest counter seen":
/// beyond twice the freshness skew, any lower counter is stale anyway (SPEC.md §8.3).
pub(crate) const WINDOW_IDLE_MS: u64 = 4 * zoftoken_proto::clock::MAX_SKEW_MS;

/// The engine. Shareable between threads (`&self` everywhere).
pub struct Engine {
    services: RwLock<Arc<Services>>,
    authkeys: RwLock<Arc<Authkeys>>,
    shards: Box<[Mutex<Shard>]>,
    shard_mask: usize,
    /// Each shard's table view, for [`Engine::prefetch_batch`] (replaced when a table grows).
    views: RwLock<Arc<[table::TableView]>>,
    /// Bumped at each replacement of `views`.
    views_generation: AtomicU64,
    pending: Mutex<side::Pending>,
    side: Mutex<side::Side>,
    rng: Mutex<ChaCha20Rng>,
    events: EventBus,
    epoch: u32,
    /// The instance's PIN-tree secret ([`pin_root`]); zeroized on drop.
    pin_tree_secret: zeroize::Zeroizing<[u8; 32]>,
    enrollment_ttl_ms: u64,
    challenge_ttl_ms: u64,
    max_changes_per_s: u16,
}

/// The state-only record of an entry, with a new version.
pub(crate) fn state_record(e: &mut state::TokenEntry) -> mutation::TokenStateRecord {
    e.version = e.version.wrapping_add(1);
    mutation::TokenStateRecord {
        version: e.version,
        token_id: zoftoken_proto::TokenId(e.id),
        state: e.state,
        open_until_ms: e.open_until_ms,
        open_duress: e.flags & state::FLAG_OPEN_DURESS != 0,
        failures: e.failures,
        highest_counter: e.highest,
        clock_offset_ms: e.offset_ms,
        otp_last_step: u64::from(e.otp_last_step),
        otp_drift: e.otp_drift,
        last_seen_ms: u64::from(e.last_seen_s) * 1000,
        last_duress: e.last_duress(),
    }
}

/// A driver thread's copy of what [`Engine::prefetch_batch`] reads of the token tables
/// (their indexes and where their entries are), refreshed when a table has grown. One per
/// thread; [`Default`] is an empty copy, filled at the first batch.
#[derive(Default)]
pub struct Prefetcher {
    /// 0 before the first batch (the engine's generations start at 1).
    generation: u64,
    views: Arc<[table::TableView]>,
}

/// Packets [`Engine::prefetch_batch`] takes in one pass (a receive batch is 32).
const PREFETCH_BATCH: usize = 32;

/// The token id a datagram claims (header bytes 8..24), unauthenticated: for prefetching only.
fn token_id_hint(datagram: &[u8]) -> Option<[u8; 16]> {
    datagram.get(8..24)?.first_chunk::<16>().copied()
}

/// Whether a datagram's type byte names a request that reads the entry's PIN material and
/// token secret (its PIN key comes from the secret): its whole entry is worth prefetching.
fn reads_pin_material(datagram: &[u8]) -> bool {
    datagram
        .get(1)
        .and_then(|t| zoftoken_proto::MsgType::from_request_byte(*t))
        .is_some_and(|t| t.carries_pin_proof() || t == zoftoken_proto::MsgType::PairComplete)
}

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
            pending: Mutex::new(side::Pending::default()),
            side: Mutex::new(side::Side::default()),
            rng: Mutex::new(ChaCha20Rng::from_seed(rng_seed)),
            events: EventBus::new(config.event_capacity),
            epoch: config.epoch,
            pin_tree_secret: zeroize::Zeroizing::new(config.pin_tree_secret),
            enrollment_ttl_ms: config.enrollment_ttl_ms,
            challenge_ttl_ms: config.challenge_ttl_ms,
            max_changes_per_s: config.max_changes_per_s,
        })
    }

    fn build_services(list: Vec<(ServiceConfig, bool)>) -> Services {
        let by_name = list
            .iter()
            .enumerate()
            .filter(|(_, (_, removed))| !removed)
            .map(|(i, (s, _))| (s.name.clone(), i as u16))
            .collect();
        let list = list
            .into_iter()
            .map(|(config, removed)| Service {
                name: Arc::from(config.name.as_str()),
                config,
                removed,
            })
            .collect();
        Services { list, by_name }
    }

    /// Replaces the services (reload) with `services`, matched by name: a service that is no
    /// longer listed is removed (its tokens' packets are dropped and the API refuses it) but
    /// keeps its index, so that its tokens work again if it returns; a new one is added.
    pub fn reload_services(&self, services: Vec<ServiceConfig>) -> Result<(), EngineError> {
        config::validate_services(&services).map_err(EngineError::Config)?;
        let current = self.services();
        let mut list = current
            .list
            .iter()
            .map(|s| (s.config.clone(), true))
            .collect::<Vec<_>>();
        for s in services {
            match list.iter_mut().find(|(c, _)| c.name == s.name) {
                Some(slot) => *slot = (s, false),
                None => list.push((s, false)),
            }
        }
        if list.len() > usize::from(u16::MAX) {
            return Err(EngineError::Invalid("too many services"));
        }
        let new = Arc::new(Self::build_services(list));
        *self.services.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        for shard in self.shards.iter() {
            lock(shard).services = new.clone();
        }
        Ok(())
    }

    /// The current services' configurations, in index order (a snapshot: a reload swaps
    /// them, SIGHUP). The webhook pipeline reads webhook settings here; the API the details.
    pub fn service_configs(&self) -> Vec<ServiceConfig> {
        self.services()
            .configured()
            .map(|s| s.config.clone())
            .collect()
    }

    /// Replaces the authkeys (reload); on error the old ones stay.
    pub fn reload_authkeys(&self, keys: &[AuthkeyConfig]) -> Result<(), EngineError> {
        let compiled = Authkeys::new(keys).map_err(EngineError::Config)?;
        *self.authkeys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(compiled);
        Ok(())
    }

    /// Whether the API caller holding `secret` may do an operation needing `right` on
    /// `username` in `service` (both masks must match).
    pub fn authorize(&self, secret: &str, right: Right, service: &str, username: &str) -> Access {
        let keys = self
            .authkeys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        keys.check(secret, right, service, username)
    }

    pub(crate) fn services(&self) -> Arc<Services> {
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn shard_of(&self, id: &[u8; 16]) -> usize {
        (usize::from(id[15]) | usize::from(id[14]) << 8) & self.shard_mask
    }

    pub(crate) fn shard(&self, id: &[u8; 16]) -> MutexGuard<'_, Shard> {
        // `shard_of` masks with `len - 1` (a power of two), so the index is always in range.
        #[allow(clippy::indexing_slicing)]
        lock(&self.shards[self.shard_of(id)])
    }

    /// A hint before processing a receive batch: brings every packet's index bucket, then
    /// the hot lines of its token entry, into the cache, in two tight loops over the batch
    /// (over each 32 packets of it) and without taking any lock, so that the batch's memory
    /// latencies and page walks overlap instead of adding up (a lock per packet would
    /// serialise them: a locked instruction waits for the loads before it). Reads the tables'
    /// indexes through `prefetcher`, the calling thread's copy; a stale copy or a forged id
    /// only prefetches the wrong lines. Optional; has no effect on results.
    pub fn prefetch_batch<'a>(
        &self,
        prefetcher: &mut Prefetcher,
        datagrams: impl Iterator<Item = &'a [u8]>,
    ) {
        self.prefetch_batch_with(prefetcher, datagrams, |v, hash, whole| {
            v.prefetch_entry(hash, whole)
        });
    }

    /// [`Engine::prefetch_batch`], with step 2 (given a view, the id's hash and whether the
    /// request reads PIN material) left to `entry`, so that a test can see which entries step
    /// 2 is asked for.
    fn prefetch_batch_with<'a>(
        &self,
        prefetcher: &mut Prefetcher,
        datagrams: impl Iterator<Item = &'a [u8]>,
        mut entry: impl FnMut(&table::TableView, u64, bool),
    ) {
        let generation = self.views_generation.load(Ordering::Acquire);
        if prefetcher.generation != generation {
            prefetcher.views = self.views.read().unwrap_or_else(|p| p.into_inner()).clone();
            prefetcher.generation = generation;
        }
        let views = &prefetcher.views;
        // Step 1 keeps what step 2 needs (the shard and the hash), so that step 2 is a short
        // loop: the more of its iterations fit in the processor's window, the more of the
        // batch's misses are in flight at once.
        let mut hints = [(0usize, 0u64, false); PREFETCH_BATCH];
        let mut datagrams = datagrams
            .filter_map(|d| Some((token_id_hint(d)?, reads_pin_material(d))))
            .peekable();
        while datagrams.peek().is_some() {
            let mut n = 0;
            while n < PREFETCH_BATCH {
                let Some((id, pin)) = datagrams.next() else {
                    break;
                };
                let shard = self.shard_of(&id);
                if let (Some(v), Some(hint)) = (views.get(shard), hints.get_mut(n)) {
                    *hint = (shard, v.prefetch_bucket(&id), pin);
                    n += 1;
                }
            }
            for &(shard, hash, pin) in hints.get(..n).unwrap_or_default() {
                if let Some(v) = views.get(shard) {
                    entry(v, hash, pin);
                }
            }
        }
    }

    /// Inserts a new token into its shard's table (the id must not be present there) and
    /// publishes the table's new view if it grew.
    pub(crate) fn insert_entry(&self, shard: &mut Shard, entry: state::TokenEntry) -> u32 {
        let index = self.shard_of(&entry.id);
        let slot = shard.table.insert(entry);
        let version = shard.table.view_version();
        if version != shard.view_version {
            shard.view_version = version;
            let mut views = self.views.write().unwrap_or_else(|p| p.into_inner());
            let mut list = views.to_vec();
            if let Some(v) = list.get_mut(index) {
                *v = shard.table.view();
            }
            *views = list.into();
            self.views_generation.fetch_add(1, Ordering::Release);
        }
        slot
    }

    /// The event channel (subscribe to consume events).
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// After `batch` was written: settles its tokens ([`Engine::settle_committed`]),
    /// publishes its events and clears it.
    pub fn publish(&self, batch: &mut Batch) {
        self.settle_committed(batch);
        let mut overflowed = 0;
        let mut kinds = [0u64; EventKind::ALL.len()];
        for m in batch.mutations.drain(..) {
            if let Mutation::Event(e) = m {
                if let Some(k) = kinds.get_mut(e.kind as usize) {
                    *k += 1;
                }
                if !self.events.try_publish(e) {
                    overflowed += 1;
                }
            }
        }
        self.events.count_overflow(overflowed);
        self.events.count_kinds(&kinds);
    }

    /// This process's epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Number of paired (and re-enrolled) tokens in the tables.
    pub fn token_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).table.len()).sum()
    }

    /// Long polls currently waiting for a token change (abandoned ones are pruned by `tick`).
    pub fn waiters(&self) -> usize {
        self.shards
            .iter()
            .map(|s| lock(s).watchers.values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// Bytes held by the token tables (slabs and indexes), for memory figures.
    pub fn table_bytes(&self) -> usize {
        self.shards.iter().map(|s| lock(s).table.heap_bytes()).sum()
    }

    /// Exports the packet counters to the `metrics` recorder (call periodically).
    pub fn export_metrics(&self) {
        let mut total = Counters::default();
        for s in self.shards.iter() {
            let c = lock(s).counters.clone();
            for (t, v) in total.replies.iter_mut().zip(c.replies) {
                *t += v;
            }
            for (t, v) in total.drops.iter_mut().zip(c.drops) {
                *t += v;
            }
        }
        for t in zoftoken_proto::MsgType::ALL {
            let v = total
                .replies
                .get(usize::from(t.request_byte()))
                .copied()
                .unwrap_or(0);
            metrics::counter!("zoftoken_packets_total", "type" => t.name(), "outcome" => "reply")
                .absolute(v);
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            let v = total.drops.get(i).copied().unwrap_or(0);
            metrics::counter!("zoftoken_drops_total", "reason" => r.label()).absolute(v);
        }
        for kind in EventKind::ALL {
            metrics::counter!("zoftoken_events_total", "event" => kind.name())
                .absolute(self.events.count(kind));
        }
        metrics::gauge!("zoftoken_tokens").set(self.token_count() as f64);
        metrics::gauge!("zoftoken_long_polls").set(self.waiters() as f64);
        metrics::counter!("zoftoken_events_overflowed_total").absolute(self.events.overflowed());
    }

    /// Packets dropped for `reason` so far.
    pub fn drops(&self, reason: DropReason) -> u64 {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.shards
            .iter()
            .map(|s| lock(s).counters.drops.get(i).copied().unwrap_or(0))
            .sum()
    }

    pub(crate) fn count_drop(counters: &mut Counters, reason: DropReason) {
        if let Some(i) = DropReason::ALL.iter().position(|r| *r == reason) {
            if let Some(c) = counters.drops.get_mut(i) {
                *c += 1;
            }
        }
    }

    /// Wakes everyone waiting for a change of the token.
    pub(crate) fn notify(&self, id: &[u8; 16]) {
        Engine::notify_in(&mut self.shard(id), id);
    }

    /// Wakes the token's waiters, with its shard already locked (cheap when nobody waits).
    pub(crate) fn notify_in(shard: &mut Shard, id: &[u8; 16]) {
        if shard.watchers.is_empty() {
            return;
        }
        for w in shard.watchers.remove(id).into_iter().flatten() {
            let _ = w.send(());
        }
    }

    /// A future-free handle that resolves at the token's next change (state, open window,
    /// failures, deletion). The API awaits it for long polls; no thread per waiter.
    pub fn watch(&self, id: &zoftoken_proto::TokenId) -> futures_channel::oneshot::Receiver<()> {
        let (tx, rx) = futures_channel::oneshot::channel();
        let mut shard = self.shard(&id.0);
        let list = shard.watchers.entry(id.0).or_default();
        list.retain(|s| !s.is_canceled());
        list.push(tx);
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_views_follow_every_table_as_it_grows() {
        let engine = Engine::new(EngineConfig::new(Vec::new(), 1, [3; 32])).unwrap();
        let mut prefetcher = Prefetcher::default();
        let ids: Vec<[u8; 16]> = (0..30_000u32)
            .map(|n| {
                *blake3::hash(&n.to_le_bytes())
                    .as_bytes()
                    .first_chunk()
                    .unwrap()
            })
            .collect();
        for (n, id) in ids.iter().enumerate() {
            let mut shard = engine.shard(id);
            engine.insert_entry(&mut shard, table::tests::entry(*id));
            drop(shard);
            if n % 1000 == 0 {
                // Prefetching while the tables grow: a stale copy is only a hint.
                let mut datagram = [0u8; 64];
                datagram[8..24].copy_from_slice(id);
                engine.prefetch_batch(&mut prefetcher, [&datagram[..], &[1, 2, 3][..]].into_iter());
            }
        }
        let views = engine.views.read().unwrap().clone();
        for (shard, view) in engine.shards.iter().zip(views.iter()) {
            assert!(view.is_current(&lock(shard).table));
        }
        let datagram = [0u8; 64];
        engine.prefetch_batch(&mut prefetcher, std::iter::once(&datagram[..]));
        assert_eq!(
            prefetcher.generation,
            engine.views_generation.load(Ordering::Relaxed)
        );
        assert!(Arc::ptr_eq(&prefetcher.views, &views));
    }

    #[test]
    fn a_batch_prefetch_asks_for_every_datagrams_entry_in_order() {
        let engine = Engine::new(EngineConfig::new(Vec::new(), 1, [4; 32])).unwrap();
        let id = |n: u32| -> [u8; 16] {
            *blake3::hash(&n.to_le_bytes())
                .as_bytes()
                .first_chunk()
                .unwrap()
        };
        for n in 0..5_000u32 {
            let mut shard = engine.shard(&id(n));
            engine.insert_entry(&mut shard, table::tests::entry(id(n)));
        }
        // 150 datagrams (more than one pass of PREFETCH_BATCH): tokens, unknown ids, and
        // datagrams too short to name a token, which step 1 skips.
        let datagrams: Vec<Vec<u8>> = (0..150u32)
            .map(|n| match n % 5 {
                3 => vec![0; 23],
                4 => [&[0u8; 8][..], &id(1_000_000 + n)[..], &[0; 40][..]].concat(),
                _ => [&[0u8; 8][..], &id(n * 31)[..], &[0; 40][..]].concat(),
            })
            .collect();
        let mut asked = Vec::new();
        let mut prefetcher = Prefetcher::default();
        engine.prefetch_batch_with(
            &mut prefetcher,
            datagrams.iter().map(Vec::as_slice),
            |view, hash, _| asked.push(view.entry_address_of(hash)),
        );
        let expected: Vec<Option<usize>> = datagrams
            .iter()
            .filter_map(|d| token_id_hint(d))
            .map(|id| {
                let shard = lock(&engine.shards[engine.shard_of(&id)]);
                shard
                    .table
                    .find(&id)
                    .and_then(|slot| shard.table.get(slot))
                    .map(|e| e as *const state::TokenEntry as usize)
            })
            .collect();
        assert_eq!(expected.len(), 120);
        assert_eq!(asked, expected);
        assert_eq!(asked.iter().filter(|a| a.is_some()).count(), 90);
    }
}
