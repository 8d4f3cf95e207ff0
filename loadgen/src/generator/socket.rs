//! A generator thread's socket: a plain `std` UDP socket (one system call per datagram) or
//! one of `zoftoken_net`'s drivers (`recvmmsg`/`sendmmsg` or io_uring).

use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use zoftoken_net::{open_driver, Driver, DriverKind, PacketBatch};

use super::window::MAX_WAIT;

/// A thread's socket.
pub(super) enum Sock {
    /// The socket, whether it is non-blocking, its read timeout.
    Std(UdpSocket, bool, Duration),
    Driver(Box<dyn Driver>),
}

impl Sock {
    pub(super) fn open(kind: Option<DriverKind>, first: Option<&SocketAddr>) -> io::Result<Sock> {
        let local = match first {
            Some(SocketAddr::V6(_)) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
            _ => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        };
        Ok(match kind {
            None => {
                let s = UdpSocket::bind(local)?;
                s.set_nonblocking(true)?;
                s.set_read_timeout(Some(MAX_WAIT))?;
                Sock::Std(s, true, MAX_WAIT)
            }
            Some(kind) => {
                // Port 0: every thread gets its own port despite SO_REUSEPORT.
                Sock::Driver(open_driver(kind, local)?.0)
            }
        })
    }

    /// Sends the batch; returns how many datagrams the socket refused (best effort: the
    /// drivers count refusals without saying which).
    pub(super) fn send(&mut self, batch: &PacketBatch) -> u64 {
        match self {
            Sock::Std(s, ..) => batch
                .iter()
                .filter(|(peer, d)| s.send_to(d, *peer).is_err())
                .count() as u64,
            Sock::Driver(d) => {
                let before = d
                    .stats()
                    .send_errors
                    .load(std::sync::atomic::Ordering::Relaxed);
                let failed = d.send(batch).is_err();
                let after = d
                    .stats()
                    .send_errors
                    .load(std::sync::atomic::Ordering::Relaxed);
                if failed && after == before {
                    batch.len() as u64
                } else {
                    after - before
                }
            }
        }
    }

    /// Receives what is there, waiting up to `wait` for the first datagram.
    pub(super) fn recv(&mut self, into: &mut PacketBatch, wait: Duration) -> io::Result<usize> {
        match self {
            Sock::Driver(d) => d.recv(into, wait),
            Sock::Std(s, nonblocking, timeout) => {
                // Whole milliseconds, as the drivers' poll, so that the timeout changes
                // (a system call) only now and then.
                let wait = Duration::from_millis(wait.as_micros().div_ceil(1000) as u64);
                if !wait.is_zero() && wait != *timeout {
                    s.set_read_timeout(Some(wait))?;
                    *timeout = wait;
                }
                let mut n = 0;
                while !into.is_full() {
                    let want_block = n == 0 && !wait.is_zero();
                    if want_block == *nonblocking {
                        s.set_nonblocking(!want_block)?;
                        *nonblocking = !want_block;
                    }
                    let Some(buf) = into.next_buffer() else { break };
                    match s.recv_from(buf) {
                        Ok((len, peer)) => {
                            into.commit(peer, len);
                            n += 1;
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            break
                        }
                        Err(e) => return if n == 0 { Err(e) } else { Ok(n) },
                    }
                }
                Ok(n)
            }
        }
    }
}
