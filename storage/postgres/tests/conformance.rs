//! The conformance suite against PostgreSQL: one throwaway cluster for this test process, a
//! database of its own for each case. Also what only a database server can do: crash
//! (`pg_ctl stop -m immediate`) with every acknowledged write kept, come back while a store is
//! open, and refuse a schema newer than this build's.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
use std::sync::Arc;

use zoftoken_storage::{Cf, Durability, KvError, KvStore, WriteBatch};
use zoftoken_storage_conformance::Harness;
use zoftoken_storage_postgres::{migrate, PgConfig, PgKv, PgOpenError};
use zoftoken_testkit::PgCluster;

struct Pg {
    url: String,
}

impl Pg {
    fn new() -> Pg {
        Pg {
            url: PgCluster::shared().database(),
        }
    }
}

fn open(url: &str) -> Result<PgKv, KvError> {
    PgKv::open(&PgConfig::parse(url).unwrap()).map_err(|e| match e {
        PgOpenError::Connect(k) | PgOpenError::Schema(k) => k,
        other => KvError::Other(Box::new(other)),
    })
}

impl Harness for Pg {
    fn open(&mut self) -> Result<Arc<dyn KvStore>, KvError> {
        Ok(Arc::new(open(&self.url)?))
    }
    fn crash(&mut self, kv: Arc<dyn KvStore>) {
        // A server's crash: its connections go away; what PostgreSQL acknowledged stays.
        drop(kv);
    }
    fn fresh(&self) -> Box<dyn Harness> {
        Box::new(Pg::new())
    }
}

zoftoken_storage_conformance::conformance_tests!(Pg::new());

#[test]
fn acknowledged_writes_survive_a_crash_of_postgresql_and_the_store_reconnects() {
    let mut cluster = PgCluster::start();
    let url = cluster.database();
    let kv = open(&url).unwrap();
    for i in 0..200u32 {
        let mut b = WriteBatch::new();
        b.put(Cf::Tokens, i.to_be_bytes(), b"token");
        b.put(Cf::Outbox, i.to_be_bytes(), b"event");
        kv.write(&b, Durability::Wal).unwrap();
    }
    cluster.crash();
    // Down: every operation fails as unavailable, nothing hangs.
    let mut b = WriteBatch::new();
    b.put(Cf::Tokens, b"while down", b"x");
    assert!(matches!(kv.write(&b, Durability::Wal), Err(KvError::Io(_))));
    assert!(matches!(kv.get(Cf::Tokens, b"x"), Err(KvError::Io(_))));
    cluster.start_server();
    // Back: the same store reconnects by itself, and everything acknowledged is there.
    let mut count = 0;
    kv.scan(Cf::Tokens, b"", None, &mut |_, _| {
        count += 1;
        true
    })
    .unwrap();
    assert_eq!(count, 200);
    assert_eq!(kv.get(Cf::Tokens, b"while down").unwrap(), None);
    kv.write(&b, Durability::Wal).unwrap();
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    let url = PgCluster::shared().database();
    drop(open(&url).unwrap());
    let config = PgConfig::parse(&url).unwrap();
    assert_eq!(PgKv::schema_version(&config).unwrap(), migrate::VERSION);
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .execute("UPDATE zoftoken_schema SET version = version + 1", &[])
        .unwrap();
    match PgKv::open(&config) {
        Err(PgOpenError::NewerSchema { found, known }) => {
            assert_eq!((found, known), (migrate::VERSION + 1, migrate::VERSION));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(PgKv::schema_version(&config).unwrap(), migrate::VERSION + 1);
}

#[test]
fn servers_starting_at_once_migrate_once() {
    let url = PgCluster::shared().database();
    let opened: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| open(&url).map(drop).map_err(|e| format!("{e:?}"))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(opened, vec![Ok(()); 4]);
    let config = PgConfig::parse(&url).unwrap();
    assert_eq!(PgKv::schema_version(&config).unwrap(), migrate::VERSION);
}

#[test]
fn an_unreachable_database_fails_the_open_clearly() {
    let cluster = PgCluster::start();
    let url = cluster.database();
    cluster.crash();
    let started = std::time::Instant::now();
    let err = PgKv::open(&PgConfig::parse(&url).unwrap()).unwrap_err();
    assert!(
        matches!(err, PgOpenError::Connect(KvError::Io(_))),
        "{err:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// Servers of one instance starting at the same moment on an empty database: exactly one
/// initialises it, the others wait for it and open it; a server with another master key is
/// refused.
#[test]
fn servers_starting_at_once_on_an_empty_database_initialise_it_once() {
    use zoftoken_storage::{MasterKey, Store, StoreError};
    let url = PgCluster::shared().database();
    let key = [3u8; 32];
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let kv: Arc<dyn KvStore> = Arc::new(open(&url).unwrap());
                Store::open(kv, MasterKey::from_bytes(key), Durability::Wal)
                    .map(|s| s.next_epoch().unwrap())
            })
        })
        .collect();
    let mut epochs: Vec<u32> = opens
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    epochs.sort_unstable();
    assert_eq!(epochs, vec![1, 2, 3, 4, 5, 6]);
    let kv: Arc<dyn KvStore> = Arc::new(open(&url).unwrap());
    assert!(matches!(
        Store::open(kv, MasterKey::from_bytes([4; 32]), Durability::Wal),
        Err(StoreError::WrongMasterKey)
    ));
}
