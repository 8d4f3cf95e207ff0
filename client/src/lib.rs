//! ZofToken device client: what a person uses to pair and use a token from a terminal,
//! exactly as the phone app would, built on the sans-IO device SDK (`zoftoken-device`).
//!
//! It provides a blocking UDP [`Transport`] with endpoint failover (random first endpoint,
//! per-attempt timeout doubling, every retry a **new** request with a new counter, as SPEC.md
//! §1.6 requires), a file-backed [`FileStore`] for the token state (mode 0600, atomic
//! replacement, group/world-readable files refused, a lock file against concurrent use), and
//! the device commands ([`DeviceCmd`]: pair, open, close, status, code, offline, approve,
//! deny, watch) as library functions with human or JSON output, for the server binary to
//! embed as `zoftoken device …` through [`DeviceArgs`] (whose options, for every command, may
//! come before or after the command). PINs come from a [`PinSource`] (terminal without echo,
//! standard input, or a list).
//!
//! It does not run a server, hold more than one token per state file, change the PIN (the
//! SDK supports it; no command yet), or print PINs, secrets or verifiers. Errors are
//! [`ClientError`], with [`ClientError::exit_code`] suggesting the process exit code.
#![forbid(unsafe_code)]

pub mod cli;
mod error;
pub mod pin;
pub mod state;
pub mod transport;

pub use cli::{run, DeviceArgs, DeviceCmd, DeviceOptions, Report};
pub use error::ClientError;
pub use pin::{ListPins, PinSource, ReaderPins, TerminalPins};
pub use state::{FileStore, StateLock};
pub use transport::{Exchange, Transport, TransportConfig};
