//! [`Token`]: a paired token; builds every request into the caller's buffer, checks the
//! replies, computes one-time codes and offline responses, and saves its state first.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes};
use zeroize::Zeroizing;
use zoftoken_proto::codes::{self, OtpParams};
use zoftoken_proto::packet::{open_reply, seal_request};
use zoftoken_proto::pin_keys::PIN_INDEX_LIMIT;
use zoftoken_proto::wire::{
    check_reply, Alphabet, Be64, ChangePinRequest, Header, OpenRequest, PinIndex, PlainRequest,
    ReplyBody, StatusBlock, TxDecideRequest, TxFetchRequest, VerifierBlock, TX_MESSAGE_MAX,
    VERIFIER_FLAG_DURESS,
};
use zoftoken_proto::{
    DropReason, MsgType, PinKey, PinKeyRing, PinVerifier, ReplyStatus, TokenId, TokenKeys,
    TokenSecret, TxState, WireState,
};

use crate::{DeviceError, StateStore};

/// How many requests may await a reply at once (a request and its retries).
const MAX_OUTSTANDING: usize = 8;

/// What the device knows about the service it is paired with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Service name.
    pub name: String,
    /// `host:port` endpoints.
    pub endpoints: Vec<String>,
    /// URL of the details JSON, if known.
    pub details_url: Option<String>,
    /// One-time-code length.
    pub otp_length: u8,
    /// One-time-code period in seconds.
    pub otp_period_s: u16,
    /// One-time-code alphabet: 0 digits, 1 base32.
    pub otp_alphabet: u8,
    /// Open window in seconds.
    pub window_s: u32,
    /// Whether the service accepts a duress PIN.
    pub duress_allowed: bool,
}

impl ServiceInfo {
    /// The one-time-code parameters.
    pub fn otp_params(&self) -> Result<OtpParams, DeviceError> {
        let alphabet = Alphabet::from_byte(self.otp_alphabet)
            .ok_or(zoftoken_proto::Error::OtpParams("unknown alphabet"))?;
        Ok(OtpParams {
            length: self.otp_length,
            period_s: self.otp_period_s,
            alphabet,
        }
        .validate()?)
    }
}

/// A request the token can build.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    /// Open with the PIN (or the duress PIN: the request looks the same).
    Open(&'a PinVerifier),
    /// Close.
    Close,
    /// Read the state.
    Status,
    /// Presence and clock synchronisation.
    TimeSync,
    /// Fetch the oldest pending transaction.
    TxFetch,
    /// Approve a transaction with the PIN.
    TxApprove {
        /// The transaction.
        tx_id: [u8; 16],
        /// The PIN's verifier.
        pin: &'a PinVerifier,
    },
    /// Deny a transaction.
    TxDeny {
        /// The transaction.
        tx_id: [u8; 16],
    },
    /// Change the PIN.
    ChangePin {
        /// The current PIN's verifier.
        current: &'a PinVerifier,
        /// The new PIN's verifier.
        new: &'a PinVerifier,
        /// The new duress PIN's verifier, where the service allows duress.
        new_duress: Option<&'a PinVerifier>,
    },
}

/// A datagram written into the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Bytes written at the start of the buffer.
    pub len: usize,
    /// The counter it carries.
    pub counter: u64,
    /// Its type.
    pub msg_type: MsgType,
}

/// The token's state as a reply reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenStatus {
    /// Outcome of the request.
    pub status: ReplyStatus,
    /// Token state after the request.
    pub state: WireState,
    /// Failures left before blocking.
    pub attempts_left: u8,
    /// End of the open window (Unix ms), zero unless open.
    pub open_until_ms: u64,
    /// The server's clock (Unix ms).
    pub server_time_ms: u64,
}

impl TokenStatus {
    pub(crate) fn from_block(b: &StatusBlock) -> Result<TokenStatus, DropReason> {
        Ok(TokenStatus {
            status: ReplyStatus::from_byte(b.status).ok_or(DropReason::InvalidField)?,
            state: WireState::from_byte(b.state).ok_or(DropReason::InvalidField)?,
            attempts_left: b.attempts_left,
            open_until_ms: b.open_until_ms.get(),
            server_time_ms: b.server_time_ms.get(),
        })
    }
}

/// A transaction waiting for the user's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingTransaction {
    /// Its id, to approve or deny.
    pub tx_id: [u8; 16],
    /// When it expires (Unix ms).
    pub expires_ms: u64,
    /// The message to show the user.
    pub message: String,
}

/// A checked reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Reply to OPEN, CLOSE, STATUS, TIME_SYNC or CHANGE_PIN.
    Status(TokenStatus),
    /// Reply to TX_FETCH: the pending transaction, if any.
    Transaction(TokenStatus, Option<PendingTransaction>),
    /// Reply to TX_APPROVE or TX_DENY.
    TxDecided(TokenStatus, [u8; 16], TxState),
}

impl Reply {
    /// The status part of any reply.
    pub fn status(&self) -> &TokenStatus {
        match self {
            Reply::Status(s) | Reply::Transaction(s, _) | Reply::TxDecided(s, _, _) => s,
        }
    }
}

/// The version of the saved state [`Token::to_bytes`] writes. Version 1 (before per-request
/// PIN keys) is refused with [`DeviceError::PairAgain`]: its token has no PIN keys.
pub const STATE_VERSION: u32 = 2;

/// The saved state, version [`STATE_VERSION`]: JSON with the token id and secret in hex, the
/// next counter, the service, and the PIN key ring ([`PinKeyRing::to_bytes`], base64).
#[derive(Serialize, Deserialize)]
struct Persisted {
    version: u32,
    token_id: String,
    secret: Zeroizing<String>,
    next_counter: u64,
    service: ServiceInfo,
    pin_keys: Zeroizing<String>,
}

/// Only the version of a saved state, read first so that an old state gets a clear error.
#[derive(Deserialize)]
struct PersistedVersion {
    version: u32,
}

/// Room for a saved state without reallocation (a reallocation would leave a copy of the
/// secrets behind in freed memory): the largest ring is 4 + 765 × 32 bytes, 32 680 in base64.
const STATE_CAPACITY: usize = 40 * 1024;

/// A paired token on the device.
#[derive(Debug)]
pub struct Token {
    token_id: TokenId,
    secret: TokenSecret,
    keys: TokenKeys,
    next_counter: u64,
    service: ServiceInfo,
    pin_keys: PinKeyRing,
    outstanding: Vec<(u64, MsgType)>,
}

/// Takes the next PIN key of `ring`; a used-up ring means pairing again.
pub(crate) fn take_pin_key(ring: &mut PinKeyRing) -> Result<(u32, PinKey), DeviceError> {
    ring.take().map_err(|e| match e {
        zoftoken_proto::Error::PinKeysExhausted => {
            DeviceError::PairAgain("every per-request PIN key of this pairing has been used")
        }
        other => DeviceError::Protocol(other),
    })
}

/// The 72-byte verifier block of PAIR_COMPLETE and CHANGE_PIN, built in place in a buffer that
/// is zeroized when dropped.
pub(crate) fn verifier_block(
    pin: &PinVerifier,
    duress: Option<&PinVerifier>,
) -> Zeroizing<[u8; 72]> {
    let mut bytes = Zeroizing::new([0u8; 72]);
    if let Ok(block) = VerifierBlock::mut_from_bytes(bytes.as_mut_slice()) {
        block.pin_verifier.copy_from_slice(pin.expose());
        if let Some(d) = duress {
            block.duress_verifier.copy_from_slice(d.expose());
            block.flags = VERIFIER_FLAG_DURESS;
        }
    }
    bytes
}

impl Token {
    pub(crate) fn new(
        token_id: TokenId,
        secret: TokenSecret,
        next_counter: u64,
        service: ServiceInfo,
        pin_keys: PinKeyRing,
    ) -> Token {
        let keys = secret.keys();
        Token {
            token_id,
            secret,
            keys,
            next_counter,
            service,
            pin_keys,
            outstanding: Vec::new(),
        }
    }

    /// The token id.
    pub fn token_id(&self) -> TokenId {
        self.token_id
    }

    /// The service details.
    pub fn service(&self) -> &ServiceInfo {
        &self.service
    }

    /// The counter the next request will carry.
    pub fn next_counter(&self) -> u64 {
        self.next_counter
    }

    /// How many PIN requests (OPEN, TX_APPROVE, CHANGE_PIN) the token can still make before
    /// it must be paired again (2²⁴ per pairing).
    pub fn pin_keys_left(&self) -> u32 {
        PIN_INDEX_LIMIT.saturating_sub(self.pin_keys.next_index())
    }

    /// Serializes the state (contains the token secret and the unused PIN keys: store it
    /// protected). The buffer is zeroized when dropped.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, DeviceError> {
        let ring = Zeroizing::new(self.pin_keys.to_bytes());
        let p = Persisted {
            version: STATE_VERSION,
            token_id: self.token_id.to_hex(),
            secret: Zeroizing::new(hex::encode(self.secret.expose())),
            next_counter: self.next_counter,
            service: self.service.clone(),
            pin_keys: Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*ring)),
        };
        let mut out = Zeroizing::new(Vec::with_capacity(STATE_CAPACITY));
        serde_json::to_writer(&mut *out, &p).map_err(|e| DeviceError::Store(e.to_string()))?;
        Ok(out)
    }

    /// Restores a token from [`to_bytes`](Self::to_bytes) output. A state saved before
    /// per-request PIN keys (version 1) is [`DeviceError::PairAgain`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Token, DeviceError> {
        let bad = |m: &str| DeviceError::CorruptState(m.to_owned());
        let v: PersistedVersion = serde_json::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
        match v.version {
            1 => {
                return Err(DeviceError::PairAgain(
                    "its saved state is from a version without per-request PIN keys",
                ))
            }
            STATE_VERSION => {}
            _ => return Err(bad("unknown state version")),
        }
        let p: Persisted = serde_json::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
        let id: [u8; 16] = hex::decode(&p.token_id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("token id"))?;
        let secret = Zeroizing::new(hex::decode(p.secret.as_str()).map_err(|_| bad("secret"))?);
        let secret: [u8; 32] = secret
            .as_slice()
            .try_into()
            .map_err(|_| bad("secret length"))?;
        if p.next_counter == 0 {
            return Err(bad("counter"));
        }
        p.service.otp_params()?;
        let ring = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(p.pin_keys.as_bytes())
                .map_err(|_| bad("PIN keys"))?,
        );
        let pin_keys = PinKeyRing::from_bytes(&ring).map_err(|_| bad("PIN keys"))?;
        Ok(Token::new(
            TokenId(id),
            TokenSecret::from_bytes(secret),
            p.next_counter,
            p.service,
            pin_keys,
        ))
    }

    /// Loads the token saved in `store`.
    pub fn load(store: &dyn StateStore) -> Result<Option<Token>, DeviceError> {
        store.load()?.map(|b| Token::from_bytes(&b)).transpose()
    }

    /// Builds `request` into `out` (at least 1200 bytes is always enough). The new counter,
    /// and for a PIN request (OPEN, TX_APPROVE, CHANGE_PIN) the PIN key ring without the key
    /// it takes, are saved to `store` before the datagram is returned; if saving fails nothing
    /// is sent (and neither the counter nor the PIN key is used again). A retry is a new
    /// request: call this again, for a new counter and a new PIN key.
    ///
    /// A PIN request of a token whose PIN keys are used up is [`DeviceError::PairAgain`].
    pub fn request(
        &mut self,
        store: &mut dyn StateStore,
        request: Request<'_>,
        now_ms: u64,
        out: &mut [u8],
    ) -> Result<Transmit, DeviceError> {
        if let Request::ChangePin {
            new_duress: Some(_),
            ..
        } = request
        {
            if !self.service.duress_allowed {
                return Err(DeviceError::OutOfOrder(
                    "the service does not allow a duress PIN",
                ));
            }
        }
        let counter = self.next_counter;
        let next_counter = counter
            .checked_add(1)
            .ok_or(DeviceError::OutOfOrder("counter exhausted: pair again"))?;
        let time = Be64::new(now_ms);
        let id = self.token_id.0;
        let mut buf = Zeroizing::new([0u8; 256]);
        let buf = &mut *buf;
        let (msg_type, len) = match request {
            Request::Open(pin) => {
                let (index, key) = take_pin_key(&mut self.pin_keys)?;
                let proof = pin.proof(&key, MsgType::Open, &id, counter);
                (
                    MsgType::Open,
                    put(
                        buf,
                        &OpenRequest {
                            device_time_ms: time,
                            pin: PinIndex::new(index),
                            proof,
                        },
                    ),
                )
            }
            Request::Close => (MsgType::Close, put(buf, &plain(time))),
            Request::Status => (MsgType::Status, put(buf, &plain(time))),
            Request::TimeSync => (MsgType::TimeSync, put(buf, &plain(time))),
            Request::TxFetch => (
                MsgType::TxFetch,
                put(
                    buf,
                    &TxFetchRequest {
                        device_time_ms: time,
                        zero: [0; 238],
                    },
                ),
            ),
            Request::TxApprove { tx_id, pin } => {
                let (index, key) = take_pin_key(&mut self.pin_keys)?;
                let proof = pin.proof(&key, MsgType::TxApprove, &id, counter);
                (
                    MsgType::TxApprove,
                    put(
                        buf,
                        &TxDecideRequest {
                            device_time_ms: time,
                            tx_id,
                            pin: PinIndex::new(index),
                            proof,
                        },
                    ),
                )
            }
            Request::TxDeny { tx_id } => (
                MsgType::TxDeny,
                put(
                    buf,
                    &TxDecideRequest {
                        device_time_ms: time,
                        tx_id,
                        // TX_DENY carries no PIN: index and padding all zero.
                        pin: PinIndex::new(0),
                        proof: [0; 16],
                    },
                ),
            ),
            Request::ChangePin {
                current,
                new,
                new_duress,
            } => {
                let (index, key) = take_pin_key(&mut self.pin_keys)?;
                let header = Header::request(MsgType::ChangePin, id, counter);
                let block = verifier_block(new, new_duress);
                let body = ChangePinRequest {
                    device_time_ms: time,
                    pin: PinIndex::new(index),
                    proof: current.proof(&key, MsgType::ChangePin, &id, counter),
                    verifiers: key.seal_verifiers(&header, &block)?,
                };
                (MsgType::ChangePin, put(buf, &body))
            }
        };
        let body = buf
            .get(..len)
            .ok_or(DeviceError::OutOfOrder("body too long"))?;
        self.next_counter = next_counter;
        store.save(&self.to_bytes()?)?;
        let len = seal_request(&self.keys.d2s, msg_type, id, counter, body, out)?;
        if self.outstanding.len() == MAX_OUTSTANDING {
            self.outstanding.remove(0);
        }
        self.outstanding.push((counter, msg_type));
        Ok(Transmit {
            len,
            counter,
            msg_type,
        })
    }

    /// Checks and decodes a reply. Replies that are not authentic, not for an outstanding
    /// request, or malformed return [`DeviceError::Dropped`] and change nothing.
    pub fn handle_reply(&mut self, datagram: &mut [u8]) -> Result<Reply, DeviceError> {
        let (msg_type, header) = check_reply(datagram)?;
        let counter = header.counter.get();
        if header.token_id != self.token_id.0 {
            return Err(DropReason::UnexpectedReply.into());
        }
        let slot = self
            .outstanding
            .iter()
            .position(|o| *o == (counter, msg_type))
            .ok_or(DropReason::UnexpectedReply)?;
        let opened = open_reply(&self.keys.s2d, datagram)?;
        let reply = match opened.body {
            ReplyBody::Status(b) => Reply::Status(TokenStatus::from_block(b)?),
            ReplyBody::TxFetch(r) => {
                let status = TokenStatus::from_block(&r.status)?;
                let tx = if status.status == ReplyStatus::Ok {
                    let len = usize::from(r.message_len.get());
                    let message = r
                        .message
                        .get(..len.min(TX_MESSAGE_MAX))
                        .and_then(|m| std::str::from_utf8(m).ok())
                        .ok_or(DropReason::InvalidField)?;
                    Some(PendingTransaction {
                        tx_id: r.tx_id,
                        expires_ms: r.tx_expires_ms.get(),
                        message: message.to_owned(),
                    })
                } else {
                    None
                };
                Reply::Transaction(status, tx)
            }
            ReplyBody::TxDecide(r) => Reply::TxDecided(
                TokenStatus::from_block(&r.status)?,
                r.tx_id,
                TxState::from_byte(r.tx_state).ok_or(DropReason::InvalidField)?,
            ),
            ReplyBody::PairInit(_) => return Err(DropReason::UnexpectedReply.into()),
        };
        self.outstanding.remove(slot);
        Ok(reply)
    }

    /// The one-time code shown at device time `now_ms` (no network needed). Made with the
    /// duress PIN's verifier it is a duress code.
    pub fn one_time_code(&self, pin: &PinVerifier, now_ms: u64) -> Result<String, DeviceError> {
        let params = self.service.otp_params()?;
        Ok(codes::otp_code(
            &self.keys.otp,
            pin,
            params.step(now_ms),
            params,
        ))
    }

    /// The response to an operator's offline validation code (no network needed).
    pub fn offline_response(
        &self,
        pin: &PinVerifier,
        validation_code: &str,
    ) -> Result<String, DeviceError> {
        Ok(codes::group4(&codes::offline_response(
            &self.keys.offline,
            pin,
            validation_code,
        )?))
    }
}

/// Copies a body into the start of `buf` and returns its length.
fn put<T: IntoBytes + Immutable>(buf: &mut [u8; 256], value: &T) -> usize {
    let bytes = value.as_bytes();
    if let Some(dst) = buf.get_mut(..bytes.len()) {
        dst.copy_from_slice(bytes);
    }
    bytes.len()
}

fn plain(time: Be64) -> PlainRequest {
    PlainRequest {
        device_time_ms: time,
        zero: [0; 16],
    }
}
