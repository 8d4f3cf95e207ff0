//! The apps' UDP protocol on the network: one IO thread per core and listen address, each
//! with its own `SO_REUSEPORT` socket and driver (io_uring or `recvmmsg`), processing receive
//! batches through the engine and sending a batch's replies only once its mutations are
//! durable (group commit through the storage `Committer`).
//!
//! A thread's turn: receive a batch (up to 32 datagrams), prefetch the tokens' table lines,
//! handle each datagram (replies written into a send batch), hand the mutations to the
//! committer, send the replies of every batch whose commit finished (the replies of requests
//! that changed nothing go at once). At most [`MAX_IN_FLIGHT`] batches (a database over the
//! network: [`MAX_IN_FLIGHT_NETWORK`]) wait for their commit; then the thread waits
//! (back-pressure when the disk is slow: the socket's receive buffer fills and the kernel
//! drops, counted).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use zoftoken_engine::{Batch, Engine, PacketOutcome, Prefetcher};
use zoftoken_net::{open_drivers, probe_uring, Driver, DriverKind, PacketBatch};
use zoftoken_storage::{Committer, Done, Store, Submitter};

use crate::config::IoSetting;
use crate::now_ms;

/// Datagrams per receive batch.
pub const RECV_BATCH: usize = 32;
/// Receive batches a thread may have waiting for their commit.
pub const MAX_IN_FLIGHT: usize = 8;
/// The same with a database over the network (PostgreSQL): a commit takes a round trip and
/// the database's log flush, during which a thread goes on receiving.
pub const MAX_IN_FLIGHT_NETWORK: usize = 64;
/// With a database over the network, how long a thread with commits in flight waits for
/// datagrams before it looks again for finished commits.
pub const COMMIT_POLL: Duration = Duration::from_micros(50);
/// How long an idle thread waits for datagrams before it looks at the stop flag.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// Which driver `setting` means here; `Err` when `uring` was asked for and is unavailable.
/// For `auto`, the second value says why io_uring is not used, if it is not.
pub fn choose_driver(setting: IoSetting) -> Result<(DriverKind, Option<String>), String> {
    match setting {
        IoSetting::Mmsg => Ok((DriverKind::Mmsg, None)),
        IoSetting::Uring => probe_uring()
            .map(|()| (DriverKind::Uring, None))
            .map_err(|e| format!("io: uring was configured but io_uring is unavailable: {e}")),
        IoSetting::Auto => Ok(match probe_uring() {
            Ok(()) => (DriverKind::Uring, None),
            Err(e) => (DriverKind::Mmsg, Some(e)),
        }),
    }
}

/// Counters of the UDP threads, shared.
#[derive(Debug, Default)]
pub struct UdpStats {
    /// Datagrams handled by the engine.
    pub handled: AtomicU64,
    /// Replies sent (handed to the driver).
    pub replied: AtomicU64,
    /// Replies withheld because their batch could not be written.
    pub withheld: AtomicU64,
    /// Replies of requests that changed nothing, withheld because the database had not
    /// answered within the staleness bound (what memory shows may be outdated).
    pub stale: AtomicU64,
    /// Group commits that failed.
    pub failed_commits: AtomicU64,
}

/// The running IO threads.
pub struct UdpServer {
    threads: Vec<JoinHandle<()>>,
    /// Where each thread listens.
    pub addrs: Vec<SocketAddr>,
    /// The driver's name.
    pub driver: &'static str,
    /// Counters.
    pub stats: Arc<UdpStats>,
}

impl UdpServer {
    /// Binds `threads` sockets on each of `addrs` ([`open_drivers`]) and starts one IO thread
    /// per socket. They run until `stop` is set, then finish their batches in flight and end.
    /// A database reached over the network (PostgreSQL, a shared store) takes a round trip
    /// and its log flush per commit; the threads then keep more batches waiting
    /// ([`MAX_IN_FLIGHT_NETWORK`]) and go on receiving while they wait, looking for
    /// finished commits every [`COMMIT_POLL`]. Replies of requests that changed nothing are
    /// sent only while the store's reads are fresh (`Health::reads_fresh`).
    pub fn start(
        engine: Arc<Engine>,
        committer: &Committer,
        store: Arc<Store>,
        addrs: &[SocketAddr],
        kind: DriverKind,
        threads: usize,
        stop: Arc<AtomicBool>,
    ) -> io::Result<UdpServer> {
        let stats = Arc::new(UdpStats::default());
        let mut drivers = Vec::new();
        let mut bound = Vec::new();
        for addr in addrs {
            let (opened, local) = open_drivers(kind, *addr, threads)?;
            drivers.extend(opened);
            bound.push(local);
        }
        let mut handles = Vec::new();
        let driver_name = drivers.first().map_or("none", |d| d.name());
        for (i, driver) in drivers.into_iter().enumerate() {
            let (engine, stop, stats) = (engine.clone(), stop.clone(), stats.clone());
            let (submitter, store) = (committer.submitter(), store.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("zoftoken-udp-{i}"))
                    .spawn(move || {
                        IoThread::new(driver, engine, submitter, store, stats).run(&stop)
                    })?,
            );
        }
        Ok(UdpServer {
            threads: handles,
            addrs: bound,
            driver: driver_name,
            stats,
        })
    }

    /// Waits for every IO thread to end (after `stop` was set).
    pub fn join(self) {
        for t in self.threads {
            // A panicked IO thread already stopped serving; nothing more to do with it here.
            let _ = t.join();
        }
    }
}

/// One IO thread's state: its driver, its batches, its submitter.
struct IoThread {
    driver: Box<dyn Driver>,
    engine: Arc<Engine>,
    submitter: Submitter,
    /// The store's health says whether replies from memory are fresh enough.
    store: Arc<Store>,
    stats: Arc<UdpStats>,
    /// Batches that may wait for their commit at once.
    max_in_flight: usize,
    /// Whether to look for finished commits between receives instead of blocking for them
    /// (a database over the network).
    poll_commits: bool,
    rx: PacketBatch,
    /// Reply batches waiting for their commit, oldest first (answers come in order).
    waiting: VecDeque<PacketBatch>,
    spare_replies: Vec<PacketBatch>,
    spare_batches: Vec<Batch>,
    /// This thread's copy of the token tables' indexes, for prefetching.
    prefetcher: Prefetcher,
    last_error_log: Option<Instant>,
}

impl IoThread {
    fn new(
        driver: Box<dyn Driver>,
        engine: Arc<Engine>,
        submitter: Submitter,
        store: Arc<Store>,
        stats: Arc<UdpStats>,
    ) -> IoThread {
        let over_the_network = store.kv().is_shared();
        let max_in_flight = if over_the_network {
            MAX_IN_FLIGHT_NETWORK
        } else {
            MAX_IN_FLIGHT
        };
        IoThread {
            driver,
            engine,
            submitter,
            store,
            stats,
            max_in_flight,
            poll_commits: over_the_network,
            rx: PacketBatch::with_capacity(RECV_BATCH),
            waiting: VecDeque::with_capacity(max_in_flight),
            spare_replies: (0..max_in_flight + 2)
                .map(|_| PacketBatch::with_capacity(RECV_BATCH))
                .collect(),
            spare_batches: Vec::new(),
            prefetcher: Prefetcher::default(),
            last_error_log: None,
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            // With commits in flight, wait only briefly (a database over the network: a
            // datagram ends the wait at once, a finished commit is seen within COMMIT_POLL)
            // or not at all (a local commit, waited for below), so that their replies are not
            // held back by an idle wait.
            let wait = match self.submitter.in_flight() {
                0 => IDLE_WAIT,
                n if self.poll_commits && n < self.max_in_flight => COMMIT_POLL,
                _ => Duration::ZERO,
            };
            self.rx.clear();
            if let Err(e) = self.driver.recv(&mut self.rx, wait) {
                self.log_error(&format!("UDP receive: {e}"));
                std::thread::sleep(Duration::from_millis(10));
            }
            if !self.rx.is_empty() {
                self.process();
            }
            while let Some(done) = self.submitter.try_done() {
                self.finish(done);
            }
            let in_flight = self.submitter.in_flight();
            // A database over the network with room for more batches: the receive above
            // was the wait (the requests that change nothing are not blocked behind a
            // commit's round trip). Otherwise block for the oldest commit.
            let polling = self.poll_commits && in_flight < self.max_in_flight;
            if !polling
                && (in_flight >= self.max_in_flight || (self.rx.is_empty() && in_flight > 0))
            {
                if let Some(done) = self.submitter.wait_done() {
                    self.finish(done);
                }
            }
        }
        // Stopping: no new datagrams; the batches in flight are committed and answered.
        while let Some(done) = self.submitter.wait_done() {
            self.finish(done);
        }
    }

    /// Handles the received batch: the replies of requests that changed nothing are sent at
    /// once (they show only what is written: a token with a change not yet written answers
    /// nothing), the others wait for their batch's commit, to which the mutations go.
    fn process(&mut self) {
        let mut replies = self.spare_reply_batch();
        let mut immediate = self.spare_reply_batch();
        let mut batch = self.spare_batches.pop().unwrap_or_default();
        let now = now_ms();
        let engine = &*self.engine;
        engine.prefetch_batch(&mut self.prefetcher, self.rx.iter().map(|(_, d)| d));
        let n = self.rx.len();
        for i in 0..n {
            let Some((peer, datagram)) = self.rx.get_mut(i) else {
                continue;
            };
            let Some(out) = immediate.next_buffer() else {
                continue;
            };
            let before = batch.mutations.len();
            if let PacketOutcome::Reply(len) =
                engine.handle_packet(now, peer, datagram, out, &mut batch)
            {
                if batch.mutations.len() == before {
                    immediate.commit(peer, len);
                } else if let Some(reply) = out.get(..len) {
                    // Rarer (state changes): copied into the batch that waits.
                    replies.push(peer, reply);
                }
            }
        }
        self.stats.handled.fetch_add(n as u64, Ordering::Relaxed);
        if !immediate.is_empty() && !self.store.health().reads_fresh() {
            // The database has not answered for longer than the staleness bound: another
            // writer may have changed what memory shows. No answer rather than a wrong one
            // (the app retries, perhaps at another server).
            self.stats
                .stale
                .fetch_add(immediate.len() as u64, Ordering::Relaxed);
            self.log_error(
                "replies from memory withheld: the database has not answered within the \
                 staleness bound",
            );
            immediate.clear();
        }
        if !immediate.is_empty() {
            if let Err(e) = self.driver.send(&immediate) {
                self.log_error(&format!("UDP send: {e}"));
            }
            self.stats
                .replied
                .fetch_add(immediate.len() as u64, Ordering::Relaxed);
        }
        self.spare_replies.push(immediate);
        if batch.mutations.is_empty() {
            // Nothing to write: nothing waits.
            self.spare_batches.push(batch);
            self.spare_replies.push(replies);
            return;
        }
        match self.submitter.submit(batch) {
            Ok(()) => self.waiting.push_back(replies),
            Err((mut batch, e)) => {
                // The committer is stopped (shutting down): nothing was written, so nothing
                // may be answered.
                self.stats
                    .withheld
                    .fetch_add(replies.len() as u64, Ordering::Relaxed);
                self.log_error(&format!("replies withheld: {e}"));
                batch.mutations.clear();
                self.spare_batches.push(batch);
                self.spare_replies.push(replies);
            }
        }
    }

    /// An empty reply batch.
    fn spare_reply_batch(&mut self) -> PacketBatch {
        let mut b = self
            .spare_replies
            .pop()
            .unwrap_or_else(|| PacketBatch::with_capacity(RECV_BATCH));
        b.clear();
        b
    }

    /// A commit finished: send its batch's replies if it succeeded.
    fn finish(&mut self, done: Done) {
        let Some(replies) = self.waiting.pop_front() else {
            return;
        };
        match &done.result {
            Ok(()) => {
                if let Err(e) = self.driver.send(&replies) {
                    self.log_error(&format!("UDP send: {e}"));
                }
                self.stats
                    .replied
                    .fetch_add(replies.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                // Counted, not logged here: the store logs the failure once, and again when
                // it can write; a stopped committer is worth a line.
                self.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .withheld
                    .fetch_add(replies.len() as u64, Ordering::Relaxed);
                if matches!(e, zoftoken_storage::CommitError::Stopped) {
                    self.log_error(&format!("replies withheld: {e}"));
                }
            }
        }
        self.spare_replies.push(replies);
        self.spare_batches.push(done.batch);
    }

    /// Logs an error at most once per second per thread.
    fn log_error(&mut self, message: &str) {
        let now = Instant::now();
        if self
            .last_error_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_error_log = Some(now);
            tracing::error!("{message}");
        }
    }
}
