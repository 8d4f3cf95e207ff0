//! The ZofToken wire protocol, version 1: a sans-IO codec for both ends of the encrypted UDP
//! protocol between phone apps and the server, as specified normatively in `SPEC.md` beside
//! this crate.
//!
//! It parses and writes datagrams in the caller's buffers (the fixed [`wire::Header`] and every
//! body are parsed in place with `zerocopy`), seals and opens them with ChaCha20-Poly1305
//! ([`aead::PacketKey`]), derives every key with BLAKE3 ([`keys`]), runs the X25519 pairing
//! ([`pairing::Ephemeral`]), turns PINs into Argon2id verifiers and proofs ([`pin`]) under
//! per-request PIN keys from a forward-secure tree ([`pin_keys`]), computes
//! one-time, offline and manual enrollment codes ([`codes`]), standard RFC 6238 codes
//! ([`totp`]), deeplinks ([`deeplink`]), and provides the anti-replay window ([`replay`]) and
//! freshness check ([`clock`]).
//!
//! It does no IO, reads no clock and draws no randomness: time and random bytes are
//! arguments, so every result is reproducible (the vectors in `vectors/` depend on it). It
//! keeps no token state; the engine (server) and `zoftoken-device` (phone) do.
//!
//! Nothing here panics on input from the network: every check returns a [`DropReason`].
//!
//! Module dependencies run one way: [`wire`] (layouts and cheap checks) and [`error`] at the
//! bottom; [`aead`], [`keys`], [`pin_keys`], [`pin`], [`codes`], [`packet`], [`pairing`] build
//! on them; [`clock`], [`replay`], [`totp`] and [`deeplink`] stand alone.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod aead;
pub mod clock;
pub mod codes;
pub mod deeplink;
pub mod error;
pub mod keys;
pub mod packet;
pub mod pairing;
pub mod pin;
pub mod pin_keys;
pub mod replay;
pub mod totp;
pub mod wire;

pub use error::{DropReason, Error};
pub use keys::{EnrollmentKeys, EnrollmentSecret, SecretBytes, TokenId, TokenKeys, TokenSecret};
pub use pin::{PinMatch, PinVerifier};
pub use pin_keys::{PinKey, PinKeyRing, PinRoot};
pub use wire::{Header, MsgType, ReplyStatus, TxState, WireState};
