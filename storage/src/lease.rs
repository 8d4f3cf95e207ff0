//! The webhook delivery lease of a database several servers share: the one `meta` record
//! that says which server delivers the instance's webhooks, so that no event is delivered by
//! two servers at once in normal operation.
//!
//! The record holds the holder (a server's epoch; 0: nobody) and a renewal count. Every
//! change compares and sets the whole record ([`crate::KvStore::compare_and_put`]), so two
//! servers never both take it. A holder renews it often; another server takes it only after
//! seeing the same record, unchanged, for a whole lease on its own clock (no clocks of two
//! machines are compared). What a holder does with it (stop delivering before its lease may
//! be taken) is the webhook pipeline's business.

use crate::error::{corrupt, StoreError};
use crate::kv::Cf;
use crate::schema::meta;
use crate::Store;

/// The lease record as read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseView {
    raw: Option<Vec<u8>>,
    /// The holder's epoch (0: nobody holds it).
    pub holder: u64,
    /// How many times it was taken or renewed.
    pub renewals: u64,
}

impl LeaseView {
    fn decode(raw: Option<Vec<u8>>) -> Result<LeaseView, StoreError> {
        let Some(v) = raw else {
            return Ok(LeaseView::default());
        };
        let bad = || corrupt(Cf::Meta, meta::WEBHOOK_LEASE, "not a lease");
        let (holder, renewals) = v.split_first_chunk::<8>().ok_or_else(bad)?;
        let renewals: [u8; 8] = renewals.try_into().map_err(|_| bad())?;
        Ok(LeaseView {
            holder: u64::from_be_bytes(*holder),
            renewals: u64::from_be_bytes(renewals),
            raw: Some(v),
        })
    }

    fn encode(holder: u64, renewals: u64) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&holder.to_be_bytes());
        v[8..].copy_from_slice(&renewals.to_be_bytes());
        v
    }
}

impl Store {
    /// The webhook delivery lease as stored now.
    pub fn webhook_lease(&self) -> Result<LeaseView, StoreError> {
        LeaseView::decode(self.kv().get(Cf::Meta, meta::WEBHOOK_LEASE)?)
    }

    /// Sets the lease to `holder` (0: gives it up) if it is still `seen`: `Some` with the new
    /// record if this call set it, `None` if another server changed it first.
    pub fn set_webhook_lease(
        &self,
        seen: &LeaseView,
        holder: u64,
    ) -> Result<Option<LeaseView>, StoreError> {
        let renewals = seen.renewals.wrapping_add(1);
        let value = LeaseView::encode(holder, renewals);
        if self
            .kv()
            .compare_and_put(Cf::Meta, meta::WEBHOOK_LEASE, seen.raw.as_deref(), &value)?
        {
            Ok(Some(LeaseView {
                raw: Some(value.to_vec()),
                holder,
                renewals,
            }))
        } else {
            Ok(None)
        }
    }
}
