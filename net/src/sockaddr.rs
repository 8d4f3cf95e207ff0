//! Conversions between `SocketAddr` and the kernel's `sockaddr` structures.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// A `sockaddr_storage` big enough for either family, with its length.
#[derive(Clone, Copy)]
pub(crate) struct RawAddr {
    pub storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

impl RawAddr {
    pub fn zeroed() -> RawAddr {
        RawAddr {
            // SAFETY: sockaddr_storage is plain old data; all-zero bytes are a valid value.
            storage: unsafe { std::mem::zeroed() },
            len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    pub fn from_socket_addr(addr: &SocketAddr) -> RawAddr {
        let mut raw = RawAddr::zeroed();
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in; we
                // write one whole sockaddr_in at its start.
                unsafe {
                    std::ptr::write(
                        (&mut raw.storage as *mut libc::sockaddr_storage)
                            .cast::<libc::sockaddr_in>(),
                        sin,
                    )
                };
                raw.len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe {
                    std::ptr::write(
                        (&mut raw.storage as *mut libc::sockaddr_storage)
                            .cast::<libc::sockaddr_in6>(),
                        sin6,
                    )
                };
                raw.len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        raw
    }
}

/// Reads a socket address from `bytes` (a `sockaddr_in` or `sockaddr_in6` as the kernel wrote
/// it, `len` bytes of it valid). `None` for another family or a short buffer.
pub(crate) fn socket_addr_from_bytes(bytes: &[u8], len: usize) -> Option<SocketAddr> {
    let bytes = bytes.get(..len)?;
    let family = u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]);
    let port = u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]);
    if i32::from(family) == libc::AF_INET {
        let ip: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
        Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
    } else if i32::from(family) == libc::AF_INET6 {
        let flowinfo = u32::from_ne_bytes(bytes.get(4..8)?.try_into().ok()?);
        let ip: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
        let scope = u32::from_ne_bytes(bytes.get(24..28)?.try_into().ok()?);
        Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            flowinfo,
            scope,
        )))
    } else {
        None
    }
}

/// The bytes of a `sockaddr_storage`.
pub(crate) fn storage_bytes(storage: &libc::sockaddr_storage) -> &[u8] {
    // SAFETY: sockaddr_storage is plain old data of exactly this size; the slice borrows it.
    unsafe {
        std::slice::from_raw_parts(
            (storage as *const libc::sockaddr_storage).cast::<u8>(),
            std::mem::size_of::<libc::sockaddr_storage>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        for addr in [
            "127.0.0.1:4500".parse::<SocketAddr>().unwrap(),
            "[::1]:65535".parse().unwrap(),
            "[fe80::1%3]:1".parse().unwrap(),
        ] {
            let raw = RawAddr::from_socket_addr(&addr);
            let back = socket_addr_from_bytes(storage_bytes(&raw.storage), raw.len as usize);
            assert_eq!(back, Some(addr));
        }
        assert_eq!(socket_addr_from_bytes(&[0; 3], 3), None);
        let mut unix = [0u8; 16];
        unix[0] = libc::AF_UNIX as u8;
        assert_eq!(socket_addr_from_bytes(&unix, 16), None);
    }
}
