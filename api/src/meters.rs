//! The request metrics: a counter per operation and status, and a latency histogram per
//! operation (`zoftoken_api_requests_total`, `zoftoken_api_request_seconds`).
//!
//! The counters go through the `metrics` recorder. The latency histograms are kept here, as
//! relaxed atomic bucket counts (a request costs two atomic additions, not a sample queued
//! for the recorder's upkeep), and [`Meters::render_latency`] writes them in the Prometheus
//! exporter's text format, with its buckets ([`LATENCY_BUCKETS_S`]), for `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

use hyper::StatusCode;

use crate::routes::{Operation, ROUTES};
use crate::LATENCY_BUCKETS_S;

/// The latency histograms' name.
const LATENCY: &str = "zoftoken_api_request_seconds";

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
    /// [`LATENCY_BUCKETS_S`] in nanoseconds.
    bounds_ns: Vec<u64>,
}

struct OpMeters {
    op: &'static str,
    /// One per [`STATUSES`] entry.
    counters: Vec<OnceLock<metrics::Counter>>,
    latency: Latency,
}

/// One operation's latency histogram.
struct Latency {
    /// Requests per bucket, not cumulative: at most each bound of [`LATENCY_BUCKETS_S`] (and
    /// above the one before), then above them all (`+Inf`).
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    /// Sum of the latencies, in nanoseconds.
    sum_ns: AtomicU64,
}

impl Latency {
    fn new() -> Latency {
        Latency {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }

    fn record(&self, bounds_ns: &[u64], elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let i = bounds_ns
            .iter()
            .position(|b| ns <= *b)
            .unwrap_or(bounds_ns.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Relaxed);
        }
        self.sum_ns.fetch_add(ns, Relaxed);
    }
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
                latency: Latency::new(),
            })
            .collect();
        let bounds_ns = LATENCY_BUCKETS_S
            .iter()
            .map(|s| (s * 1e9).round() as u64)
            .collect();
        Meters {
            requests,
            bounds_ns,
        }
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
        m.latency.record(&self.bounds_ns, elapsed);
    }

    /// Appends the latency histograms of the operations that had requests to `out`, as the
    /// Prometheus exporter writes histograms: a `# TYPE` line, per operation its cumulative
    /// buckets (`le`), `+Inf`, `_sum` (seconds) and `_count`, then an empty line.
    pub fn render_latency(&self, out: &mut String) {
        let mut header = false;
        for m in &self.requests {
            let counts: Vec<u64> = m.latency.buckets.iter().map(|b| b.load(Relaxed)).collect();
            let count: u64 = counts.iter().sum();
            if count == 0 {
                continue;
            }
            if !header {
                let _ = writeln!(out, "# TYPE {LATENCY} histogram");
                header = true;
            }
            let op = m.op;
            let mut cumulative = 0;
            for (bound, n) in LATENCY_BUCKETS_S.iter().zip(&counts) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "{LATENCY}_bucket{{op=\"{op}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let sum = m.latency.sum_ns.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{LATENCY}_bucket{{op=\"{op}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{LATENCY}_sum{{op=\"{op}\"}} {sum}");
            let _ = writeln!(out, "{LATENCY}_count{{op=\"{op}\"}} {count}");
        }
        if header {
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// The exporter's own text for the same requests, from a recorder of its own.
    fn exporter_text(samples: &[(Operation, Duration)]) -> String {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS_S)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            for (op, elapsed) in samples {
                metrics::histogram!(LATENCY, "op" => op.id()).record(elapsed.as_secs_f64());
            }
        });
        handle.render()
    }

    /// One operation's lines of a rendering.
    fn lines_of(text: &str, op: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.contains(&format!("op=\"{op}\"")))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn latency_histograms_are_rendered_as_the_exporter_renders_them() {
        let meters = Meters::new();
        let ms = Duration::from_millis;
        let samples = [
            (Operation::TokenStatus, Duration::from_micros(100)),
            (Operation::TokenStatus, Duration::from_micros(250)),
            (Operation::TokenStatus, Duration::from_micros(251)),
            (Operation::TokenStatus, ms(3)),
            (Operation::TokenStatus, ms(61_000)),
            (Operation::Healthz, ms(1)),
            (Operation::Healthz, ms(25)),
        ];
        for (op, elapsed) in samples {
            meters.record(Some(op), StatusCode::OK, elapsed);
        }
        let mut ours = String::new();
        meters.render_latency(&mut ours);
        let theirs = exporter_text(&samples);
        assert!(ours.starts_with("# TYPE zoftoken_api_request_seconds histogram\n"));
        assert!(theirs.contains("# TYPE zoftoken_api_request_seconds histogram\n"));
        for op in ["token_status", "healthz"] {
            let (mut a, mut b) = (lines_of(&ours, op), lines_of(&theirs, op));
            // The sums are written from nanoseconds here, from added floats there.
            let sum = |l: &mut Vec<String>| {
                let i = l.iter().position(|x| x.contains("_sum{")).unwrap();
                let v: f64 = l.remove(i).rsplit(' ').next().unwrap().parse().unwrap();
                v
            };
            assert!((sum(&mut a) - sum(&mut b)).abs() < 1e-9, "{op}");
            assert_eq!(a, b, "{op}");
            assert_eq!(a.len(), LATENCY_BUCKETS_S.len() + 2);
        }
        assert!(ours.contains("le=\"+Inf\"} 5\n"));
        // Operations without requests are not listed.
        assert!(lines_of(&ours, "token_enroll").is_empty());
        let mut none = String::new();
        Meters::new().render_latency(&mut none);
        assert_eq!(none, "");
    }
}
