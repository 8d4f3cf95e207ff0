//! `kill -9` in the middle of a write load: a real child process commits batches (every
//! token forced open at a new time, with its events) as fast as it can and reports each
//! completed commit; the parent kills it with SIGKILL, reopens the database and checks that
//! every reported batch is there and no batch is half applied.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use zoftoken_engine::{
    Batch, Engine, EngineConfig, EventKind, Force, Mutation, ServiceConfig, TokenRecord,
    TokenState, TokenStateRecord,
};
use zoftoken_proto::{SecretBytes, TokenId};
use zoftoken_storage::{Durability, MasterKey, Store};
use zoftoken_storage_rocksdb::RocksKv;

const TOKENS: u32 = 64;
const BASE_MS: u64 = 1_800_000_000_000;
const WINDOW_MS: u64 = 600_000;

fn engine() -> Engine {
    let mut bank = ServiceConfig::new("bank", &["127.0.0.1:7878"]);
    // A webhook for every event: the outbox keeps only events a webhook receives.
    bank.webhook = Some(zoftoken_engine::WebhookConfig::new(
        "https://hooks.example/zt",
        "test-secret",
    ));
    Engine::new(EngineConfig::new(vec![bank], 7, [1; 32])).unwrap()
}

fn id(n: u32) -> TokenId {
    TokenId::derive("bank", &format!("user{n}"))
}

fn open(dir: &std::path::Path, durability: Durability) -> Store {
    let kv = RocksKv::open(dir).unwrap();
    Store::open(Arc::new(kv), MasterKey::from_bytes([7; 32]), durability).unwrap()
}

/// The child: not run by itself (ignored); the parent starts it with the environment set.
#[test]
#[ignore = "child process of `kill_9_during_writes_loses_no_completed_batch`"]
fn crash_child_writer() {
    let Ok(dir) = std::env::var("ZOFTOKEN_CRASH_DIR") else {
        return;
    };
    let durability = match std::env::var("ZOFTOKEN_CRASH_DURABILITY").as_deref() {
        Ok("fsync") => Durability::Fsync,
        _ => Durability::Wal,
    };
    let store = open(std::path::Path::new(&dir), durability);
    let engine = engine();
    let mut setup = Batch::new();
    for n in 0..TOKENS {
        let record = TokenRecord {
            kind: zoftoken_engine::TokenKind::App,
            service: 0,
            secret: SecretBytes::new([n as u8; 32]),
            pin_verifier: SecretBytes::new([1; 32]),
            duress_verifier: None,
            status: TokenStateRecord::new(id(n)),
        };
        engine.load_token(&record).unwrap();
        setup.mutations.push(Mutation::TokenCreated {
            token_id: id(n),
            service: Arc::from("bank"),
            username: format!("user{n}"),
        });
        setup.mutations.push(Mutation::Token(Box::new(record)));
    }
    store.commit(&setup.mutations, &engine).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    let started = std::time::Instant::now();
    for k in 1u64.. {
        let mut batch = Batch::new();
        for n in 0..TOKENS {
            engine
                .force(BASE_MS + k, &id(n), Force::Open, &mut batch)
                .unwrap();
        }
        store
            .commit_batch(&engine, BASE_MS + k, &mut batch)
            .unwrap();
        writeln!(out, "committed {k}").unwrap();
        out.flush().unwrap();
        // The parent kills long before this; never run away if it does not.
        if started.elapsed().as_secs() > 120 {
            break;
        }
    }
}

fn kill_during_writes(durability: &str, kill_after: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_writer",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ZOFTOKEN_CRASH_DIR", dir.path())
        .env("ZOFTOKEN_CRASH_DURABILITY", durability)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut last_reported = 0u64;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(k) = line.strip_prefix("committed ") {
            last_reported = k.parse().unwrap();
            if last_reported >= kill_after {
                break;
            }
        }
    }
    // SIGKILL, in the middle of the load (the child is still writing).
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child must have been killed");
    assert!(last_reported >= kill_after, "the child stopped early");

    let store = open(dir.path(), Durability::Wal);
    let engine = engine();
    let report = store.load(&engine, BASE_MS, 2, &|_| {}).unwrap();
    assert_eq!(report.tokens, u64::from(TOKENS));
    // Every token shows the same batch: none is half applied.
    let mut batches = std::collections::BTreeSet::new();
    for n in 0..TOKENS {
        let s = store.token_state(&id(n)).unwrap().unwrap();
        assert_eq!(s.state, TokenState::Open);
        batches.insert(s.open_until_ms - WINDOW_MS - BASE_MS);
        let status = engine.status_by_id(BASE_MS, &id(n)).unwrap();
        assert_eq!(status.state, TokenState::Open);
    }
    assert_eq!(batches.len(), 1, "tokens disagree: {batches:?}");
    let last_in_db = *batches.iter().next().unwrap();
    assert!(
        last_in_db >= last_reported,
        "batch {last_reported} was reported committed, the database has {last_in_db}"
    );
    // The outbox has exactly the events of every committed batch, each batch whole.
    let events = store.outbox(0, usize::MAX).unwrap();
    assert_eq!(events.len() as u64, last_in_db * u64::from(TOKENS));
    for chunk in events.chunks(TOKENS as usize) {
        assert!(chunk
            .iter()
            .all(|e| e.kind == EventKind::Opened && e.seq == chunk[0].seq));
        assert!(chunk.iter().all(|e| e.time_ms == chunk[0].time_ms));
    }
    assert!(store.check().unwrap().problems.is_empty());
}

#[test]
fn kill_9_during_writes_loses_no_completed_batch() {
    kill_during_writes("wal", 400);
}

#[test]
fn kill_9_during_fsync_writes_loses_no_completed_batch() {
    kill_during_writes("fsync", 50);
}
