//! What the pipeline's tests share: a verifier of signatures written from the Standard
//! Webhooks specification (the `hmac` and `sha2` crates, not the code under test), HTTP
//! receivers on loopback (hyper servers), and the store, engine and events the tests commit.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::Sha256;
use zoftoken_engine::{
    Actor, Engine, EngineConfig, Event, EventKind, Mutation, ServiceConfig, WebhookConfig,
};
use zoftoken_proto::TokenId;
use zoftoken_storage::{Durability, MasterKey, MemoryKv, Store};
use zoftoken_testkit::now_ms;
use zoftoken_webhooks::PipelineConfig;

// ---------------------------------------------------------------------------------------
// The independent verifier (Standard Webhooks, "Verifying signatures").

/// The HMAC key of a secret: `whsec_` + base64 is decoded; anything else is used as is.
pub fn key_of(secret: &str) -> Vec<u8> {
    match secret.strip_prefix("whsec_") {
        Some(b) => base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
        None => secret.as_bytes().to_vec(),
    }
}

/// Whether one of the space-separated `v1,` signatures is HMAC-SHA256(key, id.ts.body), and
/// the timestamp is within five minutes of now.
pub fn verify(secret: &str, d: &Delivery) -> bool {
    let now = (now_ms() / 1000) as i64;
    let ts: i64 = d.timestamp.parse().unwrap();
    if (now - ts).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key_of(secret)).unwrap();
    mac.update(d.id.as_bytes());
    mac.update(b".");
    mac.update(d.timestamp.as_bytes());
    mac.update(b".");
    mac.update(&d.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    d.signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

// ---------------------------------------------------------------------------------------
// Receivers.

#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub json: Value,
    pub at: Instant,
}

/// What a receiver answers to its n-th request (0-based): status, `Retry-After`, or hang.
#[derive(Clone, Copy)]
pub enum Answer {
    Status(u16),
    RetryAfter(u16, &'static str),
    Hang,
}

pub type Behave = Arc<dyn Fn(usize) -> Answer + Send + Sync>;

pub struct Receiver {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<Delivery>>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.log.lock().unwrap().clone()
    }
    pub fn distinct(&self) -> HashSet<String> {
        self.deliveries().into_iter().map(|d| d.id).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn receiver(rt: &tokio::runtime::Runtime, at: Option<SocketAddr>, behave: Behave) -> Receiver {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(
            at.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()),
        ))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(Mutex::new(0usize));
    let log2 = log.clone();
    let task = rt.spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let (log, count, behave) = (log2.clone(), count.clone(), behave.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (log, count, behave) = (log.clone(), count.clone(), behave.clone());
                    async move {
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .map(|v| v.to_str().unwrap().to_owned())
                                .unwrap_or_default()
                        };
                        let (id, timestamp, signature) = (
                            h("webhook-id"),
                            h("webhook-timestamp"),
                            h("webhook-signature"),
                        );
                        assert_eq!(h("content-type"), "application/json");
                        let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                        let json: Value = serde_json::from_slice(&body).unwrap();
                        let n = {
                            let mut c = count.lock().unwrap();
                            *c += 1;
                            *c - 1
                        };
                        let answer = behave(n);
                        if !matches!(answer, Answer::Hang) {
                            log.lock().unwrap().push(Delivery {
                                id,
                                timestamp,
                                signature,
                                body,
                                json,
                                at: Instant::now(),
                            });
                        }
                        let mut resp = Response::new(Full::new(Bytes::new()));
                        match answer {
                            Answer::Status(s) => *resp.status_mut() = s.try_into().unwrap(),
                            Answer::RetryAfter(s, ra) => {
                                *resp.status_mut() = s.try_into().unwrap();
                                resp.headers_mut()
                                    .insert("retry-after", ra.parse().unwrap());
                            }
                            Answer::Hang => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Receiver { addr, log, task }
}

pub fn ok_receiver(rt: &tokio::runtime::Runtime) -> Receiver {
    receiver(rt, None, Arc::new(|_| Answer::Status(204)))
}

// ---------------------------------------------------------------------------------------
// Store, engine and events.

pub fn service(name: &str, url: &str, secret: &str) -> ServiceConfig {
    let mut s = ServiceConfig::new(name, &["127.0.0.1:7878"]);
    s.webhook = Some(WebhookConfig::new(url, secret));
    s
}

pub fn setup(services: Vec<ServiceConfig>) -> (Arc<Store>, Arc<Engine>) {
    let kv = Arc::new(MemoryKv::new());
    let store = Store::open(kv, MasterKey::from_bytes([9; 32]), Durability::Wal).unwrap();
    let engine = Engine::new(EngineConfig::new(services, 7, [1; 32])).unwrap();
    (Arc::new(store), Arc::new(engine))
}

/// Commits events (creating their tokens first if needed) in one write; the write raises the
/// store's outbox watermark, which wakes the pipeline.
pub fn commit(store: &Store, engine: &Engine, events: &[(&str, &str, Event)]) -> u64 {
    let mut m = Vec::new();
    for (svc, user, e) in events {
        if store.token_info(&e.token_id).unwrap().is_none()
            && !m.iter().any(
                |x| matches!(x, Mutation::TokenCreated { token_id, .. } if *token_id == e.token_id),
            )
        {
            m.push(Mutation::TokenCreated {
                token_id: e.token_id,
                service: Arc::from(*svc),
                username: (*user).to_owned(),
            });
        }
        m.push(Mutation::Event(e.clone()));
    }
    store.commit(&m, engine).unwrap()
}

pub fn ev(engine: &Engine, svc: &str, user: &str, kind: EventKind, t: u64) -> Event {
    let index = engine.service_index_of(svc).unwrap();
    Event::new(kind, TokenId::derive(svc, user), index, t, Actor::Device)
}

pub fn fast() -> PipelineConfig {
    PipelineConfig {
        retry_delays: vec![Duration::from_millis(30)],
        retry_for: Duration::from_secs(60),
        poll_interval: Duration::from_millis(50),
        attempt_timeout: Duration::from_secs(5),
        ..PipelineConfig::default()
    }
}

pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
