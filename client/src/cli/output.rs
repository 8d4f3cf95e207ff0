//! How results look: a [`Report`] (a human line and a JSON object), written one per line, and
//! the names, durations and status lines they are made of. Text from the server is shown
//! without control characters.

use std::io::Write;

use serde_json::{json, Value};
use zoftoken_device::{Token, TokenStatus};
use zoftoken_proto::{TxState, WireState};

use crate::ClientError;

/// A command's result: a human line and one JSON object (`"ok": true`, `"command"`, …).
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The human line.
    pub human: String,
    /// The JSON object.
    pub json: Value,
}

/// Writes a report: its JSON object or its human line, then flushes.
pub(super) fn emit(out: &mut dyn Write, json: bool, report: &Report) -> Result<(), ClientError> {
    if json {
        writeln!(out, "{}", report.json)
    } else {
        writeln!(out, "{}", report.human)
    }
    .and_then(|()| out.flush())
    .map_err(ClientError::Output)
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

/// The API's name of a transaction state.
pub(super) fn tx_state_name(state: TxState) -> &'static str {
    match state {
        TxState::Waiting => "waiting",
        TxState::Approved => "approved",
        TxState::Denied => "denied",
        TxState::Expired => "expired",
    }
}

/// `1h 2m 3s`, `4m 5s`, `6s`.
pub(super) fn human_duration(ms: u64) -> String {
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
pub(super) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `service: state, closes in …` with the PIN attempts left.
pub(super) fn status_line(service: &str, s: &TokenStatus, now: u64) -> String {
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

/// A status reply as a command's JSON object.
pub(super) fn status_json(command: &str, token: &Token, s: &TokenStatus, now: u64) -> Value {
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
