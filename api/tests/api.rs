//! The HTTP API through a real socket: every endpoint, every 401/403/400/413 path, long polls
//! woken by a device, the enrollment flow with the real device state machine, TOTP against an
//! independent RFC 6238 implementation, hostile input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use zoftoken_api::routes::{Authorization, Route, ROUTES};
use zoftoken_api::{ApiConfig, ApiServer, Clock};
use zoftoken_device::{Pairing, Reply, Request};
use zoftoken_engine::authkeys::hash_secret;
use zoftoken_engine::{
    AuthkeyConfig, Batch, Engine, EngineConfig, PacketOutcome, ServiceConfig, WebhookConfig,
};
use zoftoken_proto::deeplink::Deeplink;
use zoftoken_proto::{DropReason, PinVerifier, TokenId};
use zoftoken_storage::{AuthkeyDoc, Durability, KvStore, MasterKey, MemoryKv, ServiceDoc, Store};
use zoftoken_testkit::authenticator::{base32_decode, otpauth_param};
use zoftoken_testkit::{Link, Phone, T0};

const ROOT: &str = "root-secret-0123456789";
const WEB: &str = "web-secret-0123456789";
const BANKADMIN: &str = "bank-admin-secret-0123";
const ENDPOINT: &str = "127.0.0.1:4500";
/// A UTF-8 service name with a space and a slash.
const UTF8_SERVICE: &str = "bänk/ü x";

struct Harness {
    server: Option<ApiServer>,
    engine: Arc<Engine>,
    store: Arc<Store>,
    now: Arc<AtomicU64>,
}

fn keys() -> Vec<AuthkeyDoc> {
    vec![
        AuthkeyDoc::new("root", ROOT, true, ".*", ".*"),
        AuthkeyDoc::new("web", WEB, false, "bank", "[a-z]+"),
        AuthkeyDoc::new("bankadmin", BANKADMIN, true, "bank", ".*"),
    ]
}

fn services() -> Vec<ServiceConfig> {
    vec![
        ServiceConfig::new("bank", &[ENDPOINT]),
        ServiceConfig::new(UTF8_SERVICE, &[ENDPOINT]),
    ]
}

impl Harness {
    fn start() -> Harness {
        Harness::with(ApiConfig::default(), None)
    }

    fn with(config: ApiConfig, metrics: Option<zoftoken_api::MetricsRender>) -> Harness {
        Harness::with_kv(config, metrics, Arc::new(MemoryKv::new()))
    }

    fn with_kv(
        config: ApiConfig,
        metrics: Option<zoftoken_api::MetricsRender>,
        kv: Arc<dyn KvStore>,
    ) -> Harness {
        Harness::with_services(config, metrics, kv, services())
    }

    /// Service `bank` delivers its webhooks to `url`.
    fn with_webhook(url: &str) -> Harness {
        let mut s = services();
        s[0].webhook = Some(WebhookConfig::new(url, "s3cret"));
        Harness::with_services(ApiConfig::default(), None, Arc::new(MemoryKv::new()), s)
    }

    fn with_services(
        mut config: ApiConfig,
        metrics: Option<zoftoken_api::MetricsRender>,
        kv: Arc<dyn KvStore>,
        services: Vec<ServiceConfig>,
    ) -> Harness {
        config.listen = "127.0.0.1:0".parse().unwrap();
        let store =
            Arc::new(Store::open(kv, MasterKey::from_bytes([4; 32]), Durability::Wal).unwrap());
        let authkeys: Vec<AuthkeyConfig> = keys()
            .iter()
            .map(|k| AuthkeyConfig {
                name: k.name.clone(),
                secret_hash: hash_secret(match k.name.as_str() {
                    "root" => ROOT,
                    "web" => WEB,
                    _ => BANKADMIN,
                }),
                admin: k.admin,
                service_mask: k.service_mask.clone(),
                user_mask: k.user_mask.clone(),
            })
            .collect();
        if config.config_source_database {
            for k in keys() {
                store.put_authkey(&k).unwrap();
            }
            for s in &services {
                store.put_service(&ServiceDoc::from_config(s)).unwrap();
            }
        }
        let mut ec = EngineConfig::new(services, 7, [9; 32]);
        ec.authkeys = authkeys;
        let engine = Arc::new(Engine::new(ec).unwrap());
        let now = Arc::new(AtomicU64::new(T0));
        let clock: Clock = {
            let now = now.clone();
            Arc::new(move || now.load(Ordering::SeqCst))
        };
        let server =
            ApiServer::start(config, engine.clone(), store.clone(), metrics, clock).unwrap();
        Harness {
            server: Some(server),
            engine,
            store,
            now,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().local_addr()
    }

    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn advance(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    fn call(&self, method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> Answer {
        call(self.addr(), method, path, key, body)
    }

    /// Delivers a device datagram to the engine and commits like the UDP server does; the
    /// reply, or why there is none.
    fn deliver(&self, datagram: &[u8]) -> Result<Vec<u8>, DropReason> {
        let mut d = datagram.to_vec();
        let mut out = [0u8; 1200];
        let mut batch = Batch::new();
        let src: SocketAddr = zoftoken_testkit::harness::SRC.parse().unwrap();
        let outcome = self
            .engine
            .handle_packet(self.now(), src, &mut d, &mut out, &mut batch);
        self.store
            .commit_batch(&self.engine, self.now(), &mut batch)
            .unwrap();
        match outcome {
            PacketOutcome::Reply(n) => Ok(out[..n].to_vec()),
            PacketOutcome::Drop(r) => Err(r),
        }
    }

    fn pair(&self, pairing: Pairing) -> Phone {
        self.pair_with_duress(pairing, false).0
    }

    /// Pairs; with `duress`, also sets the duress PIN 1357 (returned beside the phone).
    fn pair_with_duress(&self, pairing: Pairing, duress: bool) -> (Phone, PinVerifier) {
        let phone = Phone::pair(&mut { self }, pairing, duress);
        let duress_pin = phone.duress.clone();
        (phone, duress_pin)
    }

    fn send(&self, phone: &mut Phone, req: Request<'_>) -> Reply {
        phone.send(&mut { self }, req).unwrap()
    }

    /// Enrolls through the API and pairs with the deeplink.
    fn enrolled_phone(&self, user: &str) -> Phone {
        let a = self.call("POST", &tok("bank", user, ""), Some(ROOT), None);
        assert_eq!(a.status, 201, "{}", a.body);
        let link = Deeplink::parse(a.json["deeplink"].as_str().unwrap()).unwrap();
        self.pair(Pairing::from_deeplink(&link))
    }
}

/// The API harness as a phone's link: datagrams handed to its engine, on its clock.
impl Link for &Harness {
    type Error = DropReason;

    fn now_ms(&self) -> u64 {
        self.now()
    }

    fn exchange(&mut self, datagram: &[u8]) -> Result<Vec<u8>, DropReason> {
        self.deliver(datagram)
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The path of a token resource.
fn tok(service: &str, user: &str, rest: &str) -> String {
    format!("/v1/services/{}/tokens/{}{rest}", enc(service), enc(user))
}

#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
    json: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(k) = key {
        req.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw(addr, req.as_bytes())
}

fn raw(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_answer(&out)
}

fn parse_answer(out: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head: head.to_lowercase(),
        body: body.to_owned(),
        json: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

#[test]
fn health_readiness_openapi_and_errors_are_json() {
    let h = Harness::start();
    let a = h.call("GET", "/healthz", None, None);
    assert_eq!((a.status, a.json["status"].as_str()), (200, Some("ok")));
    let a = h.call("GET", "/readyz", None, None);
    // Public: nothing about tokens, not even how many there are.
    assert_eq!((a.status, &a.json), (200, &json!({ "status": "ready" })));
    let a = h.call("GET", "/openapi.json", None, None);
    assert_eq!(a.status, 200);
    assert_eq!(a.json["openapi"], "3.1.0");
    // /metrics needs a key; without a recorder, it says so in the error format.
    let a = h.call("GET", "/metrics", None, None);
    assert_eq!((a.status, a.code()), (401, "missing_authkey"));
    let a = h.call("GET", "/metrics", Some(ROOT), None);
    assert_eq!((a.status, a.code()), (404, "metrics_disabled"));
    let a = h.call("GET", "/nope", None, None);
    assert_eq!((a.status, a.code()), (404, "not_found"));
    assert!(a.json["error"]["message"].is_string());
    let a = h.call("POST", "/healthz", None, None);
    assert_eq!((a.status, a.code()), (405, "method_not_allowed"));
    assert!(a.head.contains("allow: get"), "{}", a.head);
    let a = h.call("PATCH", &tok("bank", "alice", ""), Some(ROOT), None);
    assert_eq!((a.status, a.code()), (405, "method_not_allowed"));
    assert!(a.head.contains("cache-control: no-store"));
}

#[test]
fn openapi_describes_every_route_and_nothing_else() {
    let doc: Value = serde_json::from_str(zoftoken_api::OPENAPI_JSON).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            documented.insert((method.to_uppercase(), path.clone()));
            assert!(op["responses"].is_object(), "{method} {path} has responses");
            assert!(
                op["operationId"].is_string(),
                "{method} {path} has an operationId"
            );
        }
    }
    let routed: std::collections::BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty(),
        "routes missing from openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "openapi.json documents no such route: {extra:?}"
    );
    for r in ROUTES {
        let op = &doc["paths"][r.path][r.method.to_lowercase()];
        // operationIds are the router's operation names.
        assert_eq!(op["operationId"], r.operation.id(), "{r:?}");
        // Public routes, and only they, need no key.
        assert_eq!(
            op["security"] == json!([]),
            r.authorization == Authorization::Public,
            "{r:?}"
        );
    }
    // And every routed path answers something other than the router's 404.
    let h = Harness::start();
    for Route {
        method: m, path: p, ..
    } in ROUTES
    {
        let path = p
            .replace("{service}", "bank")
            .replace("{username}", "alice")
            .replace("{name}", "k")
            .replace("{tx_id}", &"00".repeat(16))
            .replace("{id}", "msg_00000000000000010000");
        let a = h.call(m, &path, Some(ROOT), Some("{}"));
        assert_ne!(a.code(), "not_found", "{m} {path}");
        assert_ne!(a.status, 405, "{m} {path}");
    }
}

#[test]
fn missing_unknown_and_insufficient_keys() {
    let h = Harness::start();
    h.enrolled_phone("alice");
    let status = tok("bank", "alice", "");
    let a = h.call("GET", &status, None, None);
    assert_eq!((a.status, a.code()), (401, "missing_authkey"));
    assert!(a.head.contains("www-authenticate: bearer"), "{}", a.head);
    let a = raw(
        h.addr(),
        format!("GET {status} HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {WEB}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!((a.status, a.code()), (401, "missing_authkey"));
    let a = h.call("GET", &status, Some("not-a-key"), None);
    assert_eq!((a.status, a.code()), (401, "unknown_authkey"));
    // A non-admin key reads status but may not enroll, delete, force, …
    let a = h.call("GET", &status, Some(WEB), None);
    assert_eq!((a.status, a.json["state"].as_str()), (200, Some("closed")));
    for (m, p, b) in [
        ("POST", tok("bank", "alice", ""), "{}"),
        ("DELETE", tok("bank", "alice", ""), ""),
        ("PUT", tok("bank", "alice", "/state"), r#"{"state":"open"}"#),
        ("POST", tok("bank", "alice", "/offline/challenge"), "{}"),
        (
            "POST",
            tok("bank", "alice", "/offline/response"),
            r#"{"response":"x"}"#,
        ),
        ("POST", tok("bank", "alice", "/backup-codes"), "{}"),
        (
            "POST",
            tok("bank", "alice", "/transactions"),
            r#"{"message":"m"}"#,
        ),
        ("GET", "/v1/services".to_owned(), ""),
        ("GET", "/v1/authkeys".to_owned(), ""),
    ] {
        let a = h.call(m, &p, Some(WEB), Some(b));
        assert_eq!((a.status, a.code()), (403, "forbidden"), "{m} {p}");
    }
    // Masks are anchored and both must match; the refusal is the same whether the token
    // exists or not.
    let exists = h.call("GET", &tok("bank", "alice", ""), Some(WEB), None);
    assert_eq!(exists.status, 200);
    let bad_user = h.call("GET", &tok("bank", "Alice", ""), Some(WEB), None);
    let bad_user_missing = h.call("GET", &tok("bank", "Nobody", ""), Some(WEB), None);
    let bad_service = h.call("GET", &tok(UTF8_SERVICE, "alice", ""), Some(WEB), None);
    let prefix = h.call("GET", &tok("bank2", "alice", ""), Some(WEB), None);
    for a in [&bad_user, &bad_user_missing, &bad_service, &prefix] {
        assert_eq!((a.status, a.code()), (403, "forbidden"));
    }
    assert_eq!(bad_user.body, bad_user_missing.body);
    // An admin key limited to one service cannot manage services or authkeys.
    let a = h.call("GET", "/v1/services", Some(BANKADMIN), None);
    assert_eq!((a.status, a.code()), (403, "forbidden"));
    let a = h.call("POST", &tok(UTF8_SERVICE, "bob", ""), Some(BANKADMIN), None);
    assert_eq!((a.status, a.code()), (403, "forbidden"));
    let a = h.call("POST", &tok("bank", "bob", ""), Some(BANKADMIN), None);
    assert_eq!(a.status, 201);
}

#[test]
fn failed_authentications_are_rate_limited_per_source() {
    let h = Harness::start();
    let path = tok("bank", "alice", "");
    let mut first_429 = None;
    for i in 0..30 {
        let a = h.call("GET", &path, Some(&format!("guess-{i}")), None);
        if a.status == 429 {
            first_429 = Some(i);
            assert_eq!(a.code(), "too_many_auth_failures");
            assert!(a.head.contains("retry-after: 60"), "{}", a.head);
            break;
        }
        assert_eq!(a.status, 401);
    }
    assert_eq!(
        first_429,
        Some(zoftoken_api::AUTH_FAILURES_PER_WINDOW as usize)
    );
    // A key that exists is never refused by the limiter (nobody can lock its holders out);
    // missing and unknown keys from the limited address still are.
    let a = h.call("GET", &path, Some(ROOT), None);
    assert_eq!((a.status, a.code()), (404, "unknown_token"));
    let a = h.call("GET", &tok("bank", "Alice", ""), Some(WEB), None);
    assert_eq!((a.status, a.code()), (403, "forbidden"));
    let a = h.call("GET", &path, Some("guess-again"), None);
    assert_eq!((a.status, a.code()), (429, "too_many_auth_failures"));
    let a = h.call("GET", &path, None, None);
    assert_eq!((a.status, a.code()), (429, "too_many_auth_failures"));
    h.advance(zoftoken_api::AUTH_WINDOW_MS);
    let a = h.call("GET", &path, Some("guess-again"), None);
    assert_eq!((a.status, a.code()), (401, "unknown_authkey"));
    let a = h.call("GET", &path, Some(ROOT), None);
    assert_eq!((a.status, a.code()), (404, "unknown_token"));
}

/// `call`, from the local address `from` (any 127.0.0.0/8 address on Linux).
fn call_from(from: std::net::IpAddr, to: SocketAddr, path: &str, key: Option<&str>) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from, 0)).unwrap();
        sock.connect(to).await.unwrap().into_std().unwrap()
    });
    stream.set_nonblocking(false).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(k) = key {
        req.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = stream;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_answer(&out)
}

#[test]
fn many_failing_sources_never_lock_out_a_valid_key() {
    let h = Harness::start();
    let path = tok("bank", "alice", "");
    // More distinct failing sources than the limiter remembers (one bad key each).
    let n = zoftoken_api::AUTH_LIMIT_SOURCES as u32 + 3 * zoftoken_api::AUTH_FAILURES_PER_WINDOW;
    for i in 0..n {
        let from = std::net::Ipv4Addr::from(0x7f01_0000 + i);
        let a = call_from(from.into(), h.addr(), &path, Some("bad-key"));
        assert_eq!(
            (a.status, a.code()),
            (401, "unknown_authkey"),
            "source {from}"
        );
    }
    // A new source with a valid key, and with a bad one: neither shares anyone's entry.
    let fresh = std::net::IpAddr::from([127, 2, 0, 1]);
    let a = call_from(fresh, h.addr(), &path, Some(ROOT));
    assert_eq!((a.status, a.code()), (404, "unknown_token"));
    let a = call_from(fresh, h.addr(), &path, Some("bad-key"));
    assert_eq!((a.status, a.code()), (401, "unknown_authkey"));
    // One source that keeps failing stays limited while others come and go.
    let noisy = std::net::IpAddr::from([127, 3, 0, 1]);
    for _ in 0..zoftoken_api::AUTH_FAILURES_PER_WINDOW {
        call_from(noisy, h.addr(), &path, None);
    }
    let a = call_from(noisy, h.addr(), &path, None);
    assert_eq!(a.status, 429);
    let a = call_from(noisy, h.addr(), &path, Some(ROOT));
    assert_eq!(
        a.status, 404,
        "a valid key passes even from a limited source"
    );
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let path = tok("bank", "alice", "");
    let get = |h: &Harness, xff: &str, key: &str| {
        raw(
            h.addr(),
            format!(
                "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\
                 X-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    let limit = zoftoken_api::AUTH_FAILURES_PER_WINDOW;
    // No proxy configured (the default): the header is ignored, the peer is the source.
    let h = Harness::start();
    for i in 0..limit {
        assert_eq!(get(&h, &format!("198.51.100.{i}"), "bad").status, 401);
    }
    assert_eq!(get(&h, "198.51.100.200", "bad").status, 429);
    assert_eq!(get(&h, "198.51.100.200", ROOT).status, 404);
    // Behind a trusted proxy: each forwarded client is its own source.
    let config = ApiConfig {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..ApiConfig::default()
    };
    let h = Harness::with(config, None);
    for _ in 0..limit {
        assert_eq!(get(&h, "203.0.113.1", "bad").status, 401);
    }
    assert_eq!(get(&h, "203.0.113.1", "bad").status, 429);
    // The client cannot escape by prepending addresses: the last untrusted hop counts.
    assert_eq!(get(&h, "192.0.2.9, 203.0.113.1", "bad").status, 429);
    assert_eq!(get(&h, "203.0.113.1, 127.0.0.5", "bad").status, 429);
    // Other clients behind the same proxy are not limited.
    assert_eq!(get(&h, "203.0.113.2", "bad").status, 401);
    assert_eq!(get(&h, "203.0.113.1", ROOT).status, 404);
}

#[test]
fn connections_are_capped_per_source_address() {
    let per = 3;
    let config = ApiConfig {
        max_connections_per_address: per,
        ..ApiConfig::default()
    };
    let h = Harness::with(config, None);
    // Idle connections up to the cap are held open…
    let held: Vec<TcpStream> = (0..per)
        .map(|_| TcpStream::connect(h.addr()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // …and one more from the same address is closed at once, unanswered.
    let mut extra = TcpStream::connect(h.addr()).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut buf = Vec::new();
    let started = Instant::now();
    let _ = extra.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed, not timed out"
    );
    // Another source address is served meanwhile.
    let a = call_from([127, 0, 0, 2].into(), h.addr(), "/healthz", None);
    assert_eq!(a.status, 200);
    // Once one closes, the address is served again.
    drop(held);
    wait_until("a slot is free again", || {
        let mut s = TcpStream::connect(h.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        parse_answer(&out).status == 200
    });
    // A trusted proxy is exempt.
    let config = ApiConfig {
        max_connections_per_address: 1,
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..ApiConfig::default()
    };
    let h = Harness::with(config, None);
    let _held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(h.addr()).unwrap())
        .collect();
    assert_eq!(h.call("GET", "/healthz", None, None).status, 200);
}

#[test]
fn request_heads_are_limited_to_32_kib() {
    let h = Harness::start();
    let head = |pad: usize| {
        let start = "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: ";
        let end = "\r\n\r\n";
        let fill = pad - start.len() - end.len();
        format!("{start}{}{end}", "a".repeat(fill))
    };
    let max = zoftoken_api::MAX_HEAD_BYTES;
    assert_eq!(raw(h.addr(), head(max).as_bytes()).status, 200);
    // Larger heads are refused with 431 (or, when the server closes before reading all of
    // it, the connection is reset and the answer lost): never served.
    let mut refused = 0;
    for size in [max + 1, max + 4096, 2 * max - 100, 3 * max] {
        let mut s = TcpStream::connect(h.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(head(size).as_bytes());
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let a = parse_answer(&out);
        assert!(a.status == 431 || out.is_empty(), "{size}: {}", a.head);
        refused += usize::from(a.status == 431);
    }
    assert!(refused > 0, "no 431 seen");
}

#[test]
fn padded_masks_and_control_characters_are_refused_through_the_api() {
    let config = ApiConfig {
        config_source_database: true,
        ..ApiConfig::default()
    };
    let h = Harness::with(config, None);
    // A mask that reads as `.*` but is narrower would have counted as unrestricted.
    for body in [
        r#"{"name":"pad","admin":true,"service_mask":".* ","user_mask":".*"}"#,
        r#"{"name":"pad","admin":true,"service_mask":".*","user_mask":"\t.*"}"#,
        r#"{"name":"pad","admin":true,"service_mask":".*\n","user_mask":".*"}"#,
    ] {
        let a = h.call("POST", "/v1/authkeys", Some(ROOT), Some(body));
        assert_eq!((a.status, a.code()), (400, "invalid_authkey"), "{body}");
        assert!(a.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("whitespace"));
    }
    let a = h.call(
        "POST",
        "/v1/authkeys",
        Some(ROOT),
        Some(r#"{"name":"bad\nname"}"#),
    );
    assert_eq!((a.status, a.code()), (400, "invalid_authkey"));
    // A key whose mask only looks unrestricted may not manage anything global.
    let a = h.call(
        "POST",
        "/v1/authkeys",
        Some(ROOT),
        Some(r#"{"name":"alt","admin":true,"service_mask":".*|bank","user_mask":".*"}"#),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let alt = a.json["secret"].as_str().unwrap().to_owned();
    for (m, p) in [
        ("GET", "/v1/authkeys"),
        ("GET", "/v1/services"),
        ("GET", "/v1/webhooks/dead-letters"),
        ("GET", "/metrics"),
    ] {
        let a = h.call(m, p, Some(&alt), None);
        assert_eq!((a.status, a.code()), (403, "forbidden"), "{m} {p}");
    }
    let a = h.call(
        "POST",
        "/v1/authkeys",
        Some(&alt),
        Some(r#"{"name":"root2","admin":true}"#),
    );
    assert_eq!((a.status, a.code()), (403, "forbidden"));
    // Service names and usernames with control characters cannot be created.
    let svc = json!({ "name": "shop\nx", "endpoints": [ENDPOINT] });
    let a = h.call("POST", "/v1/services", Some(ROOT), Some(&svc.to_string()));
    assert_eq!((a.status, a.code()), (400, "invalid_service"));
    assert!(a.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("control characters"));
    // (With a key whose user mask matches newlines too, so that the engine is asked.)
    let a = h.call(
        "POST",
        "/v1/authkeys",
        Some(ROOT),
        Some(r#"{"name":"dotall","admin":true,"user_mask":"(?s).*"}"#),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let dotall = a.json["secret"].as_str().unwrap().to_owned();
    for user in ["alice\n", "a\u{0}b", "x\u{1b}[31m", "\u{85}"] {
        for body in [None, Some(r#"{"kind":"totp"}"#)] {
            let a = h.call("POST", &tok("bank", user, ""), Some(&dotall), body);
            assert_eq!((a.status, a.code()), (400, "invalid_input"), "{user:?}");
            assert!(a.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("control characters"));
        }
    }
    let mut stored = 0;
    h.store
        .for_each_token(&mut |_, _, _| {
            stored += 1;
            true
        })
        .unwrap();
    assert_eq!(stored, 0);
}

#[test]
fn bad_input_is_400_or_413_with_a_json_error() {
    let config = ApiConfig {
        max_body_bytes: 1024,
        ..ApiConfig::default()
    };
    let h = Harness::with(config, None);
    h.enrolled_phone("alice");
    let code = tok("bank", "alice", "/code");
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        (
            "POST",
            code.clone(),
            "{not json".into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            code.clone(),
            r#"{"code":"123456","extra":1}"#.into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            code.clone(),
            r#"{"code":123456}"#.into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            code.clone(),
            r#"{"code":""}"#.into(),
            400,
            "invalid_input",
        ),
        (
            "POST",
            code.clone(),
            format!(r#"{{"code":"{}"}}"#, "1".repeat(65)),
            400,
            "invalid_input",
        ),
        (
            "POST",
            code.clone(),
            format!(r#"{{"code":"{}"}}"#, "1".repeat(2000)),
            413,
            "body_too_large",
        ),
        (
            "POST",
            tok("bank", "alice", ""),
            r#"{"kind":"sms"}"#.into(),
            400,
            "invalid_json",
        ),
        (
            "PUT",
            tok("bank", "alice", "/state"),
            r#"{"state":"half-open"}"#.into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            tok("bank", "alice", "/offline/challenge"),
            r#"{"length":5}"#.into(),
            400,
            "invalid_input",
        ),
        (
            "POST",
            tok("bank", "alice", "/backup-codes"),
            r#"{"count":0}"#.into(),
            400,
            "invalid_input",
        ),
        (
            "POST",
            tok("bank", "alice", "/transactions"),
            format!(r#"{{"message":"{}"}}"#, "x".repeat(201)),
            400,
            "invalid_input",
        ),
        (
            "POST",
            tok("bank", "alice", "/transactions"),
            r#"{"message":"m","timeout_s":0}"#.into(),
            400,
            "invalid_input",
        ),
        (
            "GET",
            format!("{}?wait=soon", tok("bank", "alice", "")),
            String::new(),
            400,
            "invalid_query",
        ),
        (
            "GET",
            format!("{}?color=red", tok("bank", "alice", "")),
            String::new(),
            400,
            "invalid_query",
        ),
        (
            "GET",
            tok("bank", "alice", "/transactions/xyz"),
            String::new(),
            400,
            "invalid_tx_id",
        ),
        (
            "GET",
            "/v1/services/bank/tokens/%FF%FE".into(),
            String::new(),
            400,
            "invalid_path",
        ),
        (
            "GET",
            format!("/v1/services/bank/tokens/{}", "u".repeat(1025)),
            String::new(),
            400,
            "invalid_name",
        ),
        (
            "GET",
            format!("/v1/services/{}/tokens/u", "s".repeat(256)),
            String::new(),
            400,
            "invalid_name",
        ),
        (
            "GET",
            tok("nosuch", "alice", ""),
            String::new(),
            404,
            "unknown_service",
        ),
        (
            "GET",
            tok("bank", "nobody", ""),
            String::new(),
            404,
            "unknown_token",
        ),
    ];
    for (m, p, b, status, code) in cases {
        let a = h.call(m, &p, Some(ROOT), Some(&b));
        assert_eq!((a.status, a.code()), (status, code), "{m} {p} {b:.80}");
        assert!(a.json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // A declared length over the limit is refused before reading the body.
    let a = raw(
        h.addr(),
        format!(
            "POST {code} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ROOT}\r\nContent-Length: 99999999\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!((a.status, a.code()), (413, "body_too_large"));
    // A chunked body over the limit too.
    let chunk = "a".repeat(1500);
    let a = raw(
        h.addr(),
        format!(
            "POST {code} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ROOT}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        )
        .as_bytes(),
    );
    assert_eq!((a.status, a.code()), (413, "body_too_large"));
}

#[test]
fn enrollment_then_the_device_pairs_with_the_deeplink_and_with_the_manual_code() {
    let h = Harness::start();
    // Deeplink, with a UTF-8 service name and a username with a slash and spaces.
    let user = "Ana María/ops";
    let a = h.call(
        "POST",
        &format!("{}?qr=png,svg", tok(UTF8_SERVICE, user, "")),
        Some(ROOT),
        Some(r#"{"kind":"app"}"#),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let id = TokenId::derive(UTF8_SERVICE, user);
    assert_eq!(a.json["token_id"], id.to_hex());
    assert_eq!(a.json["kind"], "app");
    assert!(a.json["expires_ms"].as_u64().unwrap() > h.now());
    let png = base64::engine::general_purpose::STANDARD
        .decode(a.json["qr_png_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(a.json["qr_svg"].as_str().unwrap().starts_with("<svg"));
    let status = h.call("GET", &tok(UTF8_SERVICE, user, ""), Some(ROOT), None);
    assert_eq!(status.json["state"], "pending");
    let link = Deeplink::parse(a.json["deeplink"].as_str().unwrap()).unwrap();
    assert_eq!(link.service, UTF8_SERVICE);
    let phone = h.pair(Pairing::from_deeplink(&link));
    assert_eq!(phone.token.token_id(), id);
    let status = h.call("GET", &tok(UTF8_SERVICE, user, ""), Some(ROOT), None);
    assert_eq!(
        (status.json["state"].as_str(), status.json["kind"].as_str()),
        (Some("closed"), Some("app"))
    );
    // The pairing is durable: the store has the token.
    assert_eq!(
        h.store.token_info(&id).unwrap(),
        Some((UTF8_SERVICE.to_owned(), user.to_owned()))
    );

    // Manual code.
    let a = h.call("POST", &tok("bank", "bob", ""), Some(ROOT), None);
    assert_eq!(a.status, 201);
    let code = a.json["manual_code"].as_str().unwrap();
    let pairing = Pairing::from_manual_code(code, "bank", vec![ENDPOINT.to_owned()], None).unwrap();
    let phone = h.pair(pairing);
    assert_eq!(phone.token.token_id(), TokenId::derive("bank", "bob"));
    let status = h.call("GET", &tok("bank", "bob", ""), Some(WEB), None);
    assert_eq!(status.json["state"], "closed");
}

#[test]
fn long_poll_is_woken_by_a_device_open() {
    let h = Harness::start();
    let mut phone = h.enrolled_phone("alice");
    let addr = h.addr();
    let path = format!("{}?wait=30", tok("bank", "alice", ""));
    let started = Instant::now();
    let poll = std::thread::spawn(move || call(addr, "GET", &path, Some(WEB), None));
    // The poll waits: the engine holds its watcher.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.engine.waiters() == 0 {
        assert!(Instant::now() < deadline, "long poll never registered");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!poll.is_finished());
    let pin = phone.pin.clone();
    h.send(&mut phone, Request::Open(&pin));
    let a = poll.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "woken, not timed out"
    );
    assert_eq!((a.status, a.json["state"].as_str()), (200, Some("open")));
    assert!(a.json["open_until_ms"].as_u64().unwrap() > h.now());
    // `state` given and different from the current one: no wait at all.
    let a = h.call(
        "GET",
        &format!("{}?wait=30&state=closed", tok("bank", "alice", "")),
        Some(WEB),
        None,
    );
    assert_eq!(a.json["state"], "open");
    // An unknown token does not wait either.
    let a = h.call(
        "GET",
        &format!("{}?wait=30", tok("bank", "zed", "")),
        Some(WEB),
        None,
    );
    assert_eq!(a.code(), "unknown_token");
}

#[test]
fn a_long_poll_times_out_with_the_unchanged_state_and_is_capped() {
    let config = ApiConfig {
        max_wait: Duration::from_millis(300),
        ..ApiConfig::default()
    };
    let h = Harness::with(config, None);
    h.enrolled_phone("alice");
    let started = Instant::now();
    let a = h.call(
        "GET",
        &format!("{}?wait=3600", tok("bank", "alice", "")),
        Some(WEB),
        None,
    );
    assert_eq!(a.json["state"], "closed");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn force_and_delete() {
    let h = Harness::start();
    let mut phone = h.enrolled_phone("alice");
    let state = tok("bank", "alice", "/state");
    let a = h.call("PUT", &state, Some(ROOT), Some(r#"{"state":"open"}"#));
    assert_eq!((a.status, a.json["state"].as_str()), (200, Some("open")));
    let a = h.call("PUT", &state, Some(ROOT), Some(r#"{"state":"blocked"}"#));
    assert_eq!(a.json["state"], "blocked");
    // Blocked: the user cannot open.
    let pin = phone.pin.clone();
    let r = h.send(&mut phone, Request::Open(&pin));
    assert_eq!(r.status().state, zoftoken_proto::WireState::Blocked);
    let a = h.call("PUT", &state, Some(ROOT), Some(r#"{"state":"closed"}"#));
    assert_eq!(
        (a.json["state"].as_str(), a.json["failures"].as_u64()),
        (Some("closed"), Some(0))
    );
    // The forced state is durable.
    let id = TokenId::derive("bank", "alice");
    assert_eq!(
        h.store.token_state(&id).unwrap().unwrap().state,
        zoftoken_engine::TokenState::Closed
    );
    let a = h.call("DELETE", &tok("bank", "alice", ""), Some(ROOT), None);
    assert_eq!((a.status, a.json["deleted"].as_bool()), (200, Some(true)));
    let a = h.call("GET", &tok("bank", "alice", ""), Some(ROOT), None);
    assert_eq!((a.status, a.code()), (404, "unknown_token"));
    assert_eq!(h.store.token_info(&id).unwrap(), None);
    let a = h.call("DELETE", &tok("bank", "alice", ""), Some(ROOT), None);
    assert_eq!(a.code(), "unknown_token");
    // Pending tokens cannot be forced.
    h.call("POST", &tok("bank", "carol", ""), Some(ROOT), None);
    let a = h.call(
        "PUT",
        &tok("bank", "carol", "/state"),
        Some(ROOT),
        Some(r#"{"state":"open"}"#),
    );
    assert_eq!((a.status, a.code()), (409, "not_paired"));
}

#[test]
fn app_one_time_codes_are_accepted_once() {
    let h = Harness::start();
    let phone = h.enrolled_phone("alice");
    let path = tok("bank", "alice", "/code");
    let code = phone.token.one_time_code(&phone.pin, h.now()).unwrap();
    let body = json!({ "code": code }).to_string();
    let a = h.call("POST", &path, Some(WEB), Some(&body));
    assert_eq!(
        a.json,
        json!({"accepted": true, "duress": false, "blocked": false})
    );
    let a = h.call("POST", &path, Some(WEB), Some(&body));
    assert_eq!(
        a.json,
        json!({"accepted": false, "attempts_left": 2, "blocked": false})
    );
    let a = h.call("POST", &path, Some(WEB), Some(r#"{"code":"000000"}"#));
    assert_eq!(a.json["attempts_left"], 1);
    let a = h.call("POST", &path, Some(WEB), Some(r#"{"code":"000001"}"#));
    assert_eq!(a.json["blocked"], true);
    let a = h.call("GET", &tok("bank", "alice", ""), Some(WEB), None);
    assert_eq!(a.json["state"], "blocked");
}

// An RFC 6238 implementation independent of the server's: SHA-1 and HMAC written out here,
// checked against the RFC's Appendix B vectors before use.

fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64) * 8;
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().unwrap());
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn hmac_sha1(key: &[u8], msg: &[u8]) -> [u8; 20] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..20].copy_from_slice(&sha1(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(msg.iter().copied())
        .collect();
    let ih = sha1(&inner);
    let outer: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x5c)
        .chain(ih.iter().copied())
        .collect();
    sha1(&outer)
}

fn totp(key: &[u8], unix_s: u64, period: u64, digits: u32) -> String {
    let mac = hmac_sha1(key, &(unix_s / period).to_be_bytes());
    let off = (mac[19] & 0x0f) as usize;
    let bin = u32::from_be_bytes(mac[off..off + 4].try_into().unwrap()) & 0x7fff_ffff;
    format!(
        "{:0width$}",
        bin % 10u32.pow(digits),
        width = digits as usize
    )
}

#[test]
fn totp_tokens_validate_codes_of_an_independent_rfc_6238_implementation() {
    // RFC 6238 Appendix B, SHA-1 rows.
    let key = b"12345678901234567890";
    for (t, code) in [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ] {
        assert_eq!(totp(key, t, 30, 8), code, "RFC 6238 vector at T={t}");
    }
    let h = Harness::start();
    let a = h.call(
        "POST",
        &format!("{}?qr=svg,png", tok("bank", "tom", "")),
        Some(ROOT),
        Some(r#"{"kind":"totp"}"#),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.json["kind"], "totp");
    let uri = a.json["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    let png = base64::engine::general_purpose::STANDARD
        .decode(a.json["qr_png_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(a.json["qr_svg"].as_str().unwrap().starts_with("<svg"));
    let param = |name: &str| otpauth_param(uri, name);
    let secret = base32_decode(&param("secret"));
    assert_eq!(
        base32_decode(a.json["secret_base32"].as_str().unwrap()),
        secret
    );
    let digits: u32 = param("digits").parse().unwrap();
    let period: u64 = param("period").parse().unwrap();
    let status = h.call("GET", &tok("bank", "tom", ""), Some(WEB), None);
    assert_eq!(
        (status.json["kind"].as_str(), status.json["state"].as_str()),
        (Some("totp"), Some("closed"))
    );
    let path = tok("bank", "tom", "/code");
    let code = totp(&secret, h.now() / 1000, period, digits);
    let body = json!({ "code": code }).to_string();
    let a = h.call("POST", &path, Some(WEB), Some(&body));
    assert_eq!(a.json["accepted"], true, "{}", a.body);
    // Never twice.
    let a = h.call("POST", &path, Some(WEB), Some(&body));
    assert_eq!(a.json["accepted"], false);
    // The next period's code works.
    h.advance(period * 1000);
    let code = totp(&secret, h.now() / 1000, period, digits);
    let a = h.call(
        "POST",
        &path,
        Some(WEB),
        Some(&json!({ "code": code }).to_string()),
    );
    assert_eq!(a.json["accepted"], true);
    // No app: no offline mode and no transactions.
    let a = h.call(
        "POST",
        &tok("bank", "tom", "/offline/challenge"),
        Some(ROOT),
        None,
    );
    assert_eq!((a.status, a.code()), (409, "not_for_totp"));
    let a = h.call(
        "POST",
        &tok("bank", "tom", "/transactions"),
        Some(ROOT),
        Some(r#"{"message":"m"}"#),
    );
    assert_eq!((a.status, a.code()), (409, "not_for_totp"));
}

#[test]
fn offline_challenge_and_response() {
    let h = Harness::start();
    let phone = h.enrolled_phone("alice");
    let a = h.call(
        "POST",
        &tok("bank", "alice", "/offline/response"),
        Some(ROOT),
        Some(r#"{"response":"1234"}"#),
    );
    assert_eq!((a.status, a.code()), (409, "no_challenge"));
    let a = h.call(
        "POST",
        &tok("bank", "alice", "/offline/challenge"),
        Some(ROOT),
        Some(r#"{"length":12}"#),
    );
    assert_eq!(a.status, 200);
    let challenge = a.json["code"].as_str().unwrap().to_owned();
    assert_eq!(challenge.len(), 14, "three groups of four: {challenge}");
    let response = phone
        .token
        .offline_response(&phone.pin, &challenge)
        .unwrap();
    let a = h.call(
        "POST",
        &tok("bank", "alice", "/offline/response"),
        Some(ROOT),
        Some(&json!({ "response": response }).to_string()),
    );
    assert_eq!(
        a.json,
        json!({"accepted": true, "duress": false, "blocked": false})
    );
    let a = h.call("GET", &tok("bank", "alice", ""), Some(WEB), None);
    assert_eq!(a.json["state"], "open");
    // Single use.
    let a = h.call(
        "POST",
        &tok("bank", "alice", "/offline/response"),
        Some(ROOT),
        Some(&json!({ "response": response }).to_string()),
    );
    assert_eq!(a.code(), "no_challenge");
}

#[test]
fn backup_codes_are_returned_once_and_work_once() {
    let h = Harness::start();
    h.enrolled_phone("alice");
    // `6.0` is the integer 6 to JSON; `6.5` is no count.
    let a = h.call(
        "POST",
        &tok("bank", "alice", "/backup-codes"),
        Some(ROOT),
        Some(r#"{"count": 2.5}"#),
    );
    assert_eq!((a.status, a.code()), (400, "invalid_json"));
    let a = h.call(
        "POST",
        &tok("bank", "alice", "/backup-codes"),
        Some(ROOT),
        Some(r#"{"count": 3.0}"#),
    );
    assert_eq!(
        (a.status, a.json["codes"].as_array().map(Vec::len)),
        (201, Some(3))
    );
    let a = h.call(
        "POST",
        &tok("bank", "alice", "/backup-codes"),
        Some(ROOT),
        None,
    );
    assert_eq!(a.status, 201);
    let codes: Vec<String> = serde_json::from_value(a.json["codes"].clone()).unwrap();
    assert_eq!(codes.len(), 10);
    assert!(codes
        .iter()
        .all(|c| c.len() == 8 && c.bytes().all(|b| b.is_ascii_digit())));
    let verify = tok("bank", "alice", "/backup-codes/verify");
    let body = json!({ "code": codes[0] }).to_string();
    let a = h.call("POST", &verify, Some(WEB), Some(&body));
    assert_eq!(a.json["accepted"], true);
    let a = h.call("POST", &verify, Some(WEB), Some(&body));
    assert_eq!(
        (
            a.json["accepted"].as_bool(),
            a.json["attempts_left"].as_u64()
        ),
        (Some(false), Some(2))
    );
    let a = h.call(
        "POST",
        &verify,
        Some(WEB),
        Some(&json!({ "code": codes[1] }).to_string()),
    );
    assert_eq!(a.json["accepted"], true);
    // Custom count and length.
    let a = h.call(
        "POST",
        &tok("bank", "alice", "/backup-codes"),
        Some(ROOT),
        Some(r#"{"count":3,"digits":12}"#),
    );
    let codes: Vec<String> = serde_json::from_value(a.json["codes"].clone()).unwrap();
    assert_eq!((codes.len(), codes[0].len()), (3, 12));
}

#[test]
fn transactions_are_approved_through_a_long_poll_and_expire() {
    let h = Harness::start();
    let mut phone = h.enrolled_phone("alice");
    let a = h.call(
        "POST",
        &tok("bank", "alice", "/transactions"),
        Some(ROOT),
        Some(r#"{"message":"Pay 10 EUR?","timeout_s":60}"#),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let tx = a.json["tx_id"].as_str().unwrap().to_owned();
    assert_eq!(a.json["expires_ms"], h.now() + 60_000);
    let read = tok("bank", "alice", &format!("/transactions/{tx}"));
    let a = h.call("GET", &read, Some(WEB), None);
    assert_eq!(
        (a.json["state"].as_str(), a.json["message"].as_str()),
        (Some("waiting"), Some("Pay 10 EUR?"))
    );
    // Another user's path does not reveal the transaction.
    h.enrolled_phone("bob");
    let a = h.call(
        "GET",
        &tok("bank", "bob", &format!("/transactions/{tx}")),
        Some(WEB),
        None,
    );
    assert_eq!((a.status, a.code()), (404, "unknown_transaction"));
    let addr = h.addr();
    let path = format!("{read}?wait=30");
    let poll = std::thread::spawn(move || call(addr, "GET", &path, Some(WEB), None));
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.engine.waiters() == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = h.send(&mut phone, Request::TxFetch);
    let Reply::Transaction(_, Some(pending)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(hex::encode(pending.tx_id), tx);
    let pin = phone.pin.clone();
    h.send(
        &mut phone,
        Request::TxApprove {
            tx_id: pending.tx_id,
            pin: &pin,
        },
    );
    let a = poll.join().unwrap();
    assert_eq!(
        (a.json["state"].as_str(), a.json["duress"].as_bool()),
        (Some("approved"), Some(false))
    );

    // A denial wakes the poll too.
    let a = h.call(
        "POST",
        &tok("bank", "alice", "/transactions"),
        Some(ROOT),
        Some(r#"{"message":"Log in?"}"#),
    );
    let tx2 = a.json["tx_id"].as_str().unwrap().to_owned();
    let path = format!(
        "{}?wait=30",
        tok("bank", "alice", &format!("/transactions/{tx2}"))
    );
    let poll = std::thread::spawn(move || call(addr, "GET", &path, Some(WEB), None));
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.engine.waiters() == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut id = [0u8; 16];
    hex::decode_to_slice(&tx2, &mut id).unwrap();
    h.send(&mut phone, Request::TxDeny { tx_id: id });
    assert_eq!(poll.join().unwrap().json["state"], "denied");

    // Expiry: FAILED once the timeout passes.
    let a = h.call(
        "POST",
        &tok("bank", "alice", "/transactions"),
        Some(ROOT),
        Some(r#"{"message":"Late?","timeout_s":5}"#),
    );
    let tx3 = a.json["tx_id"].as_str().unwrap().to_owned();
    h.advance(5_000);
    let a = h.call(
        "GET",
        &format!(
            "{}?wait=30",
            tok("bank", "alice", &format!("/transactions/{tx3}"))
        ),
        Some(WEB),
        None,
    );
    assert_eq!(a.json["state"], "expired");
}

#[test]
fn transactions_beyond_the_per_token_cap_are_refused_with_429() {
    let h = Harness::start();
    h.enrolled_phone("alice");
    h.enrolled_phone("bob");
    let create = |user: &str| {
        h.call(
            "POST",
            &tok("bank", user, "/transactions"),
            Some(ROOT),
            Some(r#"{"message":"Pay?","timeout_s":60}"#),
        )
    };
    for _ in 0..zoftoken_engine::MAX_WAITING_TRANSACTIONS {
        assert_eq!(create("alice").status, 201);
    }
    let a = create("alice");
    assert_eq!(
        (a.status, a.code()),
        (429, "too_many_transactions"),
        "{}",
        a.body
    );
    assert!(a.json["error"]["message"].as_str().unwrap().contains("16"));
    assert_eq!(create("bob").status, 201);
    // Expired, they wait no more.
    h.advance(60_000);
    assert_eq!(create("alice").status, 201);
}

#[test]
fn a_blocked_token_reports_no_attempts_left() {
    let h = Harness::start();
    let mut phone = h.enrolled_phone("alice");
    let status = tok("bank", "alice", "");
    let a = h.call("GET", &status, Some(WEB), None);
    assert_eq!(a.json["attempts_left"], 3, "{}", a.body);
    let a = h.call(
        "PUT",
        &tok("bank", "alice", "/state"),
        Some(ROOT),
        Some(r#"{"state":"blocked"}"#),
    );
    assert_eq!(
        (a.json["state"].as_str(), a.json["attempts_left"].as_u64()),
        (Some("blocked"), Some(0)),
        "{}",
        a.body
    );
    let a = h.call("GET", &status, Some(WEB), None);
    assert_eq!(a.json["attempts_left"], 0);
    let r = h.send(&mut phone, Request::Status);
    assert_eq!(
        (r.status().state, r.status().attempts_left),
        (zoftoken_proto::WireState::Blocked, 0)
    );
    let a = h.call(
        "POST",
        &tok("bank", "alice", "/code"),
        Some(WEB),
        Some(r#"{"code":"000000"}"#),
    );
    assert_eq!(
        (
            a.json["blocked"].as_bool(),
            a.json["attempts_left"].as_u64()
        ),
        (Some(true), Some(0))
    );
}

#[test]
fn services_and_authkeys_are_managed_in_database_mode() {
    let config = ApiConfig {
        config_source_database: true,
        ..ApiConfig::default()
    };
    let h = Harness::with(config, None);
    let a = h.call("GET", "/v1/services", Some(ROOT), None);
    assert_eq!(
        (a.status, a.json["source"].as_str()),
        (200, Some("database"))
    );
    assert_eq!(a.json["services"].as_array().unwrap().len(), 2);
    let svc = json!({
        "name": "shop",
        "window": 300,
        "endpoints": [ENDPOINT],
        "webhook": { "url": "https://hooks.example/x", "secret": "hook-secret" },
        "details": { "name": "Shop", "logo": "iVBORw0KGgo=" }
    });
    let a = h.call("POST", "/v1/services", Some(ROOT), Some(&svc.to_string()));
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.json["webhook"]["secret"], "<redacted>");
    let a = h.call("POST", "/v1/services", Some(ROOT), Some(&svc.to_string()));
    assert_eq!((a.status, a.code()), (409, "service_exists"));
    let bad = json!({ "name": "bad", "endpoints": [], "window": 999999 });
    let a = h.call("POST", "/v1/services", Some(ROOT), Some(&bad.to_string()));
    assert_eq!((a.status, a.code()), (400, "invalid_service"));
    assert!(a.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("service.window"));
    // The engine runs the new service at once.
    let a = h.call("POST", &tok("shop", "sam", ""), Some(ROOT), None);
    assert_eq!(a.status, 201);
    // Details JSON for the app, without a key.
    let a = h.call("GET", "/v1/services/shop/details", None, None);
    assert_eq!(a.json, json!({ "name": "Shop", "logo": "iVBORw0KGgo=" }));
    let a = h.call("GET", "/v1/services/bank/details", None, None);
    assert_eq!((a.status, a.code()), (404, "no_details"));
    // Edit: the redacted secret read back keeps the stored one.
    let mut edited = h.call("GET", "/v1/services/shop", Some(ROOT), None).json;
    edited["window"] = json!(60);
    let a = h.call(
        "PUT",
        "/v1/services/shop",
        Some(ROOT),
        Some(&edited.to_string()),
    );
    assert_eq!((a.status, a.json["window"].as_u64()), (200, Some(60)));
    // The name may be left out (it is the path's), and a whole number written `90.0` is 90.
    let mut unnamed = edited.clone();
    unnamed.as_object_mut().unwrap().remove("name");
    unnamed["window"] = json!(90.0);
    let a = h.call(
        "PUT",
        "/v1/services/shop",
        Some(ROOT),
        Some(&unnamed.to_string()),
    );
    assert_eq!((a.status, a.json["window"].as_u64()), (200, Some(90)));
    let a = h.call(
        "PUT",
        "/v1/services/shop",
        Some(ROOT),
        Some(&edited.to_string()),
    );
    assert_eq!(a.status, 200);
    let stored = h.store.services().unwrap();
    let shop = stored.iter().find(|d| d.name == "shop").unwrap();
    assert_eq!(
        (shop.window, shop.webhook.as_ref().unwrap().secret.as_str()),
        (60, "hook-secret")
    );
    let a = h.call(
        "PUT",
        "/v1/services/other",
        Some(ROOT),
        Some(&edited.to_string()),
    );
    assert_eq!(a.code(), "invalid_service");
    // Delete: refused while tokens exist, unless forced.
    let a = h.call("DELETE", "/v1/services/shop", Some(ROOT), None);
    assert_eq!((a.status, a.code()), (409, "service_has_tokens"));
    let a = h.call("DELETE", "/v1/services/shop?force=true", Some(ROOT), None);
    assert_eq!((a.status, a.json["tokens_kept"].as_u64()), (200, Some(1)));
    assert!(h.store.services().unwrap().iter().all(|d| d.name != "shop"));
    // The running engine no longer has it: its token and new enrollments are refused.
    let a = h.call("GET", &tok("shop", "sam", ""), Some(ROOT), None);
    assert_eq!((a.status, a.code()), (404, "unknown_service"));
    let a = h.call("POST", &tok("shop", "sue", ""), Some(ROOT), None);
    assert_eq!((a.status, a.code()), (404, "unknown_service"));
    let a = h.call("DELETE", "/v1/services/shop", Some(ROOT), None);
    assert_eq!(a.code(), "unknown_service");

    // Authkeys: listed without secrets, created (secret shown once), usable, revoked.
    let a = h.call("GET", "/v1/authkeys", Some(ROOT), None);
    let names: Vec<&str> = a.json["authkeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["bankadmin", "root", "web"]);
    assert!(!a.body.contains(ROOT) && !a.body.contains("secret"));
    let a = h.call(
        "POST",
        "/v1/authkeys",
        Some(ROOT),
        Some(r#"{"name":"reader","service_mask":"bank","user_mask":".*","format":"base64"}"#),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let secret = a.json["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 43);
    assert!(h
        .store
        .authkeys()
        .unwrap()
        .iter()
        .all(|d| d.secret.is_none()));
    h.enrolled_phone("alice");
    let a = h.call("GET", &tok("bank", "alice", ""), Some(&secret), None);
    assert_eq!(a.status, 200);
    let a = h.call(
        "POST",
        "/v1/authkeys",
        Some(ROOT),
        Some(r#"{"name":"reader"}"#),
    );
    assert_eq!(a.code(), "authkey_exists");
    let a = h.call(
        "POST",
        "/v1/authkeys",
        Some(ROOT),
        Some(r#"{"name":"x","user_mask":"("}"#),
    );
    assert_eq!(a.code(), "invalid_authkey");
    let a = h.call("DELETE", "/v1/authkeys/reader", Some(ROOT), None);
    assert_eq!(a.status, 200);
    let a = h.call("GET", &tok("bank", "alice", ""), Some(&secret), None);
    assert_eq!(a.code(), "unknown_authkey");
    let a = h.call("DELETE", "/v1/authkeys/reader", Some(ROOT), None);
    assert_eq!(a.code(), "unknown_authkey_name");
}

#[test]
fn services_and_authkeys_are_read_only_in_file_mode() {
    let mut config = ApiConfig::default();
    config
        .service_details
        .insert("bank".into(), json!({ "name": "Bank" }));
    let h = Harness::with(config, None);
    let a = h.call("GET", "/v1/services/bank/details", None, None);
    assert_eq!(a.json, json!({ "name": "Bank" }));
    let a = h.call("GET", "/v1/services", Some(ROOT), None);
    assert_eq!((a.status, a.json["source"].as_str()), (200, Some("file")));
    let names: Vec<&str> = a.json["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["bank", UTF8_SERVICE]);
    let a = h.call(
        "GET",
        &format!("/v1/services/{}", enc(UTF8_SERVICE)),
        Some(ROOT),
        None,
    );
    assert_eq!(a.json["name"], UTF8_SERVICE);
    let a = h.call(
        "POST",
        "/v1/services",
        Some(ROOT),
        Some(r#"{"name":"x","endpoints":["127.0.0.1:1"]}"#),
    );
    assert_eq!((a.status, a.code()), (409, "config_source_file"));
    let a = h.call("DELETE", "/v1/services/bank", Some(ROOT), None);
    assert_eq!(a.code(), "config_source_file");
    let a = h.call("POST", "/v1/authkeys", Some(ROOT), Some(r#"{"name":"x"}"#));
    assert_eq!(a.code(), "config_source_file");
    let a = h.call("DELETE", "/v1/authkeys/web", Some(ROOT), None);
    assert_eq!(a.code(), "config_source_file");
    let a = h.call("GET", "/v1/authkeys", Some(ROOT), None);
    assert_eq!(a.json["authkeys"].as_array().unwrap().len(), 3);
}

#[test]
fn metrics_are_rendered_for_prometheus() {
    let render = zoftoken_api::install_prometheus().unwrap();
    let h = Harness::with(ApiConfig::default(), Some(render));
    h.call("GET", "/healthz", None, None);
    h.call("GET", &tok("bank", "x", ""), Some("wrong"), None);
    // The counters tell when a duress PIN was used: never public, nor for a key that is
    // limited to some services or users, nor for a non-admin key.
    for (key, status) in [(None, 401), (Some(WEB), 403), (Some(BANKADMIN), 403)] {
        let a = h.call("GET", "/metrics", key, None);
        assert_eq!(a.status, status, "{key:?}");
        assert!(!a.body.contains("zoftoken_"), "{}", a.body);
    }
    let a = h.call("GET", "/metrics", Some(ROOT), None);
    assert_eq!(a.status, 200);
    assert!(a.head.contains("content-type: text/plain"));
    assert!(
        a.body
            .contains("zoftoken_api_requests_total{op=\"healthz\",status=\"200\"}"),
        "{}",
        a.body
    );
    assert!(a
        .body
        .contains("zoftoken_api_auth_failures_total{reason=\"unknown_key\"}"));
    assert!(a.body.contains("zoftoken_tokens"));
    // Latency histograms, one per operation that had requests, with the configured buckets.
    assert!(a
        .body
        .contains("# TYPE zoftoken_api_request_seconds histogram\n"));
    assert!(
        a.body.contains(
            "zoftoken_api_request_seconds_bucket{op=\"healthz\",le=\"+Inf\"} 1\n\
             zoftoken_api_request_seconds_sum{op=\"healthz\"} "
        ),
        "{}",
        a.body
    );
    assert!(a
        .body
        .contains("zoftoken_api_request_seconds_count{op=\"healthz\"} 1\n"));
    assert!(a
        .body
        .contains("zoftoken_api_request_seconds_bucket{op=\"healthz\",le=\"60\"} 1\n"));
    // A second recorder cannot be installed.
    assert!(zoftoken_api::install_prometheus().is_err());
}

#[test]
fn slow_clients_are_cut_off() {
    let config = ApiConfig {
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        ..ApiConfig::default()
    };
    let h = Harness::with(config, None);
    // Headers never finished: the connection is closed.
    let mut s = TcpStream::connect(h.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "closed by the server"
    );
    assert!(!String::from_utf8_lossy(&buf).contains(" 200 "));
    // A body that stops coming: 408.
    let mut s = TcpStream::connect(h.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(
        format!(
            "POST {} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ROOT}\r\nContent-Length: 100\r\n\r\n{{\"code\"",
            tok("bank", "alice", "/code")
        )
        .as_bytes(),
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let a = parse_answer(&buf);
    assert_eq!((a.status, a.code()), (408, "body_timeout"));
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let h = Harness::start();
    h.enrolled_phone("alice");
    let mut s = TcpStream::connect(h.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {WEB}\r\n\r\n",
        tok("bank", "alice", "")
    );
    for _ in 0..50 {
        s.write_all(req.as_bytes()).unwrap();
        // Read one response: head, then Content-Length bytes.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap().to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["state"], "closed");
    }
}

/// Sends one request with `key` on a keep-alive connection and reads its answer: the head
/// (as sent) and the body.
fn keep_alive_call(s: &mut TcpStream, path: &str, key: &str) -> (String, Vec<u8>) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head, body)
}

#[test]
fn a_status_answer_is_exactly_these_bytes() {
    let h = Harness::start();
    h.enrolled_phone("alice");
    let mut s = TcpStream::connect(h.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let id = TokenId::derive("bank", "alice").to_hex();
    let body = format!(
        "{{\"token_id\":\"{id}\",\"kind\":\"app\",\"state\":\"closed\",\"duress\":false,\
         \"failures\":0,\"attempts_left\":3,\"last_seen_ms\":{T0}}}"
    );
    for _ in 0..3 {
        let (head, got) = keep_alive_call(&mut s, &tok("bank", "alice", ""), WEB);
        // Everything but the date's value, byte for byte.
        let date = head.find("date: ").unwrap() + "date: ".len();
        let expected = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\n\
             content-length: {}\r\ndate: ",
            body.len()
        );
        assert_eq!(&head[..date], expected);
        assert_eq!(
            head.len(),
            date + "Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n".len()
        );
        assert_eq!(String::from_utf8(got).unwrap(), body);
    }
}

#[test]
fn a_key_changed_or_revoked_stops_working_on_an_open_connection() {
    let h = Harness::start();
    h.enrolled_phone("alice");
    let mut s = TcpStream::connect(h.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let path = tok("bank", "alice", "");
    let status = |s: &mut TcpStream, key: &str| {
        let (head, body) = keep_alive_call(s, &path, key);
        let code = serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"]
            .as_str()
            .map(str::to_owned);
        (head[9..12].to_owned(), code)
    };
    let config = |name: &str, secret: &str, service_mask: &str| AuthkeyConfig {
        name: name.into(),
        secret_hash: hash_secret(secret),
        admin: false,
        service_mask: service_mask.into(),
        user_mask: ".*".into(),
    };
    assert_eq!(status(&mut s, WEB), ("200".into(), None));
    assert_eq!(status(&mut s, WEB), ("200".into(), None));
    // A narrower mask applies at the connection's next request.
    h.engine
        .reload_authkeys(&[config("web", WEB, "shop"), config("root", ROOT, ".*")])
        .unwrap();
    assert_eq!(
        status(&mut s, WEB),
        ("403".into(), Some("forbidden".into()))
    );
    // Another key on the same connection is its own.
    assert_eq!(status(&mut s, ROOT), ("200".into(), None));
    assert_eq!(
        status(&mut s, "web-secret-012345678"),
        ("401".into(), Some("unknown_authkey".into()))
    );
    // A revoked key stops working at once, on a connection where it worked.
    h.engine
        .reload_authkeys(&[config("web", WEB, "bank"), config("root", ROOT, ".*")])
        .unwrap();
    assert_eq!(status(&mut s, WEB), ("200".into(), None));
    h.engine
        .reload_authkeys(&[config("root", ROOT, ".*")])
        .unwrap();
    assert_eq!(
        status(&mut s, WEB),
        ("401".into(), Some("unknown_authkey".into()))
    );
    assert_eq!(status(&mut s, ROOT), ("200".into(), None));
}

#[test]
fn hostile_input_never_stops_the_server() {
    let h = Harness::start();
    h.enrolled_phone("alice");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pieces = [
        "/",
        "v1",
        "services",
        "bank",
        "tokens",
        "alice",
        "state",
        "code",
        "offline",
        "challenge",
        "response",
        "backup-codes",
        "verify",
        "transactions",
        "%",
        "%FF",
        "%2F",
        "..",
        "?",
        "&",
        "wait=",
        "state=",
        "=",
        "\u{0}",
        "é",
        "details",
        "authkeys",
        "00000000000000000000000000000000",
    ];
    let methods = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "G\u{1}T", "",
    ];
    let bodies = [
        "",
        "{",
        "}",
        "null",
        "[]",
        "{\"code\":",
        "{\"state\":\"open\"}",
        "{\"code\":\"\u{0}\"}",
        "{\"kind\":\"totp\"}",
        "{\"length\":99999999999999999999}",
        "{\"message\":\"m\",\"timeout_s\":18446744073709551615}",
        "\u{feff}{}",
        "{\"count\":-1}",
    ];
    for i in 0..400u64 {
        let mut path = String::new();
        for _ in 0..(next() % 8) {
            path.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            if next() % 2 == 0 {
                path.push('/');
            }
        }
        let method = methods[(next() % methods.len() as u64) as usize];
        let body = bodies[(next() % bodies.len() as u64) as usize];
        let key = [Some(ROOT), Some(WEB), None][(next() % 3) as usize];
        let mut req = format!("{method} /{path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
        if let Some(k) = key {
            req.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        let mut bytes = req.into_bytes();
        if i % 5 == 0 {
            // Raw garbage, sometimes after a valid start.
            let n = (next() % 300) as usize;
            let cut = (next() as usize) % bytes.len();
            bytes.truncate(cut);
            bytes.extend((0..n).map(|_| next() as u8));
        }
        let mut s = TcpStream::connect(h.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let a = parse_answer(&out);
        // (HEAD answers carry no body.)
        if a.status >= 400 && !a.body.is_empty() && a.head.contains("application/json") {
            assert!(a.json["error"]["code"].is_string(), "{}", a.body);
        }
        assert_ne!(a.status, 500, "request {i}: {}", a.body);
    }
    let a = h.call("GET", "/healthz", None, None);
    assert_eq!(a.status, 200);
    // (Past any failed-authentication limit the garbage may have earned.)
    h.advance(zoftoken_api::AUTH_WINDOW_MS);
    let a = h.call("GET", &tok("bank", "alice", ""), Some(WEB), None);
    assert_eq!(a.status, 200);
}

#[test]
fn shutdown_answers_long_polls_and_stops_listening() {
    let mut h = Harness::start();
    h.enrolled_phone("alice");
    let addr = h.addr();
    let path = format!("{}?wait=60", tok("bank", "alice", ""));
    let poll = std::thread::spawn(move || call(addr, "GET", &path, Some(WEB), None));
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.engine.waiters() == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    h.server.take().unwrap().shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "bounded shutdown"
    );
    let a = poll.join().unwrap();
    assert_eq!((a.status, a.json["state"].as_str()), (200, Some("closed")));
    assert!(TcpStream::connect(addr).is_err(), "no longer listening");
}

#[test]
fn nothing_is_confirmed_when_the_commit_fails() {
    // A store whose writes fail on demand (a full disk).
    let kv = Arc::new(zoftoken_storage_conformance::FaultyKv::new(Arc::new(
        MemoryKv::new(),
    )));
    let h = Harness::with_kv(ApiConfig::default(), None, kv.clone());
    h.enrolled_phone("alice");
    kv.set_failing(true);
    let a = h.call("POST", &tok("bank", "dave", ""), Some(ROOT), None);
    assert_eq!((a.status, a.code()), (503, "storage_unavailable"));
    assert!(a.json.get("deeplink").is_none() && !a.body.contains("zoftoken://"));
    // The enrollment that was not written does not exist.
    let a = h.call("GET", &tok("bank", "dave", ""), Some(WEB), None);
    assert_eq!((a.status, a.code()), (404, "unknown_token"));
    let a = h.call(
        "PUT",
        &tok("bank", "alice", "/state"),
        Some(ROOT),
        Some(r#"{"state":"blocked"}"#),
    );
    assert_eq!((a.status, a.code()), (503, "storage_unavailable"));
    // The change that was not written is not visible: alice is what the store holds.
    let a = h.call("GET", &tok("bank", "alice", ""), Some(WEB), None);
    assert_eq!((a.status, a.json["state"].as_str()), (200, Some("closed")));
    // While the store cannot write, changes are refused at once, and the server says so.
    let a = h.call(
        "PUT",
        &tok("bank", "alice", "/state"),
        Some(ROOT),
        Some(r#"{"state":"blocked"}"#),
    );
    assert_eq!((a.status, a.code()), (503, "storage_unavailable"));
    assert!(
        a.head.to_ascii_lowercase().contains("retry-after: 1"),
        "{}",
        a.head
    );
    let a = h.call("GET", "/readyz", None, None);
    assert_eq!((a.status, a.code()), (503, "storage_unavailable"));
    let a = h.call(
        "POST",
        &tok("bank", "alice", "/backup-codes"),
        Some(ROOT),
        None,
    );
    assert_eq!((a.status, a.code()), (503, "storage_unavailable"));
    assert!(a.json.get("codes").is_none());
    // Reads go on.
    let a = h.call("GET", &tok("bank", "alice", ""), Some(WEB), None);
    assert_eq!(a.status, 200);
    // The disk recovers: the next change (a second later: the database is tried once a
    // second at most) finds out by itself, and is written.
    kv.set_failing(false);
    h.advance(1_000);
    let a = h.call(
        "PUT",
        &tok("bank", "alice", "/state"),
        Some(ROOT),
        Some(r#"{"state":"blocked"}"#),
    );
    assert_eq!((a.status, a.json["state"].as_str()), (200, Some("blocked")));
    assert_eq!(h.call("GET", "/readyz", None, None).status, 200);
    let a = h.call("GET", &tok("bank", "alice", ""), Some(WEB), None);
    assert_eq!(a.json["state"].as_str(), Some("blocked"));
}

#[test]
fn a_multi_threaded_runtime_serves_concurrent_clients() {
    let config = ApiConfig {
        threads: 2,
        ..ApiConfig::default()
    };
    let h = Harness::with(config, None);
    h.enrolled_phone("alice");
    let addr = h.addr();
    let path = tok("bank", "alice", "");
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|_| call(addr, "GET", &path, Some(WEB), None).json["state"].clone())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for c in clients {
        let states = c.join().unwrap();
        assert_eq!(states.len(), 25);
        assert!(states.iter().all(|s| s == "closed"));
    }
    let zero = ApiConfig {
        threads: 0,
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ApiConfig::default()
    };
    let clock: Clock = Arc::new(|| T0);
    let err = ApiServer::start(zero, h.engine.clone(), h.store.clone(), None, clock).unwrap_err();
    assert!(matches!(err, zoftoken_api::ApiError::Config(_)), "{err}");
}

#[test]
fn duress_is_reported_to_the_client_asset() {
    let h = Harness::start();
    let a = h.call("POST", &tok("bank", "erin", ""), Some(ROOT), None);
    let link = Deeplink::parse(a.json["deeplink"].as_str().unwrap()).unwrap();
    let (mut phone, duress) = h.pair_with_duress(Pairing::from_deeplink(&link), true);
    // A one-time code made with the duress PIN is accepted and reported as duress.
    let code = phone.token.one_time_code(&duress, h.now()).unwrap();
    let a = h.call(
        "POST",
        &tok("bank", "erin", "/code"),
        Some(WEB),
        Some(&json!({ "code": code }).to_string()),
    );
    assert_eq!(
        a.json,
        json!({"accepted": true, "duress": true, "blocked": false})
    );
    // The status names the last duress use, whatever the operation, even with nothing open.
    let a = h.call("GET", &tok("bank", "erin", ""), Some(WEB), None);
    assert_eq!(
        (a.json["state"].as_str(), a.json["duress"].as_bool()),
        (Some("closed"), Some(false))
    );
    assert_eq!(
        a.json["last_duress"],
        json!({"time_ms": h.now(), "operation": "one_time_code"})
    );
    // A coerced PIN change changes nothing, and is reported the same way.
    h.advance(5_000);
    let new = PinVerifier::derive("97531", &phone.token.token_id()).unwrap();
    let r = h.send(
        &mut phone,
        Request::ChangePin {
            current: &duress,
            new: &new,
            new_duress: None,
        },
    );
    assert_eq!(r.status().status, zoftoken_proto::ReplyStatus::Ok);
    let a = h.call("GET", &tok("bank", "erin", ""), Some(WEB), None);
    assert_eq!(
        a.json["last_duress"],
        json!({"time_ms": h.now(), "operation": "change_pin"})
    );
    // Opened with the duress PIN: the status says so.
    h.send(&mut phone, Request::Open(&duress));
    let a = h.call("GET", &tok("bank", "erin", ""), Some(WEB), None);
    assert_eq!(
        (a.json["state"].as_str(), a.json["duress"].as_bool()),
        (Some("open"), Some(true))
    );
    assert_eq!(a.json["last_duress"]["operation"], "open");
    let pin = phone.pin.clone();
    h.send(&mut phone, Request::Open(&pin));
    let a = h.call("GET", &tok("bank", "erin", ""), Some(WEB), None);
    assert_eq!(a.json["duress"], false);
    assert_eq!(a.json["last_duress"]["operation"], "open", "kept");
    // A token that never saw a duress use has none.
    h.enrolled_phone("frank");
    let a = h.call("GET", &tok("bank", "frank", ""), Some(WEB), None);
    assert!(a.json.get("last_duress").is_none(), "{}", a.body);
}

// ---------------------------------------------------------------------------------------
// Webhook dead letters, with the real pipeline delivering to a receiver on loopback.

/// A webhook receiver: answers each request with the current `status` (and closes the
/// connection), recording `(webhook-id, status answered)`.
struct Hook {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    log: Arc<Mutex<Vec<(String, u16)>>>,
    stop: Arc<AtomicBool>,
}

impl Hook {
    fn start(status: u16) -> Hook {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hook = Hook {
            addr,
            status: Arc::new(AtomicU16::new(status)),
            log: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (status, log, stop) = (hook.status.clone(), hook.log.clone(), hook.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (status, log) = (status.clone(), log.clone());
                        std::thread::spawn(move || hook_answer(s, &status, &log));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        hook
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn log(&self) -> Vec<(String, u16)> {
        self.log.lock().unwrap().clone()
    }

    /// How many requests carried `id` and were answered `status`.
    fn count(&self, id: &str, status: u16) -> usize {
        self.log()
            .iter()
            .filter(|(i, s)| i == id && *s == status)
            .count()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn hook_answer(mut s: TcpStream, status: &AtomicU16, log: &Mutex<Vec<(String, u16)>>) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    let length: usize = header("content-length:").parse().unwrap_or(0);
    while buf.len() < head_end + length {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body: Value = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap();
    assert!(body["type"].is_string(), "a webhook body: {body}");
    let code = status.load(Ordering::SeqCst);
    log.lock().unwrap().push((header("webhook-id:"), code));
    let _ = s.write_all(
        format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    );
}

/// Three attempts 100 ms apart, then a dead letter.
fn short_schedule() -> zoftoken_webhooks::PipelineConfig {
    zoftoken_webhooks::PipelineConfig {
        // Retried for 200 ms: the last retry falls at the bound.
        retry_delays: vec![Duration::from_millis(100)],
        retry_for: Duration::from_millis(200),
        jitter_percent: 0,
        poll_interval: Duration::from_millis(50),
        attempt_timeout: Duration::from_secs(5),
        ..zoftoken_webhooks::PipelineConfig::default()
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

const DEAD: &str = "/v1/webhooks/dead-letters";

impl Harness {
    /// The dead letters' ids as the API lists them.
    fn dead_ids(&self) -> Vec<String> {
        let a = self.call("GET", DEAD, Some(ROOT), None);
        assert_eq!(a.status, 200, "{}", a.body);
        a.json["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

#[test]
fn dead_letters_are_listed_replayed_and_deleted_by_unrestricted_admins() {
    let hook = Hook::start(500);
    let h = Harness::with_webhook(&hook.url());
    let pipeline =
        zoftoken_webhooks::Pipeline::start(short_schedule(), h.store.clone(), h.engine.clone())
            .unwrap();
    // Three enrollments: three `enrolled` events, each tried three times, all answered 500.
    let users = ["ana", "bob", "cy"];
    for u in users {
        let a = h.call("POST", &tok("bank", u, ""), Some(ROOT), None);
        assert_eq!(a.status, 201, "{}", a.body);
    }
    wait_until("three dead letters", || h.dead_ids().len() == 3);
    let a = h.call("GET", DEAD, Some(ROOT), None);
    let list = a.json["dead_letters"].as_array().unwrap().clone();
    let ids = h.dead_ids();
    for (d, u) in list.iter().zip(users) {
        assert_eq!(d["type"], "enrolled", "{d}");
        assert_eq!(d["service"], "bank");
        assert_eq!(d["username"], u, "oldest first");
        assert_eq!(
            d["token_id"].as_str().unwrap(),
            hex::encode(TokenId::derive("bank", u).0)
        );
        assert_eq!(d["attempts"], 3);
        assert_eq!(d["last_status"], 500);
        assert!(d["dead_at_ms"].as_u64().unwrap() > 0);
        assert!(d["last_error"].is_string());
    }
    for id in &ids {
        assert!(id.starts_with("msg_"), "{id}");
        assert_eq!(hook.count(id, 500), 3, "{id}: the whole schedule was tried");
    }

    // ?limit
    let a = h.call("GET", &format!("{DEAD}?limit=2"), Some(ROOT), None);
    assert_eq!(a.status, 200);
    let two: Vec<&str> = a.json["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(two, [ids[0].as_str(), ids[1].as_str()]);
    let a = h.call("GET", &format!("{DEAD}?limit=5000"), Some(ROOT), None);
    assert_eq!(
        a.json["dead_letters"].as_array().unwrap().len(),
        3,
        "capped"
    );
    for q in ["limit=0", "limit=x", "limit=-1", "wait=1"] {
        let a = h.call("GET", &format!("{DEAD}?{q}"), Some(ROOT), None);
        assert_eq!((a.status, a.code()), (400, "invalid_query"), "{q}");
    }

    // Only unrestricted admin keys; a refused call changes nothing.
    let routes = [
        ("GET", DEAD.to_owned()),
        ("POST", format!("{DEAD}/replay")),
        ("POST", format!("{DEAD}/{}/replay", ids[0])),
        ("DELETE", format!("{DEAD}/{}", ids[0])),
        ("GET", "/v1/webhooks/disabled".to_owned()),
    ];
    for (m, p) in &routes {
        let a = h.call(m, p, None, None);
        assert_eq!((a.status, a.code()), (401, "missing_authkey"), "{m} {p}");
        assert!(a.head.contains("www-authenticate: bearer"));
        for key in [WEB, BANKADMIN] {
            let a = h.call(m, p, Some(key), None);
            assert_eq!((a.status, a.code()), (403, "forbidden"), "{m} {p}");
        }
    }
    let a = h.call(
        "DELETE",
        &format!("{DEAD}/{}", ids[0]),
        Some("not-a-key"),
        None,
    );
    assert_eq!((a.status, a.code()), (401, "unknown_authkey"));
    assert_eq!(
        zoftoken_webhooks::dead_letters(&h.store, 10).unwrap().len(),
        3
    );
    assert!(
        h.store.replays(10).unwrap().is_empty(),
        "nothing was replayed"
    );

    // Wrong methods.
    let a = h.call("GET", &format!("{DEAD}/replay"), Some(ROOT), None);
    assert_eq!((a.status, a.code()), (405, "method_not_allowed"));
    assert!(a.head.contains("allow: post"), "{}", a.head);
    let a = h.call("DELETE", DEAD, Some(ROOT), None);
    assert_eq!(a.status, 405);
    let a = h.call("GET", &format!("{DEAD}/{}", ids[0]), Some(ROOT), None);
    assert_eq!(a.status, 405);

    // The receiver recovers; replay one: delivered with its id, then no longer dead.
    hook.set(204);
    let a = h.call(
        "POST",
        &format!("{DEAD}/{}/replay", ids[0]),
        Some(ROOT),
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json, json!({ "replayed": true }));
    wait_until("the replay delivered", || hook.count(&ids[0], 204) == 1);
    wait_until("the replay acknowledged", || h.dead_ids() == ids[1..]);
    assert_eq!(hook.count(&ids[1], 204) + hook.count(&ids[2], 204), 0);

    // Unknown and malformed ids.
    for id in ["msg_00000000000000ff0000", "nonsense", "replay%2Fx"] {
        let a = h.call("POST", &format!("{DEAD}/{id}/replay"), Some(ROOT), None);
        assert_eq!((a.status, a.code()), (404, "unknown_dead_letter"), "{id}");
        let a = h.call("DELETE", &format!("{DEAD}/{id}"), Some(ROOT), None);
        assert_eq!((a.status, a.code()), (404, "unknown_dead_letter"), "{id}");
    }
    // The replayed one is gone too.
    let a = h.call(
        "POST",
        &format!("{DEAD}/{}/replay", ids[0]),
        Some(ROOT),
        None,
    );
    assert_eq!((a.status, a.code()), (404, "unknown_dead_letter"));

    // Delete one for good: gone from the list, never delivered, a second delete is 404.
    let a = h.call("DELETE", &format!("{DEAD}/{}", ids[1]), Some(ROOT), None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json, json!({ "deleted": true }));
    assert_eq!(h.dead_ids(), ids[2..]);
    let a = h.call("DELETE", &format!("{DEAD}/{}", ids[1]), Some(ROOT), None);
    assert_eq!((a.status, a.code()), (404, "unknown_dead_letter"));
    let a = h.call(
        "POST",
        &format!("{DEAD}/{}/replay", ids[1]),
        Some(ROOT),
        None,
    );
    assert_eq!((a.status, a.code()), (404, "unknown_dead_letter"));

    // Replay all: the remaining one is delivered; then there is nothing left to replay.
    let a = h.call("POST", &format!("{DEAD}/replay"), Some(ROOT), None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json, json!({ "replayed": 1 }));
    wait_until("the last replay delivered", || {
        hook.count(&ids[2], 204) == 1
    });
    wait_until("no dead letters left", || h.dead_ids().is_empty());
    let a = h.call("POST", &format!("{DEAD}/replay"), Some(ROOT), None);
    assert_eq!(a.json, json!({ "replayed": 0 }));
    assert_eq!(
        hook.count(&ids[1], 204),
        0,
        "the deleted one was never delivered"
    );
    assert_eq!(hook.count(&ids[0], 204), 1, "each replay delivered once");
    pipeline.shutdown();
}

#[test]
fn endpoints_disabled_by_gone_are_listed_and_a_replay_re_enables_them() {
    let hook = Hook::start(410);
    let h = Harness::with_webhook(&hook.url());
    let pipeline =
        zoftoken_webhooks::Pipeline::start(short_schedule(), h.store.clone(), h.engine.clone())
            .unwrap();
    let a = h.call("GET", "/v1/webhooks/disabled", Some(ROOT), None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json, json!({ "disabled": [] }));
    let a = h.call("POST", &tok("bank", "ana", ""), Some(ROOT), None);
    assert_eq!(a.status, 201);
    wait_until("a dead letter", || h.dead_ids().len() == 1);
    let a = h.call("GET", "/v1/webhooks/disabled", Some(ROOT), None);
    assert_eq!(a.status, 200);
    let disabled = a.json["disabled"].as_array().unwrap();
    assert_eq!(disabled.len(), 1, "{}", a.body);
    assert_eq!(disabled[0]["service"], "bank");
    assert_eq!(disabled[0]["url"], hook.url());
    assert_eq!(disabled[0]["status"], 410);
    assert!(disabled[0]["at_ms"].as_u64().unwrap() > 0);
    let a = h.call("GET", DEAD, Some(ROOT), None);
    assert_eq!(a.json["dead_letters"][0]["last_status"], 410);
    assert_eq!(
        a.json["dead_letters"][0]["attempts"], 1,
        "no retries after a 410"
    );
    let id = h.dead_ids().remove(0);
    assert_eq!(hook.log().len(), 1);

    hook.set(200);
    let a = h.call("POST", &format!("{DEAD}/{id}/replay"), Some(ROOT), None);
    assert_eq!(a.json, json!({ "replayed": true }));
    wait_until("the replay delivered", || hook.count(&id, 200) == 1);
    wait_until("re-enabled", || {
        h.call("GET", "/v1/webhooks/disabled", Some(ROOT), None)
            .json
            == json!({ "disabled": [] })
    });
    wait_until("no dead letters left", || h.dead_ids().is_empty());
    pipeline.shutdown();
}

#[test]
fn no_output_that_shows_a_service_contains_a_webhook_secret() {
    let config = ApiConfig {
        config_source_database: true,
        ..ApiConfig::default()
    };
    let h = Harness::with(config, None);
    let secrets = [
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "previous-signing-secret",
        "plain-shared-token",
    ];
    let svc = json!({
        "name": "shop",
        "endpoints": [ENDPOINT],
        "webhook": {
            "url": "https://hooks.example/x",
            "secret": secrets[0],
            "previous_secret": secrets[1],
            "shared_token": secrets[2],
        },
    });
    let mut shown = Vec::new();
    let a = h.call("POST", "/v1/services", Some(ROOT), Some(&svc.to_string()));
    assert_eq!(a.status, 201, "{}", a.body);
    shown.push(a.body);
    let got = h.call("GET", "/v1/services/shop", Some(ROOT), None);
    assert_eq!(got.status, 200);
    shown.push(got.body.clone());
    let a = h.call("GET", "/v1/services", Some(ROOT), None);
    assert_eq!(a.status, 200);
    shown.push(a.body);
    // Written back as read: every redacted value keeps the stored one.
    let a = h.call("PUT", "/v1/services/shop", Some(ROOT), Some(&got.body));
    assert_eq!(a.status, 200, "{}", a.body);
    shown.push(a.body);
    for body in &shown {
        for s in secrets {
            assert!(!body.contains(s), "{body} shows a secret");
        }
        assert!(body.contains("<redacted>"), "{body}");
    }
    let stored = h.store.services().unwrap();
    let w = stored
        .iter()
        .find(|d| d.name == "shop")
        .and_then(|d| d.webhook.clone())
        .unwrap();
    assert_eq!(
        (
            w.secret.as_str(),
            w.previous_secret.as_deref(),
            w.shared_token.as_deref()
        ),
        (secrets[0], Some(secrets[1]), Some(secrets[2]))
    );
    // `<redacted>` standing for nothing stored is refused, not stored.
    let mut v: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    v["name"] = json!("new");
    let a = h.call("POST", "/v1/services", Some(ROOT), Some(&v.to_string()));
    assert_eq!((a.status, a.code()), (400, "invalid_service"));
    // Debug forms redact too.
    let debug = format!("{stored:?}");
    for s in secrets {
        assert!(!debug.contains(s), "{debug}");
    }
}

#[test]
fn webhook_ca_files_and_plain_http_are_refused_through_the_api() {
    let config = ApiConfig {
        config_source_database: true,
        ..ApiConfig::default()
    };
    let h = Harness::with(config, None);
    let svc = |webhook: serde_json::Value| {
        json!({ "name": "shop", "endpoints": [ENDPOINT], "webhook": webhook }).to_string()
    };
    let a = h.call(
        "POST",
        "/v1/services",
        Some(ROOT),
        Some(&svc(json!({
            "url": "https://hooks.example/x", "secret": "s", "ca_file": "/dev/zero"
        }))),
    );
    assert_eq!((a.status, a.code()), (400, "webhook_ca_file_refused"));
    assert!(h.store.services().unwrap().iter().all(|d| d.name != "shop"));
    let a = h.call(
        "POST",
        "/v1/services",
        Some(ROOT),
        Some(&svc(
            json!({ "url": "http://hooks.example/x", "secret": "s" }),
        )),
    );
    assert_eq!((a.status, a.code()), (400, "invalid_service"));
    assert!(a.body.contains("allow_insecure_http"), "{}", a.body);
    // Loopback, or an explicit opt-in, is accepted.
    let a = h.call(
        "POST",
        "/v1/services",
        Some(ROOT),
        Some(&svc(
            json!({ "url": "http://127.0.0.1:9/x", "secret": "s" }),
        )),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = h.call(
        "PUT",
        "/v1/services/shop",
        Some(ROOT),
        Some(&svc(json!({
            "url": "http://hooks.example/x", "secret": "s", "allow_insecure_http": true
        }))),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = h.call(
        "PUT",
        "/v1/services/shop",
        Some(ROOT),
        Some(&svc(json!({
            "url": "https://hooks.example/x", "secret": "s", "ca_file": "/etc/passwd"
        }))),
    );
    assert_eq!((a.status, a.code()), (400, "webhook_ca_file_refused"));
}

#[test]
fn transaction_messages_are_limited_in_bytes_and_challenge_lengths_to_multiples_of_four() {
    let h = Harness::start();
    let _p = h.enrolled_phone("tina");
    let tx = tok("bank", "tina", "/transactions");
    // 100 two-byte characters: 200 bytes, accepted; 101: 202 bytes (101 characters), refused.
    let fits = json!({ "message": "é".repeat(100) }).to_string();
    let a = h.call("POST", &tx, Some(ROOT), Some(&fits));
    assert_eq!(a.status, 201, "{}", a.body);
    let long = json!({ "message": "é".repeat(101) }).to_string();
    let a = h.call("POST", &tx, Some(ROOT), Some(&long));
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str()),
        (400, Some("invalid_input")),
        "{}",
        a.body
    );
    assert!(a.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("200 bytes"));
    // The OpenAPI document says the same: bytes, not characters.
    let doc: Value = serde_json::from_str(zoftoken_api::OPENAPI_JSON).unwrap();
    let post = &doc["paths"]["/v1/services/{service}/tokens/{username}/transactions"]["post"];
    let message =
        &post["requestBody"]["content"]["application/json"]["schema"]["properties"]["message"];
    assert_eq!(message["x-max-bytes"], 200, "{message}");
    assert!(message["description"].as_str().unwrap().contains("bytes"));
    // Validation codes: 4 to 32 symbols in multiples of 4, in the document and the server.
    let post = &doc["paths"]["/v1/services/{service}/tokens/{username}/offline/challenge"]["post"];
    let length =
        &post["requestBody"]["content"]["application/json"]["schema"]["properties"]["length"];
    assert_eq!(
        (
            &length["minimum"],
            &length["maximum"],
            &length["multipleOf"]
        ),
        (&json!(4), &json!(32), &json!(4))
    );
    let challenge = tok("bank", "tina", "/offline/challenge");
    for n in 0..=40 {
        let a = h.call(
            "POST",
            &challenge,
            Some(ROOT),
            Some(&json!({ "length": n }).to_string()),
        );
        if (4..=32).contains(&n) && n % 4 == 0 {
            assert_eq!(a.status, 200, "{n}: {}", a.body);
            let code = a.json["code"].as_str().unwrap();
            assert_eq!(code.replace('-', "").len(), n, "{code}");
        } else {
            assert_eq!(
                (a.status, a.json["error"]["code"].as_str()),
                (400, Some("invalid_input")),
                "{n}: {}",
                a.body
            );
        }
    }
}

#[test]
fn a_pending_enrollments_link_and_qr_code_are_shown_again_until_it_is_used_or_expires() {
    let h = Harness::start();
    let a = h.call("POST", &tok("bank", "eve", ""), Some(ROOT), None);
    assert_eq!(a.status, 201, "{}", a.body);
    let deeplink = a.json["deeplink"].as_str().unwrap().to_owned();
    let again = tok("bank", "eve", "/enrollment");
    let a = h.call("GET", &format!("{again}?qr=png"), Some(ROOT), None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json["deeplink"], deeplink.as_str());
    assert_eq!(
        a.json["token_id"],
        hex::encode(TokenId::derive("bank", "eve").0)
    );
    assert!(
        a.json.get("manual_code").is_none(),
        "the manual code is handed out once"
    );
    assert!(a.json["qr_png_base64"].as_str().unwrap().len() > 100);
    assert!(a.head.contains("cache-control: no-store"), "{}", a.head);
    // A key without the admin right, a user never enrolled, an unknown service.
    let a = h.call("GET", &again, Some(WEB), None);
    assert_eq!((a.status, a.code()), (403, "forbidden"));
    let a = h.call(
        "GET",
        &tok("bank", "nobody", "/enrollment"),
        Some(ROOT),
        None,
    );
    assert_eq!((a.status, a.code()), (404, "no_enrollment"));
    let a = h.call("GET", &tok("nope", "eve", "/enrollment"), Some(ROOT), None);
    assert_eq!(a.status, 404, "{}", a.body);
    // Once its app has paired, the link is gone.
    h.pair(Pairing::from_deeplink(&Deeplink::parse(&deeplink).unwrap()));
    let a = h.call("GET", &again, Some(ROOT), None);
    assert_eq!((a.status, a.code()), (404, "no_enrollment"));
    // An enrollment past its expiry is not shown.
    let a = h.call("POST", &tok("bank", "fay", ""), Some(ROOT), None);
    assert_eq!(a.status, 201, "{}", a.body);
    let expires = a.json["expires_ms"].as_u64().unwrap();
    let a = h.call("GET", &tok("bank", "fay", "/enrollment"), Some(ROOT), None);
    assert_eq!(a.json["expires_ms"], expires);
    let now = h.now.load(Ordering::SeqCst);
    h.advance(expires - now);
    let a = h.call("GET", &tok("bank", "fay", "/enrollment"), Some(ROOT), None);
    assert_eq!((a.status, a.code()), (404, "no_enrollment"));
}

#[test]
fn many_users_enrolled_in_one_call_each_answered_with_the_keys_masks_per_user() {
    let h = Harness::with(
        ApiConfig {
            config_source_database: true,
            ..ApiConfig::default()
        },
        None,
    );
    // An admin key for the users of `bank` whose names start with `a`.
    let created = h.call(
        "POST",
        "/v1/authkeys",
        Some(ROOT),
        Some(r#"{"name":"agents","admin":true,"service_mask":"bank","user_mask":"a.*"}"#),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let agents = created.json["secret"].as_str().unwrap().to_owned();
    let mut alice = h.enrolled_phone("alice");
    let batch = "/v1/services/bank/tokens";
    let body = json!({
        "usernames": ["alice", "anna", "bob", "a\u{7}b", "anna"],
        "if_absent": true,
    })
    .to_string();
    let a = h.call("POST", batch, Some(&agents), Some(&body));
    assert_eq!(a.status, 200, "{}", a.body);
    let r = a.json["results"].as_array().unwrap();
    let each: Vec<(&str, &str, &str)> = r
        .iter()
        .map(|x| {
            (
                x["username"].as_str().unwrap(),
                x["status"].as_str().unwrap(),
                x["existing"]
                    .as_str()
                    .or(x["error"]["code"].as_str())
                    .unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        each,
        [
            ("alice", "skipped", "paired"),
            ("anna", "enrolled", ""),
            ("bob", "failed", "forbidden"),
            ("a\u{7}b", "failed", "invalid_input"),
            ("anna", "failed", "invalid_input"),
        ]
    );
    assert_eq!(
        (&a.json["enrolled"], &a.json["skipped"], &a.json["failed"]),
        (&json!(1), &json!(1), &json!(3))
    );
    // Alice's app still works; Anna's deeplink pairs; Bob has nothing.
    let pin = alice.pin.clone();
    let opened = h.send(&mut alice, Request::Open(&pin));
    assert_eq!(opened.status().state, zoftoken_proto::WireState::Open);
    assert_eq!(
        r[1]["token_id"],
        hex::encode(TokenId::derive("bank", "anna").0)
    );
    let link = Deeplink::parse(r[1]["deeplink"].as_str().unwrap()).unwrap();
    h.pair(Pairing::from_deeplink(&link));
    let a = h.call("GET", &tok("bank", "bob", ""), Some(ROOT), None);
    assert_eq!(a.status, 404, "{}", a.body);
    // The whole call: a key without the admin right, another service, a wrong body.
    let a = h.call("POST", batch, Some(WEB), Some(&body));
    assert_eq!((a.status, a.code()), (403, "forbidden"));
    let a = h.call(
        "POST",
        &format!("/v1/services/{}/tokens", enc(UTF8_SERVICE)),
        Some(&agents),
        Some(&body),
    );
    assert_eq!((a.status, a.code()), (403, "forbidden"));
    let a = h.call("POST", "/v1/services/nope/tokens", Some(ROOT), Some(&body));
    assert_eq!(a.status, 404, "{}", a.body);
    let a = h.call("POST", batch, Some(ROOT), Some(r#"{"users":["x"]}"#));
    assert_eq!(a.status, 400, "{}", a.body);
    // QR images only when asked for, in the formats asked for.
    let one = json!({ "usernames": ["amy"] }).to_string();
    let a = h.call("POST", &format!("{batch}?qr=svg"), Some(ROOT), Some(&one));
    let amy = &a.json["results"][0];
    assert!(amy["qr_svg"].as_str().unwrap().starts_with("<svg"), "{amy}");
    assert!(amy.get("qr_png_base64").is_none(), "{amy}");
    let a = h.call("POST", &tok("bank", "ben", ""), Some(ROOT), None);
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(a.json.get("qr_png_base64").is_none() && a.json.get("qr_svg").is_none());
    let a = h.call(
        "POST",
        &format!("{}?qr=gif", tok("bank", "cy", "")),
        Some(ROOT),
        None,
    );
    assert_eq!((a.status, a.code()), (400, "invalid_query"));
    // JSON lines in, JSON lines out: a username as a string or an object per line, blank
    // lines skipped, one result per username in order; `if_absent` as a query parameter.
    let lines_call = |lines: &str| {
        raw(
            h.addr(),
            format!(
                "POST {batch}?if_absent=true HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
                 Authorization: Bearer {ROOT}\r\nContent-Type: application/x-ndjson\r\n\
                 Content-Length: {}\r\n\r\n{lines}",
                lines.len()
            )
            .as_bytes(),
        )
    };
    let a = lines_call("\"cat\"\n\n{\"username\":\"alice\"}\n\"b\\u0007\"\n");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.head.contains("content-type: application/x-ndjson"),
        "{}",
        a.head
    );
    let each: Vec<Value> = a
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let statuses: Vec<(&str, &str)> = each
        .iter()
        .map(|x| {
            (
                x["username"].as_str().unwrap(),
                x["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("cat", "enrolled"),
            ("alice", "skipped"),
            ("b\u{7}", "failed")
        ]
    );
    assert!(each[0]["deeplink"]
        .as_str()
        .unwrap()
        .starts_with("zoftoken://"));
    let a = lines_call("\"dan\"\n[1]\n");
    assert_eq!((a.status, a.code()), (400, "invalid_json"));
    assert!(a.body.contains("line 2"), "{}", a.body);
    let a = h.call("GET", &tok("bank", "dan", ""), Some(ROOT), None);
    assert_eq!(a.status, 404, "nothing of a refused batch is enrolled");
    // More users than a batch takes: the call is refused whole.
    let names: Vec<String> = (0..=zoftoken_admin::MAX_BATCH_ENROLLMENT)
        .map(|i| format!("u{i}"))
        .collect();
    let many = json!({ "usernames": names }).to_string();
    let a = h.call("POST", batch, Some(ROOT), Some(&many));
    assert_eq!((a.status, a.code()), (400, "batch_too_large"));
    let a = h.call("GET", &tok("bank", "u0", ""), Some(ROOT), None);
    assert_eq!(a.status, 404);
}
