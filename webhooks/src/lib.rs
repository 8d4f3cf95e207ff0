//! ZofToken webhooks: delivers every event of the storage outbox to its service's webhook,
//! signed per the Standard Webhooks specification, without losing one and without the
//! packet path ever waiting for it.
//!
//! The [`Pipeline`] runs on its own threads (a reader, a writer and a small tokio runtime):
//! it reads the durable outbox, the only place events are read from (woken by the store's
//! outbox watermark after every write with events, polling as the fallback), delivers each event over HTTP or HTTPS (hyper with rustls on the ring provider,
//! system roots plus an optional CA file per service, kept-alive connections), retries with
//! backoff and jitter for a bounded time (a day by default, as Standard Webhooks recommends;
//! `Retry-After` honoured on 429 and 503 without shortening it), keeps each token's events in
//! order of their sequence numbers while other tokens and
//! services proceed in parallel with bounded concurrency per endpoint, marks an endpoint
//! disabled on 410, and keeps dead letters once the schedule is exhausted. Progress is
//! written per event, many acknowledgements per write, in the storage's `webhooks` column
//! family; an event is acknowledged only after a 2xx, so a crash redelivers (duplicates carry
//! the same `webhook-id`).
//!
//! It does not serve HTTP (the API and the command line call [`dead_letters`],
//! [`replay_dead_letter`], [`replay_all_dead_letters`], [`delete_dead_letter`] and
//! [`disabled_endpoints`]) and does not read configuration files: webhook settings come from
//! the engine's current services ([`zoftoken_engine::Engine::service_configs`]).
//!
//! Modules: `pipeline` (the reader, the dispatcher and the writer, a module each), `http`
//! (the client and one attempt; [`https_client`] is the command line's client of the API
//! too), [`sign`] (the body and signature format), `error`.
//!
//! Key types: [`Pipeline`], [`PipelineConfig`], [`DeadLetter`], [`WebhookError`] (with
//! [`TlsError`] and [`PipelineConfigError`]); [`sign`] holds the body and signature format.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod http;
mod lease;
mod pipeline;
pub mod sign;

use std::time::Duration;

pub(crate) use error::error_text;
pub use error::{PipelineConfigError, TlsError, WebhookError};
pub use http::{client as https_client, HttpClient};
pub use lease::{Gate, LeaseState, LeaseTimes, LeasedPipeline};
pub use pipeline::Pipeline;
use zoftoken_storage::webhooks::{event_id, parse_event_id};
use zoftoken_storage::{DisabledEndpoint, Store};

/// The default of [`PipelineConfig::retry_for`]: a day.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(86_400);

/// How the pipeline delivers.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Deliveries in flight at once per endpoint (service). Default 32.
    pub concurrency_per_endpoint: usize,
    /// Time limit of one attempt (connect, request, response). Default 10 s.
    pub attempt_timeout: Duration,
    /// Delays between attempts: the n-th entry follows the n-th failure, the last one repeats
    /// (the first attempt is immediate). Default: the Standard Webhooks schedule (5 s, 5 min,
    /// 30 min, 2 h, 5 h, 10 h).
    pub retry_delays: Vec<Duration>,
    /// How long an event is retried, from its first attempt: the last retry falls at this
    /// bound (a delay is cut to meet it), and the event is a dead letter when an attempt at
    /// or after it fails. Not a count of attempts: a receiver's `Retry-After` spreads the
    /// attempts out but never ends the schedule sooner. Default 24 h.
    pub retry_for: Duration,
    /// Random spread of each retry delay, in percent (±). Default 20.
    pub jitter_percent: u8,
    /// Longest `Retry-After` honoured (a longer one is cut to this; one below 1 s is raised
    /// to 1 s). Default 1 h.
    pub max_retry_after: Duration,
    /// How often the outbox is read when the outbox watermark is quiet. Default 1 s.
    pub poll_interval: Duration,
    /// How often the whole outbox is re-listed for commits that became visible late below
    /// the read position. Default 30 s.
    pub rescan_interval: Duration,
    /// How long a missing sequence number below a visible one is looked for individually
    /// (a concurrent commit becoming visible late). Default 10 s.
    pub gap_timeout: Duration,
    /// Most events held in memory (queued, in flight or waiting for a retry); reading the
    /// outbox pauses beyond it. Default 200 000.
    pub max_in_memory: usize,
    /// Longest wait before resolved events are acknowledged in the store (one write for all
    /// of them). Default 5 ms.
    pub ack_interval: Duration,
    /// Threads of the delivery runtime. Default 1.
    pub worker_threads: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(n * 60);
        PipelineConfig {
            concurrency_per_endpoint: 32,
            attempt_timeout: Duration::from_secs(10),
            retry_delays: vec![Duration::from_secs(5), m(5), m(30), m(120), m(300), m(600)],
            retry_for: DEFAULT_RETRY_FOR,
            jitter_percent: 20,
            max_retry_after: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(1),
            rescan_interval: Duration::from_secs(30),
            gap_timeout: Duration::from_secs(10),
            max_in_memory: 200_000,
            ack_interval: Duration::from_millis(5),
            worker_threads: 1,
        }
    }
}

/// A dead letter as the API and the command line show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// The event's id (its `webhook-id`); give it to [`replay_dead_letter`].
    pub id: String,
    /// Event type (`opened`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// The service.
    pub service: String,
    /// The username, when known.
    pub username: Option<String>,
    /// Token id (hex).
    pub token_id: String,
    /// Event time (Unix ms).
    pub time_ms: u64,
    /// The event's sequence number (as in its body): a receiver that has seen a higher one
    /// for the token ignores this event when it is replayed.
    pub sequence: u64,
    /// Attempts made.
    pub attempts: u32,
    /// Status of the last response, if any.
    pub last_status: Option<u16>,
    /// Last error.
    pub last_error: String,
    /// When it was given up (Unix ms).
    pub dead_at_ms: u64,
}

/// The dead letters, oldest first, at most `limit`.
pub fn dead_letters(store: &Store, limit: usize) -> Result<Vec<DeadLetter>, WebhookError> {
    Ok(store
        .dead_letters(limit)?
        .into_iter()
        .map(|r| DeadLetter {
            id: event_id(r.event.seq, r.event.index),
            kind: r.event.kind.name().to_owned(),
            service: r.event.service,
            username: r.event.username,
            token_id: hex::encode(r.event.token_id.0),
            time_ms: r.event.time_ms,
            sequence: r.event.sequence,
            attempts: r.attempts,
            last_status: r.last_status,
            last_error: r.last_error,
            dead_at_ms: r.dead_at_ms,
        })
        .collect())
}

/// Queues a dead letter for delivery again (same `webhook-id`; its endpoint is re-enabled if
/// a 410 had disabled it). Returns false for an unknown id. A running pipeline picks it up
/// at its next poll.
pub fn replay_dead_letter(store: &Store, id: &str) -> Result<bool, WebhookError> {
    match parse_event_id(id) {
        Some((seq, index)) => Ok(store.replay_dead_letter(seq, index)?),
        None => Ok(false),
    }
}

/// Queues every dead letter again; returns how many.
pub fn replay_all_dead_letters(store: &Store) -> Result<usize, WebhookError> {
    Ok(store.replay_all_dead_letters()?)
}

/// Deletes a dead letter for good; returns false for an unknown id.
pub fn delete_dead_letter(store: &Store, id: &str) -> Result<bool, WebhookError> {
    match parse_event_id(id) {
        Some((seq, index)) => Ok(store.delete_dead_letter(seq, index)?),
        None => Ok(false),
    }
}

/// The endpoints disabled by a 410 (re-enabled when the service's webhook configuration
/// changes, or by a replay of one of their dead letters).
pub fn disabled_endpoints(store: &Store) -> Result<Vec<DisabledEndpoint>, WebhookError> {
    Ok(store.disabled_endpoints()?)
}
