//! Group commit, pipelined with packet processing on a dedicated writer thread, or inline.
//!
//! An IO thread hands each receive batch's mutations to the [`Committer`] through its own
//! [`Submitter`] and sends that batch's replies only when the batch's [`Done`] arrives with
//! success. With a writer thread ([`CommitterConfig::writer_thread`]), the IO thread goes on
//! receiving and processing the next batch meanwhile; the writer takes every batch queued at
//! that moment (from all IO threads) into one atomic write ([`Store::commit_group`]), so the
//! fixed cost of a write is shared, and publishes the events of a batch only after its write
//! succeeded. That pays when a core is left for the writer; when every core runs an IO
//! thread, committing inline (the IO thread writes its batch itself, RocksDB groups
//! concurrent writers) is faster: see BENCHMARKS.md.
//!
//! Guarantees, in both modes: each submitter receives the [`Done`] of its batches in the
//! order it submitted them; a batch's events are published only after its write; the writer's
//! queue is bounded (a full queue makes [`Submitter::submit`] wait: back-pressure instead of
//! memory growth when the disk is slow).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use zoftoken_engine::{Batch, Engine, Mutation};

use crate::kv::Durability;
use crate::store::{Store, StoreError};

/// Most batches one group write takes.
const MAX_GROUP: usize = 64;
/// How often a waiting thread checks that the writer is still alive.
const LIVENESS_CHECK: Duration = Duration::from_millis(100);

/// Errors of the committer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The write of the group holding this batch failed; nothing of the batch was written
    /// and its events were not published.
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

struct Job {
    batch: Batch,
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
    /// events are published on `engine`.
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
                        write_loop(&store, &engine, &rx, config, &stop, &stats);
                    })?,
            );
            committer.jobs = Some(jobs);
        }
        Ok(committer)
    }

    /// A submitter for one IO thread.
    pub fn submitter(&self) -> Submitter {
        let route = match &self.jobs {
            Some(jobs) => {
                let (done_tx, done_rx) = mpsc::channel();
                Route::Writer {
                    jobs: jobs.clone(),
                    done_tx,
                    done_rx,
                    alive: self.alive.clone(),
                }
            }
            None => Route::Inline {
                store: self.store.clone(),
                engine: self.engine.clone(),
                durability: self.durability,
                stopped: self.stop.clone(),
                stats: self.stats.clone(),
                ready: VecDeque::new(),
            },
        };
        Submitter {
            route,
            in_flight: 0,
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

fn write_loop(
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
fn write_group(
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
fn finish(store: &Store, engine: &Engine, batch: &mut Batch, result: &Result<(), CommitError>) {
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

/// One IO thread's handle on the [`Committer`].
pub struct Submitter {
    route: Route,
    in_flight: usize,
}

enum Route {
    Writer {
        jobs: SyncSender<Job>,
        done_tx: Sender<Done>,
        done_rx: Receiver<Done>,
        alive: Arc<AtomicBool>,
    },
    Inline {
        store: Arc<Store>,
        engine: Arc<Engine>,
        durability: Durability,
        stopped: Arc<AtomicBool>,
        stats: Arc<CommitterStats>,
        ready: VecDeque<Done>,
    },
}

impl Submitter {
    /// Hands a batch over: queued for the writer (waiting while its queue is full), or
    /// written now when committing inline. On error the batch is handed back, untouched.
    pub fn submit(&mut self, mut batch: Batch) -> Result<(), (Batch, CommitError)> {
        match &mut self.route {
            Route::Writer { jobs, done_tx, .. } => {
                let job = Job {
                    batch,
                    done: done_tx.clone(),
                };
                if let Err(mpsc::SendError(job)) = jobs.send(job) {
                    return Err((job.batch, CommitError::Stopped));
                }
            }
            Route::Inline {
                store,
                engine,
                durability,
                stopped,
                stats,
                ready,
            } => {
                if stopped.load(Ordering::Acquire) {
                    return Err((batch, CommitError::Stopped));
                }
                let result = write_group(store, engine, &[&batch.mutations], *durability, stats);
                finish(store, engine, &mut batch, &result);
                ready.push_back(Done { batch, result });
            }
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Batches submitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The next answer if one is ready (answers come in submission order).
    pub fn try_done(&mut self) -> Option<Done> {
        let done = match &mut self.route {
            Route::Writer { done_rx, .. } => done_rx.try_recv().ok(),
            Route::Inline { ready, .. } => ready.pop_front(),
        }?;
        self.in_flight -= 1;
        Some(done)
    }

    /// Waits for the next answer; `None` when nothing is in flight. If the writer thread is
    /// gone, every batch in flight is answered with [`CommitError::Stopped`].
    pub fn wait_done(&mut self) -> Option<Done> {
        if self.in_flight == 0 {
            return None;
        }
        let done = match &mut self.route {
            Route::Inline { ready, .. } => ready.pop_front().unwrap_or_else(stopped),
            Route::Writer { done_rx, alive, .. } => loop {
                match done_rx.recv_timeout(LIVENESS_CHECK) {
                    Ok(done) => break done,
                    // The writer answers before it ends; what is left was never written.
                    Err(_) if !alive.load(Ordering::Acquire) => {
                        break done_rx.try_recv().unwrap_or_else(|_| stopped())
                    }
                    Err(_) => {}
                }
            },
        };
        self.in_flight -= 1;
        Some(done)
    }
}

/// The answer for a batch the writer never took.
fn stopped() -> Done {
    Done {
        batch: Batch::new(),
        result: Err(CommitError::Stopped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cf, FaultyKv, KvStore, MasterKey, MemoryKv};
    use zoftoken_engine::{EngineConfig, ServiceConfig};

    /// A store on a [`FaultyKv`] (writes fail on demand), an engine with one service, and
    /// their committer.
    fn start(queue: usize, writer_thread: bool) -> (Committer, Arc<Engine>, Arc<FaultyKv>) {
        let kv = Arc::new(FaultyKv::new(Arc::new(MemoryKv::new())));
        let store =
            Store::open(kv.clone(), MasterKey::from_bytes([7; 32]), Durability::Wal).unwrap();
        let demo = ServiceConfig::new("demo", &["127.0.0.1:4500"]);
        let engine = Arc::new(Engine::new(EngineConfig::new(vec![demo], 1, [1; 32])).unwrap());
        let config = CommitterConfig {
            queue,
            writer_thread,
            ..CommitterConfig::new(Durability::Wal, 1)
        };
        let committer = Committer::start(Arc::new(store), engine.clone(), config).unwrap();
        (committer, engine, kv)
    }

    fn count(kv: &FaultyKv, cf: Cf) -> usize {
        let mut n = 0;
        kv.scan(cf, &[], None, &mut |_, _| {
            n += 1;
            true
        })
        .unwrap();
        n
    }

    fn enroll(engine: &Engine, user: &str) -> Batch {
        let mut batch = Batch::new();
        let r = engine.enroll(1_000, "demo", user, &mut batch);
        assert!(r.is_ok(), "enroll {user}: {:?}", r.err());
        batch
    }

    #[test]
    fn answers_in_order_and_writes_everything() {
        for writer_thread in [true, false] {
            let (committer, engine, kv) = start(4, writer_thread);
            let events = engine.events().subscribe();
            let mut a = committer.submitter();
            let mut b = committer.submitter();
            for i in 0..40 {
                let batch = enroll(&engine, &format!("user{i}"));
                let s = if i % 2 == 0 { &mut a } else { &mut b };
                assert!(s.submit(batch).is_ok());
            }
            assert_eq!(a.in_flight() + b.in_flight(), 40);
            for s in [&mut a, &mut b] {
                let mut answers = 0;
                while let Some(done) = s.wait_done() {
                    assert!(done.result.is_ok());
                    assert!(done.batch.is_empty(), "the batch comes back emptied");
                    answers += 1;
                }
                assert_eq!(answers, 20);
                assert!(s.try_done().is_none());
            }
            // Every enrollment is durable, and its event was published (after the write).
            assert_eq!(count(&kv, Cf::Enrollments), 40);
            assert_eq!(events.try_iter().count(), 40);
            let stats = committer.stats();
            assert_eq!(stats.batches.load(Ordering::Relaxed), 40);
            let writes = stats.writes.load(Ordering::Relaxed);
            assert!((1..=40).contains(&writes), "{writes} writes");
            if !writer_thread {
                assert_eq!(writes, 40, "inline: one write per batch");
            }
        }
    }

    #[test]
    fn a_failed_write_is_reported_and_publishes_nothing() {
        for writer_thread in [true, false] {
            let (committer, engine, kv) = start(4, writer_thread);
            let events = engine.events().subscribe();
            let mut s = committer.submitter();
            kv.set_failing(true);
            assert!(s.submit(enroll(&engine, "lost")).is_ok());
            let done = s.wait_done().unwrap();
            assert!(
                matches!(&done.result, Err(CommitError::Write(e)) if e.to_string().contains("no space")),
                "{:?}",
                done.result
            );
            assert!(done.batch.is_empty());
            assert_eq!(
                events.try_iter().count(),
                0,
                "no event for an unwritten batch"
            );
            assert_eq!(committer.stats().failed_writes.load(Ordering::Relaxed), 1);
            // The disk recovers: the next batch is written.
            kv.set_failing(false);
            assert!(s.submit(enroll(&engine, "kept")).is_ok());
            assert!(s.wait_done().unwrap().result.is_ok());
            assert_eq!(count(&kv, Cf::Enrollments), 1);
            assert_eq!(events.try_iter().count(), 1);
        }
    }

    #[test]
    fn a_failed_write_leaves_memory_as_the_store_holds_it() {
        use zoftoken_engine::{Force, TokenState};
        for writer_thread in [true, false] {
            let (committer, engine, kv) = start(4, writer_thread);
            let events = engine.events().subscribe();
            let mut s = committer.submitter();
            // A paired token, durable (closed).
            let id = zoftoken_proto::TokenId::derive("demo", "alice");
            let record = zoftoken_engine::TokenRecord {
                kind: zoftoken_engine::TokenKind::App,
                service: 0,
                secret: zoftoken_proto::SecretBytes::new([3; 32]),
                pin_verifier: zoftoken_proto::SecretBytes::new([4; 32]),
                duress_verifier: None,
                status: zoftoken_engine::TokenStateRecord::new(id),
            };
            engine.load_token(&record).unwrap();
            let mut batch = Batch::new();
            batch.mutations.push(Mutation::Token(Box::new(record)));
            assert!(s.submit(batch).is_ok());
            assert!(s.wait_done().unwrap().result.is_ok());
            // An enrollment and a block that cannot be written.
            kv.set_failing(true);
            assert!(s.submit(enroll(&engine, "bob")).is_ok());
            let mut block = Batch::new();
            engine
                .force(1_000, &id, Force::Blocked, &mut block)
                .unwrap();
            assert!(s.submit(block).is_ok());
            for _ in 0..2 {
                assert!(s.wait_done().unwrap().result.is_err());
            }
            // Nothing of either is visible: alice is closed as stored, bob does not exist,
            // no event was published, and nothing waits for a restore.
            let st = engine.status(1_000, "demo", "alice").unwrap();
            assert_eq!((st.state, st.failures), (TokenState::Closed, 0));
            assert_eq!(
                engine.status(1_000, "demo", "bob").err(),
                Some(zoftoken_engine::EngineError::UnknownToken)
            );
            assert_eq!(events.try_iter().count(), 0);
            assert_eq!(engine.unsettled_count(), 0);
            assert!(!committer.store.health().writable());
            // The disk recovers: the same change is written and seen.
            kv.set_failing(false);
            let mut block = Batch::new();
            engine
                .force(2_000, &id, Force::Blocked, &mut block)
                .unwrap();
            assert!(s.submit(block).is_ok());
            assert!(s.wait_done().unwrap().result.is_ok());
            assert!(committer.store.health().writable());
            assert_eq!(
                engine.status(2_000, "demo", "alice").unwrap().state,
                TokenState::Blocked
            );
        }
    }

    #[test]
    fn shutdown_writes_the_queue_then_refuses() {
        for writer_thread in [true, false] {
            let (committer, engine, kv) = start(64, writer_thread);
            let mut s = committer.submitter();
            for i in 0..10 {
                assert!(s.submit(enroll(&engine, &format!("u{i}"))).is_ok());
            }
            committer.shutdown();
            assert_eq!(count(&kv, Cf::Enrollments), 10);
            let mut ok = 0;
            while let Some(done) = s.wait_done() {
                ok += usize::from(done.result.is_ok());
            }
            assert_eq!(ok, 10);
            let refused = s.submit(enroll(&engine, "late"));
            assert!(matches!(refused, Err((_, CommitError::Stopped))));
        }
    }
}
