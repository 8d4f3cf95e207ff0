//! [`WriteBatch`]: writes applied all together or not at all, kept in one flat buffer, and
//! [`Op`], one write as an implementation applies it.

use crate::codec::Reader;
use crate::kv::Cf;

/// One write of a batch, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// Insert or replace.
    Put(Cf, &'a [u8], &'a [u8]),
    /// Remove (no error when absent).
    Delete(Cf, &'a [u8]),
    /// Put a versioned token state (`state` column family only): of the stored value and this
    /// one, the newer version wins (the rule of the `state` record layout, `newer_state` in
    /// the schema), whatever order two concurrent batches are written in. RocksDB does this
    /// with a merge operator.
    ///
    /// A store shared by several servers ([`crate::KvStore::is_shared`]) compares and sets
    /// instead: the write applies only if the stored version is the one just before this one
    /// (or there is no stored record and the same batch writes the key's `secrets` record:
    /// the batch creates the token), and otherwise the whole batch fails with
    /// [`crate::KvError::Conflict`]. One server never conflicts with itself (a token's
    /// changes are written one after the other); another server's write makes this one's
    /// stale view fail instead of overwriting what the other acknowledged.
    PutNewer(Cf, &'a [u8], &'a [u8]),
}

const PUT: u8 = 0;
const DELETE: u8 = 1;
const PUT_NEWER: u8 = 2;

/// Writes applied all together or not at all, in order. Kept in one flat buffer
/// (`kind, cf, key length, key, value length, value` per write), so building a batch of many
/// small records allocates once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    data: Vec<u8>,
    count: usize,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// An empty batch with room for `bytes` of records.
    pub fn with_capacity(bytes: usize) -> WriteBatch {
        WriteBatch {
            data: Vec::with_capacity(bytes),
            count: 0,
        }
    }

    fn header(&mut self, kind: u8, cf: Cf, key: &[u8]) {
        self.data.push(kind);
        self.data.push(cf as u8);
        // Keys are ids and names: far below 4 GiB.
        self.data
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.data.extend_from_slice(key);
        self.count += 1;
    }

    fn value_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let at = self.data.len();
        self.data.extend_from_slice(&[0; 4]);
        f(&mut self.data);
        let len = (self.data.len() - at - 4) as u32;
        if let Some(slot) = self.data.get_mut(at..at + 4) {
            slot.copy_from_slice(&len.to_le_bytes());
        }
    }

    /// Adds a put.
    pub fn put(&mut self, cf: Cf, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.header(PUT, cf, key.as_ref());
        self.value_with(|d| d.extend_from_slice(value.as_ref()));
    }

    /// Adds a versioned put (see [`Op::PutNewer`]).
    pub fn put_newer(&mut self, cf: Cf, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.header(PUT_NEWER, cf, key.as_ref());
        self.value_with(|d| d.extend_from_slice(value.as_ref()));
    }

    /// Adds a versioned put whose value `encode` appends (see [`Op::PutNewer`]).
    pub fn put_newer_with(
        &mut self,
        cf: Cf,
        key: impl AsRef<[u8]>,
        encode: impl FnOnce(&mut Vec<u8>),
    ) {
        self.header(PUT_NEWER, cf, key.as_ref());
        self.value_with(encode);
    }

    /// Adds a delete.
    pub fn delete(&mut self, cf: Cf, key: impl AsRef<[u8]>) {
        self.header(DELETE, cf, key.as_ref());
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.count
    }

    /// The writes, in order.
    pub fn ops(&self) -> impl Iterator<Item = Op<'_>> {
        let mut rest: &[u8] = &self.data;
        std::iter::from_fn(move || {
            let mut r = Reader::new(rest);
            let kind = r.u8()?;
            let cf = *Cf::ALL.get(usize::from(r.u8()?))?;
            let klen = u32::from_le_bytes(r.array()?) as usize;
            let key = r.bytes(klen)?;
            let op = if kind == DELETE {
                Op::Delete(cf, key)
            } else {
                let vlen = u32::from_le_bytes(r.array()?) as usize;
                let value = r.bytes(vlen)?;
                if kind == PUT_NEWER {
                    Op::PutNewer(cf, key, value)
                } else {
                    Op::Put(cf, key, value)
                }
            };
            rest = r.rest();
            Some(op)
        })
    }
}
