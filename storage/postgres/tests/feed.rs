//! The change feed on PostgreSQL: other writers' keys reported once, a writer's own commits
//! without keys, a commit that was in flight while a later one became visible reported when
//! it commits (never skipped), and a reader behind the pruned part told so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]
use std::time::Duration;

use zoftoken_storage::{Cf, Durability, FeedCursor, FeedError, KvStore, WriteBatch};
use zoftoken_storage_postgres::{PgConfig, PgKv};
use zoftoken_testkit::PgCluster;

fn open(url: &str, writer: u64) -> PgKv {
    let kv = PgKv::open(&PgConfig::parse(url).unwrap()).unwrap();
    kv.set_writer(writer);
    kv
}

fn put(kv: &PgKv, cf: Cf, key: &[u8]) {
    let mut b = WriteBatch::new();
    b.put(cf, key, b"v");
    kv.write(&b, Durability::Wal).unwrap();
}

fn keys_of(kv: &PgKv, cursor: &mut FeedCursor, own: u64) -> Vec<(Cf, Vec<u8>)> {
    let read = kv.feed_read(cursor, own).unwrap();
    *cursor = read.cursor;
    read.keys
}

#[test]
fn other_writers_keys_are_reported_once_and_own_commits_without_keys() {
    let url = PgCluster::shared().database();
    let a = open(&url, 7);
    let b = open(&url, 8);
    let mut cursor = a.feed_start().unwrap().expect("PostgreSQL has a feed");
    put(&b, Cf::Services, b"svc");
    let mut batch = WriteBatch::new();
    batch.put(Cf::Tokens, [1; 16], b"t");
    batch.delete(Cf::Enrollments, [2; 16]);
    b.write(&batch, Durability::Wal).unwrap();
    put(&a, Cf::Tokens, &[3; 16]);
    let read = a.feed_read(&cursor, 7).unwrap();
    assert_eq!(read.commits, 3, "two of b's commits and a's own");
    let mut keys = read.keys.clone();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            (Cf::Tokens, vec![1; 16]),
            (Cf::Enrollments, vec![2; 16]),
            (Cf::Services, b"svc".to_vec()),
        ]
    );
    cursor = read.cursor;
    // Read again: nothing new.
    let again = a.feed_read(&cursor, 7).unwrap();
    assert_eq!((again.commits, again.keys.len()), (0, 0));
    // A compared put is in the feed too.
    assert!(b.compare_and_put(Cf::Meta, b"epoch", None, b"1").unwrap());
    assert_eq!(
        keys_of(&a, &mut again.cursor.clone(), 7),
        vec![(Cf::Meta, b"epoch".to_vec())]
    );
}

#[test]
fn a_commit_in_flight_while_a_later_one_is_read_is_reported_when_it_commits() {
    let url = PgCluster::shared().database();
    let a = open(&url, 1);
    let b = open(&url, 2);
    let mut cursor = a.feed_start().unwrap().unwrap();
    // An earlier transaction takes its id and stays open...
    let mut raw = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut slow = raw.transaction().unwrap();
    slow.execute(
        "INSERT INTO zoftoken_state (k, v, version) VALUES ($1, $2, 1)",
        &[&vec![9u8; 16], &b"state".to_vec()],
    )
    .unwrap();
    let keys = zoftoken_storage::kv::feed::encode_keys([(Cf::State, &[9u8; 16][..])]);
    slow.execute(
        "INSERT INTO zoftoken_changes (writer, keys) VALUES (3, $1)",
        &[&keys],
    )
    .unwrap();
    // ...while a later one commits and is read.
    put(&b, Cf::State, &[5; 16]);
    assert_eq!(keys_of(&a, &mut cursor, 1), vec![(Cf::State, vec![5; 16])]);
    assert!(cursor.complete_below > 0);
    slow.commit().unwrap();
    // The earlier one is not skipped, and the later one is not reported again.
    assert_eq!(keys_of(&a, &mut cursor, 1), vec![(Cf::State, vec![9; 16])]);
    assert_eq!(keys_of(&a, &mut cursor, 1), vec![]);
}

#[test]
fn a_reader_behind_the_pruned_part_of_the_feed_must_read_everything_again() {
    let url = PgCluster::shared().database();
    let a = open(&url, 1);
    let b = open(&url, 2);
    let old = a.feed_start().unwrap().unwrap();
    put(&b, Cf::Tokens, &[1; 16]);
    put(&b, Cf::Tokens, &[2; 16]);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(b.feed_prune(Duration::from_secs(3600)).unwrap(), 0);
    assert_eq!(b.feed_prune(Duration::from_millis(1)).unwrap(), 2);
    assert!(matches!(
        a.feed_read(&old, 1),
        Err(FeedError::Behind { .. })
    ));
    // A reader that starts now is not behind.
    let mut fresh = a.feed_start().unwrap().unwrap();
    put(&b, Cf::Tokens, &[3; 16]);
    assert_eq!(keys_of(&a, &mut fresh, 1), vec![(Cf::Tokens, vec![3; 16])]);
}
