//! Error types. [`DropReason`] says why a datagram gets no reply (it is counted, never
//! answered); [`Error`](enum@Error) reports misuse of the library by a caller (bad PIN length, malformed
//! deeplink, ...), which is always a local condition, never something from the network.
//!
//! Both are `#[non_exhaustive]`: a later version may add a reason, so a caller's `match` keeps
//! a catch-all arm. Callers match on variants, never on the display text.

use thiserror::Error;

/// Why a received datagram is dropped without a reply (SPEC.md §9).
///
/// The variants are ordered by the check that produces them: cheap checks first, the AEAD tag
/// next, and the checks of the decrypted content last.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Larger than the protocol's maximum datagram.
    #[error("datagram larger than the maximum")]
    Oversize,
    /// Shorter than a header.
    #[error("datagram shorter than a header")]
    Truncated,
    /// The version byte is not one this implementation speaks.
    #[error("unknown protocol version")]
    UnknownVersion,
    /// The type byte is unknown, or a reply arrived where a request was expected (or the reverse).
    #[error("unknown message type")]
    UnknownType,
    /// Reserved header bits are set, or the epoch field is wrong for the direction.
    #[error("reserved header field not zero")]
    ReservedNotZero,
    /// The length is not the exact length of the message type.
    #[error("wrong length for the message type")]
    WrongLength,
    /// The counter is zero, which no sender uses.
    #[error("zero counter")]
    ZeroCounter,
    /// No token (or pending enrollment) has this id. Set by the engine, not the codec.
    #[error("unknown token")]
    UnknownToken,
    /// The AEAD tag does not verify.
    #[error("authentication failed")]
    Unauthentic,
    /// The counter was already accepted, or is too far below the highest one.
    #[error("replayed counter")]
    Replayed,
    /// The device clock is outside the accepted skew.
    #[error("stale request")]
    Stale,
    /// A field that must be zero is not, inside the authenticated body.
    #[error("non-zero padding")]
    NonZeroPadding,
    /// An authenticated field holds a value the protocol does not define (an unknown status,
    /// state or alphabet, a transaction message that is not UTF-8, ...).
    #[error("invalid field value")]
    InvalidField,
    /// The reply does not answer an outstanding request (device side).
    #[error("unexpected reply")]
    UnexpectedReply,
    /// The X25519 exchange produced a non-contributory (all-zero) shared secret.
    #[error("non-contributory key exchange")]
    WeakKeyExchange,
    /// The token has a change that is not yet known to be durable (its commit is in flight,
    /// or failed and the token is being restored from storage). Set by the engine: the
    /// request is not answered, so that no reply ever shows state that was not written; the
    /// app retries.
    #[error("token change not yet durable")]
    Unsettled,
    /// The token has made more state changes in the last second than the server allows
    /// (a per-token limit). Set by the engine.
    #[error("too many state changes for this token")]
    RateLimited,
}

impl DropReason {
    /// Every reason, for metrics that pre-register their labels.
    pub const ALL: [DropReason; 17] = [
        DropReason::Oversize,
        DropReason::Truncated,
        DropReason::UnknownVersion,
        DropReason::UnknownType,
        DropReason::ReservedNotZero,
        DropReason::WrongLength,
        DropReason::ZeroCounter,
        DropReason::UnknownToken,
        DropReason::Unauthentic,
        DropReason::Replayed,
        DropReason::Stale,
        DropReason::NonZeroPadding,
        DropReason::InvalidField,
        DropReason::UnexpectedReply,
        DropReason::WeakKeyExchange,
        DropReason::Unsettled,
        DropReason::RateLimited,
    ];

    /// A short stable name for metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Oversize => "oversize",
            DropReason::Truncated => "truncated",
            DropReason::UnknownVersion => "unknown_version",
            DropReason::UnknownType => "unknown_type",
            DropReason::ReservedNotZero => "reserved_not_zero",
            DropReason::WrongLength => "wrong_length",
            DropReason::ZeroCounter => "zero_counter",
            DropReason::UnknownToken => "unknown_token",
            DropReason::Unauthentic => "unauthentic",
            DropReason::Replayed => "replayed",
            DropReason::Stale => "stale",
            DropReason::NonZeroPadding => "non_zero_padding",
            DropReason::InvalidField => "invalid_field",
            DropReason::UnexpectedReply => "unexpected_reply",
            DropReason::WeakKeyExchange => "weak_key_exchange",
            DropReason::Unsettled => "unsettled",
            DropReason::RateLimited => "rate_limited",
        }
    }
}

/// A caller's input that the library cannot use.
///
/// The cryptographic library's own errors are not kept as sources: `ring` reports every AEAD
/// failure as one opaque `Unspecified` by design, so [`Error::InvalidMessage`] says which step
/// failed instead. The one informative one, Argon2's, is kept in [`Error::PinHash`].
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A PIN must be 4 to 64 bytes of UTF-8 (SPEC.md §6.1).
    #[error("a PIN must be 4 to 64 bytes long")]
    PinLength,
    /// The PIN hashing failed (only on resource exhaustion): Argon2's reason. (It is shown in
    /// the message rather than as [`std::error::Error::source`]: without its `std` feature,
    /// which this crate does not enable, Argon2's error type does not implement that trait.)
    #[error("PIN hashing failed: {0}")]
    PinHash(argon2::Error),
    /// A code (one-time, validation, offline response, manual enrollment) is malformed.
    #[error("malformed code: {0}")]
    CodeFormat(&'static str),
    /// One-time-code parameters are out of range (length 4–32, period 1–3600 s).
    #[error("one-time-code parameters out of range: {0}")]
    OtpParams(&'static str),
    /// A deeplink is malformed.
    #[error("malformed deeplink: {0}")]
    Deeplink(&'static str),
    /// An `otpauth://` parameter is out of range.
    #[error("invalid TOTP parameters: {0}")]
    Totp(&'static str),
    /// A transaction message is longer than 200 bytes.
    #[error("transaction message longer than 200 bytes")]
    TxMessageTooLong,
    /// Every PIN key of this pairing has been used (2²⁴ PIN-bearing requests): the token
    /// must be paired again (SPEC.md §6.3).
    #[error("every PIN key of this pairing has been used; pair the token again")]
    PinKeysExhausted,
    /// The output buffer is too small for the datagram.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// A message to seal does not have the layout of its type (wrong body length, zero
    /// counter, zero epoch in a reply).
    #[error("invalid message: {0}")]
    InvalidMessage(&'static str),
}
