//! Property tests of the codec: encode/parse round trips, and that no altered packet (any
//! single-bit flip, truncation or extension) is ever accepted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_arguments,
    missing_docs
)]

use proptest::prelude::*;
use zerocopy::{FromBytes, IntoBytes};
use zoftoken_proto::packet::{open_reply, open_request, seal_reply, seal_request};
use zoftoken_proto::wire::*;
use zoftoken_proto::TokenSecret;

fn msg_type() -> impl Strategy<Value = MsgType> {
    proptest::sample::select(MsgType::ALL.to_vec())
}

/// A request body of the right length whose zero fields are zero (random elsewhere).
fn valid_request_body(t: MsgType, seed: &[u8]) -> Vec<u8> {
    let mut body: Vec<u8> = seed
        .iter()
        .cycle()
        .take(t.request_body_len())
        .copied()
        .collect();
    let zero = |b: &mut Vec<u8>, from: usize, to: usize| b[from..to].fill(0);
    match t {
        MsgType::PairInit => zero(&mut body, 40, 112),
        // A PIN index below 2^24, then four zero bytes; the sealed blocks are opaque here.
        MsgType::PairComplete | MsgType::ChangePin | MsgType::Open => {
            body[8] = 0;
            zero(&mut body, 12, 16);
        }
        MsgType::Close | MsgType::Status | MsgType::TimeSync => zero(&mut body, 8, 24),
        MsgType::TxFetch => zero(&mut body, 8, 246),
        MsgType::TxDeny => zero(&mut body, 24, 48),
        MsgType::TxApprove => {
            body[24] = 0;
            zero(&mut body, 28, 32);
        }
    }
    body
}

/// A reply body of the right length that parses.
fn valid_reply_body(t: MsgType, seed: &[u8]) -> Vec<u8> {
    let mut body: Vec<u8> = seed
        .iter()
        .cycle()
        .take(t.reply_body_len())
        .copied()
        .collect();
    body[3] = 0; // status block reserved byte
    match t {
        MsgType::PairInit => body[77..80].fill(0),
        MsgType::TxApprove | MsgType::TxDeny => body[37..40].fill(0),
        MsgType::TxFetch => {
            let len = usize::from(body[45]) % (TX_MESSAGE_MAX + 1);
            body[44..46].copy_from_slice(&(len as u16).to_be_bytes());
            body[46 + len..].fill(0);
        }
        _ => {}
    }
    body
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn header_round_trips(t in msg_type(), id in any::<[u8; 16]>(), counter in 1u64.., epoch in 1u32..) {
        let h = Header::request(t, id, counter);
        let parsed = Header::read_from_bytes(h.as_bytes()).unwrap();
        prop_assert_eq!(parsed, h);
        let r = Header::reply_to(&h, epoch);
        prop_assert_eq!(MsgType::from_reply_byte(r.msg_type), Some(t));
        prop_assert_eq!(r.counter.get(), counter);
        prop_assert_eq!(r.token_id, id);
    }

    /// seal then open gives back header and body; every single-bit flip, every truncation and
    /// an extension are rejected.
    #[test]
    fn requests_round_trip_and_resist_tampering(
        t in msg_type(), secret in any::<[u8; 32]>(), id in any::<[u8; 16]>(),
        counter in 1u64.., seed in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let keys = TokenSecret::from_bytes(secret).keys();
        let body = valid_request_body(t, &seed);
        let mut out = [0u8; MAX_DATAGRAM];
        let n = seal_request(&keys.d2s, t, id, counter, &body, &mut out).unwrap();
        prop_assert_eq!(n, t.request_len());
        let sealed = out[..n].to_vec();
        let mut d = sealed.clone();
        let opened = open_request(&keys.d2s, &mut d).unwrap();
        prop_assert_eq!(opened.msg_type, t);
        prop_assert_eq!(*opened.header, Header::request(t, id, counter));
        prop_assert_eq!(opened.body.as_bytes(), body.as_slice());
        for bit in 0..n * 8 {
            let mut d = sealed.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(open_request(&keys.d2s, &mut d).is_err(), "bit {} accepted", bit);
        }
        for len in 0..n {
            let mut d = sealed[..len].to_vec();
            prop_assert!(open_request(&keys.d2s, &mut d).is_err(), "truncated to {}", len);
        }
        let mut d = sealed.clone();
        d.push(0);
        prop_assert!(open_request(&keys.d2s, &mut d).is_err());
        // The other direction's key and a reply parser refuse it too.
        let mut d = sealed.clone();
        prop_assert!(open_request(&keys.s2d, &mut d).is_err());
        let mut d = sealed.clone();
        prop_assert!(open_reply(&keys.d2s, &mut d).is_err());
    }

    #[test]
    fn replies_round_trip_and_resist_tampering(
        t in msg_type(), secret in any::<[u8; 32]>(), id in any::<[u8; 16]>(),
        counter in 1u64.., epoch in 1u32.., seed in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let keys = TokenSecret::from_bytes(secret).keys();
        let body = valid_reply_body(t, &seed);
        let request = Header::request(t, id, counter);
        let mut out = [0u8; MAX_DATAGRAM];
        let n = seal_reply(&keys.s2d, epoch, &request, &body, &mut out).unwrap();
        prop_assert_eq!(n, t.reply_len());
        prop_assert!(n <= t.request_len());
        let sealed = out[..n].to_vec();
        let mut d = sealed.clone();
        let opened = open_reply(&keys.s2d, &mut d).unwrap();
        prop_assert_eq!(*opened.header, Header::reply_to(&request, epoch));
        prop_assert_eq!(opened.body.as_bytes(), body.as_slice());
        for bit in 0..n * 8 {
            let mut d = sealed.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(open_reply(&keys.s2d, &mut d).is_err(), "bit {} accepted", bit);
        }
        for len in 0..n {
            let mut d = sealed[..len].to_vec();
            prop_assert!(open_reply(&keys.s2d, &mut d).is_err());
        }
        let mut d = sealed.clone();
        d.push(0);
        prop_assert!(open_reply(&keys.s2d, &mut d).is_err());
    }

    /// Arbitrary bytes never panic the cheap checks or the body parsers, and whatever parses
    /// re-encodes to the same bytes.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1300)) {
        if let Ok(r) = check_request(&data) {
            prop_assert_eq!(r.header.as_bytes(), &data[..HEADER_LEN]);
        }
        let _ = check_reply(&data);
        for t in MsgType::ALL {
            if let Ok(b) = RequestBody::parse(t, &data) {
                prop_assert_eq!(b.as_bytes(), data.as_slice());
            }
            if let Ok(b) = ReplyBody::parse(t, &data) {
                prop_assert_eq!(b.as_bytes(), data.as_slice());
            }
        }
    }
}
