//! The delivery pipeline: a reader thread (outbox → memory), a dispatcher task (queues,
//! per-token order, retries, endpoint state) on a small tokio runtime with the HTTP attempts,
//! and a writer thread (acknowledgements, dead letters; one store write per round).
//!
//! Reading: the reader scans the outbox forward from its position, woken by the engine's
//! event bus or every poll interval. Commits may become visible out of sequence order (two
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
//! [`MIN_RETRY_AFTER`], at most `max_retry_after`) without using up a step of the schedule, so
//! a receiver that asks for time never exhausts it early.
//!
//! Dead letters do not hold back later events of their token: once an event is given up
//! (after a whole `retry_for` of failures, or a 410), the token's next events are delivered.
//! Holding them back would freeze the receiver's view of the token at an older state (a
//! closed token still shown open) until an operator acts; delivering them gives it the newest
//! state, and the sequence number in every body lets the receiver recognise the dead letter,
//! when it is replayed later, as older than what it has (it keeps the highest number per
//! token and ignores lower ones).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use hyper::Uri;
use ring::hmac;
use tokio::sync::{mpsc, Notify};
use zeroize::Zeroizing;
use zoftoken_engine::config::check_webhook_url;
use zoftoken_engine::{Engine, EventKind, WebhookConfig};
use zoftoken_storage::webhooks::{event_id, set_bit};
use zoftoken_storage::{
    DeadLetterRecord, DeliveryWrite, DisabledEndpoint, OutboxEvent, PendingCommit, Store,
};

use crate::http::{self, Attempt, HttpClient, Signed};
use crate::{sign, PipelineConfig, WebhookError};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
}

/// An outbox commit as loaded, usernames filled in.
struct Loaded {
    seq: u64,
    resolved: Vec<u8>,
    events: Vec<OutboxEvent>,
}

enum Msg {
    Commits(Vec<Loaded>),
    Replays(Vec<DeadLetterRecord>),
    Done {
        service: Arc<str>,
        token: [u8; 16],
        attempt: Attempt,
    },
}

struct WriterMsg {
    write: DeliveryWrite,
    finished: Vec<u64>,
    replays_done: Vec<(u64, u16)>,
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
    kick: Sender<()>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Starts the pipeline on its own threads: reads the outbox of `store`, delivers to the
    /// webhooks of `engine`'s current services, acknowledges after a 2xx.
    pub fn start(
        config: PipelineConfig,
        store: Arc<Store>,
        engine: Arc<Engine>,
    ) -> Result<Pipeline, WebhookError> {
        if config.retry_delays.is_empty() || config.retry_delays.iter().any(Duration::is_zero) {
            return Err(WebhookError::Config(
                "the retry delays need at least one entry, each longer than zero".into(),
            ));
        }
        if config.concurrency_per_endpoint == 0 || config.max_in_memory == 0 {
            return Err(WebhookError::Config(
                "concurrency and memory bound must be positive".into(),
            ));
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
            live: Mutex::new(HashSet::new()),
            live_replays: Mutex::new(HashSet::new()),
            in_memory: AtomicUsize::new(0),
            starved: AtomicBool::new(false),
            stop_dispatcher: Notify::new(),
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
            .map_err(|e| WebhookError::Start(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (wtx, wrx) = crossbeam_channel::unbounded::<WriterMsg>();
        let (ktx, krx) = crossbeam_channel::bounded::<()>(1);
        let seed = {
            let mut b = [0u8; 8];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
            u64::from_le_bytes(b) | 1
        };
        let mut d = Dispatcher {
            cfg: config.clone(),
            shared: shared.clone(),
            engine: engine.clone(),
            tx: tx.clone(),
            writer: Some(wtx),
            commits: HashMap::new(),
            endpoints: HashMap::new(),
            timers: BinaryHeap::new(),
            timer_serial: 0,
            hooks: HashMap::new(),
            disabled,
            clients: HashMap::new(),
            client_errors: HashMap::new(),
            pending: DeliveryWrite::new(),
            finished: Vec::new(),
            replays_done: Vec::new(),
            dirty: HashSet::new(),
            pending_since: None,
            pending_count: 0,
            undelivered: BTreeSet::new(),
            rng: seed,
            touched: HashSet::new(),
        };
        let dispatcher = runtime.spawn(async move { d.run(rx).await });
        let writer = {
            let shared = shared.clone();
            let store = store.clone();
            let kick = ktx.clone();
            std::thread::Builder::new()
                .name("webhooks-writer".into())
                .spawn(move || {
                    lower_priority();
                    writer_loop(&shared, &store, &wrx, &kick)
                })
                .map_err(|e| WebhookError::Start(e.to_string()))?
        };
        let reader = {
            let shared = shared.clone();
            let bus = engine.events().subscribe();
            std::thread::Builder::new()
                .name("webhooks-reader".into())
                .spawn(move || {
                    lower_priority();
                    let mut r = Reader::new(config, shared, store, tx);
                    r.run(&bus, &krx);
                })
                .map_err(|e| WebhookError::Start(e.to_string()))?
        };
        Ok(Pipeline {
            shared,
            runtime: Some(runtime),
            dispatcher: Some(dispatcher),
            reader: Some(reader),
            writer: Some(writer),
            kick: ktx,
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
        let _ = self.kick.try_send(());
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

fn writer_loop(shared: &Shared, store: &Store, rx: &Receiver<WriterMsg>, kick: &Sender<()>) {
    while let Ok(m) = rx.recv() {
        if shared.crashed.load(Ordering::SeqCst) {
            continue;
        }
        match store.write_deliveries(m.write) {
            Ok(()) => {
                {
                    let mut live = lock(&shared.live);
                    for s in &m.finished {
                        live.remove(s);
                    }
                }
                if !m.replays_done.is_empty() {
                    let mut live = lock(&shared.live_replays);
                    for r in &m.replays_done {
                        live.remove(r);
                    }
                }
                if shared.starved.load(Ordering::Relaxed) {
                    let _ = kick.try_send(());
                }
            }
            Err(e) => {
                // The events stay in the outbox (and in `live`): delivered again after a
                // restart. Counted; the error names no secret.
                metrics::counter!("zoftoken_webhook_store_errors_total").increment(1);
                eprintln!("webhooks: acknowledgement write failed: {e}");
            }
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

/// The outbox reader.
struct Reader {
    cfg: PipelineConfig,
    shared: Arc<Shared>,
    store: Arc<Store>,
    tx: mpsc::UnboundedSender<Msg>,
    cursor: u64,
    start_high: u64,
    gaps: BTreeMap<u64, Instant>,
    last_gap_check: Instant,
    last_rescan: Instant,
    /// Usernames of recently seen tokens. A token's username never changes (the token id
    /// is derived from the service and the username), so a steady stream of events from the
    /// same tokens reads each name from the store once instead of once per read of the
    /// outbox.
    names: HashMap<[u8; 16], String>,
}

/// Most usernames the reader keeps (then it starts over): a few megabytes at most.
const NAME_CACHE: usize = 1 << 16;

/// Least time between two reads of the outbox. Each read is a scan of the store, so at a
/// steady 1 000 events/s a 2 ms period cost the reader 8 % of a core; 10 ms costs a few
/// milliseconds of delivery latency (the target is 50 ms at p99) and a fifth of the reads.
const MIN_READ_EVERY: Duration = Duration::from_millis(10);

/// Least time between two lookups of the missing sequence numbers.
const GAP_CHECK_EVERY: Duration = Duration::from_millis(5);

/// Most missing sequence numbers looked up individually at once.
const MAX_GAPS: usize = 10_000;

impl Reader {
    fn new(
        cfg: PipelineConfig,
        shared: Arc<Shared>,
        store: Arc<Store>,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> Reader {
        let start_high = store.last_outbox_seq().ok().flatten().unwrap_or(0);
        let cursor = store.outbox_start().unwrap_or(0);
        Reader {
            cfg,
            shared,
            store,
            tx,
            cursor,
            start_high,
            gaps: BTreeMap::new(),
            last_gap_check: Instant::now(),
            last_rescan: Instant::now(),
            names: HashMap::new(),
        }
    }

    fn run(&mut self, bus: &Receiver<zoftoken_engine::Event>, kick: &Receiver<()>) {
        let mut last_read: Option<Instant> = None;
        while !self.shared.stop.load(Ordering::SeqCst) {
            // Under a stream of events, read at most every MIN_READ_EVERY: each read then
            // takes many commits, and the packet path's commits wake this thread far less
            // often (a wake-up costs the IO thread a system call).
            if let Some(at) = last_read {
                if let Some(rest) = MIN_READ_EVERY.checked_sub(at.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            last_read = Some(Instant::now());
            if let Err(e) = self.read_once() {
                metrics::counter!("zoftoken_webhook_store_errors_total").increment(1);
                eprintln!("webhooks: reading the outbox failed: {e}");
            }
            crossbeam_channel::select! {
                recv(bus) -> _ => {
                    // A wake-up only: drain what is queued (the outbox is the truth).
                    for _ in bus.try_iter().take(1 << 16) {}
                }
                recv(kick) -> _ => {}
                default(self.wait()) => {}
            }
        }
    }

    /// How long to sleep without a wake-up: the poll interval, or the gap lookup period
    /// while sequence numbers are missing (so that no lookup is skipped for long).
    fn wait(&self) -> Duration {
        if self.gaps.is_empty() {
            self.cfg.poll_interval
        } else {
            self.cfg.poll_interval.min(GAP_CHECK_EVERY)
        }
    }

    fn room(&self) -> usize {
        let room = self
            .cfg
            .max_in_memory
            .saturating_sub(self.shared.in_memory.load(Ordering::Relaxed));
        self.shared.starved.store(room == 0, Ordering::Relaxed);
        room
    }

    fn is_live(&self, seq: u64) -> bool {
        lock(&self.shared.live).contains(&seq)
    }

    fn read_once(&mut self) -> Result<(), WebhookError> {
        let room = self.room();
        if room > 0 {
            let shared = self.shared.clone();
            let (commits, last) = self
                .store
                .pending_commits(self.cursor, room, &mut |s| lock(&shared.live).contains(&s))?;
            let mut prev = self.cursor.checked_sub(1);
            for c in &commits {
                if let Some(p) = prev {
                    if c.seq > self.start_high && c.seq - p > 1 {
                        for g in (p + 1).max(self.start_high + 1)..c.seq {
                            if self.gaps.len() >= MAX_GAPS {
                                break;
                            }
                            self.gaps.insert(g, Instant::now());
                        }
                    }
                }
                prev = Some(c.seq);
            }
            if let Some(l) = last {
                self.cursor = l + 1;
            }
            self.send(commits);
        }
        // Commits that became visible late below the read position.
        let timeout = self.cfg.gap_timeout;
        self.gaps.retain(|_, t| t.elapsed() < timeout);
        if !self.gaps.is_empty()
            && self.last_gap_check.elapsed() >= GAP_CHECK_EVERY
            && self.room() > 0
        {
            self.last_gap_check = Instant::now();
            let mut found = Vec::new();
            for &g in self.gaps.keys() {
                if !self.is_live(g) {
                    if let Some(c) = self.store.pending_commit(g)? {
                        found.push(c);
                    }
                }
            }
            for c in &found {
                self.gaps.remove(&c.seq);
            }
            self.send(found);
        }
        if self.last_rescan.elapsed() >= self.cfg.rescan_interval && self.room() > 0 {
            self.last_rescan = Instant::now();
            let mut found = Vec::new();
            for s in self.store.outbox_seqs(0, self.cursor)? {
                if !self.is_live(s) && !self.gaps.contains_key(&s) {
                    // Looked up after the liveness check: a commit finished in between is
                    // gone from the outbox by then.
                    if let Some(c) = self.store.pending_commit(s)? {
                        found.push(c);
                    }
                }
            }
            self.send(found);
        }
        // Replayed dead letters.
        let room = self.room();
        if room > 0 {
            let replays = self.store.replays(room.min(10_000))?;
            if !replays.is_empty() {
                let mut live = lock(&self.shared.live_replays);
                let new: Vec<DeadLetterRecord> = replays
                    .into_iter()
                    .filter(|r| live.insert((r.event.seq, r.event.index)))
                    .collect();
                drop(live);
                if !new.is_empty() {
                    self.shared
                        .in_memory
                        .fetch_add(new.len(), Ordering::Relaxed);
                    let _ = self.tx.send(Msg::Replays(new));
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, commits: Vec<PendingCommit>) {
        if commits.is_empty() {
            return;
        }
        if self.names.len() > NAME_CACHE {
            self.names.clear();
        }
        let mut out = Vec::with_capacity(commits.len());
        let mut n = 0;
        {
            let mut live = lock(&self.shared.live);
            for c in &commits {
                live.insert(c.seq);
            }
        }
        for c in commits {
            let mut events = c.events;
            for e in &mut events {
                if e.username.is_none() && e.kind != EventKind::Deleted {
                    e.username = match self.names.get(&e.token_id.0) {
                        Some(name) => Some(name.clone()),
                        None => {
                            let name = self
                                .store
                                .token_info(&e.token_id)
                                .ok()
                                .flatten()
                                .map(|(_, u)| u);
                            if let Some(n) = &name {
                                self.names.insert(e.token_id.0, n.clone());
                            }
                            name
                        }
                    };
                }
            }
            n += events.len();
            out.push(Loaded {
                seq: c.seq,
                resolved: c.resolved,
                events,
            });
        }
        self.shared.in_memory.fetch_add(n, Ordering::Relaxed);
        let _ = self.tx.send(Msg::Commits(out));
    }
}

/// A service's webhook as the dispatcher uses it.
struct Hook {
    url: String,
    /// The parsed URL, or why no request is made to it.
    uri: Result<Uri, String>,
    shared_token: Option<Zeroizing<String>>,
    keys: Vec<hmac::Key>,
    events: u32,
    fingerprint: [u8; 32],
    client: Result<HttpClient, String>,
}

impl Hook {
    fn wants(&self, kind: EventKind) -> bool {
        self.events & (1 << (kind as u32)) != 0
    }
}

fn fingerprint(w: &WebhookConfig) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        w.url.as_str(),
        w.secret.as_str(),
        w.previous_secret.as_deref().unwrap_or("\u{0}none"),
        w.ca_file.as_deref().unwrap_or("\u{0}none"),
        w.shared_token.as_deref().unwrap_or("\u{0}none"),
        if w.allow_insecure_http {
            "insecure"
        } else {
            "secure"
        },
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    for e in &w.events {
        ctx.update(&(e.len() as u64).to_be_bytes());
        ctx.update(e.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// One event in memory.
struct Item {
    ev: OutboxEvent,
    replay: bool,
    attempts: u32,
    /// When this process first attempted it: retries stop `retry_for` later.
    first_attempt: Option<Instant>,
    /// Steps of `retry_delays` used (a honoured `Retry-After` uses none).
    step: usize,
}

impl Item {
    fn new(ev: OutboxEvent, replay: bool) -> Item {
        Item {
            ev,
            replay,
            attempts: 0,
            first_attempt: None,
            step: 0,
        }
    }

    /// Age order (the oldest undelivered event).
    fn order(&self) -> (u64, u64, u16) {
        (self.ev.time_ms, self.ev.seq, self.ev.index)
    }

    /// Order within its token's queue: the sequence number the engine gave the event under the
    /// token's lock (commits may reach the disk, and the clock may step, in another order).
    fn queue_order(&self) -> (u64, u64, u64, u16) {
        (
            self.ev.sequence,
            self.ev.time_ms,
            self.ev.seq,
            self.ev.index,
        )
    }
}

/// Shortest delay a `Retry-After` can ask for (a `Retry-After: 0` loop would be a flood).
pub(crate) const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The next delay after a failed attempt: `(delay, steps used)`. A honoured `Retry-After`
/// (429 or 503) is the delay, within [`MIN_RETRY_AFTER`] and `max_retry_after`, and uses no
/// step; otherwise the schedule's delay for `step` (the last entry repeating) with jitter, cut
/// so that the attempt falls no later than `left` (the time left of `retry_for`).
fn retry_delay(
    cfg: &PipelineConfig,
    rng: &mut u64,
    attempt: &Attempt,
    step: usize,
    left: Duration,
) -> (Duration, usize) {
    let honour = matches!(attempt.status, Some(429) | Some(503));
    match attempt.retry_after.filter(|_| honour) {
        Some(d) => (d.max(MIN_RETRY_AFTER).min(cfg.max_retry_after), 0),
        None => {
            let base = cfg
                .retry_delays
                .get(step)
                .or(cfg.retry_delays.last())
                .copied()
                .unwrap_or(Duration::ZERO);
            (jitter(rng, base, cfg.jitter_percent).min(left), 1)
        }
    }
}

#[derive(Default)]
struct TokenQueue {
    items: VecDeque<Item>,
    /// The first item is in flight or waiting for its retry.
    busy: bool,
}

#[derive(Default)]
struct Endpoint {
    in_flight: usize,
    /// Tokens whose first item can be attempted now.
    ready: VecDeque<[u8; 16]>,
    tokens: HashMap<[u8; 16], TokenQueue>,
}

/// A retry due: `(when, serial, service, token)`.
type Timer = (Instant, u64, Arc<str>, [u8; 16]);

struct Dispatcher {
    cfg: PipelineConfig,
    shared: Arc<Shared>,
    engine: Arc<Engine>,
    tx: mpsc::UnboundedSender<Msg>,
    writer: Option<Sender<WriterMsg>>,
    /// Commits in memory: resolved bitmap and events left.
    commits: HashMap<u64, (Vec<u8>, u32)>,
    endpoints: HashMap<Arc<str>, Endpoint>,
    timers: BinaryHeap<Reverse<Timer>>,
    timer_serial: u64,
    hooks: HashMap<Arc<str>, Arc<Hook>>,
    disabled: HashMap<String, DisabledEndpoint>,
    clients: HashMap<Option<String>, HttpClient>,
    /// The last client error logged per service (logged again only when it changes).
    client_errors: HashMap<Arc<str>, String>,
    pending: DeliveryWrite,
    finished: Vec<u64>,
    replays_done: Vec<(u64, u16)>,
    dirty: HashSet<u64>,
    pending_since: Option<Instant>,
    pending_count: usize,
    /// `(time, seq, index)` of every event in memory: the oldest undelivered one.
    undelivered: BTreeSet<(u64, u64, u16)>,
    rng: u64,
    touched: HashSet<Arc<str>>,
}

/// Acknowledge at once beyond this many resolved events.
const ACK_BATCH: usize = 8192;

impl Dispatcher {
    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        self.refresh();
        let mut next_refresh = Instant::now() + self.cfg.poll_interval;
        loop {
            let mut deadline = next_refresh;
            if let Some(Reverse((t, ..))) = self.timers.peek() {
                deadline = deadline.min(*t);
            }
            if let Some(s) = self.pending_since {
                deadline = deadline.min(s + self.cfg.ack_interval);
            }
            tokio::select! {
                biased;
                _ = self.shared.stop_dispatcher.notified() => break,
                m = rx.recv() => match m {
                    Some(m) => {
                        self.handle(m);
                        for _ in 0..4096 {
                            match rx.try_recv() {
                                Ok(m) => self.handle(m),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            let now = Instant::now();
            while let Some(Reverse((t, ..))) = self.timers.peek() {
                if *t > now {
                    break;
                }
                if let Some(Reverse((_, _, service, token))) = self.timers.pop() {
                    if let Some(ep) = self.endpoints.get_mut(&service) {
                        if let Some(q) = ep.tokens.get_mut(&token) {
                            q.busy = false;
                            ep.ready.push_back(token);
                        }
                    }
                    self.touched.insert(service);
                }
            }
            if now >= next_refresh {
                self.refresh();
                next_refresh = now + self.cfg.poll_interval;
            }
            let touched: Vec<Arc<str>> = self.touched.drain().collect();
            for s in touched {
                self.pump(&s);
            }
            if self
                .pending_since
                .is_some_and(|s| s.elapsed() >= self.cfg.ack_interval)
                || self.pending_count >= ACK_BATCH
            {
                self.flush();
            }
        }
        self.flush();
        self.writer = None;
    }

    fn refresh(&mut self) {
        let mut hooks = HashMap::new();
        for c in self.engine.service_configs() {
            let Some(w) = c.webhook else { continue };
            let fp = fingerprint(&w);
            let name: Arc<str> = Arc::from(c.name.as_str());
            // Kept while unchanged; a client that could not be built (CA file) is tried again.
            if let Some(h) = self
                .hooks
                .get(&name)
                .filter(|h| h.fingerprint == fp && h.client.is_ok())
            {
                hooks.insert(name, h.clone());
                continue;
            }
            let client = match self.clients.get(&w.ca_file) {
                Some(c) => Ok(c.clone()),
                None => match http::client(w.ca_file.as_deref(), self.cfg.concurrency_per_endpoint)
                {
                    Ok(c) => {
                        self.clients.insert(w.ca_file.clone(), c.clone());
                        Ok(c)
                    }
                    Err(e) => Err(e.to_string()),
                },
            };
            // An unusable CA file fails this service's deliveries (retried, then dead
            // letters), counted and logged once per change; it never stops the server.
            match &client {
                Err(e) if self.client_errors.get(&name) != Some(e) => {
                    metrics::counter!("zoftoken_webhook_config_errors_total").increment(1);
                    eprintln!("webhooks: service `{name}`: {e}");
                    self.client_errors.insert(name.clone(), e.clone());
                }
                Err(_) => {}
                Ok(_) => {
                    self.client_errors.remove(&name);
                }
            }
            let mut secrets = vec![w.secret.as_str()];
            if let Some(p) = &w.previous_secret {
                secrets.push(p);
            }
            let events = if w.events.is_empty() {
                u32::MAX
            } else {
                w.events
                    .iter()
                    .filter_map(|n| EventKind::from_name(n))
                    .fold(0, |m, k| m | 1 << (k as u32))
            };
            // Validation refuses these URLs already; checked again before any request.
            let uri = match check_webhook_url(&w.url, w.allow_insecure_http) {
                Err(e) => Err(format!("the webhook URL is refused: {e}")),
                Ok(()) => w
                    .url
                    .parse::<Uri>()
                    .map_err(|_| "the webhook URL does not parse".to_owned()),
            };
            let hook = Hook {
                uri,
                url: w.url.clone(),
                keys: sign::keys(&secrets),
                shared_token: w.shared_token.clone().map(Zeroizing::new),
                events,
                fingerprint: fp,
                client,
            };
            hooks.insert(name, Arc::new(hook));
        }
        // A changed configuration re-enables a disabled endpoint.
        let changed: Vec<String> = self
            .disabled
            .iter()
            .filter(|(s, d)| {
                hooks
                    .get(s.as_str())
                    .is_some_and(|h| h.fingerprint != d.fingerprint)
            })
            .map(|(s, _)| s.clone())
            .collect();
        for s in changed {
            self.disabled.remove(&s);
            self.pending.enable(&s);
            self.note_pending(0);
        }
        self.hooks = hooks;
        self.export_gauges();
    }

    fn export_gauges(&self) {
        metrics::gauge!("zoftoken_webhook_queue_depth")
            .set(self.shared.in_memory.load(Ordering::Relaxed) as f64);
        let oldest = self
            .undelivered
            .first()
            .map_or(0.0, |(t, ..)| now_ms().saturating_sub(*t) as f64 / 1000.0);
        metrics::gauge!("zoftoken_webhook_oldest_undelivered_seconds").set(oldest);
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Commits(list) => {
                for c in list {
                    let n = c.events.len() as u32;
                    if n == 0 {
                        self.pending.finished(c.seq);
                        self.finished.push(c.seq);
                        self.note_pending(1);
                        continue;
                    }
                    self.commits.insert(c.seq, (c.resolved, n));
                    for ev in c.events {
                        self.enqueue(Item::new(ev, false));
                    }
                }
            }
            Msg::Replays(list) => {
                for r in list {
                    // The replay re-enabled the endpoint in the store.
                    self.disabled.remove(&r.event.service);
                    self.enqueue(Item::new(r.event, true));
                }
            }
            Msg::Done {
                service,
                token,
                attempt,
            } => self.done(service, token, attempt),
        }
    }

    fn enqueue(&mut self, item: Item) {
        self.undelivered.insert(item.order());
        let hook = self.hooks.get(item.ev.service.as_str()).cloned();
        match hook {
            None => self.resolve(item, false),
            Some(h) if !h.wants(item.ev.kind) => self.resolve(item, false),
            Some(_) if self.disabled.contains_key(&item.ev.service) => {
                self.dead(item, Some(410), "endpoint disabled (HTTP 410)".into())
            }
            Some(_) => {
                let name = match self.endpoints.get_key_value(item.ev.service.as_str()) {
                    Some((k, _)) => k.clone(),
                    None => {
                        let k: Arc<str> = Arc::from(item.ev.service.as_str());
                        self.endpoints.insert(k.clone(), Endpoint::default());
                        k
                    }
                };
                let token = item.ev.token_id.0;
                let Some(ep) = self.endpoints.get_mut(&name) else {
                    return;
                };
                let q = ep.tokens.entry(token).or_default();
                let start = usize::from(q.busy).min(q.items.len());
                let key = item.queue_order();
                let at = q
                    .items
                    .iter()
                    .skip(start)
                    .position(|i| i.queue_order() > key)
                    .map_or(q.items.len(), |p| p + start);
                let was_empty = q.items.is_empty();
                q.items.insert(at, item);
                if was_empty && !q.busy {
                    ep.ready.push_back(token);
                }
                self.touched.insert(name);
            }
        }
    }

    /// Starts attempts on an endpoint up to its concurrency.
    fn pump(&mut self, service: &Arc<str>) {
        let hook = self.hooks.get(service).cloned();
        let disabled = self.disabled.contains_key(&**service);
        loop {
            let Some(ep) = self.endpoints.get_mut(service) else {
                return;
            };
            if ep.in_flight >= self.cfg.concurrency_per_endpoint {
                return;
            }
            let Some(token) = ep.ready.pop_front() else {
                if ep.in_flight == 0 && ep.tokens.is_empty() {
                    self.endpoints.remove(service);
                }
                return;
            };
            let Some(q) = ep.tokens.get_mut(&token) else {
                continue;
            };
            if q.busy {
                continue;
            }
            let Some(head) = q.items.front_mut() else {
                ep.tokens.remove(&token);
                continue;
            };
            let hook = match &hook {
                Some(h) if h.wants(head.ev.kind) && !disabled => h.clone(),
                _ => {
                    // The webhook went away (or no longer wants this event), or the endpoint
                    // is disabled: settle the event without an attempt.
                    let Some(item) = q.items.pop_front() else {
                        continue;
                    };
                    if q.items.is_empty() {
                        ep.tokens.remove(&token);
                    } else {
                        ep.ready.push_back(token);
                    }
                    if disabled && hook.is_some() {
                        self.dead(item, Some(410), "endpoint disabled (HTTP 410)".into());
                    } else {
                        self.resolve(item, false);
                    }
                    continue;
                }
            };
            head.first_attempt.get_or_insert_with(Instant::now);
            let ev = head.ev.clone();
            q.busy = true;
            ep.in_flight += 1;
            let tx = self.tx.clone();
            let service = service.clone();
            let timeout = self.cfg.attempt_timeout;
            tokio::spawn(async move {
                let id = event_id(ev.seq, ev.index);
                let token = hook.shared_token.as_deref().map(String::as_str);
                let body = sign::body(&id, &ev, ev.username.as_deref(), token);
                let timestamp = now_ms() / 1000;
                let signature = sign::signature_header(&hook.keys, &id, timestamp, &body);
                let attempt = match (&hook.client, &hook.uri) {
                    (Ok(c), Ok(uri)) => {
                        let signed = Signed {
                            id: &id,
                            timestamp,
                            signature,
                        };
                        http::post(c, uri, signed, body, timeout).await
                    }
                    (Err(e), _) => Attempt {
                        status: None,
                        retry_after: None,
                        error: Some(e.clone()),
                    },
                    (_, Err(e)) => Attempt {
                        status: None,
                        retry_after: None,
                        error: Some(e.clone()),
                    },
                };
                let _ = tx.send(Msg::Done {
                    service,
                    token: ev.token_id.0,
                    attempt,
                });
            });
        }
    }

    fn done(&mut self, service: Arc<str>, token: [u8; 16], attempt: Attempt) {
        self.touched.insert(service.clone());
        let disabled_now = self.disabled.contains_key(&*service);
        let now = Instant::now();
        let Some(ep) = self.endpoints.get_mut(&service) else {
            return;
        };
        ep.in_flight = ep.in_flight.saturating_sub(1);
        let Some(q) = ep.tokens.get_mut(&token) else {
            return;
        };
        let Some(head) = q.items.front_mut() else {
            return;
        };
        head.attempts += 1;
        let ok = attempt.status.is_some_and(|s| (200..300).contains(&s));
        let gone = attempt.status == Some(410);
        let deadline = head.first_attempt.unwrap_or(now) + self.cfg.retry_for;
        let give_up = !ok && (gone || disabled_now || now >= deadline);
        if ok || give_up {
            let Some(item) = q.items.pop_front() else {
                return;
            };
            q.busy = false;
            if q.items.is_empty() {
                ep.tokens.remove(&token);
            } else {
                ep.ready.push_back(token);
            }
            if ok {
                metrics::counter!("zoftoken_webhook_delivered_total").increment(1);
                let lat = now_ms().saturating_sub(item.ev.time_ms) as f64 / 1000.0;
                metrics::histogram!("zoftoken_webhook_latency_seconds").record(lat);
                self.resolve(item, false);
            } else {
                if gone && !disabled_now {
                    if let Some(h) = self.hooks.get(&service) {
                        let d = DisabledEndpoint {
                            service: service.to_string(),
                            url: h.url.clone(),
                            status: 410,
                            at_ms: now_ms(),
                            fingerprint: h.fingerprint,
                        };
                        self.pending.disable(&d);
                        self.disabled.insert(service.to_string(), d);
                        metrics::counter!("zoftoken_webhook_endpoints_disabled_total").increment(1);
                    }
                }
                let err = attempt
                    .error
                    .unwrap_or_else(|| "endpoint disabled (HTTP 410)".into());
                self.dead(item, attempt.status, err);
            }
            return;
        }
        // Retry later: `Retry-After` on 429/503, else the schedule with jitter.
        let (delay, steps) = retry_delay(
            &self.cfg,
            &mut self.rng,
            &attempt,
            head.step,
            deadline.saturating_duration_since(now),
        );
        head.step += steps;
        metrics::counter!("zoftoken_webhook_retried_total").increment(1);
        self.timer_serial += 1;
        self.timers
            .push(Reverse((now + delay, self.timer_serial, service, token)));
    }

    fn dead(&mut self, item: Item, status: Option<u16>, error: String) {
        let r = DeadLetterRecord {
            event: item.ev.clone(),
            attempts: item.attempts,
            last_status: status,
            last_error: error,
            dead_at_ms: now_ms(),
        };
        self.pending.dead_letter(&r);
        metrics::counter!("zoftoken_webhook_failed_total").increment(1);
        self.resolve(item, true);
    }

    /// The event needs nothing more: delivered, not subscribed, or dead-lettered.
    fn resolve(&mut self, item: Item, dead: bool) {
        self.undelivered.remove(&item.order());
        self.shared.in_memory.fetch_sub(1, Ordering::Relaxed);
        let (seq, index) = (item.ev.seq, item.ev.index);
        if item.replay {
            if !dead {
                self.pending.replay_done(seq, index);
            }
            self.replays_done.push((seq, index));
        } else if let Some((bits, left)) = self.commits.get_mut(&seq) {
            set_bit(bits, index);
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.commits.remove(&seq);
                self.dirty.remove(&seq);
                self.pending.finished(seq);
                self.finished.push(seq);
            } else {
                self.dirty.insert(seq);
            }
        }
        self.note_pending(1);
    }

    fn note_pending(&mut self, n: usize) {
        self.pending_count += n;
        self.pending_since.get_or_insert_with(Instant::now);
    }

    fn flush(&mut self) {
        for seq in std::mem::take(&mut self.dirty) {
            if let Some((bits, _)) = self.commits.get(&seq) {
                self.pending.progress(seq, bits);
            }
        }
        self.pending_since = None;
        self.pending_count = 0;
        self.export_gauges();
        if self.pending.is_empty() && self.replays_done.is_empty() {
            return;
        }
        let m = WriterMsg {
            write: std::mem::take(&mut self.pending),
            finished: std::mem::take(&mut self.finished),
            replays_done: std::mem::take(&mut self.replays_done),
        };
        if let Some(w) = &self.writer {
            let _ = w.send(m);
        }
    }
}

/// `d` spread by ±`percent` % (xorshift; not for secrets).
fn jitter(rng: &mut u64, d: Duration, percent: u8) -> Duration {
    if d.is_zero() || percent == 0 {
        return d;
    }
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let p = f64::from(percent.min(100)) / 100.0;
    let unit = (*rng >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    d.mul_f64(1.0 - p + 2.0 * p * unit)
}
