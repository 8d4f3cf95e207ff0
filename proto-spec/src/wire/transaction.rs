//! Body layouts of the transaction messages: TX_FETCH (SPEC.md §7.9), TX_APPROVE and TX_DENY
//! (§7.10).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::pin::PinIndex;
use super::{Be16, Be64, StatusBlock, TX_MESSAGE_MAX};

/// TX_FETCH request body (SPEC.md §7.9).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct TxFetchRequest {
    /// Device clock, Unix milliseconds.
    pub device_time_ms: Be64,
    /// Zero padding (the reply carries up to 200 bytes of message).
    pub zero: [u8; 238],
}

/// TX_FETCH reply body (SPEC.md §7.9).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct TxFetchReply {
    /// Status block; status `NO_TRANSACTION` when nothing is pending.
    pub status: StatusBlock,
    /// Transaction id, zero when none.
    pub tx_id: [u8; 16],
    /// When the transaction expires, Unix milliseconds.
    pub tx_expires_ms: Be64,
    /// Length of the UTF-8 message in `message`.
    pub message_len: Be16,
    /// The message, zero padded.
    pub message: [u8; TX_MESSAGE_MAX],
}

/// TX_APPROVE and TX_DENY request body (SPEC.md §7.10).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct TxDecideRequest {
    /// Device clock, Unix milliseconds.
    pub device_time_ms: Be64,
    /// The transaction decided.
    pub tx_id: [u8; 16],
    /// The PIN key of the proof for TX_APPROVE; zero for TX_DENY.
    pub pin: PinIndex,
    /// PIN proof for TX_APPROVE; zero for TX_DENY.
    pub proof: [u8; 16],
}

/// TX_APPROVE and TX_DENY reply body (SPEC.md §7.10).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct TxDecideReply {
    /// Status block.
    pub status: StatusBlock,
    /// The transaction.
    pub tx_id: [u8; 16],
    /// A [`TxState`](super::TxState) byte: the transaction's state after the request.
    pub tx_state: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
}
