//! The `enrollments` record: a pending enrollment, its key material of both pairing forms
//! sealed, and (written by servers of a shared database) the highest PAIR_INIT counter and
//! the pairing candidate PAIR_INIT offered, sealed with them. A record without those (one
//! server, or an older record) reads as none yet.
//!
//! Layout: `format ‖ short_str(service) ‖ expires_ms ‖ sealed(plain)`, the plain text
//! `[link secret (32)] ‖ forms (2 × 80) ‖ [max_init_counter ‖ [candidate secret ‖ offset]]`;
//! the format byte says whether the deeplink's secret leads ([`FORMAT_LINK`]) or not
//! (records written before it was kept).

use std::sync::Arc;

use zeroize::Zeroizing;
use zoftoken_engine::{CandidateRecord, PendingRecord};
use zoftoken_proto::{SecretBytes, TokenId};

use crate::codec::{put_short_str, Reader};
use crate::crypt::MasterKey;
use crate::kv::Cf;
use crate::schema::FORMAT;

/// The format byte of a record whose plain text starts with the deeplink's secret.
const FORMAT_LINK: u8 = 2;

/// `enrollments`.
pub fn encode_pending(key: &MasterKey, p: &PendingRecord) -> Vec<u8> {
    let mut plain = Zeroizing::new(Vec::with_capacity(240));
    if let Some(link) = &p.link_secret {
        plain.extend_from_slice(link.expose());
    }
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
    let mut v = vec![if p.link_secret.is_some() {
        FORMAT_LINK
    } else {
        FORMAT
    }];
    put_short_str(&mut v, &p.service);
    v.extend_from_slice(&p.expires_ms.to_be_bytes());
    v.extend_from_slice(&key.seal(Cf::Enrollments, &p.token_id.0, &plain));
    v
}

/// Decodes `enrollments`.
pub fn decode_pending(key: &MasterKey, id: TokenId, v: &[u8]) -> Option<PendingRecord> {
    let mut r = Reader::new(v);
    let with_link = match r.u8()? {
        FORMAT => false,
        FORMAT_LINK => true,
        _ => return None,
    };
    let service: Arc<str> = Arc::from(r.short_str()?);
    let expires_ms = r.u64()?;
    let plain = key.open(Cf::Enrollments, &id.0, r.rest())?;
    let mut p = Reader::new(&plain);
    let link_secret = if with_link {
        Some(SecretBytes::new(p.array()?))
    } else {
        None
    };
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
        link_secret,
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
            link_secret: None,
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

    #[test]
    fn the_link_secret_is_kept_sealed_and_older_records_read_without_it() {
        let key = MasterKey::from_bytes([9; 32]);
        let id = TokenId([7; 16]);
        let mut kept = record();
        kept.link_secret = Some(SecretBytes::new([0xa5; 32]));
        kept.max_init_counter = 3;
        kept.candidate = Some(CandidateRecord {
            secret: SecretBytes::new([8; 32]),
            offset_ms: 7,
        });
        let v = encode_pending(&key, &kept);
        assert_eq!(v.first(), Some(&FORMAT_LINK));
        assert_eq!(decode_pending(&key, id, &v), Some(kept.clone()));
        assert!(!v.windows(32).any(|w| w == [0xa5; 32]), "sealed");
        // A record in the first layout (no link secret) reads as before.
        let old = encode_pending(&key, &record());
        assert_eq!(old.first(), Some(&FORMAT));
        assert_eq!(decode_pending(&key, id, &old).unwrap().link_secret, None);
        // An unknown format byte is refused.
        let mut other = v;
        other[0] = 9;
        assert_eq!(decode_pending(&key, id, &other), None);
    }
}
