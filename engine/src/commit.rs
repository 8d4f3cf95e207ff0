//! Commit, then publish: the one way a [`Batch`] becomes visible.
//!
//! A batch's changes (replies aside, which the driver holds back itself) become visible when
//! the batch is *published*: its tokens are settled (readable and changeable again, see the
//! `settle` module) and its events are counted. Publishing a batch that was not written would
//! show a change that a crash forgets, so the types make the order a rule:
//! [`Engine::commit`] and [`Engine::commit_group`] are the only ways to publish, and they run
//! the write themselves through a [`DurableWrite`] (storage's store, or [`MemoryCommit`] in
//! tests and benchmarks) and publish only when it succeeded. A failed write publishes nothing:
//! [`CommitFailed`] hands back the write's error and the tokens the batches changed, which stay
//! unsettled until the caller restores them from storage (the `restore` module).
//!
//! Events are data of the write (the [`Mutation::Event`] records storage keeps in its outbox);
//! publishing does not deliver them anywhere. Whoever delivers events reads them from what
//! was written (storage signals when its outbox grows).

use std::convert::Infallible;

use zoftoken_proto::TokenId;

use crate::event::EventKind;
use crate::mutation::{Batch, Mutation};
use crate::Engine;

/// A durable write of engine batches, implemented by storage (and by [`MemoryCommit`] for
/// tests and benchmarks). The engine calls it from [`Engine::commit`] and
/// [`Engine::commit_group`], and publishes the batches only after it returned `Ok`.
pub trait DurableWrite {
    /// Why a write failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Writes every mutation of `batches`, in order, in one atomic write, and returns only
    /// once that write is durable. Returns the write's commit number (storage: the outbox
    /// sequence number of the write's events, 0 when it wrote none). On error nothing of
    /// `batches` may have been written.
    fn write(&mut self, batches: &[&[Mutation]]) -> Result<u64, Self::Error>;
}

/// A write that did not happen: nothing of its batches was published.
///
/// The batches keep their mutations (the caller drops them, or writes them again later) and
/// hand their unsettled tokens over to [`CommitFailed::unsettled`]: those tokens stay
/// unusable until the caller restores them from storage
/// ([`Engine::forget_for_restore`], the load functions, [`Engine::finish_restore`]).
#[derive(Debug, thiserror::Error)]
#[error("the batch could not be written; nothing of it was published")]
#[non_exhaustive]
pub struct CommitFailed<E: std::error::Error + 'static> {
    /// Why the write failed.
    #[source]
    pub source: E,
    /// The tokens the batches changed, sorted, each once: restore them from storage.
    pub unsettled: Vec<TokenId>,
}

/// A [`DurableWrite`] into memory, for tests, benchmarks and fuzzing: it keeps every written
/// mutation in [`MemoryCommit::log`] (clear it to discard them) and never fails.
#[derive(Debug, Default)]
pub struct MemoryCommit {
    /// Everything written, in order.
    pub log: Vec<Mutation>,
    /// Number of writes.
    pub commits: usize,
}

impl MemoryCommit {
    /// The events written since the log was last cleared, in order (the outbox as storage
    /// would keep it).
    pub fn events(&self) -> impl Iterator<Item = &crate::Event> {
        self.log.iter().filter_map(|m| match m {
            Mutation::Event(e) => Some(e),
            _ => None,
        })
    }
}

impl DurableWrite for MemoryCommit {
    type Error = Infallible;

    fn write(&mut self, batches: &[&[Mutation]]) -> Result<u64, Infallible> {
        for b in batches {
            self.log.extend_from_slice(b);
        }
        self.commits += 1;
        Ok(self.commits as u64)
    }
}

impl Engine {
    /// Writes `batch` through `store`, then publishes it: its tokens are settled, its events
    /// counted ([`Engine::committed_events`]) and the batch is left empty. Returns the write's
    /// commit number ([`DurableWrite::write`]).
    ///
    /// On failure nothing is published: see [`CommitFailed`].
    pub fn commit<W: DurableWrite + ?Sized>(
        &self,
        store: &mut W,
        batch: &mut Batch,
    ) -> Result<u64, CommitFailed<W::Error>> {
        self.commit_group(store, &mut [batch])
    }

    /// As [`Engine::commit`] for several batches in one atomic write (group commit): every
    /// batch is published once the write succeeded; none is if it failed, and
    /// [`CommitFailed::unsettled`] then holds the tokens of all of them.
    pub fn commit_group<W: DurableWrite + ?Sized>(
        &self,
        store: &mut W,
        batches: &mut [&mut Batch],
    ) -> Result<u64, CommitFailed<W::Error>> {
        let written = {
            let mutations: Vec<&[Mutation]> =
                batches.iter().map(|b| b.mutations.as_slice()).collect();
            store.write(&mutations)
        };
        match written {
            Ok(number) => {
                for batch in batches.iter_mut() {
                    self.publish(batch);
                }
                Ok(number)
            }
            Err(source) => {
                let mut unsettled = Vec::new();
                for batch in batches.iter_mut() {
                    unsettled.extend(self.unsettled_tokens(batch));
                }
                unsettled.sort_unstable();
                unsettled.dedup();
                Err(CommitFailed { source, unsettled })
            }
        }
    }

    /// After `batch` was written: settles its tokens ([`Engine::settle_committed`]), counts
    /// its events and clears it. Private to the crate: only a successful write leads here.
    fn publish(&self, batch: &mut Batch) {
        self.settle_committed(batch);
        let mut kinds = [0u64; EventKind::ALL.len()];
        for m in batch.mutations.drain(..) {
            if let Mutation::Event(e) = m {
                if let Some(k) = kinds.get_mut(e.kind as usize) {
                    *k += 1;
                }
            }
        }
        self.event_counts.add(&kinds);
    }
}
