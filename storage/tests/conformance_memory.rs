//! The conformance suite against the in-memory store.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
use std::sync::Arc;

use zoftoken_storage::{KvError, KvStore, MemoryKv};
use zoftoken_storage_conformance::Harness;

struct Memory(MemoryKv);

impl Harness for Memory {
    fn open(&mut self) -> Result<Arc<dyn KvStore>, KvError> {
        Ok(Arc::new(self.0.clone()))
    }
    fn crash(&mut self, kv: Arc<dyn KvStore>) {
        drop(kv);
    }
    fn fresh(&self) -> Box<dyn Harness> {
        Box::new(Memory(MemoryKv::new()))
    }
}

zoftoken_storage_conformance::conformance_tests!(Memory(MemoryKv::new()));
