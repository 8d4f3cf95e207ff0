//! The ZofToken load generator (`zoftoken loadgen`): drives a server with the device protocol's
//! OPEN/CLOSE/STATUS requests from many simulated phones, at a target rate or flat out, and
//! reports packets per second sent and answered, losses and round-trip percentiles.
//!
//! - [`TokenSet`]: a deterministic set of paired tokens from (service, seed, count). The same
//!   set gives the server side ([`TokenSet::server_mutations`] for the database,
//!   [`TokenSet::record`] for an engine) and the device side (ids and packet keys): nothing
//!   is exchanged through files.
//! - [`run`] with a [`LoadConfig`]: one thread per socket, each owning a share of the tokens
//!   and their counters (strictly increasing, above a wall-clock floor so that successive runs
//!   never repeat a counter), keeping a window of requests in flight across the endpoints;
//!   every reply is matched to its request by token id and counter and opened with the
//!   token's server-to-device key. Replies that do not open count as *echoed* (what a UDP
//!   echo server returns, the baseline of the server benchmark), requests without a reply
//!   within the timeout as *lost*. Returns a [`Summary`] (with [`Summary::to_json`]); a
//!   [`Progress`] is reported once per second.
//! - [`LoadgenArgs`] and [`PrepareArgs`]: the command line (clap) for the server binary.
//!
//! It does not pair tokens over the protocol (PAIR_INIT/PAIR_COMPLETE): the tokens are written
//! into the server's database as already paired, with one shared PIN verifier (no Argon2id).
//! It sends no other message types, and it knows nothing of the server's storage: the caller
//! commits the mutations. The latency histogram is [`Histogram`] (log-linear, ≤ 1.6 % error).
#![forbid(unsafe_code)]

mod cli;
mod generator;
mod histogram;
mod tokens;

pub use cli::{LoadgenArgs, PrepareArgs};
pub use generator::{
    run, write_acked, Acked, IoChoice, LoadConfig, LoadError, Mix, Progress, Summary, KINDS,
};
pub use histogram::Histogram;
pub use tokens::{DeviceToken, TokenSet};
