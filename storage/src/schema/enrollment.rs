//! The `enrollments` record: a pending enrollment, its key material of both pairing forms
//! sealed.

use std::sync::Arc;

use zeroize::Zeroizing;
use zoftoken_engine::PendingRecord;
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
    p.end()?;
    Some(PendingRecord {
        token_id: id,
        service,
        forms,
        expires_ms,
    })
}
