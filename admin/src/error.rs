//! [`AdminError`]: why an admin operation failed, each variant documented; [`ErrorKind`]
//! groups them for front ends that answer by kind (the command line's exit codes).

use zoftoken_engine::config::ConfigError;
use zoftoken_engine::EngineError;
use zoftoken_storage::StoreError;
use zoftoken_webhooks::WebhookError;

/// Why an admin operation failed. Nothing was changed unless the variant says so.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Services and authkeys come from the configuration file (`config_source: file`):
    /// they are changed there, not here.
    #[error(
        "services and authkeys come from the configuration file (`config_source: file`); \
         edit the file, or switch to `config_source: database`"
    )]
    ConfigSourceFile,
    /// No service of this name.
    #[error("no service `{0}`")]
    UnknownService(String),
    /// A service of this name exists already.
    #[error("service `{0}` exists")]
    ServiceExists(String),
    /// The service is invalid; every problem with its path (`service.window: …`).
    #[error("invalid service:\n{0}")]
    InvalidService(ConfigProblems),
    /// A service document names another service than the one it replaces.
    #[error("the document names service `{given}`, not `{expected}`")]
    ServiceNameMismatch {
        /// The service being replaced.
        expected: String,
        /// The name in the document.
        given: String,
    },
    /// A remote caller gave a webhook `ca_file` other than the stored one: a file on the
    /// server is named by its operator only ([`crate::Registry::for_remote_callers`]).
    #[error(
        "webhook.ca_file names a file on the server: set it in config.yaml or with the \
         command line, not through the API"
    )]
    CaFileRefused,
    /// `<redacted>` was given where no secret is stored to stand for.
    #[error("`<redacted>` stands for a stored secret, and there is none to keep")]
    NothingRedacted,
    /// A new webhook was given without its secret.
    #[error("a new webhook needs a secret")]
    WebhookNeedsSecret,
    /// Webhook settings were given for a service without a webhook, and no URL.
    #[error("the service has no webhook: give its URL too")]
    NoWebhook,
    /// The service has tokens and the deletion was not forced.
    #[error(
        "service `{name}` has {tokens} tokens; delete them first or force the deletion \
         (they stay stored, unusable until the service exists again)"
    )]
    ServiceHasTokens {
        /// The service.
        name: String,
        /// How many tokens it has.
        tokens: u64,
    },
    /// An authkey name that is empty or longer than [`crate::AUTHKEY_NAME_MAX`] bytes.
    #[error("the authkey name must be 1 to 255 bytes")]
    InvalidAuthkeyName,
    /// An authkey of this name exists already.
    #[error("authkey `{0}` exists")]
    AuthkeyExists(String),
    /// The authkey is invalid (a name with control characters, a mask that does not compile
    /// or is padded with whitespace, …); every problem with its path (`authkey.user_mask:
    /// …`).
    #[error("invalid authkey:\n{0}")]
    InvalidAuthkey(ConfigProblems),
    /// No authkey of this name.
    #[error("no authkey `{0}`")]
    UnknownAuthkey(String),
    /// No token for this user in this service.
    #[error("no token for `{username}` in `{service}`")]
    UnknownToken {
        /// The service.
        service: String,
        /// The username.
        username: String,
    },
    /// No enrollment of this user waits for its app (never enrolled, paired, expired, or made
    /// before enrollments kept their link).
    #[error("no enrollment of `{username}` in `{service}` waits for its app")]
    NoEnrollment {
        /// The service.
        service: String,
        /// The username.
        username: String,
    },
    /// No dead letter of this id.
    #[error("no dead letter `{0}`")]
    UnknownDeadLetter(String),
    /// The database cannot write at the moment (a full disk, a failing volume).
    #[error("the database cannot write at the moment; nothing was changed; try again later")]
    StorageUnavailable,
    /// The services or authkeys stored in the database are invalid, so the running engine
    /// cannot take the change.
    #[error("the configuration in the database is invalid:\n{0}")]
    StoredConfigInvalid(ConfigProblems),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine refused.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The webhook records could not be read or changed.
    #[error(transparent)]
    Webhook(#[from] WebhookError),
}

/// What kind of failure an [`AdminError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input is invalid.
    Invalid,
    /// The operation does not apply (a read-only configuration, tokens in the way, a name
    /// taken).
    Refused,
    /// The named thing does not exist.
    NotFound,
    /// The database cannot write (or read) for now; nothing was changed, and asking again
    /// later may work.
    Unavailable,
    /// Something failed (storage, corruption, a fault of the server).
    Failed,
}

impl AdminError {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AdminError::InvalidService(_)
            | AdminError::ServiceNameMismatch { .. }
            | AdminError::CaFileRefused
            | AdminError::NothingRedacted
            | AdminError::WebhookNeedsSecret
            | AdminError::NoWebhook
            | AdminError::InvalidAuthkeyName
            | AdminError::InvalidAuthkey(_)
            | AdminError::Engine(EngineError::Invalid(_) | EngineError::Config(_)) => {
                ErrorKind::Invalid
            }
            AdminError::ConfigSourceFile
            | AdminError::ServiceExists(_)
            | AdminError::ServiceHasTokens { .. }
            | AdminError::AuthkeyExists(_) => ErrorKind::Refused,
            AdminError::UnknownService(_)
            | AdminError::UnknownAuthkey(_)
            | AdminError::UnknownToken { .. }
            | AdminError::NoEnrollment { .. }
            | AdminError::UnknownDeadLetter(_)
            | AdminError::Engine(EngineError::UnknownService | EngineError::UnknownToken) => {
                ErrorKind::NotFound
            }
            AdminError::StorageUnavailable | AdminError::Store(StoreError::Kv(_)) => {
                ErrorKind::Unavailable
            }
            _ => ErrorKind::Failed,
        }
    }
}

/// Configuration problems, each with the path of the offending value. Shown one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblems(pub Vec<ConfigError>);

impl ConfigProblems {
    /// The problems with `at` (the index path of the value checked, e.g. `services[3]`)
    /// written as `what` (`service`), the way the one who gave the value knows it.
    pub(crate) fn renamed(errors: Vec<ConfigError>, at: &str, what: &str) -> ConfigProblems {
        ConfigProblems(
            errors
                .into_iter()
                .map(|mut e| {
                    e.path = e.path.replacen(at, what, 1);
                    e
                })
                .collect(),
        )
    }

    /// The problems.
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }
}

impl std::fmt::Display for ConfigProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {}: {}", e.path, e.message)?;
        }
        Ok(())
    }
}
