//! The ZofToken server's library half: `config.yaml` ([`config`]), opening the database and
//! building the engine as a configuration says ([`open`]), the admin command line's
//! operations ([`admin`]: a front end of the admin layer, `zoftoken-admin`, rendering its
//! results as text and JSON), the apps' UDP protocol on the network ([`udp`]: IO threads,
//! group commit before replies), and process limits at start ([`limits`]: the file-descriptor
//! limit). The `zoftoken` binary parses arguments, prints, and runs `serve` with the HTTP API
//! (`zoftoken-api`) and the webhook pipeline (`zoftoken-webhooks`).
//!
//! It does not implement the protocol (`zoftoken-proto`, `zoftoken-engine`), storage
//! (`zoftoken-storage`, `zoftoken-storage-rocksdb`), or the rules of services, authkeys and
//! tokens (`zoftoken-admin`).
//!
//! Key types: [`config::Loaded`], [`open::OpenError`], [`admin::Admin`],
//! [`admin::CommandError`], [`udp::UdpServer`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod follow;
pub mod limits;
pub mod logging;
pub mod open;
pub mod udp;

/// Milliseconds since the Unix epoch (the only clock read in the server; the engine gets it
/// as an argument).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
