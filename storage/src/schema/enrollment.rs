//! The `enrollments` record: a pending enrollment, its key material of both pairing forms
//! sealed, and (written by servers of a shared database) the highest PAIR_INIT counter and
//! the pairing candidate PAIR_INIT offered, sealed with them. A record without those (one
//! server, or an older record) reads as none yet.

use std::sync::Arc;

use zeroize::Zeroizing;
use zoftoken_engine::{CandidateRecord, PendingRecord};
use zoftoken_proto::{SecretBytes, TokenId};

use crate::codec::{put_short_str, Reader};
use crate::crypt::MasterKey;
use crate::kv::Cf;
use crate::schema::FORMAT;

/// `enrollments`.
pub fn encode_pending(key: &MasterKey, p: &PendingRecord) -> Vec<u8> {
    let mut plain = Zeroizing::new(Vec::with_capacity(160));
    for (pairing_id, d2s, s2d) in &p.forms {
        plain.extend_from_slice(pairing_id);
        plain.extend_from_slice(d2s.expose());
        plain.extend_from_slice(s2d.expose());
    }
    if p.max_init_counter > 0 || p.candidate.is_some() {
        plain.extend_from_slice(&p.max_init_counter.to_be_bytes());
        if let Some(c) = &p.candidate {
            plain.extend_from_slice(c.secret.expose());
            plain.extend_from_slice(&c.offset_ms.to_be_bytes());
        }
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
    r.tag(FORMAT)?;
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
    let mut max_init_counter = 0;
    let mut candidate = None;
    if p.end().is_none() {
        max_init_counter = p.u64()?;
        if p.end().is_none() {
            candidate = Some(CandidateRecord {
                secret: SecretBytes::new(p.array()?),
                offset_ms: i64::from_be_bytes(p.array()?),
            });
        }
    }
    p.end()?;
    Some(PendingRecord {
        token_id: id,
        service,
        forms,
        expires_ms,
        max_init_counter,
        candidate,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record() -> PendingRecord {
        PendingRecord {
            token_id: TokenId([7; 16]),
            service: Arc::from("bank"),
            forms: [
                (
                    [1; 16],
                    SecretBytes::new([2; 32]),
                    SecretBytes::new([3; 32]),
                ),
                (
                    [4; 16],
                    SecretBytes::new([5; 32]),
                    SecretBytes::new([6; 32]),
                ),
            ],
            expires_ms: 99,
            max_init_counter: 0,
            candidate: None,
        }
    }

    #[test]
    fn a_pending_enrollment_round_trips_with_and_without_its_pairing_candidate() {
        let key = MasterKey::from_bytes([9; 32]);
        let id = TokenId([7; 16]);
        let plain = record();
        assert_eq!(
            decode_pending(&key, id, &encode_pending(&key, &plain)),
            Some(plain.clone())
        );
        let mut offered = plain;
        offered.max_init_counter = 12;
        offered.candidate = Some(CandidateRecord {
            secret: SecretBytes::new([8; 32]),
            offset_ms: -1500,
        });
        let v = encode_pending(&key, &offered);
        assert_eq!(decode_pending(&key, id, &v), Some(offered.clone()));
        // Sealed: the candidate's secret is not in the record's bytes.
        assert!(!v.windows(32).any(|w| w == [8; 32]));
        // Under another token's id it does not open.
        assert_eq!(decode_pending(&key, TokenId([1; 16]), &v), None);
    }
}
