//! Long polls: the API waits for a token's next change on a oneshot channel that the change
//! wakes (no thread per waiter); abandoned waiters are pruned by the timers.

use zoftoken_proto::TokenId;

use crate::shard::Shard;
use crate::{lock, Engine};

impl Engine {
    /// A future-free handle that resolves at the token's next change (state, open window,
    /// failures, deletion). The API awaits it for long polls; no thread per waiter.
    pub fn watch(&self, id: &TokenId) -> futures_channel::oneshot::Receiver<()> {
        let (tx, rx) = futures_channel::oneshot::channel();
        let mut shard = self.shard(&id.0);
        let list = shard.watchers.entry(id.0).or_default();
        list.retain(|s| !s.is_canceled());
        list.push(tx);
        rx
    }

    /// Long polls currently waiting for a token change (abandoned ones are pruned by `tick`).
    pub fn waiters(&self) -> usize {
        self.shards
            .iter()
            .map(|s| lock(s).watchers.values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// Wakes everyone waiting for a change of the token.
    pub(crate) fn notify(&self, id: &[u8; 16]) {
        Engine::notify_in(&mut self.shard(id), id);
    }

    /// Wakes the token's waiters, with its shard already locked (cheap when nobody waits).
    pub(crate) fn notify_in(shard: &mut Shard, id: &[u8; 16]) {
        if shard.watchers.is_empty() {
            return;
        }
        for w in shard.watchers.remove(id).into_iter().flatten() {
            let _ = w.send(());
        }
    }
}
