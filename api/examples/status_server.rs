//! A throw-away API server for load tests of the status path: one service (`bench`), one
//! paired token (`bench`/`alice`, paired in-process with the device SDK), a non-admin key
//! `bench-read-key`, storage in memory. Prints the address and serves until killed.
//!
//!     cargo run --release -p zoftoken-api --example status_server -- 127.0.0.1:8080 [threads]
//!     wrk -t2 -c64 -d10s -H 'Authorization: Bearer bench-read-key' \
//!         http://127.0.0.1:8080/v1/services/bench/tokens/alice
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use zoftoken_api::{ApiConfig, ApiServer, Clock};
use zoftoken_device::{MemoryStore, Pairing};
use zoftoken_engine::authkeys::hash_secret;
use zoftoken_engine::{AuthkeyConfig, Batch, Engine, EngineConfig, PacketOutcome, ServiceConfig};
use zoftoken_proto::deeplink::Deeplink;
use zoftoken_proto::PinVerifier;
use zoftoken_storage::{Durability, MasterKey, MemoryKv, Store};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn deliver(engine: &Engine, store: &Store, datagram: &[u8]) -> Vec<u8> {
    let mut d = datagram.to_vec();
    let mut out = [0u8; 1200];
    let mut batch = Batch::new();
    let outcome = engine.handle_packet(
        now_ms(),
        "127.0.0.1:1".parse().unwrap(),
        &mut d,
        &mut out,
        &mut batch,
    );
    store.commit_batch(engine, now_ms(), &mut batch).unwrap();
    match outcome {
        PacketOutcome::Reply(n) => out[..n].to_vec(),
        PacketOutcome::Drop(r) => panic!("dropped: {r:?}"),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let threads: usize = args.next().map_or(1, |t| t.parse().unwrap());
    let store = Arc::new(
        Store::open(
            Arc::new(MemoryKv::new()),
            MasterKey::from_bytes([1; 32]),
            Durability::Wal,
        )
        .unwrap(),
    );
    let mut config = EngineConfig::new(
        vec![ServiceConfig::new("bench", &["127.0.0.1:7878"])],
        1,
        [7; 32],
    );
    config.authkeys = vec![AuthkeyConfig {
        name: "read".into(),
        secret_hash: hash_secret("bench-read-key"),
        admin: false,
        service_mask: "bench".into(),
        user_mask: "[a-z]+".into(),
    }];
    let engine = Arc::new(Engine::new(config).unwrap());
    let mut batch = Batch::new();
    let ticket = engine
        .enroll(now_ms(), "bench", "alice", &mut batch)
        .unwrap();
    store.commit_batch(&engine, now_ms(), &mut batch).unwrap();
    let mut pairing = Pairing::from_deeplink(&Deeplink::parse(&ticket.deeplink).unwrap());
    let mut out = [0u8; 1200];
    let tx = pairing.init_request(now_ms(), [3; 32], &mut out).unwrap();
    let mut reply = deliver(&engine, &store, &out[..tx.len]);
    let offer = pairing.handle_init_reply(&mut reply).unwrap();
    let pin = PinVerifier::derive("2468", &offer.token_id).unwrap();
    let tx = pairing
        .complete_request(&pin, None, now_ms(), &mut out)
        .unwrap();
    let mut reply = deliver(&engine, &store, &out[..tx.len]);
    pairing
        .handle_complete_reply(&mut MemoryStore::default(), &mut reply)
        .unwrap()
        .unwrap();
    let clock: Clock = Arc::new(now_ms);
    let api = ApiServer::start(
        ApiConfig {
            listen: listen.parse().unwrap(),
            threads,
            ..ApiConfig::default()
        },
        engine,
        store,
        None,
        clock,
    )
    .unwrap();
    println!("listening on {}", api.local_addr());
    loop {
        std::thread::park();
    }
}
