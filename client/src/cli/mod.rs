//! The device commands (`zoftoken device …`) as library functions.
//!
//! Embedding: flatten [`DeviceArgs`] into a clap subcommand and call [`DeviceArgs::main`] (or
//! [`DeviceArgs::run`] to handle the error yourself). Programmatic use and tests call [`run`]
//! with a [`DeviceCmd`], [`DeviceOptions`] and a [`PinSource`].
//!
//! One state file holds one token. The current time is read here (`SystemTime`), at each
//! request, and passed to the SDK. PINs are asked for, hashed (Argon2id) and dropped; neither
//! they nor the token secret nor a verifier is ever printed.
//!
//! Modules: `args` (the command line), `output` (reports and their rendering), `paired` (a
//! paired token's state file, requests and PINs), and one per command family: `pair`,
//! `access` (open, close, status), `codes` (code, offline), `transactions` (approve, deny,
//! watch).

mod access;
mod args;
mod codes;
mod output;
mod pair;
mod paired;
mod transactions;

use std::io::Write;
use std::time::Duration;

use zoftoken_device::Request;

pub use args::{default_state_path, DeviceArgs, DeviceCmd, DeviceOptions, STATE_ENV};
pub use output::{state_name, Report};

use crate::pin::PinSource;
use crate::ClientError;

/// Runs one device command: writes its result(s) to `out` (human lines, or one JSON object
/// per line with `opts.json`) and returns the (last) report.
pub fn run(
    cmd: &DeviceCmd,
    opts: &DeviceOptions,
    pins: &mut dyn PinSource,
    out: &mut dyn Write,
) -> Result<Report, ClientError> {
    let report = match cmd {
        DeviceCmd::Pair {
            code,
            service,
            endpoints,
            duress,
            force,
        } => pair::pair(
            opts,
            pins,
            code,
            service.as_deref(),
            endpoints,
            *duress,
            *force,
        )?,
        DeviceCmd::Open { duress } => access::open(opts, pins, *duress)?,
        DeviceCmd::Close => access::close_or_status(opts, Request::Close, "close")?,
        DeviceCmd::Status => access::close_or_status(opts, Request::Status, "status")?,
        DeviceCmd::Code { duress } => codes::code(opts, pins, *duress)?,
        DeviceCmd::Offline {
            validation_code,
            duress,
        } => codes::offline(opts, pins, validation_code, *duress)?,
        DeviceCmd::Approve {
            transaction,
            duress,
        } => transactions::decide(opts, Some(pins), transaction, *duress)?,
        DeviceCmd::Deny { transaction } => transactions::decide(opts, None, transaction, false)?,
        DeviceCmd::Watch {
            interval,
            once,
            count,
        } => {
            let count = if *once { Some(1) } else { *count };
            return transactions::watch(opts, Duration::from_secs(*interval), count, out);
        }
    };
    output::emit(out, opts.json, &report)?;
    Ok(report)
}
