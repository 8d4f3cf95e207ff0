//! How records are laid out in the column families (schema version 1). Every value starts
//! with a format byte; decoders never panic and return `None` for anything malformed, which
//! the store reports as corruption.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `tokens` | token id (16) | service name, username |
//! | `secrets` | token id | service name, sealed `K ‖ PIN verifier ‖ duress flag ‖ duress verifier` (format 1: app tokens); format 2 appends `‖ kind` inside the seal (TOTP tokens) |
//! | `state` | token id | version, then the [`TokenStateRecord`] fields (49 bytes; format 2, 58 bytes, appends the last duress use: time and operation) |
//! | `enrollments` | token id | service name, expiry, sealed key material of both forms |
//! | `backup_codes` | token id | sealed code hashes |
//! | `transactions` | transaction id (16) | token, times, state, sealed `duress flag ‖ message length ‖ message ‖ zero padding to 200 bytes` (format 2; format 1, still read, kept the duress flag and the message in clear) |
//! | `outbox` | commit sequence (u64, big-endian) | the commit's events (format 2: each with its event sequence number; format 1, written before events were numbered, reads as number 0) |
//! | `services` | name | sealed JSON of the service |
//! | `authkeys` | name | JSON of the authkey (secret hash only) |
//! | `webhooks` | tag ‖ … | delivery progress, dead letters, disabled endpoints ([`crate::webhooks`]) |

use std::sync::Arc;

use zeroize::Zeroizing;
use zoftoken_engine::{
    Actor, Event, EventKind, PendingRecord, TokenKind, TokenState, TokenStateRecord, Transaction,
};
use zoftoken_proto::{SecretBytes, TokenId, TxState};

use crate::crypt::MasterKey;
use crate::kv::Cf;

/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
const FORMAT: u8 = 1;
/// The `secrets` format carrying the token's kind (a byte after the duress verifier, inside
/// the seal). App tokens are still written in format 1, byte for byte as before, so a
/// database without TOTP tokens stays readable by earlier versions; a record without the kind
/// (format 1) is an app token.
const SECRETS_FORMAT_KIND: u8 = 2;
/// The outbox format whose events carry their sequence number ([`Event::sequence`]).
const OUTBOX_FORMAT_SEQUENCE: u8 = 2;
const KIND_APP: u8 = 0;
const KIND_TOTP: u8 = 1;
/// The `transactions` format with the duress flag and the message sealed, padded so that the
/// sealed value's length does not tell the message's. Format 1 (both in clear) is still read;
/// every transaction written from now on uses format 2.
const TX_FORMAT_SEALED: u8 = 2;

/// A bounds-checked reader over a value.
pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Reader<'a> {
        Reader(b)
    }
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.array()?))
    }
    pub fn short_str(&mut self) -> Option<&'a str> {
        let n = usize::from(self.u8()?);
        std::str::from_utf8(self.bytes(n)?).ok()
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    pub fn format(&mut self) -> Option<()> {
        (self.u8()? == FORMAT).then_some(())
    }
    pub fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

fn put_short_str(out: &mut Vec<u8>, s: &str) {
    // Service names are at most 255 bytes (validated); longer input is cut, never panics.
    let b = s.as_bytes().get(..255).unwrap_or(s.as_bytes());
    out.push(b.len() as u8);
    out.extend_from_slice(b);
}

fn state_byte(s: TokenState) -> u8 {
    s as u8
}

fn state_from(b: u8) -> Option<TokenState> {
    [
        TokenState::Pending,
        TokenState::Closed,
        TokenState::Open,
        TokenState::Blocked,
    ]
    .into_iter()
    .find(|s| *s as u8 == b)
}

/// `tokens`: the cold record.
pub fn encode_info(service: &str, username: &str) -> Vec<u8> {
    let mut v = vec![FORMAT];
    put_short_str(&mut v, service);
    v.extend_from_slice(username.as_bytes());
    v
}

/// Decodes `tokens`: `(service, username)`.
pub fn decode_info(v: &[u8]) -> Option<(String, String)> {
    let mut r = Reader::new(v);
    r.format()?;
    let service = r.short_str()?.to_owned();
    let username = std::str::from_utf8(r.rest()).ok()?.to_owned();
    Some((service, username))
}

/// The `state` format carrying the token's last duress use (`time_ms (u64) ‖ operation (u8)`
/// after the format-1 fields, 58 bytes). A token that never saw a duress use is still written
/// in format 1, byte for byte as before.
const STATE_FORMAT_DURESS: u8 = 2;

/// `state`: 49 bytes (58 with a duress use); bytes 1..5 are the version (see
/// [`crate::kv::Op::PutNewer`]).
pub fn encode_state(s: &TokenStateRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(58);
    encode_state_into(s, &mut v);
    v
}

/// [`encode_state`], appended to `v`.
pub fn encode_state_into(s: &TokenStateRecord, v: &mut Vec<u8>) {
    v.push(if s.last_duress.is_some() {
        STATE_FORMAT_DURESS
    } else {
        FORMAT
    });
    v.extend_from_slice(&s.version.to_be_bytes());
    v.push(state_byte(s.state));
    v.extend_from_slice(&s.open_until_ms.to_be_bytes());
    v.push(u8::from(s.open_duress));
    v.push(s.failures);
    v.extend_from_slice(&s.highest_counter.to_be_bytes());
    v.extend_from_slice(&s.clock_offset_ms.to_be_bytes());
    v.extend_from_slice(&s.otp_last_step.to_be_bytes());
    v.extend_from_slice(&s.otp_drift.to_be_bytes());
    v.extend_from_slice(&s.last_seen_ms.to_be_bytes());
    if let Some(d) = s.last_duress {
        v.extend_from_slice(&d.time_ms.to_be_bytes());
        v.push(d.operation.byte());
    }
}

/// Decodes `state` for the token `id`.
pub fn decode_state(id: TokenId, v: &[u8]) -> Option<TokenStateRecord> {
    let mut r = Reader::new(v);
    let with_duress = match r.u8()? {
        FORMAT => false,
        STATE_FORMAT_DURESS => true,
        _ => return None,
    };
    let mut rec = TokenStateRecord {
        token_id: id,
        version: u32::from_be_bytes(r.array()?),
        state: state_from(r.u8()?)?,
        open_until_ms: r.u64()?,
        open_duress: r.u8()? != 0,
        failures: r.u8()?,
        highest_counter: r.u64()?,
        clock_offset_ms: i64::from_be_bytes(r.array()?),
        otp_last_step: r.u64()?,
        otp_drift: i8::from_be_bytes(r.array()?),
        last_seen_ms: r.u64()?,
        last_duress: None,
    };
    if with_duress {
        let time_ms = r.u64()?;
        let operation = zoftoken_engine::DuressOp::from_byte(r.u8()?)?;
        rec.last_duress = Some(zoftoken_engine::DuressUse { time_ms, operation });
    }
    r.end()?;
    Some(rec)
}

/// A token's secrets as stored: `(service name, K, PIN verifier, duress verifier, kind)`.
pub struct Secrets {
    /// App or standard authenticator (TOTP).
    pub kind: TokenKind,
    /// The service's name.
    pub service: String,
    /// The token secret.
    pub secret: SecretBytes,
    /// The PIN verifier.
    pub pin_verifier: SecretBytes,
    /// The duress verifier.
    pub duress_verifier: Option<SecretBytes>,
}

/// `secrets`: service name in clear, the rest sealed.
pub fn encode_secrets(key: &MasterKey, id: &TokenId, s: &Secrets) -> Vec<u8> {
    let mut plain = Zeroizing::new(Vec::with_capacity(97));
    plain.extend_from_slice(s.secret.expose());
    plain.extend_from_slice(s.pin_verifier.expose());
    match &s.duress_verifier {
        Some(d) => {
            plain.push(1);
            plain.extend_from_slice(d.expose());
        }
        None => plain.push(0),
    }
    let format = match s.kind {
        TokenKind::App => FORMAT,
        TokenKind::Totp => {
            plain.push(KIND_TOTP);
            SECRETS_FORMAT_KIND
        }
    };
    let mut v = vec![format];
    put_short_str(&mut v, &s.service);
    v.extend_from_slice(&key.seal(Cf::Secrets, &id.0, &plain));
    v
}

/// Decodes `secrets`; `None` if malformed or sealed under another key.
pub fn decode_secrets(key: &MasterKey, id: &TokenId, v: &[u8]) -> Option<Secrets> {
    let mut r = Reader::new(v);
    let format = r.u8()?;
    if format != FORMAT && format != SECRETS_FORMAT_KIND {
        return None;
    }
    let service = r.short_str()?.to_owned();
    let plain = key.open(Cf::Secrets, &id.0, r.rest())?;
    let mut p = Reader::new(&plain);
    let secret = SecretBytes::new(p.array()?);
    let pin_verifier = SecretBytes::new(p.array()?);
    let duress_verifier = match p.u8()? {
        0 => None,
        1 => Some(SecretBytes::new(p.array()?)),
        _ => return None,
    };
    let kind = if format == SECRETS_FORMAT_KIND {
        match p.u8()? {
            KIND_APP => TokenKind::App,
            KIND_TOTP => TokenKind::Totp,
            _ => return None,
        }
    } else {
        TokenKind::App
    };
    p.end()?;
    Some(Secrets {
        kind,
        service,
        secret,
        pin_verifier,
        duress_verifier,
    })
}

/// `enrollments`.
pub fn encode_pending(key: &MasterKey, p: &PendingRecord) -> Vec<u8> {
    let mut plain = Zeroizing::new(Vec::with_capacity(160));
    for (pairing_id, d2s, s2d) in &p.forms {
        plain.extend_from_slice(pairing_id);
        plain.extend_from_slice(d2s.expose());
        plain.extend_from_slice(s2d.expose());
    }
    let mut v = vec![FORMAT];
    put_short_str(&mut v, &p.service);
    v.extend_from_slice(&p.expires_ms.to_be_bytes());
    v.extend_from_slice(&key.seal(Cf::Enrollments, &p.token_id.0, &plain));
    v
}

/// Decodes `enrollments`.
pub fn decode_pending(key: &MasterKey, id: TokenId, v: &[u8]) -> Option<PendingRecord> {
    let mut r = Reader::new(v);
    r.format()?;
    let service: Arc<str> = Arc::from(r.short_str()?);
    let expires_ms = r.u64()?;
    let plain = key.open(Cf::Enrollments, &id.0, r.rest())?;
    let mut p = Reader::new(&plain);
    let mut form = || -> Option<([u8; 16], SecretBytes, SecretBytes)> {
        Some((
            p.array()?,
            SecretBytes::new(p.array()?),
            SecretBytes::new(p.array()?),
        ))
    };
    let forms = [form()?, form()?];
    p.end()?;
    Some(PendingRecord {
        token_id: id,
        service,
        forms,
        expires_ms,
    })
}

/// `backup_codes`: the hashes, sealed.
pub fn encode_backup(key: &MasterKey, id: &TokenId, hashes: &[[u8; 16]]) -> Vec<u8> {
    let plain: Zeroizing<Vec<u8>> = Zeroizing::new(hashes.concat());
    let mut v = vec![FORMAT];
    v.extend_from_slice(&key.seal(Cf::BackupCodes, &id.0, &plain));
    v
}

/// Decodes `backup_codes`.
pub fn decode_backup(key: &MasterKey, id: &TokenId, v: &[u8]) -> Option<Vec<[u8; 16]>> {
    let mut r = Reader::new(v);
    r.format()?;
    let plain = key.open(Cf::BackupCodes, &id.0, r.rest())?;
    if plain.len() % 16 != 0 {
        return None;
    }
    Some(
        plain
            .chunks_exact(16)
            .filter_map(|c| c.try_into().ok())
            .collect(),
    )
}

/// The associated data of a sealed transaction: its id and its token's, so that a sealed
/// message moved to another transaction or token does not open.
fn tx_place(tx_id: &[u8; 16], token: &TokenId) -> [u8; 32] {
    let mut place = [0u8; 32];
    let (a, b) = place.split_at_mut(16);
    a.copy_from_slice(tx_id);
    b.copy_from_slice(&token.0);
    place
}

/// `transactions`: token, times and state in clear; the duress flag and the message sealed
/// (format 2).
pub fn encode_transaction(key: &MasterKey, t: &Transaction) -> Vec<u8> {
    let message = t.message.as_bytes();
    let len = u16::try_from(message.len()).unwrap_or(u16::MAX);
    let message = message.get(..usize::from(len)).unwrap_or(message);
    let padded = message.len().max(zoftoken_proto::wire::TX_MESSAGE_MAX);
    let mut plain = Zeroizing::new(Vec::with_capacity(3 + padded));
    plain.push(u8::from(t.duress));
    plain.extend_from_slice(&len.to_be_bytes());
    plain.extend_from_slice(message);
    plain.resize(3 + padded, 0);
    let mut v = vec![TX_FORMAT_SEALED];
    v.extend_from_slice(&t.token_id.0);
    v.extend_from_slice(&t.created_ms.to_be_bytes());
    v.extend_from_slice(&t.expires_ms.to_be_bytes());
    v.push(t.state as u8);
    v.extend_from_slice(&key.seal(Cf::Transactions, &tx_place(&t.tx_id, &t.token_id), &plain));
    v
}

/// Decodes `transactions` (format 2, or format 1 as earlier versions wrote it); `None` if
/// malformed or sealed under another key or for another place.
pub fn decode_transaction(key: &MasterKey, tx_id: [u8; 16], v: &[u8]) -> Option<Transaction> {
    let mut r = Reader::new(v);
    let format = r.u8()?;
    if format != FORMAT && format != TX_FORMAT_SEALED {
        return None;
    }
    let token_id = TokenId(r.array()?);
    let created_ms = r.u64()?;
    let expires_ms = r.u64()?;
    let state = TxState::from_byte(r.u8()?)?;
    let (duress, message) = if format == FORMAT {
        let duress = r.u8()? != 0;
        (duress, std::str::from_utf8(r.rest()).ok()?.to_owned())
    } else {
        let plain = key.open(Cf::Transactions, &tx_place(&tx_id, &token_id), r.rest())?;
        let mut p = Reader::new(&plain);
        let duress = match p.u8()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let len = usize::from(p.u16()?);
        let message = std::str::from_utf8(p.bytes(len)?).ok()?.to_owned();
        if p.rest().iter().any(|b| *b != 0) {
            return None;
        }
        (duress, message)
    };
    Some(Transaction {
        tx_id,
        token_id,
        created_ms,
        expires_ms,
        state,
        duress,
        message,
    })
}

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
    pub operation: Option<zoftoken_engine::DuressOp>,
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
            Some(zoftoken_engine::DuressOp::from_byte(r.u8()?)?)
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

/// The version of a `state` value (bytes 1..5), if it has one.
pub fn state_version(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(1..5)?.try_into().ok()?))
}

/// Of two `state` values, the one to keep: the newer version (serial-number order); on a tie
/// or an unreadable value, `later`.
pub fn newer_state<'a>(earlier: &'a [u8], later: &'a [u8]) -> &'a [u8] {
    match (state_version(earlier), state_version(later)) {
        (Some(a), Some(b)) if zoftoken_engine::mutation::version_is_newer(a, b) => earlier,
        _ => later,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_damage() {
        let id = TokenId([7; 16]);
        let s = TokenStateRecord {
            token_id: id,
            version: 77,
            state: TokenState::Open,
            open_until_ms: 1_800_000_000_000,
            open_duress: true,
            failures: 2,
            highest_counter: u64::MAX - 1,
            clock_offset_ms: -12_345,
            otp_last_step: 99,
            otp_drift: -3,
            last_seen_ms: 1_700_000_000_000,
            last_duress: None,
        };
        let v = encode_state(&s);
        assert_eq!(v.len(), 49);
        assert_eq!(decode_state(id, &v), Some(s));
        assert_eq!(decode_state(id, &v[..48]), None);
        let mut bad = v.clone();
        bad[5] = 9;
        assert_eq!(decode_state(id, &bad), None);
        let mut long = v;
        long.push(0);
        assert_eq!(decode_state(id, &long), None);
    }

    #[test]
    fn state_keeps_the_last_duress_use_and_old_records_have_none() {
        use zoftoken_engine::{DuressOp, DuressUse};
        let id = TokenId([8; 16]);
        let mut s = TokenStateRecord::new(id);
        s.version = 5;
        // Without a duress use: format 1, as before.
        let plain = encode_state(&s);
        assert_eq!((plain[0], plain.len()), (1, 49));
        assert_eq!(decode_state(id, &plain).unwrap().last_duress, None);
        for op in DuressOp::ALL {
            s.last_duress = Some(DuressUse {
                time_ms: 1_800_000_000_123,
                operation: op,
            });
            let v = encode_state(&s);
            assert_eq!((v[0], v.len()), (2, 58));
            assert_eq!(decode_state(id, &v), Some(s));
            assert_eq!(state_version(&v), Some(5));
            // Cut, lengthened, or with an unknown operation: refused.
            assert_eq!(decode_state(id, &v[..57]), None);
            let mut long = v.clone();
            long.push(0);
            assert_eq!(decode_state(id, &long), None);
            let mut bad = v.clone();
            bad[57] = 0;
            assert_eq!(decode_state(id, &bad), None);
        }
        // A format-1 record with the duress bytes appended is refused too.
        let mut bad = encode_state(&s);
        bad[0] = 1;
        assert_eq!(decode_state(id, &bad), None);
    }

    #[test]
    fn secrets_carry_the_kind_and_old_records_read_as_app_tokens() {
        let key = MasterKey::from_bytes([5; 32]);
        let id = TokenId([9; 16]);
        // A record as schema version 1 wrote it before token kinds existed, built by hand:
        // format 1, service, sealed `K ‖ PIN verifier ‖ 0`.
        let mut plain = Vec::new();
        plain.extend_from_slice(&[1; 32]);
        plain.extend_from_slice(&[2; 32]);
        plain.push(0);
        let mut old = vec![1u8, 4];
        old.extend_from_slice(b"bank");
        old.extend_from_slice(&key.seal(Cf::Secrets, &id.0, &plain));
        let s = decode_secrets(&key, &id, &old).unwrap();
        assert_eq!(s.kind, TokenKind::App);
        assert_eq!(s.service, "bank");
        assert_eq!(s.secret.expose(), &[1; 32]);
        assert_eq!(s.pin_verifier.expose(), &[2; 32]);
        assert!(s.duress_verifier.is_none());
        // App tokens are still written in that format (same length, format byte 1).
        let app = encode_secrets(&key, &id, &s);
        assert_eq!((app[0], app.len()), (1, old.len()));
        // TOTP tokens in format 2, one byte longer, and they read back as TOTP.
        let totp = Secrets {
            kind: TokenKind::Totp,
            service: "bank".into(),
            secret: SecretBytes::new([3; 32]),
            pin_verifier: SecretBytes::new([0; 32]),
            duress_verifier: None,
        };
        let v = encode_secrets(&key, &id, &totp);
        assert_eq!((v[0], v.len()), (2, old.len() + 1));
        let back = decode_secrets(&key, &id, &v).unwrap();
        assert_eq!(back.kind, TokenKind::Totp);
        assert_eq!(back.secret.expose(), &[3; 32]);
        // A format-1 record with a trailing kind byte, an unknown kind, or an unknown format
        // are all refused.
        let mut with_kind = plain.clone();
        with_kind.push(1);
        let mut bad = vec![1u8, 4];
        bad.extend_from_slice(b"bank");
        bad.extend_from_slice(&key.seal(Cf::Secrets, &id.0, &with_kind));
        assert!(decode_secrets(&key, &id, &bad).is_none());
        let mut unknown_kind = plain.clone();
        unknown_kind.push(7);
        let mut bad = vec![2u8, 4];
        bad.extend_from_slice(b"bank");
        bad.extend_from_slice(&key.seal(Cf::Secrets, &id.0, &unknown_kind));
        assert!(decode_secrets(&key, &id, &bad).is_none());
        let mut format3 = v;
        format3[0] = 3;
        assert!(decode_secrets(&key, &id, &format3).is_none());
    }

    #[test]
    fn transactions_are_sealed_and_old_records_still_load() {
        let key = MasterKey::from_bytes([5; 32]);
        let message = "Pay 9 731 EUR to ACME Ltd?";
        let t = Transaction {
            tx_id: [4; 16],
            token_id: TokenId([9; 16]),
            message: message.into(),
            created_ms: 1_800_000_000_000,
            expires_ms: 1_800_000_060_000,
            state: TxState::Approved,
            duress: true,
        };
        let v = encode_transaction(&key, &t);
        assert_eq!(v[0], 2);
        assert_eq!(decode_transaction(&key, t.tx_id, &v), Some(t.clone()));
        // Neither the message nor the duress flag is in clear: the value after the clear
        // fields (format, token, times, state) is a sealed, padded block whose length does
        // not depend on the message.
        assert!(!v.windows(message.len()).any(|w| w == message.as_bytes()));
        let mut plain_duress = t.clone();
        plain_duress.duress = false;
        plain_duress.message = "x".into();
        let other = encode_transaction(&key, &plain_duress);
        assert_eq!(other.len(), v.len());
        assert_eq!(&other[..34], &v[..34], "clear fields are the same");
        assert_eq!(
            v.len(),
            34 + crate::crypt::NONCE_LEN + 3 + 200 + crate::crypt::TAG_LEN
        );
        // Another key, another transaction id, or the record moved to another token: refused.
        assert!(decode_transaction(&MasterKey::from_bytes([6; 32]), t.tx_id, &v).is_none());
        assert!(decode_transaction(&key, [5; 16], &v).is_none());
        let mut moved = v.clone();
        moved[1..17].copy_from_slice(&[8; 16]);
        assert!(decode_transaction(&key, t.tx_id, &moved).is_none());
        // A record as earlier versions wrote it (format 1: duress and message in clear),
        // built by hand, still loads.
        let mut old = vec![1u8];
        old.extend_from_slice(&t.token_id.0);
        old.extend_from_slice(&t.created_ms.to_be_bytes());
        old.extend_from_slice(&t.expires_ms.to_be_bytes());
        old.push(TxState::Approved as u8);
        old.push(1);
        old.extend_from_slice(message.as_bytes());
        assert_eq!(decode_transaction(&key, t.tx_id, &old), Some(t.clone()));
        // An unknown format is refused.
        let mut format3 = v;
        format3[0] = 3;
        assert!(decode_transaction(&key, t.tx_id, &format3).is_none());
    }

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
