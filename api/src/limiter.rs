//! Rate limiting of failed authentications per source address, in bounded memory.
//!
//! A source (an IPv4 address, or the /64 of an IPv6 address, since one host usually holds a
//! whole /64) that sent [`MAX_FAILURES`] unknown or missing keys within [`WINDOW_MS`] is refused
//! with 429 until its window ends, before its key is even looked at. At most [`CAPACITY`]
//! sources are remembered; when full, expired ones are dropped and, if none is, new sources
//! share one overflow entry (which then limits them together: memory never grows). The
//! request path pays one atomic load while nobody is limited.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Failures allowed per source and window.
pub const MAX_FAILURES: u32 = 20;
/// The window (ms).
pub const WINDOW_MS: u64 = 60_000;
/// Sources remembered at most.
pub const CAPACITY: usize = 4096;

struct Entry {
    start_ms: u64,
    failures: u32,
}

/// The limiter.
pub(crate) struct Limiter {
    entries: Mutex<HashMap<IpAddr, Entry>>,
    /// Entries currently held (0: the check is one atomic load).
    held: AtomicUsize,
}

fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The shared entry of sources that found the table full.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

impl Limiter {
    pub fn new() -> Limiter {
        Limiter {
            entries: Mutex::new(HashMap::new()),
            held: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seconds until `ip` may try again, if it is limited now.
    pub fn limited(&self, ip: IpAddr, now_ms: u64) -> Option<u64> {
        if self.held.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let entries = self.lock();
        let e = entries
            .get(&key(ip))
            .or_else(|| entries.get(&OVERFLOW).filter(|_| entries.len() >= CAPACITY))?;
        let end = e.start_ms.saturating_add(WINDOW_MS);
        (e.failures >= MAX_FAILURES && now_ms < end).then(|| (end - now_ms).div_ceil(1000))
    }

    /// Records a failed authentication from `ip`.
    pub fn fail(&self, ip: IpAddr, now_ms: u64) {
        let mut entries = self.lock();
        let mut k = key(ip);
        if !entries.contains_key(&k) && entries.len() >= CAPACITY {
            entries.retain(|_, e| now_ms < e.start_ms.saturating_add(WINDOW_MS));
            if entries.len() >= CAPACITY {
                k = OVERFLOW;
            }
        }
        let e = entries.entry(k).or_insert(Entry {
            start_ms: now_ms,
            failures: 0,
        });
        if now_ms >= e.start_ms.saturating_add(WINDOW_MS) {
            *e = Entry {
                start_ms: now_ms,
                failures: 0,
            };
        }
        e.failures = e.failures.saturating_add(1);
        self.held.store(entries.len(), Ordering::Relaxed);
    }

    /// Sources remembered now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn limits_per_source_for_a_window_and_stays_bounded() {
        let l = Limiter::new();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..MAX_FAILURES - 1 {
            l.fail(a, 1000);
        }
        assert_eq!(l.limited(a, 1000), None);
        l.fail(a, 1000);
        assert_eq!(l.limited(a, 1000), Some(60));
        assert_eq!(l.limited(b, 1000), None);
        assert_eq!(l.limited(a, 1000 + WINDOW_MS), None);
        // One IPv6 host's /64 counts as one source.
        for i in 0..MAX_FAILURES {
            l.fail(format!("2001:db8::{i:x}").parse().unwrap(), 5000);
        }
        assert!(l.limited("2001:db8::ffff".parse().unwrap(), 5000).is_some());
        // Bounded: many sources never grow the table past its capacity.
        for i in 0..(CAPACITY as u32 * 2) {
            l.fail(IpAddr::V4(i.into()), 10_000);
        }
        assert!(l.len() <= CAPACITY + 1);
    }
}
