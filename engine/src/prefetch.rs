//! Prefetching a receive batch: every datagram's index bucket, then its token entry's hot
//! lines, read through a thread's copy of the tables' views without any lock, so that the
//! batch's memory latencies overlap (see [`Engine::prefetch_batch`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::table::TableView;
use crate::Engine;

/// A driver thread's copy of what [`Engine::prefetch_batch`] reads of the token tables
/// (their indexes and where their entries are), refreshed when a table has grown. One per
/// thread; [`Default`] is an empty copy, filled at the first batch.
#[derive(Default)]
pub struct Prefetcher {
    /// 0 before the first batch (the engine's generations start at 1).
    generation: u64,
    views: Arc<[TableView]>,
}

/// Packets [`Engine::prefetch_batch`] takes in one pass (a receive batch is 32).
const PREFETCH_BATCH: usize = 32;

/// The token id a datagram claims (header bytes 8..24), unauthenticated: for prefetching only.
fn token_id_hint(datagram: &[u8]) -> Option<[u8; 16]> {
    datagram.get(8..24)?.first_chunk::<16>().copied()
}

/// Whether a datagram's type byte names a request that reads the entry's PIN material and
/// token secret (its PIN key comes from the secret): its whole entry is worth prefetching.
fn reads_pin_material(datagram: &[u8]) -> bool {
    datagram
        .get(1)
        .and_then(|t| zoftoken_proto::MsgType::from_request_byte(*t))
        .is_some_and(|t| t.carries_pin_proof() || t == zoftoken_proto::MsgType::PairComplete)
}

impl Engine {
    /// A hint before processing a receive batch: brings every packet's index bucket, then
    /// the hot lines of its token entry, into the cache, in two tight loops over the batch
    /// (over each 32 packets of it) and without taking any lock, so that the batch's memory
    /// latencies and page walks overlap instead of adding up (a lock per packet would
    /// serialise them: a locked instruction waits for the loads before it). Reads the tables'
    /// indexes through `prefetcher`, the calling thread's copy; a stale copy or a forged id
    /// only prefetches the wrong lines. Optional; has no effect on results.
    pub fn prefetch_batch<'a>(
        &self,
        prefetcher: &mut Prefetcher,
        datagrams: impl Iterator<Item = &'a [u8]>,
    ) {
        self.prefetch_batch_with(prefetcher, datagrams, |v, hash, whole| {
            v.prefetch_entry(hash, whole)
        });
    }

    /// [`Engine::prefetch_batch`], with step 2 (given a view, the id's hash and whether the
    /// request reads PIN material) left to `entry`, so that a test can see which entries step
    /// 2 is asked for.
    fn prefetch_batch_with<'a>(
        &self,
        prefetcher: &mut Prefetcher,
        datagrams: impl Iterator<Item = &'a [u8]>,
        mut entry: impl FnMut(&TableView, u64, bool),
    ) {
        let generation = self.views_generation.load(Ordering::Acquire);
        if prefetcher.generation != generation {
            prefetcher.views = self.views.read().unwrap_or_else(|p| p.into_inner()).clone();
            prefetcher.generation = generation;
        }
        let views = &prefetcher.views;
        // Step 1 keeps what step 2 needs (the shard and the hash), so that step 2 is a short
        // loop: the more of its iterations fit in the processor's window, the more of the
        // batch's misses are in flight at once.
        let mut hints = [(0usize, 0u64, false); PREFETCH_BATCH];
        let mut datagrams = datagrams
            .filter_map(|d| Some((token_id_hint(d)?, reads_pin_material(d))))
            .peekable();
        while datagrams.peek().is_some() {
            let mut n = 0;
            while n < PREFETCH_BATCH {
                let Some((id, pin)) = datagrams.next() else {
                    break;
                };
                let shard = self.shard_of(&id);
                if let (Some(v), Some(hint)) = (views.get(shard), hints.get_mut(n)) {
                    *hint = (shard, v.prefetch_bucket(&id), pin);
                    n += 1;
                }
            }
            for &(shard, hash, pin) in hints.get(..n).unwrap_or_default() {
                if let Some(v) = views.get(shard) {
                    entry(v, hash, pin);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{lock, state, table, EngineConfig, Prefetcher};

    #[test]
    fn prefetch_views_follow_every_table_as_it_grows() {
        let engine = Engine::new(EngineConfig::new(Vec::new(), 1, [3; 32])).unwrap();
        let mut prefetcher = Prefetcher::default();
        let ids: Vec<[u8; 16]> = (0..30_000u32)
            .map(|n| {
                *blake3::hash(&n.to_le_bytes())
                    .as_bytes()
                    .first_chunk()
                    .unwrap()
            })
            .collect();
        for (n, id) in ids.iter().enumerate() {
            let mut shard = engine.shard(id);
            engine.insert_entry(&mut shard, table::tests::entry(*id));
            drop(shard);
            if n % 1000 == 0 {
                // Prefetching while the tables grow: a stale copy is only a hint.
                let mut datagram = [0u8; 64];
                datagram[8..24].copy_from_slice(id);
                engine.prefetch_batch(&mut prefetcher, [&datagram[..], &[1, 2, 3][..]].into_iter());
            }
        }
        let views = engine.views.read().unwrap().clone();
        for (shard, view) in engine.shards.iter().zip(views.iter()) {
            assert!(view.is_current(&lock(shard).table));
        }
        let datagram = [0u8; 64];
        engine.prefetch_batch(&mut prefetcher, std::iter::once(&datagram[..]));
        assert_eq!(
            prefetcher.generation,
            engine.views_generation.load(Ordering::Relaxed)
        );
        assert!(Arc::ptr_eq(&prefetcher.views, &views));
    }

    #[test]
    fn a_batch_prefetch_asks_for_every_datagrams_entry_in_order() {
        let engine = Engine::new(EngineConfig::new(Vec::new(), 1, [4; 32])).unwrap();
        let id = |n: u32| -> [u8; 16] {
            *blake3::hash(&n.to_le_bytes())
                .as_bytes()
                .first_chunk()
                .unwrap()
        };
        for n in 0..5_000u32 {
            let mut shard = engine.shard(&id(n));
            engine.insert_entry(&mut shard, table::tests::entry(id(n)));
        }
        // 150 datagrams (more than one pass of PREFETCH_BATCH): tokens, unknown ids, and
        // datagrams too short to name a token, which step 1 skips.
        let datagrams: Vec<Vec<u8>> = (0..150u32)
            .map(|n| match n % 5 {
                3 => vec![0; 23],
                4 => [&[0u8; 8][..], &id(1_000_000 + n)[..], &[0; 40][..]].concat(),
                _ => [&[0u8; 8][..], &id(n * 31)[..], &[0; 40][..]].concat(),
            })
            .collect();
        let mut asked = Vec::new();
        let mut prefetcher = Prefetcher::default();
        engine.prefetch_batch_with(
            &mut prefetcher,
            datagrams.iter().map(Vec::as_slice),
            |view, hash, _| asked.push(view.entry_address_of(hash)),
        );
        let expected: Vec<Option<usize>> = datagrams
            .iter()
            .filter_map(|d| token_id_hint(d))
            .map(|id| {
                let shard = lock(&engine.shards[engine.shard_of(&id)]);
                shard
                    .table
                    .find(&id)
                    .and_then(|slot| shard.table.get(slot))
                    .map(|e| e as *const state::TokenEntry as usize)
            })
            .collect();
        assert_eq!(expected.len(), 120);
        assert_eq!(asked, expected);
        assert_eq!(asked.iter().filter(|a| a.is_some()).count(), 90);
    }
}
