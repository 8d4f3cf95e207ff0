//! `open`, `close` and `status`: the token's state on the server.

use zoftoken_device::Request;

use super::args::DeviceOptions;
use super::output::{status_json, status_line, Report};
use super::paired::{check, load, now_ms, send, verifier};
use crate::pin::PinSource;
use crate::ClientError;

/// `open` with the PIN (or the duress PIN, which looks the same).
pub(super) fn open(
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

/// `close` or `status`: one request without a PIN, the token's state in the reply.
pub(super) fn close_or_status(
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
