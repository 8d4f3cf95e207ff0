//! A minimal server side for the device tests, built from the codec's server primitives: it
//! pairs one token (sealing its PIN root into the PAIR_INIT reply), opens PIN-bearing requests
//! with the PIN key of their index, checks proofs and opens sealed verifiers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    dead_code,
    missing_docs
)]

use zerocopy::IntoBytes;
use zoftoken_device::{MemoryStore, Pairing, Token};
use zoftoken_proto::deeplink::Deeplink;
use zoftoken_proto::packet::{open_request, seal_reply};
use zoftoken_proto::pairing::Ephemeral;
use zoftoken_proto::pin::check_proof;
use zoftoken_proto::wire::{
    Alphabet, Be16, Be32, PairInitReply, RequestBody, StatusBlock, TxDecideReply, VerifierBlock,
    SERVICE_FLAG_DURESS,
};
use zoftoken_proto::{
    EnrollmentKeys, EnrollmentSecret, MsgType, PinMatch, PinRoot, PinVerifier, ReplyStatus,
    TokenId, TokenSecret, TxState, WireState,
};

pub const NOW: u64 = 1_800_000_000_000;

/// What the server made of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub msg_type: MsgType,
    pub counter: u64,
    /// The PIN index the request named (PIN-bearing requests).
    pub index: Option<u32>,
    /// The proof check's outcome (requests with a proof).
    pub pin: Option<PinMatch>,
}

pub struct MiniServer {
    pub enrollment: EnrollmentKeys,
    pub token_id: TokenId,
    /// The token's PIN root: only the server has it after pairing.
    pub root: PinRoot,
    pub secret: Option<TokenSecret>,
    pub verifiers: Option<(PinVerifier, Option<PinVerifier>)>,
    pub seen: Vec<Seen>,
}

impl MiniServer {
    pub fn new(enrollment: &EnrollmentSecret, token_id: TokenId, root: [u8; 32]) -> MiniServer {
        MiniServer {
            enrollment: enrollment.keys(),
            token_id,
            root: PinRoot::from_bytes(root),
            secret: None,
            verifiers: None,
            seen: Vec::new(),
        }
    }

    /// Answers one request datagram (a copy of it is opened); `None`: dropped.
    pub fn handle(&mut self, datagram: &[u8], out: &mut [u8]) -> Option<usize> {
        let mut buf = datagram.to_vec();
        if datagram.get(1) == Some(&MsgType::PairInit.request_byte()) {
            let req = open_request(&self.enrollment.d2s, &mut buf).ok()?;
            let RequestBody::PairInit(body) = req.body else {
                return None;
            };
            let server = Ephemeral::from_random([0x33; 32]);
            let agreement = server
                .server_agree(&body.device_public, &self.enrollment.pairing_id)
                .ok()?;
            self.secret = Some(agreement.secret.clone());
            let reply = PairInitReply {
                status: StatusBlock::new(ReplyStatus::Ok, WireState::Pending, 3, 0, NOW),
                server_public: server.public(),
                token_id: self.token_id.0,
                otp_length: 6,
                otp_alphabet: Alphabet::Digits as u8,
                otp_period_s: Be16::new(30),
                window_s: Be32::new(600),
                service_flags: SERVICE_FLAG_DURESS,
                reserved: [0; 3],
                pin_root_sealed: agreement.seal_pin_root(&self.root),
            };
            return seal_reply(&self.enrollment.s2d, 1, req.header, reply.as_bytes(), out).ok();
        }
        let keys = self.secret.as_ref()?.keys();
        let req = open_request(&keys.d2s, &mut buf).ok()?;
        let header = *req.header;
        let counter = header.counter.get();
        let id = self.token_id.0;
        let mut seen = Seen {
            msg_type: req.msg_type,
            counter,
            index: None,
            pin: None,
        };
        let check = |proof: &[u8; 16], index: u32, t: MsgType, seen: &mut Seen| {
            let key = self.root.key(index).ok()?;
            let (normal, duress) = self.verifiers.as_ref()?;
            let m = check_proof(proof, &key, normal, duress.as_ref(), t, &id, counter);
            seen.index = Some(index);
            seen.pin = Some(m);
            Some((m, key))
        };
        let status = match req.body {
            RequestBody::PairComplete(p) => {
                let index = p.pin.index.get();
                let key = self.root.key(index).ok()?;
                let block = key.open_verifiers(&header, &p.verifiers).ok()?;
                let block = VerifierBlock::parse(&block).ok()?;
                let duress = block
                    .has_duress()
                    .then(|| PinVerifier::from_bytes(block.duress_verifier));
                self.verifiers = Some((PinVerifier::from_bytes(block.pin_verifier), duress));
                seen.index = Some(index);
                ReplyStatus::Ok
            }
            RequestBody::Open(o) => {
                match check(&o.proof, o.pin.index.get(), MsgType::Open, &mut seen)?.0 {
                    PinMatch::Wrong => ReplyStatus::WrongPin,
                    _ => ReplyStatus::Ok,
                }
            }
            RequestBody::TxApprove(t) => {
                let (m, _) = check(&t.proof, t.pin.index.get(), MsgType::TxApprove, &mut seen)?;
                self.seen.push(seen);
                let state = if m == PinMatch::Wrong {
                    TxState::Waiting
                } else {
                    TxState::Approved
                };
                let reply = TxDecideReply {
                    status: StatusBlock::new(ReplyStatus::Ok, WireState::Closed, 3, 0, NOW),
                    tx_id: t.tx_id,
                    tx_state: state as u8,
                    reserved: [0; 3],
                };
                return seal_reply(&keys.s2d, 1, &header, reply.as_bytes(), out).ok();
            }
            RequestBody::TxDeny(t) => {
                self.seen.push(seen);
                let reply = TxDecideReply {
                    status: StatusBlock::new(ReplyStatus::Ok, WireState::Closed, 3, 0, NOW),
                    tx_id: t.tx_id,
                    tx_state: TxState::Denied as u8,
                    reserved: [0; 3],
                };
                return seal_reply(&keys.s2d, 1, &header, reply.as_bytes(), out).ok();
            }
            RequestBody::ChangePin(c) => {
                let (m, key) = check(&c.proof, c.pin.index.get(), MsgType::ChangePin, &mut seen)?;
                if m == PinMatch::Normal {
                    let block = key.open_verifiers(&header, &c.verifiers).ok()?;
                    let block = VerifierBlock::parse(&block).ok()?;
                    let duress = block
                        .has_duress()
                        .then(|| PinVerifier::from_bytes(block.duress_verifier));
                    self.verifiers = Some((PinVerifier::from_bytes(block.pin_verifier), duress));
                    ReplyStatus::Ok
                } else {
                    ReplyStatus::WrongPin
                }
            }
            _ => ReplyStatus::Ok,
        };
        self.seen.push(seen);
        let block = StatusBlock::new(status, WireState::Closed, 3, 0, NOW);
        seal_reply(&keys.s2d, 1, &header, block.as_bytes(), out).ok()
    }
}

/// A phone and the mini server, every datagram the phone sent recorded in order.
pub struct World {
    pub server: MiniServer,
    pub store: MemoryStore,
    pub sent: Vec<Vec<u8>>,
}

/// Pairs a device with `pin` (and `duress`) through the mini server; `lost` PAIR_COMPLETE
/// attempts are sent but never delivered before the one that is.
pub fn pair(
    root: [u8; 32],
    pin: &str,
    duress: Option<&str>,
    lost: usize,
) -> (World, Token, PinVerifier, Option<PinVerifier>) {
    let secret = EnrollmentSecret::new(vec![0x5e; 32]);
    let link = Deeplink {
        secret: secret.clone(),
        service: "Banco Ejemplo".into(),
        endpoints: vec!["127.0.0.1:4500".into()],
        details_url: None,
    };
    let token_id = TokenId::derive("Banco Ejemplo", "alice");
    let mut world = World {
        server: MiniServer::new(&secret, token_id, root),
        store: MemoryStore::default(),
        sent: Vec::new(),
    };
    let mut pairing = Pairing::from_deeplink(&link);
    let (mut out, mut reply) = ([0u8; 1200], [0u8; 1200]);
    let tx = pairing.init_request(NOW, [0x44; 32], &mut out).unwrap();
    assert_eq!(tx.len, 160, "PAIR_INIT datagram");
    world.sent.push(out[..tx.len].to_vec());
    let n = world.server.handle(&out[..tx.len], &mut reply).unwrap();
    assert_eq!(n, 160, "PAIR_INIT reply");
    let offer = pairing.handle_init_reply(&mut reply[..n]).unwrap();
    assert_eq!(offer.token_id, token_id);
    let pin_v = PinVerifier::derive(pin, &token_id).unwrap();
    let duress_v = duress.map(|d| PinVerifier::derive(d, &token_id).unwrap());
    for _ in 0..lost {
        let tx = pairing
            .complete_request(&pin_v, duress_v.as_ref(), NOW, &mut out)
            .unwrap();
        world.sent.push(out[..tx.len].to_vec());
    }
    let tx = pairing
        .complete_request(&pin_v, duress_v.as_ref(), NOW, &mut out)
        .unwrap();
    assert_eq!(tx.len, 152, "PAIR_COMPLETE datagram");
    world.sent.push(out[..tx.len].to_vec());
    let n = world.server.handle(&out[..tx.len], &mut reply).unwrap();
    let token = pairing
        .handle_complete_reply(&mut world.store, &mut reply[..n])
        .unwrap()
        .unwrap();
    (world, token, pin_v, duress_v)
}

impl World {
    /// Sends `request` (recorded), delivers it and the reply unless `lose` is set.
    pub fn send(
        &mut self,
        token: &mut Token,
        request: zoftoken_device::Request<'_>,
        lose: bool,
    ) -> Option<zoftoken_device::Reply> {
        let (mut out, mut reply) = ([0u8; 1200], [0u8; 1200]);
        let tx = token
            .request(&mut self.store, request, NOW, &mut out)
            .unwrap();
        self.sent.push(out[..tx.len].to_vec());
        if lose {
            return None;
        }
        let n = self.server.handle(&out[..tx.len], &mut reply)?;
        Some(token.handle_reply(&mut reply[..n]).unwrap())
    }
}
