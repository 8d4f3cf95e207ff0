//! The outbox as it stood when a reader of a database several servers write started (or
//! started over), read in the order its events were made. Each server numbers its commits
//! from blocks it reserves, so in key order one server's whole block would come before the
//! next one's, and a token's events made by two servers would be loaded out of order once the
//! backlog is larger than the pipeline's memory (the dispatcher orders a token's events, by
//! their sequence numbers, only among those in memory). So each reserved block, which one
//! process numbered in the order it made its commits, is a stream of its own (numbers in no
//! reserved block are one more stream), and the streams are merged by the time their
//! commits' events were made. Event sequence numbers cannot merge them: they are comparable
//! only between events of one token. Times come from each server's clock, so a read also
//! takes every commit made up to [`CLOCK_MARGIN`] after the last one that filled its room: a
//! token's events made by servers whose clocks differ by less than that reach the dispatcher
//! together, which puts them in order.

use std::collections::VecDeque;

use zoftoken_storage::{PendingCommit, Store, StoreError};

/// Events read from one stream at a time.
const PAGE_EVENTS: usize = 1024;

/// How far apart the servers' clocks may be for the backlog to keep each token's order (ms):
/// a read goes on this far past the time of the commit that filled its room.
pub(super) const CLOCK_MARGIN: u64 = 2_000;

/// The backlog still to read, one stream per reserved block.
pub(super) struct Backlog {
    streams: Vec<Stream>,
}

/// One stream: the numbers `next..below`, and what was read of them but not handed out.
struct Stream {
    next: u64,
    below: u64,
    read: VecDeque<PendingCommit>,
    done: bool,
}

impl Backlog {
    /// The backlog of numbers `from..=to`, split by the reserved `blocks` (first number, first
    /// number past it; in order).
    pub(super) fn new(from: u64, to: u64, blocks: &[(u64, u64)]) -> Backlog {
        let end = to.saturating_add(1);
        let mut streams = Vec::new();
        let mut at = from;
        for &(start, past) in blocks {
            let (start, past) = (start.max(at), past.min(end));
            if start >= past {
                continue;
            }
            if start > at {
                streams.push(Stream::new(at, start));
            }
            streams.push(Stream::new(start, past));
            at = past;
        }
        if at < end {
            streams.push(Stream::new(at, end));
        }
        Backlog { streams }
    }

    /// Whether everything was handed out.
    pub(super) fn is_done(&self) -> bool {
        self.streams.iter().all(|s| s.done && s.read.is_empty())
    }

    /// The next commits in merged order: about `room` events (at least one commit if any is
    /// left), then those made up to [`CLOCK_MARGIN`] after the one that filled the room.
    /// Commits for which `skip` answers true (in memory already) are passed over.
    pub(super) fn read(
        &mut self,
        store: &Store,
        room: usize,
        skip: &mut dyn FnMut(u64) -> bool,
    ) -> Result<Vec<PendingCommit>, StoreError> {
        let mut out = Vec::new();
        let mut room = room;
        // Once the room is filled: the time up to which commits are still taken.
        let mut until: Option<u64> = None;
        loop {
            // Every stream's next commit must be known before one is chosen.
            for s in &mut self.streams {
                while s.read.is_empty() && !s.done {
                    s.fill(store, skip)?;
                }
            }
            let next = self
                .streams
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.read.front().map(|c| (made_order(c), i)))
                .min();
            let Some(((time, _), i)) = next else {
                break;
            };
            if until.is_some_and(|u| time > u) {
                break;
            }
            let Some(c) = self.streams.get_mut(i).and_then(|s| s.read.pop_front()) else {
                break;
            };
            room = room.saturating_sub(c.events.len().max(1));
            out.push(c);
            if room == 0 && until.is_none() {
                until = Some(time.saturating_add(CLOCK_MARGIN));
            }
        }
        Ok(out)
    }
}

/// The order commits were made in: the time of the commit's first event (on the clock of the
/// server that made it), then the commit's number.
fn made_order(c: &PendingCommit) -> (u64, u64) {
    let first = c.events.iter().map(|e| e.time_ms).min().unwrap_or(0);
    (first, c.seq)
}

impl Stream {
    fn new(next: u64, below: u64) -> Stream {
        Stream {
            next,
            below,
            read: VecDeque::new(),
            done: next >= below,
        }
    }

    /// Reads the stream's next page.
    fn fill(&mut self, store: &Store, skip: &mut dyn FnMut(u64) -> bool) -> Result<(), StoreError> {
        let (commits, last) =
            store.pending_commits_below(self.next, Some(self.below), PAGE_EVENTS, skip)?;
        match last {
            Some(l) => self.next = l.saturating_add(1),
            None => self.next = self.below,
        }
        self.done = self.next >= self.below;
        self.read.extend(commits);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_cover_the_backlog_once_split_at_the_reserved_blocks() {
        let ranges = |b: &Backlog| -> Vec<(u64, u64)> {
            b.streams.iter().map(|s| (s.next, s.below)).collect()
        };
        // Numbers before the first block (one process), two blocks, the tail of the last.
        let b = Backlog::new(5, 99, &[(10, 20), (20, 40), (60, 200)]);
        assert_eq!(
            ranges(&b),
            [(5, 10), (10, 20), (20, 40), (40, 60), (60, 100)]
        );
        // Blocks reaching past both ends are cut to the backlog.
        let b = Backlog::new(15, 30, &[(10, 20), (20, 40)]);
        assert_eq!(ranges(&b), [(15, 20), (20, 31)]);
        // No block: one stream.
        let b = Backlog::new(0, 9, &[]);
        assert_eq!(ranges(&b), [(0, 10)]);
        assert!(!b.is_done());
    }
}
