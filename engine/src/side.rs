//! State kept beside the hot token table: pending enrollments, transactions, offline
//! challenges and backup codes. These are rare compared with packets, so they live behind
//! their own locks, taken after a shard lock when both are needed.

use std::collections::{HashMap, VecDeque};

use zoftoken_proto::replay::ReplayWindow;
use zoftoken_proto::{TokenId, TokenKeys, TokenSecret};

use crate::mutation::PendingRecord;

/// One form of an enrollment (deeplink or manual code).
pub(crate) struct Form {
    pub pairing_id: [u8; 16],
    pub d2s: [u8; 32],
    pub s2d: [u8; 32],
}

/// The token secret offered by PAIR_INIT, waiting for PAIR_COMPLETE.
pub(crate) struct Candidate {
    pub secret: TokenSecret,
    pub keys: TokenKeys,
    pub offset_ms: i64,
    pub window: ReplayWindow,
}

pub(crate) struct PendingToken {
    pub service: u16,
    pub forms: [Form; 2],
    pub expires_ms: u64,
    pub max_init_counter: u64,
    pub candidate: Option<Candidate>,
}

#[derive(Default)]
pub(crate) struct Pending {
    pub by_token: HashMap<[u8; 16], PendingToken>,
    pub by_pairing: HashMap<[u8; 16], [u8; 16]>,
}

impl Pending {
    pub fn remove(&mut self, token: &[u8; 16]) -> Option<PendingToken> {
        let p = self.by_token.remove(token)?;
        for f in &p.forms {
            self.by_pairing.remove(&f.pairing_id);
        }
        Some(p)
    }

    pub fn insert(&mut self, token: [u8; 16], p: PendingToken) {
        self.remove(&token);
        for f in &p.forms {
            self.by_pairing.insert(f.pairing_id, token);
        }
        self.by_token.insert(token, p);
    }

    pub fn record(&self, token: &[u8; 16], service: std::sync::Arc<str>) -> Option<PendingRecord> {
        let p = self.by_token.get(token)?;
        let form = |f: &Form| {
            (
                f.pairing_id,
                zoftoken_proto::SecretBytes::new(f.d2s),
                zoftoken_proto::SecretBytes::new(f.s2d),
            )
        };
        Some(PendingRecord {
            token_id: TokenId(*token),
            service,
            forms: [form(&p.forms[0]), form(&p.forms[1])],
            expires_ms: p.expires_ms,
        })
    }
}

/// A push-approval transaction (seed 003: WAITING → OK / CANCEL / FAILED).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// Its id.
    pub tx_id: [u8; 16],
    /// The token asked.
    pub token_id: TokenId,
    /// The message shown on the phone (≤ 200 bytes of UTF-8).
    pub message: String,
    /// Created (Unix ms).
    pub created_ms: u64,
    /// Expires (Unix ms).
    pub expires_ms: u64,
    /// Its state.
    pub state: zoftoken_proto::TxState,
    /// Whether it was approved with the duress PIN.
    pub duress: bool,
}

/// An outstanding offline challenge.
pub(crate) struct Challenge {
    pub code: String,
    pub expires_ms: u64,
}

#[derive(Default)]
pub(crate) struct Side {
    pub transactions: HashMap<[u8; 16], Transaction>,
    pub tx_by_token: HashMap<[u8; 16], VecDeque<[u8; 16]>>,
    pub challenges: HashMap<[u8; 16], Challenge>,
    pub backup: HashMap<[u8; 16], Vec<[u8; 16]>>,
}

impl Side {
    /// The oldest waiting, unexpired transaction of a token.
    pub fn waiting(&self, token: &[u8; 16], now_ms: u64) -> Option<&Transaction> {
        self.tx_by_token.get(token)?.iter().find_map(|id| {
            self.transactions
                .get(id)
                .filter(|t| t.state == zoftoken_proto::TxState::Waiting && t.expires_ms > now_ms)
        })
    }

    /// Forgets everything attached to a token (delete, re-enroll) and records the deletions
    /// for storage.
    pub fn forget(&mut self, token: &[u8; 16], batch: &mut crate::Batch) {
        use crate::Mutation;
        if let Some(ids) = self.tx_by_token.remove(token) {
            for id in ids {
                self.transactions.remove(&id);
                batch.mutations.push(Mutation::DeleteTransaction(id));
            }
        }
        self.challenges.remove(token);
        if self.backup.remove(token).is_some() {
            batch
                .mutations
                .push(Mutation::BackupCodes(TokenId(*token), Vec::new()));
        }
    }
}
