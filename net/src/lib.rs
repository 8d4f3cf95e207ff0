//! ZofToken's UDP IO drivers: the only crate with `unsafe` code (system calls and the buffers
//! the kernel shares with io_uring; every block carries a `// SAFETY:` comment).
//!
//! A [`Driver`] owns one UDP socket bound with `SO_REUSEPORT` (so that one driver per core can
//! share a port, the kernel spreading datagrams by flow) and moves datagrams in batches between
//! it and reusable [`PacketBatch`]es: [`UringDriver`] with one multishot `RecvMsgMulti` fed by
//! a registered buffer ring and `SendMsg` entries submitted once per batch; [`MmsgDriver`]
//! with `recvmmsg`/`sendmmsg`, for kernels or sandboxes where io_uring is unavailable
//! ([`probe_uring`] tells, with the reason). Socket errors and full buffers are counted in
//! [`DriverStats`], never fatal.
//!
//! It knows nothing of the protocol: no parsing, no crypto, no state. Key types: [`Driver`],
//! [`PacketBatch`], [`UringDriver`], [`MmsgDriver`], [`DriverKind`].

mod batch;
mod mmsg;
mod sockaddr;
mod socket;
mod uring;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use batch::{PacketBatch, MAX_DATAGRAM};
pub use mmsg::MmsgDriver;
pub use socket::bind_reuseport;
pub use uring::{probe_uring, UringDriver};

/// Moves datagrams between one socket and packet batches.
pub trait Driver: Send {
    /// `"io_uring"` or `"recvmmsg"`.
    fn name(&self) -> &'static str;

    /// Waits up to `timeout` (zero: does not wait) for datagrams and appends what is there,
    /// up to the batch's free capacity. Returns how many were appended. Datagrams longer than
    /// [`MAX_DATAGRAM`] are dropped and counted.
    fn recv(&mut self, into: &mut PacketBatch, timeout: Duration) -> io::Result<usize>;

    /// Sends every datagram of `batch` to its peer. Best effort, as UDP is: a datagram the
    /// socket refuses is counted, not retried for long.
    fn send(&mut self, batch: &PacketBatch) -> io::Result<()>;

    /// The driver's counters.
    fn stats(&self) -> &DriverStats;
}

/// Which driver to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// io_uring, multishot receive into a buffer ring.
    Uring,
    /// `recvmmsg` / `sendmmsg`.
    Mmsg,
}

/// Counters of one driver (all since start).
#[derive(Debug, Default)]
pub struct DriverStats {
    /// Datagrams received and handed over.
    pub received: AtomicU64,
    /// Datagrams sent.
    pub sent: AtomicU64,
    /// Datagrams dropped because they were longer than [`MAX_DATAGRAM`].
    pub truncated: AtomicU64,
    /// Datagrams the socket refused to send (full buffer, unreachable peer, …).
    pub send_errors: AtomicU64,
    /// Receive errors (each is followed by a new receive).
    pub recv_errors: AtomicU64,
    /// Times the kernel ran out of receive buffers (io_uring: the buffer ring was empty and
    /// the multishot receive had to be re-armed).
    pub no_buffers: AtomicU64,
}

impl DriverStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Opens the driver of `kind` on a new `SO_REUSEPORT` socket bound to `addr`; returns it with
/// the address it is bound to (port 0 resolved).
pub fn open_driver(
    kind: DriverKind,
    addr: std::net::SocketAddr,
) -> io::Result<(Box<dyn Driver>, std::net::SocketAddr)> {
    let socket =
        bind_reuseport(addr).map_err(|e| io::Error::new(e.kind(), format!("UDP {addr}: {e}")))?;
    let local = socket.local_addr()?;
    let driver: Box<dyn Driver> = match kind {
        DriverKind::Uring => Box::new(UringDriver::new(socket)?),
        DriverKind::Mmsg => Box::new(MmsgDriver::new(socket)?),
    };
    Ok((driver, local))
}

/// Opens `count` (at least 1) drivers of `kind` sharing `addr` (one thread each; with port 0
/// the first socket picks the port and the others join it); returns them with the address.
///
/// One port, one server: `SO_REUSEPORT` would let a second process (of the same user) join
/// the port and silently take part of the traffic, answering devices whose tokens it does not
/// know. So a port that is already bound by anyone is refused with [`io::ErrorKind::AddrInUse`]
/// before this process's sockets bind it (checked with a plain socket, which cannot share a
/// port; two servers started within the same instant are not told apart).
pub fn open_drivers(
    kind: DriverKind,
    addr: std::net::SocketAddr,
    count: usize,
) -> io::Result<(Vec<Box<dyn Driver>>, std::net::SocketAddr)> {
    if addr.port() != 0 {
        if let Err(e) = std::net::UdpSocket::bind(addr) {
            return Err(io::Error::new(
                e.kind(),
                if e.kind() == io::ErrorKind::AddrInUse {
                    format!(
                        "UDP {addr} is already in use by another process (another zoftoken \
                         server?); one port is served by one server"
                    )
                } else {
                    format!("UDP {addr}: {e}")
                },
            ));
        }
    }
    let mut drivers = Vec::with_capacity(count.max(1));
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let (driver, local) = open_driver(kind, addr)?;
        addr = local;
        drivers.push(driver);
    }
    Ok((drivers, addr))
}

#[cfg(test)]
mod tests;
