//! A walk-through of the device protocol in one process, until the real server exists: a
//! minimal *demo* responder (built from `zoftoken-proto` primitives, keeping one token in
//! memory, not the engine) enrolls a user, and the real device state machine pairs with the
//! deeplink, opens with the PIN, reads the status, shows a one-time code, answers an offline
//! challenge and closes. Every datagram goes through the real codec, and every PIN request
//! uses a PIN key of its own from the ring the pairing gave the device (SPEC.md §6.3).
//!
//! Run: `cargo run -p zoftoken-device --example demo`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::time::{SystemTime, UNIX_EPOCH};

use rand_core::{OsRng, RngCore};
use zerocopy::IntoBytes;
use zoftoken_device::{MemoryStore, Pairing, Request};
use zoftoken_proto::codes::{self, OtpParams};
use zoftoken_proto::deeplink::Deeplink;
use zoftoken_proto::packet::{open_request, seal_reply};
use zoftoken_proto::pairing::Ephemeral;
use zoftoken_proto::pin::check_proof;
use zoftoken_proto::wire::{
    Alphabet, Be16, Be32, PairInitReply, RequestBody, StatusBlock, VerifierBlock,
    SERVICE_FLAG_DURESS,
};
use zoftoken_proto::*;

const WINDOW_MS: u64 = 600_000;
const EPOCH: u32 = 1;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    OsRng.fill_bytes(&mut b);
    b
}

/// The demo responder: one pending token, then one paired token.
struct DemoServer {
    token_id: TokenId,
    enrollment: EnrollmentKeys,
    secret: Option<TokenSecret>,
    /// The token's PIN root (random here; the real server derives it from its master key
    /// and the token secret). It derives the PIN key of every PIN request.
    pin_root: PinRoot,
    verifiers: Option<(PinVerifier, Option<PinVerifier>)>,
    open_until: u64,
}

impl DemoServer {
    fn handle(&mut self, datagram: &mut [u8], out: &mut [u8]) -> Option<usize> {
        let now = now_ms();
        if datagram.get(1) == Some(&MsgType::PairInit.request_byte()) {
            let req = open_request(&self.enrollment.d2s, datagram).ok()?;
            let RequestBody::PairInit(body) = req.body else {
                return None;
            };
            let server = Ephemeral::from_random(random());
            let agreement = server
                .server_agree(&body.device_public, &self.enrollment.pairing_id)
                .ok()?;
            self.secret = Some(agreement.secret.clone());
            let reply = PairInitReply {
                status: StatusBlock::new(ReplyStatus::Ok, WireState::Pending, 3, 0, now),
                server_public: server.public(),
                token_id: self.token_id.0,
                otp_length: 6,
                otp_alphabet: Alphabet::Digits as u8,
                otp_period_s: Be16::new(30),
                window_s: Be32::new((WINDOW_MS / 1000) as u32),
                service_flags: SERVICE_FLAG_DURESS,
                reserved: [0; 3],
                pin_root_sealed: agreement.seal_pin_root(&self.pin_root),
            };
            return seal_reply(
                &self.enrollment.s2d,
                EPOCH,
                req.header,
                reply.as_bytes(),
                out,
            )
            .ok();
        }
        let keys = self.secret.as_ref()?.keys();
        let req = open_request(&keys.d2s, datagram).ok()?;
        let header = *req.header;
        let counter = req.header.counter.get();
        let state = |until: u64| {
            if until > now {
                (WireState::Open, until)
            } else {
                (WireState::Closed, 0)
            }
        };
        let status = match req.body {
            RequestBody::PairComplete(p) => {
                // The verifiers are sealed under the PIN key the request names.
                let key = self.pin_root.key(p.pin.index.get()).ok()?;
                let block = key.open_verifiers(&header, &p.verifiers).ok()?;
                let block = VerifierBlock::parse(&block).ok()?;
                let duress = block
                    .has_duress()
                    .then(|| PinVerifier::from_bytes(block.duress_verifier));
                self.verifiers = Some((PinVerifier::from_bytes(block.pin_verifier), duress));
                ReplyStatus::Ok
            }
            RequestBody::Open(o) => {
                let (normal, duress) = self.verifiers.as_ref()?;
                let key = self.pin_root.key(o.pin.index.get()).ok()?;
                match check_proof(
                    &o.proof,
                    &key,
                    normal,
                    duress.as_ref(),
                    MsgType::Open,
                    &self.token_id.0,
                    counter,
                ) {
                    PinMatch::Wrong => ReplyStatus::WrongPin,
                    m => {
                        println!(
                            "  [server] token opened{}",
                            if m == PinMatch::Duress {
                                " UNDER DURESS"
                            } else {
                                ""
                            }
                        );
                        self.open_until = now + WINDOW_MS;
                        ReplyStatus::Ok
                    }
                }
            }
            RequestBody::Close(_) => {
                self.open_until = 0;
                ReplyStatus::Ok
            }
            _ => ReplyStatus::Ok,
        };
        let (st, until) = state(self.open_until);
        let block = StatusBlock::new(status, st, 3, until, now);
        seal_reply(&keys.s2d, EPOCH, &header, block.as_bytes(), out).ok()
    }
}

fn main() {
    println!("ZofToken protocol demo (in-process; the UDP server arrives in a later release)\n");
    let (service, username) = ("Banco Ejemplo", "alice@example.com");
    // Enrollment, as the API will do it: a deeplink and a manual code.
    let secret = EnrollmentSecret::new(random::<32>().to_vec());
    let link = Deeplink {
        secret: secret.clone(),
        service: service.into(),
        endpoints: vec!["127.0.0.1:4500".into()],
        details_url: None,
    };
    let uri = link.to_uri().expect("valid deeplink");
    println!("1. enrolled {username} in {service}");
    println!("   deeplink:    {uri}");
    println!(
        "   manual code: {}  (an alternative to the link)\n",
        codes::manual_code(&random())
    );
    let mut server = DemoServer {
        token_id: TokenId::derive(service, username),
        enrollment: secret.keys(),
        secret: None,
        pin_root: PinRoot::from_bytes(random()),
        verifiers: None,
        open_until: 0,
    };
    let (mut out, mut reply) = ([0u8; 1200], [0u8; 1200]);

    // Pairing: PAIR_INIT, then PAIR_COMPLETE with the PIN.
    let mut pairing = Pairing::from_deeplink(&Deeplink::parse(&uri).expect("parses"));
    let tx = pairing
        .init_request(now_ms(), random(), &mut out)
        .expect("PAIR_INIT");
    let n = server
        .handle(&mut out[..tx.len], &mut reply)
        .expect("server answers");
    let offer = pairing
        .handle_init_reply(&mut reply[..n])
        .expect("authentic reply");
    println!(
        "2. PAIR_INIT   {} bytes -> {} bytes; token id {}",
        tx.len, n, offer.token_id
    );
    let pin = PinVerifier::derive("2468", &offer.token_id).expect("PIN");
    let duress = PinVerifier::derive("1357", &offer.token_id).expect("PIN");
    let tx = pairing
        .complete_request(&pin, Some(&duress), now_ms(), &mut out)
        .expect("PAIR_COMPLETE");
    let n = server
        .handle(&mut out[..tx.len], &mut reply)
        .expect("server answers");
    let mut store = MemoryStore::default();
    let mut token = pairing
        .handle_complete_reply(&mut store, &mut reply[..n])
        .expect("authentic reply")
        .expect("paired");
    println!(
        "   PAIR_COMPLETE {} bytes -> {} bytes; paired, PIN 2468, duress PIN 1357\n",
        tx.len, n
    );

    let mut send = |token: &mut zoftoken_device::Token, req: Request<'_>, label: &str| {
        let tx = token
            .request(&mut store, req, now_ms(), &mut out)
            .expect("request");
        let n = server
            .handle(&mut out[..tx.len], &mut reply)
            .expect("server answers");
        let r = token
            .handle_reply(&mut reply[..n])
            .expect("authentic reply");
        let s = r.status();
        println!(
            "   {label:<13} counter {:>2}, {} -> {} bytes: {:?}, state {:?}{}",
            tx.counter,
            tx.len,
            n,
            s.status,
            s.state,
            if s.open_until_ms > 0 {
                format!(
                    ", open for {} s",
                    (s.open_until_ms - s.server_time_ms) / 1000
                )
            } else {
                String::new()
            }
        );
    };
    println!("3. online operations");
    let wrong = PinVerifier::derive("0000", &token.token_id()).expect("PIN");
    send(&mut token, Request::Open(&wrong), "OPEN (wrong)");
    send(&mut token, Request::Open(&pin), "OPEN");
    send(&mut token, Request::Status, "STATUS");
    send(&mut token, Request::Close, "CLOSE");
    send(&mut token, Request::Open(&duress), "OPEN (duress)");

    println!("\n4. offline, no network");
    let params = OtpParams {
        length: 6,
        period_s: 30,
        alphabet: Alphabet::Digits,
    };
    println!(
        "   one-time code now: {}",
        token.one_time_code(&pin, now_ms()).expect("code")
    );
    let validation = codes::group4(&codes::validation_code(8, &random::<8>()).expect("code"));
    let response = token.offline_response(&pin, &validation).expect("response");
    println!("   operator's validation code {validation} -> app's response {response}");
    let keys = server.secret.as_ref().expect("paired").keys();
    let (normal, d) = server.verifiers.as_ref().expect("paired");
    let verdict = codes::offline_verify(&keys.offline, normal, d.as_ref(), &validation, &response)
        .expect("valid");
    let step = params.step(now_ms());
    let code = token.one_time_code(&pin, now_ms()).expect("code");
    let otp = codes::otp_verify(&keys.otp, normal, d.as_ref(), params, &code, step, None);
    println!(
        "   server checks: offline response {verdict:?}, one-time code {:?}",
        otp.map(|(_, m)| m)
    );
    println!("\nDone. See proto-spec/SPEC.md for the protocol and README.md for the test suite.");
}
