//! The outbox as a whole: its sequence numbers, its events in order, and their removal once
//! delivered. (Per-event delivery progress is kept by the webhooks module, above this one.)

use std::sync::atomic::Ordering;

use crate::error::{corrupt, StoreError};
use crate::kv::{Cf, WriteBatch};
use crate::scan::try_scan;
use crate::schema::{self, meta, OutboxEvent};
use crate::Store;

/// Outbox sequence numbers a store that other processes write too reserves at once: at a
/// thousand commits with events a second, one reservation every quarter of an hour.
const OUTBOX_BLOCK: u64 = 1 << 20;

impl Store {
    /// A new outbox sequence number, unique among every writer of the database and higher
    /// than this store's earlier ones. A store that other processes write too takes it from a
    /// block reserved in the database ([`meta::OUTBOX_NEXT_BLOCK`], compared and set), so two
    /// servers' commits never share a number; otherwise from its counter.
    pub(crate) fn take_outbox_seq(&self) -> Result<u64, StoreError> {
        if !self.kv.is_shared() {
            return Ok(self.next_seq.fetch_add(1, Ordering::Relaxed));
        }
        let mut block = self.outbox_block.lock().unwrap_or_else(|p| p.into_inner());
        if block.0 >= block.1 {
            *block = self.reserve_outbox_block()?;
        }
        let seq = block.0;
        block.0 += 1;
        self.next_seq.fetch_max(seq + 1, Ordering::Relaxed);
        Ok(seq)
    }

    /// Reserves the next block of [`OUTBOX_BLOCK`] sequence numbers in the database.
    fn reserve_outbox_block(&self) -> Result<(u64, u64), StoreError> {
        loop {
            let stored = self.kv.get(Cf::Meta, meta::OUTBOX_NEXT_BLOCK)?;
            let from = match stored.as_deref() {
                None => 0,
                Some(v) => v.try_into().map(u64::from_be_bytes).map_err(|_| {
                    corrupt(Cf::Meta, meta::OUTBOX_NEXT_BLOCK, "not a sequence number")
                })?,
            };
            // Never below what this store has seen in the outbox (a database written before
            // blocks were reserved, an import).
            let from = from.max(self.next_seq.load(Ordering::Relaxed));
            let end = from.checked_add(OUTBOX_BLOCK).ok_or(StoreError::Invalid(
                "outbox sequence numbers exhausted".into(),
            ))?;
            if self.kv.compare_and_put(
                Cf::Meta,
                meta::OUTBOX_NEXT_BLOCK,
                stored.as_deref(),
                &end.to_be_bytes(),
            )? {
                // Recorded before a number of it is used (see `Store::outbox_blocks`); if this
                // write fails the block is given up (a gap in the numbers, nothing more).
                let mut b = WriteBatch::new();
                b.put(Cf::Meta, meta::outbox_block_key(from), end.to_be_bytes());
                self.kv.write(&b, self.durability)?;
                return Ok((from, end));
            }
        }
    }

    /// The outbox blocks reserved by the processes that write this database (first number,
    /// first number past it) that overlap `from..=to`, in order. One process numbers a block's
    /// commits in the order it makes them; numbers in no listed block (a database written
    /// before blocks, or by one process) are not listed.
    pub fn outbox_blocks(&self, from: u64, to: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut out = Vec::new();
        try_scan(
            &*self.kv,
            Cf::Meta,
            meta::OUTBOX_BLOCK,
            Some(&meta::outbox_block_end()),
            &mut |k, v| {
                let start = k
                    .strip_prefix(meta::OUTBOX_BLOCK)
                    .and_then(|n| <[u8; 8]>::try_from(n).ok())
                    .map(u64::from_be_bytes);
                let end = <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes);
                let (Some(start), Some(end)) = (start, end) else {
                    return Err(corrupt(Cf::Meta, k, "not an outbox block"));
                };
                if start <= to && end > from {
                    out.push((start, end));
                }
                Ok(true)
            },
        )?;
        Ok(out)
    }

    /// The sequence number the next commit with events will get.
    pub(crate) fn next_outbox_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    /// Makes the next commit's sequence number at least `seq` (after an import).
    pub(crate) fn raise_next_outbox_seq(&self, seq: u64) {
        self.next_seq.fetch_max(seq, Ordering::Relaxed);
    }

    /// The outbox events with sequence numbers from `from_seq`, in order, at most `limit`
    /// commits.
    pub fn outbox(&self, from_seq: u64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        let mut out = Vec::new();
        let mut commits = 0;
        try_scan(
            &*self.kv,
            Cf::Outbox,
            &from_seq.to_be_bytes(),
            None,
            &mut |k, v| {
                let events = k
                    .try_into()
                    .ok()
                    .map(u64::from_be_bytes)
                    .and_then(|seq| schema::decode_outbox(seq, v))
                    .ok_or_else(|| corrupt(Cf::Outbox, k, "undecodable"))?;
                out.extend(events);
                commits += 1;
                Ok(commits < limit)
            },
        )?;
        Ok(out)
    }

    /// Removes delivered outbox commits up to and including `seq`.
    pub fn ack_outbox(&self, seq: u64) -> Result<(), StoreError> {
        let mut b = WriteBatch::new();
        self.kv.scan(
            Cf::Outbox,
            &[],
            Some(&(seq + 1).to_be_bytes()),
            &mut |k, _| {
                b.delete(Cf::Outbox, k);
                true
            },
        )?;
        b.put(Cf::Meta, meta::OUTBOX_ACKED, seq.to_be_bytes());
        self.kv.write(&b, self.durability)?;
        Ok(())
    }
}
