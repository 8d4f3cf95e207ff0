//! `code` and `offline`: codes computed on the device, without the network (the current
//! one-time code, the response to an operator's validation code).

use serde_json::json;

use super::args::DeviceOptions;
use super::output::{human_duration, Report};
use super::paired::{load, now_ms, verifier};
use crate::pin::PinSource;
use crate::ClientError;

/// `code`: the current one-time code and how long it stays valid.
pub(super) fn code(
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

/// `offline`: the response to an operator's validation code.
pub(super) fn offline(
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
