//! Scans whose visitor may fail, and the key checks every scan of a token-keyed column
//! family makes: the helpers the store, the webhook records and maintenance share.

use crate::error::{corrupt, StoreError};
use crate::kv::{Cf, KvStore};

/// A scan visitor that may fail: `Ok(false)` stops, an error stops and is returned.
pub(crate) type TryVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StoreError> + 'a;

/// Scans `[start, end)` of `cf` with a visitor that may fail; stops at the first error and
/// returns it.
pub(crate) fn try_scan(
    kv: &dyn KvStore,
    cf: Cf,
    start: &[u8],
    end: Option<&[u8]>,
    visit: &mut TryVisitor<'_>,
) -> Result<(), StoreError> {
    let mut err = None;
    kv.scan(cf, start, end, &mut |k, v| match visit(k, v) {
        Ok(go_on) => go_on,
        Err(e) => {
            err = Some(e);
            false
        }
    })?;
    err.map_or(Ok(()), Err)
}

/// The 16-byte id a key of `cf` must be.
pub(crate) fn id_key(cf: Cf, k: &[u8]) -> Result<[u8; 16], StoreError> {
    k.try_into()
        .map_err(|_| corrupt(cf, k, "key is not a 16-byte id"))
}
