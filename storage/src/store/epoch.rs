//! Server epochs (SPEC.md §4.3): one per start, durable before use, never reused.

use crate::error::{corrupt, StoreError};
use crate::kv::Cf;
use crate::schema::meta;
use crate::Store;

impl Store {
    /// The last server epoch handed out by this database (0: none yet).
    pub(crate) fn last_epoch(&self) -> Result<u32, StoreError> {
        last_epoch_of(self.kv.get(Cf::Meta, meta::EPOCH)?.as_deref())
    }

    /// A new server epoch (SPEC.md §4.3): one more than the last one handed out by this
    /// database, never zero, durable before it is returned, so no two starts share one, even
    /// two servers of one shared database starting at the same moment (the record is
    /// compared and set; the loser reads again). Refused, never wrapped, once every epoch has
    /// been used; an unreadable record is corruption, never read as "none yet".
    pub fn next_epoch(&self) -> Result<u32, StoreError> {
        loop {
            let stored = self.kv.get(Cf::Meta, meta::EPOCH)?;
            let last = last_epoch_of(stored.as_deref())?;
            let next = last.checked_add(1).ok_or(StoreError::EpochsExhausted)?;
            if self.kv.compare_and_put(
                Cf::Meta,
                meta::EPOCH,
                stored.as_deref(),
                &next.to_be_bytes(),
            )? {
                return Ok(next);
            }
        }
    }
}

/// The epoch of the stored `meta` record (0: none yet).
fn last_epoch_of(stored: Option<&[u8]>) -> Result<u32, StoreError> {
    match stored {
        None => Ok(0),
        Some(v) => v
            .try_into()
            .map(u32::from_be_bytes)
            .map_err(|_| corrupt(Cf::Meta, meta::EPOCH, "not an epoch")),
    }
}
