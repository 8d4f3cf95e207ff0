//! Maintenance: `db export` / `db import` (JSON lines; values are copied byte for byte, so
//! secrets stay sealed under the master key) and `db check` (every record decoded, every
//! secret opened, cross-references checked).
//!
//! A restored copy must never reuse what its source used: the server epoch (SPEC.md §4.3:
//! the nonce of every reply) and the outbox sequence numbers (the `webhook-id`s receivers
//! deduplicate by). The export's header records the source's high-water marks, and the import
//! sets both past everything the source (or the importing database itself) had used, plus a
//! margin for what the source used after the export ([`IMPORT_EPOCH_MARGIN`],
//! [`IMPORT_SEQ_MARGIN`]).

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use zoftoken_proto::TokenId;

use crate::error::StoreError;
use crate::kv::{Cf, Durability, WriteBatch};
use crate::schema::meta;
use crate::schema::{self, SCHEMA_VERSION};
use crate::Store;

/// How many server starts of the source, after its export, an import leaves room for: the
/// imported database's next epoch is this much past the highest the export shows.
pub const IMPORT_EPOCH_MARGIN: u32 = 1 << 24;
/// How many commits of the source, after its export, an import leaves room for: the
/// imported database's next outbox sequence number is this much past the highest the export
/// shows.
pub const IMPORT_SEQ_MARGIN: u64 = 1 << 40;

/// The first line of an export.
#[derive(Debug, Serialize, Deserialize)]
struct ExportHeader {
    zoftoken_export: u32,
    schema_version: u32,
    /// The last server epoch the source handed out (absent in exports of earlier versions).
    #[serde(default)]
    epoch: Option<u32>,
    /// The highest outbox sequence number the source used or skipped (absent in exports of
    /// earlier versions).
    #[serde(default)]
    outbox_seq: Option<u64>,
}

fn meta_u32(v: &[u8]) -> Option<u32> {
    v.try_into().ok().map(u32::from_be_bytes)
}

fn meta_u64(v: &[u8]) -> Option<u64> {
    v.try_into().ok().map(u64::from_be_bytes)
}

/// One record of an export.
#[derive(Debug, Serialize, Deserialize)]
struct ExportLine {
    cf: String,
    key: String,
    value: String,
}

/// What an export or import moved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    /// Records.
    pub records: u64,
}

impl Store {
    /// Writes every record as JSON lines: a header (with the source's last epoch and outbox
    /// sequence number), then `{"cf","key","value"}` with hex key and value. Sealed values
    /// stay sealed.
    pub fn export(&self, out: &mut dyn Write) -> Result<Moved, StoreError> {
        let io = |e: std::io::Error| StoreError::Invalid(format!("writing the export: {e}"));
        let header = ExportHeader {
            zoftoken_export: 1,
            schema_version: SCHEMA_VERSION,
            epoch: Some(self.last_epoch()?),
            outbox_seq: Some(self.next_outbox_seq().saturating_sub(1)),
        };
        serde_json::to_writer(&mut *out, &header).map_err(|e| io(e.into()))?;
        out.write_all(b"\n").map_err(io)?;
        let mut moved = Moved::default();
        for cf in Cf::ALL {
            let mut err = None;
            self.kv().scan(cf, &[], None, &mut |k, v| {
                let line = ExportLine {
                    cf: cf.name().into(),
                    key: hex::encode(k),
                    value: hex::encode(v),
                };
                let r = serde_json::to_writer(&mut *out, &line)
                    .map_err(std::io::Error::from)
                    .and_then(|()| out.write_all(b"\n"));
                match r {
                    Ok(()) => {
                        moved.records += 1;
                        true
                    }
                    Err(e) => {
                        err = Some(io(e));
                        false
                    }
                }
            })?;
            if let Some(e) = err {
                return Err(e);
            }
        }
        out.flush().map_err(io)?;
        Ok(moved)
    }

    /// Reads an export into this store, which must hold nothing but its own fresh metadata.
    /// The export's master-key check must open under this store's key (an export taken under
    /// another key is refused: its secrets would be unusable). The epoch and the outbox
    /// sequence are set past the source's and this store's own, plus the margins
    /// ([`IMPORT_EPOCH_MARGIN`], [`IMPORT_SEQ_MARGIN`]), in the first write.
    pub fn import(&self, input: &mut dyn BufRead) -> Result<Moved, StoreError> {
        let bad = |line: usize, what: &str| StoreError::Invalid(format!("line {line}: {what}"));
        for cf in Cf::ALL.into_iter().filter(|c| *c != Cf::Meta) {
            if self.kv().last(cf)?.is_some() {
                return Err(StoreError::Invalid(format!(
                    "the database is not empty (`{cf}` has records); import into a new data directory"
                )));
            }
        }
        let mut lines = input.lines();
        let first = lines
            .next()
            .ok_or_else(|| bad(1, "empty input"))?
            .map_err(|e| bad(1, &e.to_string()))?;
        let header: ExportHeader =
            serde_json::from_str(&first).map_err(|_| bad(1, "not a ZofToken export header"))?;
        if header.zoftoken_export != 1 || header.schema_version != SCHEMA_VERSION {
            return Err(bad(1, "unsupported export or schema version"));
        }
        // Check the key before writing anything.
        let mut records = Vec::new();
        for (i, line) in lines.enumerate() {
            let n = i + 2;
            let line = line.map_err(|e| bad(n, &e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let l: ExportLine =
                serde_json::from_str(&line).map_err(|_| bad(n, "not an export record"))?;
            let cf = Cf::from_name(&l.cf).ok_or_else(|| bad(n, "unknown column family"))?;
            let key = hex::decode(&l.key).map_err(|_| bad(n, "key is not hex"))?;
            let value = hex::decode(&l.value).map_err(|_| bad(n, "value is not hex"))?;
            records.push((cf, key, value));
        }
        let check = records
            .iter()
            .find(|(cf, k, _)| *cf == Cf::Meta && k == meta::KEY_CHECK)
            .ok_or_else(|| StoreError::Invalid("the export has no master-key check".into()))?;
        if self
            .master_key()
            .open(Cf::Meta, &check.1, &check.2)
            .is_none()
        {
            return Err(StoreError::WrongMasterKey);
        }
        // The high-water marks: the header's, the exported records', and this database's
        // own (it may have been started before the import).
        let mut epoch = header.epoch.unwrap_or(0).max(self.last_epoch()?);
        let mut seq = header
            .outbox_seq
            .unwrap_or(0)
            .max(self.next_outbox_seq().saturating_sub(1));
        for (cf, k, v) in &records {
            match cf {
                Cf::Meta if k == meta::EPOCH => {
                    let e = meta_u32(v).ok_or_else(|| {
                        StoreError::Invalid("the export's epoch is malformed".into())
                    })?;
                    epoch = epoch.max(e);
                }
                Cf::Meta if k == meta::OUTBOX_ACKED || k == meta::OUTBOX_NEXT_BLOCK => {
                    let s = meta_u64(v).ok_or_else(|| {
                        StoreError::Invalid("the export's outbox cursor is malformed".into())
                    })?;
                    seq = seq.max(s);
                }
                Cf::Outbox => {
                    let s = meta_u64(k).ok_or_else(|| {
                        StoreError::Invalid("the export has a malformed outbox key".into())
                    })?;
                    seq = seq.max(s);
                }
                _ => {}
            }
        }
        let epoch = epoch
            .checked_add(IMPORT_EPOCH_MARGIN)
            .ok_or(StoreError::EpochsExhausted)?;
        let seq = seq.checked_add(IMPORT_SEQ_MARGIN).ok_or_else(|| {
            StoreError::Invalid("the export's outbox sequence numbers are exhausted".into())
        })?;
        let exported = records.len();
        // The source's delivery lease names one of its servers: not one of this database's.
        records.retain(|(cf, k, _)| {
            !(*cf == Cf::Meta
                && (k == meta::EPOCH
                    || k == meta::OUTBOX_ACKED
                    || k == meta::OUTBOX_NEXT_BLOCK
                    || k == meta::WEBHOOK_LEASE))
        });
        // The source's marks count as imported: the raised ones replace them.
        let mut moved = Moved {
            records: (exported - records.len()) as u64,
        };
        // The raised marks are written first, durably: an import cut short never leaves the
        // source's epoch or sequence behind.
        let mut b = WriteBatch::new();
        b.put(Cf::Meta, meta::EPOCH, epoch.to_be_bytes());
        b.put(Cf::Meta, meta::OUTBOX_ACKED, seq.to_be_bytes());
        self.kv().write(&b, Durability::Fsync)?;
        for chunk in records.chunks(10_000) {
            let mut b = WriteBatch::new();
            for (cf, k, v) in chunk {
                b.put(*cf, k, v);
            }
            self.kv().write(&b, Durability::Wal)?;
            moved.records += chunk.len() as u64;
        }
        self.raise_next_outbox_seq(seq.saturating_add(1));
        self.flush()?;
        Ok(moved)
    }

    /// Reads every record: decodes it, opens every sealed value, and checks that each paired
    /// token has its secrets, state and cold record. Returns the counts and the problems.
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        let mut r = CheckReport::default();
        let key = self.master_key();
        let mut secrets = std::collections::BTreeSet::new();
        let mut states = std::collections::BTreeSet::new();
        let mut infos = std::collections::BTreeSet::new();
        for cf in Cf::ALL {
            self.kv().scan(cf, &[], None, &mut |k, v| {
                *r.records.entry(cf.name()).or_default() += 1;
                let id16: Option<[u8; 16]> = k.try_into().ok();
                let ok = match cf {
                    Cf::Meta => true,
                    Cf::Tokens => {
                        id16.is_some_and(|id| infos.insert(id)) && schema::decode_info(v).is_some()
                    }
                    Cf::Secrets => id16.is_some_and(|id| {
                        secrets.insert(id);
                        schema::decode_secrets(key, &TokenId(id), v).is_some()
                    }),
                    Cf::State => id16.is_some_and(|id| {
                        states.insert(id);
                        schema::decode_state(TokenId(id), v).is_some()
                    }),
                    Cf::Enrollments => {
                        id16.is_some_and(|id| schema::decode_pending(key, TokenId(id), v).is_some())
                    }
                    Cf::BackupCodes => {
                        id16.is_some_and(|id| schema::decode_backup(key, &TokenId(id), v).is_some())
                    }
                    Cf::OfflineChallenges => id16
                        .is_some_and(|id| schema::decode_challenge(key, &TokenId(id), v).is_some()),
                    Cf::Transactions => {
                        id16.is_some_and(|id| schema::decode_transaction(key, id, v).is_some())
                    }
                    Cf::Outbox => <[u8; 8]>::try_from(k)
                        .is_ok_and(|s| schema::decode_outbox(u64::from_be_bytes(s), v).is_some()),
                    Cf::Services => key.open(cf, k, v).is_some(),
                    Cf::Authkeys => {
                        serde_json::from_slice::<crate::config_documents::AuthkeyDoc>(v).is_ok()
                    }
                    Cf::Webhooks => crate::schema::webhooks::check_record(k, v),
                };
                if !ok {
                    r.problems.push(format!(
                        "{cf} {}: undecodable or not authentic",
                        hex::encode(k)
                    ));
                }
                r.problems.len() < 1000
            })?;
        }
        for id in secrets.difference(&states) {
            r.problems
                .push(format!("secrets {}: no state record", hex::encode(id)));
        }
        for id in secrets.difference(&infos) {
            r.problems
                .push(format!("secrets {}: no token record", hex::encode(id)));
        }
        r.orphan_states = states.difference(&secrets).count() as u64;
        Ok(r)
    }
}

/// What `db check` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Records per column family.
    pub records: std::collections::BTreeMap<&'static str, u64>,
    /// State records without secrets (harmless leftovers of a delete racing a commit).
    pub orphan_states: u64,
    /// Everything wrong, one line each (at most about 1000).
    pub problems: Vec<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;
    use crate::{KvStore, MasterKey, MemoryKv};

    fn put_epoch(kv: &dyn KvStore, v: &[u8]) {
        let mut b = WriteBatch::new();
        b.put(Cf::Meta, meta::EPOCH, v);
        kv.write(&b, Durability::Wal).unwrap();
    }

    #[test]
    fn epochs_never_wrap_and_a_damaged_epoch_is_not_read_as_none() {
        let kv: Arc<dyn KvStore> = Arc::new(MemoryKv::new());
        let key = MasterKey::from_bytes([1; 32]);
        let store = Store::open(kv.clone(), key.clone(), Durability::Wal).unwrap();
        put_epoch(&*kv, &(u32::MAX - 1).to_be_bytes());
        assert_eq!(store.next_epoch().unwrap(), u32::MAX);
        assert!(matches!(
            store.next_epoch(),
            Err(StoreError::EpochsExhausted)
        ));
        put_epoch(&*kv, &[0, 0, 7]);
        assert!(matches!(
            store.next_epoch(),
            Err(StoreError::Corrupt { cf: Cf::Meta, .. })
        ));
        // An export too close to the end for the import's margin is refused, not wrapped.
        put_epoch(&*kv, &(u32::MAX - IMPORT_EPOCH_MARGIN + 1).to_be_bytes());
        let mut dump = Vec::new();
        store.export(&mut dump).unwrap();
        let copy = Store::open(Arc::new(MemoryKv::new()), key, Durability::Wal).unwrap();
        assert!(matches!(
            copy.import(&mut dump.as_slice()),
            Err(StoreError::EpochsExhausted)
        ));
    }
}
