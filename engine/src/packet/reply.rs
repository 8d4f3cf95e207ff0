//! Reply bodies of a paired token's requests: the status block of SPEC.md §7.2, made from the
//! token's entry, and the transaction replies that start with one.

use zerocopy::IntoBytes;
use zoftoken_proto::wire::{StatusBlock, TxDecideReply, TxFetchReply};
use zoftoken_proto::ReplyStatus;

use crate::state::{TokenEntry, TokenState};

/// The status block of a reply about `e` at `now_ms` (an ended window reads closed).
pub(super) fn status_block(e: &TokenEntry, status: ReplyStatus, now_ms: u64) -> StatusBlock {
    let state = e.effective_state(now_ms);
    let open_until = if state == TokenState::Open {
        e.open_until_ms
    } else {
        0
    };
    StatusBlock::new(status, state.wire(), e.attempts_left(), open_until, now_ms)
}

/// A reply body, by layout.
pub(super) enum ReplyBytes {
    Status(StatusBlock),
    TxFetch(Box<TxFetchReply>),
    TxDecide(TxDecideReply),
}

impl ReplyBytes {
    /// A status block reply.
    pub(super) fn status(b: StatusBlock) -> ReplyBytes {
        ReplyBytes::Status(b)
    }

    /// The body's bytes, to seal.
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            ReplyBytes::Status(b) => b.as_bytes(),
            ReplyBytes::TxFetch(r) => r.as_bytes(),
            ReplyBytes::TxDecide(r) => r.as_bytes(),
        }
    }
}
