//! The `state` record: a token's non-secret state, written by most packets, with the version
//! that makes concurrent writes converge on the newest ([`newer_state`], the rule of
//! [`crate::Op::PutNewer`]).

use zoftoken_engine::{DuressOp, DuressUse, TokenState, TokenStateRecord};
use zoftoken_proto::TokenId;

use crate::codec::Reader;
use crate::schema::FORMAT;

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
        let operation = DuressOp::from_byte(r.u8()?)?;
        rec.last_duress = Some(DuressUse { time_ms, operation });
    }
    r.end()?;
    Some(rec)
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
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
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
}
