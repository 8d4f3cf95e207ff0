//! The follower thread of a server on a shared database: reads the change feed every
//! `storage.postgres.follow_interval_ms` and brings the engine's memory up to what other
//! servers and the command line committed ([`Store::follow`]); reloads services and authkeys
//! from the database when they changed; prunes the feed's old commits once a minute. A
//! server that fell behind what the feed keeps asks to stop ([`Following::fell_behind`]):
//! its supervisor starts it again, and a start loads everything.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use zoftoken_engine::Engine;
use zoftoken_storage::{FollowError, Follower, Store};

use crate::now_ms;

/// How often any server prunes the feed.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How long the thread waits after a read that could not reach the database.
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(100);

/// What the follower did, for the metrics.
#[derive(Debug, Default)]
pub struct FollowStats {
    /// Feed reads that succeeded.
    pub reads: AtomicU64,
    /// Tokens read again because another writer changed them.
    pub tokens: AtomicU64,
    /// Transactions read again.
    pub transactions: AtomicU64,
    /// Reloads of services and authkeys.
    pub configuration_reloads: AtomicU64,
    /// Feed reads that failed (the database could not be reached).
    pub failures: AtomicU64,
}

/// The running follower thread.
pub struct Following {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    behind: Arc<AtomicBool>,
    /// Its counters.
    pub stats: Arc<FollowStats>,
}

/// Reloads services and authkeys from the database into the engine; `Err` with a message
/// when they cannot be used (the running ones are kept).
pub type ReloadConfiguration = Box<dyn Fn(&Store, &Engine) -> Result<(), String> + Send>;

impl Following {
    /// Starts the thread. `server_stop` is set when the server must stop (it fell behind).
    pub fn start(
        mut follower: Follower,
        store: Arc<Store>,
        engine: Arc<Engine>,
        interval: Duration,
        retention: Duration,
        reload: ReloadConfiguration,
        server_stop: Arc<AtomicBool>,
    ) -> std::io::Result<Following> {
        let stop = Arc::new(AtomicBool::new(false));
        let behind = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(FollowStats::default());
        let (t_stop, t_behind, t_stats) = (stop.clone(), behind.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("follower".into())
            .spawn(move || {
                let mut failing = false;
                let mut last_prune = Instant::now();
                while !t_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(if failing { RETRY_AFTER_ERROR } else { interval });
                    let mut reload_configuration = || {
                        t_stats
                            .configuration_reloads
                            .fetch_add(1, Ordering::Relaxed);
                        match reload(&store, &engine) {
                            Ok(()) => tracing::info!(
                                "services and authkeys reloaded: changed in the database"
                            ),
                            Err(e) => tracing::error!(
                                "services or authkeys changed in the database cannot be used, \
                                 keeping the running ones: {e}"
                            ),
                        }
                    };
                    match store.follow(&engine, now_ms(), &mut follower, &mut reload_configuration)
                    {
                        Ok(done) => {
                            if std::mem::take(&mut failing) {
                                tracing::info!("reading the database's change feed again");
                            }
                            t_stats.reads.fetch_add(1, Ordering::Relaxed);
                            if done.outbox {
                                // Another server wrote events: the webhook reader (if this
                                // server delivers) looks at once.
                                store.outbox_watermark().nudge();
                            }
                            t_stats
                                .tokens
                                .fetch_add(done.tokens as u64, Ordering::Relaxed);
                            t_stats
                                .transactions
                                .fetch_add(done.transactions as u64, Ordering::Relaxed);
                        }
                        Err(FollowError::Behind(e)) => {
                            tracing::error!(
                                "{e}: stopping (exit code 7); a start loads everything again"
                            );
                            t_behind.store(true, Ordering::Relaxed);
                            server_stop.store(true, Ordering::Relaxed);
                            return;
                        }
                        Err(e) => {
                            t_stats.failures.fetch_add(1, Ordering::Relaxed);
                            if !std::mem::replace(&mut failing, true) {
                                tracing::warn!(
                                    "cannot read the database's change feed: {e}; retrying"
                                );
                            }
                        }
                    }
                    if last_prune.elapsed() >= PRUNE_EVERY {
                        last_prune = Instant::now();
                        if let Err(e) = store.kv().feed_prune(retention) {
                            tracing::debug!("pruning the change feed failed: {e}");
                        }
                    }
                }
            })?;
        Ok(Following {
            thread: Some(thread),
            stop,
            behind,
            stats,
        })
    }

    /// Whether the server fell behind the feed (exit code 7).
    pub fn fell_behind(&self) -> bool {
        self.behind.load(Ordering::Relaxed)
    }

    /// Stops the thread.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
