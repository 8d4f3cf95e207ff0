//! The generator: one thread per `threads`, each with its own socket, its own share of the
//! tokens (token `i` belongs to thread `i % threads`, so counters need no synchronisation), a
//! window of requests in flight and an optional rate.

use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zerocopy::{FromBytes, IntoBytes};
use zoftoken_net::{open_driver, probe_uring, Driver, DriverKind, PacketBatch};
use zoftoken_proto::packet::{open, open_reply, seal_request};
use zoftoken_proto::pin_keys::PIN_INDEX_LIMIT;
use zoftoken_proto::wire::{Be64, Header, OpenRequest, PinIndex, PlainRequest, ReplyBody};
use zoftoken_proto::{MsgType, PinVerifier, ReplyStatus, SecretBytes, WireState};

use crate::histogram::Histogram;
use crate::tokens::{DeviceToken, TokenSet};

/// Requests per send batch (as the server's receive batch).
const BATCH: usize = 32;
/// How often a thread hands its counters and latencies to the progress reporter.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Longest single wait for replies (keeps rate pacing and expiry responsive).
const MAX_WAIT: Duration = Duration::from_millis(1);

/// Longest wait for the next group of requests at a low rate (timeouts and the progress
/// line are checked at least this often).
const MAX_IDLE_WAIT: Duration = Duration::from_millis(20);

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
    /// Server endpoints; requests go to them in turn.
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

/// Live figures, once per second.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Since the start of sending.
    pub elapsed: Duration,
    /// Requests sent so far.
    pub sent: u64,
    /// Replies that opened (so far).
    pub answered: u64,
    /// Replies that did not open: echoes (so far).
    pub echoed: u64,
    /// Requests without reply within the timeout (so far).
    pub lost: u64,
    /// Errors so far (see [`Summary::errors`]).
    pub errors: u64,
    /// Requests sent per second over the last interval.
    pub sent_pps: f64,
    /// Replies (answered + echoed) per second over the last interval.
    pub answered_pps: f64,
    /// Median round trip over the last interval, microseconds.
    pub p50_us: u64,
    /// 99th percentile round trip over the last interval, microseconds.
    pub p99_us: u64,
}

impl Progress {
    /// One terminal line.
    pub fn line(&self) -> String {
        format!(
            "{:>5.1}s  sent {:>9.0}/s  replies {:>9.0}/s  lost {}  errors {}  p50 {} µs  p99 {} µs",
            self.elapsed.as_secs_f64(),
            self.sent_pps,
            self.answered_pps,
            self.lost,
            self.errors,
            self.p50_us,
            self.p99_us
        )
    }
}

/// The result of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Requests sent.
    pub sent: u64,
    /// Replies that opened under the token's server-to-device key and matched their request.
    pub answered: u64,
    /// Replies to a request that did not open (an echo server returns the request itself).
    pub echoed: u64,
    /// Requests without a reply within the timeout.
    pub lost: u64,
    /// Send failures, datagrams matching no request in flight (late or unknown), and
    /// replies that opened but did not match their request's type.
    pub errors: u64,
    /// Answered with a status other than OK (wrong PIN, blocked, ...): counted in `answered`
    /// too; non-zero means the server's tokens are not this token set.
    pub refused: u64,
    /// Requests sent per type, in the order of [`KINDS`] (STATUS, OPEN, CLOSE), then the
    /// OPENs with a wrong PIN.
    pub sent_by_type: [u64; 4],
    /// The sending phase.
    pub elapsed: Duration,
    /// `sent / elapsed`.
    pub sent_pps: f64,
    /// `(answered + echoed) / elapsed`.
    pub answered_pps: f64,
    /// Round trip, microseconds, over every reply (answered and echoed).
    pub p50_us: u64,
    /// 〃 99th percentile.
    pub p99_us: u64,
    /// 〃 99.9th percentile.
    pub p999_us: u64,
    /// 〃 maximum.
    pub max_us: u64,
}

impl Summary {
    /// One line of JSON (keys as the field names; `elapsed_s` in seconds).
    pub fn to_json(&self) -> String {
        format!(
            concat!(
                "{{\"sent\":{},\"answered\":{},\"echoed\":{},\"lost\":{},\"errors\":{},",
                "\"refused\":{},\"sent_status\":{},\"sent_open\":{},\"sent_close\":{},",
                "\"sent_wrong_pin\":{},",
                "\"elapsed_s\":{:.3},\"sent_pps\":{:.0},\"answered_pps\":{:.0},",
                "\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}"
            ),
            self.sent,
            self.answered,
            self.echoed,
            self.lost,
            self.errors,
            self.refused,
            self.sent_by_type[0],
            self.sent_by_type[1],
            self.sent_by_type[2],
            self.sent_by_type[3],
            self.elapsed.as_secs_f64(),
            self.sent_pps,
            self.answered_pps,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )
    }

    /// A few human-readable lines.
    pub fn human(&self) -> String {
        let pct = |n: u64| {
            if self.sent == 0 {
                0.0
            } else {
                100.0 * n as f64 / self.sent as f64
            }
        };
        format!(
            "sent      {} in {:.2} s = {:.0} packets/s (status/open/close/wrong PIN {}/{}/{}/{})\n\
             replies   {:.0} packets/s: answered {} ({:.2} %), echoed {} ({:.2} %), refused {}\n\
             lost      {} ({:.3} %), errors {}\n\
             round trip p50 {} µs, p99 {} µs, p999 {} µs, max {} µs",
            self.sent,
            self.elapsed.as_secs_f64(),
            self.sent_pps,
            self.sent_by_type[0],
            self.sent_by_type[1],
            self.sent_by_type[2],
            self.sent_by_type[3],
            self.answered_pps,
            self.answered,
            pct(self.answered),
            self.echoed,
            pct(self.echoed),
            self.refused,
            self.lost,
            pct(self.lost),
            self.errors,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )
    }
}

/// The newest answer the server gave one token (the reply to the request with the highest
/// counter), for the crash check: every reply is sent only after the changes of its receive
/// batch and of every earlier batch are durable, so the state it reports must survive a
/// `kill -9` of the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Acked {
    /// Counter of the request answered (0: never answered).
    pub counter: u64,
    /// The token's state in the reply (a `WireState` byte).
    pub state: u8,
    /// Failed authentications left before blocking, from the reply.
    pub attempts_left: u8,
    /// Counter of the last OPEN or CLOSE sent to the token (0: none).
    pub last_change_sent: u64,
}

impl Acked {
    /// No OPEN or CLOSE was sent after the answered request: the server's state must be
    /// exactly the answered one (otherwise a later, unanswered change may or may not have
    /// been applied).
    pub fn settled(&self) -> bool {
        self.counter > 0 && self.last_change_sent <= self.counter
    }
}

/// Writes `acked` (token `first + i` of `tokens` at index `i`) as text: a `#` header, then one line
/// per token that was answered at least once:
/// `<token id hex> <index> <counter> <state> <attempts_left> <settled 0|1>`, the state by name
/// (`pending`, `closed`, `open`, `blocked`).
pub fn write_acked(
    path: &std::path::Path,
    tokens: &TokenSet,
    first: u64,
    acked: &[Acked],
) -> Result<(), LoadError> {
    use std::fmt::Write as _;
    let mut out = String::from("# token_id index counter state attempts_left settled\n");
    for (i, a) in acked.iter().enumerate().filter(|(_, a)| a.counter > 0) {
        let state = match WireState::from_byte(a.state) {
            Some(WireState::Pending) => "pending",
            Some(WireState::Closed) => "closed",
            Some(WireState::Open) => "open",
            Some(WireState::Blocked) => "blocked",
            None => "unknown",
        };
        let index = first + i as u64;
        let id = tokens.token_id(index);
        let hex: String = id.0.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(
            out,
            "{hex} {index} {} {state} {} {}",
            a.counter,
            a.attempts_left,
            u8::from(a.settled())
        );
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, out)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| LoadError::Config(format!("{}: {e}", path.display())))
}

/// One thread's counters.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    sent: u64,
    answered: u64,
    echoed: u64,
    lost: u64,
    errors: u64,
    refused: u64,
    by_type: [u64; 4],
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.sent += o.sent;
        self.answered += o.answered;
        self.echoed += o.echoed;
        self.lost += o.lost;
        self.errors += o.errors;
        self.refused += o.refused;
        for (a, b) in self.by_type.iter_mut().zip(o.by_type) {
            *a += b;
        }
    }
}

/// What a thread shows the progress reporter.
#[derive(Default)]
struct Shared {
    counts: Mutex<Counts>,
    interval: Mutex<Histogram>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the load described by `config`, calling `progress` about once per second from the
/// calling thread, and returns the summary once every thread has finished (sending for
/// `duration`, then awaiting the last replies for up to `timeout`).
pub fn run(config: &LoadConfig, mut progress: impl FnMut(&Progress)) -> Result<Summary, LoadError> {
    if config.endpoints.is_empty() {
        return Err(LoadError::Config("no endpoint".into()));
    }
    let first = config.first_token;
    let n_tokens = config.tokens.count().saturating_sub(first);
    if n_tokens == 0 {
        return Err(LoadError::Config("no token".into()));
    }
    if config.threads == 0 || config.window == 0 || config.burst == 0 {
        return Err(LoadError::Config(
            "threads, window and burst must be at least 1".into(),
        ));
    }
    if config.rate == Some(0) {
        return Err(LoadError::Config("rate must be at least 1".into()));
    }
    if (config.mix.open > 0 || config.mix.wrong_pin > 0) && config.pin_tree_secret.is_none() {
        return Err(LoadError::Config(
            "OPEN requests need the instance's PIN-tree secret (from the server's master key)"
                .into(),
        ));
    }
    let kind = match config.io {
        IoChoice::Std => None,
        IoChoice::Mmsg => Some(DriverKind::Mmsg),
        IoChoice::Uring => {
            probe_uring().map_err(LoadError::Config)?;
            Some(DriverKind::Uring)
        }
        IoChoice::Auto => Some(match probe_uring() {
            Ok(()) => DriverKind::Uring,
            Err(_) => DriverKind::Mmsg,
        }),
    };
    let floor = config.counter_floor.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64)
    });
    let sequence = config.sequence_seed.unwrap_or_else(clock_sequence_seed);
    let threads = config.threads.min(n_tokens as usize).max(1);
    let saved = match &config.counters_file {
        Some(path) => Some(read_counters(path, n_tokens)?),
        None => None,
    };
    let initial = |t: usize, n: usize| -> Vec<u64> {
        match &saved {
            Some(all) => (t..all.len())
                .step_by(threads)
                .map(|i| all.get(i).copied().unwrap_or(1))
                .collect(),
            None => vec![floor.max(1); n],
        }
    };
    // Sockets are opened up front so that a failure is reported before any load.
    let mut sockets = Vec::with_capacity(threads);
    for _ in 0..threads {
        sockets.push(Sock::open(kind, config.endpoints.first())?);
    }
    // Each thread derives its tokens' keys first; sending starts when all are ready.
    let barrier = std::sync::Barrier::new(threads + 1);
    let shared: Vec<Arc<Shared>> = (0..threads).map(|_| Arc::default()).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = sockets
            .into_iter()
            .enumerate()
            .filter_map(|(t, sock)| {
                let sh = shared.get(t)?.clone();
                let barrier = &barrier;
                Some(scope.spawn(move || {
                    let tokens: Vec<DeviceToken> = (t as u64..n_tokens)
                        .step_by(threads)
                        .map(|i| {
                            config
                                .tokens
                                .device_token(first + i, config.pin_tree_secret.as_ref())
                        })
                        .collect();
                    let counters = initial(t, tokens.len());
                    barrier.wait();
                    let start = Instant::now();
                    Worker::new(config, (t, threads), sequence, tokens, sock, counters, &sh)
                        .run(start)
                }))
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut last = Counts::default();
        let mut last_t = start;
        let mut tick = 1u32;
        while !handles.iter().all(|h| h.is_finished()) {
            let next = start + Duration::from_secs(1) * tick;
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(50)));
                continue;
            }
            tick += 1;
            let mut c = Counts::default();
            let mut h = Histogram::new();
            for s in &shared {
                c.add(&lock(&s.counts));
                let mut i = lock(&s.interval);
                h.merge(&i);
                i.clear();
            }
            let dt = now.duration_since(last_t).as_secs_f64().max(1e-9);
            progress(&Progress {
                elapsed: now.duration_since(start),
                sent: c.sent,
                answered: c.answered,
                echoed: c.echoed,
                lost: c.lost,
                errors: c.errors,
                sent_pps: (c.sent - last.sent) as f64 / dt,
                answered_pps: ((c.answered + c.echoed) - (last.answered + last.echoed)) as f64 / dt,
                p50_us: h.quantile(0.5),
                p99_us: h.quantile(0.99),
            });
            last = c;
            last_t = now;
        }
        let mut total = Counts::default();
        let mut hist = Histogram::new();
        let mut elapsed = Duration::ZERO;
        let mut next = vec![1u64; n_tokens as usize];
        let mut acked = if config.acked_file.is_some() {
            vec![Acked::default(); n_tokens as usize]
        } else {
            Vec::new()
        };
        for (t, h) in handles.into_iter().enumerate() {
            let (c, h, e, counters, acks) = h.join().map_err(|_| LoadError::Thread)?;
            for (j, a) in acks.into_iter().enumerate() {
                if let Some(slot) = acked.get_mut(t + j * threads) {
                    *slot = a;
                }
            }
            total.add(&c);
            hist.merge(&h);
            elapsed = elapsed.max(e);
            for (j, counter) in counters.into_iter().enumerate() {
                if let Some(slot) = next.get_mut(t + j * threads) {
                    *slot = counter;
                }
            }
        }
        if let Some(path) = &config.counters_file {
            write_counters(path, &next)?;
        }
        if let Some(path) = &config.acked_file {
            write_acked(path, &config.tokens, first, &acked)?;
        }
        let secs = elapsed.as_secs_f64().max(1e-9);
        Ok(Summary {
            sent: total.sent,
            answered: total.answered,
            echoed: total.echoed,
            lost: total.lost,
            errors: total.errors,
            refused: total.refused,
            sent_by_type: total.by_type,
            elapsed,
            sent_pps: total.sent as f64 / secs,
            answered_pps: (total.answered + total.echoed) as f64 / secs,
            p50_us: hist.quantile(0.5),
            p99_us: hist.quantile(0.99),
            p999_us: hist.quantile(0.999),
            max_us: hist.max(),
        })
    })
}

/// A sequence seed from the clock (what `LoadConfig::sequence_seed: None` uses): a new one
/// every run.
pub(crate) fn clock_sequence_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Each token's next counter from `path` (absent: all 1).
fn read_counters(path: &std::path::Path, count: u64) -> Result<Vec<u64>, LoadError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![1; count as usize]),
        Err(e) => return Err(LoadError::Config(format!("{}: {e}", path.display()))),
    };
    if bytes.len() as u64 != count * 8 {
        return Err(LoadError::Config(format!(
            "{}: holds {} counters, the token set has {count} (another set? delete the file \
             after a new `loadgen prepare`)",
            path.display(),
            bytes.len() / 8
        )));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])).max(1))
        .collect())
}

/// Writes the next counters to `path` atomically. Each token's counter written is the higher
/// of this run's and the file's: another generator that used the same file meanwhile (a
/// mistake: the two runs reuse counters, and the server drops those as replays) cannot make
/// it go back, so the next run starts above every counter either used.
fn write_counters(path: &std::path::Path, counters: &[u64]) -> Result<(), LoadError> {
    let now = read_counters(path, counters.len() as u64).unwrap_or_default();
    let bytes: Vec<u8> = counters
        .iter()
        .enumerate()
        .map(|(i, c)| now.get(i).map_or(*c, |n| (*c).max(*n)))
        .flat_map(|c| c.to_le_bytes())
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| LoadError::Config(format!("{}: {e}", path.display())))
}

/// A thread's socket.
enum Sock {
    /// The socket, whether it is non-blocking, its read timeout.
    Std(UdpSocket, bool, Duration),
    Driver(Box<dyn Driver>),
}

impl Sock {
    fn open(kind: Option<DriverKind>, first: Option<&SocketAddr>) -> io::Result<Sock> {
        let local = match first {
            Some(SocketAddr::V6(_)) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
            _ => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        };
        Ok(match kind {
            None => {
                let s = UdpSocket::bind(local)?;
                s.set_nonblocking(true)?;
                s.set_read_timeout(Some(MAX_WAIT))?;
                Sock::Std(s, true, MAX_WAIT)
            }
            Some(kind) => {
                // Port 0: every thread gets its own port despite SO_REUSEPORT.
                Sock::Driver(open_driver(kind, local)?.0)
            }
        })
    }

    /// Sends the batch; returns how many datagrams the socket refused (best effort: the
    /// drivers count refusals without saying which).
    fn send(&mut self, batch: &PacketBatch) -> u64 {
        match self {
            Sock::Std(s, ..) => batch
                .iter()
                .filter(|(peer, d)| s.send_to(d, *peer).is_err())
                .count() as u64,
            Sock::Driver(d) => {
                let before = d
                    .stats()
                    .send_errors
                    .load(std::sync::atomic::Ordering::Relaxed);
                let failed = d.send(batch).is_err();
                let after = d
                    .stats()
                    .send_errors
                    .load(std::sync::atomic::Ordering::Relaxed);
                if failed && after == before {
                    batch.len() as u64
                } else {
                    after - before
                }
            }
        }
    }

    /// Receives what is there, waiting up to `wait` for the first datagram.
    fn recv(&mut self, into: &mut PacketBatch, wait: Duration) -> io::Result<usize> {
        match self {
            Sock::Driver(d) => d.recv(into, wait),
            Sock::Std(s, nonblocking, timeout) => {
                // Whole milliseconds, as the drivers' poll, so that the timeout changes
                // (a system call) only now and then.
                let wait = Duration::from_millis(wait.as_micros().div_ceil(1000) as u64);
                if !wait.is_zero() && wait != *timeout {
                    s.set_read_timeout(Some(wait))?;
                    *timeout = wait;
                }
                let mut n = 0;
                while !into.is_full() {
                    let want_block = n == 0 && !wait.is_zero();
                    if want_block == *nonblocking {
                        s.set_nonblocking(!want_block)?;
                        *nonblocking = !want_block;
                    }
                    let Some(buf) = into.next_buffer() else { break };
                    match s.recv_from(buf) {
                        Ok((len, peer)) => {
                            into.commit(peer, len);
                            n += 1;
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            break
                        }
                        Err(e) => return if n == 0 { Err(e) } else { Ok(n) },
                    }
                }
                Ok(n)
            }
        }
    }
}

/// Draws of a token before a build gives up for now when every one drawn is busy.
const REDRAWS: usize = 16;

/// A request in flight.
struct Pending {
    sent: Instant,
    token: usize,
    kind: MsgType,
}

struct Worker<'a> {
    config: &'a LoadConfig,
    tokens: Vec<DeviceToken>,
    verifier: PinVerifier,
    counters: Vec<u64>,
    sock: Sock,
    shared: &'a Shared,
    rng: u64,
    next_endpoint: usize,
    rate: Option<f64>,
    inflight: HashMap<([u8; 16], u64), Pending>,
    /// Per token: a request of it is in flight. A phone sends its next request only after the
    /// answer to the last one (or after giving up on it), and so does the generator: the
    /// server does not answer a token's request while an earlier change of the token is being
    /// written.
    busy: Vec<bool>,
    /// Per token, when the acknowledged answers are recorded (else empty).
    acked: Vec<Acked>,
    order: VecDeque<(([u8; 16], u64), Instant)>,
    counts: Counts,
    total: Histogram,
    interval: Histogram,
}

impl<'a> Worker<'a> {
    fn new(
        config: &'a LoadConfig,
        (t, threads): (usize, usize),
        sequence: u64,
        tokens: Vec<DeviceToken>,
        sock: Sock,
        counters: Vec<u64>,
        shared: &'a Shared,
    ) -> Worker<'a> {
        let n_tokens = tokens.len();
        Worker {
            config,
            tokens,
            verifier: config.tokens.verifier(),
            counters,
            sock,
            shared,
            rng: (config.tokens.seed()
                ^ sequence.wrapping_mul(0xD6E8_FEB8_6659_FD93)
                ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                | 1,
            next_endpoint: t,
            rate: config.rate.map(|r| r as f64 / threads as f64),
            inflight: HashMap::with_capacity(config.window * 2),
            busy: vec![false; n_tokens],
            acked: if config.acked_file.is_some() {
                vec![Acked::default(); n_tokens]
            } else {
                Vec::new()
            },
            order: VecDeque::with_capacity(config.window * 2),
            counts: Counts::default(),
            total: Histogram::new(),
            interval: Histogram::new(),
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: cheap, and reproducible with a fixed `sequence_seed`.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Sends until `duration`, then drains; returns the counters, the latency histogram and
    /// the length of the sending phase.
    fn run(mut self, start: Instant) -> (Counts, Histogram, Duration, Vec<u64>, Vec<Acked>) {
        let end = start + self.config.duration;
        let mut out = PacketBatch::with_capacity(BATCH);
        let mut inb = PacketBatch::with_capacity(BATCH * 2);
        let mut last_flush = start;
        let mut send_end = None;
        loop {
            let now = Instant::now();
            let stopped = self
                .config
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed));
            let sending = now < end && !stopped;
            if !sending {
                send_end.get_or_insert(now);
                if self.inflight.is_empty() {
                    break;
                }
            }
            let mut built = 0;
            // With a rate: when the next group of requests is due (the wait below ends
            // there instead of polling every MAX_WAIT).
            let mut next_due = None;
            if sending {
                let mut n = self
                    .config
                    .window
                    .saturating_sub(self.inflight.len())
                    .min(BATCH);
                if let Some(r) = self.rate {
                    let due = (now.duration_since(start).as_secs_f64() * r) as u64;
                    let owed = due.saturating_sub(self.counts.sent) as usize;
                    let burst = self.config.burst;
                    n = if owed >= burst { n.min(owed) } else { 0 };
                    let group_end = self.counts.sent + burst as u64;
                    next_due = Some(start + Duration::from_secs_f64(group_end as f64 / r));
                }
                if n > 0 {
                    built = self.build(&mut out, n, now);
                    let refused = self.sock.send(&out);
                    self.counts.sent += built as u64 - refused;
                    self.counts.errors += refused;
                }
            }
            let wait = match next_due {
                _ if built > 0 => Duration::ZERO,
                // Replies still wake the receive at once; only an idle wait is longer. (Due
                // already but the window is full: wait for replies as without a rate.)
                Some(at) if at > now => (at - now).min(MAX_IDLE_WAIT),
                _ => MAX_WAIT,
            };
            inb.clear();
            match self.sock.recv(&mut inb, wait) {
                Ok(_) => {}
                Err(_) => self.counts.errors += 1,
            }
            if !inb.is_empty() {
                let now = Instant::now();
                for i in 0..inb.len() {
                    if let Some((_, d)) = inb.get_mut(i) {
                        self.reply(d, now);
                    }
                }
            }
            self.expire(Instant::now());
            if now.duration_since(last_flush) >= FLUSH_EVERY {
                self.flush();
                last_flush = now;
            }
        }
        self.flush();
        let elapsed = send_end.unwrap_or(end).duration_since(start);
        (self.counts, self.total, elapsed, self.counters, self.acked)
    }

    /// Builds `n` requests into `out` (cleared first); returns how many.
    fn build(&mut self, out: &mut PacketBatch, n: usize, now: Instant) -> usize {
        out.clear();
        let device_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let time = Be64::new(device_time);
        let mix = self.config.mix;
        let status_pct = u64::from(mix.status);
        let open_pct = status_pct + u64::from(mix.open);
        let close_pct = open_pct + u64::from(mix.close);
        let endpoints = self.config.endpoints.len().max(1);
        let mut built = 0;
        for _ in 0..n {
            // A token with a request in flight is drawn again (a few times at most: with the
            // window far below the tokens, almost never). The sequence of requests then depends
            // on timing only where a draw hit a busy token.
            let mut j = (self.next() % self.tokens.len().max(1) as u64) as usize;
            for _ in 0..REDRAWS {
                if !self.busy.get(j).copied().unwrap_or(false) {
                    break;
                }
                j = (self.next() % self.tokens.len().max(1) as u64) as usize;
            }
            if self.busy.get(j).copied().unwrap_or(false) {
                break;
            }
            let roll = self.next() % 100;
            let (Some(token), Some(counter)) = (self.tokens.get(j), self.counters.get_mut(j))
            else {
                break;
            };
            let c = *counter;
            *counter += 1;
            let (kind, k) = if roll < status_pct {
                (MsgType::Status, 0)
            } else if roll < open_pct {
                (MsgType::Open, 1)
            } else if roll < close_pct {
                (MsgType::Close, 2)
            } else {
                (MsgType::Open, 3)
            };
            if kind != MsgType::Status {
                if let Some(a) = self.acked.get_mut(j) {
                    a.last_change_sent = c;
                }
            }
            let plain = PlainRequest {
                device_time_ms: time,
                zero: [0; 16],
            };
            let opened;
            let body: &[u8] = if kind == MsgType::Open {
                // A fresh PIN index per request (the counter's low bits) and its key, derived
                // from the token's PIN root as the server does (three keyed hashes).
                let index = (c % u64::from(PIN_INDEX_LIMIT)) as u32;
                let Some(Ok(key)) = token.pin_root.as_ref().map(|r| r.key(index)) else {
                    self.counts.errors += 1;
                    continue;
                };
                let mut proof = self.verifier.proof(&key, kind, &token.id.0, c);
                if k == 3 {
                    // A wrong PIN: any other proof.
                    proof[0] ^= 0x5a;
                }
                opened = OpenRequest {
                    device_time_ms: time,
                    pin: PinIndex::new(index),
                    proof,
                };
                opened.as_bytes()
            } else {
                plain.as_bytes()
            };
            let Some(peer) = self
                .config
                .endpoints
                .get(self.next_endpoint % endpoints)
                .copied()
            else {
                break;
            };
            let Some(buf) = out.next_buffer() else { break };
            let Ok(len) = seal_request(&token.keys.d2s, kind, token.id.0, c, body, buf) else {
                self.counts.errors += 1;
                continue;
            };
            out.commit(peer, len);
            self.next_endpoint = self.next_endpoint.wrapping_add(1);
            if let Some(t) = self.counts.by_type.get_mut(k) {
                *t += 1;
            }
            let key = (token.id.0, c);
            if let Some(b) = self.busy.get_mut(j) {
                *b = true;
            }
            self.inflight.insert(
                key,
                Pending {
                    sent: now,
                    token: j,
                    kind,
                },
            );
            self.order.push_back((key, now));
            built += 1;
        }
        built
    }

    /// Matches a datagram to its request and opens it.
    fn reply(&mut self, d: &mut [u8], now: Instant) {
        let Ok((header, _)) = Header::read_from_prefix(d) else {
            self.counts.errors += 1;
            return;
        };
        let key = (header.token_id, header.counter.get());
        let Some(p) = self.inflight.remove(&key) else {
            self.counts.errors += 1;
            return;
        };
        if let Some(b) = self.busy.get_mut(p.token) {
            *b = false;
        }
        let us = now.duration_since(p.sent).as_micros() as u64;
        self.total.record(us);
        self.interval.record(us);
        let Some(token) = self.tokens.get(p.token) else {
            self.counts.errors += 1;
            return;
        };
        match open_reply(&token.keys.s2d, d) {
            Ok(r) if r.msg_type == p.kind => {
                self.counts.answered += 1;
                if let ReplyBody::Status(s) = r.body {
                    if s.status != ReplyStatus::Ok as u8 {
                        self.counts.refused += 1;
                    }
                    if let Some(a) = self.acked.get_mut(p.token) {
                        if key.1 > a.counter {
                            a.counter = key.1;
                            a.state = s.state;
                            a.attempts_left = s.attempts_left;
                        }
                    }
                }
            }
            Ok(_) => self.counts.errors += 1,
            Err(_) => {
                // The same AEAD work as a genuine reply, so that echo and server runs cost
                // the generator the same per packet.
                let _ = open(&token.keys.s2d, d);
                self.counts.echoed += 1;
            }
        }
    }

    /// Counts requests older than the timeout as lost and forgets them.
    fn expire(&mut self, now: Instant) {
        while let Some((key, sent)) = self.order.front().copied() {
            if !self.inflight.contains_key(&key) {
                self.order.pop_front();
            } else if now.duration_since(sent) >= self.config.timeout {
                if let Some(p) = self.inflight.remove(&key) {
                    if let Some(b) = self.busy.get_mut(p.token) {
                        *b = false;
                    }
                }
                self.order.pop_front();
                self.counts.lost += 1;
            } else {
                break;
            }
        }
    }

    fn flush(&mut self) {
        *lock(&self.shared.counts) = self.counts;
        lock(&self.shared.interval).merge(&self.interval);
        self.interval.clear();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_written_never_go_back() {
        let dir = std::env::temp_dir().join(format!("zoftoken-counters-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("counters");
        let _ = std::fs::remove_file(&path);
        assert_eq!(super::read_counters(&path, 3).unwrap(), vec![1, 1, 1]);
        super::write_counters(&path, &[5, 1, 9]).unwrap();
        // A run that started from the older file writes lower counters for some tokens.
        super::write_counters(&path, &[3, 7, 9]).unwrap();
        assert_eq!(super::read_counters(&path, 3).unwrap(), vec![5, 7, 9]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
