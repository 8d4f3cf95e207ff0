//! UDP sockets bound with `SO_REUSEPORT`.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};

use crate::sockaddr::RawAddr;

/// Receive buffer asked for each socket (the kernel caps it at `net.core.rmem_max`).
const RECV_BUFFER: libc::c_int = 8 << 20;
/// Send buffer asked for each socket.
const SEND_BUFFER: libc::c_int = 4 << 20;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn set_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is an open socket; the option value is a c_int living across the call and
    // its size is passed.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// A non-blocking UDP socket with `SO_REUSEPORT` (several sockets, one per IO thread, share
/// the port and the kernel spreads datagrams among them by flow) and large buffers, bound to
/// `addr`.
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<UdpSocket> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain system call; the result is checked.
    let fd = check(unsafe {
        libc::socket(
            family,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else; OwnedFd closes
    // it on every error path below.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    // Larger buffers are a wish, not a requirement.
    let _ = set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, RECV_BUFFER);
    let _ = set_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, SEND_BUFFER);
    let raw = RawAddr::from_socket_addr(&addr);
    // SAFETY: `raw.storage` holds a sockaddr of `raw.len` bytes for the socket's family.
    check(unsafe {
        libc::bind(
            fd,
            (&raw.storage as *const libc::sockaddr_storage).cast(),
            raw.len,
        )
    })?;
    Ok(UdpSocket::from(owned))
}
