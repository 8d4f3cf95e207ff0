//! The store: engine mutations in, engine tables out. One [`Store::commit`] per batch of packets
//! or API commands becomes one atomic [`crate::WriteBatch`] (group commit), the batch's events
//! included (the webhook outbox); [`Store::load`] rebuilds the engine's tables at start, in
//! parallel.
//!
//! One file per capability: `open` (initialisation, schema migrations, master-key check),
//! `commit` (mutations to one atomic write), `load` (the tables at start), `read` (one
//! token's records), `outbox`, `configuration` (services and authkeys kept in the database)
//! and `epoch` (server epochs).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::crypt::{MasterKey, PinTreeSecret};
use crate::error::StoreError;
use crate::health::Health;
use crate::kv::{Durability, KvStore};
use crate::watermark::OutboxWatermark;

mod commit;
mod configuration;
mod epoch;
mod load;
mod open;
mod outbox;
mod read;

pub use commit::{ServiceNames, StoreWrite};
pub use load::LoadReport;

/// The durable store of one server.
pub struct Store {
    kv: Arc<dyn KvStore>,
    key: MasterKey,
    durability: Durability,
    next_seq: AtomicU64,
    /// On a store other processes write: the outbox sequence numbers reserved for this one
    /// and not used yet, `[next, end)` ([`Store::take_outbox_seq`]).
    outbox_block: std::sync::Mutex<(u64, u64)>,
    /// Raised after every write that put events in the outbox; readers wait on it.
    outbox_watermark: OutboxWatermark,
    health: Health,
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

impl Store {
    /// The durability this store was opened with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The key-value store underneath.
    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    /// The outbox watermark: raised after every successful write that put events in the
    /// outbox, the wake-up of the outbox's readers (the webhook pipeline).
    pub fn outbox_watermark(&self) -> &OutboxWatermark {
        &self.outbox_watermark
    }

    /// The database's health.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Makes everything durable (clean shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        Ok(self.kv.flush()?)
    }

    /// The instance's PIN-tree secret, from the master key (the engine derives every
    /// token's PIN root from it).
    pub fn pin_tree_secret(&self) -> &PinTreeSecret {
        self.master_key().pin_tree_secret()
    }

    /// The master key the store seals with.
    pub(crate) fn master_key(&self) -> &MasterKey {
        &self.key
    }
}
