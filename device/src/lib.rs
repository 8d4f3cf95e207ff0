//! The phone's half of the ZofToken protocol as a sans-IO state machine: the SDK a phone app
//! (or the device command line) builds on.
//!
//! [`Pairing`] completes an enrollment from a deeplink or a manual code in two round trips and
//! yields a [`Token`]. A [`Token`] builds every request of SPEC.md (open, close, status, time
//! sync, transactions, PIN change) into the caller's buffer, matches and checks replies, and
//! computes one-time codes and offline responses without any network. Its state (token id,
//! secret, counter, endpoints, service details, PIN key ring) is saved through the
//! [`StateStore`] trait before every request leaves, so a counter is never used twice, even
//! across a crash.
//!
//! PIN material never crosses the network under keys derived from the token secret alone
//! (SPEC.md §6.3): pairing gives the device a PIN root, sealed under the X25519 exchange, which
//! it expands at once into a [`zoftoken_proto::PinKeyRing`] and forgets. Every PIN request
//! (OPEN, TX_APPROVE, CHANGE_PIN, and PAIR_COMPLETE's sealed verifiers) takes the ring's next
//! key, which the ring then forgets, and names its index; the ring without it is saved with
//! the counter before the request leaves, and a retry is a new request with a new counter
//! and a new key. A copy of the saved state plus recorded traffic therefore allows no offline
//! test of a PIN guess. After 2²⁴ PIN requests the ring is used up and the token must be
//! paired again ([`DeviceError::PairAgain`]); so must a token whose saved state predates
//! PIN keys.
//!
//! It does no IO, reads no clock and draws no randomness of its own: the caller passes the
//! device time and random bytes, sends the datagrams to an endpoint of its choice and feeds
//! the replies back. Choosing endpoints, timeouts and retries belong to the caller (the UDP
//! client is `zoftoken-client`). Argon2id PIN hashing is the caller's to run
//! ([`zoftoken_proto::PinVerifier::derive`]), because it is deliberately slow.
#![forbid(unsafe_code)]

mod error;
mod pairing;
mod store;
mod token;

pub use error::DeviceError;
pub use pairing::{PairOffer, Pairing};
pub use store::{MemoryStore, StateStore};
pub use token::{PendingTransaction, Reply, Request, ServiceInfo, Token, TokenStatus, Transmit};
