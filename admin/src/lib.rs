//! The ZofToken admin layer: how services, authkeys, tokens, webhook dead letters and
//! disabled webhook endpoints are managed, under one set of rules, for both front ends (the
//! HTTP API and the `zoftoken` command line). Each operation returns a typed result or an
//! [`AdminError`]; the front ends parse their input, call it, and render what it returns
//! (JSON with stable codes, or text and exit codes), matching on [`AdminError::kind`] or on
//! its variants, never on its text.
//!
//! The rules kept here, once: where services and authkeys live ([`Source`]: the
//! configuration file, read-only, or the database); validation of service documents and of
//! authkey names and masks (with the paths of every error); a webhook `ca_file` only from the
//! configuration file; `<redacted>` standing for the stored secret; secrets redacted in every
//! listing, authkey hashes abbreviated; authkey secrets (256 random bits, hex or base64) shown
//! once and stored as hashes; a service with tokens deleted only when forced; changes written
//! first and then applied to the running engine ([`Registry::with_running_engine`]); token
//! changes refused while the database cannot write, the token loaded if stored, retried while
//! another change to it is being written, committed whatever the operation answered (a failed
//! code still counts), and published only once written ([`Tokens`]); many users enrolled in
//! one commit, each with its own answer, users who have a token skipped on request
//! ([`Tokens::enroll_batch`]); dead-letter listings
//! bounded ([`DEAD_LETTERS_MAX`]).
//!
//! It does not parse HTTP or command lines, print, read configuration files, open the
//! database or build the engine (the front ends do), and it does not deliver webhooks.
//!
//! Key types: [`Registry`] (services and authkeys), [`Source`], [`ServiceChanges`],
//! [`NewAuthkey`], [`CreatedAuthkey`], [`AuthkeySummary`], [`Tokens`], [`StoredToken`],
//! [`BatchEnrolled`], [`AdminError`], [`ErrorKind`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod authkeys;
mod enrollments;
mod error;
mod registry;
mod service_changes;
mod services;
mod tokens;
mod webhooks;

pub use authkeys::{
    AuthkeySummary, CreatedAuthkey, NewAuthkey, SecretFormat, AUTHKEY_NAME_MAX, SECRET_HASH_PREFIX,
};
pub use enrollments::{BatchEnrolled, EnrollmentLink, Existing, MAX_BATCH_ENROLLMENT};
pub use error::{AdminError, ConfigProblems, ErrorKind};
pub use registry::{FileDocuments, Registry, Source};
pub use service_changes::ServiceChanges;
pub use tokens::{stored_token, stored_tokens, StoredToken, Tokens};
pub use webhooks::{
    dead_letter_limit, dead_letters, delete_dead_letter, disabled_endpoints,
    replay_all_dead_letters, replay_dead_letter, DEAD_LETTERS_DEFAULT, DEAD_LETTERS_MAX,
};
