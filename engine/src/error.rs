//! The errors of the engine's API operations ([`EngineError`]). Device packets never produce
//! one: a bad packet is dropped with a `zoftoken_proto::DropReason` instead.

use crate::config::ConfigError;

/// Errors of the API operations. Network input never produces these: bad packets are dropped.
///
/// Callers match on the variants (the API turns each into a stable JSON error code), never on
/// the display text. `#[non_exhaustive]`: keep a catch-all arm.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineError {
    /// No service of that name.
    #[error("unknown service")]
    UnknownService,
    /// No such token (or it was deleted).
    #[error("unknown token")]
    UnknownToken,
    /// The token is pending: the app has not paired yet.
    #[error("token not paired yet")]
    NotPaired,
    /// The request's input is invalid (message too long, bad length, …); the text says what,
    /// for a person.
    #[error("invalid input: {0}")]
    Invalid(&'static str),
    /// No such transaction.
    #[error("unknown transaction")]
    UnknownTransaction,
    /// The token already has [`crate::MAX_WAITING_TRANSACTIONS`] transactions waiting, or
    /// [`crate::MAX_KEPT_TRANSACTIONS`] kept (waiting, or finished and still readable).
    #[error("too many transactions for this token")]
    TooManyTransactions,
    /// No offline challenge is outstanding for the token (none, used or expired).
    #[error("no offline challenge outstanding")]
    NoChallenge,
    /// The operation needs our phone app (offline challenge and response, transactions) and
    /// the token is a standard authenticator (TOTP) token, which has neither app nor PIN.
    #[error("not available for standard authenticator (TOTP) tokens")]
    NotForTotp,
    /// The configuration is invalid: every error found, each with the path of its value.
    #[error("invalid configuration: {0:?}")]
    Config(Vec<ConfigError>),
    /// The token has a change that is not yet durable (a commit in flight, or a failed one
    /// being undone from storage); nothing was done. Ask again in a moment.
    #[error("the token has a change that is not yet written; try again")]
    Unsettled,
}
