//! Blocking UDP transport with endpoint failover.
//!
//! An operation is an [`Exchange`]: it builds a request datagram and recognises the reply.
//! [`Transport::run`] starts at a random endpoint of the token's list, sends, waits up to the
//! attempt's timeout for a reply the exchange accepts (datagrams it does not accept are
//! ignored and the wait goes on), and on timeout, refusal or send error moves to the next
//! endpoint, doubling the timeout (SPEC.md §1.6: 1 s, then doubling, 4 attempts spread over
//! the endpoints; every endpoint is tried at least once).
//!
//! **Retries build a new request.** SPEC.md §1.6 and §2.5 forbid resending a datagram byte
//! for byte (the server drops it as a replay) and the device SDK persists a new counter before
//! each request leaves ([`zoftoken_device::Token::request`]), so every attempt calls
//! [`Exchange::build`] again: a new counter (PAIR_INIT: a new ephemeral key and higher counter;
//! PAIR_COMPLETE: the next counter with the same verifiers). A counter is never used twice.
//! The server may therefore process an operation twice when a reply is lost (two opens, or a
//! second decision answered NO_TRANSACTION); that is the protocol's design.
//!
//! Each attempt uses its own socket connected to the endpoint: only that endpoint's datagrams
//! are received, and an ICMP "port unreachable" ends the attempt at once instead of after the
//! timeout. A reply to an earlier attempt that arrives after the client moved on is not seen
//! (its socket is closed), although the SDK would still accept it.

use std::io::ErrorKind;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};

use crate::ClientError;

/// Largest datagram the client sends or receives (SPEC.md: at most 1200 bytes).
pub const MAX_DATAGRAM: usize = 1200;

/// Timeouts and attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// Timeout of the first attempt; each further attempt doubles it (default 1 s).
    pub timeout: Duration,
    /// Upper bound of an attempt's timeout after doubling (default 8 s).
    pub max_timeout: Duration,
    /// Number of attempts (default 4); raised to the number of endpoints so that each is
    /// tried at least once.
    pub attempts: usize,
    /// Start at a random endpoint (default). `false` starts at the first one, which makes
    /// failover deterministic for tests and debugging.
    pub random_start: bool,
}

impl Default for TransportConfig {
    fn default() -> TransportConfig {
        TransportConfig {
            timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(8),
            attempts: 4,
            random_start: true,
        }
    }
}

/// One operation over the network: how to build each attempt's request and how to recognise
/// its reply.
pub trait Exchange {
    /// What an accepted reply yields.
    type Output;

    /// Builds a **new** request into `out` (at least [`MAX_DATAGRAM`] bytes) and returns its
    /// length. Called once per attempt; an error ends the operation.
    fn build(&mut self, out: &mut [u8]) -> Result<usize, ClientError>;

    /// Looks at a received datagram: `Ok(Some(_))` ends the operation, `Ok(None)` ignores
    /// the datagram (not authentic, not an answer to this operation) and keeps waiting, an
    /// error ends the operation.
    fn accept(&mut self, datagram: &mut [u8]) -> Result<Option<Self::Output>, ClientError>;
}

/// A blocking UDP client for one list of `host:port` endpoints.
#[derive(Clone, Debug)]
pub struct Transport {
    endpoints: Vec<String>,
    config: TransportConfig,
}

/// Why an attempt ended without an answer, or the operation's end.
enum AttemptEnd<T> {
    Answer(T),
    NoAnswer(String),
}

impl Transport {
    /// A transport over `endpoints` (as the token got them at pairing).
    pub fn new(endpoints: Vec<String>, config: TransportConfig) -> Result<Transport, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        Ok(Transport { endpoints, config })
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Runs `exchange` with failover; [`ClientError::NoAnswer`] lists every attempt when no
    /// endpoint answered.
    pub fn run<E: Exchange>(&self, exchange: &mut E) -> Result<E::Output, ClientError> {
        let n = self.endpoints.len();
        let start = if self.config.random_start && n > 1 {
            usize::try_from(OsRng.next_u64() % n as u64).unwrap_or(0)
        } else {
            0
        };
        let attempts = self.config.attempts.max(n);
        let mut timeout = self.config.timeout;
        let mut tried = Vec::with_capacity(attempts);
        for i in 0..attempts {
            let Some(endpoint) = self.endpoints.get((start + i) % n) else {
                break;
            };
            match attempt(endpoint, timeout, exchange)? {
                AttemptEnd::Answer(out) => return Ok(out),
                AttemptEnd::NoAnswer(reason) => tried.push(format!("{endpoint}: {reason}")),
            }
            timeout = timeout.saturating_mul(2).min(self.config.max_timeout);
        }
        Err(ClientError::NoAnswer { tried })
    }
}

fn resolve(endpoint: &str) -> Result<SocketAddr, String> {
    endpoint
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .next()
        .ok_or_else(|| "cannot resolve: no address".to_owned())
}

fn attempt<E: Exchange>(
    endpoint: &str,
    timeout: Duration,
    exchange: &mut E,
) -> Result<AttemptEnd<E::Output>, ClientError> {
    let addr = match resolve(endpoint) {
        Ok(a) => a,
        Err(reason) => return Ok(AttemptEnd::NoAnswer(reason)),
    };
    let local: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0u8; 4], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = match UdpSocket::bind(local).and_then(|s| s.connect(addr).map(|()| s)) {
        Ok(s) => s,
        Err(e) => return Ok(AttemptEnd::NoAnswer(format!("socket: {e}"))),
    };
    let mut buf = zeroize::Zeroizing::new([0u8; MAX_DATAGRAM]);
    let len = exchange.build(&mut *buf)?;
    let datagram = buf.get(..len).ok_or(ClientError::Device(
        zoftoken_device::DeviceError::OutOfOrder("request longer than its buffer"),
    ))?;
    if let Err(e) = socket.send(datagram) {
        return Ok(AttemptEnd::NoAnswer(format!("send failed: {e}")));
    }
    let deadline = Instant::now() + timeout;
    // One byte more than the largest datagram, so that an oversize one is seen as such.
    let mut reply = [0u8; MAX_DATAGRAM + 1];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(AttemptEnd::NoAnswer(format!(
                "no reply within {} ms",
                timeout.as_millis()
            )));
        }
        if let Err(e) = socket.set_read_timeout(Some(remaining)) {
            return Ok(AttemptEnd::NoAnswer(format!("socket: {e}")));
        }
        match socket.recv(&mut reply) {
            Ok(n) => {
                let Some(datagram) = reply.get_mut(..n) else {
                    continue;
                };
                if let Some(out) = exchange.accept(datagram)? {
                    return Ok(AttemptEnd::Answer(out));
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(AttemptEnd::NoAnswer(format!(
                    "no reply within {} ms",
                    timeout.as_millis()
                )));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                return Ok(AttemptEnd::NoAnswer(
                    "refused (port unreachable: no server there)".to_owned(),
                ));
            }
            Err(e) => return Ok(AttemptEnd::NoAnswer(format!("receive failed: {e}"))),
        }
    }
}
