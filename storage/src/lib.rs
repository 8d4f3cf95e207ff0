//! ZofToken storage: what makes the engine durable. It defines the key-value layer every
//! implementation provides ([`KvStore`]: column families, atomic write batches, ordered scans,
//! errors by kind), the record schema ([`schema`]), secrets at rest ([`MasterKey`]:
//! ChaCha20-Poly1305, a random nonce per value, the record's place as associated data), and
//! the [`Store`] that turns the engine's mutation batches into one atomic write each (group
//! commit, events in the same write as their state change) and rebuilds the engine's tables at
//! start, in parallel.
//!
//! It does not depend on RocksDB: `zoftoken-storage-rocksdb` implements [`KvStore`] on it, and
//! [`MemoryKv`] implements it in memory for tests. The conformance suite every implementation
//! runs, and a store that fails on demand, are in the crate `zoftoken-storage-conformance`
//! (tests only). It reads no configuration files and opens no sockets.
//!
//! Commit, then publish: the store is the engine's durable write ([`Store::durable_write`],
//! a [`zoftoken_engine::DurableWrite`]), and every engine batch is committed through
//! [`Engine::commit`](zoftoken_engine::Engine::commit) or `commit_group`, which publish a
//! batch (settle its tokens, count its events) only once the store wrote it: the group commit
//! ([`Committer`]), [`Store::commit_batch`] (the API and the command line) and
//! [`Store::commit_timers`] (the timer loop). It fails closed: a batch whose write fails
//! publishes nothing and its tokens are restored from the database; [`Health`] says whether
//! the database can write and [`Store::probe`] finds out when it can again.
//!
//! One event path: events are data only in the outbox, written in the same atomic write as
//! the changes they report. After a successful write with events the store raises its
//! [`OutboxWatermark`] to the write's outbox sequence number and wakes its waiters; the
//! webhook pipeline waits on it, reads the outbox (the truth, polled as well) and acknowledges
//! what it delivered.
//!
//! The modules read top-down, each using only those above it: [`kv`] (the trait, knows no
//! record) ← [`schema`] (record layouts) ← `store` (the [`Store`]) ← `durable`, `committer`,
//! `maint` and [`webhooks`] (what drivers, admin commands and the webhook pipeline do with
//! it). `codec` (bounds-checked bytes), `error`, `scan`, `health` and `watermark` are the
//! helpers they share.
//!
//! Key types: [`KvStore`], [`KvError`], [`WriteBatch`], [`Store`], [`StoreError`],
//! [`StoreWrite`], [`Committer`] (group commit on a writer thread, pipelined with packet
//! processing), [`OutboxWatermark`], [`Health`], [`MasterKey`], [`ServiceDoc`],
//! [`AuthkeyDoc`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod codec;
mod committer;
mod config_documents;
pub mod crypt;
mod durable;
mod error;
mod follow;
mod health;
pub mod kv;
mod lease;
mod maint;
mod memory;
mod scan;
pub mod schema;
mod store;
mod watermark;
pub mod webhooks;

pub use committer::{CommitError, Committer, CommitterConfig, CommitterStats, Done, Submitter};
pub use config_documents::{
    authkeys_to_config, services_to_config, AuthkeyDoc, OtpDoc, ServiceDoc, WebhookDoc, REDACTED,
};
pub use crypt::{KeyError, MasterKey, PinTreeSecret};
pub use error::StoreError;
pub use follow::{FollowError, Followed, Follower};
pub use health::Health;
pub use kv::{
    BoxError, Cf, Durability, FeedChanges, FeedCursor, FeedError, KvError, KvStore, Op, WriteBatch,
};
pub use lease::LeaseView;
pub use maint::{CheckReport, Moved, IMPORT_EPOCH_MARGIN, IMPORT_SEQ_MARGIN};
pub use memory::MemoryKv;
pub use schema::OutboxEvent;
pub use store::{LoadReport, ServiceNames, Store, StoreWrite};
pub use watermark::{OutboxMark, OutboxWatermark};
pub use webhooks::{DeadLetterRecord, DeliveryWrite, DisabledEndpoint, PendingCommit};
