//! Group commit, pipelined with packet processing on a dedicated writer thread, or inline.
//!
//! An IO thread hands each receive batch's mutations to the [`Committer`] through its own
//! [`Submitter`] and sends that batch's replies only when the batch's [`Done`] arrives with
//! success. With a writer thread ([`CommitterConfig::writer_thread`]), the IO thread goes on
//! receiving and processing the next batch meanwhile; the writer takes every batch queued at
//! that moment (from all IO threads) into one atomic write, so the fixed cost of a write is
//! shared: [`Engine::commit_group`] with the store as its durable write, which publishes the
//! batches (settles their tokens, counts their events) only after the write succeeded. That pays when a core is left for the writer; when every core runs an IO
//! thread, committing inline (the IO thread writes its batch itself, RocksDB groups
//! concurrent writers) is faster: see BENCHMARKS.md.
//!
//! Guarantees, in both modes: each submitter receives the [`Done`] of its batches in the
//! order it submitted them; a batch is published only after its write; the writer's
//! queue is bounded (a full queue makes [`Submitter::submit`] wait: back-pressure instead of
//! memory growth when the disk is slow).
//!
//! `writer` holds the writer thread's loop and the group write both modes share; `submitter`
//! the IO thread's handle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use zoftoken_engine::{Batch, Engine};

use crate::error::StoreError;
use crate::kv::Durability;
use crate::Store;

mod submitter;
mod writer;

pub use submitter::Submitter;

/// Errors of the committer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// The write of the group holding this batch failed; nothing of the batch was written
    /// or published, and its tokens were restored from the database.
    #[error("group commit failed: {0}")]
    Write(Arc<StoreError>),
    /// The committer was shut down (or its writer thread is gone); the batch was not taken.
    #[error("the committer is stopped")]
    Stopped,
}

/// The outcome of one submitted batch.
#[derive(Debug)]
pub struct Done {
    /// The submitted batch, emptied, for reuse.
    pub batch: Batch,
    /// Whether the batch is durable (its replies may be sent).
    pub result: Result<(), CommitError>,
}

/// Counters of the writer (all since start).
#[derive(Debug, Default)]
pub struct CommitterStats {
    /// Group writes done (successful or not).
    pub writes: AtomicU64,
    /// Batches taken.
    pub batches: AtomicU64,
    /// Group writes that failed.
    pub failed_writes: AtomicU64,
    /// Time spent in group writes, in nanoseconds.
    pub write_ns: AtomicU64,
}

/// A batch queued for the writer, with where its answer goes.
struct Job {
    /// The batch.
    batch: Batch,
    /// Its submitter's answers.
    done: Sender<Done>,
}

/// The group commit of one store: a writer thread and its queue, or inline commits.
pub struct Committer {
    store: Arc<Store>,
    engine: Arc<Engine>,
    durability: Durability,
    /// `None` when committing inline.
    jobs: Option<SyncSender<Job>>,
    stop: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
    stats: Arc<CommitterStats>,
    writer: Option<JoinHandle<()>>,
}

/// Clears `alive` when the writer thread ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// How the writer runs.
#[derive(Debug, Clone, Copy)]
pub struct CommitterConfig {
    /// Batches waiting for the writer before [`Submitter::submit`] waits (at least 1).
    pub queue: usize,
    /// Durability of the writes.
    pub durability: Durability,
    /// Whether a writer thread commits (pipelined), or each IO thread inline.
    pub writer_thread: bool,
    /// How long the idle writer looks for the next batch before it sleeps. Spinning keeps
    /// it awake on its own core under load (waking a sleeping thread costs the IO thread a
    /// system call, and the scheduler may then run the writer on the IO thread's core);
    /// worth it only when a core is left for the writer, so zero when every core runs an IO
    /// thread.
    pub spin: Duration,
}

impl CommitterConfig {
    /// For a database over the network (a shared store): waiting for its commits takes no
    /// core, so a writer thread commits, pipelined, whatever the cores (as with fsync), and
    /// every batch queued while one commit travels goes into the next.
    pub fn over_the_network(mut self) -> CommitterConfig {
        self.writer_thread = true;
        self.queue = self.queue.max(256);
        self
    }

    /// Queue of 16 batches, writes with `durability`. A writer thread when the machine has
    /// more cores than `io_threads` (it then spins 100 µs before sleeping) or when writes
    /// wait for fsync (waiting for the disk takes no core, and one fsync then serves every
    /// batch queued meanwhile); else inline commits.
    pub fn new(durability: Durability, io_threads: usize) -> CommitterConfig {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spare_core = cores > io_threads;
        CommitterConfig {
            queue: 16,
            durability,
            writer_thread: spare_core || durability == Durability::Fsync,
            spin: if spare_core {
                Duration::from_micros(100)
            } else {
                Duration::ZERO
            },
        }
    }
}

impl Committer {
    /// Starts the group commit for `store` (the writer thread, if configured); committed
    /// batches are published on `engine`.
    pub fn start(
        store: Arc<Store>,
        engine: Arc<Engine>,
        config: CommitterConfig,
    ) -> std::io::Result<Committer> {
        let stop = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(CommitterStats::default());
        let mut committer = Committer {
            store: store.clone(),
            engine: engine.clone(),
            durability: config.durability,
            jobs: None,
            stop: stop.clone(),
            alive: alive.clone(),
            stats: stats.clone(),
            writer: None,
        };
        if config.writer_thread {
            let (jobs, rx) = mpsc::sync_channel(config.queue.max(1));
            committer.writer = Some(
                std::thread::Builder::new()
                    .name("zoftoken-commit".into())
                    .spawn(move || {
                        let _guard = AliveGuard(alive);
                        writer::write_loop(&store, &engine, &rx, config, &stop, &stats);
                    })?,
            );
            committer.jobs = Some(jobs);
        }
        Ok(committer)
    }

    /// A submitter for one IO thread.
    pub fn submitter(&self) -> Submitter {
        match &self.jobs {
            Some(jobs) => Submitter::to_writer(jobs.clone(), self.alive.clone()),
            None => Submitter::inline(
                self.store.clone(),
                self.engine.clone(),
                self.durability,
                self.stop.clone(),
                self.stats.clone(),
            ),
        }
    }

    /// The writer's counters.
    pub fn stats(&self) -> &CommitterStats {
        &self.stats
    }

    /// Writes everything already queued, then stops the writer and waits for it. Batches
    /// submitted afterwards are refused with [`CommitError::Stopped`] (inline too).
    pub fn shutdown(mut self) {
        self.stop_writer();
    }

    fn stop_writer(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(w) = self.writer.take() {
            // A panicking writer already answered nothing more; the waiters see `alive` fall.
            let _ = w.join();
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.stop_writer();
    }
}
