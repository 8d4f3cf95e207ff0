//! The PIN fields that PIN-bearing requests share (SPEC.md §6.3): the index of the request's
//! PIN key, and the verifier block that PAIR_COMPLETE and CHANGE_PIN seal under it.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{all_zero, cast, Be32, TAG_LEN};
use crate::error::DropReason;

/// Number of PIN keys of one pairing: indices are `0 .. PIN_INDEX_LIMIT` (the leaves of the
/// PIN-key tree, `crate::pin_keys`, which re-exports this constant).
pub const PIN_INDEX_LIMIT: u32 = 1 << 24;

/// Length of a sealed verifier block: the 72-byte [`VerifierBlock`] and its tag.
pub const SEALED_VERIFIERS_LEN: usize = 72 + TAG_LEN;

/// Flag in PAIR_COMPLETE and CHANGE_PIN: a duress verifier is present.
pub const VERIFIER_FLAG_DURESS: u8 = 0x01;

/// The index of a PIN-bearing request's PIN key and its padding (SPEC.md §6.3).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct PinIndex {
    /// The index `p` of the PIN key, below [`PIN_INDEX_LIMIT`].
    pub index: Be32,
    /// Zero.
    pub zero: [u8; 4],
}

impl PinIndex {
    /// The index field of a request that uses PIN key `index`.
    pub fn new(index: u32) -> PinIndex {
        PinIndex {
            index: Be32::new(index),
            zero: [0; 4],
        }
    }

    pub(crate) fn is_valid(&self) -> bool {
        all_zero(&self.zero) && self.index.get() < PIN_INDEX_LIMIT
    }
}

/// The plaintext of a sealed verifier block (PAIR_COMPLETE, CHANGE_PIN; SPEC.md §6.3).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct VerifierBlock {
    /// The PIN verifier (SPEC.md §6.1).
    pub pin_verifier: [u8; 32],
    /// The duress PIN verifier, or zero when [`VERIFIER_FLAG_DURESS`] is clear.
    pub duress_verifier: [u8; 32],
    /// [`VERIFIER_FLAG_DURESS`] or zero.
    pub flags: u8,
    /// Zero.
    pub zero: [u8; 7],
}

/// Whether a verifier block's flags and padding are as SPEC.md §6.3 requires: only the duress
/// flag may be set, the duress verifier is zero without it, and the padding is zero.
fn verifier_flags_ok(flags: u8, duress: &[u8; 32], zero: &[u8; 7]) -> bool {
    all_zero(zero)
        && flags & !VERIFIER_FLAG_DURESS == 0
        && (flags & VERIFIER_FLAG_DURESS != 0 || all_zero(duress))
}

impl VerifierBlock {
    /// Parses an opened block, checking its flags and zero fields.
    pub fn parse(bytes: &[u8; 72]) -> Result<VerifierBlock, DropReason> {
        let b: &VerifierBlock = cast(bytes)?;
        if verifier_flags_ok(b.flags, &b.duress_verifier, &b.zero) {
            Ok(*b)
        } else {
            Err(DropReason::NonZeroPadding)
        }
    }

    /// Whether a duress verifier is present.
    pub fn has_duress(&self) -> bool {
        self.flags & VERIFIER_FLAG_DURESS != 0
    }

    /// The 72 bytes to seal.
    pub fn to_bytes(&self) -> [u8; 72] {
        let mut out = [0u8; 72];
        out.copy_from_slice(self.as_bytes());
        out
    }
}
