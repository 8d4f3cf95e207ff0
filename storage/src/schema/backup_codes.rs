//! The `backup_codes` record: a token's backup-code hashes, sealed.

use zeroize::Zeroizing;
use zoftoken_proto::TokenId;

use crate::codec::Reader;
use crate::crypt::MasterKey;
use crate::kv::Cf;
use crate::schema::FORMAT;

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
    r.tag(FORMAT)?;
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
