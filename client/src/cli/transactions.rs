//! `approve`, `deny` and `watch`: push transactions decided with (or without) the PIN, and
//! the watch loop that keeps in touch with the server (presence, pending transactions).

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};
use zoftoken_device::{DeviceError, PendingTransaction, Reply, Request};
use zoftoken_proto::ReplyStatus;

use super::args::DeviceOptions;
use super::output::{
    emit, human_duration, printable, state_name, status_json, status_line, tx_state_name, Report,
};
use super::paired::{check, load, now_ms, send, verifier};
use crate::pin::PinSource;
use crate::ClientError;

fn parse_tx_id(text: &str) -> Result<[u8; 16], ClientError> {
    hex::decode(text.trim())
        .ok()
        .and_then(|v| <[u8; 16]>::try_from(v).ok())
        .ok_or_else(|| ClientError::BadInput("a transaction id is 32 hex digits".into()))
}

/// Approve (with `pins`) or deny (without).
pub(super) fn decide(
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

/// `watch`: a round every `interval`, `count` times (or forever); a round without an answer
/// is reported and the watch goes on, except in the last round.
pub(super) fn watch(
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
