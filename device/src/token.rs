use serde::{Deserialize, Serialize};
use zerocopy::{Immutable, IntoBytes};
use zeroize::Zeroizing;
use zoftoken_proto::codes::{self, OtpParams};
use zoftoken_proto::packet::{open_reply, seal_request};
use zoftoken_proto::wire::{
    check_reply, Alphabet, Be64, ChangePinRequest, OpenRequest, PlainRequest, ReplyBody,
    StatusBlock, TxDecideRequest, TxFetchRequest, TX_MESSAGE_MAX, VERIFIER_FLAG_DURESS,
};
use zoftoken_proto::{
    DropReason, MsgType, PinVerifier, ReplyStatus, TokenId, TokenKeys, TokenSecret, TxState,
    WireState,
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

#[derive(Serialize, Deserialize)]
struct Persisted {
    version: u32,
    token_id: String,
    secret: Zeroizing<String>,
    next_counter: u64,
    service: ServiceInfo,
}

/// A paired token on the device.
#[derive(Debug)]
pub struct Token {
    token_id: TokenId,
    secret: TokenSecret,
    keys: TokenKeys,
    next_counter: u64,
    service: ServiceInfo,
    outstanding: Vec<(u64, MsgType)>,
}

impl Token {
    pub(crate) fn new(
        token_id: TokenId,
        secret: TokenSecret,
        next_counter: u64,
        service: ServiceInfo,
    ) -> Token {
        let keys = secret.keys();
        Token {
            token_id,
            secret,
            keys,
            next_counter,
            service,
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

    /// Serializes the state (contains the token secret: store it protected).
    pub fn to_bytes(&self) -> Result<Vec<u8>, DeviceError> {
        let p = Persisted {
            version: 1,
            token_id: self.token_id.to_hex(),
            secret: Zeroizing::new(hex::encode(self.secret.expose())),
            next_counter: self.next_counter,
            service: self.service.clone(),
        };
        serde_json::to_vec(&p).map_err(|e| DeviceError::Store(e.to_string()))
    }

    /// Restores a token from [`to_bytes`](Self::to_bytes) output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Token, DeviceError> {
        let bad = |m: &str| DeviceError::CorruptState(m.to_owned());
        let p: Persisted = serde_json::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
        if p.version != 1 {
            return Err(bad("unknown state version"));
        }
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
        Ok(Token::new(
            TokenId(id),
            TokenSecret::from_bytes(secret),
            p.next_counter,
            p.service,
        ))
    }

    /// Loads the token saved in `store`.
    pub fn load(store: &dyn StateStore) -> Result<Option<Token>, DeviceError> {
        store.load()?.map(|b| Token::from_bytes(&b)).transpose()
    }

    /// Builds `request` into `out` (at least 1200 bytes is always enough). The new counter is
    /// saved to `store` before the datagram is returned; if saving fails nothing is sent.
    pub fn request(
        &mut self,
        store: &mut dyn StateStore,
        request: Request<'_>,
        now_ms: u64,
        out: &mut [u8],
    ) -> Result<Transmit, DeviceError> {
        let counter = self.next_counter;
        let time = Be64::new(now_ms);
        let id = self.token_id.0;
        let mut buf = Zeroizing::new([0u8; 256]);
        let buf = &mut *buf;
        let (msg_type, len) = match request {
            Request::Open(pin) => {
                let proof = pin.proof(MsgType::Open, &id, counter);
                (
                    MsgType::Open,
                    put(
                        buf,
                        &OpenRequest {
                            device_time_ms: time,
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
                let proof = pin.proof(MsgType::TxApprove, &id, counter);
                (
                    MsgType::TxApprove,
                    put(
                        buf,
                        &TxDecideRequest {
                            device_time_ms: time,
                            tx_id,
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
                        proof: [0; 16],
                    },
                ),
            ),
            Request::ChangePin {
                current,
                new,
                new_duress,
            } => {
                if new_duress.is_some() && !self.service.duress_allowed {
                    return Err(DeviceError::OutOfOrder(
                        "the service does not allow a duress PIN",
                    ));
                }
                let body = ChangePinRequest {
                    device_time_ms: time,
                    proof: current.proof(MsgType::ChangePin, &id, counter),
                    pin_verifier: *new.expose(),
                    duress_verifier: new_duress.map(|d| *d.expose()).unwrap_or([0; 32]),
                    flags: if new_duress.is_some() {
                        VERIFIER_FLAG_DURESS
                    } else {
                        0
                    },
                    zero: [0; 7],
                };
                (MsgType::ChangePin, put(buf, &body))
            }
        };
        let body = buf
            .get(..len)
            .ok_or(DeviceError::OutOfOrder("body too long"))?;
        self.next_counter = counter
            .checked_add(1)
            .ok_or(DeviceError::OutOfOrder("counter exhausted: pair again"))?;
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
