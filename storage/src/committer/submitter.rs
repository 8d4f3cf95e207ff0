//! [`Submitter`]: one IO thread's handle on the [`Committer`]: it hands batches over (to the
//! writer's queue, or writes them inline) and receives their answers in submission order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;

use zoftoken_engine::{Batch, Engine};

use crate::committer::writer::{commit_group, LIVENESS_CHECK};
#[cfg(doc)]
use crate::committer::Committer;
use crate::committer::{CommitError, CommitterStats, Done, Job};
use crate::kv::Durability;
use crate::Store;

/// One IO thread's handle on the [`Committer`].
pub struct Submitter {
    route: Route,
    in_flight: usize,
}

/// Where a submitter's batches go.
enum Route {
    /// To the writer thread's queue; answers come back on `done_rx`.
    Writer {
        jobs: SyncSender<Job>,
        done_tx: Sender<Done>,
        done_rx: Receiver<Done>,
        alive: Arc<AtomicBool>,
    },
    /// Written by the submitting thread itself; answers wait in `ready`.
    Inline {
        store: Arc<Store>,
        engine: Arc<Engine>,
        durability: Durability,
        stopped: Arc<AtomicBool>,
        stats: Arc<CommitterStats>,
        ready: VecDeque<Done>,
    },
}

impl Submitter {
    /// A submitter that queues for the writer thread (`alive` falls when it ends).
    pub(super) fn to_writer(jobs: SyncSender<Job>, alive: Arc<AtomicBool>) -> Submitter {
        let (done_tx, done_rx) = mpsc::channel();
        Submitter {
            route: Route::Writer {
                jobs,
                done_tx,
                done_rx,
                alive,
            },
            in_flight: 0,
        }
    }

    /// A submitter that writes its batches itself (refused once `stopped`).
    pub(super) fn inline(
        store: Arc<Store>,
        engine: Arc<Engine>,
        durability: Durability,
        stopped: Arc<AtomicBool>,
        stats: Arc<CommitterStats>,
    ) -> Submitter {
        Submitter {
            route: Route::Inline {
                store,
                engine,
                durability,
                stopped,
                stats,
                ready: VecDeque::new(),
            },
            in_flight: 0,
        }
    }

    /// Hands a batch over: queued for the writer (waiting while its queue is full), or
    /// written now when committing inline. On error the batch is handed back, untouched.
    pub fn submit(&mut self, mut batch: Batch) -> Result<(), (Batch, CommitError)> {
        match &mut self.route {
            Route::Writer { jobs, done_tx, .. } => {
                let job = Job {
                    batch,
                    done: done_tx.clone(),
                };
                if let Err(mpsc::SendError(job)) = jobs.send(job) {
                    return Err((job.batch, CommitError::Stopped));
                }
            }
            Route::Inline {
                store,
                engine,
                durability,
                stopped,
                stats,
                ready,
            } => {
                if stopped.load(Ordering::Acquire) {
                    return Err((batch, CommitError::Stopped));
                }
                let result = commit_group(store, engine, &mut [&mut batch], *durability, stats);
                ready.push_back(Done { batch, result });
            }
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Batches submitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The next answer if one is ready (answers come in submission order).
    pub fn try_done(&mut self) -> Option<Done> {
        let done = match &mut self.route {
            Route::Writer { done_rx, .. } => done_rx.try_recv().ok(),
            Route::Inline { ready, .. } => ready.pop_front(),
        }?;
        self.in_flight -= 1;
        Some(done)
    }

    /// Waits for the next answer; `None` when nothing is in flight. If the writer thread is
    /// gone, every batch in flight is answered with [`CommitError::Stopped`].
    pub fn wait_done(&mut self) -> Option<Done> {
        if self.in_flight == 0 {
            return None;
        }
        let done = match &mut self.route {
            Route::Inline { ready, .. } => ready.pop_front().unwrap_or_else(stopped),
            Route::Writer { done_rx, alive, .. } => loop {
                match done_rx.recv_timeout(LIVENESS_CHECK) {
                    Ok(done) => break done,
                    // The writer answers before it ends; what is left was never written.
                    Err(_) if !alive.load(Ordering::Acquire) => {
                        break done_rx.try_recv().unwrap_or_else(|_| stopped())
                    }
                    Err(_) => {}
                }
            },
        };
        self.in_flight -= 1;
        Some(done)
    }
}

/// The answer for a batch the writer never took.
fn stopped() -> Done {
    Done {
        batch: Batch::new(),
        result: Err(CommitError::Stopped),
    }
}
