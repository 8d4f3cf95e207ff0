//! The `outbox` record: the events of one commit, for the webhooks, each with its service's
//! name (and a deleted token's username), in the order the commit made them.

use zoftoken_engine::{Actor, DuressOp, Event, EventKind};
use zoftoken_proto::TokenId;

use crate::codec::{put_short_str, Reader};
use crate::schema::FORMAT;

/// The outbox format whose events carry their sequence number ([`Event::sequence`]).
const OUTBOX_FORMAT_SEQUENCE: u8 = 2;

/// An event as the outbox keeps it: the engine's event with its service's name and, for a
/// deleted token, the username (which is gone from `tokens` by then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Commit sequence number of the batch that made it.
    pub seq: u64,
    /// Position within that commit.
    pub index: u16,
    /// What happened.
    pub kind: EventKind,
    /// The token.
    pub token_id: TokenId,
    /// The service's name.
    pub service: String,
    /// The username when it could not be looked up later (deleted tokens), else `None`.
    pub username: Option<String>,
    /// When (Unix ms).
    pub time_ms: u64,
    /// Who caused it.
    pub actor: Actor,
    /// End of the open window after the event, if open.
    pub open_until_ms: Option<u64>,
    /// Whether the duress PIN was used.
    pub duress: bool,
    /// The transaction, for transaction events.
    pub tx_id: Option<[u8; 16]>,
    /// For a `duress` event, the operation the duress PIN was used for.
    pub operation: Option<DuressOp>,
    /// The event's sequence number ([`Event::sequence`]): higher for every later change of
    /// the token. 0 for an event written before events were numbered (older than every
    /// numbered one).
    pub sequence: u64,
}

const ACTORS: [Actor; 4] = [Actor::Device, Actor::Admin, Actor::Operator, Actor::Timer];

/// Appends one event to an outbox value (see [`encode_outbox`]).
pub(crate) fn push_event(v: &mut Vec<u8>, e: &Event, service: &str, username: Option<&str>) {
    v.push(e.kind as u8);
    v.extend_from_slice(&e.token_id.0);
    put_short_str(v, service);
    v.extend_from_slice(&e.time_ms.to_be_bytes());
    v.extend_from_slice(&e.sequence.to_be_bytes());
    v.push(ACTORS.iter().position(|a| *a == e.actor).unwrap_or(0) as u8);
    let mut flags = 0u8;
    if e.open_until_ms.is_some() {
        flags |= 1;
    }
    if e.duress {
        flags |= 2;
    }
    if e.tx_id.is_some() {
        flags |= 4;
    }
    if username.is_some() {
        flags |= 8;
    }
    if e.operation.is_some() {
        flags |= 16;
    }
    v.push(flags);
    if let Some(t) = e.open_until_ms {
        v.extend_from_slice(&t.to_be_bytes());
    }
    if let Some(t) = e.tx_id {
        v.extend_from_slice(&t);
    }
    if let Some(u) = username {
        let b = u
            .as_bytes()
            .get(..u16::MAX as usize)
            .unwrap_or(u.as_bytes());
        v.extend_from_slice(&(b.len() as u16).to_be_bytes());
        v.extend_from_slice(b);
    }
    if let Some(op) = e.operation {
        v.push(op.byte());
    }
}

/// Decodes an outbox value (all events of commit `seq`).
pub fn decode_outbox(seq: u64, v: &[u8]) -> Option<Vec<OutboxEvent>> {
    let mut r = Reader::new(v);
    let numbered = match r.u8()? {
        FORMAT => false,
        OUTBOX_FORMAT_SEQUENCE => true,
        _ => return None,
    };
    let n = r.u16()?;
    let mut out = Vec::with_capacity(usize::from(n));
    for index in 0..n {
        let kind = *EventKind::ALL.get(usize::from(r.u8()?))?;
        let token_id = TokenId(r.array()?);
        let service = r.short_str()?.to_owned();
        let time_ms = r.u64()?;
        let sequence = if numbered { r.u64()? } else { 0 };
        let actor = *ACTORS.get(usize::from(r.u8()?))?;
        let flags = r.u8()?;
        let open_until_ms = if flags & 1 != 0 { Some(r.u64()?) } else { None };
        let tx_id = if flags & 4 != 0 {
            Some(r.array()?)
        } else {
            None
        };
        let username = if flags & 8 != 0 {
            let len = usize::from(r.u16()?);
            Some(std::str::from_utf8(r.bytes(len)?).ok()?.to_owned())
        } else {
            None
        };
        let operation = if flags & 16 != 0 {
            Some(DuressOp::from_byte(r.u8()?)?)
        } else {
            None
        };
        out.push(OutboxEvent {
            seq,
            index,
            kind,
            token_id,
            service,
            username,
            time_ms,
            actor,
            open_until_ms,
            duress: flags & 2 != 0,
            tx_id,
            operation,
            sequence,
        });
    }
    r.end()?;
    Some(out)
}

/// Starts an outbox value for `count` events.
pub(crate) fn outbox_header(count: u16) -> Vec<u8> {
    let mut v = vec![OUTBOX_FORMAT_SEQUENCE];
    v.extend_from_slice(&count.to_be_bytes());
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn outbox_round_trips() {
        let e = Event::new(EventKind::Deleted, TokenId([1; 16]), 0, 5, Actor::Admin)
            .with_tx([3; 16])
            .with_duress();
        let mut v = outbox_header(2);
        push_event(&mut v, &e, "svc", Some("alice"));
        push_event(&mut v, &e, "svc", None);
        let d = decode_outbox(9, &v).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].username.as_deref(), Some("alice"));
        assert_eq!(d[1].username, None);
        assert_eq!(d[1].index, 1);
        assert_eq!(d[0].tx_id, Some([3; 16]));
        assert!(d[0].duress);
        assert_eq!(d[0].kind, EventKind::Deleted);
        assert_eq!(d[0].sequence, e.sequence);
        assert!(e.sequence > 0);
        assert_eq!(decode_outbox(9, &v[..v.len() - 1]), None);
    }

    #[test]
    fn outbox_records_written_before_numbering_read_as_number_zero() {
        // Format 1, built by hand: one `opened` event without a sequence number.
        let mut v = vec![1u8, 0, 1, EventKind::Opened as u8];
        v.extend_from_slice(&[4; 16]);
        v.extend_from_slice(&[3, b's', b'v', b'c']);
        v.extend_from_slice(&77u64.to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        let d = decode_outbox(3, &v).unwrap();
        assert_eq!((d[0].sequence, d[0].time_ms), (0, 77));
        assert_eq!(d[0].service, "svc");
        v[0] = 3;
        assert_eq!(decode_outbox(3, &v), None, "unknown format");
    }
}
