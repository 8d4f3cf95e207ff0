//! The API operations, one module per operation family: `enroll` (app and TOTP
//! enrollments), `status` (a token's status and presence), `force` (an administrator's open,
//! close, block, unblock and delete), `codes` (one-time codes, app and TOTP), `offline`
//! (offline challenge and response), `backup` (backup codes), `transactions` (push approvals);
//! `paired` reads and changes a paired token under the durability rules, and `outcome` turns
//! an authentication into the API's answer. Authorisation (authkeys, masks) is the API's job;
//! these methods trust their caller.
//!
//! Every operation follows the engine's lock order (see [`crate::Engine`]) and marks the token
//! it changes unsettled (`crate::settle`) before the change can be seen.

mod backup;
mod codes;
mod enroll;
mod force;
mod offline;
mod outcome;
mod paired;
mod status;
mod transactions;

pub use backup::{BACKUP_CODES, BACKUP_DIGITS};
pub use enroll::{EnrollmentTicket, TotpEnrollment};
pub use force::Force;
pub use outcome::OfflineOutcome;
pub use status::TokenStatus;
pub use transactions::{MAX_KEPT_TRANSACTIONS, MAX_WAITING_TRANSACTIONS, TX_RETENTION_MS};
