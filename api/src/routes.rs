//! The routes of the API, each declared once: method, path template, the authorisation it
//! needs, and its handler, whose name is the route's OpenAPI operation id (and the `op`
//! label of its request metrics). The path matcher, the `405 Allow` lists and the dispatch
//! are derived from this one table ([`matcher`]).
//!
//! Service names, usernames and authkey names are arbitrary UTF-8: they travel in the path,
//! percent-encoded (RFC 3986; a `/` inside a name is `%2F`), one path segment each. The path
//! is split on `/` first and each segment decoded after, so no decoded character can change
//! the route. Lengths are checked by the matcher: services 1–255 bytes, usernames 1–1024
//! bytes, authkey names 1–255 bytes, dead-letter ids 1–255 bytes.

pub(crate) mod matcher;

use hyper::body::Incoming;

use crate::context::Ctx;
use crate::response::Outcome;
pub(crate) use matcher::{resolve, Params, PathError};

/// Longest service name (bytes), as the engine allows.
pub const SERVICE_MAX: usize = 255;
/// Longest username (bytes), as the engine allows.
pub const USERNAME_MAX: usize = 1024;
/// Longest authkey name (bytes).
pub const AUTHKEY_NAME_MAX: usize = 255;
/// Longest dead-letter id (bytes); real ids are `msg_` and 20 hexadecimal digits.
pub const DEAD_LETTER_ID_MAX: usize = 255;

/// One route: a method on a path template, what it needs, and what answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The HTTP method (`GET`, `POST`, `PUT`, `DELETE`).
    pub method: &'static str,
    /// The path template, `{name}` for a percent-encoded segment (as in `/openapi.json`).
    pub path: &'static str,
    /// The operation (its [`Operation::id`] is the OpenAPI operation id).
    pub operation: Operation,
    /// What the caller's authkey must allow.
    pub authorization: Authorization,
}

/// What a route asks of the caller's authkey (`Authorization: Bearer <key>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authorization {
    /// No key: the route says nothing about tokens (`security: []` in `/openapi.json`).
    Public,
    /// Any key whose masks match the path's service and username.
    Token,
    /// An admin key whose masks match the path's service and username.
    TokenAdmin,
    /// An admin key whose service mask matches the path's service; the users the request
    /// names are each checked against its user mask by the handler.
    ServiceAdmin,
    /// An admin key whose two masks are unrestricted (`.*` or `(?s).*`, as compiled): for
    /// what belongs to no single service or user.
    Unrestricted,
}

/// Declares every route once; yields [`Operation`], [`ROUTES`] and the dispatch ([`call`]).
/// The operation id is the handler's name.
macro_rules! routes {
    ($(
        $variant:ident = $method:ident $path:literal, $auth:ident => $module:ident :: $handler:ident;
    )*) => {
        /// Every operation of the API, one per route, in [`ROUTES`] order.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Operation {
            $(
                #[doc = concat!("`", stringify!($method), " ", $path, "`")]
                $variant,
            )*
        }

        impl Operation {
            /// The OpenAPI operation id, also the `op` label of the request metrics.
            pub const fn id(self) -> &'static str {
                match self {
                    $(Operation::$variant => stringify!($handler),)*
                }
            }
        }

        /// Every route, each once. `/openapi.json` documents exactly these (a test checks
        /// both ways, with the operation ids and the public routes).
        pub const ROUTES: &[Route] = &[
            $(Route {
                method: stringify!($method),
                path: $path,
                operation: Operation::$variant,
                authorization: Authorization::$auth,
            },)*
        ];

        /// Runs the handler of `operation` (the caller has authorised the request).
        pub(crate) async fn call(
            operation: Operation,
            ctx: &Ctx<'_>,
            params: Params<'_>,
            body: Incoming,
        ) -> Outcome {
            match operation {
                $(Operation::$variant => {
                    crate::resources::$module::$handler(ctx, params, body).await
                })*
            }
        }
    };
}

routes! {
    Healthz = GET "/healthz", Public => health::healthz;
    Readyz = GET "/readyz", Public => health::readyz;
    Metrics = GET "/metrics", Unrestricted => health::metrics;
    OpenApi = GET "/openapi.json", Public => health::openapi;
    ServiceList = GET "/v1/services", Unrestricted => services::service_list;
    ServiceCreate = POST "/v1/services", Unrestricted => services::service_create;
    ServiceGet = GET "/v1/services/{service}", Unrestricted => services::service_get;
    ServiceReplace = PUT "/v1/services/{service}", Unrestricted => services::service_replace;
    ServiceDelete = DELETE "/v1/services/{service}", Unrestricted => services::service_delete;
    ServiceDetails = GET "/v1/services/{service}/details", Public => services::service_details;
    AuthkeyList = GET "/v1/authkeys", Unrestricted => authkeys::authkey_list;
    AuthkeyCreate = POST "/v1/authkeys", Unrestricted => authkeys::authkey_create;
    AuthkeyRevoke = DELETE "/v1/authkeys/{name}", Unrestricted => authkeys::authkey_revoke;
    TokenEnrollBatch = POST "/v1/services/{service}/tokens", ServiceAdmin
        => enrollments::token_enroll_batch;
    TokenEnroll = POST "/v1/services/{service}/tokens/{username}", TokenAdmin
        => tokens::token_enroll;
    TokenEnrollment = GET "/v1/services/{service}/tokens/{username}/enrollment", TokenAdmin
        => enrollments::token_enrollment;
    TokenStatus = GET "/v1/services/{service}/tokens/{username}", Token
        => tokens::token_status;
    TokenDelete = DELETE "/v1/services/{service}/tokens/{username}", TokenAdmin
        => tokens::token_delete;
    TokenForce = PUT "/v1/services/{service}/tokens/{username}/state", TokenAdmin
        => tokens::token_force;
    CodeValidate = POST "/v1/services/{service}/tokens/{username}/code", Token
        => codes::code_validate;
    OfflineChallenge = POST "/v1/services/{service}/tokens/{username}/offline/challenge",
        TokenAdmin => codes::offline_challenge;
    OfflineResponse = POST "/v1/services/{service}/tokens/{username}/offline/response",
        TokenAdmin => codes::offline_response;
    BackupGenerate = POST "/v1/services/{service}/tokens/{username}/backup-codes", TokenAdmin
        => codes::backup_generate;
    BackupVerify = POST "/v1/services/{service}/tokens/{username}/backup-codes/verify", Token
        => codes::backup_verify;
    TransactionCreate = POST "/v1/services/{service}/tokens/{username}/transactions",
        TokenAdmin => transactions::transaction_create;
    TransactionGet = GET "/v1/services/{service}/tokens/{username}/transactions/{tx_id}",
        Token => transactions::transaction_get;
    DeadLetterList = GET "/v1/webhooks/dead-letters", Unrestricted
        => webhooks::dead_letter_list;
    DeadLetterReplayAll = POST "/v1/webhooks/dead-letters/replay", Unrestricted
        => webhooks::dead_letter_replay_all;
    DeadLetterReplay = POST "/v1/webhooks/dead-letters/{id}/replay", Unrestricted
        => webhooks::dead_letter_replay;
    DeadLetterDelete = DELETE "/v1/webhooks/dead-letters/{id}", Unrestricted
        => webhooks::dead_letter_delete;
    WebhookDisabledList = GET "/v1/webhooks/disabled", Unrestricted
        => webhooks::webhook_disabled_list;
}

impl Operation {
    /// The operation's place in [`ROUTES`] (its request metrics' slot).
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}
