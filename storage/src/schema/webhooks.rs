//! The `webhooks` column family: webhook delivery progress next to the outbox it tracks, dead
//! letters, replays and disabled endpoints; and the event ids (`webhook-id`s).
//!
//! The outbox holds one record per commit; its events are delivered independently (a failing
//! event holds back only later events of its token), so "everything up to sequence N is done"
//! cannot describe progress. Instead each commit's progress is a bitmap of its resolved events
//! (delivered, not subscribed, or dead-lettered).
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

use crate::codec::Reader;
use crate::schema::{self, OutboxEvent};

/// The format byte of every `webhooks` value.
pub(crate) const FORMAT: u8 = 1;
/// Key tag of a commit's delivery progress.
const PROGRESS: u8 = b'p';
/// Key tag of a dead letter.
pub(crate) const DEAD: u8 = b'd';
/// Key tag of a dead letter queued again by a replay.
pub(crate) const REPLAY: u8 = b'r';
/// Key tag of a disabled endpoint.
pub(crate) const DISABLED: u8 = b'x';

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

/// The key of event `index` of commit `seq` under `tag` ([`DEAD`] or [`REPLAY`]).
pub(crate) fn event_key(tag: u8, seq: u64, index: u16) -> [u8; 11] {
    let mut k = [0u8; 11];
    k[0] = tag;
    k[1..9].copy_from_slice(&seq.to_be_bytes());
    k[9..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The key of commit `seq`'s delivery progress.
pub(crate) fn progress_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = PROGRESS;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The key of `service`'s disabled endpoint.
pub(crate) fn disabled_key(service: &str) -> Vec<u8> {
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

/// A dead letter's value.
pub(crate) fn encode_dead(r: &DeadLetterRecord) -> Vec<u8> {
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

/// Decodes a dead letter (or replay) from its key and value.
pub(crate) fn decode_dead(key: &[u8], v: &[u8]) -> Option<DeadLetterRecord> {
    let seq = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
    let index = u16::from_be_bytes(key.get(9..11)?.try_into().ok()?);
    let mut r = Reader::new(v);
    r.tag(FORMAT)?;
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

/// A disabled endpoint's value.
pub(crate) fn encode_disabled(d: &DisabledEndpoint) -> Vec<u8> {
    let mut v = vec![FORMAT];
    v.extend_from_slice(&d.at_ms.to_be_bytes());
    v.extend_from_slice(&d.status.to_be_bytes());
    v.extend_from_slice(&d.fingerprint);
    v.extend_from_slice(d.url.as_bytes());
    v
}

/// Decodes a disabled endpoint from its key and value.
pub(crate) fn decode_disabled(key: &[u8], v: &[u8]) -> Option<DisabledEndpoint> {
    let service = std::str::from_utf8(key.get(1..)?).ok()?.to_owned();
    let mut r = Reader::new(v);
    r.tag(FORMAT)?;
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
