//! Test vectors (`proto-spec/vectors/*.json`): regenerated from the code and compared with the
//! committed files, so vectors and code cannot drift apart, then verified by decoding every
//! packet. Set `ZOFTOKEN_BLESS=1` to rewrite the files after an intended change.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_arguments,
    missing_docs
)]

use serde_json::{json, Value};
use zerocopy::IntoBytes;
use zoftoken_proto::clock;
use zoftoken_proto::codes::{self, OtpParams};
use zoftoken_proto::deeplink::Deeplink;
use zoftoken_proto::keys::context;
use zoftoken_proto::packet::{open_reply, open_request, seal_reply, seal_request};
use zoftoken_proto::pairing::Ephemeral;
use zoftoken_proto::replay::ReplayWindow;
use zoftoken_proto::totp::{self, TotpAlgorithm, TotpParams};
use zoftoken_proto::wire::*;
use zoftoken_proto::*;

fn vectors_dir() -> std::path::PathBuf {
    // The directory at run time, not baked in at compile time: a shared target directory may
    // hold a test binary built in another checkout.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test");
    std::path::Path::new(&dir).join("vectors")
}

/// Deterministic "random" bytes for the vectors: BLAKE3 of a label.
fn fixed<const N: usize>(label: &str) -> [u8; N] {
    let mut out = [0u8; N];
    blake3::Hasher::new()
        .update(label.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn xor32(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

fn h(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

/// Compares a regenerated vector file with the committed one (or writes it when blessing).
fn check_file(name: &str, generated: &Value) {
    let path = vectors_dir().join(name);
    let text = serde_json::to_string_pretty(generated).unwrap() + "\n";
    if std::env::var_os("ZOFTOKEN_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{name}: {e}; run with ZOFTOKEN_BLESS=1 to create it"));
    let committed: Value = serde_json::from_str(&committed).unwrap();
    assert!(
        committed == *generated,
        "{name} differs from what the code produces; if the change is intended, regenerate with ZOFTOKEN_BLESS=1"
    );
}

fn load(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(vectors_dir().join(name)).unwrap()).unwrap()
}

// ---------------------------------------------------------------- key schedule

const TOKEN_CASES: [(&str, &str); 4] = [
    ("Banco Ejemplo", "alice@example.com"),
    ("vpn", "bob"),
    ("Édifice 北京", "用户 名"),
    ("", ""),
];

fn gen_keys() -> Value {
    let token_ids: Vec<Value> = TOKEN_CASES
        .iter()
        .map(|(s, u)| json!({"service": s, "username": u, "token_id": TokenId::derive(s, u).to_hex()}))
        .collect();
    let deeplink_secret: [u8; 32] = fixed("keys enrollment secret");
    let manual = codes::manual_code(&fixed("keys manual code"));
    let enrollments: Vec<Value> = [
        ("deeplink", deeplink_secret.to_vec()),
        ("manual code", codes::parse_manual_code(&manual).unwrap().expose().to_vec()),
    ]
    .into_iter()
    .map(|(kind, e)| {
        let k = EnrollmentSecret::new(e.clone()).keys();
        json!({
            "kind": kind,
            "manual_code": if kind == "manual code" { Value::from(manual.clone()) } else { Value::Null },
            "enrollment_secret": h(&e),
            "pairing_id": h(&k.pairing_id),
            "enrollment_d2s_key": h(&blake3::derive_key(context::ENROLLMENT_D2S, &e)),
            "enrollment_s2d_key": h(&blake3::derive_key(context::ENROLLMENT_S2D, &e)),
        })
    })
    .collect();
    let secret: [u8; 32] = fixed("keys token secret");
    json!({
        "description": "SPEC.md §2.2 token ids and §3 key schedule: BLAKE3 derive_key with the contexts listed",
        "contexts": {
            "token_id": context::TOKEN_ID, "pairing_id": context::PAIRING_ID,
            "enrollment_d2s": context::ENROLLMENT_D2S, "enrollment_s2d": context::ENROLLMENT_S2D,
            "token_secret": context::TOKEN_SECRET, "d2s": context::D2S, "s2d": context::S2D,
            "otp": context::OTP, "offline": context::OFFLINE, "manual_check": context::MANUAL_CHECK,
            "pin_root_pad": context::PIN_ROOT_PAD, "pin_seal": context::PIN_SEAL,
        },
        "token_ids": token_ids,
        "enrollments": enrollments,
        "token_keys": {
            "token_secret": h(&secret),
            "d2s_key": h(&blake3::derive_key(context::D2S, &secret)),
            "s2d_key": h(&blake3::derive_key(context::S2D, &secret)),
            "otp_key": h(&blake3::derive_key(context::OTP, &secret)),
            "offline_key": h(&blake3::derive_key(context::OFFLINE, &secret)),
        },
        "nonces": [
            {"epoch": 0, "counter": 1, "nonce": h(&aead::nonce(0, 1))},
            {"epoch": 7, "counter": 1_800_000_000_000u64, "nonce": h(&aead::nonce(7, 1_800_000_000_000))},
        ],
    })
}

// ---------------------------------------------------------------- PIN

fn gen_pin() -> Value {
    let id = TokenId::derive("Banco Ejemplo", "alice@example.com");
    let root = PinRoot::from_bytes(fixed("pin vectors root"));
    let cases: Vec<Value> = ["2468", "1357", "correct horse", "ñandú-9"]
        .iter()
        .map(|pin| {
            let v = PinVerifier::derive(pin, &id).unwrap();
            let proofs: Vec<Value> = [
                (MsgType::Open, 2u64, 0u32),
                (MsgType::TxApprove, 9, 255),
                (MsgType::ChangePin, 1 << 40, 65_536),
            ]
            .iter()
            .map(|(t, c, p)| {
                let key = root.key(*p).unwrap();
                json!({"type": t.name(), "counter": c, "pin_index": p, "pin_key": h(key.expose()),
                        "proof": h(&v.proof(&key, *t, &id.0, *c))})
            })
            .collect();
            json!({"pin": pin, "verifier": h(v.expose()), "proofs": proofs})
        })
        .collect();
    let keys: Vec<Value> = [
        0u32,
        1,
        255,
        256,
        65_535,
        65_536,
        1 << 20,
        pin_keys::PIN_INDEX_LIMIT - 1,
    ]
    .iter()
    .map(|p| json!({"index": p, "key": h(root.key(*p).unwrap().expose())}))
    .collect();
    let mut ring = PinKeyRing::new(root.clone());
    let mut used = 0u32;
    let rings: Vec<Value> = [0u32, 1, 256, 65_536]
        .iter()
        .map(|n| {
            while used < *n {
                ring.take().unwrap();
                used += 1;
            }
            let bytes = ring.to_bytes();
            json!({"indices_used": n, "encoding_len": bytes.len(), "encoding_blake3": h(blake3::hash(&bytes).as_bytes())})
        })
        .collect();
    let v = PinVerifier::derive("2468", &id).unwrap();
    let d = PinVerifier::derive("1357", &id).unwrap();
    let block = VerifierBlock {
        pin_verifier: *v.expose(),
        duress_verifier: *d.expose(),
        flags: VERIFIER_FLAG_DURESS,
        zero: [0; 7],
    };
    let header = Header::request(MsgType::ChangePin, id.0, 12);
    let key = root.key(5).unwrap();
    let sealed = key.seal_verifiers(&header, &block.to_bytes()).unwrap();
    json!({
        "description": "SPEC.md §6: Argon2id verifiers, PIN keys and key rings, PIN proofs and sealed verifier blocks",
        "argon2id": {"memory_kib": pin::ARGON2_MEMORY_KIB, "iterations": pin::ARGON2_ITERATIONS,
                     "parallelism": pin::ARGON2_PARALLELISM, "output_len": 32, "version": "0x13",
                     "salt": format!("\"{}\" || token_id", std::str::from_utf8(pin::PIN_SALT_PREFIX).unwrap())},
        "token_id": id.to_hex(),
        "pin_root": h(root.expose()),
        "pin_keys": keys,
        "rings": rings,
        "cases": cases,
        "sealed_verifiers": {"header": h(header.as_bytes()), "pin_index": 5, "pin_key": h(key.expose()),
            "seal_key": h(&blake3::derive_key(context::PIN_SEAL, key.expose())),
            "block": h(&block.to_bytes()), "sealed": h(&sealed)},
    })
}

// ---------------------------------------------------------------- session

const T0: u64 = 1_800_000_000_000;
const EPOCH: u32 = 7;

struct Session {
    id: [u8; 16],
    keys: TokenKeys,
    normal: PinVerifier,
    duress: PinVerifier,
}

fn status(s: ReplyStatus, st: WireState, left: u8, until: u64, now: u64) -> StatusBlock {
    StatusBlock::new(s, st, left, until, now)
}

fn status_json(b: &StatusBlock) -> Value {
    json!({
        "status": b.status, "state": b.state, "attempts_left": b.attempts_left,
        "open_until_ms": b.open_until_ms.get(), "server_time_ms": b.server_time_ms.get(),
    })
}

fn exchange(
    name: &str,
    sess: &Session,
    t: MsgType,
    counter: u64,
    req_fields: Value,
    req_body: &[u8],
    reply_fields: Value,
    reply_body: &[u8],
) -> Value {
    let mut req = [0u8; MAX_DATAGRAM];
    let n = seal_request(&sess.keys.d2s, t, sess.id, counter, req_body, &mut req).unwrap();
    let header = Header::request(t, sess.id, counter);
    let mut rep = [0u8; MAX_DATAGRAM];
    let m = seal_reply(&sess.keys.s2d, EPOCH, &header, reply_body, &mut rep).unwrap();
    assert!(m <= n, "{name}: reply larger than request");
    json!({
        "name": name, "type": t.name(), "counter": counter,
        "request": {"fields": req_fields, "body": h(req_body), "datagram": h(&req[..n])},
        "reply": {"epoch": EPOCH, "fields": reply_fields, "body": h(reply_body), "datagram": h(&rep[..m])},
    })
}

fn gen_session() -> Value {
    let service = "Banco Ejemplo";
    let username = "alice@example.com";
    let token_id = TokenId::derive(service, username);
    let link = Deeplink {
        secret: EnrollmentSecret::new(fixed::<32>("session enrollment secret").to_vec()),
        service: service.into(),
        endpoints: vec!["127.0.0.1:4500".into(), "[::1]:4500".into()],
        details_url: Some("https://bank.example/zoftoken/details.json".into()),
    };
    let ek = link.secret.keys();
    // PAIR_INIT
    let dev_random: [u8; 32] = fixed("session device ephemeral");
    let srv_random: [u8; 32] = fixed("session server ephemeral");
    let (dev, srv) = (
        Ephemeral::from_random(dev_random),
        Ephemeral::from_random(srv_random),
    );
    let init_counter = T0;
    let init_body = PairInitRequest {
        device_time_ms: Be64::new(T0),
        device_public: dev.public(),
        zero: [0; 72],
    };
    let mut init = [0u8; MAX_DATAGRAM];
    let n = seal_request(
        &ek.d2s,
        MsgType::PairInit,
        ek.pairing_id,
        init_counter,
        init_body.as_bytes(),
        &mut init,
    )
    .unwrap();
    let srv_agreed = srv.server_agree(&dev.public(), &ek.pairing_id).unwrap();
    let secret = srv_agreed.secret.clone();
    let root = PinRoot::from_bytes(fixed("session pin root"));
    let offer = PairInitReply {
        status: status(ReplyStatus::Ok, WireState::Pending, 3, 0, T0 + 40),
        server_public: srv.public(),
        token_id: token_id.0,
        otp_length: 8,
        otp_alphabet: Alphabet::Digits as u8,
        otp_period_s: Be16::new(30),
        window_s: Be32::new(600),
        service_flags: SERVICE_FLAG_DURESS,
        reserved: [0; 3],
        pin_root_sealed: srv_agreed.seal_pin_root(&root),
    };
    let mut init_reply = [0u8; MAX_DATAGRAM];
    let m = seal_reply(
        &ek.s2d,
        EPOCH,
        &Header::request(MsgType::PairInit, ek.pairing_id, init_counter),
        offer.as_bytes(),
        &mut init_reply,
    )
    .unwrap();
    let dev_agreed = dev.device_agree(&srv.public(), &ek.pairing_id).unwrap();
    assert_eq!(secret, dev_agreed.secret);
    assert_eq!(dev_agreed.open_pin_root(&offer.pin_root_sealed), root);
    // The device's ring; every PIN-bearing message below takes the next index.
    let mut ring = PinKeyRing::new(root.clone());
    let sess = Session {
        id: token_id.0,
        keys: secret.keys(),
        normal: PinVerifier::derive("2468", &token_id).unwrap(),
        duress: PinVerifier::derive("1357", &token_id).unwrap(),
    };
    let new_pin = PinVerifier::derive("97531", &token_id).unwrap();
    let new_duress = PinVerifier::derive("8642", &token_id).unwrap();

    let mut msgs = Vec::new();
    let mut t = T0 + 1_000;
    let st = |s, w, l, u, now| status(s, w, l, u, now);
    let plain = |t: u64| PlainRequest {
        device_time_ms: Be64::new(t),
        zero: [0; 16],
    };

    // PAIR_COMPLETE, counter 1, PIN key 0
    let (p, key) = ring.take().unwrap();
    let block = VerifierBlock {
        pin_verifier: *sess.normal.expose(),
        duress_verifier: *sess.duress.expose(),
        flags: VERIFIER_FLAG_DURESS,
        zero: [0; 7],
    };
    let pc = PairCompleteRequest {
        device_time_ms: Be64::new(t),
        pin: PinIndex::new(p),
        verifiers: key
            .seal_verifiers(
                &Header::request(MsgType::PairComplete, sess.id, 1),
                &block.to_bytes(),
            )
            .unwrap(),
    };
    let r = st(ReplyStatus::Ok, WireState::Closed, 3, 0, t + 40);
    msgs.push(exchange("PAIR_COMPLETE with PIN 2468 and duress PIN 1357", &sess, MsgType::PairComplete, 1,
        json!({"device_time_ms": t, "pin_index": p, "pin_key": h(key.expose()), "pin_verifier": h(sess.normal.expose()), "duress_verifier": h(sess.duress.expose()), "flags": 1}),
        pc.as_bytes(), status_json(&r), r.as_bytes()));

    let open = |c: u64, t: u64, v: &PinVerifier, p: u32, key: &PinKey| OpenRequest {
        device_time_ms: Be64::new(t),
        pin: PinIndex::new(p),
        proof: v.proof(key, MsgType::Open, &sess.id, c),
    };
    t += 10_000;
    let (p, key) = ring.take().unwrap();
    let o = open(2, t, &sess.normal, p, &key);
    let r = st(
        ReplyStatus::Ok,
        WireState::Open,
        3,
        t + 40 + 600_000,
        t + 40,
    );
    msgs.push(exchange(
        "OPEN with the PIN",
        &sess,
        MsgType::Open,
        2,
        json!({"device_time_ms": t, "pin": "2468", "pin_index": p, "pin_key": h(key.expose()), "proof": h(&o.proof)}),
        o.as_bytes(),
        status_json(&r),
        r.as_bytes(),
    ));
    let until = t + 40 + 600_000;
    t += 5_000;
    let r = st(ReplyStatus::Ok, WireState::Open, 3, until, t + 40);
    msgs.push(exchange(
        "STATUS while open",
        &sess,
        MsgType::Status,
        3,
        json!({"device_time_ms": t}),
        plain(t).as_bytes(),
        status_json(&r),
        r.as_bytes(),
    ));
    t += 5_000;
    let r = st(ReplyStatus::Ok, WireState::Closed, 3, 0, t + 40);
    msgs.push(exchange(
        "CLOSE",
        &sess,
        MsgType::Close,
        4,
        json!({"device_time_ms": t}),
        plain(t).as_bytes(),
        status_json(&r),
        r.as_bytes(),
    ));
    t += 5_000;
    let (p, key) = ring.take().unwrap();
    let o = open(5, t, &sess.duress, p, &key);
    let r = st(
        ReplyStatus::Ok,
        WireState::Open,
        3,
        t + 40 + 600_000,
        t + 40,
    );
    msgs.push(exchange(
        "OPEN with the duress PIN (reply identical in form to a normal open)",
        &sess,
        MsgType::Open,
        5,
        json!({"device_time_ms": t, "pin": "1357", "pin_index": p, "pin_key": h(key.expose()), "proof": h(&o.proof)}),
        o.as_bytes(),
        status_json(&r),
        r.as_bytes(),
    ));
    let until = t + 40 + 600_000;
    t += 5_000;
    let r = st(ReplyStatus::Ok, WireState::Open, 3, until, t + 40);
    msgs.push(exchange(
        "TIME_SYNC (presence)",
        &sess,
        MsgType::TimeSync,
        6,
        json!({"device_time_ms": t}),
        plain(t).as_bytes(),
        status_json(&r),
        r.as_bytes(),
    ));
    t += 5_000;
    let tx_id: [u8; 16] = fixed("session transaction 1");
    let message = "Transfer 250.00 EUR to ES91 2100 0418 4502 0005 1332?";
    let mut msg = [0u8; TX_MESSAGE_MAX];
    msg[..message.len()].copy_from_slice(message.as_bytes());
    let fetch = TxFetchRequest {
        device_time_ms: Be64::new(t),
        zero: [0; 238],
    };
    let tx_reply = TxFetchReply {
        status: st(ReplyStatus::Ok, WireState::Open, 3, until, t + 40),
        tx_id,
        tx_expires_ms: Be64::new(t + 120_000),
        message_len: Be16::new(message.len() as u16),
        message: msg,
    };
    msgs.push(exchange("TX_FETCH with a transaction waiting", &sess, MsgType::TxFetch, 7, json!({"device_time_ms": t}), fetch.as_bytes(),
        json!({"status": status_json(&tx_reply.status), "tx_id": h(&tx_id), "tx_expires_ms": t + 120_000, "message": message}), tx_reply.as_bytes()));
    t += 5_000;
    let (p, key) = ring.take().unwrap();
    let approve = TxDecideRequest {
        device_time_ms: Be64::new(t),
        tx_id,
        pin: PinIndex::new(p),
        proof: sess.normal.proof(&key, MsgType::TxApprove, &sess.id, 8),
    };
    let dr = TxDecideReply {
        status: st(ReplyStatus::Ok, WireState::Open, 3, until, t + 40),
        tx_id,
        tx_state: TxState::Approved as u8,
        reserved: [0; 3],
    };
    msgs.push(exchange(
        "TX_APPROVE with the PIN",
        &sess,
        MsgType::TxApprove,
        8,
        json!({"device_time_ms": t, "tx_id": h(&tx_id), "pin": "2468", "pin_index": p, "pin_key": h(key.expose()), "proof": h(&approve.proof)}),
        approve.as_bytes(),
        json!({"status": status_json(&dr.status), "tx_id": h(&tx_id), "tx_state": dr.tx_state}),
        dr.as_bytes(),
    ));
    t += 5_000;
    let fetch = TxFetchRequest {
        device_time_ms: Be64::new(t),
        zero: [0; 238],
    };
    let none = TxFetchReply {
        status: st(
            ReplyStatus::NoTransaction,
            WireState::Open,
            3,
            until,
            t + 40,
        ),
        tx_id: [0; 16],
        tx_expires_ms: Be64::new(0),
        message_len: Be16::new(0),
        message: [0; TX_MESSAGE_MAX],
    };
    msgs.push(exchange(
        "TX_FETCH with nothing waiting",
        &sess,
        MsgType::TxFetch,
        9,
        json!({"device_time_ms": t}),
        fetch.as_bytes(),
        json!({"status": status_json(&none.status)}),
        none.as_bytes(),
    ));
    t += 5_000;
    let tx2: [u8; 16] = fixed("session transaction 2");
    let deny = TxDecideRequest {
        device_time_ms: Be64::new(t),
        tx_id: tx2,
        pin: PinIndex::new(0),
        proof: [0; 16],
    };
    let dr = TxDecideReply {
        status: st(ReplyStatus::Ok, WireState::Open, 3, until, t + 40),
        tx_id: tx2,
        tx_state: TxState::Denied as u8,
        reserved: [0; 3],
    };
    msgs.push(exchange(
        "TX_DENY",
        &sess,
        MsgType::TxDeny,
        10,
        json!({"device_time_ms": t, "tx_id": h(&tx2)}),
        deny.as_bytes(),
        json!({"status": status_json(&dr.status), "tx_id": h(&tx2), "tx_state": dr.tx_state}),
        dr.as_bytes(),
    ));
    t += 5_000;
    let wrong = PinVerifier::derive("0000", &token_id).unwrap();
    let (p, key) = ring.take().unwrap();
    let o = open(11, t, &wrong, p, &key);
    let r = st(ReplyStatus::WrongPin, WireState::Open, 2, until, t + 40);
    msgs.push(exchange(
        "OPEN with a wrong PIN",
        &sess,
        MsgType::Open,
        11,
        json!({"device_time_ms": t, "pin": "0000", "pin_index": p, "pin_key": h(key.expose()), "proof": h(&o.proof)}),
        o.as_bytes(),
        status_json(&r),
        r.as_bytes(),
    ));
    t += 5_000;
    let (p, key) = ring.take().unwrap();
    let new_block = VerifierBlock {
        pin_verifier: *new_pin.expose(),
        duress_verifier: *new_duress.expose(),
        flags: VERIFIER_FLAG_DURESS,
        zero: [0; 7],
    };
    let cp = ChangePinRequest {
        device_time_ms: Be64::new(t),
        pin: PinIndex::new(p),
        proof: sess.normal.proof(&key, MsgType::ChangePin, &sess.id, 12),
        verifiers: key
            .seal_verifiers(
                &Header::request(MsgType::ChangePin, sess.id, 12),
                &new_block.to_bytes(),
            )
            .unwrap(),
    };
    let r = st(ReplyStatus::Ok, WireState::Open, 3, until, t + 40);
    msgs.push(exchange("CHANGE_PIN from 2468 to 97531, duress PIN 8642", &sess, MsgType::ChangePin, 12,
        json!({"device_time_ms": t, "pin": "2468", "pin_index": p, "pin_key": h(key.expose()), "proof": h(&cp.proof), "new_pin": "97531", "new_pin_verifier": h(new_pin.expose()), "new_duress_pin": "8642", "new_duress_verifier": h(new_duress.expose()), "flags": 1}),
        cp.as_bytes(), status_json(&r), r.as_bytes()));

    let params = OtpParams {
        length: 8,
        period_s: 30,
        alphabet: Alphabet::Digits,
    };
    let otp: Vec<Value> = [T0, T0 + 29_999, T0 + 30_000]
        .iter()
        .map(|ms| json!({"device_time_ms": ms, "step": params.step(*ms),
            "code_pin": codes::otp_code(&sess.keys.otp, &sess.normal, params.step(*ms), params),
            "code_duress_pin": codes::otp_code(&sess.keys.otp, &sess.duress, params.step(*ms), params)}))
        .collect();
    let vc = codes::validation_code(8, &fixed::<8>("session validation code")).unwrap();
    json!({
        "description": "SPEC.md §5 and §7: a whole session, pairing then every message type in both directions, with its one-time codes and an offline exchange",
        "service": service, "username": username, "token_id": token_id.to_hex(),
        "deeplink": link.to_uri().unwrap(),
        "endpoints": link.endpoints, "details_url": link.details_url,
        "enrollment_secret": h(link.secret.expose()),
        "pairing_id": h(&ek.pairing_id),
        "server_epoch": EPOCH,
        "pins": {"pin": "2468", "duress_pin": "1357"},
        "pair_init": {
            "counter": init_counter, "device_time_ms": T0,
            "device_ephemeral_random": h(&dev_random), "device_public": h(&dev.public()),
            "server_ephemeral_random": h(&srv_random), "server_public": h(&srv.public()),
            "request": {"body": h(init_body.as_bytes()), "datagram": h(&init[..n])},
            "reply": {"epoch": EPOCH, "fields": {"status": status_json(&offer.status), "token_id": token_id.to_hex(), "otp_length": 8, "otp_alphabet": 0, "otp_period_s": 30, "window_s": 600, "service_flags": 1, "pin_root": h(root.expose()), "pin_root_sealed": h(&offer.pin_root_sealed)},
                      "body": h(offer.as_bytes()), "datagram": h(&init_reply[..m])},
            "token_secret": h(secret.expose()),
            "pin_root_pad": h(&xor32(&offer.pin_root_sealed, root.expose())),
        },
        "ring_after_session": {"next_index": ring.next_index(), "encoding_len": ring.to_bytes().len(), "encoding_blake3": h(blake3::hash(&ring.to_bytes()).as_bytes())},
        "messages": msgs,
        "one_time_codes": {"length": 8, "period_s": 30, "alphabet": "digits", "pins_used": "pins (2468 and 1357), independent of the CHANGE_PIN message", "codes": otp},
        "offline": {"pins_used": "pins (2468 and 1357)", "validation_code": codes::group4(&vc),
            "response_pin": codes::group4(&codes::offline_response(&sess.keys.offline, &sess.normal, &vc).unwrap()),
            "response_duress_pin": codes::group4(&codes::offline_response(&sess.keys.offline, &sess.duress, &vc).unwrap())},
    })
}

// ---------------------------------------------------------------- codes

fn gen_codes() -> Value {
    let otp_key: [u8; 32] = fixed("codes otp key");
    let offline_key: [u8; 32] = fixed("codes offline key");
    let verifier: [u8; 32] = fixed("codes verifier");
    let v = PinVerifier::from_bytes(verifier);
    let otp_cases: Vec<Value> = [
        (4u8, Alphabet::Digits, 30u16),
        (6, Alphabet::Digits, 30),
        (8, Alphabet::Base32, 60),
        (32, Alphabet::Digits, 30),
        (32, Alphabet::Base32, 15),
    ]
    .iter()
    .flat_map(|(len, a, p)| {
        let params = OtpParams {
            length: *len,
            period_s: *p,
            alphabet: *a,
        };
        [0u64, 59_999, T0].map(|ms| {
            json!({"length": len, "alphabet": if *a == Alphabet::Digits {"digits"} else {"base32"},
                "period_s": p, "unix_ms": ms, "step": params.step(ms),
                "code": codes::otp_code(&SecretBytes::new(otp_key), &v, params.step(ms), params)})
        })
    })
    .collect();
    let offline: Vec<Value> = [4usize, 8, 12, 32]
        .iter()
        .map(|len| {
            let random: [u8; 32] = fixed(&format!("codes validation {len}"));
            let vc = codes::validation_code(*len, &random).unwrap();
            json!({"random": h(&random[..*len]), "validation_code": codes::group4(&vc),
                   "response": codes::group4(&codes::offline_response(&SecretBytes::new(offline_key), &v, &vc).unwrap())})
        })
        .collect();
    let manual: Vec<Value> = ["codes manual 1", "codes manual 2"]
        .iter()
        .map(|l| {
            let random: [u8; 19] = fixed(l);
            let code = codes::manual_code(&random);
            json!({"random": h(&random), "code": code,
                   "enrollment_secret": h(codes::parse_manual_code(&code).unwrap().expose())})
        })
        .collect();
    // Validation (§10.3): expected step 1000, search ±1, never a step at or below the last
    // accepted one. Codes are made with the verifier above (normal) or the duress verifier.
    let duress_bytes: [u8; 32] = fixed("codes duress verifier");
    let duress = PinVerifier::from_bytes(duress_bytes);
    let params = OtpParams {
        length: 6,
        period_s: 30,
        alphabet: Alphabet::Digits,
    };
    let otp_key_s = SecretBytes::new(otp_key);
    let mut last: Option<u64> = None;
    let validation: Vec<Value> = [
        (1000u64, "normal"),
        (1000, "normal"),
        (999, "normal"),
        (1001, "duress"),
        (1001, "normal"),
        (1002, "normal"),
        (1000, "wrong"),
    ]
    .iter()
    .map(|(step, which)| {
        let code = match *which {
            "normal" => codes::otp_code(&otp_key_s, &v, *step, params),
            "duress" => codes::otp_code(&otp_key_s, &duress, *step, params),
            _ => codes::otp_code(&otp_key_s, &PinVerifier::from_bytes([0; 32]), *step, params),
        };
        let got = codes::otp_verify(&otp_key_s, &v, Some(&duress), params, &code, 1000, last);
        let before = last;
        if let Some((m, _)) = got {
            last = Some(m);
        }
        json!({"code": code, "made_at_step": step, "made_with": which, "expected_step": 1000,
                   "last_accepted_step_before": before,
                   "accepted_step": got.map(|g| g.0),
                   "pin": got.map(|g| format!("{:?}", g.1).to_lowercase())})
    })
    .collect();
    json!({
        "description": "SPEC.md §10 one-time codes, §11 offline codes, §12.2 manual enrollment codes",
        "duress_verifier": h(&duress_bytes),
        "otp_validation": {"length": 6, "period_s": 30, "alphabet": "digits", "search_radius": codes::OTP_SEARCH_RADIUS, "attempts": validation},
        "alphabets": {"digits": "0123456789", "base32": std::str::from_utf8(codes::BASE32_SYMBOLS).unwrap()},
        "otp_key": h(&otp_key), "offline_key": h(&offline_key), "verifier": h(&verifier),
        "one_time_codes": otp_cases, "offline": offline, "manual_codes": manual,
    })
}

fn gen_totp() -> Value {
    // RFC 6238 Appendix B: seeds are the ASCII digits repeated to the hash length.
    let seed = |alg| match alg {
        TotpAlgorithm::Sha1 => b"12345678901234567890".to_vec(),
        TotpAlgorithm::Sha256 => b"12345678901234567890123456789012".to_vec(),
        TotpAlgorithm::Sha512 => {
            b"1234567890123456789012345678901234567890123456789012345678901234".to_vec()
        }
    };
    let mut cases = Vec::new();
    for time in [
        59u64,
        1_111_111_109,
        1_111_111_111,
        1_234_567_890,
        2_000_000_000,
        20_000_000_000,
    ] {
        for alg in [
            TotpAlgorithm::Sha1,
            TotpAlgorithm::Sha256,
            TotpAlgorithm::Sha512,
        ] {
            let p = TotpParams {
                digits: 8,
                period_s: 30,
                algorithm: alg,
            };
            cases.push(json!({"unix_s": time, "algorithm": alg.name(), "seed": h(&seed(alg)), "digits": 8, "totp": totp::totp(&seed(alg), time, p)}));
        }
    }
    json!({
        "description": "RFC 6238 Appendix B, computed by this implementation; the test also checks them against the RFC's table",
        "cases": cases,
        "otpauth": {"issuer": "Banco Ejemplo", "account": "alice@example.com", "secret": h(b"12345678901234567890"),
            "digits": 6, "period_s": 30, "algorithm": "SHA1",
            "uri": totp::otpauth_uri("Banco Ejemplo", "alice@example.com", b"12345678901234567890", TotpParams::default())},
    })
}

fn gen_replay() -> Value {
    // (device_time_ms, server_time_ms, offset_ms): the boundary is inclusive.
    let freshness: Vec<Value> = [
        (T0, T0, 0i64),
        (T0 + 90_000, T0, 0),
        (T0 + 90_001, T0, 0),
        (T0 - 90_000, T0, 0),
        (T0 - 90_001, T0, 0),
        (T0 + 600_000, T0, 600_000),
        (T0 + 600_000, T0, 0),
        (T0 - 3_600_000, T0, -3_600_000 + 89_000),
    ]
    .iter()
    .map(|(d, s, o)| json!({"device_time_ms": d, "server_time_ms": s, "offset_ms": o, "fresh": clock::is_fresh(*d, *s, *o)}))
    .collect();
    let mut w = ReplayWindow::new();
    let steps: Vec<Value> = [
        1u64, 2, 2, 10, 5, 5, 3000, 1976, 1977, 1977, 2999, 4100, 3000, 3077,
    ]
    .iter()
    .map(|c| json!({"counter": c, "accepted": w.accept(*c)}))
    .collect();
    json!({
        "description": "SPEC.md §8.1: a counter sequence and whether each is accepted (window 1024)",
        "window": replay::REPLAY_WINDOW,
        "steps": steps,
        "freshness": {"max_skew_ms": clock::MAX_SKEW_MS, "cases": freshness},
    })
}

fn gen_deeplinks() -> Value {
    let links: Vec<Value> = [
        (
            "deeplink 1",
            "Banco Ejemplo",
            vec!["tokens.bank.example:4500"],
            None,
        ),
        (
            "deeplink 2",
            "VPN & Wi-Fi / Ñ",
            vec!["10.0.0.1:4500", "[2001:db8::7]:4501", "tok.example:9"],
            Some("https://vpn.example/details.json?lang=es&v=2"),
        ),
    ]
    .into_iter()
    .map(|(label, service, eps, details)| {
        let link = Deeplink {
            secret: EnrollmentSecret::new(fixed::<32>(label).to_vec()),
            service: service.into(),
            endpoints: eps.into_iter().map(String::from).collect(),
            details_url: details.map(String::from),
        };
        json!({"secret": h(link.secret.expose()), "service": service, "endpoints": link.endpoints,
               "details_url": link.details_url, "uri": link.to_uri().unwrap()})
    })
    .collect();
    json!({"description": "SPEC.md §12.1 deeplinks", "links": links})
}

// ---------------------------------------------------------------- tests

#[test]
fn vectors_match_the_code() {
    check_file("keys.json", &gen_keys());
    check_file("pin.json", &gen_pin());
    check_file("session.json", &gen_session());
    check_file("codes.json", &gen_codes());
    check_file("totp.json", &gen_totp());
    check_file("replay.json", &gen_replay());
    check_file("deeplinks.json", &gen_deeplinks());
}

/// Decodes every packet of the session with the receiving side's functions.
#[test]
fn session_vectors_decode() {
    let v = load("session.json");
    let secret = EnrollmentSecret::new(unhex(&v["enrollment_secret"]));
    let ek = secret.keys();
    let link = Deeplink::parse(v["deeplink"].as_str().unwrap()).unwrap();
    assert_eq!(link.secret, secret);
    // Server opens PAIR_INIT.
    let pi = &v["pair_init"];
    let mut d = unhex(&pi["request"]["datagram"]);
    let req = open_request(&ek.d2s, &mut d).unwrap();
    let RequestBody::PairInit(body) = req.body else {
        panic!()
    };
    assert_eq!(
        h(&body.device_public),
        pi["device_public"].as_str().unwrap()
    );
    assert_eq!(req.header.counter.get(), pi["counter"].as_u64().unwrap());
    // Device opens the reply.
    let mut d = unhex(&pi["reply"]["datagram"]);
    let rep = open_reply(&ek.s2d, &mut d).unwrap();
    let ReplyBody::PairInit(offer) = rep.body else {
        panic!()
    };
    assert_eq!(h(&offer.token_id), v["token_id"].as_str().unwrap());
    let dev = Ephemeral::from_random(unhex(&pi["device_ephemeral_random"]).try_into().unwrap());
    let agreed = dev
        .device_agree(&offer.server_public, &ek.pairing_id)
        .unwrap();
    let k = agreed.secret.clone();
    assert_eq!(h(k.expose()), pi["token_secret"].as_str().unwrap());
    let root = agreed.open_pin_root(&offer.pin_root_sealed);
    assert_eq!(
        h(root.expose()),
        pi["reply"]["fields"]["pin_root"].as_str().unwrap()
    );
    let keys = k.keys();
    let id = TokenId(offer.token_id);
    let normal = PinVerifier::derive("2468", &id).unwrap();
    let duress = PinVerifier::derive("1357", &id).unwrap();
    let mut window = ReplayWindow::new();
    for m in v["messages"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let mut d = unhex(&m["request"]["datagram"]);
        let len = d.len();
        let req = open_request(&keys.d2s, &mut d).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(req.msg_type.name(), m["type"].as_str().unwrap());
        assert_eq!(
            req.body.as_bytes(),
            unhex(&m["request"]["body"]).as_slice(),
            "{name}"
        );
        assert!(window.accept(req.header.counter.get()), "{name}");
        let counter = req.header.counter.get();
        let header = *req.header;
        let pin_of = |p: &[u8; 16], index: u32, t| {
            let key = root.key(index).unwrap();
            pin::check_proof(p, &key, &normal, Some(&duress), t, &id.0, counter)
        };
        let open_block = |index: u32, sealed| {
            let plain = root
                .key(index)
                .unwrap()
                .open_verifiers(&header, sealed)
                .unwrap();
            VerifierBlock::parse(&plain).unwrap()
        };
        match req.body {
            RequestBody::Open(o) => {
                let expect = match m["request"]["fields"]["pin"].as_str().unwrap() {
                    "2468" => PinMatch::Normal,
                    "1357" => PinMatch::Duress,
                    _ => PinMatch::Wrong,
                };
                assert_eq!(
                    pin_of(&o.proof, o.pin.index.get(), MsgType::Open),
                    expect,
                    "{name}"
                );
            }
            RequestBody::TxApprove(a) => {
                assert_eq!(
                    pin_of(&a.proof, a.pin.index.get(), MsgType::TxApprove),
                    PinMatch::Normal
                )
            }
            RequestBody::ChangePin(c) => {
                assert_eq!(
                    pin_of(&c.proof, c.pin.index.get(), MsgType::ChangePin),
                    PinMatch::Normal
                );
                let b = open_block(c.pin.index.get(), &c.verifiers);
                assert_eq!(
                    h(&b.pin_verifier),
                    m["request"]["fields"]["new_pin_verifier"].as_str().unwrap()
                );
            }
            RequestBody::PairComplete(c) => {
                let b = open_block(c.pin.index.get(), &c.verifiers);
                assert_eq!(&b.pin_verifier, normal.expose());
                assert_eq!(&b.duress_verifier, duress.expose());
            }
            _ => {}
        }
        let mut r = unhex(&m["reply"]["datagram"]);
        assert!(r.len() <= len, "{name}: reply larger than request");
        let rep = open_reply(&keys.s2d, &mut r).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(rep.msg_type, req.msg_type);
        assert_eq!(rep.header.epoch.get(), EPOCH);
        assert_eq!(rep.body.as_bytes(), unhex(&m["reply"]["body"]).as_slice());
        let fields = &m["reply"]["fields"];
        let expected_status = fields
            .get("status")
            .filter(|s| s.is_object())
            .unwrap_or(fields);
        assert_eq!(&status_json(rep.body.status()), expected_status, "{name}");
    }
    // Offline and one-time codes verify on the server side.
    let off = &v["offline"];
    let vc = off["validation_code"].as_str().unwrap();
    assert_eq!(
        codes::offline_verify(
            &keys.offline,
            &normal,
            Some(&duress),
            vc,
            off["response_pin"].as_str().unwrap()
        )
        .unwrap(),
        PinMatch::Normal
    );
    assert_eq!(
        codes::offline_verify(
            &keys.offline,
            &normal,
            Some(&duress),
            vc,
            off["response_duress_pin"].as_str().unwrap()
        )
        .unwrap(),
        PinMatch::Duress
    );
    let params = OtpParams {
        length: 8,
        period_s: 30,
        alphabet: Alphabet::Digits,
    };
    for c in v["one_time_codes"]["codes"].as_array().unwrap() {
        let step = c["step"].as_u64().unwrap();
        let got = codes::otp_verify(
            &keys.otp,
            &normal,
            Some(&duress),
            params,
            c["code_pin"].as_str().unwrap(),
            step,
            None,
        );
        assert_eq!(got, Some((step, PinMatch::Normal)));
        let got = codes::otp_verify(
            &keys.otp,
            &normal,
            Some(&duress),
            params,
            c["code_duress_pin"].as_str().unwrap(),
            step,
            None,
        );
        assert_eq!(got, Some((step, PinMatch::Duress)));
    }
}

#[test]
fn totp_vectors_match_rfc6238_appendix_b() {
    // The table of RFC 6238 Appendix B, typed in from the RFC.
    let rfc: &[(u64, &str, &str)] = &[
        (59, "SHA1", "94287082"),
        (59, "SHA256", "46119246"),
        (59, "SHA512", "90693936"),
        (1_111_111_109, "SHA1", "07081804"),
        (1_111_111_109, "SHA256", "68084774"),
        (1_111_111_109, "SHA512", "25091201"),
        (1_111_111_111, "SHA1", "14050471"),
        (1_111_111_111, "SHA256", "67062674"),
        (1_111_111_111, "SHA512", "99943326"),
        (1_234_567_890, "SHA1", "89005924"),
        (1_234_567_890, "SHA256", "91819424"),
        (1_234_567_890, "SHA512", "93441116"),
        (2_000_000_000, "SHA1", "69279037"),
        (2_000_000_000, "SHA256", "90698825"),
        (2_000_000_000, "SHA512", "38618901"),
        (20_000_000_000, "SHA1", "65353130"),
        (20_000_000_000, "SHA256", "77737706"),
        (20_000_000_000, "SHA512", "47863826"),
    ];
    let v = load("totp.json");
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), rfc.len());
    for (case, (t, alg, code)) in cases.iter().zip(rfc) {
        assert_eq!(case["unix_s"].as_u64().unwrap(), *t);
        assert_eq!(case["algorithm"].as_str().unwrap(), *alg);
        assert_eq!(case["totp"].as_str().unwrap(), *code, "{t} {alg}");
    }
}

#[test]
fn replay_and_deeplink_vectors_decode() {
    let v = load("replay.json");
    let mut w = ReplayWindow::new();
    for s in v["steps"].as_array().unwrap() {
        assert_eq!(
            w.accept(s["counter"].as_u64().unwrap()),
            s["accepted"].as_bool().unwrap()
        );
    }
    let v = load("deeplinks.json");
    for l in v["links"].as_array().unwrap() {
        let link = Deeplink::parse(l["uri"].as_str().unwrap()).unwrap();
        assert_eq!(h(link.secret.expose()), l["secret"].as_str().unwrap());
        assert_eq!(link.service, l["service"].as_str().unwrap());
        assert_eq!(
            serde_json::to_value(&link.endpoints).unwrap(),
            l["endpoints"]
        );
    }
    let v = load("replay.json");
    for c in v["freshness"]["cases"].as_array().unwrap() {
        let fresh = clock::is_fresh(
            c["device_time_ms"].as_u64().unwrap(),
            c["server_time_ms"].as_u64().unwrap(),
            c["offset_ms"].as_i64().unwrap(),
        );
        assert_eq!(fresh, c["fresh"].as_bool().unwrap(), "{c}");
    }
    let v = load("codes.json");
    let otp_key = SecretBytes::new(unhex(&v["otp_key"]).try_into().unwrap());
    let normal = PinVerifier::from_bytes(unhex(&v["verifier"]).try_into().unwrap());
    let duress = PinVerifier::from_bytes(unhex(&v["duress_verifier"]).try_into().unwrap());
    let params = OtpParams {
        length: 6,
        period_s: 30,
        alphabet: Alphabet::Digits,
    };
    let mut last = None;
    for a in v["otp_validation"]["attempts"].as_array().unwrap() {
        assert_eq!(a["last_accepted_step_before"].as_u64(), last);
        let got = codes::otp_verify(
            &otp_key,
            &normal,
            Some(&duress),
            params,
            a["code"].as_str().unwrap(),
            1000,
            last,
        );
        assert_eq!(got.map(|g| g.0), a["accepted_step"].as_u64(), "{a}");
        if let Some((m, _)) = got {
            last = Some(m);
        }
    }
    for m in v["manual_codes"].as_array().unwrap() {
        let e = codes::parse_manual_code(m["code"].as_str().unwrap()).unwrap();
        assert_eq!(h(e.expose()), m["enrollment_secret"].as_str().unwrap());
    }
}
