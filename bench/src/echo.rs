//! A UDP echo server with the server's batching and nothing else (no parsing, no crypto, no
//! state): the baseline of the load test. Each thread owns one `SO_REUSEPORT` socket and its
//! `zoftoken_net` driver, receives a batch of up to 32 datagrams and sends the same datagrams
//! back to their peers.
//!
//! With a [`Floor`] it also does, per datagram, the work that SPEC.md and the product make
//! every server do, with the simplest code that does it, and still echoes the datagram
//! unchanged so that the load generator's work stays the same: one ChaCha20-Poly1305 open of
//! the request and one seal of a reply of its type's size, through the codec (keys built per
//! operation, as the server does), a read and a write of the token's 224-byte entry in a table of a million (chosen by
//! the token id, prefetched a batch ahead), and one `write` per batch to a log file of a
//! 64-byte record per OPEN or CLOSE (the durable change before the reply; no `fsync`, as the
//! server's default). That is a floor for any server of this protocol on the machine: what
//! `bench/udp.sh` reports as `floor_pps`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use zoftoken_net::{Driver, DriverKind, PacketBatch, MAX_DATAGRAM};
use zoftoken_proto::aead::PacketKey;
use zoftoken_proto::packet::{open_checked_request, seal_reply};
use zoftoken_proto::wire::{check_request, MsgType};

/// Datagrams per receive batch (as the server).
pub const BATCH: usize = 32;

/// Bytes of one table entry in the floor (the engine's entry size).
pub const ENTRY_BYTES: usize = 224;

/// Bytes appended to the floor's log per state-changing request.
pub const LOG_RECORD: usize = 64;

/// The minimum work per datagram (see the module documentation); every part is optional.
pub struct Floor {
    key: Option<PacketKey>,
    entries: Vec<[u64; ENTRY_BYTES / 8]>,
    log: Option<std::fs::File>,
    pending: Vec<u8>,
    slots: Vec<usize>,
    scratch: [u8; MAX_DATAGRAM],
}

impl Floor {
    /// No work: the plain echo server.
    pub fn none() -> Floor {
        Floor::new(false, 0, None)
    }

    /// `aead`: open and seal per datagram; `entries`: table size (0: no table); `log`: the
    /// file each batch's records are written to.
    pub fn new(aead: bool, entries: usize, log: Option<std::fs::File>) -> Floor {
        Floor {
            key: aead.then(|| PacketKey::new([7; 32])),
            entries: (0..entries).map(|i| [i as u64; ENTRY_BYTES / 8]).collect(),
            log,
            pending: Vec::with_capacity(BATCH * LOG_RECORD),
            slots: Vec::with_capacity(BATCH),
            scratch: [0; MAX_DATAGRAM],
        }
    }

    /// Does the work for a received batch; returns an error only if the log cannot be written.
    pub fn handle(&mut self, batch: &PacketBatch) -> io::Result<()> {
        self.handle_datagrams(batch.iter().map(|(_, d)| d))
    }

    /// Does the work for a batch of datagrams given as an iterator (walked twice: the table
    /// prefetch for all of them, then the work), as [`Floor::handle`] does for a received
    /// batch. The engine benchmark drives it with its packet streams.
    pub fn handle_datagrams<'a>(
        &mut self,
        datagrams: impl Iterator<Item = &'a [u8]> + Clone,
    ) -> io::Result<()> {
        self.slots.clear();
        if !self.entries.is_empty() {
            for d in datagrams.clone() {
                let slot = entry_index(d, self.entries.len());
                prefetch_index::prefetch_index(&self.entries, slot);
                self.slots.push(slot);
            }
        }
        self.pending.clear();
        for (i, d) in datagrams.enumerate() {
            if let Some(key) = &self.key {
                std::hint::black_box(aead_work(key, d, &mut self.scratch));
            }
            if let Some(e) = self.slots.get(i).and_then(|&s| self.entries.get_mut(s)) {
                e[1] = e[1].wrapping_add(std::hint::black_box(e[0]) | 1);
            }
            if self.log.is_some() && changes_state(d) {
                let record = d.get(..LOG_RECORD.min(d.len())).unwrap_or_default();
                self.pending.extend_from_slice(record);
                self.pending
                    .resize(self.pending.len() + LOG_RECORD - record.len(), 0);
            }
        }
        match &mut self.log {
            Some(f) if !self.pending.is_empty() => std::io::Write::write_all(f, &self.pending),
            _ => Ok(()),
        }
    }
}

/// Whether a request is an OPEN or a CLOSE (the requests that the floor logs).
fn changes_state(datagram: &[u8]) -> bool {
    matches!(datagram.get(1), Some(&t)
        if t == MsgType::Open.request_byte() || t == MsgType::Close.request_byte())
}

/// The table slot of a request's token id (header bytes 8–23).
fn entry_index(datagram: &[u8], len: usize) -> usize {
    let mut id = [0u8; 8];
    if let Some(b) = datagram.get(8..16) {
        id.copy_from_slice(b);
    }
    (u64::from_le_bytes(id) % len.max(1) as u64) as usize
}

/// The reply body the floor seals (zeros, up to the largest reply): static, so that no
/// datagram pays for clearing it.
static REPLY_BODY: [u8; MAX_DATAGRAM] = [0; MAX_DATAGRAM];

/// The AEAD work of the floor on one datagram, through the codec as the server does it: the
/// cheap checks, the open of a copy in `scratch` (the server's path after the lookup), then the
/// seal of a reply of the type's size into `scratch`. Returns whether the open succeeded (never
/// for the load generator's requests: `key` is not the token's).
pub fn aead_work(key: &PacketKey, datagram: &[u8], scratch: &mut [u8; MAX_DATAGRAM]) -> bool {
    let Ok(unchecked) = check_request(datagram) else {
        return false;
    };
    let (msg_type, header) = (unchecked.msg_type, *unchecked.header);
    let Some(copy) = scratch.get_mut(..datagram.len()) else {
        return false;
    };
    copy.copy_from_slice(datagram);
    let opened = open_checked_request(key, msg_type, copy).is_ok();
    if let Some(reply_body) = REPLY_BODY.get(..msg_type.reply_body_len()) {
        std::hint::black_box(seal_reply(key, 1, &header, reply_body, scratch).ok());
    }
    opened
}

/// Echoes on `driver` until `stop` is set (checked at least every 100 ms), doing `floor`'s
/// work for each batch first. Returns the number of datagrams echoed.
pub fn serve(driver: &mut dyn Driver, stop: &AtomicBool, floor: &mut Floor) -> u64 {
    let mut batch = PacketBatch::with_capacity(BATCH);
    let mut echoed = 0;
    while !stop.load(Ordering::Relaxed) {
        batch.clear();
        match driver.recv(&mut batch, Duration::from_millis(100)) {
            Ok(0) | Err(_) => continue,
            Ok(n) => {
                // As the server: nothing is answered unless its change was written.
                if floor.handle(&batch).is_err() {
                    continue;
                }
                // Best effort, as UDP: refusals are counted by the driver.
                let _ = driver.send(&batch);
                echoed += n as u64;
            }
        }
    }
    echoed
}

/// Opens `threads` drivers of `kind` sharing `addr` (`SO_REUSEPORT`; port 0 picks one port
/// for all) and returns them with the bound address.
pub fn open(
    kind: DriverKind,
    addr: SocketAddr,
    threads: usize,
) -> io::Result<(Vec<Box<dyn Driver>>, SocketAddr)> {
    zoftoken_net::open_drivers(kind, addr, threads)
}
