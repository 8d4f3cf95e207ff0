//! The writer: the loop of the writer thread (take every queued batch, one group write,
//! answer each batch), and the group write and its aftermath that inline commits share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zoftoken_engine::{Batch, Engine, Mutation};

use crate::committer::{CommitError, CommitterConfig, CommitterStats, Done, Job};
use crate::kv::Durability;
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
            let batches: Vec<&[Mutation]> =
                group.iter().map(|j| j.batch.mutations.as_slice()).collect();
            write_group(store, engine, &batches, config.durability, stats)
        };
        for mut job in group.drain(..) {
            finish(store, engine, &mut job.batch, &result);
            // A submitter that is gone no longer needs its answer.
            let _ = job.done.send(Done {
                batch: job.batch,
                result: result.clone(),
            });
        }
    }
}

/// One group write, counted.
pub(super) fn write_group(
    store: &Store,
    engine: &Engine,
    batches: &[&[Mutation]],
    durability: Durability,
    stats: &CommitterStats,
) -> Result<(), CommitError> {
    let started = Instant::now();
    let result = store.commit_group(batches, engine, durability);
    stats
        .write_ns
        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    stats.writes.fetch_add(1, Ordering::Relaxed);
    stats
        .batches
        .fetch_add(batches.len() as u64, Ordering::Relaxed);
    result.map(|_| ()).map_err(|e| {
        stats.failed_writes.fetch_add(1, Ordering::Relaxed);
        CommitError::Write(Arc::new(e))
    })
}

/// After the write: a committed batch's tokens are settled and its events published; a
/// failed batch's tokens are restored from the database (nothing it changed stays visible).
/// Either way the batch comes back empty.
pub(super) fn finish(
    store: &Store,
    engine: &Engine,
    batch: &mut Batch,
    result: &Result<(), CommitError>,
) {
    if result.is_ok() {
        engine.publish(batch);
    } else {
        // The clock only where a restore may need it (enrollments loaded back expire by it).
        store.after_commit(engine, crate::durable::now_ms(), batch, false);
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
