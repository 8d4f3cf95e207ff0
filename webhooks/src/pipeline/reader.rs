//! The outbox reader: scans the outbox forward from its position (woken by the store's outbox
//! watermark, polling as the fallback; the outbox is the truth), looks up commits that became
//! visible late below it, re-lists the whole outbox now and then, picks up replayed dead
//! letters, fills in usernames, and hands everything to the dispatcher while there is room in
//! memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use zoftoken_engine::EventKind;
use zoftoken_storage::{
    Cf, DeadLetterRecord, FeedCursor, FeedError, PendingCommit, Store, StoreError,
};

use crate::pipeline::backlog::Backlog;
use crate::pipeline::{lock, Loaded, Msg, Shared};
use crate::{PipelineConfig, WebhookError};

/// The outbox reader.
pub(super) struct Reader {
    cfg: PipelineConfig,
    shared: Arc<Shared>,
    store: Arc<Store>,
    tx: mpsc::UnboundedSender<Msg>,
    cursor: u64,
    start_high: u64,
    gaps: BTreeMap<u64, Instant>,
    last_gap_check: Instant,
    last_rescan: Instant,
    /// On a database several servers write: where this reader stands in its change feed,
    /// the only way new commits are found there (each server numbers its commits from
    /// blocks of its own, so the outbox's key order is not the order commits are made in).
    feed: Option<FeedCursor>,
    /// Outbox commits the feed reported while there was no room for them.
    waiting: std::collections::VecDeque<u64>,
    /// On a database several servers write: the part of the outbox as it was at the start
    /// still to read (`None`: not begun, or read).
    backlog: Option<Backlog>,
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
    pub(super) fn new(
        cfg: PipelineConfig,
        shared: Arc<Shared>,
        store: Arc<Store>,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> Reader {
        // Where the feed stands before the outbox is read: nothing committed after is missed.
        let feed = if store.kv().is_shared() {
            match store.kv().feed_start() {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("webhooks: the change feed cannot be read ({e}); polling");
                    None
                }
            }
        } else {
            None
        };
        let start_high = store.last_outbox_seq().ok().flatten().unwrap_or(0);
        let cursor = store.outbox_start().unwrap_or(0);
        Reader {
            feed,
            waiting: std::collections::VecDeque::new(),
            backlog: None,
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

    /// Reads until the pipeline stops: after each read, waits for the outbox watermark to
    /// move (a write with events, or a nudge: room again, or the stop), at most the poll
    /// interval.
    pub(super) fn run(&mut self) {
        let store = self.store.clone();
        let watermark = store.outbox_watermark();
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
            // Taken before the read: a write that lands during it ends the wait at once.
            let seen = watermark.mark();
            if let Err(e) = self.read_once() {
                metrics::counter!("zoftoken_webhook_store_errors_total").increment(1);
                tracing::error!(error = %e, "webhooks: reading the outbox failed");
            }
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            watermark.wait_after(seen, self.wait());
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
        if self.feed.is_some() {
            self.read_shared()?;
            return self.read_replays();
        }
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
        self.read_replays()
    }

    /// Replayed dead letters.
    fn read_replays(&mut self) -> Result<(), WebhookError> {
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

    /// A read on a database several servers write: what was in the outbox when this reader
    /// started (in key order, as room allows), then the commits the change feed reports, in
    /// the order they became visible, so that a token's events written by two servers are
    /// loaded in the order they were made. A feed that pruned what this reader had not read
    /// sends it back to reading the whole outbox.
    fn read_shared(&mut self) -> Result<(), WebhookError> {
        // The outbox as it was at the start (or after a pruned feed), its servers' blocks
        // merged in the order the events were made; commits made since are the feed's,
        // loaded in its order once the backlog is.
        let room = self.room();
        if self.cursor <= self.start_high && room > 0 {
            let backlog = match &mut self.backlog {
                Some(b) => b,
                None => {
                    let blocks = self.store.outbox_blocks(self.cursor, self.start_high)?;
                    self.backlog
                        .insert(Backlog::new(self.cursor, self.start_high, &blocks))
                }
            };
            let shared = self.shared.clone();
            let commits =
                backlog.read(&self.store, room, &mut |s| lock(&shared.live).contains(&s))?;
            if backlog.is_done() {
                self.backlog = None;
                self.cursor = self.start_high.saturating_add(1);
            }
            self.send(commits);
        }
        if let Some(cursor) = &self.feed {
            match self.store.kv().feed_read(cursor, u64::MAX) {
                Ok(read) => {
                    self.feed = Some(read.cursor);
                    for (cf, key) in read.keys {
                        if cf == Cf::Outbox {
                            if let Ok(seq) = <[u8; 8]>::try_from(key.as_slice()) {
                                self.waiting.push_back(u64::from_be_bytes(seq));
                            }
                        }
                    }
                }
                Err(FeedError::Kv(e)) => return Err(StoreError::Kv(e).into()),
                Err(e) => {
                    tracing::warn!("webhooks: {e}; reading the whole outbox again");
                    self.feed = self.store.kv().feed_start().map_err(StoreError::Kv)?;
                    self.waiting.clear();
                    self.backlog = None;
                    self.cursor = self.store.outbox_start()?;
                    self.start_high = self.store.last_outbox_seq()?.unwrap_or(0);
                }
            }
        }
        let mut found = Vec::new();
        let mut room = self.room();
        while room > 0 {
            let Some(seq) = self.waiting.pop_front() else {
                break;
            };
            if self.is_live(seq) {
                continue;
            }
            // Gone already: delivered (a commit the feed reports again, or the outbox read).
            if let Some(c) = self.store.pending_commit(seq)? {
                room = room.saturating_sub(c.events.len().max(1));
                found.push(c);
            }
        }
        self.send(found);
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
