//! Loading at start: the engine's tables rebuilt from the database, tokens in parallel over
//! ranges of the token-id space (states and secrets of a range scanned in key order and
//! joined), then enrollments, transactions, backup codes and offline challenges.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use zoftoken_engine::{Engine, TokenRecord, TokenStateRecord};
use zoftoken_proto::TokenId;

use crate::error::{corrupt, StoreError};
use crate::kv::Cf;
use crate::scan::{id_key, try_scan};
use crate::schema;
use crate::Store;

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

impl Store {
    /// Rebuilds the engine's tables: tokens (in parallel over `threads` workers, calling
    /// `progress` with the running count about every 100 000 tokens), pending enrollments,
    /// transactions, backup codes and offline challenges (expired ones are not loaded).
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
        try_scan(kv, Cf::OfflineChallenges, &[], None, &mut |k, v| {
            let id = TokenId(id_key(Cf::OfflineChallenges, k)?);
            let c = schema::decode_challenge(&self.key, &id, v)
                .ok_or_else(|| corrupt(Cf::OfflineChallenges, k, "undecodable or not authentic"))?;
            engine.load_challenge(now_ms, &id, Some(c));
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
    unknown: HashMap<String, u64>,
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
