//! `webhook-sink`: a webhook receiver for benchmarks. It listens on HTTP/1.1 with keep-alive,
//! checks every delivery's Standard Webhooks signature, counts deliveries (distinct
//! `webhook-id`s and duplicates), records the latency from the event's time (`time_ms` in the
//! body) to its arrival, and prints one JSON summary line on SIGTERM/SIGINT or after `--count`
//! distinct events.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use zoftoken_webhooks::sign;

#[derive(Parser, Debug)]
#[command(about = "Receives webhooks, verifies them, prints a JSON summary")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9099")]
    listen: SocketAddr,
    /// The service's webhook secret (repeat for a rotation: any one may verify).
    #[arg(long, env = "WEBHOOK_SINK_SECRET")]
    secret: Vec<String>,
    /// Exit after this many distinct events (0: only on a signal).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Status to answer.
    #[arg(long, default_value_t = 204)]
    status: u16,
    /// Runtime threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Default)]
struct Stats {
    requests: u64,
    bad_signature: u64,
    bad_body: u64,
    ids: HashSet<String>,
    latencies_ms: Vec<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted.get(at).copied().unwrap_or(0)
}

fn summary(s: &Stats) -> serde_json::Value {
    let mut l = s.latencies_ms.clone();
    l.sort_unstable();
    let secs = match (s.first, s.last) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    let events = s.ids.len() as u64;
    serde_json::json!({
        "requests": s.requests,
        "events": events,
        "duplicates": s.requests.saturating_sub(events + s.bad_signature + s.bad_body),
        "bad_signature": s.bad_signature,
        "bad_body": s.bad_body,
        "seconds": secs,
        "events_per_sec": if secs > 0.0 { events as f64 / secs } else { 0.0 },
        "latency_ms": {
            "p50": percentile(&l, 0.50),
            "p90": percentile(&l, 0.90),
            "p99": percentile(&l, 0.99),
            "max": l.last().copied().unwrap_or(0),
        },
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        !args.secret.is_empty(),
        "give --secret (or WEBHOOK_SINK_SECRET)"
    );
    let status = StatusCode::from_u16(args.status).context("--status")?;
    let secrets: Vec<&str> = args.secret.iter().map(String::as_str).collect();
    let keys = Arc::new(sign::keys(&secrets));
    anyhow::ensure!(keys.len() == secrets.len(), "unusable secret");
    // One thread: a current-thread runtime, which wakes once per batch of ready
    // connections where a one-worker pool also hands work between threads (the sink shares
    // the machine with the server it measures).
    let mut builder = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads);
        b
    };
    let rt = builder.enable_all().build()?;
    let stats = Arc::new(Mutex::new(Stats::default()));
    let done = Arc::new(tokio::sync::Notify::new());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .with_context(|| format!("listen on {}", args.listen))?;
    eprintln!("webhook-sink listening on {}", args.listen);
    let count = args.count;
    {
        let (stats, done, keys) = (stats.clone(), done.clone(), keys.clone());
        rt.spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let _ = s.set_nodelay(true);
                let (stats, done, keys) = (stats.clone(), done.clone(), keys.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (stats, done, keys) = (stats.clone(), done.clone(), keys.clone());
                        async move {
                            let h = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_owned()
                            };
                            let (id, ts, sig) = (
                                h("webhook-id"),
                                h("webhook-timestamp"),
                                h("webhook-signature"),
                            );
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let arrived = now_ms();
                            let ok_sig = ts.parse::<u64>().is_ok_and(|t| {
                                let want = sign::signature_header(&keys, &id, t, &body);
                                want.split(' ').any(|w| sig.split(' ').any(|g| g == w))
                            });
                            let time = serde_json::from_slice::<serde_json::Value>(&body)
                                .ok()
                                .and_then(|v| v.get("time_ms").and_then(|t| t.as_u64()));
                            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                            s.requests += 1;
                            let now = Instant::now();
                            s.first.get_or_insert(now);
                            s.last = Some(now);
                            if !ok_sig {
                                s.bad_signature += 1;
                            } else if let Some(t) = time {
                                if s.ids.insert(id) {
                                    s.latencies_ms.push(arrived.saturating_sub(t));
                                }
                            } else {
                                s.bad_body += 1;
                            }
                            if count > 0 && s.ids.len() as u64 >= count {
                                done.notify_one();
                            }
                            let code = if ok_sig {
                                status
                            } else {
                                StatusCode::UNAUTHORIZED
                            };
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = code;
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    }
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = done.notified() => {}
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let s = stats.lock().unwrap_or_else(|p| p.into_inner());
    println!("{}", summary(&s));
    Ok(())
}
