//! The delay before the next attempt: the receiver's `Retry-After` on a 429 or 503 (within
//! bounds, using up no step of the schedule), else the schedule's next delay with jitter, cut
//! to the end of the retry period.

use std::time::Duration;

use crate::http::Attempt;
use crate::PipelineConfig;

/// Shortest delay a `Retry-After` can ask for (a `Retry-After: 0` loop would be a flood).
pub(crate) const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The next delay after a failed attempt: `(delay, steps used)`. A honoured `Retry-After`
/// (429 or 503) is the delay, within [`MIN_RETRY_AFTER`] and `max_retry_after`, and uses no
/// step; otherwise the schedule's delay for `step` (the last entry repeating) with jitter, cut
/// so that the attempt falls no later than `left` (the time left of `retry_for`).
pub(super) fn retry_delay(
    cfg: &PipelineConfig,
    rng: &mut u64,
    attempt: &Attempt,
    step: usize,
    left: Duration,
) -> (Duration, usize) {
    let honour = matches!(attempt.status, Some(429) | Some(503));
    match attempt.retry_after.filter(|_| honour) {
        Some(d) => (d.max(MIN_RETRY_AFTER).min(cfg.max_retry_after), 0),
        None => {
            let base = cfg
                .retry_delays
                .get(step)
                .or(cfg.retry_delays.last())
                .copied()
                .unwrap_or(Duration::ZERO);
            (jitter(rng, base, cfg.jitter_percent).min(left), 1)
        }
    }
}

/// `d` spread by ±`percent` % (xorshift; not for secrets).
fn jitter(rng: &mut u64, d: Duration, percent: u8) -> Duration {
    if d.is_zero() || percent == 0 {
        return d;
    }
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let p = f64::from(percent.min(100)) / 100.0;
    let unit = (*rng >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    d.mul_f64(1.0 - p + 2.0 * p * unit)
}
