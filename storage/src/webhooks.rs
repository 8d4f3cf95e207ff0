//! Webhook delivery through the store: the outbox commits still to deliver with their
//! unresolved events, the writes of a delivery round ([`DeliveryWrite`], many acknowledgements
//! in one atomic write), dead letters, replays and disabled endpoints. The record layouts are
//! in [`crate::schema::webhooks`].
//!
//! A commit whose events are all resolved (delivered, not subscribed, or dead-lettered) is
//! deleted from the outbox together with its progress bitmap, in one write with the other
//! progress of a delivery round, and the outbox cursor in `meta` rises with it.

use crate::error::{corrupt, StoreError};
use crate::kv::{Cf, WriteBatch};
use crate::scan::try_scan;
use crate::schema::webhooks::{
    decode_dead, decode_disabled, disabled_key, encode_dead, encode_disabled, event_key,
    progress_key, DEAD, DISABLED, FORMAT, REPLAY,
};
use crate::schema::{self, meta, OutboxEvent};
use crate::Store;

pub use crate::schema::webhooks::{
    bit_is_set, event_id, parse_event_id, set_bit, DeadLetterRecord, DisabledEndpoint,
};

/// An outbox commit with the events that are still to be resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingCommit {
    /// The commit's sequence number.
    pub seq: u64,
    /// Number of events in the commit.
    pub total: u16,
    /// Bitmap of the resolved event indexes (bit `i % 8` of byte `i / 8`), `ceil(total / 8)`
    /// bytes.
    pub resolved: Vec<u8>,
    /// The events not resolved yet, in index order.
    pub events: Vec<OutboxEvent>,
}

/// The writes of one delivery round, applied atomically by [`Store::write_deliveries`]: many
/// deliveries are acknowledged in one write.
#[derive(Debug, Default)]
pub struct DeliveryWrite {
    batch: WriteBatch,
    max_finished: u64,
}

impl DeliveryWrite {
    /// An empty round.
    pub fn new() -> DeliveryWrite {
        DeliveryWrite::default()
    }

    /// Records the resolved events of a commit that still has unresolved ones.
    pub fn progress(&mut self, seq: u64, bitmap: &[u8]) {
        let mut v = Vec::with_capacity(bitmap.len() + 1);
        v.push(FORMAT);
        v.extend_from_slice(bitmap);
        self.batch.put(Cf::Webhooks, progress_key(seq), v);
    }

    /// Every event of commit `seq` is resolved: the commit leaves the outbox.
    pub fn finished(&mut self, seq: u64) {
        self.batch.delete(Cf::Outbox, seq.to_be_bytes());
        self.batch.delete(Cf::Webhooks, progress_key(seq));
        self.max_finished = self.max_finished.max(seq);
    }

    /// Keeps an event as a dead letter (replacing a queued replay of it, if any).
    pub fn dead_letter(&mut self, r: &DeadLetterRecord) {
        let (seq, index) = (r.event.seq, r.event.index);
        self.batch
            .put(Cf::Webhooks, event_key(DEAD, seq, index), encode_dead(r));
        self.batch
            .delete(Cf::Webhooks, event_key(REPLAY, seq, index));
    }

    /// A replayed dead letter was delivered.
    pub fn replay_done(&mut self, seq: u64, index: u16) {
        self.batch
            .delete(Cf::Webhooks, event_key(REPLAY, seq, index));
    }

    /// Marks an endpoint disabled (410).
    pub fn disable(&mut self, d: &DisabledEndpoint) {
        self.batch
            .put(Cf::Webhooks, disabled_key(&d.service), encode_disabled(d));
    }

    /// Re-enables an endpoint.
    pub fn enable(&mut self, service: &str) {
        self.batch.delete(Cf::Webhooks, disabled_key(service));
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.batch.len()
    }
}

impl Store {
    fn progress_of(&self, seq: u64) -> Result<Vec<u8>, StoreError> {
        match self.kv().get(Cf::Webhooks, &progress_key(seq))? {
            None => Ok(Vec::new()),
            Some(v) => match v.split_first() {
                Some((&FORMAT, bits)) => Ok(bits.to_vec()),
                _ => Err(corrupt(Cf::Webhooks, &progress_key(seq), "undecodable")),
            },
        }
    }

    fn pending_of(&self, seq: u64, value: &[u8]) -> Result<PendingCommit, StoreError> {
        let events = schema::decode_outbox(seq, value)
            .ok_or_else(|| corrupt(Cf::Outbox, &seq.to_be_bytes(), "undecodable"))?;
        let total = u16::try_from(events.len()).unwrap_or(u16::MAX);
        let mut resolved = self.progress_of(seq)?;
        resolved.resize(usize::from(total).div_ceil(8), 0);
        let events = events
            .into_iter()
            .filter(|e| !bit_is_set(&resolved, e.index))
            .collect();
        Ok(PendingCommit {
            seq,
            total,
            resolved,
            events,
        })
    }

    /// Outbox commits from `from_seq` on, in sequence order, with their unresolved events,
    /// until about `max_events` events are collected (at least one commit). Commits for which
    /// `skip` answers true are passed over without being decoded. Also returns the last
    /// sequence number visited (skipped or not).
    pub fn pending_commits(
        &self,
        from_seq: u64,
        max_events: usize,
        skip: &mut dyn FnMut(u64) -> bool,
    ) -> Result<(Vec<PendingCommit>, Option<u64>), StoreError> {
        self.pending_commits_below(from_seq, None, max_events, skip)
    }

    /// As [`Store::pending_commits`], only below `below` (if given).
    pub fn pending_commits_below(
        &self,
        from_seq: u64,
        below: Option<u64>,
        max_events: usize,
        skip: &mut dyn FnMut(u64) -> bool,
    ) -> Result<(Vec<PendingCommit>, Option<u64>), StoreError> {
        let mut raw: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut last = None;
        let mut count = 0usize;
        let end = below.map(u64::to_be_bytes);
        try_scan(
            &**self.kv(),
            Cf::Outbox,
            &from_seq.to_be_bytes(),
            end.as_ref().map(|e| &e[..]),
            &mut |k, v| {
                let seq = k
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| corrupt(Cf::Outbox, k, "key is not a sequence number"))?;
                last = Some(seq);
                if !skip(seq) {
                    // The count is the second and third bytes of the value.
                    count += v
                        .get(1..3)
                        .and_then(|c| <[u8; 2]>::try_from(c).ok())
                        .map_or(1, |c| usize::from(u16::from_be_bytes(c)));
                    raw.push((seq, v.to_vec()));
                }
                Ok(count < max_events)
            },
        )?;
        // Bitmaps are read after the scan: an implementation may hold a lock while scanning.
        let mut out = Vec::with_capacity(raw.len());
        for (seq, v) in raw {
            out.push(self.pending_of(seq, &v)?);
        }
        Ok((out, last))
    }

    /// One outbox commit with its unresolved events, if it is (still) in the outbox.
    pub fn pending_commit(&self, seq: u64) -> Result<Option<PendingCommit>, StoreError> {
        match self.kv().get(Cf::Outbox, &seq.to_be_bytes())? {
            None => Ok(None),
            Some(v) => self.pending_of(seq, &v).map(Some),
        }
    }

    /// The sequence numbers of the outbox commits from `from` to below `below`, in order.
    pub fn outbox_seqs(&self, from: u64, below: u64) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        self.kv().scan(
            Cf::Outbox,
            &from.to_be_bytes(),
            Some(&below.to_be_bytes()),
            &mut |k, _| {
                if let Ok(s) = k.try_into().map(u64::from_be_bytes) {
                    out.push(s);
                }
                true
            },
        )?;
        Ok(out)
    }

    /// Where reading the outbox starts: its lowest sequence number, or past every number
    /// used when it is empty. (Reading from 0 would walk over the deleted records of every
    /// delivered commit that compaction has not dropped yet, at every read.)
    pub fn outbox_start(&self) -> Result<u64, StoreError> {
        let mut first = None;
        self.kv().scan(Cf::Outbox, &[], None, &mut |k, _| {
            first = k.try_into().ok().map(u64::from_be_bytes);
            false
        })?;
        Ok(match first {
            Some(s) => s,
            None => self.next_outbox_seq(),
        })
    }

    /// The highest sequence number in the outbox.
    pub fn last_outbox_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .kv()
            .last(Cf::Outbox)?
            .and_then(|(k, _)| k.as_slice().try_into().ok().map(u64::from_be_bytes)))
    }

    /// Applies a delivery round in one atomic write. Finished commits also raise the outbox
    /// cursor in `meta`, so sequence numbers (and so webhook ids) are never reused.
    pub fn write_deliveries(&self, mut w: DeliveryWrite) -> Result<(), StoreError> {
        if w.is_empty() {
            return Ok(());
        }
        if w.max_finished > 0 {
            let acked = self
                .kv()
                .get(Cf::Meta, meta::OUTBOX_ACKED)?
                .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0);
            if w.max_finished > acked {
                w.batch
                    .put(Cf::Meta, meta::OUTBOX_ACKED, w.max_finished.to_be_bytes());
            }
        }
        self.kv().write(&w.batch, self.durability())?;
        Ok(())
    }

    fn scan_dead(&self, tag: u8, limit: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        try_scan(
            &**self.kv(),
            Cf::Webhooks,
            &[tag],
            Some(&[tag + 1]),
            &mut |k, v| {
                out.push(decode_dead(k, v).ok_or_else(|| corrupt(Cf::Webhooks, k, "undecodable"))?);
                Ok(out.len() < limit)
            },
        )?;
        Ok(out)
    }

    /// The dead letters, oldest commit first, at most `limit`.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        self.scan_dead(DEAD, limit)
    }

    /// Dead letters queued again by a replay, at most `limit`.
    pub fn replays(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        self.scan_dead(REPLAY, limit)
    }

    /// Queues a dead letter for delivery again (and re-enables its endpoint if it was
    /// disabled). Returns whether it existed.
    pub fn replay_dead_letter(&self, seq: u64, index: u16) -> Result<bool, StoreError> {
        let key = event_key(DEAD, seq, index);
        let Some(v) = self.kv().get(Cf::Webhooks, &key)? else {
            return Ok(false);
        };
        let r = decode_dead(&key, &v).ok_or_else(|| corrupt(Cf::Webhooks, &key, "undecodable"))?;
        let mut b = WriteBatch::new();
        b.delete(Cf::Webhooks, key);
        b.put(Cf::Webhooks, event_key(REPLAY, seq, index), v);
        b.delete(Cf::Webhooks, disabled_key(&r.event.service));
        self.kv().write(&b, self.durability())?;
        Ok(true)
    }

    /// Queues every dead letter again; returns how many.
    pub fn replay_all_dead_letters(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        loop {
            let batch = self.dead_letters(1000)?;
            if batch.is_empty() {
                return Ok(n);
            }
            for r in batch {
                if self.replay_dead_letter(r.event.seq, r.event.index)? {
                    n += 1;
                }
            }
        }
    }

    /// Deletes a dead letter; returns whether it existed.
    pub fn delete_dead_letter(&self, seq: u64, index: u16) -> Result<bool, StoreError> {
        let key = event_key(DEAD, seq, index);
        let existed = self.kv().get(Cf::Webhooks, &key)?.is_some();
        let mut b = WriteBatch::new();
        b.delete(Cf::Webhooks, key);
        self.kv().write(&b, self.durability())?;
        Ok(existed)
    }

    /// The endpoints disabled by a 410.
    pub fn disabled_endpoints(&self) -> Result<Vec<DisabledEndpoint>, StoreError> {
        let mut out = Vec::new();
        try_scan(
            &**self.kv(),
            Cf::Webhooks,
            &[DISABLED],
            Some(&[DISABLED + 1]),
            &mut |k, v| {
                out.push(
                    decode_disabled(k, v).ok_or_else(|| corrupt(Cf::Webhooks, k, "undecodable"))?,
                );
                Ok(true)
            },
        )?;
        Ok(out)
    }
}
