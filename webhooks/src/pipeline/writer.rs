//! The writer thread: applies each round of acknowledgements, dead letters and endpoint
//! changes in one store write, then lets the reader load the commits it finished again if it
//! was waiting for room. A failed write leaves everything in the outbox (delivered again after
//! a restart).

use std::sync::atomic::Ordering;

use crossbeam_channel::Receiver;
use zoftoken_storage::{DeliveryWrite, Store};

use crate::pipeline::{lock, Shared};

/// One round of the dispatcher's resolved events, for the writer.
pub(super) struct WriterMsg {
    /// The writes of the round.
    pub write: DeliveryWrite,
    /// Commits it removes from the outbox (they leave `live` once written).
    pub finished: Vec<u64>,
    /// Replays it settles (they leave `live_replays` once written).
    pub replays_done: Vec<(u64, u16)>,
}

/// The writer thread's loop, until the dispatcher is gone.
pub(super) fn writer_loop(shared: &Shared, store: &Store, rx: &Receiver<WriterMsg>) {
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
                    // The reader waits for room: let it read again now.
                    store.outbox_watermark().nudge();
                }
            }
            Err(e) => {
                // The events stay in the outbox (and in `live`): delivered again after a
                // restart. Counted; the error names no secret.
                metrics::counter!("zoftoken_webhook_store_errors_total").increment(1);
                tracing::error!(error = %e, "webhooks: acknowledgement write failed");
            }
        }
    }
}
