//! The portable driver: `poll` + `recvmmsg` to receive a batch, `sendmmsg` to send one.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::batch::{PacketBatch, MAX_DATAGRAM};
use crate::sockaddr::{socket_addr_from_bytes, storage_bytes, RawAddr};
use crate::{Driver, DriverStats};

/// How long a send waits for room in a full socket buffer before it counts the rest as lost.
const SEND_WAIT: Duration = Duration::from_millis(2);

/// `recvmmsg`/`sendmmsg` on one socket. The message headers are kept between calls (no
/// allocation per batch once the largest batch was seen).
pub struct MmsgDriver {
    socket: UdpSocket,
    stats: DriverStats,
    scratch: Scratch,
}

/// Message headers, I/O vectors and addresses for one call. The pointers inside are set at
/// the start of each call to memory that outlives it and are not used afterwards.
struct Scratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<RawAddr>,
}

// SAFETY: the raw pointers in `hdrs` and `iovs` are only dereferenced (by the kernel) during
// a call on the thread that set them, and are overwritten before every use; moving the
// driver to another thread between calls moves no live borrow.
unsafe impl Send for Scratch {}

impl Scratch {
    fn ensure(&mut self, n: usize) {
        while self.hdrs.len() < n {
            // SAFETY: mmsghdr and iovec are plain old data; all-zero (null pointers, zero
            // lengths) is a valid value, and every field used is set before each call.
            self.hdrs.push(unsafe { std::mem::zeroed() });
            // SAFETY: as above.
            self.iovs.push(unsafe { std::mem::zeroed() });
            self.addrs.push(RawAddr::zeroed());
        }
    }

    /// Points header `i` at iovec `i` and address `i`.
    fn link(&mut self, i: usize, buf: *mut u8, len: usize, name_len: libc::socklen_t) {
        let (Some(hdr), Some(iov), Some(addr)) = (
            self.hdrs.get_mut(i),
            self.iovs.get_mut(i),
            self.addrs.get_mut(i),
        ) else {
            return;
        };
        iov.iov_base = buf.cast();
        iov.iov_len = len;
        addr.len = name_len;
        hdr.msg_hdr.msg_name = (&mut addr.storage as *mut libc::sockaddr_storage).cast();
        hdr.msg_hdr.msg_namelen = name_len;
        hdr.msg_hdr.msg_iov = iov;
        hdr.msg_hdr.msg_iovlen = 1;
        hdr.msg_hdr.msg_control = std::ptr::null_mut();
        hdr.msg_hdr.msg_controllen = 0;
        hdr.msg_hdr.msg_flags = 0;
        hdr.msg_len = 0;
    }
}

/// Waits until `fd` has one of `events`, at most `timeout` (to the microsecond: a server
/// waiting for a database commit looks again after tens of microseconds).
fn poll_fd(fd: libc::c_int, events: libc::c_short, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        // Below 10^9: fits every platform's `c_long`.
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, count 1; a valid timespec; no signal mask (null).
    let r = unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) };
    r > 0
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl MmsgDriver {
    /// The driver on `socket` (made non-blocking).
    pub fn new(socket: UdpSocket) -> io::Result<MmsgDriver> {
        socket.set_nonblocking(true)?;
        Ok(MmsgDriver {
            socket,
            stats: DriverStats::default(),
            scratch: Scratch {
                hdrs: Vec::new(),
                iovs: Vec::new(),
                addrs: Vec::new(),
            },
        })
    }
}

impl Driver for MmsgDriver {
    fn name(&self) -> &'static str {
        "recvmmsg"
    }

    fn recv(&mut self, into: &mut PacketBatch, timeout: Duration) -> io::Result<usize> {
        let start = into.len();
        let free = into.capacity() - start;
        if free == 0 {
            return Ok(0);
        }
        let fd = self.socket.as_raw_fd();
        self.scratch.ensure(free);
        let name_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        for i in 0..free {
            if let Some((buf, _, _)) = into.slot_mut(start + i) {
                let ptr = buf.as_mut_ptr();
                self.scratch.link(i, ptr, MAX_DATAGRAM, name_len);
            }
        }
        let hdrs = self.scratch.hdrs.as_mut_ptr();
        let receive = || {
            // SAFETY: the first `free` headers point at `free` distinct, writable buffers of
            // MAX_DATAGRAM bytes in `into` (borrowed mutably for this call) and at address
            // slots of `name_len` bytes in `self.scratch`; the kernel writes within those
            // bounds.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs,
                    free as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        };
        // Under load datagrams are waiting: take them without a `poll` first, and wait
        // only when there were none.
        let mut received = receive();
        if !timeout.is_zero() && received.as_ref().is_err_and(would_block) {
            if !poll_fd(fd, libc::POLLIN, timeout) {
                return Ok(0);
            }
            received = receive();
        }
        let n = match received {
            Ok(n) => n,
            Err(e) => {
                if !would_block(&e) {
                    DriverStats::add(&self.stats.recv_errors, 1);
                }
                return Ok(0);
            }
        };
        let mut kept = start;
        for i in 0..n {
            let (Some(hdr), Some(addr)) = (self.scratch.hdrs.get(i), self.scratch.addrs.get(i))
            else {
                break;
            };
            let peer = socket_addr_from_bytes(
                storage_bytes(&addr.storage),
                hdr.msg_hdr.msg_namelen as usize,
            );
            let (Some(peer), false) = (peer, hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0) else {
                DriverStats::add(&self.stats.truncated, 1);
                continue;
            };
            let len = hdr.msg_len as usize;
            if kept != start + i {
                into.move_slot(start + i, kept);
            }
            if let Some((_, p, l)) = into.slot_mut(kept) {
                *p = peer;
                *l = len;
            }
            kept += 1;
        }
        into.set_len(kept);
        DriverStats::add(&self.stats.received, (kept - start) as u64);
        Ok(kept - start)
    }

    fn send(&mut self, batch: &PacketBatch) -> io::Result<()> {
        let n = batch.len();
        if n == 0 {
            return Ok(());
        }
        self.scratch.ensure(n);
        for (i, (peer, data)) in batch.iter().enumerate() {
            let raw = RawAddr::from_socket_addr(&peer);
            if let Some(a) = self.scratch.addrs.get_mut(i) {
                *a = raw;
            }
            // The kernel only reads from a send's buffers.
            self.scratch
                .link(i, data.as_ptr().cast_mut(), data.len(), raw.len);
        }
        let fd = self.socket.as_raw_fd();
        let mut done = 0;
        let mut sent = 0;
        let mut waited = false;
        while done < n {
            let Some(rest) = self.scratch.hdrs.get_mut(done..n) else {
                break;
            };
            // SAFETY: headers done..n point at the batch's datagrams (borrowed for this call)
            // and at addresses in `self.scratch`, all valid for the lengths given.
            let r = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as libc::c_uint, 0) };
            if r > 0 {
                done += r as usize;
                sent += r as u64;
                continue;
            }
            let e = io::Error::last_os_error();
            if would_block(&e) && !waited {
                waited = true;
                poll_fd(fd, libc::POLLOUT, SEND_WAIT);
                continue;
            }
            if would_block(&e) {
                // Still full: what is left is lost, as on any congested link.
                DriverStats::add(&self.stats.send_errors, (n - done) as u64);
                break;
            }
            // The first remaining datagram failed (unreachable peer, …): skip it.
            DriverStats::add(&self.stats.send_errors, 1);
            done += 1;
        }
        DriverStats::add(&self.stats.sent, sent);
        Ok(())
    }

    fn stats(&self) -> &DriverStats {
        &self.stats
    }
}
