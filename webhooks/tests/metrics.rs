//! The pipeline's metrics (a global debugging recorder: this binary holds one test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use zoftoken_engine::{
    Actor, Engine, EngineConfig, Event, EventKind, Mutation, ServiceConfig, WebhookConfig,
};
use zoftoken_proto::TokenId;
use zoftoken_storage::{Durability, MasterKey, MemoryKv, Store};
use zoftoken_webhooks::{Pipeline, PipelineConfig};

#[test]
fn deliveries_retries_and_failures_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    // Answers 500 to every third request.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    rt.spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let n = n.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let i = n.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let mut r = Response::new(Full::new(Bytes::new()));
                        if i % 3 == 0 {
                            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let mut svc = ServiceConfig::new("bank", &["127.0.0.1:7878"]);
    svc.webhook = Some(WebhookConfig::new(&format!("http://{addr}/"), "s"));
    let store = Arc::new(
        Store::open(
            Arc::new(MemoryKv::new()),
            MasterKey::from_bytes([1; 32]),
            Durability::Wal,
        )
        .unwrap(),
    );
    let engine = Arc::new(Engine::new(EngineConfig::new(vec![svc], 7, [1; 32])).unwrap());
    let config = PipelineConfig {
        // Two attempts: the retry falls at the 100 ms bound.
        retry_delays: vec![Duration::from_millis(100)],
        retry_for: Duration::from_millis(100),
        jitter_percent: 0,
        poll_interval: Duration::from_millis(50),
        concurrency_per_endpoint: 1,
        ..PipelineConfig::default()
    };
    let pipeline = Pipeline::start(config, store.clone(), engine.clone()).unwrap();
    let t = zoftoken_testkit::now_ms();
    let m: Vec<Mutation> = (0..6u8)
        .map(|i| {
            Mutation::Event(Event::new(
                EventKind::Opened,
                TokenId([i; 16]),
                0,
                t,
                Actor::Admin,
            ))
        })
        .collect();
    store.commit(&m, &*engine).unwrap();
    // The debugging recorder resets counters and drains histograms at every snapshot: sum.
    let mut seen: HashMap<String, f64> = HashMap::new();
    let take = |seen: &mut HashMap<String, f64>| {
        for (k, _, _, v) in snapshotter.snapshot().into_vec() {
            let name = k.key().name().to_owned();
            match v {
                DebugValue::Counter(c) => *seen.entry(name).or_default() += c as f64,
                DebugValue::Histogram(h) => *seen.entry(name).or_default() += h.len() as f64,
                DebugValue::Gauge(_) => {
                    seen.entry(name).or_default();
                }
            }
        }
    };
    let start = Instant::now();
    let settled = |seen: &HashMap<String, f64>| {
        seen.get("zoftoken_webhook_delivered_total")
            .copied()
            .unwrap_or(0.0)
            + seen
                .get("zoftoken_webhook_failed_total")
                .copied()
                .unwrap_or(0.0)
            >= 6.0
    };
    while !settled(&seen) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
        take(&mut seen);
    }
    while pipeline.in_memory() > 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    take(&mut seen);
    // Requests 0, 3, 6 … fail and are retried once: some events are delivered at their
    // second attempt, some (a retry landing on a failing request) become dead letters.
    let delivered = seen["zoftoken_webhook_delivered_total"];
    let failed = seen
        .get("zoftoken_webhook_failed_total")
        .copied()
        .unwrap_or(0.0);
    let retried = seen["zoftoken_webhook_retried_total"];
    assert_eq!(delivered + failed, 6.0, "{seen:?}");
    assert!(retried >= 1.0, "{seen:?}");
    assert_eq!(
        seen["zoftoken_webhook_latency_seconds"], delivered,
        "one sample each"
    );
    assert_eq!(pipeline.in_memory(), 0);
    assert!(seen.contains_key("zoftoken_webhook_queue_depth"));
    assert!(seen.contains_key("zoftoken_webhook_oldest_undelivered_seconds"));
    pipeline.shutdown();
}
