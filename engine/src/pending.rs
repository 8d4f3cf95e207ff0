//! Pending items kept beside the hot token table: enrollments waiting for their app's pairing
//! ([`Enrollments`]), and per-token transactions, offline challenges and backup codes
//! ([`PendingItems`]). These are rare compared with packets, so they live behind locks of their
//! own in the engine: `enrollments` before a shard lock, `pending_items` after it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use zoftoken_proto::replay::ReplayWindow;
use zoftoken_proto::{SecretBytes, TokenId, TokenKeys, TokenSecret, TxState};

use crate::mutation::{Batch, CandidateRecord, Mutation, PendingRecord};
use crate::transaction::Transaction;

/// One form of an enrollment (deeplink or manual code): its pairing id and enrollment keys.
pub(crate) struct EnrollmentForm {
    pub(crate) pairing_id: [u8; 16],
    pub(crate) d2s: [u8; 32],
    pub(crate) s2d: [u8; 32],
}

/// The token secret offered by PAIR_INIT, waiting for PAIR_COMPLETE.
pub(crate) struct PairingCandidate {
    pub(crate) secret: TokenSecret,
    pub(crate) keys: TokenKeys,
    pub(crate) offset_ms: i64,
    pub(crate) window: ReplayWindow,
}

/// An enrollment waiting for its app: usable through either form until `expires_ms`.
pub(crate) struct PendingEnrollment {
    pub(crate) service: u16,
    pub(crate) forms: [EnrollmentForm; 2],
    pub(crate) expires_ms: u64,
    /// The highest PAIR_INIT counter accepted (each PAIR_INIT must be higher).
    pub(crate) max_init_counter: u64,
    pub(crate) candidate: Option<PairingCandidate>,
    /// The deeplink's enrollment secret (see [`PendingRecord::link_secret`]).
    pub(crate) link_secret: Option<SecretBytes>,
}

/// The enrollments waiting for their app, by token id and by pairing id.
#[derive(Default)]
pub(crate) struct Enrollments {
    pub(crate) by_token: HashMap<[u8; 16], PendingEnrollment>,
    pub(crate) by_pairing: HashMap<[u8; 16], [u8; 16]>,
}

impl Enrollments {
    /// Withdraws the token's enrollment, if any.
    pub(crate) fn remove(&mut self, token: &[u8; 16]) -> Option<PendingEnrollment> {
        let p = self.by_token.remove(token)?;
        for f in &p.forms {
            self.by_pairing.remove(&f.pairing_id);
        }
        Some(p)
    }

    /// Puts the token's enrollment, replacing an earlier one.
    pub(crate) fn insert(&mut self, token: [u8; 16], p: PendingEnrollment) {
        self.remove(&token);
        for f in &p.forms {
            self.by_pairing.insert(f.pairing_id, token);
        }
        self.by_token.insert(token, p);
    }

    /// The token's enrollment as storage keeps it.
    pub(crate) fn record(&self, token: &[u8; 16], service: Arc<str>) -> Option<PendingRecord> {
        let p = self.by_token.get(token)?;
        let form = |f: &EnrollmentForm| {
            (
                f.pairing_id,
                SecretBytes::new(f.d2s),
                SecretBytes::new(f.s2d),
            )
        };
        Some(PendingRecord {
            token_id: TokenId(*token),
            service,
            forms: [form(&p.forms[0]), form(&p.forms[1])],
            expires_ms: p.expires_ms,
            max_init_counter: p.max_init_counter,
            candidate: p.candidate.as_ref().map(|c| CandidateRecord {
                secret: SecretBytes::new(*c.secret.expose()),
                offset_ms: c.offset_ms,
            }),
            link_secret: p.link_secret.clone(),
        })
    }
}

/// An outstanding offline challenge.
pub(crate) struct OfflineChallenge {
    pub(crate) code: String,
    pub(crate) expires_ms: u64,
}

/// Transactions, offline challenges and backup codes, by token.
#[derive(Default)]
pub(crate) struct PendingItems {
    pub(crate) transactions: HashMap<[u8; 16], Transaction>,
    /// Each token's transactions, in creation order.
    pub(crate) tx_by_token: HashMap<[u8; 16], VecDeque<[u8; 16]>>,
    pub(crate) challenges: HashMap<[u8; 16], OfflineChallenge>,
    /// Each token's unused backup codes (keyed hashes).
    pub(crate) backup: HashMap<[u8; 16], Vec<[u8; 16]>>,
}

impl PendingItems {
    /// The oldest waiting, unexpired transaction of a token.
    pub(crate) fn waiting(&self, token: &[u8; 16], now_ms: u64) -> Option<&Transaction> {
        self.tx_by_token.get(token)?.iter().find_map(|id| {
            self.transactions
                .get(id)
                .filter(|t| t.state == TxState::Waiting && t.expires_ms > now_ms)
        })
    }

    /// Forgets everything attached to a token (delete, re-enroll) and records the deletions
    /// for storage.
    pub(crate) fn forget(&mut self, token: &[u8; 16], batch: &mut Batch) {
        if let Some(ids) = self.tx_by_token.remove(token) {
            for id in ids {
                self.transactions.remove(&id);
                batch.mutations.push(Mutation::DeleteTransaction(id));
            }
        }
        if self.challenges.remove(token).is_some() {
            batch
                .mutations
                .push(Mutation::DeleteChallenge(TokenId(*token)));
        }
        if self.backup.remove(token).is_some() {
            batch
                .mutations
                .push(Mutation::BackupCodes(TokenId(*token), Vec::new()));
        }
    }
}
