//! `zoftoken serve` with its HTTP API and webhook pipeline, end to end with real processes:
//! an enrollment through the API that `zoftoken device` pairs, a status long poll woken by
//! the device's open; the device's duress PIN, one-time code, offline response and
//! transaction decisions, each checked through the API; and webhooks that were not delivered
//! when the server was killed with `kill -9` arriving after the restart (duplicates share
//! their `webhook-id`). Those three on PostgreSQL too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;
use common::{http, wait_for};

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zoftoken_storage::AuthkeyDoc;

const ADMIN_KEY: &str = "e2e-admin-key-0123456789abcdef";
const READ_KEY: &str = "e2e-read-key-0123456789abcdef";

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(webhook: Option<SocketAddr>) -> Env {
        Env::with_storage(webhook, "")
    }

    /// A server on a database of its own in the test process's PostgreSQL cluster.
    fn postgres(webhook: Option<SocketAddr>) -> Env {
        let url = zoftoken_testkit::PgCluster::shared().database();
        Env::with_storage(
            webhook,
            &format!("storage:\n  backend: postgres\n  postgres:\n    url: \"{url}\"\n"),
        )
    }

    /// A server with `storage` (YAML) added to its configuration.
    fn with_storage(webhook: Option<SocketAddr>, storage: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let udp = free_udp();
        let keys = vec![
            AuthkeyDoc::new("admin", ADMIN_KEY, true, ".*", ".*"),
            AuthkeyDoc::new("reader", READ_KEY, false, "bank", ".*"),
        ];
        let hook = webhook.map_or(String::new(), |a| {
            format!("    webhook: {{ url: \"http://{a}/hook\", secret: \"e2e-hook-secret\" }}\n")
        });
        let config = format!(
            "listen: {{ udp: [\"{udp}\"], http: \"127.0.0.1:0\" }}\ndata_dir: data\nio_threads: 1\n\
             {storage}services:\n  - name: bank\n    window: 600\n    duress_allowed: true\n    \
             endpoints: [\"{udp}\"]\n{hook}\
             authkeys:\n{}",
            serde_norway::to_string(&keys).unwrap()
        );
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        Env { dir }
    }

    fn serve(&self) -> Server {
        self.serve_with(&[])
    }

    /// `serve` with extra environment variables; its whole log is kept in `Server::log`.
    fn serve_with(&self, vars: &[(&str, &str)]) -> Server {
        let mut command = common::zoftoken(self.dir.path(), &["serve"]);
        for (k, v) in vars {
            command.env(k, v);
        }
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let first = wait_for(&mut err, "serving UDP");
        let http: SocketAddr = common::http_addr(&first);
        let log = Arc::new(Mutex::new(first));
        // Keep draining the log so that the server never blocks on a full pipe.
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while err.read_line(&mut line).is_ok_and(|n| n > 0) {
                kept.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Server { child, http, log }
    }

    fn device(&self, state: &Path, args: &[&str], pins: &str) -> (i32, String) {
        let (code, out, err) = common::device(self.dir.path(), state, args, pins);
        (code, out + &err)
    }
}

struct Server {
    child: Child,
    http: SocketAddr,
    /// Everything the server wrote on standard error so far.
    log: Arc<Mutex<String>>,
}

impl Server {
    fn stop(mut self) {
        let s = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(s.success());
        assert!(self.child.wait().unwrap().success());
    }

    /// Stops the server and returns its whole log (the reader thread has seen the end once
    /// the last line, written at exit, is there).
    fn stop_with_log(self) -> String {
        let log = self.log.clone();
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = log.lock().unwrap().clone();
            if text.contains("\"stopped\"")
                || text.contains(" stopped")
                || Instant::now() > deadline
            {
                return text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_api_enrollment_pairs_and_a_long_poll_wakes_on_the_device_open() {
    an_api_enrollment_pairs_and_a_long_poll_wakes_on_the_device_open_of(Env::new(None));
}

#[test]
fn an_api_enrollment_pairs_and_a_long_poll_wakes_on_the_device_open_on_postgres() {
    an_api_enrollment_pairs_and_a_long_poll_wakes_on_the_device_open_of(Env::postgres(None));
}

fn an_api_enrollment_pairs_and_a_long_poll_wakes_on_the_device_open_of(e: Env) {
    let server = e.serve();
    let (code, enrolled) = http(
        server.http,
        "POST",
        "/v1/services/bank/tokens/alice?qr=png,svg",
        ADMIN_KEY,
        "{}",
    );
    assert_eq!(code, 201, "{enrolled}");
    let link = enrolled["deeplink"].as_str().unwrap();
    assert!(enrolled["qr_png_base64"].is_string() && enrolled["qr_svg"].is_string());
    // A read-only key may not enroll (403), an unknown one gets 401.
    assert_eq!(
        http(
            server.http,
            "POST",
            "/v1/services/bank/tokens/bob",
            READ_KEY,
            "{}"
        )
        .0,
        403
    );
    assert_eq!(
        http(
            server.http,
            "GET",
            "/v1/services/bank/tokens/alice",
            "nope",
            ""
        )
        .0,
        401
    );

    let phone = e.dir.path().join("phone.json");
    let (code, out) = e.device(&phone, &["pair", link], "1357\n1357\n");
    assert_eq!(code, 0, "{out}");
    let (code, status) = http(
        server.http,
        "GET",
        "/v1/services/bank/tokens/alice",
        READ_KEY,
        "",
    );
    assert_eq!(
        (code, status["state"].as_str()),
        (200, Some("closed")),
        "{status}"
    );

    // A long poll, then the device opens: the poll answers with the new state at once.
    let addr = server.http;
    let poll = std::thread::spawn(move || {
        let t = Instant::now();
        let r = http(
            addr,
            "GET",
            "/v1/services/bank/tokens/alice?wait=30",
            READ_KEY,
            "",
        );
        (r, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    let (code, out) = e.device(&phone, &["open"], "1357\n");
    assert_eq!(code, 0, "{out}");
    let ((code, status), waited) = poll.join().unwrap();
    assert_eq!(
        (code, status["state"].as_str()),
        (200, Some("open")),
        "{status}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "the poll waited {waited:?}"
    );
    // /metrics is served through the installed recorder, to an unrestricted admin key only.
    let metrics = |key: Option<&str>| metrics_text(server.http, key);
    let text = metrics(Some(ADMIN_KEY));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("zoftoken_"), "{text}");
    for key in [None, Some(READ_KEY)] {
        let text = metrics(key);
        assert!(!text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(!text.contains("zoftoken_"), "{text}");
    }
    server.stop();
}

/// `GET /metrics` with `key` (if any): the whole HTTP answer.
fn metrics_text(http: SocketAddr, key: Option<&str>) -> String {
    let mut s = TcpStream::connect(http).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// `zoftoken device` as `Ok(stdout parsed as JSON)` with exit code 0, or `Err(the output)`.
fn device_json(e: &Env, state: &Path, args: &[&str], pins: &str) -> Result<Value, String> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = common::device(e.dir.path(), state, &all, pins);
    match serde_json::from_str(out.trim()) {
        Ok(v) if code == 0 => Ok(v),
        _ => Err(format!("exit {code}: {out}{err}")),
    }
}

#[test]
fn duress_codes_offline_responses_and_transactions_through_a_real_server() {
    duress_codes_offline_responses_and_transactions_through_a_real_server_of(Env::new(None));
}

#[test]
fn duress_codes_offline_responses_and_transactions_through_a_real_server_on_postgres() {
    duress_codes_offline_responses_and_transactions_through_a_real_server_of(Env::postgres(None));
}

fn duress_codes_offline_responses_and_transactions_through_a_real_server_of(e: Env) {
    let server = e.serve();
    let token = "/v1/services/bank/tokens/carol";
    let api = |method: &str, path: &str, body: &str| {
        let (code, v) = http(
            server.http,
            method,
            &format!("{token}{path}"),
            ADMIN_KEY,
            body,
        );
        assert!((200..300).contains(&code), "{method} {path}: {code} {v}");
        v
    };
    let link = api("POST", "", "{}")["deeplink"]
        .as_str()
        .unwrap()
        .to_owned();
    let phone = e.dir.path().join("carol.json");
    // PIN 2468 twice, then the duress PIN 1357 twice.
    let paired = device_json(
        &e,
        &phone,
        &["pair", "--duress", &link],
        "2468\n2468\n1357\n1357\n",
    );
    assert_eq!(paired.unwrap()["duress_pin"], true);

    // The duress PIN opens; the server sees the duress, the output does not say so.
    let opened = device_json(&e, &phone, &["open", "--duress"], "1357\n").unwrap();
    assert_eq!(opened["state"], "open", "{opened}");
    assert!(opened.get("duress").is_none(), "{opened}");
    let st = api("GET", "", "");
    assert_eq!(
        (&st["state"], &st["duress"]),
        (&json!("open"), &json!(true)),
        "{st}"
    );
    assert_eq!(
        device_json(&e, &phone, &["close"], "").unwrap()["state"],
        "closed"
    );
    assert_eq!(api("GET", "", "")["state"], "closed");

    // A one-time code made on the device (no network) is accepted once.
    let made = device_json(&e, &phone, &["code"], "2468\n").unwrap();
    let code = made["code"].as_str().unwrap();
    let body = json!({ "code": code }).to_string();
    let v = api("POST", "/code", &body);
    assert_eq!(
        (&v["accepted"], &v["duress"]),
        (&json!(true), &json!(false)),
        "{v}"
    );
    assert_eq!(
        api("POST", "/code", &body)["accepted"],
        false,
        "a code is used once"
    );

    // An offline validation code read out by an operator; the device's response opens.
    let challenge = api("POST", "/offline/challenge", "{}")["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let answered = device_json(&e, &phone, &["offline", &challenge], "2468\n").unwrap();
    let body = json!({ "response": answered["response"] }).to_string();
    assert_eq!(api("POST", "/offline/response", &body)["accepted"], true);
    assert_eq!(api("GET", "", "")["state"], "open");

    // Transactions: shown by `watch`, approved with the PIN, denied without.
    let create = |message: &str| {
        let body = json!({ "message": message }).to_string();
        api("POST", "/transactions", &body)["tx_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let tx1 = create("Pay 10 EUR?");
    let watched = device_json(&e, &phone, &["watch", "--once"], "").unwrap();
    assert_eq!(
        (&watched["pending"]["tx_id"], &watched["pending"]["message"]),
        (&json!(tx1), &json!("Pay 10 EUR?")),
        "{watched}"
    );
    let decided = device_json(&e, &phone, &["approve", &tx1], "2468\n").unwrap();
    assert_eq!(decided["tx_state"], "approved", "{decided}");
    assert_eq!(
        api("GET", &format!("/transactions/{tx1}"), "")["state"],
        "approved"
    );
    let tx2 = create("Log in?");
    let decided = device_json(&e, &phone, &["deny", &tx2], "").unwrap();
    assert_eq!(decided["tx_state"], "denied", "{decided}");
    assert_eq!(
        api("GET", &format!("/transactions/{tx2}"), "")["state"],
        "denied"
    );
    // Decided once: deciding again is refused with its own exit code.
    let again = device_json(&e, &phone, &["deny", &tx2], "").unwrap_err();
    assert!(again.starts_with("exit 4"), "{again}");
    server.stop();
}

/// A webhook receiver: answers 204 to every request (keep-alive), records each event's
/// `webhook-id`, type and username.
struct Receiver {
    got: Arc<Mutex<Vec<(String, String, String)>>>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    /// Listens on `addr` (retrying a few seconds while the port is briefly in use).
    fn start(addr: SocketAddr) -> Receiver {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("receiver bind {addr}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("receiver bind {addr}: {e}"),
            }
        };
        Receiver::on(listener)
    }

    fn on(listener: TcpListener) -> Receiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(204));
        let (g, st) = (got.clone(), status.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (g, st) = (g.clone(), st.clone());
                std::thread::spawn(move || serve_conn(conn, &g, &st));
            }
        });
        Receiver { got, status }
    }

    fn types_of(&self, user: &str) -> Vec<String> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|(_, _, u)| u == user)
            .map(|(_, t, _)| t.clone())
            .collect()
    }
}

fn serve_conn(conn: TcpStream, got: &Mutex<Vec<(String, String, String)>>, status: &AtomicU16) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut headers = HashMap::new();
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .map_or(0, |v| v.parse().unwrap());
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        got.lock().unwrap().push((
            headers.get("webhook-id").cloned().unwrap_or_default(),
            v["type"].as_str().unwrap_or("").to_owned(),
            v["username"].as_str().unwrap_or("").to_owned(),
        ));
        let answer = format!(
            "HTTP/1.1 {} X\r\nContent-Length: 0\r\n\r\n",
            status.load(Ordering::Relaxed)
        );
        if w.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn webhooks_undelivered_at_a_kill_9_arrive_after_the_restart() {
    // The receiver is down while the events happen.
    let hook = free_tcp();
    webhooks_undelivered_at_a_kill_9_arrive_after_the_restart_of(Env::new(Some(hook)), hook);
}

#[test]
fn webhooks_undelivered_at_a_kill_9_arrive_after_the_restart_on_postgres() {
    let hook = free_tcp();
    webhooks_undelivered_at_a_kill_9_arrive_after_the_restart_of(Env::postgres(Some(hook)), hook);
}

fn webhooks_undelivered_at_a_kill_9_arrive_after_the_restart_of(e: Env, hook: SocketAddr) {
    let server = e.serve();
    let users: Vec<String> = (0..5).map(|i| format!("user{i}")).collect();
    for u in &users {
        let path = format!("/v1/services/bank/tokens/{u}");
        assert_eq!(http(server.http, "POST", &path, ADMIN_KEY, "{}").0, 201);
        let (code, body) = http(
            server.http,
            "PUT",
            &format!("{path}/state"),
            ADMIN_KEY,
            "{\"state\":\"blocked\"}",
        );
        assert!(code == 200 || code == 409, "{code} {body}");
    }
    std::thread::sleep(Duration::from_millis(300));
    server.kill9();

    let receiver = Receiver::start(hook);
    let server = e.serve();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = receiver.got.lock().unwrap().clone();
        let enrolled: HashSet<&str> = got
            .iter()
            .filter(|(_, t, _)| t == "enrolled")
            .map(|(_, _, u)| u.as_str())
            .collect();
        if users.iter().all(|u| enrolled.contains(u.as_str())) {
            // Each delivery of one event carries the same id; ids are unique per event.
            let ids: HashSet<&str> = got.iter().map(|(id, _, _)| id.as_str()).collect();
            assert!(ids.iter().all(|id| !id.is_empty()));
            assert!(ids.len() >= users.len(), "{got:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered after restart: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop();
}

/// `webhook_threads: 0` pauses delivery: nothing is sent while the events happen, and the next
/// server started with a pipeline delivers every one of them.
#[test]
fn paused_webhooks_keep_their_events_for_the_next_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let receiver = Receiver::on(listener.try_clone().unwrap());
    let e = Env::new(Some(listener.local_addr().unwrap()));
    let config = e.dir.path().join("config.yaml");
    let normal = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("webhook_threads: 0\n{normal}")).unwrap();
    let server = e.serve();
    let users: Vec<String> = (0..3).map(|i| format!("user{i}")).collect();
    for u in &users {
        let path = format!("/v1/services/bank/tokens/{u}");
        assert_eq!(http(server.http, "POST", &path, ADMIN_KEY, "{}").0, 201);
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        receiver.got.lock().unwrap().is_empty(),
        "delivered while paused"
    );
    server.stop();

    std::fs::write(&config, normal).unwrap();
    let server = e.serve();
    wait_until("the paused events", || {
        users.iter().all(|u| receiver.types_of(u) == ["enrolled"])
    });
    server.stop();
}

fn cli(e: &Env, args: &[&str]) -> Value {
    let o = common::zoftoken(e.dir.path(), &[&["--json"], args].concat())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 410 Gone disables the endpoint and makes dead letters; the command line lists them and
/// the endpoint, replays them, and the restarted server delivers them with their ids.
#[test]
fn gone_makes_dead_letters_that_the_command_line_lists_and_replays() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = listener.local_addr().unwrap();
    let receiver = Receiver::on(listener);
    receiver.status.store(410, Ordering::Relaxed);
    let e = Env::new(Some(hook));
    let server = e.serve();
    let path = "/v1/services/bank/tokens/carol";
    assert_eq!(http(server.http, "POST", path, ADMIN_KEY, "{}").0, 201);
    wait_until("the 410", || !receiver.types_of("carol").is_empty());
    std::thread::sleep(Duration::from_millis(300));
    server.stop();

    let dead = cli(&e, &["webhook", "dead-letters"]);
    let letters = dead["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{dead}");
    assert_eq!(letters[0]["type"], "enrolled");
    assert_eq!(letters[0]["last_status"], 410);
    let id = letters[0]["id"].as_str().unwrap().to_owned();
    let disabled = cli(&e, &["webhook", "disabled"]);
    assert_eq!(disabled["disabled"][0]["service"], "bank", "{disabled}");
    let o = common::zoftoken(e.dir.path(), &["webhook", "replay", "msg_nonexistent"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(cli(&e, &["webhook", "replay", "--all"])["replayed"], 1);

    receiver.status.store(204, Ordering::Relaxed);
    let before = receiver.got.lock().unwrap().len();
    let server = e.serve();
    wait_until("the replayed delivery", || {
        receiver.got.lock().unwrap().len() > before
    });
    let got = receiver.got.lock().unwrap().clone();
    assert_eq!(got.last().unwrap().0, id, "a replay keeps the webhook-id");
    server.stop();
    assert!(cli(&e, &["webhook", "dead-letters"])["dead_letters"]
        .as_array()
        .unwrap()
        .is_empty());
}

/// Whether `secret` occurs in `log`. A short all-digit secret (a PIN, a code) counts only
/// where no digit touches it, so that it is not found inside a timestamp or a counter.
fn leaks(log: &str, secret: &str) -> bool {
    if secret.len() < 12 && secret.bytes().all(|b| b.is_ascii_digit()) {
        return log.match_indices(secret).any(|(at, _)| {
            let before = log[..at].bytes().next_back();
            let after = log[at + secret.len()..].bytes().next();
            !before.is_some_and(|b| b.is_ascii_digit())
                && !after.is_some_and(|b| b.is_ascii_digit())
        });
    }
    log.contains(secret) || log.contains(&secret.to_uppercase())
}

/// Every flow (enrollment of both token kinds, pairing with a duress PIN, open, close, codes,
/// offline responses, backup codes, transactions, webhooks) with the server logging at the
/// most verbose level as JSON lines: no key, PIN, verifier, code or secret appears in its log.
#[test]
fn the_most_verbose_log_holds_no_secret() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = listener.local_addr().unwrap();
    let receiver = Receiver::on(listener);
    let e = Env::new(Some(hook));
    let server = e.serve_with(&[("RUST_LOG", "trace"), ("ZOFTOKEN_LOG_FORMAT", "json")]);
    let token = "/v1/services/bank/tokens/dora";
    let api = |method: &str, path: &str, body: &str| {
        let (code, v) = http(
            server.http,
            method,
            &format!("{token}{path}"),
            ADMIN_KEY,
            body,
        );
        assert!((200..300).contains(&code), "{method} {path}: {code} {v}");
        v
    };
    let (pin, duress_pin) = ("582913", "604417");
    let mut secrets: Vec<String> = vec![
        ADMIN_KEY.into(),
        READ_KEY.into(),
        "e2e-hook-secret".into(),
        pin.into(),
        duress_pin.into(),
    ];
    let master = std::fs::read_to_string(e.dir.path().join("data/master.key")).unwrap();
    secrets.push(master.trim().to_owned());

    let enrolled = api("POST", "", "{}");
    let link = enrolled["deeplink"].as_str().unwrap().to_owned();
    secrets.push(link.clone());
    let query = link.split_once('?').map_or("", |(_, q)| q);
    secrets.extend(
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| !["service", "user", "host", "port", "v"].contains(k))
            .map(|(_, v)| v.to_owned()),
    );
    secrets.push(enrolled["manual_code"].as_str().unwrap().to_owned());
    let phone = e.dir.path().join("dora.json");
    let pins = format!("{pin}\n{pin}\n{duress_pin}\n{duress_pin}\n");
    device_json(&e, &phone, &["pair", "--duress", &link], &pins).unwrap();
    // The phone's stored keys (the token secret and its PIN key ring), as hex.
    let state = std::fs::read_to_string(&phone).unwrap();
    let mut run = String::new();
    for c in state.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            if run.len() >= 32 {
                secrets.push(run.clone());
            }
            run.clear();
        }
    }

    device_json(&e, &phone, &["open"], &format!("{pin}\n")).unwrap();
    device_json(
        &e,
        &phone,
        &["open", "--duress"],
        &format!("{duress_pin}\n"),
    )
    .unwrap();
    device_json(&e, &phone, &["close"], "").unwrap();
    let code = device_json(&e, &phone, &["code"], &format!("{pin}\n")).unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    api("POST", "/code", &json!({ "code": code }).to_string());
    secrets.push(code);
    let challenge = api("POST", "/offline/challenge", "{}")["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = device_json(&e, &phone, &["offline", &challenge], &format!("{pin}\n")).unwrap()
        ["response"]
        .as_str()
        .unwrap()
        .to_owned();
    api(
        "POST",
        "/offline/response",
        &json!({ "response": response }).to_string(),
    );
    secrets.push(challenge);
    secrets.push(response);
    let codes: Vec<String> =
        serde_json::from_value(api("POST", "/backup-codes", "{}")["codes"].clone()).unwrap();
    api(
        "POST",
        "/backup-codes/verify",
        &json!({ "code": codes[0] }).to_string(),
    );
    secrets.extend(codes);
    let message = "Pay 9731 EUR to account 44-1209-553?";
    let tx = api(
        "POST",
        "/transactions",
        &json!({ "message": message }).to_string(),
    )["tx_id"]
        .as_str()
        .unwrap()
        .to_owned();
    device_json(&e, &phone, &["approve", &tx], &format!("{pin}\n")).unwrap();
    secrets.push(message.into());
    // A TOTP token: its otpauth secret.
    let (status, totp) = http(
        server.http,
        "POST",
        "/v1/services/bank/tokens/erik",
        ADMIN_KEY,
        r#"{"kind":"totp"}"#,
    );
    assert_eq!(status, 201, "{totp}");
    secrets.push(totp["secret_base32"].as_str().unwrap().to_owned());
    secrets.push(totp["otpauth_uri"].as_str().unwrap().to_owned());
    // Webhooks were delivered (so their signing ran while logging).
    wait_until("the webhooks of the flow", || {
        receiver.types_of("dora").len() >= 5
    });

    let log = server.stop_with_log();
    // The log is the verbose one: JSON lines, debug events of the webhook deliveries.
    assert!(log.lines().all(|l| l.starts_with('{')), "{log}");
    assert!(log.contains("\"level\":\"DEBUG\""), "{log}");
    assert!(log.contains("delivery attempt"), "{log}");
    for s in secrets.iter().filter(|s| s.len() >= 6) {
        assert!(!leaks(&log, s), "the log shows a secret ({s}):\n{log}");
    }
}

/// A server on a throwaway PostgreSQL cluster (`postgres` settings `extra`, YAML lines at
/// that level), with alice enrolled through the API and paired by the device command line
/// (PIN 1357): the cluster, the environment, the server and the phone's state file.
fn alice_paired_on_postgres(
    extra: &str,
) -> (zoftoken_testkit::PgCluster, Env, Server, std::path::PathBuf) {
    let cluster = zoftoken_testkit::PgCluster::start();
    let url = cluster.database();
    let e = Env::with_storage(
        None,
        &format!("storage:\n  backend: postgres\n  postgres:\n    url: \"{url}\"\n    {extra}\n"),
    );
    let server = e.serve();
    let (code, enrolled) = http(
        server.http,
        "POST",
        "/v1/services/bank/tokens/alice",
        ADMIN_KEY,
        "{}",
    );
    assert_eq!(code, 201, "{enrolled}");
    let phone = e.dir.path().join("phone.json");
    let (code, out) = e.device(
        &phone,
        &["pair", enrolled["deeplink"].as_str().unwrap()],
        "1357\n1357\n",
    );
    assert_eq!(code, 0, "{out}");
    (cluster, e, server, phone)
}

/// PostgreSQL goes away under a running server: the API's changes are refused with `503
/// storage_unavailable` and nothing changes; a status read is answered from memory (what the
/// server last wrote; within the staleness bound, here a minute); `/readyz` says 503 from the first request that could not reach the
/// database (here a read, before the change). PostgreSQL comes back and the API changes
/// tokens again, without a restart.
#[test]
fn the_api_refuses_changes_while_postgres_is_down_and_recovers_by_itself() {
    // The environment (its temporary directory) lives to the end.
    let (mut cluster, _e, server, _phone) =
        alice_paired_on_postgres("timeout_ms: 2000\n    max_staleness_ms: 60000");
    let alice = "/v1/services/bank/tokens/alice";
    let state_of = |s: &Server| {
        let (code, v) = http(s.http, "GET", alice, READ_KEY, "");
        (code, v["state"].as_str().map(str::to_owned))
    };
    assert_eq!(state_of(&server), (200, Some("closed".into())));
    let ready = |s: &Server| http(s.http, "GET", "/readyz", ADMIN_KEY, "").0;
    assert_eq!(ready(&server), 200);

    cluster.crash();
    let (code, v) = http(
        server.http,
        "POST",
        "/v1/services/bank/tokens/bob",
        ADMIN_KEY,
        "{}",
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (503, Some("storage_unavailable")),
        "{v}"
    );
    assert_eq!(ready(&server), 503);
    // Alice's state as last written, from memory.
    assert_eq!(state_of(&server), (200, Some("closed".into())));
    let block = r#"{"state":"blocked"}"#;
    let (code, v) = http(
        server.http,
        "PUT",
        &format!("{alice}/state"),
        ADMIN_KEY,
        block,
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (503, Some("storage_unavailable")),
        "{v}"
    );
    // Refused before anything changed (the database is known down): nothing to hide.
    assert_eq!(state_of(&server), (200, Some("closed".into())));

    cluster.start_server();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready(&server) != 200 {
        assert!(Instant::now() < deadline, "no recovery");
        std::thread::sleep(Duration::from_millis(200));
    }
    // What the database holds: closed (the block was never written); then a block is.
    assert_eq!(state_of(&server), (200, Some("closed".into())));
    let (code, v) = http(
        server.http,
        "PUT",
        &format!("{alice}/state"),
        ADMIN_KEY,
        block,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(state_of(&server), (200, Some("blocked".into())));
    let (code, v) = http(
        server.http,
        "POST",
        "/v1/services/bank/tokens/bob",
        ADMIN_KEY,
        "{}",
    );
    assert_eq!(code, 201, "{v}");
    server.stop();
}

/// With PostgreSQL down, memory answers reads only within the staleness bound
/// (`max_staleness_ms`, here 4 s): at first the API's status and the app's STATUS are
/// answered from memory; once the database has not answered for longer, the API says `503`
/// and the app gets no reply (other servers or the command line may have changed the token
/// meanwhile). PostgreSQL back: both answered again, without a restart.
#[test]
fn reads_from_memory_stop_beyond_the_staleness_bound() {
    let (mut cluster, e, server, phone) =
        alice_paired_on_postgres("timeout_ms: 1000\n    max_staleness_ms: 4000");
    let alice = "/v1/services/bank/tokens/alice";
    let status = || {
        let (code, v) = http(server.http, "GET", alice, READ_KEY, "");
        (
            code,
            v["state"]
                .as_str()
                .or(v["error"]["code"].as_str())
                .map(str::to_owned),
        )
    };
    let app_status = || device_json(&e, &phone, &["status"], "");
    assert_eq!(status(), (200, Some("closed".into())));

    cluster.crash();
    let crashed = Instant::now();
    // Within the bound (the server reached the database at most a second before the crash):
    // answered from memory.
    assert_eq!(status(), (200, Some("closed".into())));
    assert!(
        crashed.elapsed() < Duration::from_millis(2500),
        "too slow to check"
    );
    std::thread::sleep(Duration::from_millis(6000).saturating_sub(crashed.elapsed()));
    assert_eq!(status(), (503, Some("storage_unavailable".into())));
    let long_poll = http(server.http, "GET", &format!("{alice}?wait=1"), READ_KEY, "");
    assert_eq!(long_poll.0, 503, "{}", long_poll.1);
    assert!(app_status().is_err(), "a STATUS answered from stale memory");
    // Counted (the metrics are exported once a second).
    let stale = || {
        metrics_text(server.http, Some(ADMIN_KEY))
            .lines()
            .find_map(|l| l.strip_prefix("zoftoken_replies_stale_withheld_total "))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while stale() < 1.0 {
        assert!(
            Instant::now() < deadline,
            "withheld STATUS replies not counted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    cluster.start_server();
    let deadline = Instant::now() + Duration::from_secs(30);
    while status().0 != 200 {
        assert!(Instant::now() < deadline, "no recovery");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status(), (200, Some("closed".into())));
    let answered = app_status().unwrap();
    assert_eq!(answered["state"], "closed", "{answered}");
    server.stop();
}

/// The rows of a mail-merge CSV, header left out.
fn mail_rows(path: &std::path::Path) -> Vec<Vec<String>> {
    csv::Reader::from_path(path)
        .unwrap()
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

/// The mail merge of the tests' three users: two enrolled, the third's name refused.
fn three_users_rows(path: &Path) -> Vec<Vec<String>> {
    let rows = mail_rows(path);
    let who: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str()))
        .collect();
    assert_eq!(
        who,
        [
            ("ana", "enrolled"),
            ("smith, john", "enrolled"),
            ("bad\u{7}name", "failed")
        ]
    );
    rows
}

/// `zoftoken token enroll --service bank --from FROM --out OUT [--if-absent] [EXTRA…]`.
fn enroll_file_args(from: &Path, out: &Path, if_absent: bool, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["token", "enroll", "--service", "bank", "--from"]
        .map(String::from)
        .to_vec();
    a.push(from.display().to_string());
    a.push("--out".into());
    a.push(out.display().to_string());
    if if_absent {
        a.push("--if-absent".into());
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Users enrolled from a file through the command line (the database of a stopped server):
/// a mail-merge CSV readable by its owner only, one row per user; run again with
/// `--if-absent`, nobody is enrolled twice; a row's deeplink pairs with the device command
/// line once the server runs, and the paired token opens. An existing mail merge is never
/// overwritten.
#[test]
fn users_enrolled_from_a_file_pair_with_the_device_command_line() {
    let e = Env::new(None);
    let users = e.dir.path().join("users.csv");
    std::fs::write(
        &users,
        "username,email\nana,a@x\n\"smith, john\",j@x\nbad\u{7}name,b@x\n",
    )
    .unwrap();
    let out = e.dir.path().join("mail.csv");
    let run = |out: &Path, if_absent: bool| {
        let a = enroll_file_args(&users, out, if_absent, &[]);
        cli(&e, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let summary = run(&out, false);
    assert_eq!(
        (
            &summary["enrolled"],
            &summary["skipped"],
            &summary["failed"]
        ),
        (&json!(2), &json!(0), &json!(1)),
        "{summary}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "deeplinks are secrets until used");
    let rows = three_users_rows(&out);
    let ana_link = rows[0][2].clone();
    assert!(ana_link.starts_with("zoftoken://"), "{ana_link}");
    // The same file again is refused, and left as it was.
    let before = std::fs::read(&out).unwrap();
    let a = enroll_file_args(&users, &out, true, &[]);
    let o = common::zoftoken(
        e.dir.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("never overwritten"));
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // Again, skipping those who have a token: ana's deeplink stays the one handed out.
    let again = run(&e.dir.path().join("mail2.csv"), true);
    assert_eq!(
        (&again["enrolled"], &again["skipped"]),
        (&json!(0), &json!(2)),
        "{again}"
    );
    let server = e.serve();
    let phone = e.dir.path().join("phone.json");
    let (code, said) = e.device(&phone, &["pair", &ana_link], "1357\n1357\n");
    assert_eq!(code, 0, "{said}");
    let opened = device_json(&e, &phone, &["open"], "1357\n").unwrap();
    assert_eq!(opened["state"], "open", "{opened}");
    server.stop();
}

/// The same through a running server's API (`--api`, the key in ZOFTOKEN_AUTHKEY; JSON lines
/// in): the rows come from the batch call's answers, a row's deeplink pairs and opens, a run
/// with `--if-absent` skips everyone, and a key without the admin right is refused with exit
/// code 2 and no file left behind.
#[test]
fn users_enrolled_from_a_file_through_a_running_servers_api_pair() {
    let e = Env::new(None);
    let users = e.dir.path().join("users.jsonl");
    std::fs::write(
        &users,
        "{\"username\":\"ana\"}\n\"smith, john\"\n\"bad\\u0007name\"\n",
    )
    .unwrap();
    let server = e.serve();
    let api = format!("http://{}", server.http);
    let run = |key: &str, out: &Path, if_absent: bool| {
        let a = enroll_file_args(&users, out, if_absent, &["--api", &api]);
        common::zoftoken(
            e.dir.path(),
            &[
                &["--json"],
                &a.iter().map(String::as_str).collect::<Vec<_>>()[..],
            ]
            .concat(),
        )
        .env("ZOFTOKEN_AUTHKEY", key)
        .output()
        .unwrap()
    };
    let out = e.dir.path().join("mail.csv");
    let o = run(ADMIN_KEY, &out, false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (&summary["enrolled"], &summary["failed"]),
        (&json!(2), &json!(1)),
        "{summary}"
    );
    let rows = three_users_rows(&out);
    assert!(rows[2][6].contains("control characters"), "{:?}", rows[2]);
    let o = run(ADMIN_KEY, &e.dir.path().join("again.csv"), true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (&again["enrolled"], &again["skipped"]),
        (&json!(0), &json!(2)),
        "{again}"
    );
    let refused = e.dir.path().join("refused.csv");
    let o = run(READ_KEY, &refused, false);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("403 forbidden"));
    assert!(!refused.exists());
    let phone = e.dir.path().join("phone.json");
    let (code, said) = e.device(&phone, &["pair", &rows[0][2]], "1357\n1357\n");
    assert_eq!(code, 0, "{said}");
    let opened = device_json(&e, &phone, &["open"], "1357\n").unwrap();
    assert_eq!(opened["state"], "open", "{opened}");
    server.stop();
}
