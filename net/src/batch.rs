//! Reusable batches of datagram buffers: allocated once, reused for every receive and send.

use std::net::{Ipv4Addr, SocketAddr};

/// The largest datagram handled; longer ones are dropped (no ZofToken message comes near).
pub const MAX_DATAGRAM: usize = 2048;

/// A fixed number of datagram buffers, each with its peer and length; the first `len` hold
/// datagrams.
pub struct PacketBatch {
    bufs: Vec<[u8; MAX_DATAGRAM]>,
    peers: Vec<SocketAddr>,
    lens: Vec<usize>,
    len: usize,
}

impl PacketBatch {
    /// A batch of `capacity` buffers (at least 1).
    pub fn with_capacity(capacity: usize) -> PacketBatch {
        let capacity = capacity.max(1);
        let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        PacketBatch {
            bufs: vec![[0; MAX_DATAGRAM]; capacity],
            peers: vec![unspecified; capacity],
            lens: vec![0; capacity],
            len: 0,
        }
    }

    /// How many buffers the batch has.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// How many datagrams it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every buffer holds a datagram.
    pub fn is_full(&self) -> bool {
        self.len == self.bufs.len()
    }

    /// Forgets every datagram (the buffers stay).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Datagram `i`: its peer and its bytes, mutable (opened in place).
    pub fn get_mut(&mut self, i: usize) -> Option<(SocketAddr, &mut [u8])> {
        if i >= self.len {
            return None;
        }
        let peer = *self.peers.get(i)?;
        let len = *self.lens.get(i)?;
        let buf = self.bufs.get_mut(i)?.get_mut(..len)?;
        Some((peer, buf))
    }

    /// Datagram `i`: its peer and its bytes.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.len {
            return None;
        }
        let peer = *self.peers.get(i)?;
        let len = *self.lens.get(i)?;
        Some((peer, self.bufs.get(i)?.get(..len)?))
    }

    /// The datagrams, in order.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + Clone {
        (0..self.len).filter_map(|i| self.get(i))
    }

    /// The next free buffer, whole, to write a datagram into; then [`PacketBatch::commit`].
    pub fn next_buffer(&mut self) -> Option<&mut [u8; MAX_DATAGRAM]> {
        self.bufs.get_mut(self.len)
    }

    /// Makes the first `len` bytes of the buffer [`PacketBatch::next_buffer`] gave a datagram
    /// for `peer`. Ignored when the batch is full.
    pub fn commit(&mut self, peer: SocketAddr, len: usize) {
        if let (Some(p), Some(l)) = (self.peers.get_mut(self.len), self.lens.get_mut(self.len)) {
            *p = peer;
            *l = len.min(MAX_DATAGRAM);
            self.len += 1;
        }
    }

    /// Copies a datagram in; `false` if the batch is full or the datagram too long.
    pub fn push(&mut self, peer: SocketAddr, data: &[u8]) -> bool {
        let Some(buf) = self.next_buffer() else {
            return false;
        };
        let Some(dst) = buf.get_mut(..data.len()) else {
            return false;
        };
        dst.copy_from_slice(data);
        self.commit(peer, data.len());
        true
    }

    /// Raw parts for the drivers: buffer `i` (whole), and the peer and length slots.
    pub(crate) fn slot_mut(
        &mut self,
        i: usize,
    ) -> Option<(&mut [u8; MAX_DATAGRAM], &mut SocketAddr, &mut usize)> {
        Some((
            self.bufs.get_mut(i)?,
            self.peers.get_mut(i)?,
            self.lens.get_mut(i)?,
        ))
    }

    /// Moves buffer `from` (and its peer and length) to slot `to` (a driver compacting the
    /// batch after dropping a datagram).
    pub(crate) fn move_slot(&mut self, from: usize, to: usize) {
        if from < self.bufs.len() && to < self.bufs.len() {
            self.bufs.swap(from, to);
            self.peers.swap(from, to);
            self.lens.swap(from, to);
        }
    }

    /// Sets how many datagrams the batch holds (after a driver filled the slots).
    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len.min(self.bufs.len());
    }
}
