//! [`DeviceError`]: why the device refused a reply, a request or its saved state.

use thiserror::Error;
use zoftoken_proto::DropReason;

/// What can go wrong on the device side.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// A reply was dropped: not authentic, not for an outstanding request, or malformed. The
    /// caller should keep waiting for a proper reply (or time out and retry).
    #[error("reply dropped: {0}")]
    Dropped(#[from] DropReason),
    /// A local input is invalid (PIN length, code format, deeplink).
    #[error(transparent)]
    Protocol(#[from] zoftoken_proto::Error),
    /// The operation is not possible in this pairing stage.
    #[error("out of order: {0}")]
    OutOfOrder(&'static str),
    /// The state store failed; the request was not sent.
    #[error("state store: {0}")]
    Store(String),
    /// The persisted state cannot be read.
    #[error("corrupt device state: {0}")]
    CorruptState(String),
    /// The token cannot make PIN requests any more and must be paired again: every
    /// per-request PIN key of its pairing has been used, or its saved state is from a version
    /// without per-request PIN keys. Nothing was sent.
    #[error("the token must be paired again: {0}")]
    PairAgain(&'static str),
}
