//! A shard: one lock over a part of the token-id space, holding its token table and everything
//! the packet path needs next to it (whole replay windows, expiry timers, presence, long-poll
//! waiters, counters, unsettled marks, the per-token rate), so that a packet takes one lock.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use zoftoken_proto::replay::ReplayWindow;

use crate::counters::Counters;
use crate::services::Services;
use crate::state::{Timers, TokenEntry};
use crate::table::Table;
use crate::{lock, Engine};

/// One shard's state, behind its lock in [`Engine`].
pub(crate) struct Shard {
    pub(crate) table: Table,
    /// Whole replay windows (SPEC.md §8.1) of the tokens with an unseen counter more than 32
    /// below their highest; every other token's window is compact, in its entry.
    pub(crate) windows: HashMap<u32, (ReplayWindow, u64)>,
    /// `(open_until_ms, slot)` of open tokens, for expiry events.
    pub(crate) timers: Timers,
    /// Last source address of each token that sent presence.
    pub(crate) presence: HashMap<u32, SocketAddr>,
    /// The services, as of the last reload (a per-shard copy keeps the packet path free of
    /// shared atomics).
    pub(crate) services: Arc<Services>,
    /// Long-poll waiters by token id (woken at the token's next change).
    pub(crate) watchers: HashMap<[u8; 16], Vec<futures_channel::oneshot::Sender<()>>>,
    pub(crate) counters: Counters,
    /// The table's view version last published in [`Engine`]'s views.
    pub(crate) view_version: u64,
    /// Tokens with a change not yet known to be durable (see the `settle` module).
    pub(crate) unsettled: HashSet<[u8; 16], MixState>,
    /// State-changing requests per token (by slot) in the second `rate_second`.
    pub(crate) rate: HashMap<u32, u16, MixState>,
    /// The second (Unix s) that `rate` counts.
    pub(crate) rate_second: u64,
}

/// A replay window idle this long collapses to "everything up to the highest counter seen":
/// beyond twice the freshness skew, any lower counter is stale anyway (SPEC.md §8.3).
pub(crate) const WINDOW_IDLE_MS: u64 = 4 * zoftoken_proto::clock::MAX_SKEW_MS;

impl Engine {
    /// The index of the shard that holds `id` (the id's last two bytes, masked).
    pub(crate) fn shard_of(&self, id: &[u8; 16]) -> usize {
        (usize::from(id[15]) | usize::from(id[14]) << 8) & self.shard_mask
    }

    /// The shard that holds `id`, locked.
    pub(crate) fn shard(&self, id: &[u8; 16]) -> MutexGuard<'_, Shard> {
        // `shard_of` masks with `len - 1` (a power of two), so the index is always in range.
        #[allow(clippy::indexing_slicing)]
        lock(&self.shards[self.shard_of(id)])
    }

    /// Inserts a new token into its shard's table (the id must not be present there) and
    /// publishes the table's new view if it grew.
    pub(crate) fn insert_entry(&self, shard: &mut Shard, entry: TokenEntry) -> u32 {
        let index = self.shard_of(&entry.id);
        let slot = shard.table.insert(entry);
        let version = shard.table.view_version();
        if version != shard.view_version {
            shard.view_version = version;
            let mut views = self.views.write().unwrap_or_else(|p| p.into_inner());
            let mut list = views.to_vec();
            if let Some(v) = list.get_mut(index) {
                *v = shard.table.view();
            }
            *views = list.into();
            self.views_generation.fetch_add(1, Ordering::Release);
        }
        slot
    }
}

/// A cheap hasher for the per-shard sets and maps of the packet path: their keys are token ids
/// (already uniform: BLAKE3 output) and slot numbers, so a multiply-and-fold is enough, and
/// SipHash's flooding resistance buys nothing (no key is chosen by a sender before its
/// request authenticates).
#[derive(Default, Clone, Copy)]
pub(crate) struct MixHasher(u64);

impl std::hash::Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            if let Some(w) = word.get_mut(..chunk.len()) {
                w.copy_from_slice(chunk);
            }
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// [`MixHasher`] for `HashSet`/`HashMap`.
pub(crate) type MixState = std::hash::BuildHasherDefault<MixHasher>;
