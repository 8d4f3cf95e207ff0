//! The command line of `zoftoken device`: the commands ([`DeviceCmd`]), the options every
//! command takes ([`DeviceArgs`]: state file, PINs from standard input, timeout, attempts),
//! and what they resolve to ([`DeviceOptions`]).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::output::Report;
use super::run;
use crate::pin::{ReaderPins, TerminalPins};
use crate::transport::TransportConfig;
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
/// a subcommand's arguments). They are options of every command: global, so they may come
/// before or after the command (`device --pin-stdin open`, `device open --pin-stdin`).
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// The token state file (default `$XDG_CONFIG_HOME/zoftoken/device.json` or
    /// `~/.config/zoftoken/device.json`).
    #[arg(long, env = STATE_ENV, value_name = "FILE", global = true)]
    pub state: Option<PathBuf>,
    /// Print one JSON object per result instead of a human line (set by the embedding
    /// binary's global `--json`).
    #[arg(skip)]
    pub json: bool,
    /// Read PINs from standard input, one per line, instead of the terminal.
    #[arg(long, global = true)]
    pub pin_stdin: bool,
    /// Timeout of the first attempt in milliseconds (doubles per attempt).
    #[arg(long, default_value_t = 1000, value_name = "MS", global = true)]
    pub timeout_ms: u64,
    /// Attempts per request (at least one per endpoint).
    #[arg(long, default_value_t = 4, global = true)]
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
