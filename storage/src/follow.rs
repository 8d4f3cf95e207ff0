//! Following the other writers of a shared database: each server keeps its engine's memory
//! current by reading the store's change feed ([`crate::kv::feed`]) and reading again what
//! the other servers and the command line changed.
//!
//! A [`Follower`] is made before the tables are loaded (its cursor is where the feed stood
//! then, so nothing committed during the load is missed). [`Store::follow`] reads the feed
//! once and, for what others changed:
//!
//! - a token (its state, secrets, cold record, pending enrollment, backup codes or offline
//!   challenge; the challenge is read only when it changed): the
//!   token is marked for a restore, forgotten and loaded again from the database, keeping
//!   the highest device counter this server saw (as after a failed write; its long polls
//!   wake). A token a batch of this server is writing is left for the next read: that
//!   batch either fails its compare-and-set (and restores the token) or writes after the
//!   other writer's change;
//! - a transaction: read again with its token, replaced or forgotten;
//! - services or authkeys: the caller's reload runs, before the tokens are read (a token of a
//!   new service is loaded once the service is there);
//! - the outbox: reported ([`Followed::outbox`]);
//! - an event-sequence floor: this process's event numbers are raised above it, so that a
//!   token's next event here is numbered after the other server's events of it (the floor
//!   that covers an event is written no later than the event).
//!
//! The feed's read time is recorded in [`crate::Health`] (reads from memory are fresh while
//! it is recent). What it does not do: read the feed by itself (the server's follower thread
//! calls it), or change anything in the database.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use zoftoken_engine::{Engine, Transaction};
use zoftoken_proto::TokenId;

use crate::error::StoreError;
use crate::kv::{Cf, FeedCursor, FeedError};
use crate::schema;
use crate::Store;

/// Where one server stands in the change feed, and what it must read again.
#[derive(Debug)]
pub struct Follower {
    cursor: FeedCursor,
    /// This server's writer id (its epoch): its own commits are in its memory already.
    own: u64,
    /// Tokens changed by others while a batch of this server had them: refreshed at a later
    /// read.
    deferred: HashSet<[u8; 16]>,
    /// Transactions changed by others, deferred with their token.
    deferred_txs: HashSet<[u8; 16]>,
    /// Deferred tokens whose offline challenge others changed.
    deferred_challenges: HashSet<[u8; 16]>,
}

/// What one [`Store::follow`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Followed {
    /// Commits read from the feed (this server's own included).
    pub commits: usize,
    /// Tokens read again from the database.
    pub tokens: usize,
    /// Transactions read again.
    pub transactions: usize,
    /// Tokens left for a later read (a batch of this server is writing them).
    pub deferred: usize,
    /// Tokens of a service this server does not have: forgotten, not loaded.
    pub unknown_service: usize,
    /// Services or authkeys changed (the caller's reload ran).
    pub configuration: bool,
    /// Events were written to the outbox.
    pub outbox: bool,
}

/// Why [`Store::follow`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FollowError {
    /// The feed pruned commits this server had not read (it could not reach the database
    /// for longer than the feed keeps them): its memory may miss changes. Restart the
    /// server, which loads everything again.
    #[error(transparent)]
    Behind(FeedError),
    /// The database could not be read; nothing changed, the next read tries again.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// A follower of the other writers of this database from now, writing as `own` (the
    /// server's epoch, also set as this store's writer id). `None` for a store no other
    /// process writes. Take it before loading the tables.
    pub fn follower(&self, own: u64) -> Result<Option<Follower>, StoreError> {
        self.kv().set_writer(own);
        let began = Instant::now();
        let Some(cursor) = self.kv().feed_start()? else {
            return Ok(None);
        };
        self.health().start_following(began);
        Ok(Some(Follower {
            cursor,
            own,
            deferred: HashSet::new(),
            deferred_txs: HashSet::new(),
            deferred_challenges: HashSet::new(),
        }))
    }

    /// Reads the change feed once and brings the engine's memory up to it (see the module's
    /// documentation). When services or authkeys changed, `reload_configuration` runs
    /// first (tokens of a new service are loaded after it). On an error the follower stays
    /// where it was.
    pub fn follow(
        &self,
        engine: &Engine,
        now_ms: u64,
        follower: &mut Follower,
        reload_configuration: &mut dyn FnMut(),
    ) -> Result<Followed, FollowError> {
        let began = Instant::now();
        let read = match self.kv().feed_read(&follower.cursor, follower.own) {
            Ok(read) => read,
            Err(FeedError::Kv(e)) => return Err(self.unreachable(e.into()).into()),
            Err(e) => return Err(FollowError::Behind(e)),
        };
        let mut done = Followed {
            commits: read.commits,
            ..Followed::default()
        };
        let mut tokens: HashSet<[u8; 16]> = std::mem::take(&mut follower.deferred);
        let mut txs: HashSet<[u8; 16]> = std::mem::take(&mut follower.deferred_txs);
        let mut challenged: HashSet<[u8; 16]> = std::mem::take(&mut follower.deferred_challenges);
        for (cf, key) in &read.keys {
            match cf {
                Cf::Tokens | Cf::Secrets | Cf::State | Cf::Enrollments | Cf::BackupCodes => {
                    if let Ok(id) = <[u8; 16]>::try_from(key.as_slice()) {
                        tokens.insert(id);
                    }
                }
                Cf::OfflineChallenges => {
                    if let Ok(id) = <[u8; 16]>::try_from(key.as_slice()) {
                        tokens.insert(id);
                        challenged.insert(id);
                    }
                }
                Cf::Transactions => {
                    if let Ok(id) = <[u8; 16]>::try_from(key.as_slice()) {
                        txs.insert(id);
                    }
                }
                Cf::Services | Cf::Authkeys => done.configuration = true,
                Cf::Outbox => done.outbox = true,
                // Another writer's event numbers reached this floor: this process's next
                // numbers go above it, so a token's events keep their order across servers.
                Cf::Meta => {
                    if let Some(floor) = schema::meta::event_floor_of(key) {
                        zoftoken_engine::event::raise_sequence_floor(floor);
                    }
                }
                Cf::Webhooks => {}
            }
        }
        if done.configuration {
            reload_configuration();
        }
        let refreshed = match self.refresh(engine, now_ms, &mut tokens, &mut txs, &|id| {
            challenged.contains(&id.0)
        }) {
            Ok(r) => r,
            Err(e) => {
                follower.deferred = tokens;
                follower.deferred_txs = txs;
                follower.deferred_challenges = challenged;
                return Err(self.unreachable(e).into());
            }
        };
        challenged.retain(|id| refreshed.deferred.contains(id));
        follower.deferred_challenges = challenged;
        done.tokens = refreshed.tokens;
        done.transactions = refreshed.transactions;
        done.unknown_service = refreshed.unknown_service;
        done.deferred = refreshed.deferred.len();
        follower.deferred = refreshed.deferred;
        follower.deferred_txs = refreshed.deferred_txs;
        follower.cursor = read.cursor;
        self.health().followed(began);
        Ok(done)
    }

    /// Reads one token again from the database into the engine, as the follower does for a
    /// token another writer changed: for an operation that found the token missing or not
    /// paired in memory, which another server may have changed a moment ago. Returns whether
    /// it was read (`false`: a batch of this server is writing it). A store no other process
    /// writes has nothing to read again.
    pub fn refresh_token(
        &self,
        engine: &Engine,
        now_ms: u64,
        id: &TokenId,
    ) -> Result<bool, StoreError> {
        if !self.kv().is_shared() {
            return Ok(false);
        }
        let done = self
            .refresh(
                engine,
                now_ms,
                &mut HashSet::from([id.0]),
                &mut HashSet::new(),
                &|_| true,
            )
            .map_err(|e| self.unreachable(e))?;
        Ok(done.deferred.is_empty())
    }

    /// Reads `tokens` and `txs` again from the database into the engine (with the offline
    /// challenges of the tokens `read_challenge` names); the sets are emptied. On a read
    /// error nothing changed in the engine and the sets hold everything still to read again.
    fn refresh(
        &self,
        engine: &Engine,
        now_ms: u64,
        tokens: &mut HashSet<[u8; 16]>,
        txs: &mut HashSet<[u8; 16]>,
        read_challenge: &dyn Fn(&TokenId) -> bool,
    ) -> Result<Refreshed, StoreError> {
        // Each changed transaction, as stored now (`None`: removed), with its token.
        let tx_ids: Vec<[u8; 16]> = txs.iter().copied().collect();
        let keys: Vec<&[u8]> = tx_ids.iter().map(|k| &k[..]).collect();
        let stored = self.kv().get_many(Cf::Transactions, &keys)?;
        let mut by_token: HashMap<[u8; 16], Vec<ChangedTransaction>> = HashMap::new();
        for (id, value) in tx_ids.iter().zip(stored) {
            let tx = value.and_then(|v| schema::decode_transaction(self.master_key(), *id, &v));
            let token = tx
                .as_ref()
                .map(|t| t.token_id)
                .or_else(|| engine.transaction_token(id));
            if let Some(token) = token {
                tokens.insert(token.0);
                by_token.entry(token.0).or_default().push((*id, tx));
            }
        }
        // The tokens no batch of this server is writing are held for the refresh.
        let mut out = Refreshed::default();
        let mut marked = Vec::with_capacity(tokens.len());
        for id in tokens.drain() {
            if engine.mark_for_restore(&TokenId(id)) {
                marked.push(TokenId(id));
            } else {
                if let Some(list) = by_token.get(&id) {
                    out.deferred_txs.extend(list.iter().map(|(tx, _)| *tx));
                }
                out.deferred.insert(id);
            }
        }
        let loaded = match self.read_each_token(engine, &marked, read_challenge) {
            Ok(l) => l,
            Err(e) => {
                // Nothing was forgotten: release the tokens as they were.
                let unchanged: Vec<(TokenId, u64)> = marked.iter().map(|id| (*id, 0)).collect();
                engine.finish_restore(&unchanged);
                tokens.extend(out.deferred);
                tokens.extend(marked.iter().map(|t| t.0));
                return Err(e);
            }
        };
        txs.clear();
        let mut restored = Vec::with_capacity(marked.len());
        for (id, records) in marked.iter().zip(loaded) {
            let highest = engine.forget_for_refresh(id);
            match records {
                Ok(records) => {
                    if let Err(e) = records.apply(engine, now_ms) {
                        tracing::warn!(token = %hex::encode(id.0), "token not loaded: {e}");
                        out.unknown_service += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(token = %hex::encode(id.0), "token not loaded: {e}");
                    out.unknown_service += 1;
                }
            }
            for (tx_id, tx) in by_token.remove(&id.0).unwrap_or_default() {
                match tx {
                    Some(tx) => engine.load_transaction(tx),
                    None => engine.forget_transaction(&tx_id),
                }
                out.transactions += 1;
            }
            out.tokens += 1;
            restored.push((*id, highest));
        }
        engine.finish_restore(&restored);
        Ok(out)
    }
}

/// A transaction another writer changed: its id and its record now (`None`: removed).
type ChangedTransaction = ([u8; 16], Option<Transaction>);

/// What [`Store::refresh`] did.
#[derive(Default)]
struct Refreshed {
    tokens: usize,
    transactions: usize,
    unknown_service: usize,
    deferred: HashSet<[u8; 16]>,
    deferred_txs: HashSet<[u8; 16]>,
}
