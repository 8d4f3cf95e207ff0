//! The admin layer's operations, one module per family, on an in-memory database, with the
//! running engine of a server or none (the command line's case).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod authkeys;
mod enrollments;
mod services;
mod tokens;
mod webhooks;

use std::sync::Arc;

use zoftoken_engine::{Engine, EngineConfig};
use zoftoken_storage::{Durability, KvStore, MasterKey, MemoryKv, ServiceDoc, Store};

/// An empty database in memory.
fn store() -> Arc<Store> {
    store_on(Arc::new(MemoryKv::new()))
}

fn store_on(kv: Arc<dyn KvStore>) -> Arc<Store> {
    Arc::new(Store::open(kv, MasterKey::from_bytes([4; 32]), Durability::Wal).unwrap())
}

/// A service with one endpoint and every default.
fn service(name: &str) -> ServiceDoc {
    serde_json::from_value(serde_json::json!({ "name": name, "endpoints": ["127.0.0.1:4500"] }))
        .unwrap()
}

/// A service with a webhook.
fn hooked(name: &str, secret: &str) -> ServiceDoc {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "endpoints": ["127.0.0.1:4500"],
        "webhook": { "url": "https://hooks.example/z", "secret": secret },
    }))
    .unwrap()
}

/// An engine running `services` (and no authkeys).
fn engine(services: &[ServiceDoc]) -> Arc<Engine> {
    let configs = zoftoken_storage::services_to_config(services).unwrap();
    Arc::new(Engine::new(EngineConfig::new(configs, 7, [9; 32])).unwrap())
}
