//! The pipeline on a PostgreSQL database that two servers write: a backlog larger than the
//! pipeline's memory, made by both servers, is delivered in each token's order.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;
use common::*;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use zoftoken_engine::{Engine, EngineConfig, EventKind};
use zoftoken_storage::{Durability, MasterKey, Store};
use zoftoken_storage_postgres::{PgConfig, PgKv};
use zoftoken_testkit::{now_ms, PgCluster};
use zoftoken_webhooks::{Pipeline, PipelineConfig};

fn open(url: &str, writer: u64) -> Arc<Store> {
    let kv = Arc::new(PgKv::open(&PgConfig::parse(url).unwrap()).unwrap());
    let store = Store::open(kv, MasterKey::from_bytes([9; 32]), Durability::Wal).unwrap();
    store.kv().set_writer(writer);
    Arc::new(store)
}

/// Two servers made a token's events by turns while nobody delivered; each numbered its
/// commits from a block of its own, so in key order all of the first server's come before
/// the second's. A pipeline that holds fewer events than the backlog must still deliver each
/// token's events in the order they were made.
#[test]
fn a_backlog_made_by_two_servers_larger_than_memory_is_delivered_in_token_order() {
    let rt = runtime();
    let got = ok_receiver(&rt);
    let url = PgCluster::shared().database();
    let (a, b) = (open(&url, 1), open(&url, 2));
    let engine = Arc::new(
        Engine::new(EngineConfig::new(
            vec![service("bank", &got.url(), "s3cret")],
            7,
            [1; 32],
        ))
        .unwrap(),
    );
    let t = now_ms() - 3_600_000;
    let users = ["ann", "ben", "cat"];
    let mut made: HashMap<String, Vec<u64>> = HashMap::new();
    for round in 0..60u64 {
        for user in users {
            let kind = if round % 2 == 0 {
                EventKind::Opened
            } else {
                EventKind::Closed
            };
            // Made ten seconds apart: more than the pipeline holds at once, and more than
            // the margin a read takes for the servers' clocks.
            let e = ev(&engine, "bank", user, kind, t + round * 10_000);
            made.entry(user.to_owned()).or_default().push(e.sequence);
            let by = if round % 2 == 0 { &a } else { &b };
            commit(by, &engine, &[("bank", user, e)]);
        }
    }
    let blocks = a.outbox_blocks(0, u64::MAX).unwrap();
    assert_eq!(blocks.len(), 2, "one block per server: {blocks:?}");
    let config = PipelineConfig {
        max_in_memory: 20,
        ..fast()
    };
    let pipeline = Pipeline::start(config, a.clone(), engine.clone()).unwrap();
    wait_until("every event", Duration::from_secs(30), || {
        got.distinct().len() == 180
    });
    pipeline.shutdown();
    let mut delivered: HashMap<String, Vec<u64>> = HashMap::new();
    for d in got.deliveries() {
        assert!(verify("s3cret", &d));
        let user = d.json["username"].as_str().unwrap().to_owned();
        let seq = d.json["sequence"].as_u64().unwrap();
        let list = delivered.entry(user).or_default();
        if !list.contains(&seq) {
            list.push(seq);
        }
    }
    for user in users {
        assert_eq!(
            delivered[user], made[user],
            "{user}'s events in the order made"
        );
    }
}
