//! Deliveries per second from a pre-filled outbox (in memory) to a receiver such as
//! `webhook-sink`: `throughput <url> <secret> [events] [tokens] [rate]`. With a rate (events
//! per second), events are committed at that pace while the pipeline runs (each write wakes
//! the pipeline through the store's outbox watermark; the receiver measures the latency). Prints one JSON line.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zoftoken_engine::{
    Actor, Engine, EngineConfig, Event, EventKind, Mutation, ServiceConfig, WebhookConfig,
};
use zoftoken_proto::TokenId;
use zoftoken_storage::{Durability, MasterKey, MemoryKv, Store};
use zoftoken_webhooks::{Pipeline, PipelineConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("url").clone();
    let secret = args.get(2).expect("secret").clone();
    let events: u64 = args.get(3).map_or(100_000, |s| s.parse().unwrap());
    let tokens: u64 = args.get(4).map_or(10_000, |s| s.parse().unwrap());
    let mut svc = ServiceConfig::new("bank", &["127.0.0.1:7878"]);
    svc.webhook = Some(WebhookConfig::new(&url, &secret));
    let store = Arc::new(
        Store::open(
            Arc::new(MemoryKv::new()),
            MasterKey::from_bytes([1; 32]),
            Durability::Wal,
        )
        .unwrap(),
    );
    let engine = Arc::new(Engine::new(EngineConfig::new(vec![svc], 7, [1; 32])).unwrap());
    let rate: u64 = args.get(5).map_or(0, |s| s.parse().unwrap());
    if rate > 0 {
        let pipeline =
            Pipeline::start(PipelineConfig::default(), store.clone(), engine.clone()).unwrap();
        let start = Instant::now();
        for i in 0..events {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i % tokens).to_be_bytes());
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            let e = Event::new(EventKind::Opened, TokenId(id), 0, now, Actor::Device);
            store.commit(&[Mutation::Event(e)], &*engine).unwrap();
        }
        while !store.outbox(0, 1).unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        pipeline.shutdown();
        println!("{{\"events\":{events},\"rate\":{rate}}}");
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut m = Vec::new();
    for i in 0..events {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i % tokens).to_be_bytes());
        m.push(Mutation::Event(Event::new(
            EventKind::Opened,
            TokenId(id),
            0,
            now,
            Actor::Device,
        )));
        if m.len() == 64 {
            store.commit(&m, &*engine).unwrap();
            m.clear();
        }
    }
    if !m.is_empty() {
        store.commit(&m, &*engine).unwrap();
    }
    let start = Instant::now();
    let pipeline = Pipeline::start(PipelineConfig::default(), store.clone(), engine).unwrap();
    while !store.outbox(0, 1).unwrap().is_empty() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = start.elapsed().as_secs_f64();
    pipeline.shutdown();
    println!(
        "{{\"events\":{events},\"seconds\":{secs:.3},\"events_per_sec\":{:.0}}}",
        events as f64 / secs
    );
}
