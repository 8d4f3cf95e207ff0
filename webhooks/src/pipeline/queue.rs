//! The events in memory: an [`Item`] per event with its attempts, and per endpoint the queue
//! of each token (ordered by the events' sequence numbers; only a token's first event is ever
//! in flight or waiting for a retry).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use zoftoken_storage::OutboxEvent;

/// One event in memory.
pub(super) struct Item {
    /// The event.
    pub ev: OutboxEvent,
    /// Whether it is a replayed dead letter.
    pub replay: bool,
    /// Attempts made.
    pub attempts: u32,
    /// When this process first attempted it: retries stop `retry_for` later.
    pub first_attempt: Option<Instant>,
    /// Steps of `retry_delays` used (a honoured `Retry-After` uses none).
    pub step: usize,
}

impl Item {
    /// An event not attempted yet.
    pub fn new(ev: OutboxEvent, replay: bool) -> Item {
        Item {
            ev,
            replay,
            attempts: 0,
            first_attempt: None,
            step: 0,
        }
    }

    /// Age order (the oldest undelivered event).
    pub fn order(&self) -> (u64, u64, u16) {
        (self.ev.time_ms, self.ev.seq, self.ev.index)
    }

    /// Order within its token's queue: the sequence number the engine gave the event under the
    /// token's lock (commits may reach the disk, and the clock may step, in another order).
    pub fn queue_order(&self) -> (u64, u64, u64, u16) {
        (
            self.ev.sequence,
            self.ev.time_ms,
            self.ev.seq,
            self.ev.index,
        )
    }
}

/// A token's events of one endpoint, in delivery order.
#[derive(Default)]
pub(super) struct TokenQueue {
    /// The events.
    pub items: VecDeque<Item>,
    /// The first item is in flight or waiting for its retry.
    pub busy: bool,
}

/// An endpoint (a service's webhook): its token queues and attempts in flight.
#[derive(Default)]
pub(super) struct Endpoint {
    /// Attempts in flight.
    pub in_flight: usize,
    /// Tokens whose first item can be attempted now.
    pub ready: VecDeque<[u8; 16]>,
    /// The queue of each token with events.
    pub tokens: HashMap<[u8; 16], TokenQueue>,
}
