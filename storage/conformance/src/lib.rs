//! The storage conformance suite: every [`KvStore`] implementation (the in-memory store of
//! `zoftoken-storage`, RocksDB, PostgreSQL) must pass these tests, run through
//! [`conformance_tests!`](crate::conformance_tests) with a [`Harness`] that opens, reopens and
//! "crashes" its kind of database. They cover the key-value contract (atomic ordered batches,
//! versioned state puts, ordered bounded scans, separate column families, durability across a
//! clean reopen and a crash, compared puts; for stores shared by several servers, versioned
//! state puts that compare and set) and the store on top of it (initialisation, master-key
//! and schema checks, commit and load, export and import, webhook delivery records; for
//! stores shared by several servers, what two servers' engines may both decide).
//!
//! Also [`FaultyKv`], a store whose writes are slow or fail on demand, for the tests of what
//! the server does when its disk is slow or full.
//!
//! Tests only: no production crate depends on this one (it is a dev-dependency of the storage
//! crates, the server and the API), and its code panics on any failure, as tests do.
//!
//! Key types: [`Harness`], [`conformance_tests!`](crate::conformance_tests), [`FaultyKv`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use zoftoken_storage::{KvError, KvStore};

mod fault;
mod fixtures;
mod kv;
mod shared;
mod store;
mod webhooks;

pub use fault::FaultyKv;
pub use kv::{
    kv_batches_are_atomic_and_ordered, kv_column_families_are_separate,
    kv_compare_and_put_is_atomic, kv_get_many_answers_in_the_order_asked,
    kv_put_newer_keeps_the_newest_version, kv_scans_are_ordered_and_bounded,
    kv_shared_versioned_puts_compare_and_set, kv_survives_clean_reopen, kv_survives_crash,
};
pub use shared::store_shared_timers_expire_a_transaction_once;
pub use store::{
    store_commit_and_load_round_trip, store_commits_survive_crash, store_export_import_round_trip,
    store_import_never_reuses_an_epoch_or_outbox_sequence,
    store_initialises_and_checks_the_master_key, store_keeps_only_events_a_webhook_receives,
    store_refuses_a_newer_schema_and_data_without_schema, store_reports_corruption,
    store_writes_any_number_of_events,
};
pub use webhooks::store_tracks_webhook_deliveries;

/// Opens one database of the implementation under test, again and again.
pub trait Harness {
    /// Opens the database (creating it the first time). At most one handle is open at once.
    fn open(&mut self) -> Result<Arc<dyn KvStore>, KvError>;
    /// Simulates a crash: the handle goes away without a flush or a clean close.
    fn crash(&mut self, kv: Arc<dyn KvStore>);
    /// A new, empty database of the same kind.
    fn fresh(&self) -> Box<dyn Harness>;
}

/// Generates one `#[test]` per conformance case; `$make` builds a fresh [`Harness`].
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            kv_batches_are_atomic_and_ordered,
            kv_scans_are_ordered_and_bounded,
            kv_column_families_are_separate,
            kv_get_many_answers_in_the_order_asked,
            kv_put_newer_keeps_the_newest_version,
            kv_compare_and_put_is_atomic,
            kv_survives_clean_reopen,
            kv_survives_crash,
            store_initialises_and_checks_the_master_key,
            store_refuses_a_newer_schema_and_data_without_schema,
            store_commit_and_load_round_trip,
            store_commits_survive_crash,
            store_writes_any_number_of_events,
            store_keeps_only_events_a_webhook_receives,
            store_reports_corruption,
            store_export_import_round_trip,
            store_import_never_reuses_an_epoch_or_outbox_sequence,
            store_tracks_webhook_deliveries,
            store_shared_timers_expire_a_transaction_once,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let mut h = $make;
                $crate::$case(&mut h);
            }
        )*
    };
}
