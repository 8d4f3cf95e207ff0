//! A push-approval transaction ([`Transaction`]): what the API creates, the app decides and
//! storage keeps. A type of its own so that the pending items and the mutations both name it
//! without depending on each other.

use zoftoken_proto::{TokenId, TxState};

/// A push-approval transaction (`docs/product.md`: WAITING → OK / CANCEL / FAILED, which are
/// [`TxState`]'s `Waiting` → `Approved` / `Denied` / `Expired`; SPEC.md §7.9–7.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// Its id.
    pub tx_id: [u8; 16],
    /// The token asked.
    pub token_id: TokenId,
    /// The message shown on the phone (≤ 200 bytes of UTF-8).
    pub message: String,
    /// Created (Unix ms).
    pub created_ms: u64,
    /// Expires (Unix ms).
    pub expires_ms: u64,
    /// Its state.
    pub state: TxState,
    /// Whether it was approved with the duress PIN.
    pub duress: bool,
}
