//! Sealing and opening whole datagrams (SPEC.md §4): `header ‖ ciphertext ‖ tag`, written into
//! and decrypted inside the caller's buffer. Nothing here allocates.

use zerocopy::{FromBytes, IntoBytes};

use crate::aead::PacketKey;
use crate::error::{DropReason, Error};
use crate::wire::{
    check_reply, check_request, Header, MsgType, ReplyBody, RequestBody, HEADER_LEN, TAG_LEN,
};

/// Writes `header ‖ body` into `out`, encrypts the body in place under `key` with the header as
/// associated data, appends the tag, and returns the datagram length.
pub fn seal(key: &PacketKey, header: &Header, body: &[u8], out: &mut [u8]) -> Result<usize, Error> {
    let len = HEADER_LEN + body.len() + TAG_LEN;
    let out = out.get_mut(..len).ok_or(Error::BufferTooSmall)?;
    let (head, rest) = out.split_at_mut(HEADER_LEN);
    head.copy_from_slice(header.as_bytes());
    let (plain, tag_out) = rest.split_at_mut(body.len());
    plain.copy_from_slice(body);
    let tag = key.seal_in_place(header.epoch.get(), header.counter.get(), head, plain)?;
    tag_out.copy_from_slice(&tag);
    Ok(len)
}

/// Verifies and decrypts `datagram` in place; returns the header and the plaintext
/// body, both borrowed from the buffer. The caller has already run the cheap checks.
pub fn open<'a>(
    key: &PacketKey,
    datagram: &'a mut [u8],
) -> Result<(&'a Header, &'a [u8]), DropReason> {
    let (head, rest) = datagram
        .split_at_mut_checked(HEADER_LEN)
        .ok_or(DropReason::Truncated)?;
    let head: &'a [u8] = head;
    let header = Header::ref_from_bytes(head).map_err(|_| DropReason::Truncated)?;
    let body = key.open_in_place(header.epoch.get(), header.counter.get(), head, rest)?;
    Ok((header, &*body))
}

/// An authentic request: tag verified, body parsed in place. Replay and freshness are the
/// receiver's next checks (SPEC.md §8).
#[derive(Clone, Copy, Debug)]
pub struct OpenedRequest<'a> {
    /// The request type.
    pub msg_type: MsgType,
    /// The authenticated header, in place in the datagram (a reference keeps this value
    /// small: it is returned in a `Result` and copied on every packet).
    pub header: &'a Header,
    /// The decrypted body.
    pub body: RequestBody<'a>,
}

/// Server side: cheap checks, then the tag under `key` (the token's or enrollment's
/// device-to-server key), then the body layout.
pub fn open_request<'a>(
    key: &PacketKey,
    datagram: &'a mut [u8],
) -> Result<OpenedRequest<'a>, DropReason> {
    let msg_type = check_request(datagram)?.msg_type;
    open_checked_request(key, msg_type, datagram)
}

/// As [`open_request`] for a datagram whose cheap checks ([`check_request`]) already passed
/// with `msg_type`: the tag, the decryption and the body layout only.
pub fn open_checked_request<'a>(
    key: &PacketKey,
    msg_type: MsgType,
    datagram: &'a mut [u8],
) -> Result<OpenedRequest<'a>, DropReason> {
    let (header, body) = open(key, datagram)?;
    let body = RequestBody::parse(msg_type, body)?;
    Ok(OpenedRequest {
        msg_type,
        header,
        body,
    })
}

/// An authentic reply (device side).
#[derive(Clone, Copy, Debug)]
pub struct OpenedReply<'a> {
    /// The type of the request this answers.
    pub msg_type: MsgType,
    /// The authenticated header, in place in the datagram (a reference keeps this value
    /// small: it is returned in a `Result` and copied on every packet).
    pub header: &'a Header,
    /// The decrypted body.
    pub body: ReplyBody<'a>,
}

/// Device side: cheap checks, the tag under `key` (server-to-device), then the body layout.
pub fn open_reply<'a>(
    key: &PacketKey,
    datagram: &'a mut [u8],
) -> Result<OpenedReply<'a>, DropReason> {
    let msg_type = check_reply(datagram)?.0;
    let (header, body) = open(key, datagram)?;
    let body = ReplyBody::parse(msg_type, body)?;
    Ok(OpenedReply {
        msg_type,
        header,
        body,
    })
}

/// Device side: seals a request of `msg_type` with `body` (exactly the type's body length).
pub fn seal_request(
    key: &PacketKey,
    msg_type: MsgType,
    token_id: [u8; 16],
    counter: u64,
    body: &[u8],
    out: &mut [u8],
) -> Result<usize, Error> {
    if body.len() != msg_type.request_body_len() {
        return Err(Error::InvalidMessage("body length does not match the type"));
    }
    if counter == 0 {
        return Err(Error::InvalidMessage("counter zero"));
    }
    seal(
        key,
        &Header::request(msg_type, token_id, counter),
        body,
        out,
    )
}

/// Server side: seals the reply to `request` in server epoch `epoch` (never zero).
pub fn seal_reply(
    key: &PacketKey,
    epoch: u32,
    request: &Header,
    body: &[u8],
    out: &mut [u8],
) -> Result<usize, Error> {
    let msg_type = MsgType::from_request_byte(request.msg_type)
        .ok_or(Error::InvalidMessage("not a request header"))?;
    if body.len() != msg_type.reply_body_len() {
        return Err(Error::InvalidMessage("body length does not match the type"));
    }
    if epoch == 0 {
        return Err(Error::InvalidMessage("epoch zero"));
    }
    seal(key, &Header::reply_to(request, epoch), body, out)
}
