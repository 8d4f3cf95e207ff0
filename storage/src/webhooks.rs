//! Webhook delivery state, next to the outbox it tracks (column family `webhooks`).
//!
//! The outbox holds one record per commit; its events are delivered independently (a failing
//! event holds back only later events of its token), so "everything up to sequence N is done"
//! cannot describe progress. Instead each commit's progress is a bitmap of its resolved events
//! (delivered, not subscribed, or dead-lettered); a commit whose events are all resolved is
//! deleted from the outbox together with its bitmap, in one write with the other progress of a
//! delivery round.
//!
//! | key in `webhooks` | value |
//! |---|---|
//! | `p` ‖ seq (u64 BE) | format, bitmap of the resolved event indexes of outbox commit `seq` |
//! | `d` ‖ seq ‖ index (u16 BE) | a dead letter: format, time, attempts, last status, last error, the event (outbox encoding) |
//! | `r` ‖ seq ‖ index | a dead letter queued again by a replay (same layout) |
//! | `x` ‖ service name | a disabled endpoint (410 Gone): format, time, status, config fingerprint, URL |
//!
//! Databases written before this family existed open unchanged: it starts empty.

use zoftoken_engine::Event;

use crate::kv::{Cf, WriteBatch};
use crate::schema::{self, OutboxEvent, Reader};
use crate::store::{corrupt, try_scan, META_OUTBOX_ACKED};
use crate::{Store, StoreError};

const FORMAT: u8 = 1;
const PROGRESS: u8 = b'p';
const DEAD: u8 = b'd';
const REPLAY: u8 = b'r';
const DISABLED: u8 = b'x';

/// An outbox commit with the events that are still to be resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingCommit {
    /// The commit's sequence number.
    pub seq: u64,
    /// Number of events in the commit.
    pub total: u16,
    /// Bitmap of the resolved event indexes (bit `i % 8` of byte `i / 8`), `ceil(total / 8)`
    /// bytes.
    pub resolved: Vec<u8>,
    /// The events not resolved yet, in index order.
    pub events: Vec<OutboxEvent>,
}

/// Whether bit `index` of a resolved-events bitmap is set.
pub fn bit_is_set(bitmap: &[u8], index: u16) -> bool {
    bitmap
        .get(usize::from(index / 8))
        .is_some_and(|b| b & (1 << (index % 8)) != 0)
}

/// Sets bit `index` of a resolved-events bitmap (growing it if needed).
pub fn set_bit(bitmap: &mut Vec<u8>, index: u16) {
    let at = usize::from(index / 8);
    if bitmap.len() <= at {
        bitmap.resize(at + 1, 0);
    }
    if let Some(b) = bitmap.get_mut(at) {
        *b |= 1 << (index % 8);
    }
}

/// An event whose delivery failed for good (retry schedule exhausted, or endpoint disabled),
/// kept until it is replayed or deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterRecord {
    /// The event (its `seq` and `index` identify it; the username is filled in when known).
    pub event: OutboxEvent,
    /// Delivery attempts made.
    pub attempts: u32,
    /// HTTP status of the last attempt, if one was received.
    pub last_status: Option<u16>,
    /// What went wrong last (never holds a secret).
    pub last_error: String,
    /// When it was given up (Unix ms).
    pub dead_at_ms: u64,
}

/// An endpoint disabled because it answered 410 Gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisabledEndpoint {
    /// The service.
    pub service: String,
    /// The URL that answered.
    pub url: String,
    /// The status that disabled it (410).
    pub status: u16,
    /// When (Unix ms).
    pub at_ms: u64,
    /// Fingerprint of the webhook configuration it was disabled under: a changed
    /// configuration re-enables the endpoint.
    pub fingerprint: [u8; 32],
}

fn event_key(tag: u8, seq: u64, index: u16) -> [u8; 11] {
    let mut k = [0u8; 11];
    k[0] = tag;
    k[1..9].copy_from_slice(&seq.to_be_bytes());
    k[9..].copy_from_slice(&index.to_be_bytes());
    k
}

fn progress_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = PROGRESS;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn disabled_key(service: &str) -> Vec<u8> {
    let mut k = vec![DISABLED];
    k.extend_from_slice(service.as_bytes());
    k
}

/// The textual id of an event (also its `webhook-id`): `msg_` and 20 hex digits of the commit
/// sequence and the index. Stable across retries, restarts and replays.
pub fn event_id(seq: u64, index: u16) -> String {
    format!("msg_{seq:016x}{index:04x}")
}

/// Parses an [`event_id`].
pub fn parse_event_id(id: &str) -> Option<(u64, u16)> {
    let hex = id.strip_prefix("msg_")?;
    if hex.len() != 20 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let seq = u64::from_str_radix(hex.get(..16)?, 16).ok()?;
    let index = u16::from_str_radix(hex.get(16..)?, 16).ok()?;
    Some((seq, index))
}

fn encode_event(v: &mut Vec<u8>, e: &OutboxEvent) {
    let ev = Event {
        kind: e.kind,
        token_id: e.token_id,
        service: 0,
        time_ms: e.time_ms,
        actor: e.actor,
        open_until_ms: e.open_until_ms,
        duress: e.duress,
        tx_id: e.tx_id,
        operation: e.operation,
        sequence: e.sequence,
    };
    v.extend_from_slice(&schema::outbox_header(1));
    schema::push_event(v, &ev, &e.service, e.username.as_deref());
}

fn encode_dead(r: &DeadLetterRecord) -> Vec<u8> {
    let mut v = vec![FORMAT];
    v.extend_from_slice(&r.dead_at_ms.to_be_bytes());
    v.extend_from_slice(&r.attempts.to_be_bytes());
    v.extend_from_slice(&r.last_status.unwrap_or(0).to_be_bytes());
    let err = r.last_error.as_bytes();
    let err = err.get(..1024).unwrap_or(err);
    // A cut in the middle of a character is repaired on decode (lossy).
    v.extend_from_slice(&(err.len() as u16).to_be_bytes());
    v.extend_from_slice(err);
    encode_event(&mut v, &r.event);
    v
}

fn decode_dead(key: &[u8], v: &[u8]) -> Option<DeadLetterRecord> {
    let seq = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
    let index = u16::from_be_bytes(key.get(9..11)?.try_into().ok()?);
    let mut r = Reader::new(v);
    (r.u8()? == FORMAT).then_some(())?;
    let dead_at_ms = r.u64()?;
    let attempts = u32::from_be_bytes(r.array()?);
    let status = r.u16()?;
    let n = usize::from(r.u16()?);
    let last_error = String::from_utf8_lossy(r.bytes(n)?).into_owned();
    let mut events = schema::decode_outbox(seq, r.rest())?;
    let mut event = events.pop()?;
    events.is_empty().then_some(())?;
    event.index = index;
    Some(DeadLetterRecord {
        event,
        attempts,
        last_status: (status != 0).then_some(status),
        last_error,
        dead_at_ms,
    })
}

fn encode_disabled(d: &DisabledEndpoint) -> Vec<u8> {
    let mut v = vec![FORMAT];
    v.extend_from_slice(&d.at_ms.to_be_bytes());
    v.extend_from_slice(&d.status.to_be_bytes());
    v.extend_from_slice(&d.fingerprint);
    v.extend_from_slice(d.url.as_bytes());
    v
}

fn decode_disabled(key: &[u8], v: &[u8]) -> Option<DisabledEndpoint> {
    let service = std::str::from_utf8(key.get(1..)?).ok()?.to_owned();
    let mut r = Reader::new(v);
    (r.u8()? == FORMAT).then_some(())?;
    Some(DisabledEndpoint {
        service,
        at_ms: r.u64()?,
        status: r.u16()?,
        fingerprint: r.array()?,
        url: std::str::from_utf8(r.rest()).ok()?.to_owned(),
    })
}

/// Whether a `webhooks` record is well formed (for `db check`).
pub(crate) fn check_record(k: &[u8], v: &[u8]) -> bool {
    match k.first() {
        Some(&PROGRESS) => k.len() == 9 && v.first() == Some(&FORMAT),
        Some(&DEAD) | Some(&REPLAY) => k.len() == 11 && decode_dead(k, v).is_some(),
        Some(&DISABLED) => decode_disabled(k, v).is_some(),
        _ => false,
    }
}

/// The writes of one delivery round, applied atomically by [`Store::write_deliveries`]: many
/// deliveries are acknowledged in one write.
#[derive(Debug, Default)]
pub struct DeliveryWrite {
    batch: WriteBatch,
    max_finished: u64,
}

impl DeliveryWrite {
    /// An empty round.
    pub fn new() -> DeliveryWrite {
        DeliveryWrite::default()
    }

    /// Records the resolved events of a commit that still has unresolved ones.
    pub fn progress(&mut self, seq: u64, bitmap: &[u8]) {
        let mut v = Vec::with_capacity(bitmap.len() + 1);
        v.push(FORMAT);
        v.extend_from_slice(bitmap);
        self.batch.put(Cf::Webhooks, progress_key(seq), v);
    }

    /// Every event of commit `seq` is resolved: the commit leaves the outbox.
    pub fn finished(&mut self, seq: u64) {
        self.batch.delete(Cf::Outbox, seq.to_be_bytes());
        self.batch.delete(Cf::Webhooks, progress_key(seq));
        self.max_finished = self.max_finished.max(seq);
    }

    /// Keeps an event as a dead letter (replacing a queued replay of it, if any).
    pub fn dead_letter(&mut self, r: &DeadLetterRecord) {
        let (seq, index) = (r.event.seq, r.event.index);
        self.batch
            .put(Cf::Webhooks, event_key(DEAD, seq, index), encode_dead(r));
        self.batch
            .delete(Cf::Webhooks, event_key(REPLAY, seq, index));
    }

    /// A replayed dead letter was delivered.
    pub fn replay_done(&mut self, seq: u64, index: u16) {
        self.batch
            .delete(Cf::Webhooks, event_key(REPLAY, seq, index));
    }

    /// Marks an endpoint disabled (410).
    pub fn disable(&mut self, d: &DisabledEndpoint) {
        self.batch
            .put(Cf::Webhooks, disabled_key(&d.service), encode_disabled(d));
    }

    /// Re-enables an endpoint.
    pub fn enable(&mut self, service: &str) {
        self.batch.delete(Cf::Webhooks, disabled_key(service));
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.batch.len()
    }
}

impl Store {
    fn progress_of(&self, seq: u64) -> Result<Vec<u8>, StoreError> {
        match self.kv().get(Cf::Webhooks, &progress_key(seq))? {
            None => Ok(Vec::new()),
            Some(v) => match v.split_first() {
                Some((&FORMAT, bits)) => Ok(bits.to_vec()),
                _ => Err(corrupt(Cf::Webhooks, &progress_key(seq), "undecodable")),
            },
        }
    }

    fn pending_of(&self, seq: u64, value: &[u8]) -> Result<PendingCommit, StoreError> {
        let events = schema::decode_outbox(seq, value)
            .ok_or_else(|| corrupt(Cf::Outbox, &seq.to_be_bytes(), "undecodable"))?;
        let total = u16::try_from(events.len()).unwrap_or(u16::MAX);
        let mut resolved = self.progress_of(seq)?;
        resolved.resize(usize::from(total).div_ceil(8), 0);
        let events = events
            .into_iter()
            .filter(|e| !bit_is_set(&resolved, e.index))
            .collect();
        Ok(PendingCommit {
            seq,
            total,
            resolved,
            events,
        })
    }

    /// Outbox commits from `from_seq` on, in sequence order, with their unresolved events,
    /// until about `max_events` events are collected (at least one commit). Commits for which
    /// `skip` answers true are passed over without being decoded. Also returns the last
    /// sequence number visited (skipped or not).
    pub fn pending_commits(
        &self,
        from_seq: u64,
        max_events: usize,
        skip: &mut dyn FnMut(u64) -> bool,
    ) -> Result<(Vec<PendingCommit>, Option<u64>), StoreError> {
        let mut raw: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut last = None;
        let mut count = 0usize;
        try_scan(
            &**self.kv(),
            Cf::Outbox,
            &from_seq.to_be_bytes(),
            None,
            &mut |k, v| {
                let seq = k
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| corrupt(Cf::Outbox, k, "key is not a sequence number"))?;
                last = Some(seq);
                if !skip(seq) {
                    // The count is the second and third bytes of the value.
                    count += v
                        .get(1..3)
                        .and_then(|c| <[u8; 2]>::try_from(c).ok())
                        .map_or(1, |c| usize::from(u16::from_be_bytes(c)));
                    raw.push((seq, v.to_vec()));
                }
                Ok(count < max_events)
            },
        )?;
        // Bitmaps are read after the scan: an implementation may hold a lock while scanning.
        let mut out = Vec::with_capacity(raw.len());
        for (seq, v) in raw {
            out.push(self.pending_of(seq, &v)?);
        }
        Ok((out, last))
    }

    /// One outbox commit with its unresolved events, if it is (still) in the outbox.
    pub fn pending_commit(&self, seq: u64) -> Result<Option<PendingCommit>, StoreError> {
        match self.kv().get(Cf::Outbox, &seq.to_be_bytes())? {
            None => Ok(None),
            Some(v) => self.pending_of(seq, &v).map(Some),
        }
    }

    /// The sequence numbers of the outbox commits from `from` to below `below`, in order.
    pub fn outbox_seqs(&self, from: u64, below: u64) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        self.kv().scan(
            Cf::Outbox,
            &from.to_be_bytes(),
            Some(&below.to_be_bytes()),
            &mut |k, _| {
                if let Ok(s) = k.try_into().map(u64::from_be_bytes) {
                    out.push(s);
                }
                true
            },
        )?;
        Ok(out)
    }

    /// Where reading the outbox starts: its lowest sequence number, or past every number
    /// used when it is empty. (Reading from 0 would walk over the deleted records of every
    /// delivered commit that compaction has not dropped yet, at every read.)
    pub fn outbox_start(&self) -> Result<u64, StoreError> {
        let mut first = None;
        self.kv().scan(Cf::Outbox, &[], None, &mut |k, _| {
            first = k.try_into().ok().map(u64::from_be_bytes);
            false
        })?;
        Ok(match first {
            Some(s) => s,
            None => self.next_outbox_seq(),
        })
    }

    /// The highest sequence number in the outbox.
    pub fn last_outbox_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .kv()
            .last(Cf::Outbox)?
            .and_then(|(k, _)| k.as_slice().try_into().ok().map(u64::from_be_bytes)))
    }

    /// Applies a delivery round in one atomic write. Finished commits also raise the outbox
    /// cursor in `meta`, so sequence numbers (and so webhook ids) are never reused.
    pub fn write_deliveries(&self, mut w: DeliveryWrite) -> Result<(), StoreError> {
        if w.is_empty() {
            return Ok(());
        }
        if w.max_finished > 0 {
            let acked = self
                .kv()
                .get(Cf::Meta, META_OUTBOX_ACKED)?
                .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0);
            if w.max_finished > acked {
                w.batch
                    .put(Cf::Meta, META_OUTBOX_ACKED, w.max_finished.to_be_bytes());
            }
        }
        self.kv().write(&w.batch, self.durability())?;
        Ok(())
    }

    fn scan_dead(&self, tag: u8, limit: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        try_scan(
            &**self.kv(),
            Cf::Webhooks,
            &[tag],
            Some(&[tag + 1]),
            &mut |k, v| {
                out.push(decode_dead(k, v).ok_or_else(|| corrupt(Cf::Webhooks, k, "undecodable"))?);
                Ok(out.len() < limit)
            },
        )?;
        Ok(out)
    }

    /// The dead letters, oldest commit first, at most `limit`.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        self.scan_dead(DEAD, limit)
    }

    /// Dead letters queued again by a replay, at most `limit`.
    pub fn replays(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        self.scan_dead(REPLAY, limit)
    }

    /// Queues a dead letter for delivery again (and re-enables its endpoint if it was
    /// disabled). Returns whether it existed.
    pub fn replay_dead_letter(&self, seq: u64, index: u16) -> Result<bool, StoreError> {
        let key = event_key(DEAD, seq, index);
        let Some(v) = self.kv().get(Cf::Webhooks, &key)? else {
            return Ok(false);
        };
        let r = decode_dead(&key, &v).ok_or_else(|| corrupt(Cf::Webhooks, &key, "undecodable"))?;
        let mut b = WriteBatch::new();
        b.delete(Cf::Webhooks, key);
        b.put(Cf::Webhooks, event_key(REPLAY, seq, index), v);
        b.delete(Cf::Webhooks, disabled_key(&r.event.service));
        self.kv().write(&b, self.durability())?;
        Ok(true)
    }

    /// Queues every dead letter again; returns how many.
    pub fn replay_all_dead_letters(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        loop {
            let batch = self.dead_letters(1000)?;
            if batch.is_empty() {
                return Ok(n);
            }
            for r in batch {
                if self.replay_dead_letter(r.event.seq, r.event.index)? {
                    n += 1;
                }
            }
        }
    }

    /// Deletes a dead letter; returns whether it existed.
    pub fn delete_dead_letter(&self, seq: u64, index: u16) -> Result<bool, StoreError> {
        let key = event_key(DEAD, seq, index);
        let existed = self.kv().get(Cf::Webhooks, &key)?.is_some();
        let mut b = WriteBatch::new();
        b.delete(Cf::Webhooks, key);
        self.kv().write(&b, self.durability())?;
        Ok(existed)
    }

    /// The endpoints disabled by a 410.
    pub fn disabled_endpoints(&self) -> Result<Vec<DisabledEndpoint>, StoreError> {
        let mut out = Vec::new();
        try_scan(
            &**self.kv(),
            Cf::Webhooks,
            &[DISABLED],
            Some(&[DISABLED + 1]),
            &mut |k, v| {
                out.push(
                    decode_disabled(k, v).ok_or_else(|| corrupt(Cf::Webhooks, k, "undecodable"))?,
                );
                Ok(true)
            },
        )?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use zoftoken_engine::{Actor, EventKind};
    use zoftoken_proto::TokenId;

    #[test]
    fn ids_round_trip() {
        assert_eq!(event_id(0x1234, 7), "msg_00000000000012340007");
        assert_eq!(
            parse_event_id(&event_id(u64::MAX, 65535)),
            Some((u64::MAX, 65535))
        );
        assert_eq!(parse_event_id("msg_0000000000001234000"), None);
        assert_eq!(parse_event_id("msg_0000000000001234000g"), None);
        assert_eq!(parse_event_id("xyz_00000000000012340007"), None);
    }

    #[test]
    fn dead_letters_round_trip() {
        let r = DeadLetterRecord {
            event: OutboxEvent {
                seq: 9,
                index: 3,
                kind: EventKind::TxDenied,
                token_id: TokenId([4; 16]),
                service: "bank".into(),
                username: Some("ana".into()),
                time_ms: 77,
                actor: Actor::Device,
                open_until_ms: Some(99),
                duress: true,
                tx_id: Some([5; 16]),
                operation: Some(zoftoken_engine::DuressOp::TxApprove),
                sequence: 1 << 40,
            },
            attempts: 8,
            last_status: Some(503),
            last_error: "HTTP 503".into(),
            dead_at_ms: 1000,
        };
        let k = event_key(DEAD, 9, 3);
        assert_eq!(decode_dead(&k, &encode_dead(&r)), Some(r.clone()));
        assert!(check_record(&k, &encode_dead(&r)));
        assert!(decode_dead(&k, &encode_dead(&r)[..20]).is_none());
        let mut bits = Vec::new();
        set_bit(&mut bits, 9);
        assert!(bit_is_set(&bits, 9) && !bit_is_set(&bits, 8) && !bit_is_set(&bits, 100));
    }
}
