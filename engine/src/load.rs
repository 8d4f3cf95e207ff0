//! Loading what storage holds into the engine: at start-up (every token, enrollment,
//! transaction and backup-code set) and when a token is restored after a failed commit
//! (`crate::restore`). Secrets arrive opened; packet keys are derived again here.

use zoftoken_proto::keys::context;
use zoftoken_proto::replay::ReplayWindow;
use zoftoken_proto::{SecretBytes, TokenId, TokenSecret};

use crate::mutation::{ChallengeRecord, PendingRecord, TokenRecord};
use crate::pending::{
    EnrollmentForm, OfflineChallenge, PairingCandidate, PendingEnrollment, PendingItems,
};
use crate::state::{
    schedule_expiry, TokenEntry, TokenKind, FLAG_HAS_DURESS, FLAG_OPEN_DURESS, FLAG_TIMER,
    FLAG_TOTP,
};
use crate::transaction::Transaction;
use crate::{lock, Engine, EngineError};

impl Engine {
    /// Loads a paired token's persisted record at start (storage rebuilds the tables).
    pub fn load_token(&self, record: &TokenRecord) -> Result<(), EngineError> {
        let service = record.service;
        if self.services().get(service).is_none() {
            return Err(EngineError::UnknownService);
        }
        let secret = zeroize::Zeroizing::new(*record.secret.expose());
        let status = &record.status;
        let totp = record.kind == TokenKind::Totp;
        // A TOTP token's packet keys are random (see `enroll_totp`), never derived from its
        // secret, which its user knows.
        let (d2s, s2d) = if totp {
            (self.random::<32>(), self.random::<32>())
        } else {
            (
                blake3::derive_key(context::D2S, &*secret),
                blake3::derive_key(context::S2D, &*secret),
            )
        };
        let entry = TokenEntry {
            id: status.token_id.0,
            secret: *secret,
            d2s: zoftoken_proto::aead::PacketKey::new(d2s),
            s2d: zoftoken_proto::aead::PacketKey::new(s2d),
            pin: *record.pin_verifier.expose(),
            duress: record
                .duress_verifier
                .as_ref()
                .map_or([0; 32], |d| *d.expose()),
            highest: status.highest_counter,
            open_until_ms: status.open_until_ms,
            offset_ms: status.clock_offset_ms,
            last_seen_s: (status.last_seen_ms / 1000) as u32,
            otp_last_step: u32::try_from(status.otp_last_step).unwrap_or(u32::MAX),
            service,
            state: status.state,
            failures: status.failures,
            flags: if record.duress_verifier.is_some() {
                FLAG_HAS_DURESS
            } else {
                0
            } | if status.open_duress {
                FLAG_OPEN_DURESS
            } else {
                0
            } | if totp { FLAG_TOTP } else { 0 },
            otp_drift: status.otp_drift,
            version: status.version,
            recent: u32::MAX,
            duress_op: status.last_duress.map_or(0, |d| d.operation.byte()),
            duress_ms: status.last_duress.map_or(0, |d| d.time_ms),
        };
        let mut shard = self.shard(&status.token_id.0);
        let slot = match shard.table.find(&entry.id) {
            Some(slot) => {
                if let Some(e) = shard.table.get_mut(slot) {
                    *e = entry;
                }
                slot
            }
            None => self.insert_entry(&mut shard, entry),
        };
        let shard = &mut *shard;
        if let Some(e) = shard.table.get_mut(slot) {
            e.flags &= !FLAG_TIMER;
            schedule_expiry(&mut shard.timers, e, slot);
        }
        Ok(())
    }

    /// Loads a pending enrollment at start. An expired one is ignored (the next `tick` would
    /// drop it anyway).
    pub fn load_pending(&self, now_ms: u64, record: &PendingRecord) -> Result<(), EngineError> {
        if record.expires_ms <= now_ms {
            return Ok(());
        }
        let service = self.service_index(&record.service)?;
        let form = |(pairing_id, d2s, s2d): &([u8; 16], SecretBytes, SecretBytes)| EnrollmentForm {
            pairing_id: *pairing_id,
            d2s: *d2s.expose(),
            s2d: *s2d.expose(),
        };
        let [a, b] = &record.forms;
        lock(&self.enrollments).insert(
            record.token_id.0,
            PendingEnrollment {
                service,
                forms: [form(a), form(b)],
                expires_ms: record.expires_ms,
                max_init_counter: record.max_init_counter,
                candidate: record.candidate.as_ref().map(|c| {
                    let secret = TokenSecret::from_bytes(*c.secret.expose());
                    let keys = secret.keys();
                    PairingCandidate {
                        secret,
                        keys,
                        offset_ms: c.offset_ms,
                        window: ReplayWindow::new(),
                    }
                }),
                link_secret: record.link_secret.clone(),
            },
        );
        Ok(())
    }

    /// Loads a transaction at start (kept in creation order per token). Appending in that
    /// order costs O(1); otherwise its place is found by binary search. To load many, use
    /// [`Engine::load_transactions`].
    pub fn load_transaction(&self, tx: Transaction) {
        let mut items = lock(&self.pending_items);
        Self::insert_loaded(&mut items, tx);
    }

    /// Loads transactions at start, in any order: sorted by creation first, so that each is
    /// appended to its token's list (O(n log n) in all).
    pub fn load_transactions(&self, mut txs: Vec<Transaction>) {
        txs.sort_unstable_by_key(|t| (t.created_ms, t.tx_id));
        let mut items = lock(&self.pending_items);
        for tx in txs {
            Self::insert_loaded(&mut items, tx);
        }
    }

    fn insert_loaded(items: &mut PendingItems, tx: Transaction) {
        let order = |t: &Transaction| (t.created_ms, t.tx_id);
        let key = order(&tx);
        if let Some(old) = items.transactions.insert(tx.tx_id, tx) {
            // Loaded twice: keep one place in the list.
            if let Some(q) = items.tx_by_token.get_mut(&old.token_id.0) {
                q.retain(|t| *t != old.tx_id);
            }
        }
        let Some(token) = items.transactions.get(&key.1).map(|t| t.token_id.0) else {
            return;
        };
        let transactions = &items.transactions;
        let list = items.tx_by_token.entry(token).or_default();
        let before = |id: &[u8; 16]| transactions.get(id).is_some_and(|t| order(t) <= key);
        if list.back().is_none_or(before) {
            list.push_back(key.1);
        } else {
            let at = list.partition_point(before);
            list.insert(at, key.1);
        }
    }

    /// Loads a token's backup-code hashes at start.
    pub fn load_backup_codes(&self, id: &TokenId, hashes: Vec<[u8; 16]>) {
        if !hashes.is_empty() {
            lock(&self.pending_items).backup.insert(id.0, hashes);
        }
    }

    /// Loads a token's offline challenge (at start, or as another server wrote it); an
    /// expired one is not loaded, and `None` forgets the one in memory (answered or replaced
    /// elsewhere). Call with the token marked for a restore when the server is running.
    pub fn load_challenge(&self, now_ms: u64, id: &TokenId, challenge: Option<ChallengeRecord>) {
        let mut items = lock(&self.pending_items);
        match challenge {
            Some(c) if c.expires_ms > now_ms && c.token_id == *id => {
                items.challenges.insert(
                    id.0,
                    OfflineChallenge {
                        code: c.code,
                        expires_ms: c.expires_ms,
                    },
                );
            }
            _ => {
                items.challenges.remove(&id.0);
            }
        }
    }
}
