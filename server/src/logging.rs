//! The process's logs: every crate writes `tracing` events; this installs the one subscriber
//! that prints them on standard error, as text lines for a terminal or as JSON lines for a log
//! shipper (`log_format`), filtered by `RUST_LOG`-style directives (`log_filter`, or the
//! `RUST_LOG` environment variable, which wins when set).
//!
//! No secret is ever a field or part of a message (keys, PINs, verifiers, codes, authkey,
//! webhook and enrollment secrets): a test runs every flow at the most verbose level and
//! searches the output for them.

use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The filter when neither the configuration nor `RUST_LOG` gives one.
pub const DEFAULT_FILTER: &str = "info";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event: time, level, module, message, fields.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message` and the event's
    /// fields at the top level), for log shippers.
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The filter directives do not parse.
    #[error("invalid log filter `{directives}`: {source}")]
    Filter {
        /// The directives as given.
        directives: String,
        /// The parser's reason.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A subscriber is already installed in this process.
    #[error("logging is already set up")]
    AlreadySet(#[source] tracing_subscriber::util::TryInitError),
}

/// The filter in effect: `RUST_LOG` when set and not empty, else the configuration's, else
/// [`DEFAULT_FILTER`].
pub fn directives(configured: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> String {
    env("RUST_LOG")
        .filter(|v| !v.trim().is_empty())
        .or_else(|| configured.map(str::to_owned))
        .unwrap_or_else(|| DEFAULT_FILTER.to_owned())
}

/// Checks filter directives without installing anything (configuration validation).
pub fn check_filter(directives: &str) -> Result<(), LogError> {
    parse_filter(directives).map(|_| ())
}

fn parse_filter(directives: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|source| LogError::Filter {
            directives: directives.to_owned(),
            source,
        })
}

/// Installs the process's subscriber: events that pass `directives` are written to standard
/// error in `format`. Call once, before any thread starts.
pub fn init(format: LogFormat, directives: &str) -> Result<(), LogError> {
    let filter = parse_filter(directives)?;
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_current_span(false))
            .try_init(),
    }
    .map_err(LogError::AlreadySet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_over_the_configuration() {
        let none = |_: &str| None;
        assert_eq!(directives(None, &none), "info");
        assert_eq!(directives(Some("warn"), &none), "warn");
        let set = |k: &str| (k == "RUST_LOG").then(|| "debug".to_owned());
        assert_eq!(directives(Some("warn"), &set), "debug");
        let blank = |k: &str| (k == "RUST_LOG").then(|| " ".to_owned());
        assert_eq!(directives(Some("warn"), &blank), "warn");
    }

    #[test]
    fn bad_directives_are_refused_with_their_text() {
        assert!(check_filter("info,zoftoken_webhooks=debug").is_ok());
        let e = check_filter("zoftoken=loud").unwrap_err();
        assert!(matches!(&e, LogError::Filter { directives, .. } if directives == "zoftoken=loud"));
    }
}
