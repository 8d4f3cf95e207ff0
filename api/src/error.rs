//! The API's JSON errors: [`Failure`], answered as `{"error":{"code":…,"message":…}}` with a
//! stable code and HTTP status, and its conversions from the errors of the crates below (the
//! admin layer, the engine, the store, the webhooks): the codes and statuses are part of the
//! API (README.md lists them).

use std::borrow::Cow;

use hyper::header::{HeaderValue, ALLOW, WWW_AUTHENTICATE};
use hyper::StatusCode;
use serde_json::json;
use zoftoken_admin::AdminError;
use zoftoken_engine::EngineError;
use zoftoken_storage::StoreError;
use zoftoken_webhooks::WebhookError;

use crate::response::{json_response, Resp};
use crate::routes::PathError;

/// The code of [`EngineError::Unsettled`]: another request's change to the token is still
/// being written (`503`, asked again for a while first).
pub(crate) const TOKEN_BUSY: &str = "token_busy";

/// A refusal or failure: an HTTP status, a stable snake_case code, a message for people, and
/// the headers some of them carry (`Retry-After`, `Allow`; a `401` says `WWW-Authenticate`).
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    pub retry_after: Option<u64>,
    pub allow: Option<&'static str>,
}

impl Failure {
    /// A failure of any status.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Failure {
            status,
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
        }
    }

    /// A `400 Bad Request`.
    pub fn bad(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A `404 Not Found`.
    pub fn not_found(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Failure::new(StatusCode::NOT_FOUND, code, message)
    }

    /// A `409 Conflict`.
    pub fn conflict(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Failure::new(StatusCode::CONFLICT, code, message)
    }

    /// `500 internal_error`: a fault of the server, nothing about the request.
    pub fn internal() -> Self {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error",
        )
    }

    /// The same, asking the client to come back after `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The JSON answer.
    pub fn into_response(self) -> Resp {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut r = json_response(self.status, &body);
        if let Some(s) = self.retry_after {
            r.headers_mut().insert("retry-after", HeaderValue::from(s));
        }
        if let Some(a) = self.allow {
            r.headers_mut().insert(ALLOW, HeaderValue::from_static(a));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// `503 storage_unavailable`: the database cannot write; nothing was changed.
pub(crate) fn storage_unavailable() -> Failure {
    Failure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the database cannot write at the moment; nothing was changed; try again later",
    )
    .retry_after(1)
}

/// `503 storage_unavailable` for a read: the database has not answered within the staleness
/// bound, so what this server's memory shows may be outdated (another server or the command
/// line may have changed it).
pub(crate) fn stale_read() -> Failure {
    Failure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the database has not answered within the staleness bound; this server does not \
         answer from memory that may be outdated; try again later or ask another server",
    )
    .retry_after(1)
}

/// [`stale_read`] unless the store's reads are fresh.
pub(crate) fn fresh(store: &zoftoken_storage::Store) -> Result<(), Failure> {
    if store.health().reads_fresh() {
        Ok(())
    } else {
        Err(stale_read())
    }
}

impl From<PathError> for Failure {
    fn from(e: PathError) -> Self {
        match e {
            PathError::NotFound => {
                Failure::not_found("not_found", "no such route (see /openapi.json)")
            }
            PathError::BadEncoding => Failure::bad(
                "invalid_path",
                "path segments must be percent-encoded UTF-8",
            ),
            PathError::BadLength(what) => Failure::bad(
                "invalid_name",
                match what {
                    "service name" => "the service name must be 1 to 255 bytes",
                    "username" => "the username must be 1 to 1024 bytes",
                    "dead letter id" => "the dead letter id must be 1 to 255 bytes",
                    _ => "the authkey name must be 1 to 255 bytes",
                },
            ),
            PathError::MethodNotAllowed(allow) => {
                let mut f = Failure::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "this method is not allowed on this resource",
                );
                f.allow = Some(allow);
                f
            }
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        metrics::counter!("zoftoken_api_storage_errors_total").increment(1);
        match e {
            StoreError::Invalid(m) => Failure::bad("invalid_input", m),
            // The database cannot write now (full disk, IO error): nothing was done, and the
            // server recovers by itself when it can write again.
            StoreError::Kv(_) => storage_unavailable(),
            _ => Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage_error",
                "the database failed; nothing was confirmed",
            ),
        }
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::UnknownService => {
                Failure::not_found("unknown_service", "no such service")
            }
            EngineError::UnknownToken => Failure::not_found(
                "unknown_token",
                "no token for this user in this service",
            ),
            EngineError::NotPaired => Failure::conflict(
                "not_paired",
                "the token is enrolled but its app has not paired yet",
            ),
            EngineError::Invalid(m) => Failure::bad("invalid_input", m),
            EngineError::UnknownTransaction => Failure::not_found(
                "unknown_transaction",
                "no such transaction for this token",
            ),
            EngineError::TooManyTransactions => Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_transactions",
                format!(
                    "the token has {} transactions waiting or {} kept (finished ones stay an hour \
                     after their expiry): wait until some are decided or expire",
                    zoftoken_engine::MAX_WAITING_TRANSACTIONS,
                    zoftoken_engine::MAX_KEPT_TRANSACTIONS
                ),
            ),
            EngineError::NoChallenge => Failure::conflict(
                "no_challenge",
                "no offline validation code is outstanding for this token (none, used or expired)",
            ),
            EngineError::NotForTotp => Failure::conflict(
                "not_for_totp",
                "standard authenticator (TOTP) tokens have no app: no offline mode, no transactions",
            ),
            EngineError::Unsettled => Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                TOKEN_BUSY,
                "the token has a change that is still being written; try again",
            )
            .retry_after(1),
            EngineError::Config(errors) => Failure::bad(
                "invalid_config",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            // `EngineError` is non-exhaustive: a kind this version does not know.
            _ => Failure::internal(),
        }
    }
}

impl From<WebhookError> for Failure {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Store(e) => e.into(),
            _ => Failure::internal(),
        }
    }
}

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Self {
        let joined = |problems: &zoftoken_admin::ConfigProblems, paths: bool| {
            problems
                .iter()
                .map(|p| match paths {
                    true => format!("{}: {}", p.path, p.message),
                    false => p.message.clone(),
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        match e {
            AdminError::ConfigSourceFile => Failure::conflict(
                "config_source_file",
                "services and authkeys come from the configuration file (`config_source: file`): \
                 edit the file, or switch to `config_source: database`",
            ),
            AdminError::UnknownService(_) => EngineError::UnknownService.into(),
            AdminError::UnknownToken { .. } => EngineError::UnknownToken.into(),
            AdminError::NoEnrollment { .. } => Failure::not_found(
                "no_enrollment",
                "no enrollment of this user waits for its app (none made, paired, or expired)",
            ),
            AdminError::ServiceExists(_) => Failure::conflict(
                "service_exists",
                "a service of this name exists (PUT replaces it)",
            ),
            AdminError::InvalidService(problems) => {
                Failure::bad("invalid_service", joined(&problems, true))
            }
            AdminError::ServiceNameMismatch { .. } => Failure::bad(
                "invalid_service",
                "the body's name must be the service name of the path",
            ),
            e @ (AdminError::NothingRedacted
            | AdminError::WebhookNeedsSecret
            | AdminError::NoWebhook) => Failure::bad("invalid_service", e.to_string()),
            e @ AdminError::CaFileRefused => Failure::bad("webhook_ca_file_refused", e.to_string()),
            AdminError::ServiceHasTokens { tokens, .. } => Failure::conflict(
                "service_has_tokens",
                format!(
                    "the service has {tokens} tokens: delete them first or pass ?force=true \
                     (they stay stored, unusable until the service exists again)"
                ),
            ),
            e @ AdminError::InvalidAuthkeyName => Failure::bad("invalid_name", e.to_string()),
            AdminError::AuthkeyExists(_) => {
                Failure::conflict("authkey_exists", "an authkey of this name exists")
            }
            AdminError::InvalidAuthkey(problems) => {
                Failure::bad("invalid_authkey", joined(&problems, false))
            }
            AdminError::UnknownAuthkey(_) => {
                Failure::not_found("unknown_authkey_name", "no authkey of this name")
            }
            AdminError::UnknownDeadLetter(_) => {
                Failure::not_found("unknown_dead_letter", "no dead letter of this id")
            }
            AdminError::StorageUnavailable => storage_unavailable(),
            AdminError::Store(e) => e.into(),
            AdminError::Engine(e) => e.into(),
            AdminError::Webhook(e) => e.into(),
            _ => Failure::internal(),
        }
    }
}
