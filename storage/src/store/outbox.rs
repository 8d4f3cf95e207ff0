//! The outbox as a whole: its sequence numbers, its events in order, and their removal once
//! delivered. (Per-event delivery progress is kept by the webhooks module, above this one.)

use std::sync::atomic::Ordering;

use crate::error::{corrupt, StoreError};
use crate::kv::{Cf, WriteBatch};
use crate::scan::try_scan;
use crate::schema::{self, meta, OutboxEvent};
use crate::Store;

impl Store {
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
