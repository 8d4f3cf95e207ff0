//! The status block that starts every reply body (SPEC.md §7.2) and the states it and the
//! transaction replies carry: reply status, token state, transaction state.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::Be64;

/// Reply status codes (SPEC.md §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReplyStatus {
    /// The operation succeeded (also the answer to a duress open, SPEC.md §6.4).
    Ok = 0,
    /// The PIN proof was wrong; `attempts_left` says how many remain before blocking.
    WrongPin = 1,
    /// The token is blocked; only an administrator can unblock it.
    Blocked = 2,
    /// The token is pending (re-enrolled) or pairing did not complete; pair again.
    NotPaired = 3,
    /// No such pending transaction (none, expired, or already decided).
    NoTransaction = 4,
    /// The request is authentic but not allowed in the token's state.
    Refused = 5,
}

impl ReplyStatus {
    /// The status for a byte, or `None` when unknown.
    pub fn from_byte(byte: u8) -> Option<ReplyStatus> {
        [
            ReplyStatus::Ok,
            ReplyStatus::WrongPin,
            ReplyStatus::Blocked,
            ReplyStatus::NotPaired,
            ReplyStatus::NoTransaction,
            ReplyStatus::Refused,
        ]
        .into_iter()
        .find(|s| *s as u8 == byte)
    }
}

/// Token states as seen on the wire (SPEC.md §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum WireState {
    /// Enrolled, not yet paired.
    Pending = 0,
    /// Paired and closed.
    Closed = 1,
    /// Open until `open_until_ms`.
    Open = 2,
    /// Blocked.
    Blocked = 3,
}

impl WireState {
    /// The state for a byte, or `None` when unknown.
    pub fn from_byte(byte: u8) -> Option<WireState> {
        [
            WireState::Pending,
            WireState::Closed,
            WireState::Open,
            WireState::Blocked,
        ]
        .into_iter()
        .find(|s| *s as u8 == byte)
    }
}

/// Transaction states on the wire (SPEC.md §7.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TxState {
    /// Waiting for the user.
    Waiting = 0,
    /// Approved by the user ("OK").
    Approved = 1,
    /// Denied by the user ("CANCEL").
    Denied = 2,
    /// Expired without an answer ("FAILED").
    Expired = 3,
}

impl TxState {
    /// The state for a byte, or `None` when unknown.
    pub fn from_byte(byte: u8) -> Option<TxState> {
        [
            TxState::Waiting,
            TxState::Approved,
            TxState::Denied,
            TxState::Expired,
        ]
        .into_iter()
        .find(|s| *s as u8 == byte)
    }
}

/// The 20-byte status block that starts every reply body (SPEC.md §7.2).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct StatusBlock {
    /// A [`ReplyStatus`] byte.
    pub status: u8,
    /// A [`WireState`] byte.
    pub state: u8,
    /// Failed authentications left before the token blocks (3 after a success).
    pub attempts_left: u8,
    /// Reserved, zero.
    pub reserved: u8,
    /// When the open window ends, Unix milliseconds; zero unless the state is open.
    pub open_until_ms: Be64,
    /// The server's clock, Unix milliseconds.
    pub server_time_ms: Be64,
}

impl StatusBlock {
    /// A status block.
    pub fn new(
        status: ReplyStatus,
        state: WireState,
        attempts_left: u8,
        open_until_ms: u64,
        server_time_ms: u64,
    ) -> StatusBlock {
        StatusBlock {
            status: status as u8,
            state: state as u8,
            attempts_left,
            reserved: 0,
            open_until_ms: Be64::new(open_until_ms),
            server_time_ms: Be64::new(server_time_ms),
        }
    }
}
