//! A decrypted body, parsed in place by its message type and exact length with every zero field
//! checked (SPEC.md §7.1): [`RequestBody`] on the server, [`ReplyBody`] on the device.

use zerocopy::IntoBytes;

use super::pairing::{PairCompleteRequest, PairInitReply, PairInitRequest};
use super::status::StatusBlock;
use super::token::{ChangePinRequest, OpenRequest, PlainRequest};
use super::transaction::{TxDecideReply, TxDecideRequest, TxFetchReply, TxFetchRequest};
use super::{all_zero, cast, MsgType};
use crate::error::DropReason;

/// A decrypted request body, borrowed in place from the datagram buffer.
#[derive(Clone, Copy, Debug)]
pub enum RequestBody<'a> {
    /// PAIR_INIT.
    PairInit(&'a PairInitRequest),
    /// PAIR_COMPLETE.
    PairComplete(&'a PairCompleteRequest),
    /// OPEN.
    Open(&'a OpenRequest),
    /// CLOSE.
    Close(&'a PlainRequest),
    /// STATUS.
    Status(&'a PlainRequest),
    /// TIME_SYNC.
    TimeSync(&'a PlainRequest),
    /// TX_FETCH.
    TxFetch(&'a TxFetchRequest),
    /// TX_APPROVE.
    TxApprove(&'a TxDecideRequest),
    /// TX_DENY.
    TxDeny(&'a TxDecideRequest),
    /// CHANGE_PIN.
    ChangePin(&'a ChangePinRequest),
}

impl<'a> RequestBody<'a> {
    /// Parses a decrypted body by (type, length), checking every zero field (SPEC.md §7.1).
    pub fn parse(msg_type: MsgType, body: &'a [u8]) -> Result<RequestBody<'a>, DropReason> {
        let parsed = match msg_type {
            MsgType::PairInit => {
                let r: &PairInitRequest = cast(body)?;
                all_zero(&r.zero).then_some(RequestBody::PairInit(r))
            }
            MsgType::PairComplete => {
                let r: &PairCompleteRequest = cast(body)?;
                r.pin.is_valid().then_some(RequestBody::PairComplete(r))
            }
            MsgType::Open => {
                let r: &OpenRequest = cast(body)?;
                r.pin.is_valid().then_some(RequestBody::Open(r))
            }
            MsgType::Close | MsgType::Status | MsgType::TimeSync => {
                let r: &PlainRequest = cast(body)?;
                all_zero(&r.zero).then_some(match msg_type {
                    MsgType::Close => RequestBody::Close(r),
                    MsgType::Status => RequestBody::Status(r),
                    _ => RequestBody::TimeSync(r),
                })
            }
            MsgType::TxFetch => {
                let r: &TxFetchRequest = cast(body)?;
                all_zero(&r.zero).then_some(RequestBody::TxFetch(r))
            }
            MsgType::TxApprove => {
                let r: &TxDecideRequest = cast(body)?;
                r.pin.is_valid().then_some(RequestBody::TxApprove(r))
            }
            MsgType::TxDeny => {
                let r: &TxDecideRequest = cast(body)?;
                (all_zero(&r.proof) && all_zero(r.pin.as_bytes())).then_some(RequestBody::TxDeny(r))
            }
            MsgType::ChangePin => {
                let r: &ChangePinRequest = cast(body)?;
                r.pin.is_valid().then_some(RequestBody::ChangePin(r))
            }
        };
        parsed.ok_or(DropReason::NonZeroPadding)
    }

    /// The device clock every request carries.
    pub fn device_time_ms(&self) -> u64 {
        match self {
            RequestBody::PairInit(r) => r.device_time_ms.get(),
            RequestBody::PairComplete(r) => r.device_time_ms.get(),
            RequestBody::Open(r) => r.device_time_ms.get(),
            RequestBody::Close(r) | RequestBody::Status(r) | RequestBody::TimeSync(r) => {
                r.device_time_ms.get()
            }
            RequestBody::TxFetch(r) => r.device_time_ms.get(),
            RequestBody::TxApprove(r) | RequestBody::TxDeny(r) => r.device_time_ms.get(),
            RequestBody::ChangePin(r) => r.device_time_ms.get(),
        }
    }

    /// The bytes of the body (for re-encoding).
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            RequestBody::PairInit(r) => r.as_bytes(),
            RequestBody::PairComplete(r) => r.as_bytes(),
            RequestBody::Open(r) => r.as_bytes(),
            RequestBody::Close(r) | RequestBody::Status(r) | RequestBody::TimeSync(r) => {
                r.as_bytes()
            }
            RequestBody::TxFetch(r) => r.as_bytes(),
            RequestBody::TxApprove(r) | RequestBody::TxDeny(r) => r.as_bytes(),
            RequestBody::ChangePin(r) => r.as_bytes(),
        }
    }
}

/// A decrypted reply body, borrowed in place (device side).
#[derive(Clone, Copy, Debug)]
pub enum ReplyBody<'a> {
    /// Reply to PAIR_INIT.
    PairInit(&'a PairInitReply),
    /// Reply to PAIR_COMPLETE, OPEN, CLOSE, STATUS, TIME_SYNC and CHANGE_PIN.
    Status(&'a StatusBlock),
    /// Reply to TX_FETCH.
    TxFetch(&'a TxFetchReply),
    /// Reply to TX_APPROVE and TX_DENY.
    TxDecide(&'a TxDecideReply),
}

impl<'a> ReplyBody<'a> {
    /// Parses a decrypted reply body by (type, length), checking the zero fields.
    pub fn parse(msg_type: MsgType, body: &'a [u8]) -> Result<ReplyBody<'a>, DropReason> {
        let parsed = match msg_type {
            MsgType::PairInit => {
                let r: &PairInitReply = cast(body)?;
                (r.status.reserved == 0 && all_zero(&r.reserved)).then_some(ReplyBody::PairInit(r))
            }
            MsgType::TxFetch => {
                let r: &TxFetchReply = cast(body)?;
                let len = usize::from(r.message_len.get());
                let padding_clear = r.message.get(len..).is_some_and(all_zero);
                (r.status.reserved == 0 && padding_clear).then_some(ReplyBody::TxFetch(r))
            }
            MsgType::TxApprove | MsgType::TxDeny => {
                let r: &TxDecideReply = cast(body)?;
                (r.status.reserved == 0 && all_zero(&r.reserved)).then_some(ReplyBody::TxDecide(r))
            }
            _ => {
                let r: &StatusBlock = cast(body)?;
                (r.reserved == 0).then_some(ReplyBody::Status(r))
            }
        };
        parsed.ok_or(DropReason::NonZeroPadding)
    }

    /// The status block every reply starts with.
    pub fn status(&self) -> &'a StatusBlock {
        match self {
            ReplyBody::PairInit(r) => &r.status,
            ReplyBody::Status(r) => r,
            ReplyBody::TxFetch(r) => &r.status,
            ReplyBody::TxDecide(r) => &r.status,
        }
    }

    /// The bytes of the body.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            ReplyBody::PairInit(r) => r.as_bytes(),
            ReplyBody::Status(r) => r.as_bytes(),
            ReplyBody::TxFetch(r) => r.as_bytes(),
            ReplyBody::TxDecide(r) => r.as_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{VerifierBlock, VERIFIER_FLAG_DURESS};

    #[test]
    fn nonzero_padding_is_rejected() {
        let mut body = [0u8; 24];
        assert!(RequestBody::parse(MsgType::Status, &body).is_ok());
        body[23] = 1;
        assert_eq!(
            RequestBody::parse(MsgType::Status, &body).unwrap_err(),
            DropReason::NonZeroPadding
        );
        let mut block = [0u8; 72];
        block[32] = 1; // duress verifier without the flag
        assert_eq!(
            VerifierBlock::parse(&block).unwrap_err(),
            DropReason::NonZeroPadding
        );
        block[64] = VERIFIER_FLAG_DURESS;
        assert!(VerifierBlock::parse(&block).unwrap().has_duress());
        block[64] = 0x02;
        assert!(VerifierBlock::parse(&block).is_err());
        block[64] = VERIFIER_FLAG_DURESS;
        block[71] = 1;
        assert!(VerifierBlock::parse(&block).is_err());
        // The PIN index: below 2^24, then four zero bytes.
        for t in [MsgType::PairComplete, MsgType::Open, MsgType::ChangePin] {
            let mut b = vec![0u8; t.request_body_len()];
            b[9..12].fill(0xff);
            assert!(RequestBody::parse(t, &b).is_ok(), "{}", t.name());
            b[8] = 1;
            assert!(RequestBody::parse(t, &b).is_err(), "{}", t.name());
            b[8] = 0;
            b[15] = 1;
            assert!(RequestBody::parse(t, &b).is_err(), "{}", t.name());
        }
        let mut deny = [0u8; 48];
        assert!(RequestBody::parse(MsgType::TxDeny, &deny).is_ok());
        deny[27] = 1; // a deny names no PIN key
        assert!(RequestBody::parse(MsgType::TxDeny, &deny).is_err());
        assert!(RequestBody::parse(MsgType::TxApprove, &deny).is_ok());
    }
}
