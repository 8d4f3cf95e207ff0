//! The delivery pipeline: a reader thread (outbox → memory), a dispatcher task (queues,
//! per-token order, retries, endpoint state) on a small tokio runtime with the HTTP attempts,
//! and a writer thread (acknowledgements, dead letters; one store write per round).
//!
//! Reading: the reader scans the outbox forward from its position, woken by the store's
//! outbox watermark (raised after every write that put events in the outbox) or every poll
//! interval. The outbox is the only place events are read from; the watermark carries none. Commits may become visible out of sequence order (two
//! concurrent commits) or never (a failed commit leaves a gap), so a sequence number missing
//! below a visible one is looked up on its own for `gap_timeout`, and the whole outbox is
//! re-listed every `rescan_interval` for anything still missed. The set of commits in memory
//! (`live`) keeps a commit from being loaded twice; it is left only once the write that
//! removes the commit from the outbox has succeeded.
//!
//! Ordering: each endpoint (service) has one queue per token, ordered by the events' sequence
//! numbers (the order the engine made them in; events written before numbering, number 0,
//! first, by time); only a token's first event is ever in flight or waiting for a retry, so a
//! failing event holds back later events of its token only. At most
//! `concurrency_per_endpoint` attempts per endpoint are in flight.
//!
//! Retries are bounded by time, not by a count: an event is retried (delays from
//! `retry_delays`, the last one repeating, with jitter) until `retry_for` has passed since its
//! first attempt by this process, and becomes a dead letter at the first failure after that.
//! A 429 or 503 with `Retry-After` sets the next delay to the receiver's value (at least
//! `retry::MIN_RETRY_AFTER`, at most `max_retry_after`) without using up a step of the
//! schedule, so a receiver that asks for time never exhausts it early.
//!
//! Dead letters do not hold back later events of their token: once an event is given up
//! (after a whole `retry_for` of failures, or a 410), the token's next events are delivered.
//! Holding them back would freeze the receiver's view of the token at an older state (a
//! closed token still shown open) until an operator acts; delivering them gives it the newest
//! state, and the sequence number in every body lets the receiver recognise the dead letter,
//! when it is replayed later, as older than what it has (it keeps the highest number per
//! token and ignores lower ones).
//!
//! Files: `reader` (outbox → memory), `backlog` (on a database several servers write, the
//! outbox as it stood at the start, read in the order its events were made), `dispatch` (the dispatcher: queues, attempts,
//! outcomes), `queue` (an event in memory and the per-token queues), `hook` (a service's
//! webhook as the dispatcher uses it), `retry` (the delay before the next attempt) and
//! `writer` (acknowledgements to the store); this file starts and stops them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, Notify};
use zoftoken_engine::Engine;
use zoftoken_storage::{DeadLetterRecord, OutboxEvent, Store};

use crate::http::Attempt;
use crate::lease::Gate;
use crate::{PipelineConfig, PipelineConfigError, WebhookError};

mod backlog;
mod dispatch;
mod hook;
mod queue;
mod reader;
mod retry;
mod writer;

use dispatch::Dispatcher;
use reader::Reader;
use writer::{writer_loop, WriterMsg};

/// The wall clock in Unix milliseconds (event ages, retry timestamps, dead letters).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Locks `m`, also after a panic of another holder.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// State shared by the pipeline's threads (never by the packet path).
struct Shared {
    stop: AtomicBool,
    /// Tests: drop every write from now on (a `kill -9` before the acknowledgements).
    crashed: AtomicBool,
    /// Outbox commits in memory, until their removal from the outbox is written.
    live: Mutex<HashSet<u64>>,
    /// Replayed dead letters in memory, until their outcome is written.
    live_replays: Mutex<HashSet<(u64, u16)>>,
    /// Events in memory.
    in_memory: AtomicUsize,
    /// The reader paused for lack of room.
    starved: AtomicBool,
    stop_dispatcher: Notify,
    /// Whether attempts may start (the delivery lease on a shared database).
    gate: Arc<Gate>,
}

/// An outbox commit as loaded, usernames filled in.
struct Loaded {
    seq: u64,
    resolved: Vec<u8>,
    events: Vec<OutboxEvent>,
}

/// What the dispatcher receives: commits and replays from the reader, outcomes of its
/// attempts.
enum Msg {
    /// Outbox commits to deliver.
    Commits(Vec<Loaded>),
    /// Dead letters queued again by a replay.
    Replays(Vec<DeadLetterRecord>),
    /// An attempt ended.
    Done {
        service: Arc<str>,
        token: [u8; 16],
        attempt: Attempt,
    },
}

/// The running pipeline. [`Pipeline::shutdown`] (or dropping it) stops it cleanly: attempts
/// in flight are abandoned (they are delivered again at the next start), everything resolved
/// is acknowledged.
pub struct Pipeline {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    dispatcher: Option<tokio::task::JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    /// The store read: its outbox watermark is nudged to stop the reader at once.
    store: Arc<Store>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Starts the pipeline on its own threads: reads the outbox of `store`, delivers to the
    /// webhooks of `engine`'s current services, acknowledges after a 2xx. For a database one
    /// server holds; several servers of a shared database deliver through
    /// [`crate::LeasedPipeline`].
    pub fn start(
        config: PipelineConfig,
        store: Arc<Store>,
        engine: Arc<Engine>,
    ) -> Result<Pipeline, WebhookError> {
        Pipeline::start_gated(config, store, engine, Arc::new(Gate::always()))
    }

    /// As [`Pipeline::start`], starting attempts only while `gate` is open.
    pub fn start_gated(
        config: PipelineConfig,
        store: Arc<Store>,
        engine: Arc<Engine>,
        gate: Arc<Gate>,
    ) -> Result<Pipeline, WebhookError> {
        if config.retry_delays.is_empty() || config.retry_delays.iter().any(Duration::is_zero) {
            return Err(WebhookError::Config(PipelineConfigError::RetryDelays));
        }
        if config.concurrency_per_endpoint == 0 || config.max_in_memory == 0 {
            return Err(WebhookError::Config(PipelineConfigError::Bounds));
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
            live: Mutex::new(HashSet::new()),
            live_replays: Mutex::new(HashSet::new()),
            in_memory: AtomicUsize::new(0),
            starved: AtomicBool::new(false),
            stop_dispatcher: Notify::new(),
            gate,
        });
        let disabled = store
            .disabled_endpoints()?
            .into_iter()
            .map(|d| (d.service.clone(), d))
            .collect();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads.max(1))
            .thread_name("webhooks")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .map_err(WebhookError::Start)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (wtx, wrx) = crossbeam_channel::unbounded::<WriterMsg>();
        let seed = {
            let mut b = [0u8; 8];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
            u64::from_le_bytes(b) | 1
        };
        let mut d = Dispatcher::new(
            config.clone(),
            shared.clone(),
            engine.clone(),
            tx.clone(),
            wtx,
            disabled,
            seed,
        );
        let dispatcher = runtime.spawn(async move { d.run(rx).await });
        let writer = {
            let shared = shared.clone();
            let store = store.clone();
            std::thread::Builder::new()
                .name("webhooks-writer".into())
                .spawn(move || {
                    lower_priority();
                    writer_loop(&shared, &store, &wrx)
                })
                .map_err(WebhookError::Start)?
        };
        let reader = {
            let shared = shared.clone();
            let store = store.clone();
            std::thread::Builder::new()
                .name("webhooks-reader".into())
                .spawn(move || {
                    lower_priority();
                    let mut r = Reader::new(config, shared, store, tx);
                    r.run();
                })
                .map_err(WebhookError::Start)?
        };
        Ok(Pipeline {
            shared,
            runtime: Some(runtime),
            dispatcher: Some(dispatcher),
            reader: Some(reader),
            writer: Some(writer),
            store,
        })
    }

    /// Stops the pipeline: acknowledges what was resolved, abandons attempts in flight.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Stops as a crash would: nothing more is written (acknowledgements not yet written are
    /// lost, so those events are delivered again by the next pipeline). For tests of
    /// redelivery.
    #[doc(hidden)]
    pub fn abandon(mut self) {
        self.shared.crashed.store(true, Ordering::SeqCst);
        self.stop();
    }

    /// Events held in memory (queued, in flight or waiting for a retry).
    pub fn in_memory(&self) -> usize {
        self.shared.in_memory.load(Ordering::Relaxed)
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.store.outbox_watermark().nudge();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.shared.stop_dispatcher.notify_one();
        let runtime = self.runtime.take();
        let dispatcher = self.dispatcher.take();
        let writer = self.writer.take();
        // On a thread of its own: blocking on (or dropping) a runtime inside another
        // runtime's task would panic, and the caller may well be one.
        let stopper = std::thread::Builder::new()
            .name("webhooks-stop".into())
            .spawn(move || {
                if let (Some(rt), Some(d)) = (runtime.as_ref(), dispatcher) {
                    let _ = rt.block_on(d);
                }
                if let Some(w) = writer {
                    let _ = w.join();
                }
                if let Some(rt) = runtime {
                    rt.shutdown_timeout(Duration::from_secs(1));
                }
            });
        if let Ok(t) = stopper {
            let _ = t.join();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if self.reader.is_some() || self.runtime.is_some() {
            self.stop();
        }
    }
}

/// Nice level of the pipeline's threads. When the machine is busy the packet path runs first
/// and deliveries wait in the durable outbox (nothing is lost); on an idle machine the
/// level changes nothing. Measured in BENCHMARKS.md.
const THREAD_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`THREAD_NICE`] (best effort: raising one's own
/// nice level needs no privilege, and a failure only leaves the default).
fn lower_priority() {
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), THREAD_NICE);
}
