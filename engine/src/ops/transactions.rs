//! Push-approval transactions through the API: created WAITING for the token's app, read by
//! id (an expired one reads EXPIRED); the app decides them (`crate::packet`), the timers expire
//! and forget them (`crate::timers`).

use zoftoken_proto::{TokenId, TxState};

use crate::mutation::{Batch, Mutation};
use crate::state::TokenKind;
use crate::transaction::Transaction;
use crate::{lock, Engine, EngineError};

/// How long a finished (decided or expired) transaction stays readable after its expiry.
pub const TX_RETENTION_MS: u64 = 3_600_000;
/// Transactions a token may have waiting (neither decided nor expired) at once; one more is
/// refused ([`EngineError::TooManyTransactions`]). The app shows them one at a time.
pub const MAX_WAITING_TRANSACTIONS: usize = 16;
/// Transactions a token may have kept at once, waiting or finished and still readable
/// ([`TX_RETENTION_MS`]); one more is refused. Bounds the memory and start-up work one token
/// can cost, however short the transactions' timeouts.
pub const MAX_KEPT_TRANSACTIONS: usize = 256;

impl Engine {
    /// Creates a push-approval transaction (admin): WAITING until the app approves or denies,
    /// expired after `timeout_ms`.
    pub fn create_transaction(
        &self,
        now_ms: u64,
        id: &TokenId,
        message: &str,
        timeout_ms: u64,
        batch: &mut Batch,
    ) -> Result<[u8; 16], EngineError> {
        if message.len() > zoftoken_proto::wire::TX_MESSAGE_MAX {
            return Err(EngineError::Invalid(
                "message longer than 200 bytes of UTF-8",
            ));
        }
        if !(1_000..=3_600_000).contains(&timeout_ms) {
            return Err(EngineError::Invalid("timeout must be 1 s to 1 h"));
        }
        if self.paired_kind(id)? == TokenKind::Totp {
            return Err(EngineError::NotForTotp);
        }
        {
            let items = lock(&self.pending_items);
            if let Some(list) = items.tx_by_token.get(&id.0) {
                let waiting = list
                    .iter()
                    .filter_map(|t| items.transactions.get(t))
                    .filter(|t| t.state == TxState::Waiting && t.expires_ms > now_ms)
                    .count();
                if waiting >= MAX_WAITING_TRANSACTIONS || list.len() >= MAX_KEPT_TRANSACTIONS {
                    return Err(EngineError::TooManyTransactions);
                }
            }
        }
        // Lock order: shard (the mark) before pending items.
        self.mark_unsettled(&id.0, batch)?;
        let mut items = lock(&self.pending_items);
        // `rng` is a leaf lock: taking it under `pending_items` keeps the lock order.
        let tx_id = self.random::<16>();
        let tx = Transaction {
            tx_id,
            token_id: *id,
            message: message.to_owned(),
            created_ms: now_ms,
            expires_ms: now_ms + timeout_ms,
            state: TxState::Waiting,
            duress: false,
        };
        items.tx_by_token.entry(id.0).or_default().push_back(tx_id);
        batch
            .mutations
            .push(Mutation::Transaction(Box::new(tx.clone())));
        items.transactions.insert(tx_id, tx);
        Ok(tx_id)
    }

    /// Reads a transaction (any key).
    pub fn transaction(&self, now_ms: u64, tx_id: &[u8; 16]) -> Result<Transaction, EngineError> {
        let mut tx = lock(&self.pending_items)
            .transactions
            .get(tx_id)
            .cloned()
            .ok_or(EngineError::UnknownTransaction)?;
        self.check_settled(&tx.token_id.0)?;
        if tx.state == TxState::Waiting && tx.expires_ms <= now_ms {
            tx.state = TxState::Expired;
        }
        Ok(tx)
    }
}
