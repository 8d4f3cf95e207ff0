//! ZofToken storage: the storage trait (independent of RocksDB), its RocksDB and in-memory
//! implementations, and the conformance suite they share.
//!
//! Not built yet: this crate reserves its place in the workspace and is filled by the storage
//! issue (#4).
#![forbid(unsafe_code)]
