//! Body layouts of the pairing messages: PAIR_INIT (SPEC.md §7.3) and PAIR_COMPLETE (§7.4).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::pin::{PinIndex, SEALED_VERIFIERS_LEN};
use super::{Be16, Be32, Be64, StatusBlock, TOKEN_ID_LEN};

/// PAIR_INIT request body (SPEC.md §7.3), sealed under the enrollment keys.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct PairInitRequest {
    /// Device clock, Unix milliseconds.
    pub device_time_ms: Be64,
    /// The device's ephemeral X25519 public key.
    pub device_public: [u8; 32],
    /// Zero padding (keeps the request as large as the reply).
    pub zero: [u8; 72],
}

/// PAIR_INIT reply body (SPEC.md §7.3), sealed under the enrollment keys.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct PairInitReply {
    /// Status block; state `pending`.
    pub status: StatusBlock,
    /// The server's ephemeral X25519 public key.
    pub server_public: [u8; 32],
    /// The token id the device will use from now on.
    pub token_id: [u8; TOKEN_ID_LEN],
    /// One-time-code length, 4–32.
    pub otp_length: u8,
    /// One-time-code [`Alphabet`](super::Alphabet) byte.
    pub otp_alphabet: u8,
    /// One-time-code period in seconds.
    pub otp_period_s: Be16,
    /// The service's open window in seconds (0: an open is an instant event).
    pub window_s: Be32,
    /// Bit 0: the service allows a duress PIN. Other bits zero.
    pub service_flags: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
    /// The token's PIN root, XOR the pad of the X25519 exchange (SPEC.md §5.4, §6.3).
    pub pin_root_sealed: [u8; 32],
}

/// Flag in [`PairInitReply::service_flags`]: the service allows a duress PIN.
pub const SERVICE_FLAG_DURESS: u8 = 0x01;

/// PAIR_COMPLETE request body (SPEC.md §7.4), sealed under the new token keys.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct PairCompleteRequest {
    /// Device clock, Unix milliseconds.
    pub device_time_ms: Be64,
    /// The PIN key that seals the verifiers.
    pub pin: PinIndex,
    /// The [`VerifierBlock`](super::VerifierBlock), sealed under the PIN key (SPEC.md §6.3).
    pub verifiers: [u8; SEALED_VERIFIERS_LEN],
}
