//! Cheap checks and in-place parsing on arbitrary bytes: no panic, and whatever parses
//! re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zerocopy::IntoBytes;
use zoftoken_proto::deeplink::Deeplink;
use zoftoken_proto::wire::{
    check_reply, check_request, MsgType, ReplyBody, RequestBody, HEADER_LEN,
};
use zoftoken_proto::{codes, wire::Alphabet};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = check_request(data) {
        assert_eq!(req.header.as_bytes(), &data[..HEADER_LEN]);
        assert_eq!(data.len(), req.msg_type.request_len());
        assert_eq!(req.msg_type.request_byte(), data[1]);
        assert_ne!(req.counter(), 0);
    }
    if let Ok((t, h)) = check_reply(data) {
        assert_eq!(h.as_bytes(), &data[..HEADER_LEN]);
        assert_eq!(data.len(), t.reply_len());
        assert!(t.reply_len() <= t.request_len());
    }
    // Every body layout, as if the bytes had been decrypted.
    for t in MsgType::ALL {
        if let Ok(body) = RequestBody::parse(t, data) {
            assert_eq!(body.as_bytes(), data);
            assert_eq!(data.len(), t.request_body_len());
        }
        if let Ok(body) = ReplyBody::parse(t, data) {
            assert_eq!(body.as_bytes(), data);
            assert_eq!(data.len(), t.reply_body_len());
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(link) = Deeplink::parse(text) {
            // The canonical encoding parses back to the same link.
            let uri = link.to_uri().expect("a parsed link encodes");
            assert_eq!(Deeplink::parse(&uri).expect("canonical link parses"), link);
        }
        for a in [Alphabet::Digits, Alphabet::Base32] {
            if let Ok(n) = codes::normalize(text, a) {
                assert_eq!(codes::normalize(&n, a).as_deref(), Ok(n.as_str()));
            }
        }
        let _ = codes::parse_manual_code(text);
    }
});
