//! The command line of `zoftoken loadgen` and `zoftoken loadgen prepare` (clap `Args`, to be
//! flattened into the server binary's commands).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;
use zoftoken_proto::SecretBytes;
use zoftoken_storage::MasterKey;

use crate::generator::{run, IoChoice, LoadConfig, Mix, Progress};
use crate::tokens::TokenSet;

/// Where the server keeps its master key when nothing else is configured: `<data_dir>/
/// master.key` with the default data directory `data` (relative to the working directory).
const DEFAULT_MASTER_KEY_FILE: &str = "data/master.key";

/// Which token set: shared by `loadgen prepare` (server side) and `loadgen` (device side),
/// which must be given the same values.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct PrepareArgs {
    /// Seed of the token set's secrets (anyone who knows it holds the tokens: test instances
    /// only).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of tokens (users `user0` … `user{N-1}`).
    #[arg(long, default_value_t = 1_000_000)]
    pub tokens: u64,
    /// The service the tokens belong to; it must be the first configured service (index 0).
    /// Default: the server's first service.
    #[arg(long)]
    pub service: Option<String>,
}

impl PrepareArgs {
    /// The token set, with `default_service` when `--service` was not given; `None` if
    /// neither names a service.
    pub fn token_set(&self, default_service: Option<&str>) -> Option<TokenSet> {
        let service = self.service.as_deref().or(default_service)?;
        Some(TokenSet::new(service, self.seed, self.tokens))
    }
}

/// `zoftoken loadgen`: the options of a load run.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadgenArgs {
    /// A server endpoint (repeatable; requests go to each in turn, passing over one that
    /// lost three requests in a row, which gets one request a second until it answers again,
    /// as an app fails over).
    #[arg(long = "endpoint", required = true)]
    pub endpoints: Vec<SocketAddr>,
    /// The token set (as given to `loadgen prepare`).
    #[command(flatten)]
    pub set: PrepareArgs,
    /// Generator threads (each with its own socket and share of the tokens).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Requests per second over all threads (default: flat out, limited by the window).
    #[arg(long)]
    pub rate: Option<u64>,
    /// With --rate: send in groups of this many requests, sleeping in between (fewer
    /// wake-ups of the generator at low rates; 1 sends each request when it is due).
    #[arg(long, default_value_t = 1)]
    pub burst: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Requests in flight per thread, at most.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Message mix in percent, status/open/close[/wrong-pin] (the last: OPENs with a wrong
    /// PIN, which block tokens after three in a row).
    #[arg(long, default_value = "60/20/20")]
    pub mix: Mix,
    /// A request without reply after this many milliseconds is lost.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Socket IO: std (one system call per datagram), mmsg (batches), uring, auto.
    #[arg(long, value_enum, default_value_t = IoChoice::Mmsg)]
    pub io: IoChoice,
    /// Keep each token's counter in this file between runs (continuous counters, as phones
    /// send; without it each run starts all tokens at the clock in microseconds).
    #[arg(long, value_name = "FILE")]
    pub counters: Option<std::path::PathBuf>,
    /// Write what the server acknowledged for each token to this file at the end (the
    /// state of the newest answered request; see the crash test): a line per answered token,
    /// `<token id hex> <index> <counter> <state> <attempts_left> <settled 0|1>`.
    #[arg(long, value_name = "FILE")]
    pub acked: Option<std::path::PathBuf>,
    /// Use only the set's tokens from this index on (`user{N}` …): two generators on
    /// disjoint tokens do not disturb each other's counters.
    #[arg(long, default_value_t = 0)]
    pub first_token: u64,
    /// Seed of the sequence of tokens and request kinds (default: from the clock, a new
    /// sequence every run, as phones' traffic is; printed at the start; give one to repeat a
    /// run's choices).
    #[arg(long, value_name = "N")]
    pub sequence_seed: Option<u64>,
    /// The server's master key file (64 hex digits): OPEN proofs need the instance's
    /// PIN-tree secret, which derives from it. Without this option: the key in
    /// `ZOFTOKEN_MASTER_KEY`, else the file named by `ZOFTOKEN_MASTER_KEY_FILE`, else the
    /// server configuration's key file (when run as `zoftoken loadgen run`), else
    /// `data/master.key` if it exists (the server's default). Read only when the mix has OPENs.
    #[arg(long, value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Print only the JSON line on stdout, no human summary (set by the binary's `--json`).
    #[arg(skip)]
    pub json: bool,
}

/// The instance's PIN-tree secret from a master key in hex.
fn pin_tree_secret_from_hex(text: &str, from: &str) -> Result<SecretBytes, String> {
    let key = MasterKey::from_hex(text).map_err(|e| format!("master key from {from}: {e}"))?;
    Ok(SecretBytes::new(*key.pin_tree_secret().expose()))
}

/// Reads a master key file, refusing one that group or others may access (as the server
/// does).
fn read_master_key_file(path: &Path) -> Result<SecretBytes, String> {
    let shown = path.display();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| format!("master key file {shown}: {e}"))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "master key file {shown}: permissions {:04o} are too open (chmod 600)",
                mode & 0o7777
            ));
        }
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("master key file {shown}: {e}"))?,
    );
    pin_tree_secret_from_hex(&text, &shown.to_string())
}

impl LoadgenArgs {
    /// The run's configuration; `default_service` as in [`PrepareArgs::token_set`].
    pub fn config(&self, default_service: Option<&str>) -> Result<LoadConfig, String> {
        self.config_with(default_service, None)
    }

    /// As [`Self::config`], with the master key file of the server's configuration
    /// (`default_key_file`, tried after the environment: what the embedding server passes).
    pub fn config_with(
        &self,
        default_service: Option<&str>,
        default_key_file: Option<&Path>,
    ) -> Result<LoadConfig, String> {
        let tokens = self
            .set
            .token_set(default_service)
            .ok_or("no service: give --service")?;
        if !(self.duration.is_finite() && self.duration > 0.0) {
            return Err("--duration must be a positive number of seconds".into());
        }
        let mut c = LoadConfig::new(self.endpoints.clone(), tokens);
        c.threads = self.threads;
        c.rate = self.rate;
        c.burst = self.burst;
        c.duration = Duration::from_secs_f64(self.duration);
        c.window = self.window;
        c.mix = self.mix;
        c.timeout = Duration::from_millis(self.timeout_ms);
        c.io = self.io;
        c.counters_file = self.counters.clone();
        c.acked_file = self.acked.clone();
        c.first_token = self.first_token;
        c.sequence_seed = self.sequence_seed;
        if self.mix.open > 0 || self.mix.wrong_pin > 0 {
            let env = |name: &str| std::env::var(name).ok();
            c.pin_tree_secret = Some(self.pin_tree_secret(&env, default_key_file)?);
        }
        Ok(c)
    }

    /// The instance's PIN-tree secret, from the first master key source that is there (see
    /// `--master-key-file`); `env` looks up environment variables.
    pub fn pin_tree_secret(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        default_key_file: Option<&Path>,
    ) -> Result<SecretBytes, String> {
        if let Some(path) = &self.master_key_file {
            return read_master_key_file(path);
        }
        if let Some(text) = env("ZOFTOKEN_MASTER_KEY").map(Zeroizing::new) {
            return pin_tree_secret_from_hex(&text, "ZOFTOKEN_MASTER_KEY");
        }
        if let Some(path) = env("ZOFTOKEN_MASTER_KEY_FILE") {
            return read_master_key_file(Path::new(&path));
        }
        if let Some(path) = default_key_file {
            return read_master_key_file(path);
        }
        let default = Path::new(DEFAULT_MASTER_KEY_FILE);
        if default.exists() {
            return read_master_key_file(default);
        }
        Err(format!(
            "OPEN requests need the server's master key (their PIN proofs use keys derived \
             from it): give --master-key-file FILE, or set ZOFTOKEN_MASTER_KEY or \
             ZOFTOKEN_MASTER_KEY_FILE (no {DEFAULT_MASTER_KEY_FILE} here either); or use a \
             mix without OPENs"
        ))
    }

    /// Runs with live progress on stderr (one `\r`-refreshed line on a terminal, a line per
    /// second otherwise), then prints the summary and its JSON line on stdout. Returns the
    /// exit code: 0 when it ran (whatever the losses), 2 for invalid options, 1 on failure.
    pub fn run_cli(&self, default_service: Option<&str>) -> i32 {
        self.run_cli_with(default_service, None)
    }

    /// As [`Self::run_cli`], with the master key file of the server's configuration (see
    /// [`Self::config_with`]).
    pub fn run_cli_with(
        &self,
        default_service: Option<&str>,
        default_key_file: Option<&Path>,
    ) -> i32 {
        let config = match self.config_with(default_service, default_key_file) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("loadgen: {e}");
                return 2;
            }
        };
        // Ctrl-C (or SIGTERM) stops sending; the replies in flight are awaited and the
        // summary printed. A second Ctrl-C exits at once.
        let stop = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            let _ = signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone());
            let _ = signal_hook::flag::register(signal, stop.clone());
        }
        let mut config = config;
        config.stop = Some(stop);
        // Drawn here rather than in `run`, so that it is printed and a run can be repeated.
        let sequence = *config
            .sequence_seed
            .get_or_insert_with(crate::generator::clock_sequence_seed);
        let tty = std::io::stderr().is_terminal();
        eprintln!(
            "loadgen: {} tokens of {:?} (seed {}, sequence {sequence}), {} thread(s), window {}, \
             {} for {:.1} s → {:?}",
            config.tokens.count(),
            config.tokens.service(),
            config.tokens.seed(),
            config.threads,
            config.window,
            config
                .rate
                .map_or("flat out".to_string(), |r| format!("{r}/s")),
            config.duration.as_secs_f64(),
            config.endpoints
        );
        let result = run(&config, |p: &Progress| {
            let mut err = std::io::stderr().lock();
            let _ = if tty {
                write!(err, "\r{}\x1b[K", p.line())
            } else {
                writeln!(err, "{}", p.line())
            };
            let _ = err.flush();
        });
        if tty {
            eprintln!();
        }
        match result {
            Ok(summary) => {
                if !self.json {
                    println!("{}", summary.human());
                }
                println!("{}", summary.to_json());
                0
            }
            Err(crate::LoadError::Config(e)) => {
                eprintln!("loadgen: {e}");
                2
            }
            Err(e) => {
                eprintln!("loadgen: {e}");
                1
            }
        }
    }

    /// [`Self::run_cli`] without a default service (`--service` is then required).
    pub fn main(&self) -> i32 {
        self.run_cli(None)
    }
}
