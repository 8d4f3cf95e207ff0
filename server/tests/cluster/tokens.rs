//! A token's rules across servers: replay, three strikes by PIN, an administrator's block
//! seen everywhere (and never beaten by a racing OPEN), long polls, the consistent status
//! read, pairing across servers, the device command line over the endpoint list.

use super::*;

#[test]
fn a_request_accepted_by_one_server_and_replayed_to_another_gets_no_reply() {
    let inst = Instance::new(3, "file");
    let s = inst.serve_all();
    let mut phone = pair_alice(&s[0]);
    for other in &s[1..] {
        until_state(other, "closed");
    }
    let opened = phone.open(&mut link(&s[0])).unwrap();
    assert_eq!(opened.status().state, WireState::Open);
    let open = phone.last_request.clone();
    // At once (before the others may have read the change) and later: no reply.
    for other in &s[1..] {
        assert_eq!(link(other).exchange(&open), Err(NoReply));
    }
    for other in &s[1..] {
        until_state(other, "open");
        assert_eq!(link(other).exchange(&open), Err(NoReply));
    }
    // Closed through another server; the OPEN replayed again anywhere changes nothing.
    assert_eq!(
        until_answered(&mut phone, &s[1], Ask::Close),
        WireState::Closed
    );
    for server in &s {
        assert_eq!(link(server).exchange(&open), Err(NoReply));
    }
    std::thread::sleep(Duration::from_millis(200));
    for server in &s {
        assert_eq!(state_at(server), "closed", "{}", server.log());
    }
}

#[test]
fn wrong_pins_sent_to_two_servers_at_once_block_the_token_at_exactly_three_failures() {
    let inst = Instance::new(2, "file");
    let s = inst.serve_all();
    let mut phone = pair_alice(&s[0]);
    until_state(&s[1], "closed");
    let wrong = zoftoken_proto::PinVerifier::derive("0000", &phone.token.token_id()).unwrap();
    let mut failures_seen = 0;
    // Rounds of two wrong-PIN OPENs, one to each server at the same moment, until blocked.
    for _ in 0..10 {
        let now = zoftoken_testkit::now_ms();
        let a = phone.request(now, Request::Open(&wrong));
        let b = phone.request(now, Request::Open(&wrong));
        let (sa, sb) = (s[0].udp, s[1].udp);
        let ta =
            std::thread::spawn(move || UdpLink::new(sa, Duration::from_millis(400)).exchange(&a));
        let tb =
            std::thread::spawn(move || UdpLink::new(sb, Duration::from_millis(400)).exchange(&b));
        for mut reply in [ta.join().unwrap(), tb.join().unwrap()]
            .into_iter()
            .flatten()
        {
            {
                let reply = phone.token.handle_reply(&mut reply).unwrap();
                failures_seen += 1;
                if reply.status().state == WireState::Blocked {
                    assert_eq!(reply.status().attempts_left, 0);
                }
            }
        }
        let (_, v) = http(s[0].http, "GET", ALICE, ADMIN_KEY, "");
        if v["state"] == "blocked" {
            assert_eq!(v["failures"], 3, "{v}");
            break;
        }
        assert!(v["failures"].as_u64().unwrap() < 3, "{v}");
    }
    assert!(failures_seen >= 3, "{failures_seen} failures answered");
    until_state(&s[1], "blocked");
    let (_, v) = http(s[1].http, "GET", ALICE, ADMIN_KEY, "");
    assert_eq!(v["failures"], 3, "{v}");
    // The right PIN at either server: still blocked.
    for server in &s {
        assert_eq!(
            until_answered(&mut phone, server, Ask::Open),
            WireState::Blocked
        );
    }
}

#[test]
fn an_administrators_block_through_one_server_is_seen_by_the_others() {
    let inst = Instance::new(3, "file");
    let s = inst.serve_all();
    let mut phone = pair_alice(&s[0]);
    for other in &s[1..] {
        until_state(other, "closed");
    }
    let (code, v) = http(
        s[0].http,
        "PUT",
        &format!("{ALICE}/state"),
        ADMIN_KEY,
        r#"{"state":"blocked"}"#,
    );
    assert_eq!(code, 200, "{v}");
    for other in &s[1..] {
        let took = until_state(other, "blocked");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    // The other servers' UDP paths respect it: the right PIN does not open.
    for other in &s[1..] {
        assert_eq!(
            until_answered(&mut phone, other, Ask::Open),
            WireState::Blocked
        );
    }
}

#[test]
fn a_long_poll_at_one_server_answers_when_the_phone_opens_through_another() {
    let inst = Instance::new(2, "file");
    let s = inst.serve_all();
    let mut phone = pair_alice(&s[0]);
    until_state(&s[1], "closed");
    let at_b = s[1].http;
    let poll = std::thread::spawn(move || {
        let t = Instant::now();
        let r = http(at_b, "GET", &format!("{ALICE}?wait=30"), ADMIN_KEY, "");
        (r, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        until_answered(&mut phone, &s[0], Ask::Open),
        WireState::Open
    );
    let ((code, v), waited) = poll.join().unwrap();
    assert_eq!((code, v["state"].as_str()), (200, Some("open")), "{v}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

/// A phone's link that sends each datagram to the next server in turn, a moment after the
/// previous answer (as a person types a PIN between PAIR_INIT and PAIR_COMPLETE).
struct EachToTheNext {
    servers: Vec<SocketAddr>,
    next: usize,
}

impl Link for EachToTheNext {
    type Error = NoReply;

    fn now_ms(&self) -> u64 {
        zoftoken_testkit::now_ms()
    }

    fn exchange(&mut self, datagram: &[u8]) -> Result<Vec<u8>, NoReply> {
        let to = self.servers[self.next % self.servers.len()];
        self.next += 1;
        std::thread::sleep(Duration::from_millis(200));
        UdpLink::new(to, Duration::from_secs(2)).exchange(datagram)
    }
}

#[test]
fn pair_init_and_pair_complete_may_reach_different_servers() {
    let inst = Instance::new(3, "file");
    let s = inst.serve_all();
    let (code, enrolled) = http(s[0].http, "POST", ALICE, ADMIN_KEY, "{}");
    assert_eq!(code, 201, "{enrolled}");
    // Enrolled through server 0, PAIR_INIT to server 1, PAIR_COMPLETE to server 2.
    let mut link = EachToTheNext {
        servers: vec![s[1].udp, s[2].udp],
        next: 0,
    };
    let mut phone = Phone::pair_deeplink(&mut link, enrolled["deeplink"].as_str().unwrap(), false);
    for server in &s {
        until_state(server, "closed");
    }
    assert_eq!(
        until_answered(&mut phone, &s[0], Ask::Open),
        WireState::Open
    );
}

#[test]
fn the_device_command_line_uses_every_server_of_its_endpoint_list() {
    let inst = Instance::new(3, "file");
    let mut s = inst.serve_all();
    let (code, enrolled) = http(s[0].http, "POST", ALICE, ADMIN_KEY, "{}");
    assert_eq!(code, 201, "{enrolled}");
    let home = inst.home(0);
    let state = home.join("phone.json");
    let (code, out, err) = common::device(
        &home,
        &state,
        &["pair", enrolled["deeplink"].as_str().unwrap()],
        "1357\n1357\n",
    );
    assert_eq!(code, 0, "{out}{err}");
    // Each command starts at a random endpoint of the three and fails over.
    for round in 0..6 {
        let (cmd, want) = if round % 2 == 0 {
            ("open", "open")
        } else {
            ("close", "closed")
        };
        let (code, out, err) = common::device(&home, &state, &["--json", cmd], "1357\n");
        assert_eq!(code, 0, "{cmd}: {out}{err}");
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["state"], want, "{v}");
    }
    // Server 1 is killed: the phone's requests go to the others.
    drop(s.remove(1));
    for cmd in ["open", "close", "status"] {
        let (code, out, err) = common::device(&home, &state, &["--json", cmd], "1357\n");
        assert_eq!(code, 0, "{cmd}: {out}{err}");
    }
}

#[test]
fn a_status_read_asked_consistent_holds_another_servers_change_at_once() {
    let inst = Instance::build(2, "file", None, false);
    // Server 1 follows the database slowly: its memory lags behind by up to a second.
    let cfg = inst.home(1).join("config.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("    url:", "    follow_interval_ms: 1000\n    url:"),
    )
    .unwrap();
    let s = inst.serve_all();
    let _phone = pair_alice(&s[0]);
    until_state(&s[1], "closed");
    for want in ["blocked", "open", "closed", "blocked"] {
        let (code, v) = http(
            s[0].http,
            "PUT",
            &format!("{ALICE}/state"),
            ADMIN_KEY,
            &format!(r#"{{"state":"{want}"}}"#),
        );
        assert_eq!(code, 200, "{v}");
        let (code, v) = http(
            s[1].http,
            "GET",
            &format!("{ALICE}?consistent=true"),
            ADMIN_KEY,
            "",
        );
        assert_eq!((code, v["state"].as_str()), (200, Some(want)), "{v}");
    }
}

#[test]
fn an_open_racing_an_administrators_block_at_another_server_never_wins_over_it() {
    let inst = Instance::new(2, "file");
    let s = inst.serve_all();
    let mut phone = pair_alice(&s[0]);
    until_state(&s[1], "closed");
    for round in 0..8 {
        let now = zoftoken_testkit::now_ms();
        let pin = phone.pin.clone();
        let open = phone.request(now, Request::Open(&pin));
        let (udp, http_a) = (s[1].udp, s[0].http);
        let block = std::thread::spawn(move || {
            http(
                http_a,
                "PUT",
                &format!("{ALICE}/state"),
                ADMIN_KEY,
                r#"{"state":"blocked"}"#,
            )
        });
        let opened = std::thread::spawn(move || {
            UdpLink::new(udp, Duration::from_millis(400)).exchange(&open)
        });
        assert_eq!(block.join().unwrap().0, 200);
        if let Ok(mut reply) = opened.join().unwrap() {
            phone.token.handle_reply(&mut reply).unwrap();
        }
        // Whatever came first, the token ends blocked, everywhere.
        for server in &s {
            let t = Instant::now();
            while state_at(server) != "blocked" {
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "round {round}: {}",
                    state_at(server)
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert_eq!(
            until_answered(&mut phone, &s[1], Ask::Open),
            WireState::Blocked,
            "round {round}"
        );
        let (code, v) = http(
            s[0].http,
            "PUT",
            &format!("{ALICE}/state"),
            ADMIN_KEY,
            r#"{"state":"closed"}"#,
        );
        assert_eq!(code, 200, "{v}");
        for server in &s {
            until_state(server, "closed");
        }
    }
}
