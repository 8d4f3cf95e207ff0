//! ZofToken storage: what makes the engine durable. It defines the key-value layer every
//! implementation provides ([`KvStore`]: column families, atomic write batches, ordered scans),
//! the record schema ([`schema`]), secrets at rest ([`MasterKey`]: ChaCha20-Poly1305, a random
//! nonce per value, the record's place as associated data), and the [`Store`] that turns the
//! engine's mutation batches into one atomic write each (group commit, events in the same
//! write as their state change) and rebuilds the engine's tables at start, in parallel.
//!
//! It does not depend on RocksDB: `zoftoken-storage-rocksdb` implements [`KvStore`] on it, and
//! [`MemoryKv`] implements it in memory for tests. [`conformance`] is the one test suite every
//! implementation runs. It reads no configuration files and opens no sockets.
//!
//! It fails closed: a batch whose write fails publishes nothing and its tokens are restored
//! from the database ([`Store::commit_batch`]); [`Health`] says whether the database can write
//! and [`Store::probe`] finds out when it can again.
//!
//! Key types: [`KvStore`], [`WriteBatch`], [`Store`], [`Committer`] (group commit on a
//! writer thread, pipelined with packet processing), [`Health`], [`MasterKey`], [`ServiceDoc`],
//! [`AuthkeyDoc`].
#![forbid(unsafe_code)]

mod committer;
pub mod conformance;
pub mod crypt;
pub mod docs;
mod durable;
mod fault;
pub mod kv;
mod maint;
mod memory;
pub mod schema;
mod store;
pub mod webhooks;

pub use committer::{CommitError, Committer, CommitterConfig, CommitterStats, Done, Submitter};
pub use crypt::{KeyError, MasterKey, PinTreeSecret};
pub use docs::{
    authkeys_to_config, services_to_config, AuthkeyDoc, OtpDoc, ServiceDoc, WebhookDoc, REDACTED,
};
pub use durable::Health;
pub use fault::FaultyKv;
pub use kv::{Cf, Durability, KvError, KvStore, Op, WriteBatch};
pub use maint::{CheckReport, Moved, IMPORT_EPOCH_MARGIN, IMPORT_SEQ_MARGIN};
pub use memory::MemoryKv;
pub use schema::OutboxEvent;
pub use store::{LoadReport, ServiceNames, Store, StoreError};
pub use webhooks::{DeadLetterRecord, DeliveryWrite, DisabledEndpoint, PendingCommit};
