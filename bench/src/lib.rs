//! Benchmarks of the ZofToken codec (criterion, in `benches/`) and the fixtures they share: a
//! paired token's keys and one genuine request and reply datagram of every message type.
//! Results and how to reproduce them are in BENCHMARKS.md. [`echo`] is the UDP echo server
//! (binary `udp-echo`) that is the baseline of the server's load test, and with its
//! [`echo::Floor`] the floor: the work every server of the protocol must do.
//!
//! This crate measures; it does not test behaviour (the other crates' tests do).
#![forbid(unsafe_code)]

pub mod echo;
pub mod engine_fixture;

use zoftoken_proto::packet::{seal_reply, seal_request};
use zoftoken_proto::wire::{Header, MsgType, MAX_DATAGRAM};
use zoftoken_proto::{TokenKeys, TokenSecret};

/// A token's keys and one sealed request per message type (bodies of zeros with a device time:
/// layout-valid, which is all the codec's cost depends on).
pub struct Fixture {
    /// The token's keys.
    pub keys: TokenKeys,
    /// The token id.
    pub token_id: [u8; 16],
    /// `(type, request datagram, reply body)` for every type but PAIR_INIT.
    pub packets: Vec<(MsgType, Vec<u8>, Vec<u8>)>,
}

impl Fixture {
    /// Builds the fixture.
    pub fn new() -> Fixture {
        let keys = TokenSecret::from_bytes([0x42; 32]).keys();
        let token_id = [0x17; 16];
        let mut packets = Vec::new();
        for t in MsgType::ALL.into_iter().filter(|t| *t != MsgType::PairInit) {
            let mut body = vec![0u8; t.request_body_len()];
            if let Some(time) = body.get_mut(..8) {
                time.copy_from_slice(&1_800_000_000_000u64.to_be_bytes());
            }
            let mut out = [0u8; MAX_DATAGRAM];
            let n = seal_request(&keys.d2s, t, token_id, 7, &body, &mut out).unwrap_or(0);
            packets.push((
                t,
                out.get(..n).unwrap_or_default().to_vec(),
                vec![0u8; t.reply_body_len()],
            ));
        }
        Fixture {
            keys,
            token_id,
            packets,
        }
    }

    /// What a server does per packet: open the request in place, seal the reply. Returns the
    /// reply length (0 if the request did not open, which the benchmarks treat as a bug).
    pub fn server_round(&self, request: &mut [u8], reply_body: &[u8], out: &mut [u8]) -> usize {
        let header = match zoftoken_proto::packet::open_request(&self.keys.d2s, request) {
            Ok(opened) => opened.header,
            Err(_) => return 0,
        };
        seal_reply(&self.keys.s2d, 1, header, reply_body, out).unwrap_or(0)
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

/// The header of a request, for the header benchmark.
pub fn request_header(t: MsgType) -> Header {
    Header::request(t, [0x17; 16], 7)
}
