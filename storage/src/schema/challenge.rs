//! The `offline_challenges` record: a token's outstanding offline challenge, sealed.

use zeroize::Zeroizing;
use zoftoken_engine::ChallengeRecord;
use zoftoken_proto::TokenId;

use crate::codec::Reader;
use crate::crypt::MasterKey;
use crate::kv::Cf;
use crate::schema::FORMAT;

/// The longest code kept (the engine makes codes of at most 32 symbols).
const CODE_MAX: usize = 64;

/// `offline_challenges`: sealed `expiry (u64, big-endian) ‖ code`.
pub fn encode_challenge(key: &MasterKey, c: &ChallengeRecord) -> Vec<u8> {
    let mut plain: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::with_capacity(8 + c.code.len()));
    plain.extend_from_slice(&c.expires_ms.to_be_bytes());
    plain.extend_from_slice(c.code.as_bytes());
    let mut v = vec![FORMAT];
    v.extend_from_slice(&key.seal(Cf::OfflineChallenges, &c.token_id.0, &plain));
    v
}

/// Decodes `offline_challenges`.
pub fn decode_challenge(key: &MasterKey, id: &TokenId, v: &[u8]) -> Option<ChallengeRecord> {
    let mut r = Reader::new(v);
    r.tag(FORMAT)?;
    let plain = key.open(Cf::OfflineChallenges, &id.0, r.rest())?;
    let (expiry, code) = plain.split_first_chunk::<8>()?;
    if code.is_empty() || code.len() > CODE_MAX {
        return None;
    }
    let code = std::str::from_utf8(code).ok()?;
    Some(ChallengeRecord {
        token_id: *id,
        code: code.to_owned(),
        expires_ms: u64::from_be_bytes(*expiry),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_round_trips_sealed_and_only_under_its_token() {
        let key = MasterKey::from_bytes([7; 32]);
        let c = ChallengeRecord {
            token_id: TokenId([1; 16]),
            code: "ABCD2345".into(),
            expires_ms: 1_800_000_000_000,
        };
        let v = encode_challenge(&key, &c);
        assert!(!v.windows(8).any(|w| w == b"ABCD2345"), "sealed");
        assert_eq!(decode_challenge(&key, &c.token_id, &v), Some(c.clone()));
        assert_eq!(decode_challenge(&key, &TokenId([2; 16]), &v), None);
        let mut bad = v.clone();
        if let Some(b) = bad.last_mut() {
            *b ^= 1;
        }
        assert_eq!(decode_challenge(&key, &c.token_id, &bad), None);
    }
}
