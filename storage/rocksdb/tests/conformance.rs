//! The conformance suite against RocksDB, each case in its own temporary directory.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
use std::sync::Arc;

use zoftoken_storage::{KvError, KvStore};
use zoftoken_storage_conformance::Harness;
use zoftoken_storage_rocksdb::{InUse, RocksKv};

struct Rocks {
    dir: tempfile::TempDir,
    typed: Option<Arc<RocksKv>>,
}

impl Rocks {
    fn new() -> Rocks {
        Rocks {
            dir: tempfile::tempdir().unwrap(),
            typed: None,
        }
    }
}

impl Harness for Rocks {
    fn open(&mut self) -> Result<Arc<dyn KvStore>, KvError> {
        // One handle at a time: the previous one must be gone (RocksDB holds a file lock).
        if let Some(prev) = self.typed.take() {
            assert_eq!(Arc::strong_count(&prev), 1, "previous handle still open");
        }
        let kv = Arc::new(RocksKv::open(self.dir.path())?);
        self.typed = Some(kv.clone());
        Ok(kv)
    }
    fn crash(&mut self, kv: Arc<dyn KvStore>) {
        if let Some(t) = &self.typed {
            t.simulate_crash();
        }
        drop(kv);
    }
    fn fresh(&self) -> Box<dyn Harness> {
        Box::new(Rocks::new())
    }
}

zoftoken_storage_conformance::conformance_tests!(Rocks::new());

#[test]
fn a_second_open_of_a_running_database_is_a_clear_lock_error() {
    let dir = tempfile::tempdir().unwrap();
    let first = RocksKv::open(dir.path()).unwrap();
    let second = RocksKv::open(dir.path());
    let Err(KvError::Locked(source)) = &second else {
        panic!("{second:?}")
    };
    let in_use = source.downcast_ref::<InUse>().unwrap();
    assert_eq!(in_use.path, dir.path());
    assert!(matches!(
        RocksKv::recover(dir.path()),
        Err(KvError::Locked(_))
    ));
    // Closed, the database opens again.
    drop(first);
    assert!(RocksKv::open(dir.path()).is_ok());
}
