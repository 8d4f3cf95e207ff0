//! Rate limiting of failed authentications per source address, in bounded memory, and the
//! client address behind trusted reverse proxies.
//!
//! The limiter is consulted only for requests whose key is missing or unknown: a key that
//! exists always passes (its masks and rights are checked as usual), so nobody can lock the
//! holders of valid keys out by failing from many addresses or through a shared proxy. A
//! source (an IPv4 address, or the /64 of an IPv6 address, since one host usually holds a
//! whole /64) that sent [`MAX_FAILURES`] missing or unknown keys within [`WINDOW_MS`] is
//! answered 429 instead of 401 until its window ends. The key is always looked up first, so a
//! limited and an unlimited refusal cost the same work.
//!
//! At most [`CAPACITY`] sources are remembered; when the table is full, the least recently
//! failing source is evicted (an LRU: a limited source that keeps trying stays in the table,
//! a flood of new addresses only pushes out sources that went quiet). Memory never grows past the capacity and no two sources ever share an entry.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
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
    /// Position in the recency order (key of [`Table::order`]).
    stamp: u64,
}

#[derive(Default)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// Recency order: stamp → source, oldest first.
    order: BTreeMap<u64, IpAddr>,
    /// The next stamp (increases with every failure recorded).
    next_stamp: u64,
}

impl Table {
    fn touch(&mut self, k: IpAddr) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some(e) = self.entries.get_mut(&k) {
            self.order.remove(&e.stamp);
            e.stamp = stamp;
            self.order.insert(stamp, k);
        }
    }

    /// Makes room for one new source: evicts the least recently failing ones.
    fn make_room(&mut self) {
        while self.entries.len() >= CAPACITY {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }
}

/// The limiter.
pub(crate) struct Limiter {
    table: Mutex<Table>,
}

/// The limiter's key of a source address: IPv4 (also IPv4-mapped IPv6) as is, IPv6 by /64.
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
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

impl Limiter {
    pub fn new() -> Limiter {
        Limiter {
            table: Mutex::new(Table::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a failed authentication (a missing or unknown key) from `ip`. Answers the
    /// seconds until `ip` may try again if it was already limited (the failure is not
    /// counted then, but keeps the source in the table), `None` if it was not.
    pub fn fail(&self, ip: IpAddr, now_ms: u64) -> Option<u64> {
        let k = source_key(ip);
        let mut t = self.lock();
        if !t.entries.contains_key(&k) {
            t.make_room();
            t.entries.insert(
                k,
                Entry {
                    start_ms: now_ms,
                    failures: 0,
                    stamp: u64::MAX,
                },
            );
        }
        t.touch(k);
        let e = t.entries.get_mut(&k)?;
        let end = e.start_ms.saturating_add(WINDOW_MS);
        if now_ms >= end {
            e.start_ms = now_ms;
            e.failures = 0;
        } else if e.failures >= MAX_FAILURES {
            return Some((end - now_ms).div_ceil(1000));
        }
        e.failures = e.failures.saturating_add(1);
        None
    }

    /// Sources remembered now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let t = self.lock();
        assert_eq!(t.entries.len(), t.order.len());
        t.entries.len()
    }
}

/// An address range of trusted reverse proxies (`api.trusted_proxies`): an address, or an
/// address and a prefix length (`10.0.0.0/8`, `fd00::/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

/// Why an address range could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not an IP address or a CIDR range (e.g. 10.0.0.0/8, 2001:db8::/32)")]
pub struct IpRangeError(pub String);

impl std::str::FromStr for IpRange {
    type Err = IpRangeError;

    fn from_str(s: &str) -> Result<IpRange, IpRangeError> {
        let bad = || IpRangeError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        Ok(IpRange { addr, prefix })
    }
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl IpRange {
    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |full: u128, width: u32| {
            let p = u32::from(self.prefix);
            if p == 0 {
                0
            } else {
                full >> (width - p)
            }
        };
        match (canonical(self.addr), canonical(ip)) {
            (IpAddr::V4(r), IpAddr::V4(a)) => {
                bits(u128::from(u32::from(r)), 32) == bits(u128::from(u32::from(a)), 32)
            }
            (IpAddr::V6(r), IpAddr::V6(a)) => bits(u128::from(r), 128) == bits(u128::from(a), 128),
            _ => false,
        }
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then the last
/// address of `X-Forwarded-For` (all its headers, in order) that is not a trusted proxy
/// itself (the first one if all are). A header that does not parse as a list of addresses
/// is ignored (the proxy's own address is used).
pub(crate) fn client_address<'a>(
    peer: IpAddr,
    trusted: &[IpRange],
    forwarded_for: impl Iterator<Item = &'a [u8]>,
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|r| r.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in forwarded_for {
        let Ok(text) = std::str::from_utf8(value) else {
            return peer;
        };
        for item in text.split(',') {
            match item.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                Err(_) => return peer,
            }
        }
    }
    hops.iter()
        .rev()
        .find(|ip| !is_trusted(**ip))
        .or(hops.first())
        .copied()
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn limits_per_source_for_a_window() {
        let l = Limiter::new();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert_eq!(l.fail(a, 1000), None);
        }
        assert_eq!(l.fail(a, 1000), Some(60));
        assert_eq!(l.fail(a, 31_000), Some(30));
        assert_eq!(l.fail(b, 1000), None);
        assert_eq!(l.fail(a, 1000 + WINDOW_MS), None);
        // One IPv6 host's /64 counts as one source.
        for i in 0..MAX_FAILURES {
            assert_eq!(
                l.fail(format!("2001:db8::{i:x}").parse().unwrap(), 5000),
                None
            );
        }
        assert!(l.fail("2001:db8::ffff".parse().unwrap(), 5000).is_some());
        assert!(l.fail("2001:db8:0:1::1".parse().unwrap(), 5000).is_none());
    }

    #[test]
    fn a_full_table_evicts_the_least_recent_source_and_never_shares_an_entry() {
        let l = Limiter::new();
        let attacker: IpAddr = "198.51.100.7".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            l.fail(attacker, 0);
        }
        // Thousands of distinct sources, one failure each, while the attacker keeps trying.
        for i in 0..(CAPACITY as u32 * 3) {
            assert_eq!(l.fail(IpAddr::V4((0x7f00_0000 + i).into()), 10), None);
            if i % 1000 == 0 {
                assert!(l.fail(attacker, 10).is_some());
            }
            assert!(l.len() <= CAPACITY);
        }
        // The active attacker is still limited; a new source is not (no shared slot).
        assert!(l.fail(attacker, 20).is_some());
        assert_eq!(l.fail("203.0.113.1".parse().unwrap(), 20), None);
        // Sources that went quiet were evicted, oldest first.
        assert_eq!(l.len(), CAPACITY);
        for _ in 0..MAX_FAILURES - 1 {
            assert_eq!(l.fail(IpAddr::V4(0x7f00_0000.into()), 20), None);
        }
    }

    #[test]
    fn ranges_and_the_forwarded_client() {
        let r: IpRange = "10.0.0.0/8".parse().unwrap();
        assert!(r.contains("10.1.2.3".parse().unwrap()));
        assert!(r.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!r.contains("11.0.0.1".parse().unwrap()));
        let one: IpRange = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let all: IpRange = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x", "10.0.0.0/", "10.0.0.0/+8", "::/129", ""] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        let xff = |v: &'static [&'static str]| v.iter().map(|s| s.as_bytes());
        // Not trusted: the header is ignored.
        assert_eq!(client_address(client, &[], xff(&["192.0.2.1"])), client);
        assert_eq!(client_address(proxy, &[], xff(&["192.0.2.1"])), proxy);
        // Trusted: the last untrusted hop; a spoofed prefix does not help the client.
        assert_eq!(
            client_address(proxy, &[r], xff(&["192.0.2.66, 203.0.113.9, 10.0.0.4"])),
            client
        );
        assert_eq!(
            client_address(proxy, &[r], xff(&["192.0.2.66", "203.0.113.9"])),
            client
        );
        assert_eq!(client_address(proxy, &[r], xff(&[])), proxy);
        assert_eq!(client_address(proxy, &[r], xff(&["nonsense"])), proxy);
        assert_eq!(
            client_address(proxy, &[r], xff(&["10.0.0.9"])),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
    }
}
