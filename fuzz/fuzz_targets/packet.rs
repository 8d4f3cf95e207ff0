//! Full packet open with the real AEAD under the session vectors' keys. A datagram that opens
//! must be exactly what sealing its plaintext gives (no forged or malleated packet is ever
//! accepted); the seed corpus holds the vectors' genuine packets, which the fuzzer mutates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zoftoken_proto::packet::{open_reply, open_request, seal, seal_reply};
use zoftoken_proto::{EnrollmentSecret, TokenSecret};

/// From `proto-spec/vectors/session.json`.
const TOKEN_SECRET: &str = "88260624826c79a6ce4be977867acbe379e072f0dd936e2b88e75e933af11b86";
const ENROLLMENT_SECRET: &str = "7f207addebae7a1fd58eabd6342f6b9c176ba1aa8c39d24daa95f3ed620560b9";

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let token = TokenSecret::from_bytes(hex32(TOKEN_SECRET)).keys();
    let enrollment = EnrollmentSecret::new(hex32(ENROLLMENT_SECRET).to_vec()).keys();
    for (d2s, s2d) in [(&token.d2s, &token.s2d), (&enrollment.d2s, &enrollment.s2d)] {
        let mut buf = data.to_vec();
        if let Ok(req) = open_request(d2s, &mut buf) {
            let mut again = [0u8; 1200];
            let n = seal(d2s, req.header, req.body.as_bytes(), &mut again).unwrap();
            assert_eq!(
                &again[..n],
                data,
                "an accepted request must be a genuine one"
            );
            // The server's reply to it is never larger.
            let reply_len = req.msg_type.reply_len();
            assert!(reply_len <= data.len());
            let body = vec![0u8; req.msg_type.reply_body_len()];
            let m = seal_reply(s2d, 1, req.header, &body, &mut again).unwrap();
            assert_eq!(m, reply_len);
        }
        let mut buf = data.to_vec();
        if let Ok(rep) = open_reply(s2d, &mut buf) {
            let mut again = [0u8; 1200];
            let n = seal(s2d, rep.header, rep.body.as_bytes(), &mut again).unwrap();
            assert_eq!(&again[..n], data, "an accepted reply must be a genuine one");
        }
    }
});
