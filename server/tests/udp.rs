//! `zoftoken serve` on the network, end to end with a real server process and a device over
//! UDP on loopback, with both drivers: pairing, open, status, close, blocking, no reply at all
//! to a flood of hostile datagrams, every acknowledged change kept across `kill -9`, SIGHUP
//! reload, clean shutdown.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;
use common::{free_port, wait_for};

use std::io::{BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rand_core::RngCore;
use zoftoken_device::{Pairing, Reply, Request};
use zoftoken_proto::deeplink::Deeplink;
use zoftoken_proto::{PinVerifier, WireState};
use zoftoken_testkit::{now_ms, Link, PgCluster, UdpLink};

struct Env {
    dir: tempfile::TempDir,
    udp: SocketAddr,
    io: &'static str,
}

impl Env {
    fn new(io: &'static str) -> Env {
        Env::with_endpoints(io, &[])
    }

    /// A server on PostgreSQL: a database of its own in the test process's cluster.
    fn postgres(io: &'static str) -> (Env, String) {
        let url = PgCluster::shared().database();
        (Env::on_postgres(io, &url), url)
    }

    /// A server on the PostgreSQL database of connection string `url`.
    fn on_postgres(io: &'static str, url: &str) -> Env {
        let storage = format!(
            "storage:\n  backend: postgres\n  postgres:\n    url: \"{url}\"\n    timeout_ms: 2000\n"
        );
        Env::with(io, &[], &storage)
    }

    /// A server whose service hands apps `extra` endpoints before its own.
    fn with_endpoints(io: &'static str, extra: &[String]) -> Env {
        Env::with(io, extra, "")
    }

    /// As [`Env::with_endpoints`], with `storage` (YAML) added to the configuration.
    fn with(io: &'static str, extra: &[String], storage: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let udp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let endpoints: Vec<String> = extra
            .iter()
            .cloned()
            .chain([udp.to_string()])
            .map(|e| format!("\"{e}\""))
            .collect();
        let config = format!(
            "listen: {{ udp: [\"{udp}\"], http: \"127.0.0.1:0\" }}\ndata_dir: data\nio_threads: 2\n\
             {storage}services:\n  - name: bank\n    window: 600\n    endpoints: [{}]\n",
            endpoints.join(", ")
        );
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        Env { dir, udp, io }
    }

    fn cluster_execute(&self, url: &str, sql: &str) {
        PgCluster::shared().execute(url, sql);
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = common::zoftoken(self.dir.path(), args);
        c.env("ZOFTOKEN_IO", self.io);
        c
    }

    fn enroll(&self, user: &str) -> String {
        let o = self
            .cmd(&[
                "token",
                "enroll",
                "--service",
                "bank",
                "--user",
                user,
                "--json",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["deeplink"].as_str().unwrap().to_owned()
    }

    fn serve(&self) -> Server {
        let mut child = self.cmd(&["serve"]).stderr(Stdio::piped()).spawn().unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let log = wait_for(&mut err, "serving UDP");
        match self.io {
            "uring" => assert!(log.contains("(io_uring driver"), "{log}"),
            "mmsg" => assert!(log.contains("(recvmmsg driver"), "{log}"),
            _ => assert!(log.contains(" driver, "), "{log}"),
        }
        let http = common::http_addr(&log);
        Server { child, err, http }
    }
}

struct Server {
    child: Child,
    err: BufReader<ChildStderr>,
    http: SocketAddr,
}

impl Server {
    fn signal(&self, sig: &str) {
        let s = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(s.success());
    }

    /// `GET path` without a key on a new connection: the status code and the body.
    fn get(&self, path: &str) -> (u16, String) {
        use std::io::Write;
        let mut c = std::net::TcpStream::connect(self.http).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        let code = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (code, body)
    }

    /// SIGTERM, then the log until exit; asserts exit code 0.
    fn stop(mut self) -> String {
        self.signal("-TERM");
        let mut rest = String::new();
        self.err.read_to_string(&mut rest).unwrap();
        assert!(self.child.wait().unwrap().success(), "{rest}");
        rest
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failed test must not leave a server running (it holds the log pipe open).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A phone: the test kit's paired device over its UDP socket.
struct Phone {
    link: UdpLink,
    device: zoftoken_testkit::Phone,
}

impl std::ops::Deref for Phone {
    type Target = zoftoken_testkit::Phone;
    fn deref(&self) -> &zoftoken_testkit::Phone {
        &self.device
    }
}

impl std::ops::DerefMut for Phone {
    fn deref_mut(&mut self) -> &mut zoftoken_testkit::Phone {
        &mut self.device
    }
}

impl Phone {
    fn pair(server: SocketAddr, deeplink: &str, pin: &str) -> Phone {
        let mut link = UdpLink::new(server, Duration::from_secs(2));
        let pairing = Pairing::from_deeplink(&Deeplink::parse(deeplink).unwrap());
        let device = zoftoken_testkit::Phone::pair_with_pin(&mut link, pairing, pin, false);
        Phone { link, device }
    }

    /// Sends a request; the reply, or `None` when none came within 2 s.
    fn send(&mut self, req: Request<'_>) -> Option<Reply> {
        self.device.send(&mut self.link, req).ok()
    }

    fn state(&mut self) -> WireState {
        self.send(Request::Status)
            .expect("STATUS answered")
            .status()
            .state
    }

    fn open(&mut self) -> WireState {
        let pin = self.pin.clone();
        self.send(Request::Open(&pin))
            .expect("OPEN answered")
            .status()
            .state
    }
}

fn drivers() -> Vec<&'static str> {
    // This machine and CI have io_uring; ZOFTOKEN_NO_URING=1 skips it elsewhere.
    if std::env::var_os("ZOFTOKEN_NO_URING").is_some() {
        vec!["mmsg"]
    } else {
        vec!["mmsg", "uring"]
    }
}

#[test]
fn a_device_pairs_opens_and_closes_over_udp_with_both_drivers() {
    for io in drivers() {
        let e = Env::new(io);
        let link = e.enroll("alice");
        let server = e.serve();
        let mut phone = Phone::pair(e.udp, &link, "2468");
        assert_eq!(phone.state(), WireState::Closed, "{io}");
        assert_eq!(phone.open(), WireState::Open, "{io}");
        assert_eq!(phone.state(), WireState::Open, "{io}");
        let closed = phone.send(Request::Close).expect("CLOSE answered");
        assert_eq!(closed.status().state, WireState::Closed, "{io}");
        // Three wrong PINs block the token; the right PIN is then refused.
        let wrong = PinVerifier::derive("0000", &phone.token.token_id()).unwrap();
        for _ in 0..3 {
            let r = phone.send(Request::Open(&wrong)).expect("answered");
            assert_ne!(r.status().state, WireState::Open);
        }
        assert_eq!(phone.open(), WireState::Blocked, "{io}");
        let log = server.stop();
        assert!(log.contains("stopped"), "{log}");
    }
}

#[test]
fn a_device_pairs_opens_and_closes_on_postgres() {
    let (e, _) = Env::postgres("mmsg");
    let link = e.enroll("alice");
    let server = e.serve();
    let mut phone = Phone::pair(e.udp, &link, "2468");
    assert_eq!(phone.state(), WireState::Closed);
    assert_eq!(phone.open(), WireState::Open);
    let closed = phone.send(Request::Close).expect("CLOSE answered");
    assert_eq!(closed.status().state, WireState::Closed);
    let wrong = PinVerifier::derive("0000", &phone.token.token_id()).unwrap();
    for _ in 0..3 {
        let r = phone.send(Request::Open(&wrong)).expect("answered");
        assert_ne!(r.status().state, WireState::Open);
    }
    assert_eq!(phone.open(), WireState::Blocked);
    let log = server.stop();
    assert!(log.contains("stopped"), "{log}");
}

/// Another writer of the shared database (another server) changes a token behind this
/// server's back: the server's next change of that token is refused by the compare-and-set,
/// so its reply is withheld (nothing stale is acknowledged); the server reloads the token, and
/// the phone's retry is answered from what the database holds.
#[test]
fn a_change_made_behind_the_servers_back_is_never_overwritten() {
    let (e, url) = Env::postgres("mmsg");
    let link = e.enroll("alice");
    let server = e.serve();
    let mut phone = Phone::pair(e.udp, &link, "2468");
    assert_eq!(phone.open(), WireState::Open);
    // Another server blocks the token (its state record rewritten, its version bumped).
    let id = hex::encode(phone.token.token_id().0);
    let blocked = zoftoken_engine::TokenState::Blocked as u8;
    e.cluster_execute(
        &url,
        &format!(
            "UPDATE zoftoken_state SET version = version + 1, \
             v = overlay(overlay(v placing int4send((version + 1)::int4) from 2 for 4) \
             placing set_byte('\\x00'::bytea, 0, {blocked}) from 6 for 1) \
             WHERE k = '\\x{id}'"
        ),
    );
    // This server's CLOSE is refused by the database: no reply.
    assert!(
        phone.send(Request::Close).is_none(),
        "a stale change answered"
    );
    // The token was reloaded: the retry sees the other server's change.
    assert_eq!(phone.state(), WireState::Blocked);
    assert_eq!(phone.open(), WireState::Blocked);
    let (code, metrics) = server.get("/readyz");
    assert_eq!(code, 200, "a conflict is not an outage: {metrics}");
    server.stop();
}

/// PostgreSQL goes away under a running server: a change gets no reply, the changed token
/// answers nothing until it can be read back, `/readyz` says 503; PostgreSQL comes back and the
/// server serves again by itself, without a restart, with nothing unwritten visible.
#[test]
fn the_server_fails_closed_while_postgres_is_down_and_recovers_by_itself() {
    let mut cluster = PgCluster::start();
    let url = cluster.database();
    let e = Env::on_postgres("mmsg", &url);
    let link = e.enroll("alice");
    let server = e.serve();
    let mut phone = Phone::pair(e.udp, &link, "2468");
    assert_eq!(phone.open(), WireState::Open);
    assert_eq!(server.get("/readyz").0, 200);
    cluster.crash();
    assert!(
        phone.send(Request::Close).is_none(),
        "an unwritten CLOSE answered"
    );
    assert_eq!(server.get("/readyz").0, 503);
    assert!(
        phone.send(Request::Status).is_none(),
        "a token that cannot be read back answers nothing"
    );
    cluster.start_server();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.get("/readyz").0 != 200 {
        assert!(std::time::Instant::now() < deadline, "no recovery");
        std::thread::sleep(Duration::from_millis(200));
    }
    // What the database holds: open (the CLOSE was never written); then a CLOSE is written.
    assert_eq!(phone.state(), WireState::Open);
    let r = phone.send(Request::Close).expect("CLOSE answered again");
    assert_eq!(r.status().state, WireState::Closed);
    let log = server.stop();
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn hostile_datagrams_get_no_reply_and_service_goes_on() {
    for io in drivers() {
        let e = Env::new(io);
        let link = e.enroll("bob");
        let server = e.serve();
        let mut phone = Phone::pair(e.udp, &link, "1357");
        // A valid request recorded for replays, forgeries and truncations.
        let valid = phone.device.request(now_ms(), Request::Status);
        assert!(phone.link.exchange(&valid).is_ok());

        let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (seen_tx, seen_rx) = mpsc::channel();
        let listener = attacker.try_clone().unwrap();
        listener
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let watch = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut replies = 0;
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while std::time::Instant::now() < deadline {
                if listener.recv_from(&mut buf).is_ok() {
                    replies += 1;
                }
            }
            seen_tx.send(replies).unwrap();
        });
        let mut rng = rand_core::OsRng;
        for i in 0..3000 {
            let d: Vec<u8> = match i % 4 {
                // Random bytes of random length.
                0 => {
                    let mut d = vec![0u8; (rng.next_u32() % 1500) as usize];
                    rng.fill_bytes(&mut d);
                    d
                }
                // Truncated.
                1 => valid[..(rng.next_u32() as usize % valid.len())].to_vec(),
                // Forged: one bit flipped.
                2 => {
                    let mut d = valid.clone();
                    let at = rng.next_u32() as usize % d.len();
                    d[at] ^= 1 << (rng.next_u32() % 8);
                    d
                }
                // Replayed.
                _ => valid.clone(),
            };
            attacker.send_to(&d, e.udp).unwrap();
            if i % 500 == 0 {
                // Legitimate traffic is served during the flood.
                assert_eq!(phone.state(), WireState::Closed, "{io}");
            }
        }
        assert_eq!(phone.open(), WireState::Open, "{io}");
        watch.join().unwrap();
        assert_eq!(
            seen_rx.recv().unwrap(),
            0,
            "{io}: no reply to any hostile datagram"
        );
        server.stop();
    }
}

#[test]
fn acknowledged_changes_survive_kill_9() {
    acknowledged_changes_survive_kill_9_of(Env::new("auto"));
}

#[test]
fn acknowledged_changes_survive_kill_9_on_postgres() {
    acknowledged_changes_survive_kill_9_of(Env::postgres("mmsg").0);
}

fn acknowledged_changes_survive_kill_9_of(e: Env) {
    let links: Vec<String> = (0..3).map(|i| e.enroll(&format!("user{i}"))).collect();
    let server = e.serve();
    let mut phones: Vec<Phone> = links
        .iter()
        .map(|l| Phone::pair(e.udp, l, "8642"))
        .collect();
    // Acknowledged: phone 0 open, phone 1 opened then closed, phone 2 blocked.
    assert_eq!(phones[0].open(), WireState::Open);
    assert_eq!(phones[1].open(), WireState::Open);
    let r = phones[1].send(Request::Close).expect("answered");
    assert_eq!(r.status().state, WireState::Closed);
    let wrong = PinVerifier::derive("1111", &phones[2].token.token_id()).unwrap();
    for _ in 0..3 {
        phones[2].send(Request::Open(&wrong)).expect("answered");
    }
    server.kill9();
    let server = e.serve();
    assert_eq!(phones[0].state(), WireState::Open);
    assert_eq!(phones[1].state(), WireState::Closed);
    assert_eq!(phones[2].state(), WireState::Blocked);
    server.stop();
}

/// `kill -9` in the middle of a load: the load generator records, for every token, the state
/// in the server's answer to its newest answered request; after a restart the database must
/// hold exactly that state (and failure count) for every token to which no OPEN or CLOSE was
/// sent after that answer (the others may or may not have taken a later, unanswered change).
#[test]
fn every_acknowledged_change_survives_kill_9_during_a_load() {
    every_acknowledged_change_survives_kill_9_during_a_load_of(Env::new("mmsg"));
}

#[test]
fn every_acknowledged_change_survives_kill_9_during_a_load_on_postgres() {
    every_acknowledged_change_survives_kill_9_during_a_load_of(Env::postgres("mmsg").0);
}

fn every_acknowledged_change_survives_kill_9_during_a_load_of(e: Env) {
    prepare_tokens(&e);
    let server = e.serve();
    let acked = e.dir.path().join("acked.txt");
    let load = start_load(&e, &acked, None);
    std::thread::sleep(Duration::from_millis(1500));
    server.kill9();
    let summary = common::load_summary(load);
    assert!(summary["answered"].as_u64().unwrap() > 1000, "{summary}");
    assert!(
        summary["lost"].as_u64().unwrap() > 0,
        "the kill came after the load: {summary}"
    );
    // Restart: the server loads every token; then the database is read with the server stopped.
    let server = e.serve();
    server.stop();
    let (settled, seen) =
        common::assert_acknowledged_in_database(e.dir.path(), 3000, &acked, &summary);
    // The load reached tokens in every state, and most answers are settled ones.
    assert!(settled > 1000, "settled {settled}");
    for state in ["open", "closed", "blocked"] {
        assert!(seen.get(state).copied().unwrap_or(0) > 10, "{seen:?}");
    }
}

/// PostgreSQL crashes (`pg_ctl stop -m immediate`: no checkpoint, recovery from its log) and
/// comes back while a load runs, three times: after each cycle every change the server
/// acknowledged is in the database (read by the command line while the server runs), and the
/// server serves again without a restart.
#[test]
fn every_acknowledged_change_survives_crashes_of_postgres_under_load() {
    let mut cluster = PgCluster::start();
    let url = cluster.database();
    let e = Env::on_postgres("mmsg", &url);
    prepare_tokens(&e);
    let server = e.serve();
    let counters = e.dir.path().join("counters.txt");
    for cycle in 0..3 {
        let acked = e.dir.path().join(format!("acked-{cycle}.txt"));
        let load = start_load(&e, &acked, Some(&counters));
        std::thread::sleep(Duration::from_millis(1000));
        cluster.crash();
        std::thread::sleep(Duration::from_millis(500));
        cluster.start_server();
        let summary = common::load_summary(load);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while server.get("/readyz").0 != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "cycle {cycle}: no recovery"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let (settled, _) =
            common::assert_acknowledged_in_database(e.dir.path(), 3000, &acked, &summary);
        assert!(settled > 100, "cycle {cycle}: settled {settled}; {summary}");
    }
    server.stop();
}

fn prepare_tokens(e: &Env) {
    let o = e
        .cmd(&["loadgen", "prepare", "--tokens", "3000", "--seed", "7"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The load generator for 3 s at 20 000 requests/s (OPENs, CLOSEs, wrong PINs), recording in
/// `acked` the state of every token's newest answer; `counters`: continue the counters of an
/// earlier run.
fn start_load(e: &Env, acked: &std::path::Path, counters: Option<&std::path::Path>) -> Child {
    let mut args = vec![
        "--json".to_owned(),
        "loadgen".into(),
        "run".into(),
        "--endpoint".into(),
        e.udp.to_string(),
        "--tokens".into(),
        "3000".into(),
        "--seed".into(),
        "7".into(),
        "--duration".into(),
        "3".into(),
        "--rate".into(),
        "20000".into(),
        "--mix".into(),
        "20/35/30/15".into(),
        "--timeout-ms".into(),
        "300".into(),
        "--acked".into(),
        acked.to_str().unwrap().into(),
    ];
    if let Some(c) = counters {
        args.extend(["--counters".to_owned(), c.to_str().unwrap().into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    e.cmd(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn sighup_reloads_services_without_stopping() {
    let e = Env::new("auto");
    let link = e.enroll("carol");
    let mut server = e.serve();
    let mut phone = Phone::pair(e.udp, &link, "9753");
    assert_eq!(phone.open(), WireState::Open);
    // A broken edit is refused and the running configuration kept.
    let path = e.dir.path().join("config.yaml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("window: 600", "window: nonsense")).unwrap();
    server.signal("-HUP");
    wait_for(&mut server.err, "reload failed");
    assert_eq!(phone.state(), WireState::Open);
    assert_eq!(server.get("/v1/services/bank/details").0, 404);
    let edited = good.replace(
        "window: 600",
        "window: 0\n    details: { name: \"Bank of Tests\" }",
    );
    std::fs::write(&path, &edited).unwrap();
    server.signal("-HUP");
    wait_for(&mut server.err, "reloaded 1 services");
    assert_eq!(phone.state(), WireState::Open, "served throughout");
    // The app's details JSON follows the file.
    let (code, body) = server.get("/v1/services/bank/details");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Bank of Tests"), "{body}");
    // A service dropped from the file is gone: its tokens' packets go unanswered...
    std::fs::write(&path, edited.replace("name: bank", "name: shop")).unwrap();
    server.signal("-HUP");
    wait_for(&mut server.err, "reloaded 1 services");
    assert!(
        phone.send(Request::Status).is_none(),
        "answered for a removed service"
    );
    // ...until it returns.
    std::fs::write(&path, &edited).unwrap();
    server.signal("-HUP");
    wait_for(&mut server.err, "reloaded 1 services");
    assert_eq!(phone.state(), WireState::Open);
    server.stop();
}

/// Runs `zoftoken device …` with PIN lines on stdin; returns (exit code, stdout, stderr).
fn device(e: &Env, state: &std::path::Path, args: &[&str], pins: &str) -> (i32, String, String) {
    common::device(e.dir.path(), state, args, pins)
}

#[test]
fn the_device_command_line_pairs_and_fails_over_to_a_live_endpoint() {
    // The first endpoint handed to the app has nothing behind it.
    let dead = format!("127.0.0.1:{}", free_port());
    let e = Env::with_endpoints("auto", &[dead]);
    let link = e.enroll("dave");
    let server = e.serve();
    let state = e.dir.path().join("phone.json");
    let (code, out, err) = device(&e, &state, &["pair", &link], "2468\n2468\n");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("paired with bank"), "{out}");
    let (code, out, err) = device(&e, &state, &["open"], "2468\n");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("open"), "{out}");
    let (code, out, _) = device(&e, &state, &["--json", "status"], "");
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["state"],
        "open"
    );
    let (code, out, _) = device(&e, &state, &["close"], "");
    assert_eq!(code, 0);
    assert!(out.contains("closed"), "{out}");
    // The PIN never appears in the output or the state file as a value of its own (inside
    // the file's base64 the four digits occur by chance, about once in 500 files).
    let saved = std::fs::read_to_string(&state).unwrap();
    let as_a_value = |text: &str| {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=".contains(c)))
            .any(|word| word == "2468")
    };
    assert!(!as_a_value(&saved) && !as_a_value(&out), "{saved}");
    server.stop();
    // With the server gone, a clear error and exit code 1.
    let (code, _, err) = device(&e, &state, &["status"], "");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&e.udp.to_string()),
        "names the endpoints tried: {err}"
    );
}

#[test]
fn a_second_server_on_the_same_udp_port_is_refused() {
    let e = Env::new("mmsg");
    let deeplink = e.enroll("alice");
    let server = e.serve();
    // Another server of its own (its own data directory), configured with the same port.
    let other = tempfile::tempdir().unwrap();
    std::fs::copy(
        e.dir.path().join("config.yaml"),
        other.path().join("config.yaml"),
    )
    .unwrap();
    let o = common::zoftoken(other.path(), &["serve"])
        .env("ZOFTOKEN_IO", "mmsg")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("already in use by another process"), "{err}");
    assert!(err.contains(&e.udp.to_string()), "{err}");
    // The first server still answers its devices.
    let mut phone = Phone::pair(e.udp, &deeplink, "2468");
    assert_eq!(phone.open(), WireState::Open);
    server.stop();
}
