//! Freshness (SPEC.md §8.3): every request carries the device clock; the server keeps the
//! device's clock offset and rejects requests outside the skew.

/// Largest accepted difference between a request's device time and the server's estimate of
/// the device clock (server time plus the device's offset), in milliseconds.
pub const MAX_SKEW_MS: u64 = 90_000;

/// The device's clock offset measured from one request: `device_time - server_time`.
pub fn offset_ms(device_time_ms: u64, server_now_ms: u64) -> i64 {
    let diff = i128::from(device_time_ms) - i128::from(server_now_ms);
    diff.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Whether a request is fresh: `|device_time - (server_now + offset)| <= MAX_SKEW_MS`.
pub fn is_fresh(device_time_ms: u64, server_now_ms: u64, device_offset_ms: i64) -> bool {
    let expected = i128::from(server_now_ms) + i128::from(device_offset_ms);
    (i128::from(device_time_ms) - expected).unsigned_abs() <= u128::from(MAX_SKEW_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_relative_to_the_learned_offset() {
        let now = 1_800_000_000_000;
        assert!(is_fresh(now, now, 0));
        assert!(is_fresh(now + MAX_SKEW_MS, now, 0));
        assert!(!is_fresh(now + MAX_SKEW_MS + 1, now, 0));
        assert!(!is_fresh(now - MAX_SKEW_MS - 1, now, 0));
        // A phone ten minutes fast, once its offset is known.
        let fast = now + 600_000;
        assert!(!is_fresh(fast, now, 0));
        assert!(is_fresh(fast, now, offset_ms(fast, now)));
        assert_eq!(offset_ms(0, u64::MAX), i64::MIN);
    }
}
