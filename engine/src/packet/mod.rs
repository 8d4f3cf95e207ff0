//! The device packet path (SPEC.md §5–§9): cheap checks, lookup, tag, body, replay,
//! freshness, then the state change, its mutation and events, and the reply.
//!
//! [`Engine::handle_packet`] is the entry; then one module per request family:
//! `pairing` (PAIR_INIT, and PAIR_COMPLETE of a pending token), `request` (every request of a
//! paired token up to its state change: lookup, tag, replay, freshness, rate limit, reply),
//! `apply` (the state change of OPEN, CLOSE, STATUS, TIME_SYNC, CHANGE_PIN and a repeated
//! PAIR_COMPLETE), `transactions` (TX_FETCH, TX_APPROVE, TX_DENY); `pin` opens the PIN
//! material of a request (proofs, sealed verifiers) and `reply` lays out the reply bodies.

mod apply;
mod pairing;
mod pin;
mod reply;
mod request;
mod transactions;

use std::net::SocketAddr;

use zoftoken_proto::wire::{check_request, MsgType};
use zoftoken_proto::DropReason;

use crate::mutation::Batch;
use crate::Engine;

/// What became of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketOutcome {
    /// Send the first `n` bytes of the output buffer back to the source.
    Reply(usize),
    /// Send nothing; the reason is counted.
    Drop(DropReason),
}

impl Engine {
    /// Processes one device datagram received from `src` at `now_ms`. The reply (if any) is
    /// written into `out` (at least 1200 bytes); state changes go into `batch`, which the
    /// caller commits before sending the replies of the batch.
    pub fn handle_packet(
        &self,
        now_ms: u64,
        src: SocketAddr,
        datagram: &mut [u8],
        out: &mut [u8],
        batch: &mut Batch,
    ) -> PacketOutcome {
        let head = match check_request(datagram) {
            Ok(h) => (h.msg_type, *h.key_id()),
            Err(reason) => {
                // Count under the shard of the id bytes if present, else shard 0.
                let id = datagram
                    .get(8..24)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .unwrap_or([0; 16]);
                Engine::count_drop(&mut self.shard(&id).counters, reason);
                return PacketOutcome::Drop(reason);
            }
        };
        let (msg_type, id) = head;
        // Replies are counted by the paths themselves, under the shard lock they hold.
        let result = if msg_type == MsgType::PairInit {
            let r = self.pair_init(now_ms, &id, datagram, out, batch);
            if r.is_ok() {
                let mut shard = self.shard(&id);
                if let Some(c) = shard
                    .counters
                    .replies
                    .get_mut(usize::from(msg_type.request_byte()))
                {
                    *c += 1;
                }
            }
            r
        } else {
            self.token_request(now_ms, src, msg_type, &id, datagram, out, batch)
        };
        match result {
            Ok(n) => PacketOutcome::Reply(n),
            Err(reason) => {
                Engine::count_drop(&mut self.shard(&id).counters, reason);
                PacketOutcome::Drop(reason)
            }
        }
    }
}
