//! How records are laid out in the column families (schema version 1). Every value starts
//! with a format byte; decoders never panic and return `None` for anything malformed, which
//! the store reports as corruption.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `meta` | a name ([`meta`]) | schema version, master-key check, epoch, outbox cursor, event-sequence floors |
//! | `tokens` | token id (16) | service name, username |
//! | `secrets` | token id | service name, sealed `K ‖ PIN verifier ‖ duress flag ‖ duress verifier` (format 1: app tokens); format 2 appends `‖ kind` inside the seal (TOTP tokens) |
//! | `state` | token id | version, then the `TokenStateRecord` fields (49 bytes; format 2, 58 bytes, appends the last duress use: time and operation) |
//! | `enrollments` | token id | service name, expiry, sealed key material of both forms |
//! | `backup_codes` | token id | sealed code hashes |
//! | `transactions` | transaction id (16) | token, times, state, sealed `duress flag ‖ message length ‖ message ‖ zero padding to 200 bytes` (format 2; format 1, still read, kept the duress flag and the message in clear) |
//! | `outbox` | commit sequence (u64, big-endian) | the commit's events (format 2: each with its event sequence number; format 1, written before events were numbered, reads as number 0) |
//! | `services` | name | sealed JSON of the service |
//! | `authkeys` | name | JSON of the authkey (secret hash only) |
//! | `webhooks` | tag ‖ … | delivery progress, dead letters, disabled endpoints ([`webhooks`]) |
//! | `offline_challenges` | token id | sealed `expiry ‖ validation code` |
//!
//! One file per record family; the byte-level helpers they share are in `crate::codec`.

mod backup_codes;
mod challenge;
mod enrollment;
pub(crate) mod meta;
mod outbox;
mod state;
mod token;
mod transaction;
pub mod webhooks;

pub use backup_codes::{decode_backup, encode_backup};
pub use challenge::{decode_challenge, encode_challenge};
pub use enrollment::{decode_pending, encode_pending};
pub use outbox::{decode_outbox, OutboxEvent};
pub(crate) use outbox::{outbox_header, push_event};
pub use state::{decode_state, encode_state, encode_state_into, newer_state, state_version};
pub use token::{decode_info, decode_secrets, encode_info, encode_secrets, Secrets};
pub use transaction::{decode_transaction, encode_transaction};

/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
/// The format byte of records in their first layout.
pub(crate) const FORMAT: u8 = 1;
