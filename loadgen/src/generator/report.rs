//! What a run reports: live [`Progress`] once per second, the final [`Summary`] (human lines
//! and one JSON line), and the per-thread counts they are added up from.

use std::time::Duration;

/// Live figures, once per second.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Since the start of sending.
    pub elapsed: Duration,
    /// Requests sent so far.
    pub sent: u64,
    /// Replies that opened (so far).
    pub answered: u64,
    /// Replies that did not open: echoes (so far).
    pub echoed: u64,
    /// Requests without reply within the timeout (so far).
    pub lost: u64,
    /// Errors so far (see [`Summary::errors`]).
    pub errors: u64,
    /// Requests sent per second over the last interval.
    pub sent_pps: f64,
    /// Replies (answered + echoed) per second over the last interval.
    pub answered_pps: f64,
    /// Median round trip over the last interval, microseconds.
    pub p50_us: u64,
    /// 99th percentile round trip over the last interval, microseconds.
    pub p99_us: u64,
}

impl Progress {
    /// One terminal line.
    pub fn line(&self) -> String {
        format!(
            "{:>5.1}s  sent {:>9.0}/s  replies {:>9.0}/s  lost {}  errors {}  p50 {} µs  p99 {} µs",
            self.elapsed.as_secs_f64(),
            self.sent_pps,
            self.answered_pps,
            self.lost,
            self.errors,
            self.p50_us,
            self.p99_us
        )
    }
}

/// The result of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Requests sent.
    pub sent: u64,
    /// Replies that opened under the token's server-to-device key and matched their request.
    pub answered: u64,
    /// Replies to a request that did not open (an echo server returns the request itself).
    pub echoed: u64,
    /// Requests without a reply within the timeout.
    pub lost: u64,
    /// Send failures, datagrams matching no request in flight (late or unknown), and
    /// replies that opened but did not match their request's type.
    pub errors: u64,
    /// Answered with a status other than OK (wrong PIN, blocked, ...): counted in `answered`
    /// too; non-zero means the server's tokens are not this token set.
    pub refused: u64,
    /// Requests sent per type, in the order of [`KINDS`] (STATUS, OPEN, CLOSE), then the
    /// OPENs with a wrong PIN.
    pub sent_by_type: [u64; 4],
    /// The sending phase.
    pub elapsed: Duration,
    /// `sent / elapsed`.
    pub sent_pps: f64,
    /// `(answered + echoed) / elapsed`.
    pub answered_pps: f64,
    /// Round trip, microseconds, over every reply (answered and echoed).
    pub p50_us: u64,
    /// 〃 99th percentile.
    pub p99_us: u64,
    /// 〃 99.9th percentile.
    pub p999_us: u64,
    /// 〃 maximum.
    pub max_us: u64,
}

impl Summary {
    /// One line of JSON (keys as the field names; `elapsed_s` in seconds).
    pub fn to_json(&self) -> String {
        format!(
            concat!(
                "{{\"sent\":{},\"answered\":{},\"echoed\":{},\"lost\":{},\"errors\":{},",
                "\"refused\":{},\"sent_status\":{},\"sent_open\":{},\"sent_close\":{},",
                "\"sent_wrong_pin\":{},",
                "\"elapsed_s\":{:.3},\"sent_pps\":{:.0},\"answered_pps\":{:.0},",
                "\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}"
            ),
            self.sent,
            self.answered,
            self.echoed,
            self.lost,
            self.errors,
            self.refused,
            self.sent_by_type[0],
            self.sent_by_type[1],
            self.sent_by_type[2],
            self.sent_by_type[3],
            self.elapsed.as_secs_f64(),
            self.sent_pps,
            self.answered_pps,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )
    }

    /// A few human-readable lines.
    pub fn human(&self) -> String {
        let pct = |n: u64| {
            if self.sent == 0 {
                0.0
            } else {
                100.0 * n as f64 / self.sent as f64
            }
        };
        format!(
            "sent      {} in {:.2} s = {:.0} packets/s (status/open/close/wrong PIN {}/{}/{}/{})\n\
             replies   {:.0} packets/s: answered {} ({:.2} %), echoed {} ({:.2} %), refused {}\n\
             lost      {} ({:.3} %), errors {}\n\
             round trip p50 {} µs, p99 {} µs, p999 {} µs, max {} µs",
            self.sent,
            self.elapsed.as_secs_f64(),
            self.sent_pps,
            self.sent_by_type[0],
            self.sent_by_type[1],
            self.sent_by_type[2],
            self.sent_by_type[3],
            self.answered_pps,
            self.answered,
            pct(self.answered),
            self.echoed,
            pct(self.echoed),
            self.refused,
            self.lost,
            pct(self.lost),
            self.errors,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )
    }
}

/// One thread's counters.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counts {
    pub(super) sent: u64,
    pub(super) answered: u64,
    pub(super) echoed: u64,
    pub(super) lost: u64,
    pub(super) errors: u64,
    pub(super) refused: u64,
    pub(super) by_type: [u64; 4],
}

impl Counts {
    pub(super) fn add(&mut self, o: &Counts) {
        self.sent += o.sent;
        self.answered += o.answered;
        self.echoed += o.echoed;
        self.lost += o.lost;
        self.errors += o.errors;
        self.refused += o.refused;
        for (a, b) in self.by_type.iter_mut().zip(o.by_type) {
            *a += b;
        }
    }
}
