//! What the store cases share: master keys, a service with a webhook, an engine, and tokens
//! committed as a driver commits them.

use std::sync::Arc;

use zoftoken_engine::{
    Actor, Batch, Engine, EngineConfig, Event, EventKind, Mutation, ServiceConfig, TokenRecord,
    TokenState, TokenStateRecord,
};
use zoftoken_proto::{SecretBytes, TokenId};
use zoftoken_storage::{MasterKey, Store};

pub(crate) fn key(n: u8) -> MasterKey {
    MasterKey::from_bytes([n; 32])
}

/// A service with a webhook for every event: the outbox keeps only events a webhook receives.
pub(crate) fn service() -> ServiceConfig {
    let mut s = ServiceConfig::new("bank", &["127.0.0.1:7878"]);
    s.webhook = Some(zoftoken_engine::WebhookConfig::new(
        "https://hooks.example/zt",
        "conformance-secret",
    ));
    s
}

pub(crate) fn engine() -> Engine {
    Engine::new(EngineConfig::new(vec![service()], 7, [3; 32])).unwrap()
}

pub(crate) fn token(n: u32, version: u32) -> TokenRecord {
    let id = TokenId::derive("bank", &format!("user{n}"));
    let mut status = TokenStateRecord::new(id);
    status.version = version;
    status.highest_counter = u64::from(n) * 10;
    status.state = if n % 3 == 0 {
        TokenState::Open
    } else {
        TokenState::Closed
    };
    status.open_until_ms = if n % 3 == 0 { 10_000_000 } else { 0 };
    status.failures = (n % 3) as u8;
    status.clock_offset_ms = -(i64::from(n));
    TokenRecord {
        kind: zoftoken_engine::TokenKind::App,
        service: 0,
        secret: SecretBytes::new([n as u8; 32]),
        pin_verifier: SecretBytes::new([(n + 1) as u8; 32]),
        duress_verifier: (n % 2 == 0).then(|| SecretBytes::new([(n + 2) as u8; 32])),
        status,
    }
}

pub(crate) fn write_tokens(store: &Store, names: &Engine, range: std::ops::Range<u32>) {
    let mut batch = Batch::new();
    for n in range {
        let r = token(n, 1);
        batch.mutations.push(Mutation::TokenCreated {
            token_id: r.token_id(),
            service: Arc::from("bank"),
            username: format!("user{n}"),
        });
        batch.mutations.push(Mutation::Event(Event::new(
            EventKind::Paired,
            r.token_id(),
            0,
            5,
            Actor::Device,
        )));
        batch.mutations.push(Mutation::Token(Box::new(r)));
    }
    store.commit(&batch.mutations, names).unwrap();
}
