//! Server epochs (SPEC.md §4.3): one per start, durable before use, never reused.

use crate::error::{corrupt, StoreError};
use crate::kv::{Cf, Durability, WriteBatch};
use crate::schema::meta;
use crate::Store;

impl Store {
    /// The last server epoch handed out by this database (0: none yet).
    pub(crate) fn last_epoch(&self) -> Result<u32, StoreError> {
        match self.kv.get(Cf::Meta, meta::EPOCH)? {
            None => Ok(0),
            Some(v) => v
                .as_slice()
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| corrupt(Cf::Meta, meta::EPOCH, "not an epoch")),
        }
    }

    /// A new server epoch (SPEC.md §4.3): one more than the last one handed out by this
    /// database, never zero, durable before it is returned, so no two starts share one.
    /// Refused, never wrapped, once every epoch has been used; an unreadable record is
    /// corruption, never read as "none yet".
    pub fn next_epoch(&self) -> Result<u32, StoreError> {
        let last = self.last_epoch()?;
        let next = last.checked_add(1).ok_or(StoreError::EpochsExhausted)?;
        let mut b = WriteBatch::new();
        b.put(Cf::Meta, meta::EPOCH, next.to_be_bytes());
        self.kv.write(&b, Durability::Fsync)?;
        Ok(next)
    }
}
