//! The route table and the path matcher.
//!
//! Service names, usernames and authkey names are arbitrary UTF-8: they travel in the path,
//! percent-encoded (RFC 3986; a `/` inside a name is `%2F`), one path segment each. The path
//! is split on `/` first and each segment decoded after, so no decoded character can change
//! the route. Lengths are checked here: services 1–255 bytes, usernames 1–1024 bytes, authkey
//! names 1–255 bytes, dead-letter ids 1–255 bytes.

use std::borrow::Cow;

/// Every route: `(method, path template, operation name)`. `/openapi.json` lists exactly these
/// (a test checks both ways).
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/healthz", "healthz"),
    ("GET", "/readyz", "readyz"),
    ("GET", "/metrics", "metrics"),
    ("GET", "/openapi.json", "openapi"),
    ("GET", "/v1/services", "service_list"),
    ("POST", "/v1/services", "service_create"),
    ("GET", "/v1/services/{service}", "service_get"),
    ("PUT", "/v1/services/{service}", "service_replace"),
    ("DELETE", "/v1/services/{service}", "service_delete"),
    ("GET", "/v1/services/{service}/details", "service_details"),
    ("GET", "/v1/authkeys", "authkey_list"),
    ("POST", "/v1/authkeys", "authkey_create"),
    ("DELETE", "/v1/authkeys/{name}", "authkey_revoke"),
    (
        "POST",
        "/v1/services/{service}/tokens/{username}",
        "token_enroll",
    ),
    (
        "GET",
        "/v1/services/{service}/tokens/{username}",
        "token_status",
    ),
    (
        "DELETE",
        "/v1/services/{service}/tokens/{username}",
        "token_delete",
    ),
    (
        "PUT",
        "/v1/services/{service}/tokens/{username}/state",
        "token_force",
    ),
    (
        "POST",
        "/v1/services/{service}/tokens/{username}/code",
        "code_validate",
    ),
    (
        "POST",
        "/v1/services/{service}/tokens/{username}/offline/challenge",
        "offline_challenge",
    ),
    (
        "POST",
        "/v1/services/{service}/tokens/{username}/offline/response",
        "offline_response",
    ),
    (
        "POST",
        "/v1/services/{service}/tokens/{username}/backup-codes",
        "backup_generate",
    ),
    (
        "POST",
        "/v1/services/{service}/tokens/{username}/backup-codes/verify",
        "backup_verify",
    ),
    (
        "POST",
        "/v1/services/{service}/tokens/{username}/transactions",
        "transaction_create",
    ),
    (
        "GET",
        "/v1/services/{service}/tokens/{username}/transactions/{tx_id}",
        "transaction_get",
    ),
    ("GET", "/v1/webhooks/dead-letters", "dead_letter_list"),
    (
        "POST",
        "/v1/webhooks/dead-letters/replay",
        "dead_letter_replay_all",
    ),
    (
        "POST",
        "/v1/webhooks/dead-letters/{id}/replay",
        "dead_letter_replay",
    ),
    (
        "DELETE",
        "/v1/webhooks/dead-letters/{id}",
        "dead_letter_delete",
    ),
    ("GET", "/v1/webhooks/disabled", "webhook_disabled_list"),
];

/// Longest service name (bytes), as the engine allows.
pub const SERVICE_MAX: usize = 255;
/// Longest username (bytes), as the engine allows.
pub const USERNAME_MAX: usize = 1024;
/// Longest authkey name (bytes).
pub const AUTHKEY_NAME_MAX: usize = 255;
/// Longest dead-letter id (bytes); real ids are `msg_` and 20 hexadecimal digits.
pub const DEAD_LETTER_ID_MAX: usize = 255;

/// A matched resource (the method is checked by the caller).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resource<'a> {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    Services,
    Service(Cow<'a, str>),
    ServiceDetails(Cow<'a, str>),
    Authkeys,
    Authkey(Cow<'a, str>),
    Token(Tok<'a>, TokenPath<'a>),
    /// `/v1/webhooks/dead-letters`.
    DeadLetters,
    /// `/v1/webhooks/dead-letters/replay` (every dead letter).
    DeadLettersReplay,
    /// `/v1/webhooks/dead-letters/{id}`.
    DeadLetter(Cow<'a, str>),
    /// `/v1/webhooks/dead-letters/{id}/replay`.
    DeadLetterReplay(Cow<'a, str>),
    /// `/v1/webhooks/disabled`.
    WebhooksDisabled,
}

/// A token's service and username.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Tok<'a> {
    pub service: Cow<'a, str>,
    pub username: Cow<'a, str>,
}

/// What under a token.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TokenPath<'a> {
    Root,
    State,
    Code,
    OfflineChallenge,
    OfflineResponse,
    BackupCodes,
    BackupVerify,
    Transactions,
    Transaction(&'a str),
}

/// Why a path does not match.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PathError {
    /// No such route.
    NotFound,
    /// A segment is not valid percent-encoded UTF-8.
    BadEncoding,
    /// A name is empty or too long.
    BadLength(&'static str),
}

fn decode<'a>(seg: &'a str, max: usize, what: &'static str) -> Result<Cow<'a, str>, PathError> {
    let s = percent_encoding::percent_decode_str(seg)
        .decode_utf8()
        .map_err(|_| PathError::BadEncoding)?;
    if s.is_empty() || s.len() > max {
        return Err(PathError::BadLength(what));
    }
    Ok(s)
}

/// Matches a request path (without the query).
pub(crate) fn resolve(path: &str) -> Result<Resource<'_>, PathError> {
    let mut it = path.split('/');
    if it.next() != Some("") {
        return Err(PathError::NotFound);
    }
    let segs: [Option<&str>; 8] = std::array::from_fn(|_| it.next());
    if it.next().is_some() {
        return Err(PathError::NotFound);
    }
    use PathError::NotFound;
    match segs {
        [Some("healthz"), None, ..] => Ok(Resource::Healthz),
        [Some("readyz"), None, ..] => Ok(Resource::Readyz),
        [Some("metrics"), None, ..] => Ok(Resource::Metrics),
        [Some("openapi.json"), None, ..] => Ok(Resource::OpenApi),
        [Some("v1"), Some("authkeys"), None, ..] => Ok(Resource::Authkeys),
        [Some("v1"), Some("authkeys"), Some(name), None, ..] => Ok(Resource::Authkey(decode(
            name,
            AUTHKEY_NAME_MAX,
            "authkey name",
        )?)),
        [Some("v1"), Some("webhooks"), Some("disabled"), None, ..] => {
            Ok(Resource::WebhooksDisabled)
        }
        [Some("v1"), Some("webhooks"), Some("dead-letters"), rest @ ..] => {
            let id = |seg| decode(seg, DEAD_LETTER_ID_MAX, "dead letter id");
            match rest {
                [None, ..] => Ok(Resource::DeadLetters),
                // Ids are `msg_…`: `replay` is never one.
                [Some("replay"), None, ..] => Ok(Resource::DeadLettersReplay),
                [Some(i), None, ..] => Ok(Resource::DeadLetter(id(i)?)),
                [Some(i), Some("replay"), None, ..] => Ok(Resource::DeadLetterReplay(id(i)?)),
                _ => Err(NotFound),
            }
        }
        [Some("v1"), Some("services"), None, ..] => Ok(Resource::Services),
        [Some("v1"), Some("services"), Some(s), rest @ ..] => {
            let service = || decode(s, SERVICE_MAX, "service name");
            match rest {
                [None, ..] => Ok(Resource::Service(service()?)),
                [Some("details"), None, ..] => Ok(Resource::ServiceDetails(service()?)),
                [Some("tokens"), Some(u), sub @ ..] => {
                    let which = match sub {
                        [None, ..] => TokenPath::Root,
                        [Some("state"), None, ..] => TokenPath::State,
                        [Some("code"), None, ..] => TokenPath::Code,
                        [Some("offline"), Some("challenge"), None, ..] => {
                            TokenPath::OfflineChallenge
                        }
                        [Some("offline"), Some("response"), None, ..] => TokenPath::OfflineResponse,
                        [Some("backup-codes"), None, ..] => TokenPath::BackupCodes,
                        [Some("backup-codes"), Some("verify"), None, ..] => TokenPath::BackupVerify,
                        [Some("transactions"), None, ..] => TokenPath::Transactions,
                        [Some("transactions"), Some(tx), None, ..] => TokenPath::Transaction(tx),
                        _ => return Err(NotFound),
                    };
                    let tok = Tok {
                        service: service()?,
                        username: decode(u, USERNAME_MAX, "username")?,
                    };
                    Ok(Resource::Token(tok, which))
                }
                _ => Err(NotFound),
            }
        }
        _ => Err(NotFound),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_are_percent_decoded_after_splitting() {
        let r = resolve("/v1/services/b%C3%A4nk/tokens/a%2Fb%20c/state").unwrap();
        assert_eq!(
            r,
            Resource::Token(
                Tok {
                    service: "bänk".into(),
                    username: "a/b c".into()
                },
                TokenPath::State
            )
        );
        assert_eq!(resolve("/v1/services/%FF"), Err(PathError::BadEncoding));
        assert_eq!(
            resolve("/v1/services//tokens/x"),
            Err(PathError::BadLength("service name"))
        );
        let long = "u".repeat(USERNAME_MAX + 1);
        assert_eq!(
            resolve(&format!("/v1/services/s/tokens/{long}")),
            Err(PathError::BadLength("username"))
        );
        assert_eq!(
            resolve("/v1/services/s/tokens/u/nope"),
            Err(PathError::NotFound)
        );
        assert_eq!(resolve("/v1"), Err(PathError::NotFound));
        assert_eq!(
            resolve("/v1/webhooks/dead-letters").unwrap(),
            Resource::DeadLetters
        );
        assert_eq!(
            resolve("/v1/webhooks/dead-letters/replay").unwrap(),
            Resource::DeadLettersReplay
        );
        assert_eq!(
            resolve("/v1/webhooks/dead-letters/msg_%30a/replay").unwrap(),
            Resource::DeadLetterReplay("msg_0a".into())
        );
        assert_eq!(
            resolve("/v1/webhooks/dead-letters/msg_1").unwrap(),
            Resource::DeadLetter("msg_1".into())
        );
        assert_eq!(
            resolve("/v1/webhooks/disabled").unwrap(),
            Resource::WebhooksDisabled
        );
        assert_eq!(
            resolve("/v1/webhooks/dead-letters//replay"),
            Err(PathError::BadLength("dead letter id"))
        );
        assert_eq!(
            resolve("/v1/webhooks/dead-letters/x/y"),
            Err(PathError::NotFound)
        );
        assert_eq!(resolve("/v1/webhooks"), Err(PathError::NotFound));
        assert_eq!(resolve("/healthz/"), Err(PathError::NotFound));
        assert_eq!(resolve("healthz"), Err(PathError::NotFound));
        assert_eq!(resolve("/a/b/c/d/e/f/g/h/i/j"), Err(PathError::NotFound));
    }
}
