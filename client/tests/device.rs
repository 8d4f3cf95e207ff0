//! End-to-end tests of the device commands against an in-process UDP server running the real
//! engine (no storage).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use zoftoken_client::{
    run, ClientError, DeviceArgs, DeviceCmd, DeviceOptions, ListPins, ReaderPins, Report,
    TransportConfig,
};
use zoftoken_engine::{
    Batch, Engine, EngineConfig, EnrollmentTicket, OfflineOutcome, ServiceConfig, TokenState,
};
use zoftoken_proto::{TokenId, TxState};
use zoftoken_testkit::{commit_in_memory as commit, now_ms, Responder};

/// A port with nothing behind it (ICMP port unreachable).
fn dead_endpoint() -> String {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().to_string()
}

/// The in-process server: the engine behind a UDP socket on 127.0.0.1 (no storage).
struct Server {
    engine: Arc<Engine>,
    addr: SocketAddr,
    responder: Responder,
    /// A socket that receives and never answers (kept open for the test's duration).
    blackhole: UdpSocket,
    dead: String,
}

impl Server {
    fn start() -> Server {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let live = addr.to_string();
        let blackhole = UdpSocket::bind("127.0.0.1:0").unwrap();
        let hole = blackhole.local_addr().unwrap().to_string();
        let dead = dead_endpoint();
        let bank = ServiceConfig::new("bank", &[&live]);
        let failover = ServiceConfig::new("failover", &[&dead, &live]);
        let slow = ServiceConfig::new("slow", &[&hole, &live]);
        let gone = ServiceConfig::new("gone", &[&dead, &hole]);
        let mut strict = ServiceConfig::new("strict", &[&live]);
        strict.duress_allowed = false;
        let engine = Arc::new(
            Engine::new(EngineConfig::new(
                vec![bank, failover, slow, gone, strict],
                7,
                [3; 32],
            ))
            .unwrap(),
        );
        let responder = Responder::engine_on(socket, engine.clone(), |_| true);
        Server {
            engine,
            addr,
            responder,
            blackhole,
            dead,
        }
    }

    fn enroll(&self, service: &str, user: &str) -> EnrollmentTicket {
        let mut batch = Batch::new();
        let t = self
            .engine
            .enroll(now_ms(), service, user, &mut batch)
            .unwrap();
        commit(&self.engine, &mut batch);
        t
    }

    fn state(&self, id: &TokenId) -> zoftoken_engine::TokenStatus {
        self.engine.status_by_id(now_ms(), id).unwrap()
    }
}

struct Device {
    _dir: tempfile::TempDir,
    opts: DeviceOptions,
}

impl Device {
    fn new() -> Device {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = DeviceOptions::new(dir.path().join("device.json"));
        opts.json = true;
        opts.transport = TransportConfig {
            timeout: Duration::from_millis(300),
            random_start: false,
            ..TransportConfig::default()
        };
        Device { _dir: dir, opts }
    }

    fn path(&self) -> PathBuf {
        self.opts.state.clone()
    }

    fn run(&self, cmd: DeviceCmd, pins: &[&str]) -> Result<Report, ClientError> {
        let mut pins = ListPins::new(pins.iter().copied());
        let mut out = Vec::new();
        let r = run(&cmd, &self.opts, &mut pins, &mut out);
        if let Ok(report) = &r {
            // The JSON line written is the report's.
            let text = String::from_utf8(out).unwrap();
            let last: serde_json::Value =
                serde_json::from_str(text.lines().last().unwrap()).unwrap();
            assert_eq!(&last, &report.json);
            assert!(
                !shows(&text, "2468") && !shows(&text, "1357"),
                "PIN printed"
            );
        }
        r
    }

    fn pair(&self, ticket: &EnrollmentTicket) -> Report {
        self.run(pair_cmd(&ticket.deeplink, false), &["2468", "2468"])
            .unwrap()
    }
}

fn pair_cmd(code: &str, duress: bool) -> DeviceCmd {
    DeviceCmd::Pair {
        code: code.to_owned(),
        service: None,
        endpoints: Vec::new(),
        duress,
        force: false,
    }
}

/// Whether `text` shows `pin` as a value of its own: not merely four digits inside a hex or
/// base64 string (random keys and ids contain any digit sequence now and then), but with no
/// letter or digit on either side.
fn shows(text: &str, pin: &str) -> bool {
    let bytes = text.as_bytes();
    text.match_indices(pin).any(|(at, _)| {
        let before = at.checked_sub(1).and_then(|i| bytes.get(i));
        let after = bytes.get(at + pin.len());
        !before.is_some_and(u8::is_ascii_alphanumeric)
            && !after.is_some_and(u8::is_ascii_alphanumeric)
    })
}

#[test]
fn a_pin_is_shown_only_as_a_value_of_its_own() {
    assert!(shows(r#"{"pin":"2468"}"#, "2468"));
    assert!(shows(r#"{"pin":2468,"x":1}"#, "2468"));
    assert!(shows("2468", "2468"));
    assert!(!shows(
        r#"{"key":"9f2468ab","id":"24680","t":"a2468"}"#,
        "2468"
    ));
}

fn open() -> DeviceCmd {
    DeviceCmd::Open { duress: false }
}

#[test]
fn pair_by_deeplink_then_open_status_close() {
    let server = Server::start();
    let ticket = server.enroll("bank", "alice");
    let dev = Device::new();
    assert_eq!(server.state(&ticket.token_id).state, TokenState::Pending);

    let r = dev.pair(&ticket);
    assert_eq!(r.json["token_id"], ticket.token_id.to_hex());
    assert_eq!(r.json["duress_pin"], false);
    assert_eq!(server.state(&ticket.token_id).state, TokenState::Closed);
    let mode = std::fs::metadata(dev.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(dev.path()).unwrap();
    assert!(!shows(&text, "2468"), "PIN stored");

    let r = dev.run(open(), &["2468"]).unwrap();
    assert_eq!(r.json["state"], "open");
    let st = server.state(&ticket.token_id);
    assert_eq!((st.state, st.duress), (TokenState::Open, false));
    assert!(st.open_until_ms.unwrap() > now_ms() + 500_000);
    assert!(st.last_seen_ms.is_some());

    let r = dev.run(DeviceCmd::Status, &[]).unwrap();
    assert_eq!(r.json["state"], "open");
    assert_eq!(r.json["attempts_left"], 3);
    assert!(r.human.starts_with("bank: open, closes in "), "{}", r.human);

    let r = dev.run(DeviceCmd::Close, &[]).unwrap();
    assert_eq!(r.json["state"], "closed");
    assert_eq!(server.state(&ticket.token_id).state, TokenState::Closed);

    // Pairing again over the same state file is refused without --force.
    let again = dev.run(pair_cmd(&ticket.deeplink, false), &["2468", "2468"]);
    let e = again.unwrap_err();
    assert!(matches!(e, ClientError::AlreadyPaired(_)), "{e}");
    assert_eq!(e.exit_code(), 2);
    // No lock file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dev.path().parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(leftovers, vec!["device.json".to_owned()]);
}

#[test]
fn pair_by_manual_code_with_pins_from_a_reader() {
    let server = Server::start();
    let ticket = server.enroll("bank", "bob");
    let dev = Device::new();
    // A manual code needs the service and an endpoint.
    let e = dev
        .run(
            DeviceCmd::Pair {
                code: ticket.manual_code.clone(),
                service: None,
                endpoints: vec![server.addr.to_string()],
                duress: false,
                force: false,
            },
            &["2468", "2468"],
        )
        .unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e}");
    let e = dev
        .run(
            DeviceCmd::Pair {
                code: ticket.manual_code.clone(),
                service: Some("bank".into()),
                endpoints: vec![],
                duress: false,
                force: false,
            },
            &["2468", "2468"],
        )
        .unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e}");

    let cmd = DeviceCmd::Pair {
        code: ticket.manual_code.clone(),
        service: Some("bank".into()),
        endpoints: vec![server.addr.to_string()],
        duress: false,
        force: false,
    };
    let mut pins = ReaderPins::new(std::io::Cursor::new(b"2468\n2468\n".to_vec()));
    let mut out = Vec::new();
    let r = run(&cmd, &dev.opts, &mut pins, &mut out).unwrap();
    assert_eq!(r.json["token_id"], ticket.token_id.to_hex());
    assert_eq!(server.state(&ticket.token_id).state, TokenState::Closed);

    let mut pins = ReaderPins::new(std::io::Cursor::new(b"2468\r\n".to_vec()));
    run(&open(), &dev.opts, &mut pins, &mut Vec::new()).unwrap();
    assert_eq!(server.state(&ticket.token_id).state, TokenState::Open);
}

#[test]
fn mismatched_new_pins_are_refused_and_nothing_is_saved() {
    let server = Server::start();
    let ticket = server.enroll("bank", "carol");
    let dev = Device::new();
    let e = dev
        .run(pair_cmd(&ticket.deeplink, false), &["2468", "2469"])
        .unwrap_err();
    assert!(matches!(e, ClientError::BadInput(_)), "{e}");
    assert!(!dev.path().exists());
    assert_eq!(server.state(&ticket.token_id).state, TokenState::Pending);
    let e = dev.run(DeviceCmd::Status, &[]).unwrap_err();
    assert!(matches!(e, ClientError::NotPaired(_)), "{e}");
    assert_eq!(e.exit_code(), 4);
}

#[test]
fn a_pin_outside_ascii_is_refused_before_anything_is_sent() {
    let server = Server::start();
    let ticket = server.enroll("bank", "erin");
    let dev = Device::new();
    // "é" precomposed and decomposed: the same PIN to a user, other bytes to the protocol.
    for pin in ["12\u{e9}4", "12e\u{301}4"] {
        let e = dev
            .run(pair_cmd(&ticket.deeplink, false), &[pin, pin])
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::BadInput(m) if m.contains("ASCII")),
            "{e}"
        );
        assert!(!dev.path().exists());
    }
    assert_eq!(server.state(&ticket.token_id).state, TokenState::Pending);
    dev.run(pair_cmd(&ticket.deeplink, false), &["2468", "2468"])
        .unwrap();
    let e = dev.run(open(), &["24\u{e9}8"]).unwrap_err();
    assert!(matches!(&e, ClientError::BadInput(_)), "{e}");
    assert_eq!(
        server.state(&ticket.token_id).failures,
        0,
        "nothing was sent"
    );
}

#[test]
fn three_wrong_pins_block_the_token() {
    let server = Server::start();
    let ticket = server.enroll("bank", "dave");
    let dev = Device::new();
    dev.pair(&ticket);
    for left in [2u8, 1] {
        let e = dev.run(open(), &["0000"]).unwrap_err();
        assert!(
            matches!(e, ClientError::WrongPin { attempts_left } if attempts_left == left),
            "{e}"
        );
        assert_eq!(e.exit_code(), 1);
        assert_eq!(server.state(&ticket.token_id).failures, 3 - left);
    }
    let e = dev.run(open(), &["0000"]).unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Blocked | ClientError::WrongPin { attempts_left: 0 }
        ),
        "{e}"
    );
    assert_eq!(server.state(&ticket.token_id).state, TokenState::Blocked);
    let e = dev.run(open(), &["2468"]).unwrap_err();
    assert!(matches!(e, ClientError::Blocked), "{e}");
    assert_eq!(server.state(&ticket.token_id).state, TokenState::Blocked);
    let r = dev.run(DeviceCmd::Status, &[]).unwrap();
    assert_eq!(r.json["state"], "blocked");
}

#[test]
fn duress_pin_opens_with_duress() {
    let server = Server::start();
    let ticket = server.enroll("bank", "erin");
    let dev = Device::new();
    let r = dev
        .run(
            pair_cmd(&ticket.deeplink, true),
            &["2468", "2468", "1357", "1357"],
        )
        .unwrap();
    assert_eq!(r.json["duress_pin"], true);
    let normal = Device::new();
    let r = dev
        .run(DeviceCmd::Open { duress: true }, &["1357"])
        .unwrap();
    assert_eq!(r.json["state"], "open");
    let st = server.state(&ticket.token_id);
    assert_eq!((st.state, st.duress), (TokenState::Open, true));
    drop(normal);

    // A service without duress refuses --duress before asking for any PIN.
    let strict = server.enroll("strict", "erin");
    let dev2 = Device::new();
    let e = dev2
        .run(
            pair_cmd(&strict.deeplink, true),
            &["2468", "2468", "1357", "1357"],
        )
        .unwrap_err();
    assert!(matches!(e, ClientError::BadInput(_)), "{e}");
}

#[test]
fn one_time_code_is_accepted_by_the_engine() {
    let server = Server::start();
    let ticket = server.enroll("bank", "frank");
    let dev = Device::new();
    dev.pair(&ticket);
    let r = dev
        .run(DeviceCmd::Code { duress: false }, &["2468"])
        .unwrap();
    let code = r.json["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 6);
    let mut batch = Batch::new();
    let outcome = server
        .engine
        .validate_code(now_ms(), &ticket.token_id, &code, &mut batch)
        .unwrap();
    assert_eq!(outcome, OfflineOutcome::Accepted { duress: false });
    // Never twice.
    let again = server
        .engine
        .validate_code(now_ms(), &ticket.token_id, &code, &mut batch)
        .unwrap();
    assert_ne!(again, OfflineOutcome::Accepted { duress: false });
}

#[test]
fn offline_response_opens_the_token() {
    let server = Server::start();
    let ticket = server.enroll("bank", "grace");
    let dev = Device::new();
    dev.pair(&ticket);
    let mut batch = Batch::new();
    let challenge = server
        .engine
        .offline_challenge(now_ms(), &ticket.token_id, 8, &mut batch)
        .unwrap();
    commit(&server.engine, &mut batch);
    let r = dev
        .run(
            DeviceCmd::Offline {
                validation_code: challenge,
                duress: false,
            },
            &["2468"],
        )
        .unwrap();
    let response = r.json["response"].as_str().unwrap().to_owned();
    assert!(r.human.contains(&response));
    let mut batch = Batch::new();
    let outcome = server
        .engine
        .offline_response(now_ms(), &ticket.token_id, &response, &mut batch)
        .unwrap();
    commit(&server.engine, &mut batch);
    assert_eq!(outcome, OfflineOutcome::Accepted { duress: false });
    assert_eq!(server.state(&ticket.token_id).state, TokenState::Open);
}

#[test]
fn transactions_are_shown_approved_and_denied() {
    let server = Server::start();
    let ticket = server.enroll("bank", "heidi");
    let dev = Device::new();
    dev.pair(&ticket);
    let create = |msg: &str| {
        let mut batch = Batch::new();
        let tx = server
            .engine
            .create_transaction(now_ms(), &ticket.token_id, msg, 60_000, &mut batch)
            .unwrap();
        commit(&server.engine, &mut batch);
        tx
    };
    let tx_state = |tx: &[u8; 16]| server.engine.transaction(now_ms(), tx).unwrap().state;

    let r = dev
        .run(
            DeviceCmd::Watch {
                interval: 0,
                once: true,
                count: None,
            },
            &[],
        )
        .unwrap();
    assert!(r.json["pending"].is_null());

    let tx1 = create("Pay 10 EUR?");
    let r = dev
        .run(
            DeviceCmd::Watch {
                interval: 0,
                once: false,
                count: Some(2),
            },
            &[],
        )
        .unwrap();
    assert_eq!(r.json["pending"]["tx_id"], hex::encode(tx1));
    assert_eq!(r.json["pending"]["message"], "Pay 10 EUR?");
    assert!(r.human.contains("Pay 10 EUR?"));
    assert!(server.state(&ticket.token_id).last_seen_ms.is_some());

    let r = dev
        .run(
            DeviceCmd::Approve {
                transaction: hex::encode(tx1),
                duress: false,
            },
            &["2468"],
        )
        .unwrap();
    assert_eq!(r.json["tx_state"], "approved");
    assert_eq!(tx_state(&tx1), TxState::Approved);

    let tx2 = create("Log in?");
    let r = dev
        .run(
            DeviceCmd::Deny {
                transaction: hex::encode(tx2),
            },
            &[],
        )
        .unwrap();
    assert_eq!(r.json["tx_state"], "denied");
    assert_eq!(tx_state(&tx2), TxState::Denied);

    // Deciding it again: no such pending transaction.
    let e = dev
        .run(
            DeviceCmd::Deny {
                transaction: hex::encode(tx2),
            },
            &[],
        )
        .unwrap_err();
    assert!(matches!(e, ClientError::NoTransaction), "{e}");
    assert_eq!(e.exit_code(), 4);
    let e = dev
        .run(
            DeviceCmd::Deny {
                transaction: "xyz".into(),
            },
            &[],
        )
        .unwrap_err();
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn failover_past_a_closed_port_and_a_silent_endpoint() {
    let server = Server::start();
    // First endpoint: a closed port (refused at once).
    let ticket = server.enroll("failover", "ivan");
    let dev = Device::new();
    dev.pair(&ticket);
    dev.run(open(), &["2468"]).unwrap();
    assert_eq!(server.state(&ticket.token_id).state, TokenState::Open);

    // First endpoint: a socket that never answers (the attempt times out).
    let ticket = server.enroll("slow", "ivan");
    let dev = Device::new();
    let before = std::time::Instant::now();
    dev.pair(&ticket);
    // Two round trips, each first timing out on the silent endpoint.
    assert!(before.elapsed() >= Duration::from_millis(600));
    let mut buf = [0u8; 1500];
    server
        .blackhole
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(
        server.blackhole.recv(&mut buf).is_ok(),
        "the silent endpoint got the first attempt"
    );
    dev.run(DeviceCmd::Close, &[]).unwrap();
    assert_eq!(server.state(&ticket.token_id).state, TokenState::Closed);
    assert!(server.responder.received() >= 3);
}

#[test]
fn no_endpoint_answering_names_every_endpoint() {
    let server = Server::start();
    let ticket = server.enroll("gone", "judy");
    let mut dev = Device::new();
    dev.opts.transport.timeout = Duration::from_millis(100);
    dev.opts.transport.attempts = 2;
    let e = dev
        .run(pair_cmd(&ticket.deeplink, false), &["2468", "2468"])
        .unwrap_err();
    let ClientError::NoAnswer { tried } = &e else {
        panic!("{e}");
    };
    assert_eq!(tried.len(), 2);
    let hole = server.blackhole.local_addr().unwrap().to_string();
    let msg = e.to_string();
    assert!(msg.contains(&server.dead), "{msg}");
    assert!(msg.contains(&hole), "{msg}");
    assert_eq!(e.exit_code(), 1);
    assert_eq!(e.to_json()["exit_code"], 1);
    assert!(!dev.path().exists());
}

#[test]
fn state_file_permissions_and_corruption_are_refused() {
    let server = Server::start();
    let ticket = server.enroll("bank", "ken");
    let dev = Device::new();
    dev.pair(&ticket);
    let path = dev.path();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = dev.run(DeviceCmd::Status, &[]).unwrap_err();
    assert!(
        matches!(e, ClientError::Permissions { mode: 0o644, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("chmod 600"));
    assert_eq!(e.exit_code(), 1);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(matches!(
        dev.run(DeviceCmd::Code { duress: false }, &["2468"]),
        Err(ClientError::Permissions { .. })
    ));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    dev.run(DeviceCmd::Status, &[]).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    std::fs::write(&path, b"{not json").unwrap();
    let e = dev.run(DeviceCmd::Status, &[]).unwrap_err();
    assert!(matches!(e, ClientError::StateFile { .. }), "{e}");
}

/// Every attempt of a PIN request is written to the state file, with its new counter and
/// without the PIN key it uses, before it leaves: a retransmission never reuses either.
#[test]
fn every_attempt_takes_a_new_pin_key_saved_before_it_is_sent() {
    let server = Server::start();
    let ticket = server.enroll("bank", "pina");
    let mut dev = Device::new();
    dev.pair(&ticket);
    let path = dev.path();
    let saved = || zoftoken_device::Token::from_bytes(&std::fs::read(&path).unwrap()).unwrap();
    let paired = saved();
    // One PAIR_COMPLETE took PIN key 0.
    assert_eq!(paired.pin_keys_left(), (1 << 24) - 1);
    dev.run(open(), &["2468"]).unwrap();
    let opened = saved();
    assert_eq!(opened.pin_keys_left(), paired.pin_keys_left() - 1);
    assert_eq!(opened.next_counter(), paired.next_counter() + 1);
    // STATUS takes no PIN key.
    dev.run(DeviceCmd::Status, &[]).unwrap();
    assert_eq!(saved().pin_keys_left(), opened.pin_keys_left());

    // Now the only endpoint never answers: three attempts, each a new request.
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path()).unwrap()).unwrap();
    let hole = server.blackhole.local_addr().unwrap().to_string();
    state["service"]["endpoints"] = serde_json::json!([hole]);
    std::fs::write(dev.path(), serde_json::to_vec(&state).unwrap()).unwrap();
    dev.opts.transport.timeout = Duration::from_millis(50);
    dev.opts.transport.max_timeout = Duration::from_millis(50);
    dev.opts.transport.attempts = 3;
    let before = saved();
    let e = dev.run(open(), &["2468"]).unwrap_err();
    assert!(matches!(e, ClientError::NoAnswer { .. }), "{e}");
    let after = saved();
    assert_eq!(after.pin_keys_left(), before.pin_keys_left() - 3);
    assert_eq!(after.next_counter(), before.next_counter() + 3);
    // The datagrams on the wire: three OPENs with three counters.
    server
        .blackhole
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut counters = Vec::new();
    let mut buf = [0u8; 1500];
    while let Ok(n) = server.blackhole.recv(&mut buf) {
        assert_eq!(n, 80, "an OPEN datagram");
        counters.push(u64::from_be_bytes(buf[24..32].try_into().unwrap()));
    }
    let expected: Vec<u64> = (before.next_counter()..after.next_counter()).collect();
    assert_eq!(counters, expected);
}

#[test]
fn a_state_file_from_before_pin_keys_says_to_pair_again() {
    let dev = Device::new();
    let old = serde_json::json!({
        "version": 1,
        "token_id": "00112233445566778899aabbccddeeff",
        "secret": "11".repeat(32),
        "next_counter": 5,
        "service": {
            "name": "bank", "endpoints": ["127.0.0.1:9"], "details_url": null,
            "otp_length": 6, "otp_period_s": 30, "otp_alphabet": 0, "window_s": 600,
            "duress_allowed": true
        }
    });
    std::fs::write(dev.path(), serde_json::to_vec(&old).unwrap()).unwrap();
    std::fs::set_permissions(dev.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    for cmd in [open(), DeviceCmd::Status] {
        let e = dev.run(cmd, &["2468"]).unwrap_err();
        assert!(matches!(e, ClientError::PairAgain(_)), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("pair again"), "{msg}");
        assert!(msg.contains("device.json"), "{msg}");
        assert_eq!(e.exit_code(), 4);
    }
    // The file is left as it was.
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path()).unwrap()).unwrap();
    assert_eq!(kept, old);
}

#[test]
fn a_held_lock_refuses_a_second_process() {
    let dev = Device::new();
    let store = zoftoken_client::FileStore::new(dev.path());
    let lock = store.lock().unwrap();
    let e = dev.run(DeviceCmd::Status, &[]).unwrap_err();
    assert!(matches!(e, ClientError::Locked { .. }), "{e}");
    drop(lock);
    let e = dev.run(DeviceCmd::Status, &[]).unwrap_err();
    assert!(matches!(e, ClientError::NotPaired(_)), "{e}");
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    device: DeviceArgs,
}

#[test]
fn the_command_line_parses() {
    let cli = Cli::try_parse_from([
        "zoftoken",
        "--state",
        "/tmp/x.json",
        "--timeout-ms",
        "250",
        "watch",
        "--count",
        "3",
    ])
    .unwrap();
    assert_eq!(
        cli.device.cmd,
        DeviceCmd::Watch {
            interval: 30,
            once: false,
            count: Some(3)
        }
    );
    let opts = cli.device.options().unwrap();
    assert_eq!(opts.state, PathBuf::from("/tmp/x.json"));
    assert!(
        !opts.json,
        "JSON output is the embedding binary's global --json"
    );
    assert_eq!(opts.transport.timeout, Duration::from_millis(250));
    let cli = Cli::try_parse_from([
        "zoftoken",
        "pair",
        "ABCD-EFGH",
        "--service",
        "bank",
        "--endpoint",
        "a:1",
        "--endpoint",
        "b:2",
        "--duress",
    ])
    .unwrap();
    assert!(
        matches!(cli.device.cmd, DeviceCmd::Pair { ref endpoints, duress: true, .. } if endpoints.len() == 2)
    );
    assert!(Cli::try_parse_from(["zoftoken", "watch", "--once", "--count", "2"]).is_err());
}

/// `zoftoken device` as the server binary embeds it: a subcommand of a parser whose own
/// global option is `--json`.
#[derive(Parser)]
struct Embedded {
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: EmbeddedCmd,
}

#[derive(clap::Subcommand)]
enum EmbeddedCmd {
    Device(DeviceArgs),
}

#[test]
fn options_for_every_command_may_follow_the_command() {
    for args in [
        // Before the command, as always.
        &[
            "zoftoken",
            "device",
            "--pin-stdin",
            "--state",
            "/tmp/x.json",
            "--timeout-ms",
            "250",
            "--attempts",
            "2",
            "--json",
            "open",
        ][..],
        // After it.
        &[
            "zoftoken",
            "device",
            "open",
            "--pin-stdin",
            "--state",
            "/tmp/x.json",
            "--timeout-ms",
            "250",
            "--attempts",
            "2",
            "--json",
        ],
        // Mixed, with the command's own option.
        &[
            "zoftoken",
            "--json",
            "device",
            "--state",
            "/tmp/x.json",
            "open",
            "--duress",
            "--pin-stdin",
            "--attempts=2",
            "--timeout-ms=250",
        ],
    ] {
        let cli = Embedded::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let EmbeddedCmd::Device(device) = cli.command;
        assert!(cli.json, "{args:?}");
        assert!(device.pin_stdin, "{args:?}");
        assert!(matches!(device.cmd, DeviceCmd::Open { .. }), "{args:?}");
        let opts = device.options().unwrap();
        assert_eq!(opts.state, PathBuf::from("/tmp/x.json"), "{args:?}");
        assert_eq!(opts.transport.timeout, Duration::from_millis(250));
        assert_eq!(opts.transport.attempts, 2);
    }
    // A command's own option stays its own.
    assert!(Embedded::try_parse_from(["zoftoken", "device", "--duress", "open"]).is_err());
}
