//! Wire layouts of SPEC.md §2 and §7: the fixed header, every message body, and the cheap
//! checks (size, version, type, length) done before any cryptography.
//!
//! Every struct here is `#[repr(C)]`, unaligned and parsed in place with `zerocopy`; integers
//! are big-endian.

use zerocopy::byteorder::{BigEndian, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::DropReason;

/// Protocol version carried in every header (SPEC.md §1.3).
pub const VERSION: u8 = 1;
/// Length of the fixed header (SPEC.md §2).
pub const HEADER_LEN: usize = 32;
/// Length of the Poly1305 tag that ends every packet (SPEC.md §4).
pub const TAG_LEN: usize = 16;
/// Largest datagram either side may send or must accept (SPEC.md §1.2).
pub const MAX_DATAGRAM: usize = 1200;
/// Length of a token id (SPEC.md §2.2).
pub const TOKEN_ID_LEN: usize = 16;
/// Bit set in the message type of every reply (SPEC.md §1.4).
pub const REPLY_BIT: u8 = 0x80;
/// Longest transaction message carried by TX_FETCH (SPEC.md §7.9), in bytes of UTF-8.
pub const TX_MESSAGE_MAX: usize = 200;

/// Big-endian `u16` on the wire.
pub type Be16 = U16<BigEndian>;
/// Big-endian `u32` on the wire.
pub type Be32 = U32<BigEndian>;
/// Big-endian `u64` on the wire.
pub type Be64 = U64<BigEndian>;

/// Request message types (SPEC.md §7). A reply carries the request's type with [`REPLY_BIT`] set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    /// First pairing round trip: proves the enrollment secret, exchanges X25519 keys.
    PairInit = 0x01,
    /// Second pairing round trip: sends the PIN verifiers under the new token secret.
    PairComplete = 0x02,
    /// Open the token with a PIN proof.
    Open = 0x03,
    /// Close the token.
    Close = 0x04,
    /// Read the token state.
    Status = 0x05,
    /// Presence and clock synchronisation.
    TimeSync = 0x06,
    /// Fetch the oldest pending transaction.
    TxFetch = 0x07,
    /// Approve a transaction with a PIN proof.
    TxApprove = 0x08,
    /// Deny a transaction.
    TxDeny = 0x09,
    /// Replace the PIN (and duress PIN) verifiers, proving the current PIN.
    ChangePin = 0x0A,
}

impl MsgType {
    /// Every request type, in wire order.
    pub const ALL: [MsgType; 10] = [
        MsgType::PairInit,
        MsgType::PairComplete,
        MsgType::Open,
        MsgType::Close,
        MsgType::Status,
        MsgType::TimeSync,
        MsgType::TxFetch,
        MsgType::TxApprove,
        MsgType::TxDeny,
        MsgType::ChangePin,
    ];

    /// The type for a request type byte, or `None` when it is unknown.
    pub fn from_request_byte(byte: u8) -> Option<MsgType> {
        Some(match byte {
            0x01 => MsgType::PairInit,
            0x02 => MsgType::PairComplete,
            0x03 => MsgType::Open,
            0x04 => MsgType::Close,
            0x05 => MsgType::Status,
            0x06 => MsgType::TimeSync,
            0x07 => MsgType::TxFetch,
            0x08 => MsgType::TxApprove,
            0x09 => MsgType::TxDeny,
            0x0A => MsgType::ChangePin,
            _ => return None,
        })
    }

    /// The type for a reply type byte (reply bit set), or `None`.
    pub fn from_reply_byte(byte: u8) -> Option<MsgType> {
        if byte & REPLY_BIT == 0 {
            return None;
        }
        Self::from_request_byte(byte & !REPLY_BIT)
    }

    /// The request's type byte.
    pub fn request_byte(self) -> u8 {
        self as u8
    }

    /// The reply's type byte.
    pub fn reply_byte(self) -> u8 {
        self as u8 | REPLY_BIT
    }

    /// Length of the request body (plaintext, without header and tag).
    pub fn request_body_len(self) -> usize {
        match self {
            MsgType::PairInit => size_of::<PairInitRequest>(),
            MsgType::PairComplete => size_of::<PairCompleteRequest>(),
            MsgType::Open => size_of::<OpenRequest>(),
            MsgType::Close | MsgType::Status | MsgType::TimeSync => size_of::<PlainRequest>(),
            MsgType::TxFetch => size_of::<TxFetchRequest>(),
            MsgType::TxApprove | MsgType::TxDeny => size_of::<TxDecideRequest>(),
            MsgType::ChangePin => size_of::<ChangePinRequest>(),
        }
    }

    /// Length of the reply body (plaintext, without header and tag).
    pub fn reply_body_len(self) -> usize {
        match self {
            MsgType::PairInit => size_of::<PairInitReply>(),
            MsgType::TxFetch => size_of::<TxFetchReply>(),
            MsgType::TxApprove | MsgType::TxDeny => size_of::<TxDecideReply>(),
            MsgType::PairComplete
            | MsgType::Open
            | MsgType::Close
            | MsgType::Status
            | MsgType::TimeSync
            | MsgType::ChangePin => size_of::<StatusBlock>(),
        }
    }

    /// Total datagram length of the request.
    pub fn request_len(self) -> usize {
        HEADER_LEN + self.request_body_len() + TAG_LEN
    }

    /// Total datagram length of the reply (never larger than [`MsgType::request_len`]).
    pub fn reply_len(self) -> usize {
        HEADER_LEN + self.reply_body_len() + TAG_LEN
    }

    /// Whether the request is sealed under the enrollment keys rather than the token keys.
    pub fn uses_enrollment_keys(self) -> bool {
        self == MsgType::PairInit
    }

    /// Whether the request carries a PIN proof (SPEC.md §6.3). PAIR_COMPLETE carries PIN
    /// material too (sealed verifiers) but no proof.
    pub fn carries_pin_proof(self) -> bool {
        matches!(
            self,
            MsgType::Open | MsgType::TxApprove | MsgType::ChangePin
        )
    }

    /// Upper-case protocol name, as in SPEC.md.
    pub fn name(self) -> &'static str {
        match self {
            MsgType::PairInit => "PAIR_INIT",
            MsgType::PairComplete => "PAIR_COMPLETE",
            MsgType::Open => "OPEN",
            MsgType::Close => "CLOSE",
            MsgType::Status => "STATUS",
            MsgType::TimeSync => "TIME_SYNC",
            MsgType::TxFetch => "TX_FETCH",
            MsgType::TxApprove => "TX_APPROVE",
            MsgType::TxDeny => "TX_DENY",
            MsgType::ChangePin => "CHANGE_PIN",
        }
    }
}

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

/// Reply status codes (SPEC.md §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReplyStatus {
    /// The operation succeeded (also the answer to a duress open, SPEC.md §6.4).
    Ok = 0,
    /// The PIN proof was wrong; `attempts_left` says how many remain before blocking.
    WrongPin = 1,
    /// The token is blocked; only an administrator can unblock it.
    Blocked = 2,
    /// The token is pending (re-enrolled) or pairing did not complete; pair again.
    NotPaired = 3,
    /// No such pending transaction (none, expired, or already decided).
    NoTransaction = 4,
    /// The request is authentic but not allowed in the token's state.
    Refused = 5,
}

impl ReplyStatus {
    /// The status for a byte, or `None` when unknown.
    pub fn from_byte(byte: u8) -> Option<ReplyStatus> {
        [
            ReplyStatus::Ok,
            ReplyStatus::WrongPin,
            ReplyStatus::Blocked,
            ReplyStatus::NotPaired,
            ReplyStatus::NoTransaction,
            ReplyStatus::Refused,
        ]
        .into_iter()
        .find(|s| *s as u8 == byte)
    }
}

/// Token states as seen on the wire (SPEC.md §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum WireState {
    /// Enrolled, not yet paired.
    Pending = 0,
    /// Paired and closed.
    Closed = 1,
    /// Open until `open_until_ms`.
    Open = 2,
    /// Blocked.
    Blocked = 3,
}

impl WireState {
    /// The state for a byte, or `None` when unknown.
    pub fn from_byte(byte: u8) -> Option<WireState> {
        [
            WireState::Pending,
            WireState::Closed,
            WireState::Open,
            WireState::Blocked,
        ]
        .into_iter()
        .find(|s| *s as u8 == byte)
    }
}

/// Transaction states on the wire (SPEC.md §7.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TxState {
    /// Waiting for the user.
    Waiting = 0,
    /// Approved by the user ("OK").
    Approved = 1,
    /// Denied by the user ("CANCEL").
    Denied = 2,
    /// Expired without an answer ("FAILED").
    Expired = 3,
}

impl TxState {
    /// The state for a byte, or `None` when unknown.
    pub fn from_byte(byte: u8) -> Option<TxState> {
        [
            TxState::Waiting,
            TxState::Approved,
            TxState::Denied,
            TxState::Expired,
        ]
        .into_iter()
        .find(|s| *s as u8 == byte)
    }
}

/// One-time-code alphabets (SPEC.md §10.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Alphabet {
    /// `0-9`.
    Digits = 0,
    /// The unambiguous 32-symbol alphabet `0-9A-Z` without `I L O U`.
    Base32 = 1,
}

impl Alphabet {
    /// The alphabet for a byte, or `None` when unknown.
    pub fn from_byte(byte: u8) -> Option<Alphabet> {
        match byte {
            0 => Some(Alphabet::Digits),
            1 => Some(Alphabet::Base32),
            _ => None,
        }
    }

    /// The symbols, in order.
    pub fn symbols(self) -> &'static [u8] {
        match self {
            Alphabet::Digits => b"0123456789",
            Alphabet::Base32 => crate::codes::BASE32_SYMBOLS,
        }
    }
}

/// The 20-byte status block that starts every reply body (SPEC.md §7.2).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct StatusBlock {
    /// A [`ReplyStatus`] byte.
    pub status: u8,
    /// A [`WireState`] byte.
    pub state: u8,
    /// Failed authentications left before the token blocks (3 after a success).
    pub attempts_left: u8,
    /// Reserved, zero.
    pub reserved: u8,
    /// When the open window ends, Unix milliseconds; zero unless the state is open.
    pub open_until_ms: Be64,
    /// The server's clock, Unix milliseconds.
    pub server_time_ms: Be64,
}

impl StatusBlock {
    /// A status block.
    pub fn new(
        status: ReplyStatus,
        state: WireState,
        attempts_left: u8,
        open_until_ms: u64,
        server_time_ms: u64,
    ) -> StatusBlock {
        StatusBlock {
            status: status as u8,
            state: state as u8,
            attempts_left,
            reserved: 0,
            open_until_ms: Be64::new(open_until_ms),
            server_time_ms: Be64::new(server_time_ms),
        }
    }
}

/// PAIR_INIT request body (SPEC.md §7.3), sealed under the enrollment keys.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct PairInitRequest {
    /// Device clock, Unix milliseconds.
    pub device_time_ms: Be64,
    /// The device's ephemeral X25519 public key.
    pub device_public: [u8; 32],
    /// Zero padding (keeps the request as large as the reply).
    pub zero: [u8; 72],
}

/// PAIR_INIT reply body (SPEC.md §7.3), sealed under the enrollment keys.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct PairInitReply {
    /// Status block; state `pending`.
    pub status: StatusBlock,
    /// The server's ephemeral X25519 public key.
    pub server_public: [u8; 32],
    /// The token id the device will use from now on.
    pub token_id: [u8; TOKEN_ID_LEN],
    /// One-time-code length, 4–32.
    pub otp_length: u8,
    /// One-time-code [`Alphabet`] byte.
    pub otp_alphabet: u8,
    /// One-time-code period in seconds.
    pub otp_period_s: Be16,
    /// The service's open window in seconds (0: an open is an instant event).
    pub window_s: Be32,
    /// Bit 0: the service allows a duress PIN. Other bits zero.
    pub service_flags: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
    /// The token's PIN root, XOR the pad of the X25519 exchange (SPEC.md §5.4, §6.3).
    pub pin_root_sealed: [u8; 32],
}

/// Flag in [`PairInitReply::service_flags`]: the service allows a duress PIN.
pub const SERVICE_FLAG_DURESS: u8 = 0x01;
/// Flag in PAIR_COMPLETE and CHANGE_PIN: a duress verifier is present.
pub const VERIFIER_FLAG_DURESS: u8 = 0x01;

/// The index of a PIN-bearing request's PIN key and its padding (SPEC.md §6.3).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct PinIndex {
    /// The index `p` of the PIN key, below [`crate::pin_keys::PIN_INDEX_LIMIT`].
    pub index: Be32,
    /// Zero.
    pub zero: [u8; 4],
}

impl PinIndex {
    /// The index field of a request that uses PIN key `index`.
    pub fn new(index: u32) -> PinIndex {
        PinIndex {
            index: Be32::new(index),
            zero: [0; 4],
        }
    }

    fn is_valid(&self) -> bool {
        all_zero(&self.zero) && self.index.get() < crate::pin_keys::PIN_INDEX_LIMIT
    }
}

/// The plaintext of a sealed verifier block (PAIR_COMPLETE, CHANGE_PIN; SPEC.md §6.3).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct VerifierBlock {
    /// The PIN verifier (SPEC.md §6.1).
    pub pin_verifier: [u8; 32],
    /// The duress PIN verifier, or zero when [`VERIFIER_FLAG_DURESS`] is clear.
    pub duress_verifier: [u8; 32],
    /// [`VERIFIER_FLAG_DURESS`] or zero.
    pub flags: u8,
    /// Zero.
    pub zero: [u8; 7],
}

impl VerifierBlock {
    /// Parses an opened block, checking its flags and zero fields.
    pub fn parse(bytes: &[u8; 72]) -> Result<VerifierBlock, DropReason> {
        let b: &VerifierBlock = cast(bytes)?;
        if verifier_flags_ok(b.flags, &b.duress_verifier, &b.zero) {
            Ok(*b)
        } else {
            Err(DropReason::NonZeroPadding)
        }
    }

    /// Whether a duress verifier is present.
    pub fn has_duress(&self) -> bool {
        self.flags & VERIFIER_FLAG_DURESS != 0
    }

    /// The 72 bytes to seal.
    pub fn to_bytes(&self) -> [u8; 72] {
        let mut out = [0u8; 72];
        out.copy_from_slice(self.as_bytes());
        out
    }
}

/// PAIR_COMPLETE request body (SPEC.md §7.4), sealed under the new token keys.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct PairCompleteRequest {
    /// Device clock, Unix milliseconds.
    pub device_time_ms: Be64,
    /// The PIN key that seals the verifiers.
    pub pin: PinIndex,
    /// The [`VerifierBlock`], sealed under the PIN key (SPEC.md §6.3).
    pub verifiers: [u8; crate::pin_keys::SEALED_VERIFIERS_LEN],
}

/// Body of CLOSE, STATUS and TIME_SYNC requests (SPEC.md §7.6–7.8).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct PlainRequest {
    /// Device clock, Unix milliseconds.
    pub device_time_ms: Be64,
    /// Zero padding.
    pub zero: [u8; 16],
}

/// OPEN request body (SPEC.md §7.5).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct OpenRequest {
    /// Device clock, Unix milliseconds.
    pub device_time_ms: Be64,
    /// The PIN key of the proof.
    pub pin: PinIndex,
    /// PIN proof (SPEC.md §6.3).
    pub proof: [u8; 16],
}

/// TX_FETCH request body (SPEC.md §7.9).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct TxFetchRequest {
    /// Device clock, Unix milliseconds.
    pub device_time_ms: Be64,
    /// Zero padding (the reply carries up to 200 bytes of message).
    pub zero: [u8; 238],
}

/// TX_FETCH reply body (SPEC.md §7.9).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct TxFetchReply {
    /// Status block; status `NO_TRANSACTION` when nothing is pending.
    pub status: StatusBlock,
    /// Transaction id, zero when none.
    pub tx_id: [u8; 16],
    /// When the transaction expires, Unix milliseconds.
    pub tx_expires_ms: Be64,
    /// Length of the UTF-8 message in `message`.
    pub message_len: Be16,
    /// The message, zero padded.
    pub message: [u8; TX_MESSAGE_MAX],
}

/// TX_APPROVE and TX_DENY request body (SPEC.md §7.10).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct TxDecideRequest {
    /// Device clock, Unix milliseconds.
    pub device_time_ms: Be64,
    /// The transaction decided.
    pub tx_id: [u8; 16],
    /// The PIN key of the proof for TX_APPROVE; zero for TX_DENY.
    pub pin: PinIndex,
    /// PIN proof for TX_APPROVE; zero for TX_DENY.
    pub proof: [u8; 16],
}

/// TX_APPROVE and TX_DENY reply body (SPEC.md §7.10).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct TxDecideReply {
    /// Status block.
    pub status: StatusBlock,
    /// The transaction.
    pub tx_id: [u8; 16],
    /// A [`TxState`] byte: the transaction's state after the request.
    pub tx_state: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
}

/// CHANGE_PIN request body (SPEC.md §7.11).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct ChangePinRequest {
    /// Device clock, Unix milliseconds.
    pub device_time_ms: Be64,
    /// The PIN key of the proof and of the sealed verifiers.
    pub pin: PinIndex,
    /// PIN proof with the current PIN.
    pub proof: [u8; 16],
    /// The new [`VerifierBlock`], sealed under the PIN key (SPEC.md §6.3).
    pub verifiers: [u8; crate::pin_keys::SEALED_VERIFIERS_LEN],
}

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

/// Views `bytes` as `T` if the length is exactly `T`'s.
fn cast<T: FromBytes + KnownLayout + Immutable>(bytes: &[u8]) -> Result<&T, DropReason> {
    T::ref_from_bytes(bytes).map_err(|_| DropReason::WrongLength)
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |acc, b| acc | b) == 0
}

fn verifier_flags_ok(flags: u8, duress: &[u8; 32], zero: &[u8; 7]) -> bool {
    all_zero(zero)
        && flags & !VERIFIER_FLAG_DURESS == 0
        && (flags & VERIFIER_FLAG_DURESS != 0 || all_zero(duress))
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

    #[test]
    fn layout_sizes_match_the_spec() {
        assert_eq!(size_of::<Header>(), HEADER_LEN);
        assert_eq!(size_of::<StatusBlock>(), 20);
        assert_eq!(size_of::<PairInitRequest>(), 112);
        assert_eq!(size_of::<PairInitReply>(), 112);
        assert_eq!(size_of::<PairCompleteRequest>(), 104);
        assert_eq!(size_of::<VerifierBlock>(), 72);
        assert_eq!(size_of::<PlainRequest>(), 24);
        assert_eq!(size_of::<OpenRequest>(), 32);
        assert_eq!(size_of::<TxFetchRequest>(), 246);
        assert_eq!(size_of::<TxFetchReply>(), 246);
        assert_eq!(size_of::<TxDecideRequest>(), 48);
        assert_eq!(size_of::<TxDecideReply>(), 40);
        assert_eq!(size_of::<ChangePinRequest>(), 120);
    }

    #[test]
    fn no_reply_is_larger_than_its_request() {
        for t in MsgType::ALL {
            assert!(t.reply_len() <= t.request_len(), "{}", t.name());
            assert!(t.request_len() <= MAX_DATAGRAM);
        }
    }

    #[test]
    fn type_bytes_round_trip() {
        for t in MsgType::ALL {
            assert_eq!(MsgType::from_request_byte(t.request_byte()), Some(t));
            assert_eq!(MsgType::from_reply_byte(t.reply_byte()), Some(t));
            assert_eq!(MsgType::from_reply_byte(t.request_byte()), None);
            assert_eq!(MsgType::from_request_byte(t.reply_byte()), None);
        }
        assert_eq!(MsgType::from_request_byte(0), None);
        assert_eq!(MsgType::from_request_byte(0x0B), None);
    }

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
