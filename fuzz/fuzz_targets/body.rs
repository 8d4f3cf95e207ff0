//! Behind the AEAD: built with `insecure-fuzzing-aead`, every well-formed datagram "opens",
//! so the fuzzer reaches body parsing and the PIN proof checks. Whatever opens must re-seal
//! (identity cipher) to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zoftoken_proto::packet::{open_reply, open_request, seal};
use zoftoken_proto::pin::check_proof;
use zoftoken_proto::wire::RequestBody;
use zoftoken_proto::{PinMatch, PinRoot, PinVerifier, TokenSecret};

fuzz_target!(|data: &[u8]| {
    let keys = TokenSecret::from_bytes([7; 32]).keys();
    let normal = PinVerifier::from_bytes([1; 32]);
    let duress = PinVerifier::from_bytes([2; 32]);
    let root = PinRoot::from_bytes([3; 32]);
    let mut buf = data.to_vec();
    if let Ok(req) = open_request(&keys.d2s, &mut buf) {
        let mut again = [0u8; 1200];
        let n = seal(&keys.d2s, req.header, req.body.as_bytes(), &mut again).unwrap();
        assert_eq!(&again[..n - 16], &data[..n - 16]);
        let counter = req.header.counter.get();
        let id = req.header.token_id;
        let proof = match req.body {
            RequestBody::Open(o) => Some((o.proof, o.pin.index.get())),
            RequestBody::TxApprove(a) => Some((a.proof, a.pin.index.get())),
            RequestBody::ChangePin(c) => {
                // The sealed block (identity cipher here) parses or is refused, never panics.
                if let Ok(plain) = root
                    .key(c.pin.index.get())
                    .unwrap()
                    .open_verifiers(req.header, &c.verifiers)
                {
                    let _ = zoftoken_proto::wire::VerifierBlock::parse(&plain);
                }
                Some((c.proof, c.pin.index.get()))
            }
            _ => None,
        };
        if let Some((p, index)) = proof {
            // Parsing accepted the index, so it has a key.
            let key = root.key(index).unwrap();
            let m = check_proof(&p, &key, &normal, Some(&duress), req.msg_type, &id, counter);
            let expected = if p == normal.proof(&key, req.msg_type, &id, counter) {
                PinMatch::Normal
            } else if p == duress.proof(&key, req.msg_type, &id, counter) {
                PinMatch::Duress
            } else {
                PinMatch::Wrong
            };
            assert_eq!(m, expected);
        }
        let _ = req.body.device_time_ms();
    }
    let mut buf = data.to_vec();
    if let Ok(rep) = open_reply(&keys.s2d, &mut buf) {
        let _ = rep.body.status();
    }
});
