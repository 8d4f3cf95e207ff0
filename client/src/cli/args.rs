//! The device commands (`zoftoken device …`) as library functions.
//!
//! Embedding: flatten [`DeviceArgs`] into a clap subcommand and call [`DeviceArgs::main`] (or
//! [`DeviceArgs::run`] to handle the error yourself). Programmatic use and tests call [`run`]
//! with a [`DeviceCmd`], [`DeviceOptions`] and a [`PinSource`].
//!
//! One state file holds one token. The current time is read here (`SystemTime`), at each
//! request, and passed to the SDK. PINs are asked for, hashed (Argon2id) and dropped; neither
//! they nor the token secret nor a verifier is ever printed.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use zeroize::Zeroizing;
use zoftoken_device::{
    DeviceError, PairOffer, Pairing, PendingTransaction, Reply, Request, Token, TokenStatus,
};
use zoftoken_proto::deeplink::{Deeplink, DEEPLINK_PREFIX};
use zoftoken_proto::{PinVerifier, ReplyStatus, TxState, WireState};

use crate::pin::{PinSource, ReaderPins, TerminalPins};
use crate::state::{FileStore, StateLock};
use crate::transport::{Exchange, Transport, TransportConfig};
use crate::ClientError;

/// Environment variable naming the state file.
pub const STATE_ENV: &str = "ZOFTOKEN_DEVICE_STATE";

/// The device commands.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum DeviceCmd {
    /// Pair with a deeplink (`zoftoken://enroll?…`) or a manual code (with --service and
    /// --endpoint); asks for a new PIN twice (and a duress PIN with --duress).
    Pair {
        /// The deeplink or the manual code `XXXX-XXXX-XXXX-XXXX-XXXX`.
        code: String,
        /// The service name (manual code only; a deeplink carries it).
        #[arg(long)]
        service: Option<String>,
        /// A `host:port` endpoint of the server (manual code only; repeat for several).
        #[arg(long = "endpoint", value_name = "HOST:PORT")]
        endpoints: Vec<String>,
        /// Also set a duress PIN (where the service allows one).
        #[arg(long)]
        duress: bool,
        /// Replace a token already paired in the state file.
        #[arg(long)]
        force: bool,
    },
    /// Open the token with the PIN.
    Open {
        /// Ask for the duress PIN (the request and the output look the same).
        #[arg(long)]
        duress: bool,
    },
    /// Close the token.
    Close,
    /// Ask the server for the token's state.
    Status,
    /// Show the current one-time code (no network).
    Code {
        /// Make it with the duress PIN.
        #[arg(long)]
        duress: bool,
    },
    /// Answer an operator's offline validation code (no network).
    Offline {
        /// The validation code the operator reads out.
        validation_code: String,
        /// Make the response with the duress PIN.
        #[arg(long)]
        duress: bool,
    },
    /// Approve a pending transaction with the PIN.
    Approve {
        /// The transaction id (32 hex digits, as `watch` shows it).
        transaction: String,
        /// Approve with the duress PIN.
        #[arg(long)]
        duress: bool,
    },
    /// Deny a pending transaction.
    Deny {
        /// The transaction id (32 hex digits, as `watch` shows it).
        transaction: String,
    },
    /// Keep in touch with the server: time sync (presence) and pending transactions, every
    /// --interval seconds.
    Watch {
        /// Seconds between rounds.
        #[arg(long, default_value_t = 30)]
        interval: u64,
        /// One round, then exit.
        #[arg(long, conflicts_with = "count")]
        once: bool,
        /// This many rounds, then exit (default: forever).
        #[arg(long)]
        count: Option<u64>,
    },
}

/// The options around a [`DeviceCmd`], for embedding with clap (`#[command(flatten)]` or as
/// a subcommand's arguments).
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// The token state file (default `$XDG_CONFIG_HOME/zoftoken/device.json` or
    /// `~/.config/zoftoken/device.json`).
    #[arg(long, env = STATE_ENV, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Print one JSON object per result instead of a human line (set by the embedding
    /// binary's global `--json`).
    #[arg(skip)]
    pub json: bool,
    /// Read PINs from standard input, one per line, instead of the terminal.
    #[arg(long)]
    pub pin_stdin: bool,
    /// Timeout of the first attempt in milliseconds (doubles per attempt).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub timeout_ms: u64,
    /// Attempts per request (at least one per endpoint).
    #[arg(long, default_value_t = 4)]
    pub attempts: usize,
    /// The command.
    #[command(subcommand)]
    pub cmd: DeviceCmd,
}

/// What a command needs besides its arguments.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// The token state file.
    pub state: PathBuf,
    /// JSON output.
    pub json: bool,
    /// Timeouts and attempts.
    pub transport: TransportConfig,
}

impl DeviceOptions {
    /// Options with the default transport and human output.
    pub fn new(state: impl Into<PathBuf>) -> DeviceOptions {
        DeviceOptions {
            state: state.into(),
            json: false,
            transport: TransportConfig::default(),
        }
    }
}

/// A command's result: a human line and one JSON object (`"ok": true`, `"command"`, …).
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The human line.
    pub human: String,
    /// The JSON object.
    pub json: Value,
}

/// The default state file: `$XDG_CONFIG_HOME/zoftoken/device.json`, else
/// `$HOME/.config/zoftoken/device.json`.
pub fn default_state_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("zoftoken").join("device.json"))
}

impl DeviceArgs {
    /// The options these arguments give.
    pub fn options(&self) -> Result<DeviceOptions, ClientError> {
        let state = match &self.state {
            Some(s) => s.clone(),
            None => default_state_path().ok_or_else(|| {
                ClientError::BadInput(format!("no --state given, {STATE_ENV} and HOME unset"))
            })?,
        };
        if self.timeout_ms == 0 {
            return Err(ClientError::BadInput(
                "--timeout-ms must be positive".into(),
            ));
        }
        Ok(DeviceOptions {
            state,
            json: self.json,
            transport: TransportConfig {
                timeout: Duration::from_millis(self.timeout_ms),
                attempts: self.attempts.max(1),
                ..TransportConfig::default()
            },
        })
    }

    /// Runs the command, reading PINs from the terminal (or standard input with
    /// `--pin-stdin`) and writing results to `out`.
    pub fn run(&self, out: &mut dyn Write) -> Result<Report, ClientError> {
        let opts = self.options()?;
        if self.pin_stdin {
            let stdin = std::io::stdin();
            let mut pins = ReaderPins::new(stdin.lock());
            run(&self.cmd, &opts, &mut pins, out)
        } else {
            run(&self.cmd, &opts, &mut TerminalPins, out)
        }
    }

    /// Runs the command on standard output; errors go to standard error (or standard output
    /// as a JSON object with `--json`). Returns the process exit code
    /// ([`ClientError::exit_code`], 0 on success).
    pub fn main(&self) -> i32 {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        match self.run(&mut out) {
            Ok(_) => 0,
            Err(e) => {
                if self.json {
                    let _ = writeln!(out, "{}", e.to_json());
                } else {
                    let _ = writeln!(std::io::stderr(), "error: {e}");
                }
                e.exit_code()
            }
        }
    }
}

/// Runs one device command: writes its result(s) to `out` (human lines, or one JSON object
/// per line with `opts.json`) and returns the (last) report.
pub fn run(
    cmd: &DeviceCmd,
    opts: &DeviceOptions,
    pins: &mut dyn PinSource,
    out: &mut dyn Write,
) -> Result<Report, ClientError> {
    let report = match cmd {
        DeviceCmd::Pair {
            code,
            service,
            endpoints,
            duress,
            force,
        } => pair(
            opts,
            pins,
            code,
            service.as_deref(),
            endpoints,
            *duress,
            *force,
        )?,
        DeviceCmd::Open { duress } => open(opts, pins, *duress)?,
        DeviceCmd::Close => simple(opts, Request::Close, "close")?,
        DeviceCmd::Status => simple(opts, Request::Status, "status")?,
        DeviceCmd::Code { duress } => code(opts, pins, *duress)?,
        DeviceCmd::Offline {
            validation_code,
            duress,
        } => offline(opts, pins, validation_code, *duress)?,
        DeviceCmd::Approve {
            transaction,
            duress,
        } => decide(opts, Some(pins), transaction, *duress)?,
        DeviceCmd::Deny { transaction } => decide(opts, None, transaction, false)?,
        DeviceCmd::Watch {
            interval,
            once,
            count,
        } => {
            let count = if *once { Some(1) } else { *count };
            return watch(opts, Duration::from_secs(*interval), count, out);
        }
    };
    emit(out, opts.json, &report)?;
    Ok(report)
}

fn emit(out: &mut dyn Write, json: bool, report: &Report) -> Result<(), ClientError> {
    if json {
        writeln!(out, "{}", report.json)
    } else {
        writeln!(out, "{}", report.human)
    }
    .and_then(|()| out.flush())
    .map_err(ClientError::Output)
}

/// The device time (Unix ms), read at each request.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The locked state file and its token.
struct Loaded {
    store: FileStore,
    token: Token,
    _lock: StateLock,
}

fn load(opts: &DeviceOptions) -> Result<Loaded, ClientError> {
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

fn send(
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
fn check(status: &TokenStatus) -> Result<(), ClientError> {
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

/// The API's name of a wire state.
pub fn state_name(state: WireState) -> &'static str {
    match state {
        WireState::Pending => "pending",
        WireState::Closed => "closed",
        WireState::Open => "open",
        WireState::Blocked => "blocked",
    }
}

fn tx_state_name(state: TxState) -> &'static str {
    match state {
        TxState::Waiting => "waiting",
        TxState::Approved => "approved",
        TxState::Denied => "denied",
        TxState::Expired => "expired",
    }
}

/// `1h 2m 3s`, `4m 5s`, `6s`.
fn human_duration(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// Replaces control characters of server-supplied text (no terminal escapes).
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn status_line(service: &str, s: &TokenStatus, now: u64) -> String {
    let mut line = format!("{}: {}", printable(service), state_name(s.state));
    if s.state == WireState::Open && s.open_until_ms > 0 {
        line.push_str(&format!(
            ", closes in {}",
            human_duration(s.open_until_ms.saturating_sub(now))
        ));
    }
    if s.state != WireState::Blocked {
        line.push_str(&format!(" ({} PIN attempts left)", s.attempts_left));
    }
    line
}

fn status_json(command: &str, token: &Token, s: &TokenStatus, now: u64) -> Value {
    json!({
        "ok": true,
        "command": command,
        "token_id": token.token_id().to_hex(),
        "service": token.service().name,
        "state": state_name(s.state),
        "open_until_ms": (s.state == WireState::Open).then_some(s.open_until_ms),
        "attempts_left": s.attempts_left,
        "server_time_ms": s.server_time_ms,
        "clock_offset_ms": i128::from(now) - i128::from(s.server_time_ms),
    })
}

fn verifier(
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
fn ascii_pin(pin: &str) -> Result<(), ClientError> {
    if pin.is_ascii() {
        Ok(())
    } else {
        Err(ClientError::BadInput(
            "a PIN must be ASCII characters (digits recommended)".into(),
        ))
    }
}

fn open(
    opts: &DeviceOptions,
    pins: &mut dyn PinSource,
    duress: bool,
) -> Result<Report, ClientError> {
    let mut loaded = load(opts)?;
    let pin = verifier(pins, &loaded.token, duress)?;
    let reply = send(&mut loaded, opts, Request::Open(&pin))?;
    drop(pin);
    let s = *reply.status();
    check(&s)?;
    let now = now_ms();
    // A duress open looks exactly like an open, on the wire and here.
    Ok(Report {
        human: format!(
            "opened; {}",
            status_line(&loaded.token.service().name, &s, now)
        ),
        json: status_json("open", &loaded.token, &s, now),
    })
}

fn simple(
    opts: &DeviceOptions,
    request: Request<'_>,
    command: &str,
) -> Result<Report, ClientError> {
    let mut loaded = load(opts)?;
    let reply = send(&mut loaded, opts, request)?;
    let s = *reply.status();
    check(&s)?;
    let now = now_ms();
    let line = status_line(&loaded.token.service().name, &s, now);
    Ok(Report {
        human: if command == "close" {
            format!("closed; {line}")
        } else {
            line
        },
        json: status_json(command, &loaded.token, &s, now),
    })
}

fn code(
    opts: &DeviceOptions,
    pins: &mut dyn PinSource,
    duress: bool,
) -> Result<Report, ClientError> {
    let loaded = load(opts)?;
    let pin = verifier(pins, &loaded.token, duress)?;
    let now = now_ms();
    let code = loaded.token.one_time_code(&pin, now)?;
    let period_ms = u64::from(loaded.token.service().otp_period_s) * 1000;
    let left = if period_ms > 0 {
        period_ms - now % period_ms
    } else {
        0
    };
    Ok(Report {
        human: format!("{code}  (valid for about {})", human_duration(left)),
        json: json!({
            "ok": true,
            "command": "code",
            "token_id": loaded.token.token_id().to_hex(),
            "service": loaded.token.service().name,
            "code": code,
            "period_ends_in_ms": left,
        }),
    })
}

fn offline(
    opts: &DeviceOptions,
    pins: &mut dyn PinSource,
    validation_code: &str,
    duress: bool,
) -> Result<Report, ClientError> {
    let loaded = load(opts)?;
    let pin = verifier(pins, &loaded.token, duress)?;
    let response = loaded.token.offline_response(&pin, validation_code)?;
    Ok(Report {
        human: format!("response: {response}"),
        json: json!({
            "ok": true,
            "command": "offline",
            "token_id": loaded.token.token_id().to_hex(),
            "service": loaded.token.service().name,
            "response": response,
        }),
    })
}

fn parse_tx_id(text: &str) -> Result<[u8; 16], ClientError> {
    hex::decode(text.trim())
        .ok()
        .and_then(|v| <[u8; 16]>::try_from(v).ok())
        .ok_or_else(|| ClientError::BadInput("a transaction id is 32 hex digits".into()))
}

/// Approve (with `pins`) or deny (without).
fn decide(
    opts: &DeviceOptions,
    pins: Option<&mut dyn PinSource>,
    transaction: &str,
    duress: bool,
) -> Result<Report, ClientError> {
    let tx_id = parse_tx_id(transaction)?;
    let mut loaded = load(opts)?;
    let (reply, command) = match pins {
        Some(pins) => {
            let pin = verifier(pins, &loaded.token, duress)?;
            let reply = send(&mut loaded, opts, Request::TxApprove { tx_id, pin: &pin })?;
            (reply, "approve")
        }
        None => (send(&mut loaded, opts, Request::TxDeny { tx_id })?, "deny"),
    };
    let Reply::TxDecided(s, _, tx_state) = reply else {
        return Err(ClientError::Device(DeviceError::OutOfOrder(
            "unexpected reply to a transaction decision",
        )));
    };
    check(&s)?;
    let id = hex::encode(tx_id);
    Ok(Report {
        human: format!("transaction {id}: {}", tx_state_name(tx_state)),
        json: json!({
            "ok": true,
            "command": command,
            "token_id": loaded.token.token_id().to_hex(),
            "tx_id": id,
            "tx_state": tx_state_name(tx_state),
            "state": state_name(s.state),
            "attempts_left": s.attempts_left,
        }),
    })
}

/// One watch round: TIME_SYNC (presence, clock) then TX_FETCH. The state file is locked only
/// during the round, so other commands (approve, deny) can run between rounds.
fn watch_round(opts: &DeviceOptions) -> Result<Report, ClientError> {
    let mut loaded = load(opts)?;
    let reply = send(&mut loaded, opts, Request::TimeSync)?;
    let s = *reply.status();
    check(&s)?;
    let (fs, pending) = match send(&mut loaded, opts, Request::TxFetch)? {
        Reply::Transaction(fs, tx) => (fs, tx),
        _ => {
            return Err(ClientError::Device(DeviceError::OutOfOrder(
                "unexpected reply to a transaction fetch",
            )))
        }
    };
    if fs.status != ReplyStatus::NoTransaction {
        check(&fs)?;
    }
    let now = now_ms();
    let mut human = status_line(&loaded.token.service().name, &fs, now);
    let mut json = status_json("watch", &loaded.token, &fs, now);
    match &pending {
        Some(PendingTransaction {
            tx_id,
            expires_ms,
            message,
        }) => {
            let id = hex::encode(tx_id);
            human.push_str(&format!(
                "; pending transaction {id}: \"{}\" (expires in {}; approve or deny it)",
                printable(message),
                human_duration(expires_ms.saturating_sub(fs.server_time_ms))
            ));
            if let Some(obj) = json.as_object_mut() {
                obj.insert(
                    "pending".into(),
                    json!({ "tx_id": id, "message": message, "expires_ms": expires_ms }),
                );
            }
        }
        None => {
            human.push_str("; no pending transaction");
            if let Some(obj) = json.as_object_mut() {
                obj.insert("pending".into(), Value::Null);
            }
        }
    }
    Ok(Report { human, json })
}

fn watch(
    opts: &DeviceOptions,
    interval: Duration,
    count: Option<u64>,
    out: &mut dyn Write,
) -> Result<Report, ClientError> {
    let mut round = 0u64;
    loop {
        round += 1;
        let last = count.is_some_and(|c| round >= c);
        match watch_round(opts) {
            Ok(report) => {
                emit(out, opts.json, &report)?;
                if last {
                    return Ok(report);
                }
            }
            // The network may come back: report and keep watching (except in the last round).
            Err(e @ ClientError::NoAnswer { .. }) if !last => {
                let report = Report {
                    human: format!("error: {e}"),
                    json: e.to_json(),
                };
                emit(out, opts.json, &report)?;
            }
            Err(e) => return Err(e),
        }
        std::thread::sleep(interval);
    }
}

/// Reads a new PIN twice; they must match.
fn new_pin(pins: &mut dyn PinSource, what: &str) -> Result<Zeroizing<String>, ClientError> {
    let first = pins.read_pin(&format!("New {what}: "))?;
    let second = pins.read_pin(&format!("Repeat the new {what}: "))?;
    if first != second {
        return Err(ClientError::BadInput(format!("the two {what}s differ")));
    }
    ascii_pin(&first)?;
    Ok(first)
}

struct InitExchange<'a> {
    pairing: &'a mut Pairing,
}

impl Exchange for InitExchange<'_> {
    type Output = PairOffer;

    fn build(&mut self, out: &mut [u8]) -> Result<usize, ClientError> {
        let mut random = Zeroizing::new([0u8; 32]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut *random);
        Ok(self.pairing.init_request(now_ms(), *random, out)?.len)
    }

    fn accept(&mut self, datagram: &mut [u8]) -> Result<Option<PairOffer>, ClientError> {
        match self.pairing.handle_init_reply(datagram) {
            Ok(offer) => Ok(Some(offer)),
            Err(DeviceError::Dropped(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

struct CompleteExchange<'a> {
    pairing: &'a mut Pairing,
    store: &'a mut FileStore,
    pin: &'a PinVerifier,
    duress: Option<&'a PinVerifier>,
}

impl Exchange for CompleteExchange<'_> {
    type Output = Result<Token, TokenStatus>;

    fn build(&mut self, out: &mut [u8]) -> Result<usize, ClientError> {
        Ok(self
            .pairing
            .complete_request(self.pin, self.duress, now_ms(), out)?
            .len)
    }

    fn accept(&mut self, datagram: &mut [u8]) -> Result<Option<Self::Output>, ClientError> {
        match self.pairing.handle_complete_reply(self.store, datagram) {
            Ok(r) => Ok(Some(r)),
            Err(DeviceError::Dropped(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn pair(
    opts: &DeviceOptions,
    pins: &mut dyn PinSource,
    code: &str,
    service: Option<&str>,
    endpoints: &[String],
    duress: bool,
    force: bool,
) -> Result<Report, ClientError> {
    let mut store = FileStore::new(&opts.state);
    let _lock = store.lock()?;
    if store.exists() && !force {
        return Err(ClientError::AlreadyPaired(opts.state.clone()));
    }
    let code = code.trim();
    let mut pairing = if code.starts_with(DEEPLINK_PREFIX) {
        if service.is_some() || !endpoints.is_empty() {
            return Err(ClientError::BadInput(
                "--service and --endpoint are for manual codes; a deeplink carries them".into(),
            ));
        }
        Pairing::from_deeplink(&Deeplink::parse(code)?)
    } else {
        let service = service.ok_or_else(|| {
            ClientError::BadInput("a manual code needs --service (the service name)".into())
        })?;
        if endpoints.is_empty() {
            return Err(ClientError::BadInput(
                "a manual code needs at least one --endpoint HOST:PORT".into(),
            ));
        }
        Pairing::from_manual_code(code, service, endpoints.to_vec(), None)?
    };
    let transport = Transport::new(pairing.endpoints().to_vec(), opts.transport.clone())?;
    let offer = transport.run(&mut InitExchange {
        pairing: &mut pairing,
    })?;
    if duress && !offer.service.duress_allowed {
        return Err(ClientError::BadInput(format!(
            "service {} does not allow a duress PIN",
            printable(&offer.service.name)
        )));
    }
    let pin = new_pin(pins, "PIN")?;
    let duress_pin = if duress {
        let d = new_pin(pins, "duress PIN")?;
        if d == pin {
            return Err(ClientError::BadInput(
                "the duress PIN must differ from the PIN".into(),
            ));
        }
        Some(d)
    } else {
        None
    };
    let pin_v = PinVerifier::derive(&pin, &offer.token_id)?;
    let duress_v = duress_pin
        .as_ref()
        .map(|d| PinVerifier::derive(d, &offer.token_id))
        .transpose()?;
    drop((pin, duress_pin));
    let result = transport.run(&mut CompleteExchange {
        pairing: &mut pairing,
        store: &mut store,
        pin: &pin_v,
        duress: duress_v.as_ref(),
    })?;
    let token = match result {
        Ok(token) => token,
        Err(status) => {
            check(&status)?;
            return Err(ClientError::Refused(format!(
                "pairing not completed (token {})",
                state_name(status.state)
            )));
        }
    };
    let svc = token.service();
    Ok(Report {
        human: format!(
            "paired with {} (token {}); state saved in {}",
            printable(&svc.name),
            token.token_id(),
            opts.state.display()
        ),
        json: json!({
            "ok": true,
            "command": "pair",
            "token_id": token.token_id().to_hex(),
            "service": svc.name,
            "endpoints": svc.endpoints,
            "duress_pin": duress_v.is_some(),
            "window_s": svc.window_s,
            "otp_length": svc.otp_length,
            "otp_period_s": svc.otp_period_s,
            "state_file": opts.state.display().to_string(),
        }),
    })
}
