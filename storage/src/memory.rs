//! An in-memory [`KvStore`] for tests: a sorted map per column family behind one lock.
//! Clones share the same data, so "reopening" is cloning the handle.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::kv::{Cf, Durability, KeyValue, KvError, KvStore, Op, Visitor, WriteBatch};

type Tables = BTreeMap<Cf, BTreeMap<Vec<u8>, Vec<u8>>>;

/// An in-memory store. Every write is "durable" for as long as one handle lives.
#[derive(Clone, Default)]
pub struct MemoryKv {
    tables: Arc<Mutex<Tables>>,
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> MemoryKv {
        MemoryKv::default()
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KvStore for MemoryKv {
    fn write(&self, batch: &WriteBatch, _durability: Durability) -> Result<(), KvError> {
        let mut tables = self.lock();
        for op in batch.ops() {
            match op {
                Op::Put(cf, k, v) => {
                    tables.entry(cf).or_default().insert(k.to_vec(), v.to_vec());
                }
                Op::PutNewer(cf, k, v) => {
                    let t = tables.entry(cf).or_default();
                    let keep = match t.get(k) {
                        Some(old) => crate::schema::newer_state(old, v).to_vec(),
                        None => v.to_vec(),
                    };
                    t.insert(k.to_vec(), keep);
                }
                Op::Delete(cf, k) => {
                    if let Some(t) = tables.get_mut(&cf) {
                        t.remove(k);
                    }
                }
            }
        }
        Ok(())
    }

    fn compare_and_put(
        &self,
        cf: Cf,
        key: &[u8],
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, KvError> {
        let mut tables = self.lock();
        let t = tables.entry(cf).or_default();
        if t.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        t.insert(key.to_vec(), value.to_vec());
        Ok(true)
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.lock().get(&cf).and_then(|t| t.get(key).cloned()))
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        visit: Visitor<'_>,
    ) -> Result<(), KvError> {
        // Copy the range out first, so the visitor may use the store.
        let items: Vec<(Vec<u8>, Vec<u8>)> = {
            let tables = self.lock();
            let Some(t) = tables.get(&cf) else {
                return Ok(());
            };
            let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
            t.range::<[u8], _>((Bound::Included(start), upper))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        for (k, v) in items {
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn last(&self, cf: Cf) -> Result<Option<KeyValue>, KvError> {
        Ok(self
            .lock()
            .get(&cf)
            .and_then(|t| t.iter().next_back().map(|(k, v)| (k.clone(), v.clone()))))
    }

    fn flush(&self) -> Result<(), KvError> {
        Ok(())
    }
}
