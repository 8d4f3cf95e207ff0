//! [`Cf`]: the column families (key spaces) every implementation provides, with their names
//! on disk and in exports.

use std::fmt;

/// A column family (a key space of its own). The order is the on-disk order of creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Schema version, master-key check value, sequence numbers.
    Meta,
    /// Token id → service name and username (cold data, never loaded into the engine).
    Tokens,
    /// Token id → service name and encrypted secret, PIN verifier and duress verifier.
    Secrets,
    /// Token id → the token's non-secret state (written by most packets).
    State,
    /// Token id → a pending enrollment with its encrypted key material.
    Enrollments,
    /// Service name → the service's configuration (encrypted: it holds the webhook secret).
    Services,
    /// Authkey name → the authkey (the secret only as its hash).
    Authkeys,
    /// Token id → the token's encrypted backup-code hashes.
    BackupCodes,
    /// Transaction id → the transaction.
    Transactions,
    /// Commit sequence number (big-endian) → the events of that commit, for the webhooks.
    Outbox,
    /// Webhook delivery state: per-commit delivered bitmaps, dead letters, replays and
    /// disabled endpoints (layouts in `storage/src/schema/webhooks.rs`).
    Webhooks,
    /// Token id → the token's outstanding offline challenge, sealed.
    OfflineChallenges,
}

impl Cf {
    /// Every column family. A new one is added at the end: a column family's index here is
    /// its number in the change feed and in write batches.
    pub const ALL: [Cf; 12] = [
        Cf::Meta,
        Cf::Tokens,
        Cf::Secrets,
        Cf::State,
        Cf::Enrollments,
        Cf::Services,
        Cf::Authkeys,
        Cf::BackupCodes,
        Cf::Transactions,
        Cf::Outbox,
        Cf::Webhooks,
        Cf::OfflineChallenges,
    ];

    /// Its name on disk and in exports.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Tokens => "tokens",
            Cf::Secrets => "secrets",
            Cf::State => "state",
            Cf::Enrollments => "enrollments",
            Cf::Services => "services",
            Cf::Authkeys => "authkeys",
            Cf::BackupCodes => "backup_codes",
            Cf::Transactions => "transactions",
            Cf::Outbox => "outbox",
            Cf::Webhooks => "webhooks",
            Cf::OfflineChallenges => "offline_challenges",
        }
    }

    /// The column family of a name.
    pub fn from_name(name: &str) -> Option<Cf> {
        Cf::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Cf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
