//! The generator: one thread per `threads`, each with its own socket, its own share of the
//! tokens (token `i` belongs to thread `i % threads`, so counters need no synchronisation), a
//! window of requests in flight and an optional rate.
//!
//! [`run`] checks the configuration, opens the sockets, starts the threads and reports
//! progress; `config` holds what a run is told, `window` a thread's loop (`requests` builds,
//! `replies` reads), `socket` its IO, `report` the figures and `files` the counters and
//! acknowledgements kept between runs.

mod config;
mod files;
mod replies;
mod report;
mod requests;
mod socket;
mod window;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zoftoken_net::{probe_uring, DriverKind};

pub use config::{IoChoice, LoadConfig, LoadError, Mix, KINDS};
pub use files::{write_acked, Acked};
pub use report::{Progress, Summary};

use files::{read_counters, write_counters};
use report::Counts;
use socket::Sock;
use window::{lock, Shared, Worker};

use crate::histogram::Histogram;
use crate::tokens::DeviceToken;

/// Runs the load described by `config`, calling `progress` about once per second from the
/// calling thread, and returns the summary once every thread has finished (sending for
/// `duration`, then awaiting the last replies for up to `timeout`).
pub fn run(config: &LoadConfig, mut progress: impl FnMut(&Progress)) -> Result<Summary, LoadError> {
    if config.endpoints.is_empty() {
        return Err(LoadError::Config("no endpoint".into()));
    }
    let first = config.first_token;
    let n_tokens = config.tokens.count().saturating_sub(first);
    if n_tokens == 0 {
        return Err(LoadError::Config("no token".into()));
    }
    if config.threads == 0 || config.window == 0 || config.burst == 0 {
        return Err(LoadError::Config(
            "threads, window and burst must be at least 1".into(),
        ));
    }
    if config.rate == Some(0) {
        return Err(LoadError::Config("rate must be at least 1".into()));
    }
    if (config.mix.open > 0 || config.mix.wrong_pin > 0) && config.pin_tree_secret.is_none() {
        return Err(LoadError::Config(
            "OPEN requests need the instance's PIN-tree secret (from the server's master key)"
                .into(),
        ));
    }
    let kind = match config.io {
        IoChoice::Std => None,
        IoChoice::Mmsg => Some(DriverKind::Mmsg),
        IoChoice::Uring => {
            probe_uring().map_err(LoadError::Config)?;
            Some(DriverKind::Uring)
        }
        IoChoice::Auto => Some(match probe_uring() {
            Ok(()) => DriverKind::Uring,
            Err(_) => DriverKind::Mmsg,
        }),
    };
    let floor = config.counter_floor.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64)
    });
    let sequence = config.sequence_seed.unwrap_or_else(clock_sequence_seed);
    let threads = config.threads.min(n_tokens as usize).max(1);
    let saved = match &config.counters_file {
        Some(path) => Some(read_counters(path, n_tokens)?),
        None => None,
    };
    let initial = |t: usize, n: usize| -> Vec<u64> {
        match &saved {
            Some(all) => (t..all.len())
                .step_by(threads)
                .map(|i| all.get(i).copied().unwrap_or(1))
                .collect(),
            None => vec![floor.max(1); n],
        }
    };
    // Sockets are opened up front so that a failure is reported before any load.
    let mut sockets = Vec::with_capacity(threads);
    for _ in 0..threads {
        sockets.push(Sock::open(kind, config.endpoints.first())?);
    }
    // Each thread derives its tokens' keys first; sending starts when all are ready.
    let barrier = std::sync::Barrier::new(threads + 1);
    let shared: Vec<Arc<Shared>> = (0..threads).map(|_| Arc::default()).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = sockets
            .into_iter()
            .enumerate()
            .filter_map(|(t, sock)| {
                let sh = shared.get(t)?.clone();
                let barrier = &barrier;
                Some(scope.spawn(move || {
                    let tokens: Vec<DeviceToken> = (t as u64..n_tokens)
                        .step_by(threads)
                        .map(|i| {
                            config
                                .tokens
                                .device_token(first + i, config.pin_tree_secret.as_ref())
                        })
                        .collect();
                    let counters = initial(t, tokens.len());
                    barrier.wait();
                    let start = Instant::now();
                    Worker::new(config, (t, threads), sequence, tokens, sock, counters, &sh)
                        .run(start)
                }))
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut last = Counts::default();
        let mut last_t = start;
        let mut tick = 1u32;
        while !handles.iter().all(|h| h.is_finished()) {
            let next = start + Duration::from_secs(1) * tick;
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(50)));
                continue;
            }
            tick += 1;
            let mut c = Counts::default();
            let mut h = Histogram::new();
            for s in &shared {
                c.add(&lock(&s.counts));
                let mut i = lock(&s.interval);
                h.merge(&i);
                i.clear();
            }
            let dt = now.duration_since(last_t).as_secs_f64().max(1e-9);
            progress(&Progress {
                elapsed: now.duration_since(start),
                sent: c.sent,
                answered: c.answered,
                echoed: c.echoed,
                lost: c.lost,
                errors: c.errors,
                sent_pps: (c.sent - last.sent) as f64 / dt,
                answered_pps: ((c.answered + c.echoed) - (last.answered + last.echoed)) as f64 / dt,
                p50_us: h.quantile(0.5),
                p99_us: h.quantile(0.99),
            });
            last = c;
            last_t = now;
        }
        let mut total = Counts::default();
        let mut hist = Histogram::new();
        let mut elapsed = Duration::ZERO;
        let mut next = vec![1u64; n_tokens as usize];
        let mut acked = if config.acked_file.is_some() {
            vec![Acked::default(); n_tokens as usize]
        } else {
            Vec::new()
        };
        for (t, h) in handles.into_iter().enumerate() {
            let (c, h, e, counters, acks) = h.join().map_err(|_| LoadError::Thread)?;
            for (j, a) in acks.into_iter().enumerate() {
                if let Some(slot) = acked.get_mut(t + j * threads) {
                    *slot = a;
                }
            }
            total.add(&c);
            hist.merge(&h);
            elapsed = elapsed.max(e);
            for (j, counter) in counters.into_iter().enumerate() {
                if let Some(slot) = next.get_mut(t + j * threads) {
                    *slot = counter;
                }
            }
        }
        if let Some(path) = &config.counters_file {
            write_counters(path, &next)?;
        }
        if let Some(path) = &config.acked_file {
            write_acked(path, &config.tokens, first, &acked)?;
        }
        let secs = elapsed.as_secs_f64().max(1e-9);
        Ok(Summary {
            sent: total.sent,
            answered: total.answered,
            echoed: total.echoed,
            lost: total.lost,
            errors: total.errors,
            refused: total.refused,
            sent_by_type: total.by_type,
            elapsed,
            sent_pps: total.sent as f64 / secs,
            answered_pps: (total.answered + total.echoed) as f64 / secs,
            p50_us: hist.quantile(0.5),
            p99_us: hist.quantile(0.99),
            p999_us: hist.quantile(0.999),
            max_us: hist.max(),
        })
    })
}

/// A sequence seed from the clock (what `LoadConfig::sequence_seed: None` uses): a new one
/// every run.
pub(crate) fn clock_sequence_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
