//! Time for tests: a fixed virtual start for tests on the engine's virtual clock, and the wall
//! clock for tests that run real threads and sockets (a real server, the API).

use std::time::{SystemTime, UNIX_EPOCH};

/// The virtual time tests start at (Unix ms; 2027-01-15): far from 0 and from every boundary.
pub const T0: u64 = 1_800_000_000_000;

/// The wall clock in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
