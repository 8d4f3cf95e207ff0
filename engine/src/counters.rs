//! Counts and sizes for metrics: per-shard reply and drop counters (kept without atomics on
//! the packet path), their export to the `metrics` recorder, and the table figures.

use zoftoken_proto::DropReason;

use crate::{lock, Engine, EventKind};

/// Per-shard counters, kept without atomics on the packet path and exported by
/// [`Engine::export_metrics`].
#[derive(Default, Clone)]
pub(crate) struct Counters {
    /// Replies by request type (index = type byte).
    pub(crate) replies: [u64; 16],
    /// Drops by reason (index into `DropReason::ALL`).
    pub(crate) drops: [u64; 24],
}

impl Engine {
    /// Number of paired (and re-enrolled) tokens in the tables.
    pub fn token_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).table.len()).sum()
    }

    /// Bytes held by the token tables (slabs and indexes), for memory figures.
    pub fn table_bytes(&self) -> usize {
        self.shards.iter().map(|s| lock(s).table.heap_bytes()).sum()
    }

    /// Exports the packet counters to the `metrics` recorder (call periodically).
    pub fn export_metrics(&self) {
        let mut total = Counters::default();
        for s in self.shards.iter() {
            let c = lock(s).counters.clone();
            for (t, v) in total.replies.iter_mut().zip(c.replies) {
                *t += v;
            }
            for (t, v) in total.drops.iter_mut().zip(c.drops) {
                *t += v;
            }
        }
        for t in zoftoken_proto::MsgType::ALL {
            let v = total
                .replies
                .get(usize::from(t.request_byte()))
                .copied()
                .unwrap_or(0);
            metrics::counter!("zoftoken_packets_total", "type" => t.name(), "outcome" => "reply")
                .absolute(v);
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            let v = total.drops.get(i).copied().unwrap_or(0);
            metrics::counter!("zoftoken_drops_total", "reason" => r.label()).absolute(v);
        }
        for kind in EventKind::ALL {
            metrics::counter!("zoftoken_events_total", "event" => kind.name())
                .absolute(self.committed_events(kind));
        }
        metrics::gauge!("zoftoken_tokens").set(self.token_count() as f64);
        metrics::gauge!("zoftoken_long_polls").set(self.waiters() as f64);
    }

    /// Packets dropped for `reason` so far.
    pub fn drops(&self, reason: DropReason) -> u64 {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.shards
            .iter()
            .map(|s| lock(s).counters.drops.get(i).copied().unwrap_or(0))
            .sum()
    }

    /// Counts a drop for `reason` in a shard's counters.
    pub(crate) fn count_drop(counters: &mut Counters, reason: DropReason) {
        if let Some(i) = DropReason::ALL.iter().position(|r| *r == reason) {
            if let Some(c) = counters.drops.get_mut(i) {
                *c += 1;
            }
        }
    }
}
