//! One shard's token table: entries in a chunked slab (no growth slack beyond one chunk) and
//! an open-addressing index of 8-byte buckets (`tag ‖ slot + 1`, linear probing, backward-shift
//! deletion). About 224 + 13–17 bytes per token; see BENCHMARKS.md.

use crate::state::TokenEntry;

const CHUNK: usize = 4096;

/// Slab + index. Slots are stable while a token exists; freed slots are reused.
pub(crate) struct Table {
    chunks: Vec<Vec<TokenEntry>>,
    free: Vec<u32>,
    len: usize,
    /// Bucket: 0 empty, else `(tag << 32) | (slot + 1)`.
    index: Vec<u64>,
    mask: usize,
    hash_key: u64,
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
    pub fn new(hash_key: u64) -> Table {
        Table {
            chunks: Vec::new(),
            free: Vec::new(),
            len: 0,
            index: vec![0; 16],
            mask: 15,
            hash_key,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes held by the slab and the index (for the memory figures).
    pub fn heap_bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.capacity() * size_of::<TokenEntry>())
            .sum::<usize>()
            + self.index.capacity() * 8
            + self.free.capacity() * 4
    }

    fn tag_of(h: u64) -> u64 {
        (h >> 32) | 1 // never zero, so an occupied bucket is never 0
    }

    pub fn get(&self, slot: u32) -> Option<&TokenEntry> {
        let s = slot as usize;
        self.chunks.get(s / CHUNK)?.get(s % CHUNK)
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut TokenEntry> {
        let s = slot as usize;
        self.chunks.get_mut(s / CHUNK)?.get_mut(s % CHUNK)
    }

    /// Prefetch step 1: brings the id's home bucket of the index into the cache.
    pub fn prefetch_bucket(&self, id: &[u8; 16]) {
        let h = mix(id, self.hash_key);
        prefetch_index::prefetch_index(&self.index, h as usize & self.mask);
    }

    /// Prefetch step 2 (after step 1 for a whole batch): reads the home bucket and brings the
    /// first two cache lines of the entry it points to (id, counters, packet keys) into the
    /// cache. A hint only: a wrong guess (tag mismatch, probing) costs nothing but a miss.
    pub fn prefetch_entry(&self, id: &[u8; 16]) {
        let h = mix(id, self.hash_key);
        let Some(&b) = self.index.get(h as usize & self.mask) else {
            return;
        };
        if b == 0 || b >> 32 != Self::tag_of(h) {
            return;
        }
        let s = (b as u32).wrapping_sub(1) as usize;
        // Taking a field's address reads nothing; each prefetch asks for the line holding
        // that field. Together they cover bytes 0–150: the hot fields, both packet keys
        // and the PIN verifier.
        if let Some(e) = self.chunks.get(s / CHUNK).and_then(|c| c.get(s % CHUNK)) {
            prefetch_index::prefetch_index(std::slice::from_ref(&e.id), 0);
            prefetch_index::prefetch_index(std::slice::from_ref(&e.d2s), 0);
            prefetch_index::prefetch_index(std::slice::from_ref(&e.s2d), 0);
            prefetch_index::prefetch_index(std::slice::from_ref(&e.pin), 0);
        }
    }

    /// The slot of a token id.
    pub fn find(&self, id: &[u8; 16]) -> Option<u32> {
        let h = mix(id, self.hash_key);
        let tag = Self::tag_of(h);
        let mut i = h as usize & self.mask;
        loop {
            let b = *self.index.get(i)?;
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
    pub fn insert(&mut self, entry: TokenEntry) -> u32 {
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
                    self.chunks.push(Vec::with_capacity(CHUNK));
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
        while self.index.get(i).is_some_and(|b| *b != 0) {
            i = (i + 1) & self.mask;
        }
        if let Some(b) = self.index.get_mut(i) {
            *b = (Self::tag_of(h) << 32) | u64::from(slot + 1);
        }
    }

    fn grow_index(&mut self) {
        let new_len = (self.index.len() * 2).max(16);
        self.index = vec![0; new_len];
        self.mask = new_len - 1;
        let ids: Vec<([u8; 16], u32)> = self.iter().map(|(slot, e)| (e.id, slot)).collect();
        for (id, slot) in ids {
            self.index_insert(&id, slot);
        }
    }

    /// Removes a token; its slot is zeroized and reused later.
    pub fn remove(&mut self, id: &[u8; 16]) -> Option<u32> {
        let slot = self.find(id)?;
        // Find the bucket, then shift later buckets of the cluster back (linear probing).
        let h = mix(id, self.hash_key);
        let mut i = h as usize & self.mask;
        while self
            .index
            .get(i)
            .is_some_and(|b| (*b as u32).wrapping_sub(1) != slot)
        {
            i = (i + 1) & self.mask;
        }
        let mut hole = i;
        let mut j = (hole + 1) & self.mask;
        loop {
            let b = self.index.get(j).copied().unwrap_or(0);
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
                if let Some(x) = self.index.get_mut(hole) {
                    *x = b;
                }
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        if let Some(x) = self.index.get_mut(hole) {
            *x = 0;
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
    pub fn iter(&self) -> impl Iterator<Item = (u32, &TokenEntry)> {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .map(|(s, e)| (s as u32, e))
            .filter(|(_, e)| e.id != [0; 16])
    }
}

#[cfg(test)]
mod tests {
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
}
