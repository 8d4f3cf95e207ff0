//! The request metrics: a counter per operation and status, and a latency histogram per
//! operation (`zoftoken_api_requests_total`, `zoftoken_api_request_seconds`).

use std::sync::OnceLock;
use std::time::Duration;

use hyper::StatusCode;

use crate::routes::{Operation, ROUTES};

/// HTTP statuses counted one by one; others count as `other`.
const STATUSES: [(u16, &str); 14] = [
    (200, "200"),
    (201, "201"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (409, "409"),
    (413, "413"),
    (429, "429"),
    (500, "500"),
    (503, "503"),
    (0, "other"),
];

/// The `op` label of requests that match no route (or no method of it).
const UNMATCHED: &str = "unmatched";

/// The request metrics. Each `(op, status)` counter and each op's histogram is registered
/// with the recorder on first use and kept (the binary installs its recorder before starting
/// the API), so a request costs a couple of atomic operations and no label allocation, and
/// `/metrics` lists only what happened.
pub(crate) struct Meters {
    /// One per operation, in [`ROUTES`] order ([`Operation::index`]), then `unmatched`.
    requests: Vec<OpMeters>,
}

struct OpMeters {
    op: &'static str,
    /// One per [`STATUSES`] entry.
    counters: Vec<OnceLock<metrics::Counter>>,
    latency: OnceLock<metrics::Histogram>,
}

impl Meters {
    pub fn new() -> Meters {
        let requests = ROUTES
            .iter()
            .map(|r| r.operation.id())
            .chain(std::iter::once(UNMATCHED))
            .map(|op| OpMeters {
                op,
                counters: STATUSES.iter().map(|_| OnceLock::new()).collect(),
                latency: OnceLock::new(),
            })
            .collect();
        Meters { requests }
    }

    /// Counts a request of `op` (`None`: unmatched) answered with `status` after `elapsed`.
    pub fn record(&self, op: Option<Operation>, status: StatusCode, elapsed: Duration) {
        let slot = op.map_or(ROUTES.len(), Operation::index);
        let Some(m) = self.requests.get(slot) else {
            return;
        };
        let op = m.op;
        let i = STATUSES
            .iter()
            .position(|(code, _)| *code == status.as_u16())
            .unwrap_or(STATUSES.len() - 1);
        if let (Some(c), Some((_, label))) = (m.counters.get(i), STATUSES.get(i)) {
            c.get_or_init(
                || metrics::counter!("zoftoken_api_requests_total", "op" => op, "status" => *label),
            )
            .increment(1);
        }
        m.latency
            .get_or_init(|| metrics::histogram!("zoftoken_api_request_seconds", "op" => op))
            .record(elapsed.as_secs_f64());
    }
}
