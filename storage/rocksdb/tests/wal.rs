//! A damaged write-ahead log: damage in the middle stops the open with a clear error and loses
//! nothing; a damaged tail (a write cut short by a crash) is dropped and the rest opens;
//! `RocksKv::recover` opens with the loss and reports it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
use std::path::{Path, PathBuf};

use zoftoken_storage::{Cf, Durability, KvError, KvStore, WriteBatch};
use zoftoken_storage_rocksdb::{wal, RocksKv, WalDamaged};

const BATCHES: u32 = 2000;

/// Writes `BATCHES` batches of one record each, then stops as a crash would (no flush: every
/// record is only in the write-ahead log). Returns the log file.
fn write_then_crash(dir: &Path) -> PathBuf {
    let kv = RocksKv::open(dir).unwrap();
    for i in 0..BATCHES {
        let mut b = WriteBatch::new();
        b.put(Cf::Tokens, i.to_be_bytes(), [i as u8; 100]);
        kv.write(&b, Durability::Wal).unwrap();
    }
    kv.simulate_crash();
    drop(kv);
    let report = wal::inspect(dir).unwrap();
    let last = report.files.last().unwrap();
    assert_eq!(
        last.batches,
        u64::from(BATCHES),
        "every batch is in the log"
    );
    assert_eq!(last.damage, None);
    last.path.clone()
}

fn count(kv: &RocksKv) -> u32 {
    let mut n = 0;
    kv.scan(Cf::Tokens, &[], None, &mut |_, _| {
        n += 1;
        true
    })
    .unwrap();
    n
}

#[test]
fn damage_in_the_middle_stops_the_open_and_recover_reports_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let log = write_then_crash(dir.path());
    let mut bytes = std::fs::read(&log).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 64].fill(0xA5);
    std::fs::write(&log, &bytes).unwrap();

    // The start refuses, says where and what would be lost, and what to do.
    let err = RocksKv::open(dir.path()).expect_err("refused");
    let KvError::Corruption(source) = &err else {
        panic!("{err:?}")
    };
    let damage = source.downcast_ref::<WalDamaged>().expect("a damaged log");
    assert!(damage.loss.batches > 500, "{damage:?}");
    let text = err.to_string();
    assert!(text.contains("zoftoken db recover"), "{text}");
    assert!(text.contains("would be lost"), "{text}");
    // Refusing changed nothing: the same damage is found again.
    let loss = wal::inspect(dir.path()).unwrap().loss().unwrap();
    assert!(loss.batches > 500, "{loss:?}");
    assert!(RocksKv::open(dir.path()).is_err());

    // The explicit recovery opens with the loss and says how much.
    let (kv, recovery) = RocksKv::recover(dir.path()).unwrap();
    let reported = recovery.loss.unwrap();
    assert_eq!(reported.batches, loss.batches);
    let kept = count(&kv);
    assert!(kept > 100 && kept < BATCHES, "{kept} kept");
    // What was kept plus what was dropped is everything but the damaged batch(es).
    let damaged = u64::from(BATCHES) - u64::from(kept) - reported.batches;
    assert!((1..=2).contains(&damaged), "{damaged} damaged");
    drop(kv);
    // Afterwards the database opens normally, with what was recovered.
    let kv = RocksKv::open(dir.path()).unwrap();
    assert_eq!(count(&kv), kept);
}

#[test]
fn a_damaged_tail_is_dropped_and_the_rest_opens() {
    let dir = tempfile::tempdir().unwrap();
    let log = write_then_crash(dir.path());
    let len = std::fs::metadata(&log).unwrap().len();
    // The last record cut short, as a crash during the write leaves it.
    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    f.set_len(len - 30).unwrap();
    drop(f);
    let loss = wal::inspect(dir.path()).unwrap().loss().unwrap();
    assert_eq!(loss.batches, 0, "nothing intact after a torn tail");
    let kv = RocksKv::open(dir.path()).unwrap();
    assert_eq!(count(&kv), BATCHES - 1);
}

#[test]
fn an_intact_log_opens_and_recover_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_then_crash(dir.path());
    let (kv, recovery) = RocksKv::recover(dir.path()).unwrap();
    assert_eq!(recovery.loss, None);
    assert_eq!(count(&kv), BATCHES);
}
