//! The records of a paired token's identity: `tokens` (service and username, cold, never
//! loaded into the engine) and `secrets` (the service in clear, the token secret and PIN
//! verifiers sealed, and the token's kind).

use zeroize::Zeroizing;
use zoftoken_engine::TokenKind;
use zoftoken_proto::{SecretBytes, TokenId};

use crate::codec::{put_short_str, Reader};
use crate::crypt::MasterKey;
use crate::kv::Cf;
use crate::schema::FORMAT;

/// The `secrets` format carrying the token's kind (a byte after the duress verifier, inside
/// the seal). App tokens are still written in format 1, byte for byte as before, so a
/// database without TOTP tokens stays readable by earlier versions; a record without the kind
/// (format 1) is an app token.
const SECRETS_FORMAT_KIND: u8 = 2;
const KIND_APP: u8 = 0;
const KIND_TOTP: u8 = 1;

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
    r.tag(FORMAT)?;
    let service = r.short_str()?.to_owned();
    let username = std::str::from_utf8(r.rest()).ok()?.to_owned();
    Some((service, username))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

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
}
