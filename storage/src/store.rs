//! The store: engine mutations in, engine tables out. One [`Store::commit`] per batch of packets
//! or API commands becomes one atomic [`WriteBatch`] (group commit), the batch's events
//! included (the webhook outbox); [`Store::load`] rebuilds the engine's tables at start, in
//! parallel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zoftoken_engine::{Engine, Mutation, TokenRecord, TokenStateRecord};
use zoftoken_proto::TokenId;

use crate::crypt::MasterKey;
use crate::docs::{AuthkeyDoc, ServiceDoc};
use crate::kv::{Cf, Durability, KvError, KvStore, WriteBatch};
use crate::schema::{self, OutboxEvent, Secrets, SCHEMA_VERSION};

const META_SCHEMA: &[u8] = b"schema_version";
const META_KEY_CHECK: &[u8] = b"master_key_check";
pub(crate) const META_OUTBOX_ACKED: &[u8] = b"outbox_acked";
pub(crate) const META_EPOCH: &[u8] = b"epoch";
/// Prefix of the event-sequence floors: `event_seq_floor` ‖ floor (u64 BE), empty values. Each
/// commit that uses numbers at or above the durable floor adds one in its own write; the
/// highest is the floor (a set of keys, so concurrent commits reach the disk in any order).
const META_EVENT_FLOOR: &[u8] = b"event_seq_floor";
/// Event sequence numbers reserved by one floor record beyond the highest one written.
const EVENT_FLOOR_STEP: u64 = 1 << 20;
const KEY_CHECK_PLAINTEXT: &[u8] = b"zoftoken master key check v1";

/// Errors of the store. Every one is a clear reason to stop at start; none is ever turned
/// into an empty database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key-value store failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The master key is not the one this database was created with.
    #[error(
        "the master key does not match this database (wrong key file or ZOFTOKEN_MASTER_KEY?)"
    )]
    WrongMasterKey,
    /// The database was written by a newer version of ZofToken.
    #[error("database schema version {found} is newer than this program supports ({supported})")]
    NewerSchema {
        /// Version found.
        found: u32,
        /// Version this code writes.
        supported: u32,
    },
    /// A record could not be decoded or decrypted although the master key is right.
    #[error("corrupt record in `{cf}` at key {key}: {what}")]
    Corrupt {
        /// Column family.
        cf: Cf,
        /// The key, in hex.
        key: String,
        /// What is wrong.
        what: &'static str,
    },
    /// Invalid input to an import or an admin command.
    #[error("{0}")]
    Invalid(String),
    /// Every server epoch has been handed out (SPEC.md §4.3 forbids reusing one): this
    /// database cannot be served again; export the tokens into a new one.
    #[error("every server epoch of this database has been used; it must not be started again")]
    EpochsExhausted,
}

/// The username of `token` if one of `batches` creates it.
fn created_in<'a>(batches: &[&'a [Mutation]], token: &TokenId) -> Option<&'a str> {
    batches.iter().flat_map(|b| b.iter()).find_map(|m| match m {
        Mutation::TokenCreated {
            token_id, username, ..
        } if token_id == token => Some(username.as_ref()),
        _ => None,
    })
}

pub(crate) fn corrupt(cf: Cf, key: &[u8], what: &'static str) -> StoreError {
    StoreError::Corrupt {
        cf,
        key: hex::encode(key),
        what,
    }
}

/// What [`Store::load`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Paired (and re-enrolled) tokens loaded into the tables.
    pub tokens: u64,
    /// Pending enrollments loaded (expired ones are not).
    pub enrollments: u64,
    /// Transactions loaded.
    pub transactions: u64,
    /// Tokens whose service is not configured: kept in the database, not loaded (listed by
    /// service name with their count).
    pub unknown_service: Vec<(String, u64)>,
    /// State records without secrets (left by a delete racing a concurrent commit); ignored.
    pub orphan_states: u64,
    /// Time taken.
    pub elapsed: Duration,
}

/// The durable store of one server.
pub struct Store {
    kv: Arc<dyn KvStore>,
    key: MasterKey,
    durability: Durability,
    next_seq: AtomicU64,
    pub(crate) health: crate::durable::Health,
    /// Every event sequence number below this is below a durable floor record.
    event_floor: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// Names of services by engine index (the engine's [`Engine::service_name`]).
pub trait ServiceNames {
    /// The name of service `index`.
    fn service_name(&self, index: u16) -> Option<Arc<str>>;

    /// Whether events of `kind` of service `index` go into the outbox, i.e. whether the
    /// service has a webhook that receives them (default: every event).
    fn outbox_wants(&self, index: u16, kind: zoftoken_engine::EventKind) -> bool {
        let _ = (index, kind);
        true
    }
}

impl ServiceNames for Engine {
    fn service_name(&self, index: u16) -> Option<Arc<str>> {
        Engine::service_name(self, index)
    }

    fn outbox_wants(&self, index: u16, kind: zoftoken_engine::EventKind) -> bool {
        self.webhook_wants(index, kind)
    }
}

/// One upgrade step of the schema: from version `n` (its index + 1) to `n + 1`.
type Migration = fn(&dyn KvStore) -> Result<(), StoreError>;

/// The migration hook: `MIGRATIONS[n - 1]` upgrades a version-`n` database to `n + 1`. Empty
/// while version 1 is the only one.
const MIGRATIONS: &[Migration] = &[];

impl Store {
    /// Opens a store over `kv`. A database without any record is initialised (schema version,
    /// master-key check); otherwise the schema is migrated if older and the master key is
    /// checked. Never silently starts empty over existing data.
    pub fn open(
        kv: Arc<dyn KvStore>,
        key: MasterKey,
        durability: Durability,
    ) -> Result<Store, StoreError> {
        match kv.get(Cf::Meta, META_SCHEMA)? {
            None => {
                if !Self::is_empty(&*kv)? {
                    return Err(corrupt(
                        Cf::Meta,
                        META_SCHEMA,
                        "the database holds records but no schema version",
                    ));
                }
                let mut b = WriteBatch::new();
                b.put(Cf::Meta, META_SCHEMA, SCHEMA_VERSION.to_be_bytes());
                b.put(
                    Cf::Meta,
                    META_KEY_CHECK,
                    key.seal(Cf::Meta, META_KEY_CHECK, KEY_CHECK_PLAINTEXT),
                );
                kv.write(&b, Durability::Fsync)?;
            }
            Some(v) => {
                let found = v
                    .as_slice()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| corrupt(Cf::Meta, META_SCHEMA, "not a version number"))?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                Self::check_key(&*kv, &key)?;
                for version in found..SCHEMA_VERSION {
                    let step = MIGRATIONS
                        .get(version as usize - 1)
                        .ok_or(StoreError::Invalid(format!(
                            "no migration from schema version {version}"
                        )))?;
                    step(&*kv)?;
                    let mut b = WriteBatch::new();
                    b.put(Cf::Meta, META_SCHEMA, (version + 1).to_be_bytes());
                    kv.write(&b, Durability::Fsync)?;
                }
            }
        }
        Self::check_key(&*kv, &key)?;
        let event_floor = Self::event_sequence_floor(&*kv)?;
        zoftoken_engine::event::raise_sequence_floor(event_floor);
        let last = kv
            .last(Cf::Outbox)?
            .and_then(|(k, _)| k.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        let acked = kv
            .get(Cf::Meta, META_OUTBOX_ACKED)?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        Ok(Store {
            kv,
            key,
            durability,
            next_seq: AtomicU64::new(last.max(acked) + 1),
            health: crate::durable::Health::default(),
            event_floor: AtomicU64::new(event_floor),
        })
    }

    /// The durable event-sequence floor (1 in a database that never numbered an event): every
    /// number handed out before is below it. Leaves a single floor record behind.
    fn event_sequence_floor(kv: &dyn KvStore) -> Result<u64, StoreError> {
        let mut keys = Vec::new();
        let mut floor = 1u64;
        let end = {
            let mut e = META_EVENT_FLOOR.to_vec();
            e.push(0xff);
            e
        };
        try_scan(kv, Cf::Meta, META_EVENT_FLOOR, Some(&end), &mut |k, _| {
            let n = k
                .strip_prefix(META_EVENT_FLOOR)
                .and_then(|n| <[u8; 8]>::try_from(n).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt(Cf::Meta, k, "not an event sequence floor"))?;
            floor = floor.max(n);
            keys.push(k.to_vec());
            Ok(true)
        })?;
        if keys.len() > 1 {
            let mut b = WriteBatch::new();
            for k in &keys {
                b.delete(Cf::Meta, k);
            }
            b.put(Cf::Meta, Self::event_floor_key(floor), []);
            kv.write(&b, Durability::Fsync)?;
        }
        Ok(floor)
    }

    fn event_floor_key(floor: u64) -> Vec<u8> {
        let mut k = META_EVENT_FLOOR.to_vec();
        k.extend_from_slice(&floor.to_be_bytes());
        k
    }

    fn is_empty(kv: &dyn KvStore) -> Result<bool, StoreError> {
        for cf in Cf::ALL {
            if kv.last(cf)?.is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn check_key(kv: &dyn KvStore, key: &MasterKey) -> Result<(), StoreError> {
        let sealed = kv.get(Cf::Meta, META_KEY_CHECK)?.ok_or(corrupt(
            Cf::Meta,
            META_KEY_CHECK,
            "master-key check value missing",
        ))?;
        match key.open(Cf::Meta, META_KEY_CHECK, &sealed) {
            Some(p) if p.as_slice() == KEY_CHECK_PLAINTEXT => Ok(()),
            _ => Err(StoreError::WrongMasterKey),
        }
    }

    /// The durability this store was opened with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The sequence number the next commit with events will get.
    pub(crate) fn next_outbox_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    /// Makes the next commit's sequence number at least `seq` (after an import).
    pub(crate) fn raise_next_outbox_seq(&self, seq: u64) {
        self.next_seq.fetch_max(seq, Ordering::Relaxed);
    }

    /// The last server epoch handed out by this database (0: none yet).
    pub(crate) fn last_epoch(&self) -> Result<u32, StoreError> {
        match self.kv.get(Cf::Meta, META_EPOCH)? {
            None => Ok(0),
            Some(v) => v
                .as_slice()
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| corrupt(Cf::Meta, META_EPOCH, "not an epoch")),
        }
    }

    /// The key-value store underneath.
    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    /// Writes a batch of engine mutations in one atomic write, with the batch's events that a
    /// webhook receives ([`ServiceNames::outbox_wants`]; one outbox record per 65 535 events). Returns the (last) outbox sequence number used,
    /// or 0 when the batch had no event. Sequence numbers are unique and increase in the order commits start; two
    /// concurrent commits may become visible in either order, and a failed commit leaves a
    /// gap.
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
    /// as [`Store::commit`].
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
            b.put(Cf::Meta, Self::event_floor_key(f), []);
        }
        let mut seq = 0;
        for chunk in events.chunks(usize::from(u16::MAX)) {
            let mut v = schema::outbox_header(u16::try_from(chunk.len()).unwrap_or(u16::MAX));
            for e in chunk {
                let service = names.service_name(e.service);
                // The username of a deleted token is gone once this batch is written: from
                // the database, or from this group if the token was created in it.
                let username = if e.kind == zoftoken_engine::EventKind::Deleted {
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
            seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            b.put(Cf::Outbox, seq.to_be_bytes(), v);
        }
        match self.kv.write(&b, durability) {
            Ok(()) => {
                self.health.write_ok();
                if let Some(f) = raised {
                    self.event_floor.fetch_max(f, Ordering::AcqRel);
                }
                Ok(seq)
            }
            Err(e) => {
                let e = StoreError::from(e);
                self.health.write_failed(&e);
                Err(e)
            }
        }
    }

    /// Rebuilds the engine's tables: tokens (in parallel over `threads` workers, calling
    /// `progress` with the running count about every 100 000 tokens), pending enrollments,
    /// transactions and backup codes.
    pub fn load(
        &self,
        engine: &Engine,
        now_ms: u64,
        threads: usize,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<LoadReport, StoreError> {
        let started = Instant::now();
        let threads = threads.clamp(1, 64);
        // Token ids are BLAKE3 outputs, so equal ranges of the first two bytes hold about
        // equal numbers of tokens; more parts than threads evens out the work.
        let parts = (threads * 8).min(256);
        let next_part = AtomicU64::new(0);
        let loaded = AtomicU64::new(0);
        let results: Vec<Result<PartReport, StoreError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut total = PartReport::default();
                        loop {
                            let p = next_part.fetch_add(1, Ordering::Relaxed) as usize;
                            if p >= parts {
                                return Ok(total);
                            }
                            let r = self.load_part(engine, p, parts, &loaded, progress)?;
                            total.add(r);
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(StoreError::Invalid("a load worker panicked".into()))
                    })
                })
                .collect()
        });
        let mut report = PartReport::default();
        for r in results {
            report.add(r?);
        }
        let mut out = LoadReport {
            tokens: report.tokens,
            orphan_states: report.orphans,
            ..LoadReport::default()
        };
        let mut unknown: Vec<(String, u64)> = report.unknown.into_iter().collect();
        unknown.sort();
        out.unknown_service = unknown;

        let kv = &*self.kv;
        try_scan(kv, Cf::Enrollments, &[], None, &mut |k, v| {
            let id = TokenId(id_key(Cf::Enrollments, k)?);
            let p = schema::decode_pending(&self.key, id, v)
                .ok_or_else(|| corrupt(Cf::Enrollments, k, "undecodable or not authentic"))?;
            match engine.load_pending(now_ms, &p) {
                Ok(()) if p.expires_ms > now_ms => out.enrollments += 1,
                Ok(()) => {}
                Err(_) => add_unknown(&mut out.unknown_service, &p.service),
            }
            Ok(true)
        })?;
        // Scanned in id order (random); the engine sorts them by creation once.
        let mut txs = Vec::new();
        try_scan(kv, Cf::Transactions, &[], None, &mut |k, v| {
            let t = schema::decode_transaction(&self.key, id_key(Cf::Transactions, k)?, v)
                .ok_or_else(|| corrupt(Cf::Transactions, k, "undecodable or not authentic"))?;
            txs.push(t);
            Ok(true)
        })?;
        out.transactions = txs.len() as u64;
        engine.load_transactions(txs);
        try_scan(kv, Cf::BackupCodes, &[], None, &mut |k, v| {
            let id = TokenId(id_key(Cf::BackupCodes, k)?);
            let hashes = schema::decode_backup(&self.key, &id, v)
                .ok_or_else(|| corrupt(Cf::BackupCodes, k, "undecodable or not authentic"))?;
            engine.load_backup_codes(&id, hashes);
            Ok(true)
        })?;
        out.elapsed = started.elapsed();
        Ok(out)
    }

    /// Loads the tokens whose id starts in part `p` of `parts`: the part's states first, then
    /// its secrets, joined in key order.
    fn load_part(
        &self,
        engine: &Engine,
        p: usize,
        parts: usize,
        loaded: &AtomicU64,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<PartReport, StoreError> {
        let bound = |i: usize| -> Option<[u8; 2]> {
            (i < parts).then(|| ((i * 65_536 / parts) as u16).to_be_bytes())
        };
        let start = bound(p).unwrap_or([0, 0]);
        let end = bound(p + 1);
        let end = end.as_ref().map(|e| &e[..]);
        let kv = &*self.kv;
        let mut states: Vec<TokenStateRecord> = Vec::new();
        try_scan(kv, Cf::State, &start, end, &mut |k, v| {
            let s = schema::decode_state(TokenId(id_key(Cf::State, k)?), v)
                .ok_or_else(|| corrupt(Cf::State, k, "undecodable"))?;
            states.push(s);
            Ok(true)
        })?;
        let mut report = PartReport::default();
        let mut next_state = 0usize;
        let mut since_progress = 0u64;
        try_scan(kv, Cf::Secrets, &start, end, &mut |k, v| {
            let id = TokenId(id_key(Cf::Secrets, k)?);
            // States without secrets are orphans: skip them.
            while states.get(next_state).is_some_and(|s| s.token_id.0 < id.0) {
                next_state += 1;
                report.orphans += 1;
            }
            let status = match states.get(next_state) {
                Some(s) if s.token_id == id => *s,
                _ => return Err(corrupt(Cf::Secrets, k, "token has no state record")),
            };
            next_state += 1;
            let s = schema::decode_secrets(&self.key, &id, v)
                .ok_or_else(|| corrupt(Cf::Secrets, k, "undecodable or not authentic"))?;
            let Some(service) = engine.service_index_of(&s.service) else {
                *report.unknown.entry(s.service).or_default() += 1;
                return Ok(true);
            };
            let record = TokenRecord {
                kind: s.kind,
                service,
                secret: s.secret,
                pin_verifier: s.pin_verifier,
                duress_verifier: s.duress_verifier,
                status,
            };
            engine
                .load_token(&record)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            report.tokens += 1;
            since_progress += 1;
            if since_progress == 4096 {
                let before = loaded.fetch_add(since_progress, Ordering::Relaxed);
                if (before + since_progress) / 100_000 != before / 100_000 {
                    progress(before + since_progress);
                }
                since_progress = 0;
            }
            Ok(true)
        })?;
        loaded.fetch_add(since_progress, Ordering::Relaxed);
        report.orphans += states.len().saturating_sub(next_state) as u64;
        Ok(report)
    }

    /// The cold record of a token: `(service, username)`.
    pub fn token_info(&self, id: &TokenId) -> Result<Option<(String, String)>, StoreError> {
        match self.kv.get(Cf::Tokens, &id.0)? {
            None => Ok(None),
            Some(v) => schema::decode_info(&v)
                .map(Some)
                .ok_or_else(|| corrupt(Cf::Tokens, &id.0, "undecodable")),
        }
    }

    /// The stored state of a token, if paired.
    pub fn token_state(&self, id: &TokenId) -> Result<Option<TokenStateRecord>, StoreError> {
        match self.kv.get(Cf::State, &id.0)? {
            None => Ok(None),
            Some(v) => schema::decode_state(*id, &v)
                .map(Some)
                .ok_or_else(|| corrupt(Cf::State, &id.0, "undecodable")),
        }
    }

    /// Whether a token has a pending enrollment stored, and when it expires.
    pub fn enrollment_expiry(&self, id: &TokenId) -> Result<Option<u64>, StoreError> {
        match self.kv.get(Cf::Enrollments, &id.0)? {
            None => Ok(None),
            Some(v) => schema::decode_pending(&self.key, *id, &v)
                .map(|p| Some(p.expires_ms))
                .ok_or_else(|| corrupt(Cf::Enrollments, &id.0, "undecodable or not authentic")),
        }
    }

    /// Visits every token's cold record in id order: `(id, service, username)`.
    pub fn for_each_token(
        &self,
        visit: &mut dyn FnMut(TokenId, &str, &str) -> bool,
    ) -> Result<(), StoreError> {
        try_scan(&*self.kv, Cf::Tokens, &[], None, &mut |k, v| {
            let id = id_key(Cf::Tokens, k)?;
            let (s, u) =
                schema::decode_info(v).ok_or_else(|| corrupt(Cf::Tokens, k, "undecodable"))?;
            Ok(visit(TokenId(id), &s, &u))
        })
    }

    /// The outbox events with sequence numbers from `from_seq`, in order, at most `limit`
    /// commits.
    pub fn outbox(&self, from_seq: u64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        let mut out = Vec::new();
        let mut commits = 0;
        try_scan(
            &*self.kv,
            Cf::Outbox,
            &from_seq.to_be_bytes(),
            None,
            &mut |k, v| {
                let events = k
                    .try_into()
                    .ok()
                    .map(u64::from_be_bytes)
                    .and_then(|seq| schema::decode_outbox(seq, v))
                    .ok_or_else(|| corrupt(Cf::Outbox, k, "undecodable"))?;
                out.extend(events);
                commits += 1;
                Ok(commits < limit)
            },
        )?;
        Ok(out)
    }

    /// Removes delivered outbox commits up to and including `seq`.
    pub fn ack_outbox(&self, seq: u64) -> Result<(), StoreError> {
        let mut b = WriteBatch::new();
        self.kv.scan(
            Cf::Outbox,
            &[],
            Some(&(seq + 1).to_be_bytes()),
            &mut |k, _| {
                b.delete(Cf::Outbox, k);
                true
            },
        )?;
        b.put(Cf::Meta, META_OUTBOX_ACKED, seq.to_be_bytes());
        self.kv.write(&b, self.durability)?;
        Ok(())
    }

    /// The services kept in the database (`config_source: database`), by name.
    pub fn services(&self) -> Result<Vec<ServiceDoc>, StoreError> {
        let mut out = Vec::new();
        try_scan(&*self.kv, Cf::Services, &[], None, &mut |k, v| {
            let doc = self
                .key
                .open(Cf::Services, k, v)
                .and_then(|p| serde_json::from_slice::<ServiceDoc>(&p).ok())
                .ok_or_else(|| corrupt(Cf::Services, k, "undecodable or not authentic"))?;
            out.push(doc);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Inserts or replaces a service (sealed: it holds the webhook secret).
    pub fn put_service(&self, doc: &ServiceDoc) -> Result<(), StoreError> {
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec(doc).map_err(|e| StoreError::Invalid(e.to_string()))?,
        );
        let mut b = WriteBatch::new();
        b.put(
            Cf::Services,
            doc.name.as_bytes(),
            self.key.seal(Cf::Services, doc.name.as_bytes(), &json),
        );
        self.kv.write(&b, Durability::Fsync)?;
        Ok(())
    }

    /// Deletes a service; returns whether it existed.
    pub fn delete_service(&self, name: &str) -> Result<bool, StoreError> {
        let existed = self.kv.get(Cf::Services, name.as_bytes())?.is_some();
        let mut b = WriteBatch::new();
        b.delete(Cf::Services, name.as_bytes());
        self.kv.write(&b, Durability::Fsync)?;
        Ok(existed)
    }

    /// The authkeys kept in the database (hashes only).
    pub fn authkeys(&self) -> Result<Vec<AuthkeyDoc>, StoreError> {
        let mut out = Vec::new();
        try_scan(&*self.kv, Cf::Authkeys, &[], None, &mut |k, v| {
            match serde_json::from_slice::<AuthkeyDoc>(v) {
                Ok(d) if d.secret.is_none() => out.push(d),
                _ => return Err(corrupt(Cf::Authkeys, k, "undecodable")),
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// Inserts or replaces an authkey. Refuses a document holding a secret: only hashes are
    /// stored.
    pub fn put_authkey(&self, doc: &AuthkeyDoc) -> Result<(), StoreError> {
        if doc.secret.is_some() || doc.secret_hash.is_none() {
            return Err(StoreError::Invalid(
                "authkeys are stored by the hash of their secret only".into(),
            ));
        }
        let json = serde_json::to_vec(doc).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut b = WriteBatch::new();
        b.put(Cf::Authkeys, doc.name.as_bytes(), json);
        self.kv.write(&b, Durability::Fsync)?;
        Ok(())
    }

    /// Deletes an authkey; returns whether it existed.
    pub fn delete_authkey(&self, name: &str) -> Result<bool, StoreError> {
        let existed = self.kv.get(Cf::Authkeys, name.as_bytes())?.is_some();
        let mut b = WriteBatch::new();
        b.delete(Cf::Authkeys, name.as_bytes());
        self.kv.write(&b, Durability::Fsync)?;
        Ok(existed)
    }

    /// A new server epoch (SPEC.md §4.3): one more than the last one handed out by this
    /// database, never zero, durable before it is returned, so no two starts share one.
    /// Refused, never wrapped, once every epoch has been used; an unreadable record is
    /// corruption, never read as "none yet".
    pub fn next_epoch(&self) -> Result<u32, StoreError> {
        let last = self.last_epoch()?;
        let next = last.checked_add(1).ok_or(StoreError::EpochsExhausted)?;
        let mut b = WriteBatch::new();
        b.put(Cf::Meta, META_EPOCH, next.to_be_bytes());
        self.kv.write(&b, Durability::Fsync)?;
        Ok(next)
    }

    /// Loads one token (paired or pending) with its backup codes and transactions, for an
    /// admin command that works on the database while the server is stopped. Returns whether
    /// anything was found.
    pub fn load_one(&self, engine: &Engine, now_ms: u64, id: &TokenId) -> Result<bool, StoreError> {
        let stored = self.read_token(engine, id)?;
        let found = stored.token.is_some() || stored.pending.is_some();
        stored.apply(engine, now_ms)?;
        let txs = self.transactions_of(&std::iter::once(id.0).collect())?;
        engine.load_transactions(txs.into_values().flatten().collect());
        Ok(found || self.token_info(id)?.is_some())
    }

    /// The stored transactions of the tokens in `wanted`, by token (one scan of all
    /// transactions: there is no index by token).
    pub(crate) fn transactions_of(
        &self,
        wanted: &std::collections::HashSet<[u8; 16]>,
    ) -> Result<std::collections::HashMap<[u8; 16], Vec<zoftoken_engine::Transaction>>, StoreError>
    {
        let mut txs: std::collections::HashMap<[u8; 16], Vec<_>> = Default::default();
        self.kv.scan(Cf::Transactions, &[], None, &mut |k, v| {
            if let Some(t) = k
                .try_into()
                .ok()
                .and_then(|k| schema::decode_transaction(&self.key, k, v))
            {
                if wanted.contains(&t.token_id.0) {
                    txs.entry(t.token_id.0).or_default().push(t);
                }
            }
            true
        })?;
        Ok(txs)
    }

    /// Reads one token's records (paired token, pending enrollment, backup codes; not its
    /// transactions) without changing the engine.
    pub(crate) fn read_token(
        &self,
        engine: &Engine,
        id: &TokenId,
    ) -> Result<StoredToken, StoreError> {
        let mut stored = StoredToken {
            id: *id,
            token: None,
            pending: None,
            backup: None,
        };
        if let Some(v) = self.kv.get(Cf::Secrets, &id.0)? {
            let s = schema::decode_secrets(&self.key, id, &v)
                .ok_or_else(|| corrupt(Cf::Secrets, &id.0, "undecodable or not authentic"))?;
            let status = self
                .token_state(id)?
                .ok_or_else(|| corrupt(Cf::Secrets, &id.0, "token has no state record"))?;
            let service = engine.service_index_of(&s.service).ok_or_else(|| {
                StoreError::Invalid(format!("service `{}` is not configured", s.service))
            })?;
            stored.token = Some(TokenRecord {
                kind: s.kind,
                service,
                secret: s.secret,
                pin_verifier: s.pin_verifier,
                duress_verifier: s.duress_verifier,
                status,
            });
        }
        if let Some(v) = self.kv.get(Cf::Enrollments, &id.0)? {
            stored.pending =
                Some(schema::decode_pending(&self.key, *id, &v).ok_or_else(|| {
                    corrupt(Cf::Enrollments, &id.0, "undecodable or not authentic")
                })?);
        }
        if let Some(v) = self.kv.get(Cf::BackupCodes, &id.0)? {
            stored.backup =
                Some(schema::decode_backup(&self.key, id, &v).ok_or_else(|| {
                    corrupt(Cf::BackupCodes, &id.0, "undecodable or not authentic")
                })?);
        }
        Ok(stored)
    }

    /// Makes everything durable (clean shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        Ok(self.kv.flush()?)
    }

    /// The instance's PIN-tree secret, from the master key (the engine derives every
    /// token's PIN root from it).
    pub fn pin_tree_secret(&self) -> &crate::PinTreeSecret {
        self.master_key().pin_tree_secret()
    }

    pub(crate) fn master_key(&self) -> &MasterKey {
        &self.key
    }
}

/// One token's records as read by [`Store::read_token`].
pub(crate) struct StoredToken {
    id: TokenId,
    token: Option<TokenRecord>,
    pending: Option<zoftoken_engine::PendingRecord>,
    backup: Option<Vec<[u8; 16]>>,
}

impl StoredToken {
    /// Loads the records into the engine.
    pub(crate) fn apply(self, engine: &Engine, now_ms: u64) -> Result<(), StoreError> {
        if let Some(t) = &self.token {
            engine
                .load_token(t)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
        }
        if let Some(p) = &self.pending {
            engine
                .load_pending(now_ms, p)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
        }
        if let Some(hashes) = self.backup {
            engine.load_backup_codes(&self.id, hashes);
        }
        Ok(())
    }
}

/// A scan visitor that may fail: `Ok(false)` stops, an error stops and is returned.
pub(crate) type TryVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StoreError> + 'a;

/// Scans `[start, end)` of `cf` with a visitor that may fail; stops at the first error and
/// returns it.
pub(crate) fn try_scan(
    kv: &dyn KvStore,
    cf: Cf,
    start: &[u8],
    end: Option<&[u8]>,
    visit: &mut TryVisitor<'_>,
) -> Result<(), StoreError> {
    let mut err = None;
    kv.scan(cf, start, end, &mut |k, v| match visit(k, v) {
        Ok(go_on) => go_on,
        Err(e) => {
            err = Some(e);
            false
        }
    })?;
    err.map_or(Ok(()), Err)
}

/// The 16-byte id a key of `cf` must be.
fn id_key(cf: Cf, k: &[u8]) -> Result<[u8; 16], StoreError> {
    k.try_into()
        .map_err(|_| corrupt(cf, k, "key is not a 16-byte id"))
}

fn add_unknown(list: &mut Vec<(String, u64)>, service: &str) {
    match list.iter_mut().find(|(s, _)| s == service) {
        Some((_, n)) => *n += 1,
        None => list.push((service.to_owned(), 1)),
    }
}

#[derive(Default)]
struct PartReport {
    tokens: u64,
    orphans: u64,
    unknown: std::collections::HashMap<String, u64>,
}

impl PartReport {
    fn add(&mut self, o: PartReport) {
        self.tokens += o.tokens;
        self.orphans += o.orphans;
        for (k, v) in o.unknown {
            *self.unknown.entry(k).or_default() += v;
        }
    }
}
