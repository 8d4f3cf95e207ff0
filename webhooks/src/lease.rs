//! Delivery by one server at a time on a database several servers share: the
//! [`LeasedPipeline`] runs the [`Pipeline`] only while this server holds the database's
//! webhook delivery lease ([`zoftoken_storage::LeaseView`]).
//!
//! - A server that does not hold the lease reads it every [`LeaseTimes::check`]; it takes it
//!   when nobody holds it, or when it has seen the same record, unchanged, for a whole
//!   [`LeaseTimes::lease`] on its own clock (the holder stopped renewing: killed, cut off or
//!   paused). Taking it starts a pipeline, which first reads the whole outbox (whatever the
//!   last holder left undelivered) and then follows the change feed.
//! - The holder renews the lease every [`LeaseTimes::check`]. Its [`Gate`] lets attempts
//!   start only until `lease - margin` after the start of its last successful renewal: a
//!   taker waits a whole lease after it saw that renewal, so the two never deliver at once,
//!   whatever each machine's clock says (each measures its own intervals). A holder that
//!   finds the lease taken, or cannot renew it before its gate closes, stops its pipeline
//!   (what it resolved is acknowledged; the new holder delivers the rest).
//! - A stop gives the lease up, so another server takes it at once.
//!
//! What is not excluded: an attempt already sent when its holder paused (`kill -STOP`, a long
//! stall) may reach the receiver after the next holder delivered the same event again; both
//! carry the same `webhook-id` (delivery is at least once).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use zoftoken_engine::Engine;
use zoftoken_storage::{LeaseView, Store};

use crate::pipeline::Pipeline;
use crate::{PipelineConfig, WebhookError};

/// When attempts may start: always (one server holds the database), or until a time set by
/// the lease's last renewal.
#[derive(Debug)]
pub struct Gate {
    origin: Instant,
    /// Milliseconds since `origin` until which attempts may start; `u64::MAX`: always.
    until_ms: AtomicU64,
}

impl Gate {
    /// A gate that is always open (a database no other server delivers from).
    pub fn always() -> Gate {
        Gate {
            origin: Instant::now(),
            until_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// A gate that is closed until [`Gate::open_until`].
    pub fn closed() -> Gate {
        Gate {
            origin: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }

    /// Lets attempts start until `until`.
    pub fn open_until(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.origin).as_millis() as u64;
        self.until_ms.store(ms, Ordering::Release);
    }

    /// Closes the gate now.
    pub fn close(&self) {
        self.until_ms.store(0, Ordering::Release);
    }

    /// Whether an attempt may start now.
    pub fn is_open(&self) -> bool {
        let until = self.until_ms.load(Ordering::Acquire);
        until == u64::MAX || (self.origin.elapsed().as_millis() as u64) < until
    }
}

/// The lease's timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimes {
    /// How long a record must stay unchanged before another server takes the lease. Default
    /// 5 s: the longest a killed holder's events wait for another server.
    pub lease: Duration,
    /// How often the holder renews and the others look. Default 1 s.
    pub check: Duration,
    /// How long before a lease may be taken the holder stops starting attempts. Default 1 s.
    pub margin: Duration,
}

impl Default for LeaseTimes {
    fn default() -> Self {
        LeaseTimes {
            lease: Duration::from_secs(5),
            check: Duration::from_secs(1),
            margin: Duration::from_secs(1),
        }
    }
}

/// Whether this server holds the lease, for the metrics.
#[derive(Debug, Default)]
pub struct LeaseState {
    /// Holds it now.
    pub holding: AtomicBool,
    /// Times it was taken by this server.
    pub taken: AtomicU64,
    /// Times this server lost it (taken by another, or not renewed in time).
    pub lost: AtomicU64,
}

/// A pipeline that runs only while this server holds the delivery lease.
pub struct LeasedPipeline {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Whether it holds the lease.
    pub state: Arc<LeaseState>,
}

impl std::fmt::Debug for LeasedPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedPipeline").finish_non_exhaustive()
    }
}

/// What the lease thread holds between two looks.
enum Holding {
    /// Another server holds the lease (or did when last read): its record, and since when it
    /// has been the same.
    Waiting { seen: Option<(LeaseView, Instant)> },
    /// This server holds it.
    Holding {
        view: LeaseView,
        renewed: Instant,
        gate: Arc<Gate>,
        pipeline: Pipeline,
    },
}

impl LeasedPipeline {
    /// Starts the lease thread of server `holder` (its epoch, not 0).
    pub fn start(
        config: PipelineConfig,
        store: Arc<Store>,
        engine: Arc<Engine>,
        holder: u64,
        times: LeaseTimes,
    ) -> Result<LeasedPipeline, WebhookError> {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(LeaseState::default());
        let (t_stop, t_state) = (stop.clone(), state.clone());
        let thread = std::thread::Builder::new()
            .name("webhook-lease".into())
            .spawn(move || {
                let mut h = Holding::Waiting { seen: None };
                while !t_stop.load(Ordering::Relaxed) {
                    h = step(h, &config, &store, &engine, holder, times, &t_state);
                    // Sleep in small steps: a stop is seen at once.
                    let until = Instant::now() + times.check;
                    while Instant::now() < until && !t_stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(10).min(times.check));
                    }
                }
                if let Holding::Holding { view, pipeline, .. } = h {
                    pipeline.shutdown();
                    t_state.holding.store(false, Ordering::Relaxed);
                    match store.set_webhook_lease(&view, 0) {
                        Ok(Some(_)) => tracing::info!("webhook delivery lease given up"),
                        Ok(None) => {}
                        Err(e) => tracing::warn!("cannot give up the webhook delivery lease: {e}"),
                    }
                }
            })
            .map_err(WebhookError::Start)?;
        Ok(LeasedPipeline {
            thread: Some(thread),
            stop,
            state,
        })
    }

    /// Stops delivering and gives the lease up.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LeasedPipeline {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// One look at the lease: take it, renew it, or let it go.
fn step(
    h: Holding,
    config: &PipelineConfig,
    store: &Arc<Store>,
    engine: &Arc<Engine>,
    holder: u64,
    times: LeaseTimes,
    state: &LeaseState,
) -> Holding {
    match h {
        Holding::Waiting { seen } => {
            let now = Instant::now();
            let current = match store.webhook_lease() {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!("reading the webhook delivery lease failed: {e}");
                    return Holding::Waiting { seen };
                }
            };
            let since = match &seen {
                Some((v, since)) if *v == current => *since,
                _ => now,
            };
            let free = current.holder == 0 || current.holder == holder;
            if !free && since.elapsed() < times.lease {
                return Holding::Waiting {
                    seen: Some((current, since)),
                };
            }
            take(config, store, engine, holder, times, state, &current)
                .unwrap_or(Holding::Waiting { seen: None })
        }
        Holding::Holding {
            view,
            renewed,
            gate,
            pipeline,
        } => {
            let started = Instant::now();
            match store.set_webhook_lease(&view, holder) {
                Ok(Some(view)) => {
                    gate.open_until(started + times.lease.saturating_sub(times.margin));
                    Holding::Holding {
                        view,
                        renewed: started,
                        gate,
                        pipeline,
                    }
                }
                Ok(None) => {
                    tracing::warn!("webhook delivery lease taken by another server: stopping");
                    lose(gate, pipeline, state)
                }
                Err(e) if renewed.elapsed() < times.lease.saturating_sub(times.margin) => {
                    tracing::debug!("renewing the webhook delivery lease failed: {e}");
                    Holding::Holding {
                        view,
                        renewed,
                        gate,
                        pipeline,
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot renew the webhook delivery lease ({e}): stopping deliveries"
                    );
                    lose(gate, pipeline, state)
                }
            }
        }
    }
}

/// Takes the lease from `current` and starts the pipeline; `None` if another server took it
/// first or the pipeline could not start (then the lease is given up again).
fn take(
    config: &PipelineConfig,
    store: &Arc<Store>,
    engine: &Arc<Engine>,
    holder: u64,
    times: LeaseTimes,
    state: &LeaseState,
    current: &LeaseView,
) -> Option<Holding> {
    let started = Instant::now();
    let view = match store.set_webhook_lease(current, holder) {
        Ok(Some(v)) => v,
        Ok(None) => return None,
        Err(e) => {
            tracing::debug!("taking the webhook delivery lease failed: {e}");
            return None;
        }
    };
    let gate = Arc::new(Gate::closed());
    gate.open_until(started + times.lease.saturating_sub(times.margin));
    match Pipeline::start_gated(config.clone(), store.clone(), engine.clone(), gate.clone()) {
        Ok(pipeline) => {
            tracing::info!(
                previous = current.holder,
                "webhook delivery lease taken: this server delivers the webhooks"
            );
            state.holding.store(true, Ordering::Relaxed);
            state.taken.fetch_add(1, Ordering::Relaxed);
            Some(Holding::Holding {
                view,
                renewed: started,
                gate,
                pipeline,
            })
        }
        Err(e) => {
            tracing::error!("cannot start the webhook pipeline: {e}");
            let _ = store.set_webhook_lease(&view, 0);
            None
        }
    }
}

fn lose(gate: Arc<Gate>, pipeline: Pipeline, state: &LeaseState) -> Holding {
    gate.close();
    pipeline.shutdown();
    state.holding.store(false, Ordering::Relaxed);
    state.lost.fetch_add(1, Ordering::Relaxed);
    Holding::Waiting { seen: None }
}
