//! Body layouts of the requests about the token itself: CLOSE, STATUS, TIME_SYNC (SPEC.md
//! §7.6–7.8), OPEN (§7.5) and CHANGE_PIN (§7.11). Their replies are the status block.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::pin::{PinIndex, SEALED_VERIFIERS_LEN};
use super::Be64;

/// Body of CLOSE, STATUS and TIME_SYNC requests (SPEC.md §7.6–7.8).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct PlainRequest {
    /// Device clock, Unix milliseconds.
    pub device_time_ms: Be64,
    /// Zero padding.
    pub zero: [u8; 16],
}

/// OPEN request body (SPEC.md §7.5).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct OpenRequest {
    /// Device clock, Unix milliseconds.
    pub device_time_ms: Be64,
    /// The PIN key of the proof.
    pub pin: PinIndex,
    /// PIN proof (SPEC.md §6.3).
    pub proof: [u8; 16],
}

/// CHANGE_PIN request body (SPEC.md §7.11).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct ChangePinRequest {
    /// Device clock, Unix milliseconds.
    pub device_time_ms: Be64,
    /// The PIN key of the proof and of the sealed verifiers.
    pub pin: PinIndex,
    /// PIN proof with the current PIN.
    pub proof: [u8; 16],
    /// The new [`VerifierBlock`](super::VerifierBlock), sealed under the PIN key (SPEC.md §6.3).
    pub verifiers: [u8; SEALED_VERIFIERS_LEN],
}
