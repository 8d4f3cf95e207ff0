//! Building a group of requests: a token drawn at random among those without a request in
//! flight, a kind drawn from the mix, the next counter, for an OPEN a PIN proof under the PIN
//! key of the counter's index (or a wrong one), sealed under the token's device-to-server key.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use zerocopy::IntoBytes;
use zoftoken_net::PacketBatch;
use zoftoken_proto::packet::seal_request;
use zoftoken_proto::pin_keys::PIN_INDEX_LIMIT;
use zoftoken_proto::wire::{Be64, OpenRequest, PinIndex, PlainRequest};
use zoftoken_proto::MsgType;

use super::window::{Pending, Worker};

/// Draws of a token before a build gives up for now when every one drawn is busy.
const REDRAWS: usize = 16;

impl Worker<'_> {
    /// Builds `n` requests into `out` (cleared first); returns how many.
    pub(super) fn build(&mut self, out: &mut PacketBatch, n: usize, now: Instant) -> usize {
        out.clear();
        let device_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let time = Be64::new(device_time);
        let mix = self.config.mix;
        let status_pct = u64::from(mix.status);
        let open_pct = status_pct + u64::from(mix.open);
        let close_pct = open_pct + u64::from(mix.close);
        let mut built = 0;
        for _ in 0..n {
            // A token with a request in flight is drawn again (a few times at most: with the
            // window far below the tokens, almost never). The sequence of requests then depends
            // on timing only where a draw hit a busy token.
            let mut j = (self.next() % self.tokens.len().max(1) as u64) as usize;
            for _ in 0..REDRAWS {
                if !self.busy.get(j).copied().unwrap_or(false) {
                    break;
                }
                j = (self.next() % self.tokens.len().max(1) as u64) as usize;
            }
            if self.busy.get(j).copied().unwrap_or(false) {
                break;
            }
            let Some(endpoint) = self.next_endpoint(now) else {
                break;
            };
            let roll = self.next() % 100;
            let (Some(token), Some(counter)) = (self.tokens.get(j), self.counters.get_mut(j))
            else {
                break;
            };
            let c = *counter;
            *counter += 1;
            let (kind, k) = if roll < status_pct {
                (MsgType::Status, 0)
            } else if roll < open_pct {
                (MsgType::Open, 1)
            } else if roll < close_pct {
                (MsgType::Close, 2)
            } else {
                (MsgType::Open, 3)
            };
            if kind != MsgType::Status {
                if let Some(a) = self.acked.get_mut(j) {
                    a.last_change_sent = c;
                }
            }
            let plain = PlainRequest {
                device_time_ms: time,
                zero: [0; 16],
            };
            let opened;
            let body: &[u8] = if kind == MsgType::Open {
                // A fresh PIN index per request (the counter's low bits) and its key, derived
                // from the token's PIN root as the server does (three keyed hashes).
                let index = (c % u64::from(PIN_INDEX_LIMIT)) as u32;
                let Some(Ok(key)) = token.pin_root.as_ref().map(|r| r.key(index)) else {
                    self.counts.errors += 1;
                    continue;
                };
                let mut proof = self.verifier.proof(&key, kind, &token.id.0, c);
                if k == 3 {
                    // A wrong PIN: any other proof.
                    proof[0] ^= 0x5a;
                }
                opened = OpenRequest {
                    device_time_ms: time,
                    pin: PinIndex::new(index),
                    proof,
                };
                opened.as_bytes()
            } else {
                plain.as_bytes()
            };
            let Some(peer) = self.config.endpoints.get(endpoint).copied() else {
                break;
            };
            let Some(buf) = out.next_buffer() else { break };
            let Ok(len) = seal_request(&token.keys.d2s, kind, token.id.0, c, body, buf) else {
                self.counts.errors += 1;
                continue;
            };
            out.commit(peer, len);
            if let Some(t) = self.counts.by_type.get_mut(k) {
                *t += 1;
            }
            let key = (token.id.0, c);
            if let Some(b) = self.busy.get_mut(j) {
                *b = true;
            }
            self.inflight.insert(
                key,
                Pending {
                    sent: now,
                    token: j,
                    kind,
                    endpoint,
                },
            );
            self.order.push_back((key, now));
            built += 1;
        }
        built
    }
}
