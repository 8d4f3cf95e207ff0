//! The `transactions` record: token, times and state in clear; the duress flag and the
//! message sealed and padded (format 2; format 1, with both in clear, is still read).

use zeroize::Zeroizing;
use zoftoken_engine::Transaction;
use zoftoken_proto::{TokenId, TxState};

use crate::codec::Reader;
use crate::crypt::MasterKey;
use crate::kv::Cf;
use crate::schema::FORMAT;

/// The `transactions` format with the duress flag and the message sealed, padded so that the
/// sealed value's length does not tell the message's. Format 1 (both in clear) is still read;
/// every transaction written from now on uses format 2.
const TX_FORMAT_SEALED: u8 = 2;

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

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
}
