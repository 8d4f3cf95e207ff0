//! The request window of one generator thread: its share of the tokens and their counters,
//! the requests in flight (one per token at most), the send/receive loop paced by the rate,
//! expiry of requests without reply, and the hand-over of figures to the progress reporter.
//! Building requests is in `requests.rs`, reading replies in `replies.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use zoftoken_net::PacketBatch;
use zoftoken_proto::{MsgType, PinVerifier};

use super::config::LoadConfig;
use super::files::Acked;
use super::report::Counts;
use super::socket::Sock;
use crate::histogram::Histogram;
use crate::tokens::DeviceToken;

/// Requests per send batch (as the server's receive batch).
const BATCH: usize = 32;
/// How often a thread hands its counters and latencies to the progress reporter.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Longest single wait for replies (keeps rate pacing and expiry responsive).
pub(super) const MAX_WAIT: Duration = Duration::from_millis(1);

/// Longest wait for the next group of requests at a low rate (timeouts and the progress
/// line are checked at least this often).
const MAX_IDLE_WAIT: Duration = Duration::from_millis(20);

/// What a thread shows the progress reporter.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) counts: Mutex<Counts>,
    pub(super) interval: Mutex<Histogram>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request in flight.
pub(super) struct Pending {
    pub(super) sent: Instant,
    pub(super) token: usize,
    pub(super) kind: MsgType,
    /// The endpoint it was sent to (its index in the configuration's list).
    pub(super) endpoint: usize,
}

/// Requests to one endpoint lost in a row after which it is passed over (as an app fails
/// over to the next endpoint of its list).
pub(super) const DOWN_AFTER: u32 = 3;

/// How often an endpoint passed over gets one request again, to see whether it is back.
pub(super) const RETRY_DOWN: Duration = Duration::from_secs(1);

/// One endpoint as the generator sees it: requests lost in a row, and since when it is
/// passed over.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct EndpointHealth {
    pub(super) lost_in_a_row: u32,
    pub(super) tried: Option<Instant>,
}

/// One generator thread: its tokens, their counters, its socket and its requests in flight.
pub(super) struct Worker<'a> {
    pub(super) config: &'a LoadConfig,
    pub(super) tokens: Vec<DeviceToken>,
    pub(super) verifier: PinVerifier,
    pub(super) counters: Vec<u64>,
    pub(super) sock: Sock,
    pub(super) shared: &'a Shared,
    pub(super) rng: u64,
    pub(super) next_endpoint: usize,
    /// Per endpoint: whether it answers (an endpoint that stopped is passed over).
    pub(super) endpoints: Vec<EndpointHealth>,
    pub(super) rate: Option<f64>,
    pub(super) inflight: HashMap<([u8; 16], u64), Pending>,
    /// Per token: a request of it is in flight. A phone sends its next request only after the
    /// answer to the last one (or after giving up on it), and so does the generator: the
    /// server does not answer a token's request while an earlier change of the token is being
    /// written.
    pub(super) busy: Vec<bool>,
    /// Per token, when the acknowledged answers are recorded (else empty).
    pub(super) acked: Vec<Acked>,
    pub(super) order: VecDeque<(([u8; 16], u64), Instant)>,
    pub(super) counts: Counts,
    pub(super) total: Histogram,
    pub(super) interval: Histogram,
}

impl<'a> Worker<'a> {
    pub(super) fn new(
        config: &'a LoadConfig,
        (t, threads): (usize, usize),
        sequence: u64,
        tokens: Vec<DeviceToken>,
        sock: Sock,
        counters: Vec<u64>,
        shared: &'a Shared,
    ) -> Worker<'a> {
        let n_tokens = tokens.len();
        Worker {
            config,
            tokens,
            verifier: config.tokens.verifier(),
            counters,
            sock,
            shared,
            rng: (config.tokens.seed()
                ^ sequence.wrapping_mul(0xD6E8_FEB8_6659_FD93)
                ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                | 1,
            next_endpoint: t,
            endpoints: vec![EndpointHealth::default(); config.endpoints.len()],
            rate: config.rate.map(|r| r as f64 / threads as f64),
            inflight: HashMap::with_capacity(config.window * 2),
            busy: vec![false; n_tokens],
            acked: if config.acked_file.is_some() {
                vec![Acked::default(); n_tokens]
            } else {
                Vec::new()
            },
            order: VecDeque::with_capacity(config.window * 2),
            counts: Counts::default(),
            total: Histogram::new(),
            interval: Histogram::new(),
        }
    }

    /// The endpoint of the next request: the next in turn that answers; one passed over
    /// (lost [`DOWN_AFTER`] requests in a row) gets a request once per [`RETRY_DOWN`]. `None`
    /// without endpoints.
    pub(super) fn next_endpoint(&mut self, now: Instant) -> Option<usize> {
        let n = self.endpoints.len();
        for _ in 0..n {
            let i = self.next_endpoint % n;
            self.next_endpoint = self.next_endpoint.wrapping_add(1);
            let e = self.endpoints.get_mut(i)?;
            if e.lost_in_a_row < DOWN_AFTER {
                return Some(i);
            }
            if e.tried.is_none_or(|t| now.duration_since(t) >= RETRY_DOWN) {
                e.tried = Some(now);
                return Some(i);
            }
        }
        // Every endpoint is passed over: keep sending in turn (each is tried again).
        let i = self.next_endpoint % n.max(1);
        self.next_endpoint = self.next_endpoint.wrapping_add(1);
        (n > 0).then_some(i)
    }

    pub(super) fn next(&mut self) -> u64 {
        // xorshift64*: cheap, and reproducible with a fixed `sequence_seed`.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Sends until `duration`, then drains; returns the counters, the latency histogram and
    /// the length of the sending phase.
    pub(super) fn run(
        mut self,
        start: Instant,
    ) -> (Counts, Histogram, Duration, Vec<u64>, Vec<Acked>) {
        let end = start + self.config.duration;
        let mut out = PacketBatch::with_capacity(BATCH);
        let mut inb = PacketBatch::with_capacity(BATCH * 2);
        let mut last_flush = start;
        let mut send_end = None;
        loop {
            let now = Instant::now();
            let stopped = self
                .config
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed));
            let sending = now < end && !stopped;
            if !sending {
                send_end.get_or_insert(now);
                if self.inflight.is_empty() {
                    break;
                }
            }
            let mut built = 0;
            // With a rate: when the next group of requests is due (the wait below ends
            // there instead of polling every MAX_WAIT).
            let mut next_due = None;
            if sending {
                let mut n = self
                    .config
                    .window
                    .saturating_sub(self.inflight.len())
                    .min(BATCH);
                if let Some(r) = self.rate {
                    let due = (now.duration_since(start).as_secs_f64() * r) as u64;
                    let owed = due.saturating_sub(self.counts.sent) as usize;
                    let burst = self.config.burst;
                    n = if owed >= burst { n.min(owed) } else { 0 };
                    let group_end = self.counts.sent + burst as u64;
                    next_due = Some(start + Duration::from_secs_f64(group_end as f64 / r));
                }
                if n > 0 {
                    built = self.build(&mut out, n, now);
                    let refused = self.sock.send(&out);
                    self.counts.sent += built as u64 - refused;
                    self.counts.errors += refused;
                }
            }
            let wait = match next_due {
                _ if built > 0 => Duration::ZERO,
                // Replies still wake the receive at once; only an idle wait is longer. (Due
                // already but the window is full: wait for replies as without a rate.)
                Some(at) if at > now => (at - now).min(MAX_IDLE_WAIT),
                _ => MAX_WAIT,
            };
            inb.clear();
            match self.sock.recv(&mut inb, wait) {
                Ok(_) => {}
                Err(_) => self.counts.errors += 1,
            }
            if !inb.is_empty() {
                let now = Instant::now();
                for i in 0..inb.len() {
                    if let Some((_, d)) = inb.get_mut(i) {
                        self.reply(d, now);
                    }
                }
            }
            self.expire(Instant::now());
            if now.duration_since(last_flush) >= FLUSH_EVERY {
                self.flush();
                last_flush = now;
            }
        }
        self.flush();
        let elapsed = send_end.unwrap_or(end).duration_since(start);
        (self.counts, self.total, elapsed, self.counters, self.acked)
    }

    /// Counts requests older than the timeout as lost and forgets them.
    fn expire(&mut self, now: Instant) {
        while let Some((key, sent)) = self.order.front().copied() {
            if !self.inflight.contains_key(&key) {
                self.order.pop_front();
            } else if now.duration_since(sent) >= self.config.timeout {
                if let Some(p) = self.inflight.remove(&key) {
                    if let Some(b) = self.busy.get_mut(p.token) {
                        *b = false;
                    }
                    if let Some(e) = self.endpoints.get_mut(p.endpoint) {
                        e.lost_in_a_row = e.lost_in_a_row.saturating_add(1);
                    }
                }
                self.order.pop_front();
                self.counts.lost += 1;
            } else {
                break;
            }
        }
    }

    fn flush(&mut self) {
        *lock(&self.shared.counts) = self.counts;
        lock(&self.shared.interval).merge(&self.interval);
        self.interval.clear();
    }
}
