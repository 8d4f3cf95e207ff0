//! The io_uring driver: one multishot `RecvMsgMulti` fed by a registered buffer ring, replies
//! as `SendMsg` entries submitted once per batch, re-armed on `ENOBUFS` or a completion
//! without `IORING_CQE_F_MORE`.
//!
//! Memory the kernel uses (the buffer ring, the receive buffers, the receive `msghdr`, the send
//! slots) is allocated once, at fixed heap addresses, and freed only after the kernel is done
//! with it (see `Drop`).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types, IoUring};

use crate::batch::{PacketBatch, MAX_DATAGRAM};
use crate::sockaddr::{socket_addr_from_bytes, RawAddr};
use crate::{Driver, DriverStats};

/// Submission queue entries (the completion queue is twice as large).
const RING_ENTRIES: u32 = 1024;
/// Receive buffers in the buffer ring (a power of two, at most 32 768).
const RECV_BUFFERS: u16 = 1024;
/// One receive buffer: the kernel's `io_uring_recvmsg_out` header (16 bytes), the peer
/// address (a `sockaddr_storage`, 128 bytes) and the payload.
const RECV_BUFFER_SIZE: usize = 16 + 128 + MAX_DATAGRAM;
/// Replies in flight at most (each has its own buffer and headers).
const SEND_SLOTS: usize = 1024;
/// The buffer group id of the receive buffers.
const BUFFER_GROUP: u16 = 0;
/// `user_data` of the multishot receive; sends use their slot number.
const RECV_TAG: u64 = u64::MAX;
/// `user_data` of the cancel request at shutdown.
const CANCEL_TAG: u64 = u64::MAX - 1;
/// Page alignment the kernel requires for the buffer ring.
const PAGE: usize = 4096;

/// The registered ring of receive buffers and the buffers themselves.
struct BufRing {
    /// `RECV_BUFFERS` entries of 16 bytes, page-aligned; entry 0's last field is the tail.
    entries: *mut types::BufRingEntry,
    layout: Layout,
    /// `RECV_BUFFERS * RECV_BUFFER_SIZE` bytes.
    buffers: Box<[u8]>,
    /// Our copy of the tail (the kernel reads the shared one).
    tail: u16,
    /// Set when the kernel may still use the memory: then it is never freed.
    leaked: bool,
}

impl BufRing {
    fn new() -> io::Result<BufRing> {
        let layout = Layout::from_size_align(
            usize::from(RECV_BUFFERS) * std::mem::size_of::<types::BufRingEntry>(),
            PAGE,
        )
        .map_err(|e| io::Error::other(e.to_string()))?;
        // SAFETY: the layout has a non-zero size; the result is checked for null.
        let entries = unsafe { alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        if entries.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(BufRing {
            entries,
            layout,
            buffers: vec![0u8; usize::from(RECV_BUFFERS) * RECV_BUFFER_SIZE].into_boxed_slice(),
            tail: 0,
            leaked: false,
        })
    }

    /// Queues buffer `bid` for the kernel (visible after [`BufRing::publish`]).
    fn give(&mut self, bid: u16) {
        let index = usize::from(self.tail & (RECV_BUFFERS - 1));
        let offset = usize::from(bid) * RECV_BUFFER_SIZE;
        let Some(buf) = self.buffers.get_mut(offset..offset + RECV_BUFFER_SIZE) else {
            return;
        };
        let addr = buf.as_mut_ptr() as u64;
        // SAFETY: `index < RECV_BUFFERS`, so the entry is inside the allocation; the setters
        // write addr, len and bid only, never the `resv` field that is the tail in entry 0.
        unsafe {
            let entry = &mut *self.entries.add(index);
            entry.set_addr(addr);
            entry.set_len(RECV_BUFFER_SIZE as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every buffer given so far visible to the kernel.
    fn publish(&self) {
        // SAFETY: `entries` is the ring's base, initialised (zeroed, then set) and page
        // aligned; `tail` gives the address of entry 0's tail field, a u16 the kernel reads
        // concurrently, so it is written through an atomic with release ordering (the entries
        // written before become visible first).
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    /// Receive buffer `bid`, its first `len` bytes.
    fn buffer(&self, bid: u16, len: usize) -> Option<&[u8]> {
        let offset = usize::from(bid) * RECV_BUFFER_SIZE;
        self.buffers.get(offset..offset + len.min(RECV_BUFFER_SIZE))
    }
}

impl BufRing {
    /// Gives up the memory for good (the kernel may still use it).
    fn leak(&mut self) {
        self.leaked = true;
        std::mem::forget(std::mem::take(&mut self.buffers));
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: allocated in `new` with this layout; the driver frees it only after the
        // kernel let go of it (or leaks it, see `UringDriver::drop`).
        unsafe { dealloc(self.entries.cast(), self.layout) };
    }
}

/// Buffers and headers of the replies in flight.
struct SendSlots {
    bufs: Box<[[u8; MAX_DATAGRAM]]>,
    addrs: Box<[RawAddr]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::msghdr]>,
    free: Vec<u16>,
}

impl SendSlots {
    fn new() -> SendSlots {
        SendSlots {
            bufs: vec![[0u8; MAX_DATAGRAM]; SEND_SLOTS].into_boxed_slice(),
            addrs: vec![RawAddr::zeroed(); SEND_SLOTS].into_boxed_slice(),
            // SAFETY: iovec and msghdr are plain old data; all-zero is a valid value and every
            // field used is set before a slot is submitted.
            iovs: (0..SEND_SLOTS)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
            // SAFETY: as above.
            hdrs: (0..SEND_SLOTS)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
            free: (0..SEND_SLOTS as u16).rev().collect(),
        }
    }

    /// No slots (what replaces leaked ones).
    fn empty() -> SendSlots {
        SendSlots {
            bufs: Box::new([]),
            addrs: Box::new([]),
            iovs: Box::new([]),
            hdrs: Box::new([]),
            free: Vec::new(),
        }
    }

    /// Fills slot `i` with a datagram for `peer` and returns its header.
    fn fill(&mut self, i: usize, peer: &SocketAddr, data: &[u8]) -> Option<*const libc::msghdr> {
        let buf = self.bufs.get_mut(i)?;
        let dst = buf.get_mut(..data.len())?;
        dst.copy_from_slice(data);
        let addr = self.addrs.get_mut(i)?;
        *addr = RawAddr::from_socket_addr(peer);
        let iov = self.iovs.get_mut(i)?;
        iov.iov_base = buf.as_mut_ptr().cast();
        iov.iov_len = data.len();
        let hdr = self.hdrs.get_mut(i)?;
        hdr.msg_name = (&mut addr.storage as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = addr.len;
        hdr.msg_iov = iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = std::ptr::null_mut();
        hdr.msg_controllen = 0;
        hdr.msg_flags = 0;
        Some(hdr as *const libc::msghdr)
    }
}

/// The io_uring driver of one socket.
pub struct UringDriver {
    // Field order matters for drop: see `Drop for UringDriver`.
    ring: IoUring,
    socket: UdpSocket,
    bufring: BufRing,
    /// The header the multishot receive was armed with (names and control lengths only).
    recv_hdr: Box<libc::msghdr>,
    armed: bool,
    /// Whether the ring accepts submissions (a ring with deferred task running starts
    /// disabled until its issuing thread enables it).
    enabled: bool,
    /// Deferred task running: completions must be asked for (`GETEVENTS`).
    deferred: bool,
    send: SendSlots,
    /// Completions copied out of the ring before they are handled.
    cqes: Vec<(u64, i32, u32)>,
    /// Datagrams received while a send waited for free slots, handed out by the next `recv`.
    stash: VecDeque<(SocketAddr, Vec<u8>)>,
    stats: DriverStats,
}

// SAFETY: the raw pointers (the buffer ring, the headers) point into heap memory this driver
// owns and the kernel uses through the ring, whatever thread calls; moving the driver moves
// only the handles, not that memory.
unsafe impl Send for UringDriver {}

impl UringDriver {
    /// The driver on `socket`: creates the ring, registers the buffer ring and arms the
    /// multishot receive. Fails (so that the caller can fall back) where io_uring, its
    /// buffer rings or multishot receive are unavailable.
    pub fn new(socket: UdpSocket) -> io::Result<UringDriver> {
        socket.set_nonblocking(true)?;
        // Deferred task running (Linux 6.1+): the kernel posts completions only when the
        // owning thread asks for them, in one go per loop turn, instead of interrupting the
        // thread for every datagram of the multishot receive. It needs a single issuer, and
        // the driver is usually created on one thread and used on another: the ring starts
        // disabled and the first thread to receive or send enables it and becomes its issuer.
        if let Ok(ring) = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_r_disabled()
            .build(RING_ENTRIES)
        {
            if let Ok(driver) = Self::with_ring(ring, socket.try_clone()?, true) {
                return Ok(driver);
            }
        }
        // Older kernels: cooperative task running (5.19+), else a plain ring.
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .build(RING_ENTRIES)
            .or_else(|_| IoUring::new(RING_ENTRIES))?;
        Self::with_ring(ring, socket, false)
    }

    fn with_ring(ring: IoUring, socket: UdpSocket, deferred: bool) -> io::Result<UringDriver> {
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::RecvMsg::CODE) || !probe.is_supported(opcode::SendMsg::CODE)
        {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without RECVMSG/SENDMSG",
            ));
        }
        let mut bufring = BufRing::new()?;
        // SAFETY: `bufring.entries` is page-aligned memory for RECV_BUFFERS entries that lives
        // until the driver is dropped, which unregisters it first (or leaks it).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufring.entries as u64,
                RECV_BUFFERS,
                BUFFER_GROUP,
                0,
            )?;
        }
        for bid in 0..RECV_BUFFERS {
            bufring.give(bid);
        }
        bufring.publish();
        // SAFETY: msghdr is plain old data; all-zero is valid; only the name and control
        // lengths matter for a multishot receive.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let mut driver = UringDriver {
            ring,
            socket,
            bufring,
            recv_hdr,
            armed: false,
            enabled: !deferred,
            deferred,
            send: SendSlots::new(),
            cqes: Vec::with_capacity(2 * RING_ENTRIES as usize),
            stash: VecDeque::new(),
            stats: DriverStats::default(),
        };
        if driver.enabled {
            driver.arm()?;
            driver.ring.submit()?;
        }
        Ok(driver)
    }

    /// Enables a ring created disabled (deferred task running): the calling thread becomes
    /// its only issuer; then arms the receive.
    fn enable(&mut self) -> io::Result<()> {
        if !self.enabled {
            self.ring.submitter().register_enable_rings()?;
            self.enabled = true;
            self.arm()?;
            self.ring.submit()?;
        }
        Ok(())
    }

    /// Queues the multishot receive.
    fn arm(&mut self) -> io::Result<()> {
        let entry = opcode::RecvMsgMulti::new(
            types::Fd(self.socket.as_raw_fd()),
            &*self.recv_hdr as *const libc::msghdr,
            BUFFER_GROUP,
        )
        .build()
        .user_data(RECV_TAG);
        self.push(&entry)?;
        self.armed = true;
        Ok(())
    }

    /// Pushes a submission entry, submitting first if the queue is full.
    fn push(&mut self, entry: &io_uring::squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry pushed references memory the driver owns and keeps until
            // its completion (the receive header and buffer ring, or a send slot that is not
            // reused before its completion frees it).
            let pushed = unsafe { self.ring.submission().push(entry) };
            if pushed.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Handles every completion in the queue; received datagrams go to `into` while it has
    /// room, then to the stash.
    fn reap(&mut self, mut into: Option<&mut PacketBatch>) {
        self.cqes.clear();
        self.cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        let mut gave_back = false;
        for i in 0..self.cqes.len() {
            let Some(&(tag, res, flags)) = self.cqes.get(i) else {
                break;
            };
            match tag {
                RECV_TAG => {
                    if !cqueue::more(flags) {
                        self.armed = false;
                    }
                    if res < 0 {
                        if res == -libc::ENOBUFS {
                            DriverStats::add(&self.stats.no_buffers, 1);
                        } else if res != -libc::ECANCELED {
                            DriverStats::add(&self.stats.recv_errors, 1);
                        }
                        continue;
                    }
                    let Some(bid) = cqueue::buffer_select(flags) else {
                        DriverStats::add(&self.stats.recv_errors, 1);
                        continue;
                    };
                    self.deliver(bid, res as usize, &mut into);
                    self.bufring.give(bid);
                    gave_back = true;
                }
                CANCEL_TAG => {}
                slot => {
                    if res < 0 {
                        DriverStats::add(&self.stats.send_errors, 1);
                    } else {
                        DriverStats::add(&self.stats.sent, 1);
                    }
                    if let Ok(slot) = u16::try_from(slot) {
                        if usize::from(slot) < SEND_SLOTS {
                            self.send.free.push(slot);
                        }
                    }
                }
            }
        }
        if gave_back {
            self.bufring.publish();
        }
    }

    /// One received datagram out of buffer `bid` (`len` bytes written by the kernel).
    fn deliver(&mut self, bid: u16, len: usize, into: &mut Option<&mut PacketBatch>) {
        let Some(buf) = self.bufring.buffer(bid, len) else {
            DriverStats::add(&self.stats.recv_errors, 1);
            return;
        };
        let Ok(msg) = types::RecvMsgOut::parse(buf, &self.recv_hdr) else {
            DriverStats::add(&self.stats.recv_errors, 1);
            return;
        };
        if msg.is_payload_truncated() || msg.is_name_data_truncated() {
            DriverStats::add(&self.stats.truncated, 1);
            return;
        }
        let name_len = (msg.incoming_name_len() as usize).min(msg.name_data().len());
        let Some(peer) = socket_addr_from_bytes(msg.name_data(), name_len) else {
            DriverStats::add(&self.stats.recv_errors, 1);
            return;
        };
        let data = msg.payload_data();
        let pushed = match into {
            Some(batch) => batch.push(peer, data),
            None => false,
        };
        if !pushed {
            self.stash.push_back((peer, data.to_vec()));
        }
        DriverStats::add(&self.stats.received, 1);
    }

    /// Waits for at least one completion, up to `timeout`.
    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Driver for UringDriver {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn recv(&mut self, into: &mut PacketBatch, timeout: Duration) -> io::Result<usize> {
        self.enable()?;
        let start = into.len();
        while !into.is_full() {
            let Some((peer, data)) = self.stash.pop_front() else {
                break;
            };
            into.push(peer, &data);
        }
        if !self.armed {
            self.arm()?;
        }
        if self.ring.completion().is_empty() && !timeout.is_zero() && into.len() == start {
            self.wait(timeout)?;
        } else if self.deferred {
            // Completions are posted only when asked for: ask without waiting.
            self.wait(Duration::ZERO)?;
        } else {
            self.ring.submit()?;
        }
        self.reap(Some(into));
        if !self.armed {
            // ENOBUFS or a finished multishot: re-arm now so that receiving goes on while
            // the batch is processed.
            self.arm()?;
            self.ring.submit()?;
        }
        Ok(into.len() - start)
    }

    fn send(&mut self, batch: &PacketBatch) -> io::Result<()> {
        self.enable()?;
        for (peer, data) in batch.iter() {
            if self.send.free.is_empty() {
                // Every slot is in flight: wait for the kernel to finish some.
                self.ring.submit_and_wait(1)?;
                self.reap(None);
            }
            let Some(slot) = self.send.free.pop() else {
                DriverStats::add(&self.stats.send_errors, 1);
                continue;
            };
            let Some(hdr) = self.send.fill(usize::from(slot), &peer, data) else {
                self.send.free.push(slot);
                DriverStats::add(&self.stats.send_errors, 1);
                continue;
            };
            let entry = opcode::SendMsg::new(types::Fd(self.socket.as_raw_fd()), hdr)
                .build()
                .user_data(u64::from(slot));
            self.push(&entry)?;
        }
        self.ring.submit()?;
        Ok(())
    }

    fn stats(&self) -> &DriverStats {
        &self.stats
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        // The kernel may still write into the receive buffers and read the send slots: cancel
        // the receive, wait (bounded) until nothing is in flight, unregister the buffer ring,
        // and only then let the memory go. If the kernel does not finish in time, leak the
        // memory rather than free what it may still use.
        let cancel = opcode::AsyncCancel::new(RECV_TAG)
            .build()
            .user_data(CANCEL_TAG);
        let _ = self.push(&cancel);
        let deadline = Instant::now() + Duration::from_secs(2);
        while (self.armed || self.send.free.len() < SEND_SLOTS) && Instant::now() < deadline {
            if self.wait(Duration::from_millis(50)).is_err() {
                break;
            }
            self.reap(None);
        }
        let idle = !self.armed && self.send.free.len() == SEND_SLOTS;
        if !idle
            || self
                .ring
                .submitter()
                .unregister_buf_ring(BUFFER_GROUP)
                .is_err()
        {
            self.bufring.leak();
            std::mem::forget(std::mem::replace(&mut self.send, SendSlots::empty()));
        }
    }
}

/// Whether the io_uring driver works here: creates a ring, registers a buffer ring and
/// receives one datagram through a multishot receive on a loopback socket. `Err` carries the
/// reason (`EPERM`: blocked by seccomp or `kernel.io_uring_disabled`; `ENOSYS`: no io_uring;
/// `EINVAL`: a kernel without multishot receive or buffer rings).
pub fn probe_uring() -> Result<(), String> {
    let socket = crate::bind_reuseport(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| format!("probe socket: {e}"))?;
    let addr = socket
        .local_addr()
        .map_err(|e| format!("probe socket: {e}"))?;
    let mut driver = UringDriver::new(socket).map_err(|e| format!("io_uring: {e}"))?;
    let sender = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| format!("probe socket: {e}"))?;
    sender
        .send_to(b"zoftoken probe", addr)
        .map_err(|e| format!("probe send: {e}"))?;
    let mut batch = PacketBatch::with_capacity(1);
    let deadline = Instant::now() + Duration::from_millis(500);
    while batch.is_empty() && Instant::now() < deadline {
        driver
            .recv(&mut batch, Duration::from_millis(50))
            .map_err(|e| format!("io_uring receive: {e}"))?;
    }
    match batch.get(0) {
        Some((_, data)) if data == b"zoftoken probe" => Ok(()),
        _ => Err(format!(
            "io_uring multishot receive delivered nothing (errors: {})",
            driver.stats.recv_errors.load(Ordering::Relaxed)
        )),
    }
}
