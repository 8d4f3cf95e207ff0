//! The request types of SPEC.md §7 and what each one's datagrams measure.

use super::pairing::{PairCompleteRequest, PairInitReply, PairInitRequest};
use super::status::StatusBlock;
use super::token::{ChangePinRequest, OpenRequest, PlainRequest};
use super::transaction::{TxDecideReply, TxDecideRequest, TxFetchReply, TxFetchRequest};
use super::{HEADER_LEN, REPLY_BIT, TAG_LEN};

/// Request message types (SPEC.md §7). A reply carries the request's type with [`REPLY_BIT`] set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    /// First pairing round trip: proves the enrollment secret, exchanges X25519 keys.
    PairInit = 0x01,
    /// Second pairing round trip: sends the PIN verifiers under the new token secret.
    PairComplete = 0x02,
    /// Open the token with a PIN proof.
    Open = 0x03,
    /// Close the token.
    Close = 0x04,
    /// Read the token state.
    Status = 0x05,
    /// Presence and clock synchronisation.
    TimeSync = 0x06,
    /// Fetch the oldest pending transaction.
    TxFetch = 0x07,
    /// Approve a transaction with a PIN proof.
    TxApprove = 0x08,
    /// Deny a transaction.
    TxDeny = 0x09,
    /// Replace the PIN (and duress PIN) verifiers, proving the current PIN.
    ChangePin = 0x0A,
}

impl MsgType {
    /// Every request type, in wire order.
    pub const ALL: [MsgType; 10] = [
        MsgType::PairInit,
        MsgType::PairComplete,
        MsgType::Open,
        MsgType::Close,
        MsgType::Status,
        MsgType::TimeSync,
        MsgType::TxFetch,
        MsgType::TxApprove,
        MsgType::TxDeny,
        MsgType::ChangePin,
    ];

    /// The type for a request type byte, or `None` when it is unknown.
    pub fn from_request_byte(byte: u8) -> Option<MsgType> {
        Some(match byte {
            0x01 => MsgType::PairInit,
            0x02 => MsgType::PairComplete,
            0x03 => MsgType::Open,
            0x04 => MsgType::Close,
            0x05 => MsgType::Status,
            0x06 => MsgType::TimeSync,
            0x07 => MsgType::TxFetch,
            0x08 => MsgType::TxApprove,
            0x09 => MsgType::TxDeny,
            0x0A => MsgType::ChangePin,
            _ => return None,
        })
    }

    /// The type for a reply type byte (reply bit set), or `None`.
    pub fn from_reply_byte(byte: u8) -> Option<MsgType> {
        if byte & REPLY_BIT == 0 {
            return None;
        }
        Self::from_request_byte(byte & !REPLY_BIT)
    }

    /// The request's type byte.
    pub fn request_byte(self) -> u8 {
        self as u8
    }

    /// The reply's type byte.
    pub fn reply_byte(self) -> u8 {
        self as u8 | REPLY_BIT
    }

    /// Length of the request body (plaintext, without header and tag).
    pub fn request_body_len(self) -> usize {
        match self {
            MsgType::PairInit => size_of::<PairInitRequest>(),
            MsgType::PairComplete => size_of::<PairCompleteRequest>(),
            MsgType::Open => size_of::<OpenRequest>(),
            MsgType::Close | MsgType::Status | MsgType::TimeSync => size_of::<PlainRequest>(),
            MsgType::TxFetch => size_of::<TxFetchRequest>(),
            MsgType::TxApprove | MsgType::TxDeny => size_of::<TxDecideRequest>(),
            MsgType::ChangePin => size_of::<ChangePinRequest>(),
        }
    }

    /// Length of the reply body (plaintext, without header and tag).
    pub fn reply_body_len(self) -> usize {
        match self {
            MsgType::PairInit => size_of::<PairInitReply>(),
            MsgType::TxFetch => size_of::<TxFetchReply>(),
            MsgType::TxApprove | MsgType::TxDeny => size_of::<TxDecideReply>(),
            MsgType::PairComplete
            | MsgType::Open
            | MsgType::Close
            | MsgType::Status
            | MsgType::TimeSync
            | MsgType::ChangePin => size_of::<StatusBlock>(),
        }
    }

    /// Total datagram length of the request.
    pub fn request_len(self) -> usize {
        HEADER_LEN + self.request_body_len() + TAG_LEN
    }

    /// Total datagram length of the reply (never larger than [`MsgType::request_len`]).
    pub fn reply_len(self) -> usize {
        HEADER_LEN + self.reply_body_len() + TAG_LEN
    }

    /// Whether the request is sealed under the enrollment keys rather than the token keys.
    pub fn uses_enrollment_keys(self) -> bool {
        self == MsgType::PairInit
    }

    /// Whether the request carries a PIN proof (SPEC.md §6.3). PAIR_COMPLETE carries PIN
    /// material too (sealed verifiers) but no proof.
    pub fn carries_pin_proof(self) -> bool {
        matches!(
            self,
            MsgType::Open | MsgType::TxApprove | MsgType::ChangePin
        )
    }

    /// Upper-case protocol name, as in SPEC.md.
    pub fn name(self) -> &'static str {
        match self {
            MsgType::PairInit => "PAIR_INIT",
            MsgType::PairComplete => "PAIR_COMPLETE",
            MsgType::Open => "OPEN",
            MsgType::Close => "CLOSE",
            MsgType::Status => "STATUS",
            MsgType::TimeSync => "TIME_SYNC",
            MsgType::TxFetch => "TX_FETCH",
            MsgType::TxApprove => "TX_APPROVE",
            MsgType::TxDeny => "TX_DENY",
            MsgType::ChangePin => "CHANGE_PIN",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_bytes_round_trip() {
        for t in MsgType::ALL {
            assert_eq!(MsgType::from_request_byte(t.request_byte()), Some(t));
            assert_eq!(MsgType::from_reply_byte(t.reply_byte()), Some(t));
            assert_eq!(MsgType::from_reply_byte(t.request_byte()), None);
            assert_eq!(MsgType::from_request_byte(t.reply_byte()), None);
        }
        assert_eq!(MsgType::from_request_byte(0), None);
        assert_eq!(MsgType::from_request_byte(0x0B), None);
    }
}
