//! The fixed 32-byte header (SPEC.md §2) and the cheap checks of SPEC.md §9.1, done on it
//! before any table lookup or cryptography.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{Be16, Be32, Be64, MsgType, MAX_DATAGRAM, REPLY_BIT, TOKEN_ID_LEN, VERSION};
use crate::error::DropReason;

/// The fixed 32-byte header (SPEC.md §2). Authenticated as AEAD associated data, not encrypted.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Header {
    /// Protocol version, [`VERSION`].
    pub version: u8,
    /// Message type; replies have [`REPLY_BIT`] set.
    pub msg_type: u8,
    /// Reserved, zero.
    pub flags: Be16,
    /// Zero in requests; the server's epoch in replies (first four bytes of the nonce).
    pub epoch: Be32,
    /// Token id, or for PAIR_INIT the pairing id.
    pub token_id: [u8; TOKEN_ID_LEN],
    /// Per-direction message counter (last eight bytes of the nonce); never zero.
    pub counter: Be64,
}

impl Header {
    /// A request header.
    pub fn request(msg_type: MsgType, token_id: [u8; TOKEN_ID_LEN], counter: u64) -> Header {
        Header {
            version: VERSION,
            msg_type: msg_type.request_byte(),
            flags: Be16::new(0),
            epoch: Be32::new(0),
            token_id,
            counter: Be64::new(counter),
        }
    }

    /// The header of the reply to `request`, sent in server epoch `epoch`.
    pub fn reply_to(request: &Header, epoch: u32) -> Header {
        Header {
            version: VERSION,
            msg_type: request.msg_type | REPLY_BIT,
            flags: Be16::new(0),
            epoch: Be32::new(epoch),
            token_id: request.token_id,
            counter: request.counter,
        }
    }
}

/// A request whose header passed the cheap checks of SPEC.md §9.1 (size, version, reserved
/// bits, type, exact length, counter). Nothing about it is authentic yet.
#[derive(Clone, Copy, Debug)]
pub struct UncheckedRequest<'a> {
    /// The request type.
    pub msg_type: MsgType,
    /// The header, still unauthenticated.
    pub header: &'a Header,
}

impl UncheckedRequest<'_> {
    /// The token id (or pairing id for PAIR_INIT) used to find the key.
    pub fn key_id(&self) -> &[u8; TOKEN_ID_LEN] {
        &self.header.token_id
    }

    /// The counter, still unauthenticated.
    pub fn counter(&self) -> u64 {
        self.header.counter.get()
    }
}

/// Cheap checks on a received request datagram, before any table lookup or cryptography.
pub fn check_request(datagram: &[u8]) -> Result<UncheckedRequest<'_>, DropReason> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(DropReason::Oversize);
    }
    let (header, _) = Header::ref_from_prefix(datagram).map_err(|_| DropReason::Truncated)?;
    if header.version != VERSION {
        return Err(DropReason::UnknownVersion);
    }
    let msg_type = MsgType::from_request_byte(header.msg_type).ok_or(DropReason::UnknownType)?;
    if header.flags.get() != 0 || header.epoch.get() != 0 {
        return Err(DropReason::ReservedNotZero);
    }
    if datagram.len() != msg_type.request_len() {
        return Err(DropReason::WrongLength);
    }
    if header.counter.get() == 0 {
        return Err(DropReason::ZeroCounter);
    }
    Ok(UncheckedRequest { msg_type, header })
}

/// Cheap checks on a received reply datagram (device side).
pub fn check_reply(datagram: &[u8]) -> Result<(MsgType, &Header), DropReason> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(DropReason::Oversize);
    }
    let (header, _) = Header::ref_from_prefix(datagram).map_err(|_| DropReason::Truncated)?;
    if header.version != VERSION {
        return Err(DropReason::UnknownVersion);
    }
    let msg_type = MsgType::from_reply_byte(header.msg_type).ok_or(DropReason::UnknownType)?;
    if header.flags.get() != 0 || header.epoch.get() == 0 {
        return Err(DropReason::ReservedNotZero);
    }
    if datagram.len() != msg_type.reply_len() {
        return Err(DropReason::WrongLength);
    }
    if header.counter.get() == 0 {
        return Err(DropReason::ZeroCounter);
    }
    Ok((msg_type, header))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheap_checks_reject_in_order() {
        let t = MsgType::Status;
        let mut d = vec![0u8; t.request_len()];
        Header::request(t, [7; 16], 1)
            .write_to_prefix(&mut d)
            .unwrap();
        assert!(check_request(&d).is_ok());
        assert_eq!(check_request(&d[..31]).unwrap_err(), DropReason::Truncated);
        assert_eq!(
            check_request(&vec![0u8; MAX_DATAGRAM + 1]).unwrap_err(),
            DropReason::Oversize
        );
        let mut e = d.clone();
        e.push(0);
        assert_eq!(check_request(&e).unwrap_err(), DropReason::WrongLength);
        let mut v = d.clone();
        v[0] = 2;
        assert_eq!(check_request(&v).unwrap_err(), DropReason::UnknownVersion);
        let mut u = d.clone();
        u[1] = 0x55;
        assert_eq!(check_request(&u).unwrap_err(), DropReason::UnknownType);
        let mut r = d.clone();
        r[1] = t.reply_byte();
        assert_eq!(check_request(&r).unwrap_err(), DropReason::UnknownType);
        let mut f = d.clone();
        f[3] = 1;
        assert_eq!(check_request(&f).unwrap_err(), DropReason::ReservedNotZero);
        let mut ep = d.clone();
        ep[7] = 1;
        assert_eq!(check_request(&ep).unwrap_err(), DropReason::ReservedNotZero);
        let mut z = d.clone();
        z[24..32].fill(0);
        assert_eq!(check_request(&z).unwrap_err(), DropReason::ZeroCounter);
    }
}
