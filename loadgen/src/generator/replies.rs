//! Reading replies: a datagram is matched to its request in flight by token id and counter,
//! timed, and opened under the token's server-to-device key; what does not open counts as an
//! echo, what opens as the wrong type as an error.

use std::time::Instant;

use zerocopy::FromBytes;
use zoftoken_proto::packet::{open, open_reply};
use zoftoken_proto::wire::{Header, ReplyBody};
use zoftoken_proto::ReplyStatus;

use super::window::Worker;

impl Worker<'_> {
    /// Matches a datagram to its request and opens it.
    pub(super) fn reply(&mut self, d: &mut [u8], now: Instant) {
        let Ok((header, _)) = Header::read_from_prefix(d) else {
            self.counts.errors += 1;
            return;
        };
        let key = (header.token_id, header.counter.get());
        let Some(p) = self.inflight.remove(&key) else {
            self.counts.errors += 1;
            return;
        };
        if let Some(b) = self.busy.get_mut(p.token) {
            *b = false;
        }
        if let Some(e) = self.endpoints.get_mut(p.endpoint) {
            e.lost_in_a_row = 0;
        }
        let us = now.duration_since(p.sent).as_micros() as u64;
        self.total.record(us);
        self.interval.record(us);
        let Some(token) = self.tokens.get(p.token) else {
            self.counts.errors += 1;
            return;
        };
        match open_reply(&token.keys.s2d, d) {
            Ok(r) if r.msg_type == p.kind => {
                self.counts.answered += 1;
                if let ReplyBody::Status(s) = r.body {
                    if s.status != ReplyStatus::Ok as u8 {
                        self.counts.refused += 1;
                    }
                    if let Some(a) = self.acked.get_mut(p.token) {
                        if key.1 > a.counter {
                            a.counter = key.1;
                            a.state = s.state;
                            a.attempts_left = s.attempts_left;
                        }
                    }
                }
            }
            Ok(_) => self.counts.errors += 1,
            Err(_) => {
                // The same AEAD work as a genuine reply, so that echo and server runs cost
                // the generator the same per packet.
                let _ = open(&token.keys.s2d, d);
                self.counts.echoed += 1;
            }
        }
    }
}
