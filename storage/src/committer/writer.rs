//! The writer: the loop of the writer thread (take every queued batch, one group commit,
//! answer each batch), and the group commit and its aftermath that inline commits share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zoftoken_engine::{Batch, DurableWrite, Engine, Mutation};

use crate::committer::{CommitError, CommitterConfig, CommitterStats, Done, Job};
use crate::error::StoreError;
use crate::kv::Durability;
use crate::store::StoreWrite;
use crate::Store;

/// Most batches one group write takes.
const MAX_GROUP: usize = 64;
/// How often a waiting thread checks that the writer is still alive.
pub(super) const LIVENESS_CHECK: Duration = Duration::from_millis(100);

/// The writer thread: group writes of the queued batches until stopped (then what is still
/// queued is written) or every submitter is gone.
pub(super) fn write_loop(
    store: &Store,
    engine: &Engine,
    rx: &Receiver<Job>,
    config: CommitterConfig,
    stop: &AtomicBool,
    stats: &CommitterStats,
) {
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    loop {
        if let Some(job) = spin_for_job(rx, config.spin) {
            group.push(job);
        } else {
            match rx.recv_timeout(LIVENESS_CHECK) {
                Ok(job) => group.push(job),
                Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Acquire) => continue,
                // Stopping (or every sender gone): write what is still queued, then end.
                Err(_) => {
                    group.extend(rx.try_iter().take(MAX_GROUP));
                    if group.is_empty() {
                        return;
                    }
                }
            }
        }
        group.extend(rx.try_iter().take(MAX_GROUP - group.len()));
        let result = {
            let mut batches: Vec<&mut Batch> = group.iter_mut().map(|j| &mut j.batch).collect();
            commit_group(store, engine, &mut batches, config.durability, stats)
        };
        for job in group.drain(..) {
            // A submitter that is gone no longer needs its answer.
            let _ = job.done.send(Done {
                batch: job.batch,
                result: result.clone(),
            });
        }
    }
}

/// One group commit: a single write of every batch through the engine, which publishes them
/// (settles their tokens, counts their events) once it succeeded. After a failed write the
/// batches' tokens are restored from the database (nothing they changed stays visible).
/// Either way the batches come back empty.
pub(super) fn commit_group(
    store: &Store,
    engine: &Engine,
    batches: &mut [&mut Batch],
    durability: Durability,
    stats: &CommitterStats,
) -> Result<(), CommitError> {
    let mut write = Counted {
        inner: store.durable_write(engine, durability),
        stats,
    };
    match engine.commit_group(&mut write, batches) {
        Ok(_) => Ok(()),
        Err(failed) => {
            for batch in batches.iter_mut() {
                batch.mutations.clear();
            }
            // The clock only where a restore may need it (enrollments loaded back expire by it).
            let e = store.restore_failed(engine, crate::durable::now_ms(), failed);
            Err(CommitError::Write(Arc::new(e)))
        }
    }
}

/// The store's write, counted in the committer's statistics.
struct Counted<'a> {
    inner: StoreWrite<'a>,
    stats: &'a CommitterStats,
}

impl DurableWrite for Counted<'_> {
    type Error = StoreError;

    fn write(&mut self, batches: &[&[Mutation]]) -> Result<u64, StoreError> {
        let started = Instant::now();
        let result = self.inner.write(batches);
        let stats = self.stats;
        stats
            .write_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        stats.writes.fetch_add(1, Ordering::Relaxed);
        stats
            .batches
            .fetch_add(batches.len() as u64, Ordering::Relaxed);
        if result.is_err() {
            stats.failed_writes.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// Waits a little for the next job without sleeping: under load the next batch comes within
/// tens of microseconds, and a sleeping writer has to be woken by the IO thread (a system
/// call, and the scheduler may run the writer on that thread's core).
fn spin_for_job(rx: &Receiver<Job>, spin: Duration) -> Option<Job> {
    if spin.is_zero() {
        return rx.try_recv().ok();
    }
    let started = Instant::now();
    loop {
        for _ in 0..64 {
            if let Ok(job) = rx.try_recv() {
                return Some(job);
            }
            std::hint::spin_loop();
        }
        if started.elapsed() > spin {
            return None;
        }
    }
}
