//! A transaction made at one server is fetched and decided once through the others.

use super::*;

/// A transaction request of the phone.
#[derive(Clone, Copy)]
enum TxAsk {
    Fetch,
    Approve([u8; 16]),
    Deny([u8; 16]),
}

/// Builds `ask` as a new request (a new counter) at the phone's clock.
fn tx_request(phone: &mut Phone, ask: TxAsk) -> Vec<u8> {
    let pin = phone.pin.clone();
    let now = zoftoken_testkit::now_ms();
    match ask {
        TxAsk::Fetch => phone.request(now, Request::TxFetch),
        TxAsk::Approve(tx_id) => phone.request(now, Request::TxApprove { tx_id, pin: &pin }),
        TxAsk::Deny(tx_id) => phone.request(now, Request::TxDeny { tx_id }),
    }
}

/// Sends `ask` through `s` until answered (a stale view is refused and not answered; the
/// app asks again with a new counter).
fn until_replied(phone: &mut Phone, s: &Server, ask: TxAsk) -> zoftoken_device::Reply {
    for _ in 0..10 {
        let datagram = tx_request(phone, ask);
        if let Ok(mut reply) = link(s).exchange(&datagram) {
            return phone.token.handle_reply(&mut reply).unwrap();
        }
    }
    panic!("no answer from {}:\n{}", s.udp, s.log());
}

#[test]
fn a_transaction_made_at_one_server_is_decided_once_through_the_others() {
    let inst = Instance::new(3, "file");
    let s = inst.serve_all();
    let mut phone = pair_alice(&s[0]);
    for server in &s {
        until_state(server, "closed");
    }
    let (code, v) = http(
        s[0].http,
        "POST",
        &format!("{ALICE}/transactions"),
        ADMIN_KEY,
        r#"{"message":"Pay 100 EUR?"}"#,
    );
    assert_eq!(code, 201, "{v}");
    let tx_hex = v["tx_id"].as_str().unwrap().to_owned();
    let tx_id = hex_bytes(&tx_hex);
    // Fetched through server 2, once its memory holds it.
    let t = Instant::now();
    loop {
        match until_replied(&mut phone, &s[2], TxAsk::Fetch) {
            zoftoken_device::Reply::Transaction(_, Some(tx)) => {
                assert_eq!((tx.tx_id, tx.message.as_str()), (tx_id, "Pay 100 EUR?"));
                break;
            }
            other => assert!(t.elapsed() < Duration::from_secs(5), "{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // An approval through server 2 and a denial through server 1 at the same moment: one
    // decision, the same everywhere.
    let approve = tx_request(&mut phone, TxAsk::Approve(tx_id));
    let deny = tx_request(&mut phone, TxAsk::Deny(tx_id));
    let (a, b) = (s[2].udp, s[1].udp);
    let ta =
        std::thread::spawn(move || UdpLink::new(a, Duration::from_millis(400)).exchange(&approve));
    let tb =
        std::thread::spawn(move || UdpLink::new(b, Duration::from_millis(400)).exchange(&deny));
    let mut decided = Vec::new();
    for mut reply in [ta.join().unwrap(), tb.join().unwrap()]
        .into_iter()
        .flatten()
    {
        if let zoftoken_device::Reply::TxDecided(_, _, state) =
            phone.token.handle_reply(&mut reply).unwrap()
        {
            decided.push(state);
        }
    }
    let path = format!("{ALICE}/transactions/{tx_hex}");
    let state_at = |server: &Server| {
        let (code, v) = http(server.http, "GET", &path, ADMIN_KEY, "");
        assert_eq!(code, 200, "{v}");
        v["state"].as_str().unwrap().to_owned()
    };
    let t = Instant::now();
    let decision = loop {
        let st = state_at(&s[0]);
        if st != "waiting" && st != "pending" {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "still {st}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(decision == "approved" || decision == "denied", "{decision}");
    for server in &s {
        let t = Instant::now();
        while state_at(server) != decision {
            assert!(t.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Every answer that reported a decision reported this one.
    for d in decided {
        let name = format!("{d:?}").to_lowercase();
        assert!(
            name == decision || name == "expired" || name == "waiting",
            "{name} vs {decision}"
        );
    }
}

fn hex_bytes(hex: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}
