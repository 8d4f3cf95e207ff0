//! Wire layouts of SPEC.md §2 and §7: the fixed header, every message body, and the cheap
//! checks (size, version, type, length) done before any cryptography.
//!
//! Every struct here is `#[repr(C)]`, unaligned and parsed in place with `zerocopy`; integers
//! are big-endian. One private module per part of a datagram: `msg_type` (the request types
//! and their lengths), `header` (the fixed header and the cheap checks), `status` (the status
//! block that starts every reply, and the states it carries), `alphabet` (the one-time-code
//! alphabets a PAIR_INIT reply names), then the body layouts per message family (`pairing`,
//! `token`, `transaction`, with the PIN fields they share in `pin`), and `body` (a decrypted
//! body parsed by type). Everything is re-exported here: `zoftoken_proto::wire::Header`,
//! `wire::RequestBody`, … are the paths to use.
//!
//! This module depends on nothing else of the crate but its error type: the codes, keys and
//! PIN-key modules build on it, never the reverse.

use zerocopy::byteorder::{BigEndian, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::error::DropReason;

mod alphabet;
mod body;
mod header;
mod msg_type;
mod pairing;
mod pin;
mod status;
mod token;
mod transaction;

pub use alphabet::{Alphabet, BASE32_SYMBOLS};
pub use body::{ReplyBody, RequestBody};
pub use header::{check_reply, check_request, Header, UncheckedRequest};
pub use msg_type::MsgType;
pub use pairing::{PairCompleteRequest, PairInitReply, PairInitRequest, SERVICE_FLAG_DURESS};
pub use pin::{
    PinIndex, VerifierBlock, PIN_INDEX_LIMIT, SEALED_VERIFIERS_LEN, VERIFIER_FLAG_DURESS,
};
pub use status::{ReplyStatus, StatusBlock, TxState, WireState};
pub use token::{ChangePinRequest, OpenRequest, PlainRequest};
pub use transaction::{TxDecideReply, TxDecideRequest, TxFetchReply, TxFetchRequest};

/// Protocol version carried in every header (SPEC.md §1.3).
pub const VERSION: u8 = 1;
/// Length of the fixed header (SPEC.md §2).
pub const HEADER_LEN: usize = 32;
/// Length of the Poly1305 tag that ends every packet (SPEC.md §4).
pub const TAG_LEN: usize = 16;
/// Largest datagram either side may send or must accept (SPEC.md §1.2).
pub const MAX_DATAGRAM: usize = 1200;
/// Length of a token id (SPEC.md §2.2).
pub const TOKEN_ID_LEN: usize = 16;
/// Bit set in the message type of every reply (SPEC.md §1.4).
pub const REPLY_BIT: u8 = 0x80;
/// Longest transaction message carried by TX_FETCH (SPEC.md §7.9), in bytes of UTF-8.
pub const TX_MESSAGE_MAX: usize = 200;

/// Big-endian `u16` on the wire.
pub type Be16 = U16<BigEndian>;
/// Big-endian `u32` on the wire.
pub type Be32 = U32<BigEndian>;
/// Big-endian `u64` on the wire.
pub type Be64 = U64<BigEndian>;

/// Views `bytes` as `T` if the length is exactly `T`'s.
fn cast<T: FromBytes + KnownLayout + Immutable>(bytes: &[u8]) -> Result<&T, DropReason> {
    T::ref_from_bytes(bytes).map_err(|_| DropReason::WrongLength)
}

/// Whether every byte is zero (padding and reserved fields).
fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |acc, b| acc | b) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_sizes_match_the_spec() {
        assert_eq!(size_of::<Header>(), HEADER_LEN);
        assert_eq!(size_of::<StatusBlock>(), 20);
        assert_eq!(size_of::<PairInitRequest>(), 112);
        assert_eq!(size_of::<PairInitReply>(), 112);
        assert_eq!(size_of::<PairCompleteRequest>(), 104);
        assert_eq!(size_of::<VerifierBlock>(), 72);
        assert_eq!(size_of::<PlainRequest>(), 24);
        assert_eq!(size_of::<OpenRequest>(), 32);
        assert_eq!(size_of::<TxFetchRequest>(), 246);
        assert_eq!(size_of::<TxFetchReply>(), 246);
        assert_eq!(size_of::<TxDecideRequest>(), 48);
        assert_eq!(size_of::<TxDecideReply>(), 40);
        assert_eq!(size_of::<ChangePinRequest>(), 120);
    }

    #[test]
    fn no_reply_is_larger_than_its_request() {
        for t in MsgType::ALL {
            assert!(t.reply_len() <= t.request_len(), "{}", t.name());
            assert!(t.request_len() <= MAX_DATAGRAM);
        }
    }
}
