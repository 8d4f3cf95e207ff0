//! TLS to PostgreSQL against a cluster that takes TCP connections over TLS only: the
//! database's certificate is verified against the configured authority and must name the
//! host; plaintext and unverifiable servers are refused at open.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
use zoftoken_storage::{Cf, Durability, KvError, KvStore, WriteBatch};
use zoftoken_storage_postgres::{PgConfig, PgKv, PgOpenError, PgTls, PgTlsError};
use zoftoken_testkit::PgCluster;

/// The name in the server's certificate; the tests reach it at 127.0.0.1 (`hostaddr`).
const NAME: &str = "db.zoftoken.test";

fn config(url: &str, ca_file: Option<&std::path::Path>) -> PgConfig {
    let mut c = PgConfig::parse(url).unwrap();
    if let Some(ca) = ca_file {
        c.set_tls(PgTls {
            ca_file: Some(ca.to_owned()),
            ..PgTls::default()
        })
        .unwrap();
    }
    c
}

#[test]
fn tls_connections_verify_the_database_and_plaintext_is_never_used() {
    let (cluster, certs) = PgCluster::start_tls(&[&format!("DNS:{NAME}")]);
    let db = cluster.database();
    let dbname = db.rsplit("dbname=").next().unwrap().to_owned();
    let port = cluster.port;
    let by_name =
        format!("host={NAME} hostaddr=127.0.0.1 port={port} user=zoftoken dbname={dbname}");

    // The authority that signed the certificate, the name it holds: TLS, and the store works.
    let kv = PgKv::open(&config(
        &format!("{by_name} sslmode=require"),
        Some(&certs.ca),
    ))
    .unwrap();
    let mut b = WriteBatch::default();
    b.put(Cf::Meta, b"over-tls", b"yes");
    kv.write(&b, Durability::Wal).unwrap();
    assert_eq!(
        kv.get(Cf::Meta, b"over-tls").unwrap().as_deref(),
        Some(&b"yes"[..])
    );
    drop(kv);
    // Without sslmode a CA file alone asks for TLS, even on this machine.
    let kv = PgKv::open(&config(&by_name, Some(&certs.ca))).unwrap();
    assert_eq!(
        kv.get(Cf::Meta, b"over-tls").unwrap().as_deref(),
        Some(&b"yes"[..])
    );
    drop(kv);

    // The system's trust anchors do not know the test authority: refused.
    let err = PgKv::open(&config(&format!("{by_name} sslmode=require"), None)).unwrap_err();
    assert!(
        matches!(err, PgOpenError::Connect(KvError::Io(_))),
        "{err:?}"
    );

    // Another authority: refused.
    let other = zoftoken_testkit::make_certs(&cluster.dir.join("other"), &[&format!("DNS:{NAME}")]);
    let err = PgKv::open(&config(&by_name, Some(&other.ca))).unwrap_err();
    assert!(
        matches!(err, PgOpenError::Connect(KvError::Io(_))),
        "{err:?}"
    );

    // The right authority, but a host the certificate does not name: refused.
    let by_address = format!("host=127.0.0.1 port={port} user=zoftoken dbname={dbname}");
    let err = PgKv::open(&config(&by_address, Some(&certs.ca))).unwrap_err();
    assert!(
        matches!(err, PgOpenError::Connect(KvError::Io(_))),
        "{err:?}"
    );

    // Plaintext on loopback (no sslmode, no TLS settings): this server rejects it, and the
    // store never tried TLS on its own.
    let err = PgKv::open(&config(&by_address, None)).unwrap_err();
    assert!(matches!(err, PgOpenError::Connect(_)), "{err:?}");

    // A CA file that is not one: the open names the file.
    let junk = cluster.dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let err = PgKv::open(&config(&by_name, Some(&junk))).unwrap_err();
    match err {
        PgOpenError::Tls(PgTlsError::NoCertificate { path }) => assert_eq!(path, junk),
        other => panic!("{other:?}"),
    }
    let missing = cluster.dir.join("missing.pem");
    let err = PgKv::open(&config(&by_name, Some(&missing))).unwrap_err();
    assert!(
        matches!(err, PgOpenError::Tls(PgTlsError::Certificates { .. })),
        "{err:?}"
    );
    assert!(format!("{}", std::error::Error::source(&err).unwrap()).contains("missing.pem"));
}
