//! A paired token in use: its state file loaded and locked, a request sent with failover (a
//! new counter at every attempt), a refusal turned into its error, and the PIN asked for and
//! hashed into a verifier.

use std::time::{SystemTime, UNIX_EPOCH};

use zoftoken_device::{DeviceError, Reply, Request, Token, TokenStatus};
use zoftoken_proto::{PinVerifier, ReplyStatus};

use super::args::DeviceOptions;
use super::output::state_name;
use crate::pin::PinSource;
use crate::state::{FileStore, StateLock};
use crate::transport::{Exchange, Transport};
use crate::ClientError;

/// The device time (Unix ms), read at each request.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The locked state file and its token.
pub(super) struct Loaded {
    pub(super) store: FileStore,
    pub(super) token: Token,
    _lock: StateLock,
}

/// Locks the state file and loads its token.
pub(super) fn load(opts: &DeviceOptions) -> Result<Loaded, ClientError> {
    let store = FileStore::new(&opts.state);
    let lock = store.lock()?;
    let bytes = store
        .read()?
        .ok_or_else(|| ClientError::NotPaired(opts.state.clone()))?;
    let token = Token::from_bytes(&bytes).map_err(|e| match e {
        DeviceError::PairAgain(why) => ClientError::PairAgain(format!(
            "the token in state file {} cannot be used: {why}",
            opts.state.display()
        )),
        DeviceError::CorruptState(m) => ClientError::StateFile {
            path: opts.state.clone(),
            message: format!("corrupt token state: {m}"),
        },
        other => ClientError::StateFile {
            path: opts.state.clone(),
            message: format!("corrupt token state: {other}"),
        },
    })?;
    Ok(Loaded {
        store,
        token,
        _lock: lock,
    })
}

/// A request of a paired token, rebuilt (new counter) at every attempt.
struct TokenExchange<'a, 'p> {
    token: &'a mut Token,
    store: &'a mut FileStore,
    request: Request<'p>,
}

impl Exchange for TokenExchange<'_, '_> {
    type Output = Reply;

    fn build(&mut self, out: &mut [u8]) -> Result<usize, ClientError> {
        Ok(self
            .token
            .request(self.store, self.request, now_ms(), out)?
            .len)
    }

    fn accept(&mut self, datagram: &mut [u8]) -> Result<Option<Reply>, ClientError> {
        let reply = match self.token.handle_reply(datagram) {
            Ok(r) => r,
            Err(DeviceError::Dropped(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let answers = match (&self.request, &reply) {
            (Request::TxFetch, Reply::Transaction(..)) => true,
            (Request::TxApprove { tx_id, .. }, Reply::TxDecided(_, id, _))
            | (Request::TxDeny { tx_id }, Reply::TxDecided(_, id, _)) => tx_id == id,
            (
                Request::Open(_)
                | Request::Close
                | Request::Status
                | Request::TimeSync
                | Request::ChangePin { .. },
                Reply::Status(_),
            ) => true,
            _ => false,
        };
        Ok(answers.then_some(reply))
    }
}

/// Sends a request of the loaded token (failover over its endpoints) and returns the reply
/// that answers it.
pub(super) fn send(
    loaded: &mut Loaded,
    opts: &DeviceOptions,
    request: Request<'_>,
) -> Result<Reply, ClientError> {
    let transport = Transport::new(
        loaded.token.service().endpoints.clone(),
        opts.transport.clone(),
    )?;
    transport.run(&mut TokenExchange {
        token: &mut loaded.token,
        store: &mut loaded.store,
        request,
    })
}

/// Turns a refusal into its error.
pub(super) fn check(status: &TokenStatus) -> Result<(), ClientError> {
    match status.status {
        ReplyStatus::Ok => Ok(()),
        ReplyStatus::WrongPin => Err(ClientError::WrongPin {
            attempts_left: status.attempts_left,
        }),
        ReplyStatus::Blocked => Err(ClientError::Blocked),
        ReplyStatus::NotPaired => Err(ClientError::ServerNotPaired),
        ReplyStatus::NoTransaction => Err(ClientError::NoTransaction),
        ReplyStatus::Refused => Err(ClientError::Refused(format!(
            "not allowed while the token is {}",
            state_name(status.state)
        ))),
    }
}

/// Asks for the PIN (or the duress PIN) and derives its verifier for the token.
pub(super) fn verifier(
    pins: &mut dyn PinSource,
    token: &Token,
    duress: bool,
) -> Result<PinVerifier, ClientError> {
    let pin = pins.read_pin(if duress { "Duress PIN: " } else { "PIN: " })?;
    ascii_pin(&pin)?;
    Ok(PinVerifier::derive(&pin, &token.token_id())?)
}

/// The protocol hashes a PIN byte for byte, so a PIN with characters outside ASCII would have
/// to be brought to Unicode NFC first (SPEC.md §6.1) or the same PIN typed on another keyboard
/// would not match. This client accepts ASCII PINs only (digits recommended) and says so.
pub(super) fn ascii_pin(pin: &str) -> Result<(), ClientError> {
    if pin.is_ascii() {
        Ok(())
    } else {
        Err(ClientError::BadInput(
            "a PIN must be ASCII characters (digits recommended)".into(),
        ))
    }
}
