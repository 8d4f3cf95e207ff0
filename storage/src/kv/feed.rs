//! The change feed of a store that several processes write (PostgreSQL): which keys the
//! commits of other writers changed, so that each server keeps its memory current.
//!
//! A store with a feed records, in the same transaction as each write, the keys it wrote and
//! the writer that wrote them ([`KvStore::set_writer`](crate::KvStore::set_writer)). A reader
//! keeps a [`FeedCursor`] and asks for what was committed since
//! ([`KvStore::feed_read`](crate::KvStore::feed_read)). The feed is read in commit order
//! without skipping a commit that was still in flight when a later one became visible: a
//! commit is reported once it is visible, whatever its place. A reader that fell so far
//! behind that the store pruned what it had not read gets [`FeedError::Behind`] and must
//! read everything again.
//!
//! What the feed does not carry: values (the reader reads the current records, so reading a
//! key twice is harmless), the order of keys within a commit, or the writes of its own
//! writer id (they are in its memory already).

use std::time::Duration;

use crate::kv::{Cf, KvError};

/// Where a reader of the feed stands. Commit numbers are the store's own (PostgreSQL: the
/// transaction ids), increasing in the order commits start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedCursor {
    /// Every commit numbered below this had finished (committed or rolled back) when the
    /// cursor was made, and those that committed have been reported.
    pub complete_below: u64,
    /// Commits numbered at or above `complete_below` that have been reported already.
    pub reported: Vec<u64>,
}

/// What [`KvStore::feed_read`](crate::KvStore::feed_read) found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedChanges {
    /// The keys written by other writers' commits not reported before (a key may be listed
    /// more than once).
    pub keys: Vec<(Cf, Vec<u8>)>,
    /// Commits reported by this read (including this reader's own, which list no keys).
    pub commits: usize,
    /// The cursor to read from next.
    pub cursor: FeedCursor,
}

/// Why the feed could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The store has no change feed (one process holds it: RocksDB, memory).
    #[error("this store has no change feed (one process holds it)")]
    Unsupported,
    /// The store pruned commits this reader had not read: its memory may miss changes, and it
    /// must read everything again.
    #[error(
        "the change feed no longer holds commits this reader has not read \
         (pruned after {kept:?}); everything must be read again"
    )]
    Behind {
        /// How long the store keeps the feed.
        kept: Duration,
    },
    /// The store could not be read.
    #[error(transparent)]
    Kv(#[from] KvError),
}

/// How a commit's keys are written into the feed: `(column family index, key length, key)`
/// per key, the column family as its index in [`Cf::ALL`].
pub fn encode_keys<'a>(keys: impl IntoIterator<Item = (Cf, &'a [u8])>) -> Vec<u8> {
    let mut v = Vec::new();
    for (cf, k) in keys {
        let Ok(len) = u16::try_from(k.len()) else {
            continue;
        };
        v.push(Cf::ALL.iter().position(|c| *c == cf).unwrap_or(0) as u8);
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(k);
    }
    v
}

/// The keys of [`encode_keys`], appended to `out`; `None` if the bytes are not such a list.
pub fn decode_keys(mut v: &[u8], out: &mut Vec<(Cf, Vec<u8>)>) -> Option<()> {
    while let Some((&cf, rest)) = v.split_first() {
        let cf = *Cf::ALL.get(usize::from(cf))?;
        let (len, rest) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        let (key, rest) = rest.split_at_checked(len)?;
        out.push((cf, key.to_vec()));
        v = rest;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_round_trip_and_a_cut_list_is_refused() {
        let v = encode_keys([(Cf::State, &[1u8; 16][..]), (Cf::Services, &b"svc"[..])]);
        let mut out = Vec::new();
        decode_keys(&v, &mut out).unwrap();
        assert_eq!(
            out,
            vec![(Cf::State, vec![1; 16]), (Cf::Services, b"svc".to_vec())]
        );
        assert_eq!(decode_keys(&v[..v.len() - 1], &mut Vec::new()), None);
        assert_eq!(decode_keys(&[200, 0, 0], &mut Vec::new()), None);
        decode_keys(&[], &mut out).unwrap();
    }
}
