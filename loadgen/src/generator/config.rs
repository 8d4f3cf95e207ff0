//! What a run is told: the message mix, the socket IO, the [`LoadConfig`] (endpoints, token
//! set, threads, rate, window, counters) and why a run cannot start ([`LoadError`]).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use zoftoken_proto::{MsgType, SecretBytes};

use crate::tokens::TokenSet;

/// The message mix in percent; the four add up to 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    /// STATUS requests, percent.
    pub status: u8,
    /// OPEN requests (with a valid PIN proof), percent.
    pub open: u8,
    /// CLOSE requests, percent.
    pub close: u8,
    /// OPEN requests with a wrong PIN proof (three in a row block the token), percent.
    pub wrong_pin: u8,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            status: 60,
            open: 20,
            close: 20,
            wrong_pin: 0,
        }
    }
}

impl std::str::FromStr for Mix {
    type Err = String;

    /// `status/open/close[/wrong-pin]` in percent, e.g. `60/20/20` or `40/25/25/10`.
    fn from_str(s: &str) -> Result<Mix, String> {
        let parts: Vec<u8> = s
            .split('/')
            .map(|p| p.trim().parse::<u8>().map_err(|e| format!("{p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let (status, open, close, wrong_pin) = match parts[..] {
            [status, open, close] => (status, open, close, 0),
            [status, open, close, wrong] => (status, open, close, wrong),
            _ => {
                return Err(
                    "expected status/open/close[/wrong-pin] percentages, e.g. 60/20/20".into(),
                )
            }
        };
        if u32::from(status) + u32::from(open) + u32::from(close) + u32::from(wrong_pin) != 100 {
            return Err(format!("{s}: the percentages must add up to 100"));
        }
        Ok(Mix {
            status,
            open,
            close,
            wrong_pin,
        })
    }
}

/// The request types the generator sends, in the order of [`Summary::sent_by_type`].
pub const KINDS: [MsgType; 3] = [MsgType::Status, MsgType::Open, MsgType::Close];

/// How a thread moves datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IoChoice {
    /// `std::net::UdpSocket`, one system call per datagram.
    Std,
    /// `zoftoken_net`'s `recvmmsg`/`sendmmsg` driver (batches of 32).
    Mmsg,
    /// `zoftoken_net`'s io_uring driver.
    Uring,
    /// io_uring if the kernel allows it, else `recvmmsg`.
    Auto,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Server endpoints; requests go to them in turn, passing over one that stopped answering
    /// (three requests lost in a row; one request a second checks whether it is back).
    pub endpoints: Vec<SocketAddr>,
    /// The tokens (already paired on the server side, see [`TokenSet::server_mutations`]).
    pub tokens: TokenSet,
    /// Generator threads, each with its own socket and share of the tokens.
    pub threads: usize,
    /// Requests per second over all threads; `None`: flat out (limited by the window).
    pub rate: Option<u64>,
    /// With a `rate`: send once this many requests are due, and sleep until the next group
    /// is due in between. 1 (the default) sends each request when it is due; a larger group
    /// makes the generator wake far less often at low rates (at 1 000/s one at a time costs
    /// it a wake-up per request, taken from the machine it measures).
    pub burst: usize,
    /// How long to send. Replies are awaited for up to `timeout` after that.
    pub duration: Duration,
    /// Requests in flight per thread, at most.
    pub window: usize,
    /// The request mix.
    pub mix: Mix,
    /// A request without a reply after this long is lost.
    pub timeout: Duration,
    /// The socket IO.
    pub io: IoChoice,
    /// Every token's first counter in this run; `None`: the wall clock in microseconds since
    /// the Unix epoch, which is above every counter an earlier run used as long as no run
    /// sent more than one request per token per microsecond of its own duration.
    pub counter_floor: Option<u64>,
    /// Where each token's next counter is kept between runs (8 bytes per token, little
    /// endian; absent: every token starts at 1, as after `loadgen prepare`). Continuous
    /// counters are what phones send; the time-based floor jumps ahead at every run, which
    /// the server handles as reordering (a replay window per token). Takes precedence over
    /// `counter_floor`.
    pub counters_file: Option<std::path::PathBuf>,
    /// Where to write, at the end, what the server acknowledged for each token (see
    /// [`write_acked`]): the crash test compares it with the database after a restart.
    pub acked_file: Option<std::path::PathBuf>,
    /// Set from outside (Ctrl-C) to stop sending early; the replies in flight are still
    /// awaited and the summary is complete.
    pub stop: Option<Arc<AtomicBool>>,
    /// Use only the tokens from this index of the set on (two generators on disjoint tokens
    /// never disturb each other's counters). Default 0.
    pub first_token: u64,
    /// Seed of the run's sequence of (token, request kind) choices; `None`: from the clock,
    /// so that every run makes its own choices, as phones do. (With one fixed sequence,
    /// every run would send each token the same kinds of requests: a token drawn for
    /// STATUS only would send nothing but STATUS in every run, so its counter would run far
    /// ahead of the last one the server persisted, SPEC.md §8.2, unlike a phone's.)
    pub sequence_seed: Option<u64>,
    /// The instance's PIN-tree secret (the server's `MasterKey::pin_tree_secret`), from which
    /// each token's PIN root is derived as the server does: required when the mix has OPENs.
    /// Each OPEN uses the PIN key of index `counter mod 2²⁴` (counters are strictly
    /// increasing per token, so no index repeats within 2²⁴ requests of a token).
    pub pin_tree_secret: Option<SecretBytes>,
}

impl LoadConfig {
    /// Defaults: 1 thread, flat out, 10 s, window 64, mix 60/20/20, timeout 1 s, `mmsg` IO,
    /// time-based counters.
    pub fn new(endpoints: Vec<SocketAddr>, tokens: TokenSet) -> LoadConfig {
        LoadConfig {
            endpoints,
            tokens,
            threads: 1,
            rate: None,
            burst: 1,
            duration: Duration::from_secs(10),
            window: 64,
            mix: Mix::default(),
            timeout: Duration::from_secs(1),
            io: IoChoice::Mmsg,
            counter_floor: None,
            counters_file: None,
            acked_file: None,
            stop: None,
            first_token: 0,
            sequence_seed: None,
            pin_tree_secret: None,
        }
    }
}

/// Why a run could not start or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The configuration cannot be run.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A socket could not be opened.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// A generator thread panicked (a bug).
    #[error("a generator thread failed")]
    Thread,
}
