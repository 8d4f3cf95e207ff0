//! The client's errors and their exit codes.

use std::path::PathBuf;

use thiserror::Error;
use zoftoken_device::DeviceError;

/// Everything that can go wrong in the device client. Messages never contain a PIN, a secret
/// or a verifier.
///
/// Suggested process exit codes ([`ClientError::exit_code`]):
///
/// | code | meaning |
/// |---|---|
/// | 0 | success |
/// | 1 | failure: network (no endpoint answered), refused or wrong PIN, blocked token, state file unusable |
/// | 2 | invalid input: malformed deeplink, manual code, transaction id, PIN, or missing option |
/// | 4 | not found: no token paired in the state file, the server says it is not paired, the token must be paired again (PIN keys used up, state file from an older version), no such transaction |
#[derive(Debug, Error)]
pub enum ClientError {
    /// An argument or typed input is invalid (deeplink, manual code, transaction id, PIN
    /// length, PINs that do not match, missing `--service`/`--endpoint`).
    #[error("invalid input: {0}")]
    BadInput(String),
    /// No token is paired: the state file does not exist.
    #[error("no token paired: state file {} does not exist (run `pair` first)", .0.display())]
    NotPaired(PathBuf),
    /// A token is already paired in this state file; `pair` refuses to overwrite it without
    /// `--force`.
    #[error("a token is already paired in {} (use --force to replace it, or another --state file)", .0.display())]
    AlreadyPaired(PathBuf),
    /// The state file is group- or world-accessible; like ssh with private keys, it is
    /// refused until its mode is fixed.
    #[error("permissions {mode:04o} for state file {} are too open: it holds the token secret; run `chmod 600 {}`", .path.display(), .path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The state file cannot be read, written or parsed.
    #[error("state file {}: {message}", .path.display())]
    StateFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Another client process holds the state file's lock (two processes using one token
    /// at once could reuse a counter).
    #[error("state file {} is in use by another zoftoken device process (lock file {}); if none is running, delete the lock file", .path.display(), .lock.display())]
    Locked {
        /// The state file.
        path: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// No endpoint is known (empty list).
    #[error("no endpoint to send to")]
    NoEndpoints,
    /// No endpoint answered any attempt; every endpoint tried is listed with what happened.
    #[error("no answer from the server; tried: {}", .tried.join("; "))]
    NoAnswer {
        /// `endpoint: reason`, one per attempt.
        tried: Vec<String>,
    },
    /// The server refused the PIN.
    #[error("wrong PIN ({attempts_left} attempts left before the token is blocked)")]
    WrongPin {
        /// Failures left before blocking.
        attempts_left: u8,
    },
    /// The token is blocked; only an administrator can unblock it.
    #[error("the token is blocked; ask an administrator to unblock it")]
    Blocked,
    /// The token must be paired again before it can make PIN requests: its per-request PIN
    /// keys are used up, or its state file is from a version without them.
    #[error("{0}: pair again (a new enrollment from the service, then `pair --force`)")]
    PairAgain(String),
    /// The server says the token is not paired (re-enrolled or pairing not completed).
    #[error("the server says this token is not paired (it was re-enrolled?): pair again")]
    ServerNotPaired,
    /// No such pending transaction (none, expired or already decided).
    #[error("no such pending transaction (none, expired or already decided)")]
    NoTransaction,
    /// The server refused an authentic request in the token's state.
    #[error("refused by the server: {0}")]
    Refused(String),
    /// Reading a PIN failed (no terminal, stdin closed, list exhausted).
    #[error("cannot read the PIN: {0}")]
    PinInput(String),
    /// The device SDK failed (state store, protocol, out of order).
    #[error("device: {0}")]
    Device(DeviceError),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
}

impl ClientError {
    /// The process exit code suggested for this error (see the table on [`ClientError`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::BadInput(_) | ClientError::AlreadyPaired(_) | ClientError::NoEndpoints => {
                2
            }
            ClientError::NotPaired(_)
            | ClientError::PairAgain(_)
            | ClientError::ServerNotPaired
            | ClientError::NoTransaction => 4,
            ClientError::Permissions { .. }
            | ClientError::StateFile { .. }
            | ClientError::Locked { .. }
            | ClientError::NoAnswer { .. }
            | ClientError::WrongPin { .. }
            | ClientError::Blocked
            | ClientError::Refused(_)
            | ClientError::PinInput(_)
            | ClientError::Device(_)
            | ClientError::Output(_) => 1,
        }
    }

    /// The error as one JSON object: `{"ok": false, "error": message, "exit_code": n}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": false,
            "error": self.to_string(),
            "exit_code": self.exit_code(),
        })
    }
}

impl From<DeviceError> for ClientError {
    fn from(e: DeviceError) -> ClientError {
        match e {
            // Local input the SDK checks: PIN length, code and deeplink formats.
            DeviceError::Protocol(p) => ClientError::BadInput(p.to_string()),
            DeviceError::PairAgain(why) => {
                ClientError::PairAgain(format!("this token must be paired again: {why}"))
            }
            other => ClientError::Device(other),
        }
    }
}

impl From<zoftoken_proto::Error> for ClientError {
    fn from(e: zoftoken_proto::Error) -> ClientError {
        ClientError::BadInput(e.to_string())
    }
}
