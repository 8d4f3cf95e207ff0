//! One shard's token table: entries in a chunked slab (no growth slack beyond one chunk) and
//! an open-addressing index of 8-byte buckets (`tag ‖ slot + 1`, linear probing, backward-shift
//! deletion). About 232 + 13–17 bytes per token; see BENCHMARKS.md.
//!
//! The index is an array of atomics so that a [`TableView`] can read it without the shard's
//! lock, to prefetch a whole receive batch's buckets and entries in two tight loops (the
//! memory latencies and page walks of the batch then overlap; a lock per packet would
//! serialise them). Only the lock holder writes it; what a view reads is a hint.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::state::TokenEntry;

const CHUNK: usize = 4096;

/// Buckets [`TableView::prefetch_entry`] looks at from a token's home bucket.
const PREFETCH_PROBES: usize = 8;

/// Slab + index. Slots are stable while a token exists; freed slots are reused.
pub(crate) struct Table {
    chunks: Vec<Vec<TokenEntry>>,
    free: Vec<u32>,
    len: usize,
    /// Bucket: 0 empty, else `(tag << 32) | (slot + 1)`. Shared with this table's views.
    index: Arc<[AtomicU64]>,
    mask: usize,
    hash_key: u64,
    /// Address of each chunk's first entry (a chunk never moves: it is allocated full size).
    bases: Vec<usize>,
    /// Bumped whenever a view taken before is out of date (new index, new chunk).
    view_version: u64,
}

/// What a prefetcher needs of one table, readable without its shard's lock: the index
/// (shared, read with relaxed loads) and the chunks' addresses. Out of date once the table
/// grows (the table's `view_version` says when); a stale view only prefetches the wrong lines.
#[derive(Clone)]
pub(crate) struct TableView {
    index: Arc<[AtomicU64]>,
    mask: usize,
    hash_key: u64,
    bases: Arc<[usize]>,
}

fn zeroed_index(len: usize) -> Arc<[AtomicU64]> {
    (0..len).map(|_| AtomicU64::new(0)).collect()
}

/// Prefetches the cache line holding the byte at `addr` (any address, even a stale one: a
/// prefetch never faults and changes nothing the program can observe). `prefetch_index`
/// computes `slice.as_ptr().wrapping_add(index)`, so an index relative to a static anchor
/// names any address without `unsafe` here.
fn prefetch_address(addr: usize) {
    static ANCHOR: [u8; 1] = [0];
    prefetch_index::prefetch_index(&ANCHOR[..], addr.wrapping_sub(ANCHOR.as_ptr() as usize));
}

impl TableView {
    /// Whether this view is `table`'s current one (same index, same chunks).
    #[cfg(test)]
    pub(crate) fn is_current(&self, table: &Table) -> bool {
        Arc::ptr_eq(&self.index, &table.index) && *self.bases == *table.bases
    }

    /// Step 1: brings the id's home bucket into the cache; returns the id's hash for step 2.
    pub(crate) fn prefetch_bucket(&self, id: &[u8; 16]) -> u64 {
        let h = mix(id, self.hash_key);
        prefetch_index::prefetch_index(&self.index[..], h as usize & self.mask);
        h
    }

    /// Step 2 (after step 1 for a whole batch): brings the first three cache lines (192 bytes)
    /// of the entry of the id whose hash is `hash` into the cache (id, counters, both packet
    /// keys, the PIN and duress verifiers), and with `whole` the rest of the entry too (the
    /// token secret, from which a PIN-bearing request's PIN key is derived). A wrong guess
    /// costs nothing but a miss.
    pub(crate) fn prefetch_entry(&self, hash: u64, whole: bool) {
        if let Some(addr) = self.entry_address_of(hash) {
            for line in [0, 64, 128] {
                prefetch_address(addr.wrapping_add(line));
            }
            if whole {
                // The entry is not line-aligned: its last byte may be in a line of its own.
                for offset in [192, size_of::<TokenEntry>() - 1] {
                    prefetch_address(addr.wrapping_add(offset));
                }
            }
        }
    }

    /// Where the view believes the id's entry is: found through its bucket (its home or a
    /// later one of the cluster with its tag, as far as [`PREFETCH_PROBES`] buckets). An
    /// address, never dereferenced: a stale view may name a reused or moved slot.
    #[cfg(test)]
    fn entry_address(&self, id: &[u8; 16]) -> Option<usize> {
        self.entry_address_of(mix(id, self.hash_key))
    }

    /// [`TableView::entry_address`] of the id whose hash is `h`.
    pub(crate) fn entry_address_of(&self, h: u64) -> Option<usize> {
        let tag = Table::tag_of(h);
        let mut i = h as usize & self.mask;
        for _ in 0..PREFETCH_PROBES {
            let b = self.index.get(i)?.load(Relaxed);
            if b == 0 {
                return None;
            }
            if b >> 32 == tag {
                let s = (b as u32).wrapping_sub(1) as usize;
                let base = self.bases.get(s / CHUNK)?;
                return Some(base.wrapping_add((s % CHUNK) * size_of::<TokenEntry>()));
            }
            i = (i + 1) & self.mask;
        }
        None
    }
}

fn mix(id: &[u8; 16], key: u64) -> u64 {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(id.split_at(8).0);
    b.copy_from_slice(id.split_at(8).1);
    // Token ids are BLAKE3 outputs; keyed mixing keeps bucket choice unpredictable anyway.
    let x = (u64::from_le_bytes(a) ^ key).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from_le_bytes(b).rotate_left(29);
    x ^ (x >> 31)
}

impl Table {
    pub(crate) fn new(hash_key: u64) -> Table {
        Table {
            chunks: Vec::new(),
            free: Vec::new(),
            len: 0,
            index: zeroed_index(16),
            mask: 15,
            hash_key,
            bases: Vec::new(),
            view_version: 0,
        }
    }

    /// A view for prefetching without the lock.
    pub(crate) fn view(&self) -> TableView {
        TableView {
            index: self.index.clone(),
            mask: self.mask,
            hash_key: self.hash_key,
            bases: self.bases.as_slice().into(),
        }
    }

    /// Changes whenever views taken before are out of date.
    pub(crate) fn view_version(&self) -> u64 {
        self.view_version
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes held by the slab and the index (for the memory figures).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.capacity() * size_of::<TokenEntry>())
            .sum::<usize>()
            + self.index.len() * 8
            + self.free.capacity() * 4
    }

    fn tag_of(h: u64) -> u64 {
        (h >> 32) | 1 // never zero, so an occupied bucket is never 0
    }

    pub(crate) fn get(&self, slot: u32) -> Option<&TokenEntry> {
        let s = slot as usize;
        self.chunks.get(s / CHUNK)?.get(s % CHUNK)
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut TokenEntry> {
        let s = slot as usize;
        self.chunks.get_mut(s / CHUNK)?.get_mut(s % CHUNK)
    }

    /// The slot of a token id.
    pub(crate) fn find(&self, id: &[u8; 16]) -> Option<u32> {
        let h = mix(id, self.hash_key);
        let tag = Self::tag_of(h);
        let mut i = h as usize & self.mask;
        loop {
            let b = self.index.get(i)?.load(Relaxed);
            if b == 0 {
                return None;
            }
            if b >> 32 == tag {
                let slot = (b as u32).wrapping_sub(1);
                if self.get(slot).is_some_and(|e| e.id == *id) {
                    return Some(slot);
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Inserts a new token (the id must not be present) and returns its slot.
    pub(crate) fn insert(&mut self, entry: TokenEntry) -> u32 {
        if (self.len + 1) * 5 > self.index.len() * 4 {
            self.grow_index();
        }
        let id = entry.id;
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(e) = self.get_mut(slot) {
                    *e = entry;
                }
                slot
            }
            None => {
                if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                    let chunk = Vec::with_capacity(CHUNK);
                    self.bases.push(chunk.as_ptr() as usize);
                    self.chunks.push(chunk);
                    self.view_version += 1;
                }
                let chunk_index = self.chunks.len() - 1;
                let slot = (chunk_index * CHUNK + self.chunks.last().map_or(0, |c| c.len())) as u32;
                if let Some(c) = self.chunks.last_mut() {
                    c.push(entry);
                }
                slot
            }
        };
        self.index_insert(&id, slot);
        self.len += 1;
        slot
    }

    fn index_insert(&mut self, id: &[u8; 16], slot: u32) {
        let h = mix(id, self.hash_key);
        let mut i = h as usize & self.mask;
        while self.index.get(i).is_some_and(|b| b.load(Relaxed) != 0) {
            i = (i + 1) & self.mask;
        }
        if let Some(b) = self.index.get(i) {
            b.store((Self::tag_of(h) << 32) | u64::from(slot + 1), Relaxed);
        }
    }

    fn grow_index(&mut self) {
        let new_len = (self.index.len() * 2).max(16);
        self.index = zeroed_index(new_len);
        self.mask = new_len - 1;
        self.view_version += 1;
        let ids: Vec<([u8; 16], u32)> = self.iter().map(|(slot, e)| (e.id, slot)).collect();
        for (id, slot) in ids {
            self.index_insert(&id, slot);
        }
    }

    /// Removes a token; its slot is zeroized and reused later.
    pub(crate) fn remove(&mut self, id: &[u8; 16]) -> Option<u32> {
        let slot = self.find(id)?;
        // Find the bucket, then shift later buckets of the cluster back (linear probing).
        let h = mix(id, self.hash_key);
        let mut i = h as usize & self.mask;
        while self
            .index
            .get(i)
            .is_some_and(|b| (b.load(Relaxed) as u32).wrapping_sub(1) != slot)
        {
            i = (i + 1) & self.mask;
        }
        let mut hole = i;
        let mut j = (hole + 1) & self.mask;
        loop {
            let b = self.index.get(j).map_or(0, |b| b.load(Relaxed));
            if b == 0 {
                break;
            }
            let other = (b as u32).wrapping_sub(1);
            let home = self
                .get(other)
                .map_or(j, |e| mix(&e.id, self.hash_key) as usize & self.mask);
            // Move b into the hole if its home is not in (hole, j] cyclically.
            let in_range = if hole <= j {
                home > hole && home <= j
            } else {
                home > hole || home <= j
            };
            if !in_range {
                if let Some(x) = self.index.get(hole) {
                    x.store(b, Relaxed);
                }
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        if let Some(x) = self.index.get(hole) {
            x.store(0, Relaxed);
        }
        if let Some(e) = self.get_mut(slot) {
            // Overwrite secrets now; the slot waits on the free list.
            use zeroize::Zeroize;
            e.secret.zeroize();
            e.d2s.zeroize();
            e.s2d.zeroize();
            e.pin.zeroize();
            e.duress.zeroize();
            e.id = [0; 16];
        }
        self.free.push(slot);
        self.len -= 1;
        Some(slot)
    }

    /// Every live entry with its slot.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &TokenEntry)> {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .map(|(s, e)| (s as u32, e))
            .filter(|(_, e)| e.id != [0; 16])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::TokenState;

    pub(crate) fn entry(id: [u8; 16]) -> TokenEntry {
        TokenEntry {
            id,
            secret: [1; 32],
            d2s: zoftoken_proto::aead::PacketKey::new([2; 32]),
            s2d: zoftoken_proto::aead::PacketKey::new([3; 32]),
            pin: [4; 32],
            duress: [0; 32],
            highest: 0,
            open_until_ms: 0,
            offset_ms: 0,
            last_seen_s: 0,
            otp_last_step: 0,
            service: 0,
            state: TokenState::Closed,
            failures: 0,
            flags: 0,
            otp_drift: 0,
            version: 0,
            recent: u32::MAX,
            duress_op: 0,
            duress_ms: 0,
        }
    }

    fn id(n: u32) -> [u8; 16] {
        *blake3::hash(&n.to_le_bytes())
            .as_bytes()
            .first_chunk::<16>()
            .unwrap()
    }

    #[test]
    fn insert_find_remove_agree_with_a_model() {
        let mut t = Table::new(42);
        let mut model = std::collections::HashMap::new();
        for n in 0..20_000u32 {
            let slot = t.insert(entry(id(n)));
            model.insert(id(n), slot);
        }
        for n in (0..20_000u32).step_by(3) {
            assert_eq!(t.remove(&id(n)), model.remove(&id(n)));
        }
        for n in 20_000..25_000u32 {
            let slot = t.insert(entry(id(n)));
            model.insert(id(n), slot);
        }
        assert_eq!(t.len(), model.len());
        for n in 0..25_000u32 {
            assert_eq!(t.find(&id(n)), model.get(&id(n)).copied(), "{n}");
        }
        assert_eq!(t.iter().count(), model.len());
        assert!(t.remove(&id(0)).is_none());
    }

    #[test]
    fn a_view_prefetches_without_panicking_whatever_it_is_given() {
        let mut t = Table::new(7);
        let old = t.view();
        for n in 0..10_000u32 {
            t.insert(entry(id(n)));
        }
        let new = t.view();
        assert!(!old.is_current(&t), "the index grew and chunks were added");
        assert!(new.is_current(&t));
        for n in 0..20_000u32 {
            // Present and absent ids, through a stale and a current view.
            for v in [&old, &new] {
                let h = v.prefetch_bucket(&id(n));
                v.prefetch_entry(h, n % 2 == 0);
            }
        }
        for addr in [0, 1, usize::MAX, usize::MAX / 2, ANCHOR_PROBE] {
            prefetch_address(addr);
        }
    }

    /// An address far from any allocation of this process.
    const ANCHOR_PROBE: usize = 0x7fff_ffff_f000;

    #[test]
    fn the_entries_are_where_the_view_says() {
        let mut t = Table::new(9);
        for n in 0..9_000u32 {
            t.insert(entry(id(n)));
        }
        let v = t.view();
        let mut found = 0;
        for n in 0..9_000u32 {
            let e = t.get(t.find(&id(n)).unwrap()).unwrap();
            // Beyond `PREFETCH_PROBES` buckets from home the view gives up (rare).
            if let Some(addr) = v.entry_address(&id(n)) {
                assert_eq!(addr, e as *const TokenEntry as usize);
                found += 1;
            }
        }
        assert!(found > 8_900, "{found}");
        assert_eq!(v.entry_address(&id(9_001)), None);
    }
}
