//! Request handling: routing, authkeys, bodies, every operation, errors and metrics.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE,
    WWW_AUTHENTICATE,
};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;
use zeroize::Zeroizing;
use zoftoken_engine::{
    Access, Batch, Engine, EngineError, Force, OfflineOutcome, Right, TokenState, TokenStatus,
};
use zoftoken_proto::{TokenId, TxState};
use zoftoken_storage::REDACTED;
use zoftoken_storage::{AuthkeyDoc, ServiceDoc, Store, StoreError};
use zoftoken_webhooks::WebhookError;

use crate::limiter::Limiter;
use crate::routes::{resolve, PathError, Resource, Tok, TokenPath};
use crate::{ApiConfig, Clock, MetricsRender, OPENAPI_JSON};

pub(crate) type Resp = Response<Full<Bytes>>;

/// Shared by every connection.
pub(crate) struct State {
    pub config: ApiConfig,
    engine: Arc<Engine>,
    store: Arc<Store>,
    metrics: Option<MetricsRender>,
    clock: Clock,
    shutdown: watch::Receiver<bool>,
    limiter: Limiter,
    meters: Meters,
    /// Services' details JSON for the app, by service name (database mode: refreshed on
    /// every service change made through the API; file mode: on SIGHUP).
    details: RwLock<Arc<HashMap<String, Value>>>,
}

impl State {
    pub fn new(
        config: ApiConfig,
        engine: Arc<Engine>,
        store: Arc<Store>,
        metrics: Option<MetricsRender>,
        clock: Clock,
        shutdown: watch::Receiver<bool>,
    ) -> State {
        let state = State {
            config,
            engine,
            store,
            metrics,
            clock,
            shutdown,
            limiter: Limiter::new(),
            meters: Meters::new(),
            details: RwLock::new(Arc::new(HashMap::new())),
        };
        if state.config.config_source_database {
            if let Ok(docs) = state.store.services() {
                state.set_details(&docs);
            }
        } else {
            state.replace_details(state.config.service_details.clone());
        }
        state
    }

    fn set_details(&self, docs: &[ServiceDoc]) {
        self.replace_details(
            docs.iter()
                .filter_map(|d| Some((d.name.clone(), d.details.clone()?)))
                .collect(),
        );
    }

    pub(crate) fn replace_details(&self, map: HashMap<String, Value>) {
        *self.details.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Resolves when shutdown starts.
    fn stopping(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut rx = self.shutdown.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}

/// A refusal or failure, answered as `{"error":{"code":…,"message":…}}`.
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    code: &'static str,
    message: Cow<'static, str>,
    retry_after: Option<u64>,
    allow: Option<&'static str>,
}

impl Failure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Failure {
            status,
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
        }
    }

    fn bad(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn internal() -> Self {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error",
        )
    }

    fn into_response(self) -> Resp {
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
                Failure::new(StatusCode::NOT_FOUND, "unknown_service", "no such service")
            }
            EngineError::UnknownToken => Failure::new(
                StatusCode::NOT_FOUND,
                "unknown_token",
                "no token for this user in this service",
            ),
            EngineError::NotPaired => Failure::new(
                StatusCode::CONFLICT,
                "not_paired",
                "the token is enrolled but its app has not paired yet",
            ),
            EngineError::Invalid(m) => Failure::bad("invalid_input", m),
            EngineError::UnknownTransaction => Failure::new(
                StatusCode::NOT_FOUND,
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
            EngineError::NoChallenge => Failure::new(
                StatusCode::CONFLICT,
                "no_challenge",
                "no offline validation code is outstanding for this token (none, used or expired)",
            ),
            EngineError::NotForTotp => Failure::new(
                StatusCode::CONFLICT,
                "not_for_totp",
                "standard authenticator (TOTP) tokens have no app: no offline mode, no transactions",
            ),
            EngineError::Unsettled => {
                let mut f = Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TOKEN_BUSY,
                    "the token has a change that is still being written; try again",
                );
                f.retry_after = Some(1);
                f
            }
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

/// Replaces every number of `value` that is a whole float (`7.0`) by the integer.
fn integral_floats_to_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                    *value = Value::from(f as u64);
                } else if f.fract() == 0.0 && (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                    *value = Value::from(f as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

/// `503 storage_unavailable`: the database cannot write; nothing was changed.
fn storage_unavailable() -> Failure {
    let mut f = Failure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the database cannot write at the moment; nothing was changed; try again later",
    );
    f.retry_after = Some(1);
    f
}

/// Refuses a change up front while the database cannot write (after trying whether it can
/// again: a small write).
fn writable(engine: &Engine, store: &Store, now: u64) -> Result<(), Failure> {
    if !store.health().writable() {
        store.probe(engine, now);
    }
    if store.health().writable() {
        Ok(())
    } else {
        Err(storage_unavailable())
    }
}

/// The error code of [`EngineError::Unsettled`], which [`settled_retry`] asks again on.
const TOKEN_BUSY: &str = "token_busy";

/// How long an API call waits for a token whose change is being written by another request
/// before it answers `503 token_busy` (a commit takes microseconds to milliseconds).
const UNSETTLED_WAIT: Duration = Duration::from_secs(1);
const UNSETTLED_POLL: Duration = Duration::from_millis(2);

/// Runs `op` (on the blocking pool), again while the token has a change of another request
/// not yet written ([`EngineError::Unsettled`]), up to [`UNSETTLED_WAIT`].
fn settled_retry<R>(mut op: impl FnMut() -> Result<R, Failure>) -> Result<R, Failure> {
    let started = std::time::Instant::now();
    loop {
        match op() {
            Err(f) if f.code == TOKEN_BUSY && started.elapsed() < UNSETTLED_WAIT => {
                std::thread::sleep(UNSETTLED_POLL)
            }
            r => return r,
        }
    }
}

/// A token's status, waiting (asynchronously) while another request's change to it is
/// being written, up to [`UNSETTLED_WAIT`].
async fn settled_status(
    engine: &Engine,
    now: impl Fn() -> u64,
    service: &str,
    username: &str,
) -> Result<zoftoken_engine::TokenStatus, Failure> {
    Ok(settled(|| engine.status(now(), service, username)).await?)
}

/// Runs a read of the engine again (asynchronously) while it answers
/// [`EngineError::Unsettled`], up to [`UNSETTLED_WAIT`].
async fn settled<R>(read: impl Fn() -> Result<R, EngineError>) -> Result<R, EngineError> {
    let started = std::time::Instant::now();
    loop {
        match read() {
            Err(EngineError::Unsettled) if started.elapsed() < UNSETTLED_WAIT => {
                tokio::time::sleep(UNSETTLED_POLL).await
            }
            r => return r,
        }
    }
}

fn unknown_dead_letter() -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        "unknown_dead_letter",
        "no dead letter of this id",
    )
}

/// Dead letters listed when `?limit=` is not given.
const DEAD_LETTERS_DEFAULT: usize = 100;
/// Most dead letters listed at once (a larger `?limit=` is capped to it).
const DEAD_LETTERS_MAX: usize = 1000;

type Outcome = Result<Resp, Failure>;

fn json_response(status: StatusCode, body: &impl Serialize) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    bytes_response(status, bytes, "application/json")
}

fn bytes_response(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Enrollments, backup codes and new authkeys carry secrets: nothing is cached anywhere.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn ok(body: &impl Serialize) -> Outcome {
    Ok(json_response(StatusCode::OK, body))
}

/// HTTP statuses counted one by one; others count as `other`.
const STATUSES: [(u16, &str); 14] = [
    (200, "200"),
    (201, "201"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (409, "409"),
    (413, "413"),
    (429, "429"),
    (500, "500"),
    (503, "503"),
    (0, "other"),
];

/// The request metrics. Each `(op, status)` counter and each op's histogram is registered
/// with the recorder on first use and kept (the binary installs its recorder before starting
/// the API), so a request costs a couple of atomic operations and no label allocation, and
/// `/metrics` lists only what happened.
struct Meters {
    /// `(op, counter per status, latency)`, in [`crate::routes::ROUTES`] order, then
    /// `unmatched`.
    requests: Vec<OpMeters>,
}

type OpMeters = (
    &'static str,
    Vec<OnceLock<metrics::Counter>>,
    OnceLock<metrics::Histogram>,
);

impl Meters {
    fn new() -> Meters {
        let ops = crate::routes::ROUTES
            .iter()
            .map(|(_, _, op)| *op)
            .chain(std::iter::once("unmatched"));
        let mut requests: Vec<OpMeters> = Vec::new();
        for op in ops {
            if requests.iter().any(|(o, _, _)| *o == op) {
                continue;
            }
            let counters = STATUSES.iter().map(|_| OnceLock::new()).collect();
            requests.push((op, counters, OnceLock::new()));
        }
        Meters { requests }
    }

    fn record(&self, op: &'static str, status: StatusCode, elapsed: Duration) {
        let Some((op, counters, latency)) = self.requests.iter().find(|(o, _, _)| *o == op) else {
            return;
        };
        let op: &'static str = op;
        let i = STATUSES
            .iter()
            .position(|(code, _)| *code == status.as_u16())
            .unwrap_or(STATUSES.len() - 1);
        if let (Some(c), Some((_, label))) = (counters.get(i), STATUSES.get(i)) {
            c.get_or_init(
                || metrics::counter!("zoftoken_api_requests_total", "op" => op, "status" => *label),
            )
            .increment(1);
        }
        latency
            .get_or_init(|| metrics::histogram!("zoftoken_api_request_seconds", "op" => op))
            .record(elapsed.as_secs_f64());
    }
}

/// Handles one request; never fails (every error is a JSON answer).
pub(crate) async fn handle(state: &Arc<State>, peer: SocketAddr, req: Request<Incoming>) -> Resp {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let (op, outcome) = dispatch(state, peer, &parts, body).await;
    let resp = outcome.unwrap_or_else(Failure::into_response);
    state.meters.record(op, resp.status(), start.elapsed());
    resp
}

fn method_not_allowed(allow: &'static str) -> Failure {
    let mut f = Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed on this resource",
    );
    f.allow = Some(allow);
    f
}

async fn dispatch(
    state: &Arc<State>,
    peer: SocketAddr,
    parts: &Parts,
    body: Incoming,
) -> (&'static str, Outcome) {
    let resource = match resolve(parts.uri.path()) {
        Ok(r) => r,
        Err(PathError::NotFound) => {
            return (
                "unmatched",
                Err(Failure::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such route (see /openapi.json)",
                )),
            )
        }
        Err(PathError::BadEncoding) => {
            return (
                "unmatched",
                Err(Failure::bad(
                    "invalid_path",
                    "path segments must be percent-encoded UTF-8",
                )),
            )
        }
        Err(PathError::BadLength(what)) => {
            return (
                "unmatched",
                Err(Failure::bad(
                    "invalid_name",
                    match what {
                        "service name" => "the service name must be 1 to 255 bytes",
                        "username" => "the username must be 1 to 1024 bytes",
                        "dead letter id" => "the dead letter id must be 1 to 255 bytes",
                        _ => "the authkey name must be 1 to 255 bytes",
                    },
                )),
            )
        }
    };
    let m = &parts.method;
    let ctx = Ctx { state, peer, parts };
    match resource {
        Resource::Healthz if m == Method::GET => ("healthz", ok(&json!({ "status": "ok" }))),
        Resource::Readyz if m == Method::GET => ("readyz", readyz(state)),
        Resource::Metrics if m == Method::GET => (
            "metrics",
            ctx.authorize_unrestricted()
                .and_then(|()| metrics_text(state)),
        ),
        Resource::OpenApi if m == Method::GET => (
            "openapi",
            Ok(bytes_response(
                StatusCode::OK,
                Bytes::from_static(OPENAPI_JSON.as_bytes()),
                "application/json",
            )),
        ),
        Resource::Healthz | Resource::Readyz | Resource::Metrics | Resource::OpenApi => {
            ("unmatched", Err(method_not_allowed("GET")))
        }
        Resource::Services if m == Method::GET => ("service_list", ctx.service_list().await),
        Resource::Services if m == Method::POST => {
            ("service_create", ctx.service_create(body).await)
        }
        Resource::Services => ("unmatched", Err(method_not_allowed("GET, POST"))),
        Resource::Service(name) if m == Method::GET => {
            ("service_get", ctx.service_get(name.into_owned()).await)
        }
        Resource::Service(name) if m == Method::PUT => (
            "service_replace",
            ctx.service_replace(name.into_owned(), body).await,
        ),
        Resource::Service(name) if m == Method::DELETE => (
            "service_delete",
            ctx.service_delete(name.into_owned()).await,
        ),
        Resource::Service(_) => ("unmatched", Err(method_not_allowed("GET, PUT, DELETE"))),
        Resource::ServiceDetails(name) if m == Method::GET => {
            ("service_details", service_details(state, &name))
        }
        Resource::ServiceDetails(_) => ("unmatched", Err(method_not_allowed("GET"))),
        Resource::Authkeys if m == Method::GET => ("authkey_list", ctx.authkey_list()),
        Resource::Authkeys if m == Method::POST => {
            ("authkey_create", ctx.authkey_create(body).await)
        }
        Resource::Authkeys => ("unmatched", Err(method_not_allowed("GET, POST"))),
        Resource::Authkey(name) if m == Method::DELETE => (
            "authkey_revoke",
            ctx.authkey_revoke(name.into_owned()).await,
        ),
        Resource::Authkey(_) => ("unmatched", Err(method_not_allowed("DELETE"))),
        Resource::Token(tok, path) => ctx.token(tok, path, body).await,
        Resource::DeadLetters if m == Method::GET => {
            ("dead_letter_list", ctx.dead_letter_list().await)
        }
        Resource::DeadLetters => ("unmatched", Err(method_not_allowed("GET"))),
        Resource::DeadLettersReplay if m == Method::POST => {
            ("dead_letter_replay_all", ctx.dead_letter_replay_all().await)
        }
        Resource::DeadLettersReplay => ("unmatched", Err(method_not_allowed("POST"))),
        Resource::DeadLetterReplay(id) if m == Method::POST => (
            "dead_letter_replay",
            ctx.dead_letter_replay(id.into_owned()).await,
        ),
        Resource::DeadLetterReplay(_) => ("unmatched", Err(method_not_allowed("POST"))),
        Resource::DeadLetter(id) if m == Method::DELETE => (
            "dead_letter_delete",
            ctx.dead_letter_delete(id.into_owned()).await,
        ),
        Resource::DeadLetter(_) => ("unmatched", Err(method_not_allowed("DELETE"))),
        Resource::WebhooksDisabled if m == Method::GET => {
            ("webhook_disabled_list", ctx.webhook_disabled_list().await)
        }
        Resource::WebhooksDisabled => ("unmatched", Err(method_not_allowed("GET"))),
    }
}

fn readyz(state: &State) -> Outcome {
    if *state.shutdown.borrow() {
        Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ))
    } else if !state.store.health().writable() {
        // Reads still work, but nothing can change: send traffic elsewhere until it can.
        Err(storage_unavailable())
    } else {
        // Public: nothing about tokens (not even how many there are).
        ok(&json!({ "status": "ready" }))
    }
}

fn metrics_text(state: &State) -> Outcome {
    let Some(render) = &state.metrics else {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            "metrics_disabled",
            "no metrics recorder is installed in this process",
        ));
    };
    state.engine.export_metrics();
    Ok(bytes_response(
        StatusCode::OK,
        render(),
        "text/plain; version=0.0.4; charset=utf-8",
    ))
}

fn service_details(state: &State, name: &str) -> Outcome {
    let map = state
        .details
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match map.get(name) {
        Some(v) => ok(v),
        None => Err(Failure::new(
            StatusCode::NOT_FOUND,
            "no_details",
            "no details JSON is configured for this service",
        )),
    }
}

/// Query parameters of the reads.
#[derive(Default)]
struct Query {
    wait_s: u64,
    state: Option<TokenState>,
    force: bool,
    limit: Option<usize>,
}

fn parse_query(q: Option<&str>, allowed: &[&str]) -> Result<Query, Failure> {
    let mut out = Query::default();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&k) {
            return Err(Failure::bad(
                "invalid_query",
                format!(
                    "unknown query parameter (allowed here: {})",
                    allowed.join(", ")
                ),
            ));
        }
        match k {
            "wait" => {
                out.wait_s = v.parse().map_err(|_| {
                    Failure::bad("invalid_query", "wait must be a whole number of seconds")
                })?
            }
            "state" => {
                out.state = Some(match v {
                    "pending" => TokenState::Pending,
                    "closed" => TokenState::Closed,
                    "open" => TokenState::Open,
                    "blocked" => TokenState::Blocked,
                    _ => {
                        return Err(Failure::bad(
                            "invalid_query",
                            "state must be pending, closed, open or blocked",
                        ))
                    }
                })
            }
            "force" => {
                out.force = match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(Failure::bad("invalid_query", "force must be true or false")),
                }
            }
            "limit" => {
                let n: usize = v
                    .parse()
                    .map_err(|_| Failure::bad("invalid_query", "limit must be a whole number"))?;
                if n == 0 {
                    return Err(Failure::bad("invalid_query", "limit must be at least 1"));
                }
                out.limit = Some(n);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Runs storage work (and the engine operation feeding it) on the blocking pool.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, Failure> + Send + 'static,
) -> Result<R, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Failure::internal())?
}

/// Persists a batch exactly as the command line does, then publishes its events. Nothing is
/// answered as done before this returns.
/// A failed write restores the batch's tokens from the database, so nothing it changed stays
/// visible (`zoftoken_storage::Store::commit_batch`).
fn commit(engine: &Engine, store: &Store, now: u64, batch: &mut Batch) -> Result<(), Failure> {
    if !batch.is_empty() {
        store.commit_batch(engine, now, batch)?;
    }
    Ok(())
}

/// Loads a token that is stored but not in memory (its service was missing at start), as the
/// command line does. A loaded token costs no storage read.
fn ensure_loaded(engine: &Engine, store: &Store, now: u64, id: &TokenId) -> Result<(), Failure> {
    if matches!(engine.status_by_id(now, id), Err(EngineError::UnknownToken))
        && store.token_info(id)?.is_some()
    {
        store.load_one(engine, now, id)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct StatusBody {
    token_id: String,
    kind: &'static str,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    open_until_ms: Option<u64>,
    duress: bool,
    failures: u8,
    attempts_left: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_duress: Option<DuressBody>,
}

/// The last use of the duress PIN (SPEC.md §6.4).
#[derive(Serialize)]
struct DuressBody {
    time_ms: u64,
    operation: &'static str,
}

fn status_body(s: &TokenStatus) -> StatusBody {
    StatusBody {
        token_id: hex::encode(s.token_id.0),
        kind: s.kind.name(),
        state: s.state.name(),
        open_until_ms: s.open_until_ms,
        duress: s.duress,
        failures: s.failures,
        attempts_left: s.attempts_left,
        last_seen_ms: s.last_seen_ms,
        last_duress: s.last_duress.map(|d| DuressBody {
            time_ms: d.time_ms,
            operation: d.operation.name(),
        }),
    }
}

fn outcome_body(o: OfflineOutcome) -> Value {
    match o {
        OfflineOutcome::Accepted { duress } => {
            json!({ "accepted": true, "duress": duress, "blocked": false })
        }
        OfflineOutcome::Rejected { attempts_left } => {
            json!({ "accepted": false, "attempts_left": attempts_left, "blocked": false })
        }
        OfflineOutcome::Blocked => {
            json!({ "accepted": false, "attempts_left": 0, "blocked": true })
        }
    }
}

fn tx_state_name(s: TxState) -> &'static str {
    match s {
        TxState::Waiting => "waiting",
        TxState::Approved => "approved",
        TxState::Denied => "denied",
        TxState::Expired => "expired",
    }
}

fn tx_body(tx: &zoftoken_engine::Transaction) -> Value {
    json!({
        "tx_id": hex::encode(tx.tx_id),
        "state": tx_state_name(tx.state),
        "message": tx.message,
        "created_ms": tx.created_ms,
        "expires_ms": tx.expires_ms,
        "duress": tx.duress,
    })
}

fn redacted(d: ServiceDoc) -> ServiceDoc {
    d.redacted()
}

/// Refuses a webhook `ca_file` given through the API: a file path on the server is the
/// operator's (config.yaml or the command line). The value already stored (a document read
/// back and written again) is kept.
fn refuse_new_ca_file(new: &ServiceDoc, old: Option<&ServiceDoc>) -> Result<(), Failure> {
    let given = new.webhook.as_ref().and_then(|w| w.ca_file.as_ref());
    let stored = old
        .and_then(|d| d.webhook.as_ref())
        .and_then(|w| w.ca_file.as_ref());
    match given {
        Some(path) if Some(path) != stored => Err(Failure::bad(
            "webhook_ca_file_refused",
            "webhook.ca_file names a file on the server: set it in config.yaml or with the \
             command line, not through the API",
        )),
        _ => Ok(()),
    }
}

/// Puts the stored secrets back where a document read from the API carries `<redacted>`;
/// refuses a `<redacted>` that stands for nothing stored.
fn restore_redacted(new: &mut ServiceDoc, old: Option<&ServiceDoc>) -> Result<(), Failure> {
    let Some(w) = &mut new.webhook else {
        return Ok(());
    };
    let old = old.and_then(|d| d.webhook.as_ref());
    let missing = || {
        Failure::bad(
            "invalid_service",
            "`<redacted>` stands for a stored secret, and there is none to keep",
        )
    };
    if w.secret == REDACTED {
        w.secret = old.map(|o| o.secret.clone()).ok_or_else(missing)?;
    }
    if w.previous_secret.as_deref() == Some(REDACTED) {
        w.previous_secret = Some(
            old.and_then(|o| o.previous_secret.clone())
                .ok_or_else(missing)?,
        );
    }
    if w.shared_token.as_deref() == Some(REDACTED) {
        w.shared_token = Some(
            old.and_then(|o| o.shared_token.clone())
                .ok_or_else(missing)?,
        );
    }
    Ok(())
}

// Request bodies. Unknown fields are refused.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EnrollBody {
    #[serde(default)]
    kind: Kind,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    #[default]
    App,
    Totp,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceBody {
    state: ForceState,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ForceState {
    Open,
    Closed,
    Blocked,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: Zeroizing<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChallengeBody {
    #[serde(default = "default_challenge_len")]
    length: usize,
}

fn default_challenge_len() -> usize {
    8
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseBody {
    response: Zeroizing<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    #[serde(default = "default_count")]
    count: usize,
    #[serde(default = "default_digits")]
    digits: usize,
}

fn default_count() -> usize {
    zoftoken_engine::BACKUP_CODES
}
fn default_digits() -> usize {
    zoftoken_engine::BACKUP_DIGITS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxBody {
    message: String,
    #[serde(default = "default_tx_timeout")]
    timeout_s: u64,
}

fn default_tx_timeout() -> u64 {
    120
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthkeyBody {
    name: String,
    #[serde(default)]
    admin: bool,
    #[serde(default = "any_mask")]
    service_mask: String,
    #[serde(default = "any_mask")]
    user_mask: String,
    #[serde(default)]
    format: SecretFormat,
}

fn any_mask() -> String {
    ".*".into()
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum SecretFormat {
    #[default]
    Hex,
    Base64,
}

/// Longest one-time code, offline response or backup code accepted (characters).
const CODE_MAX: usize = 64;

fn check_code(code: &str, what: &'static str) -> Result<(), Failure> {
    if code.is_empty() || code.chars().count() > CODE_MAX {
        return Err(Failure::bad(
            "invalid_input",
            format!("the {what} must be 1 to {CODE_MAX} characters"),
        ));
    }
    Ok(())
}

/// One request's context.
struct Ctx<'a> {
    state: &'a Arc<State>,
    peer: SocketAddr,
    parts: &'a Parts,
}

impl Ctx<'_> {
    fn bearer(&self) -> Option<&str> {
        let v = self.parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
        let (scheme, key) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| key.trim())
            .filter(|k| !k.is_empty() && k.len() <= 1024)
    }

    /// The client's address: the peer's, or with a trusted proxy as the peer, the address
    /// it forwarded in `X-Forwarded-For` ([`crate::limiter::client_address`]).
    fn client_ip(&self) -> std::net::IpAddr {
        crate::limiter::client_address(
            self.peer.ip(),
            &self.state.config.trusted_proxies,
            self.parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .map(HeaderValue::as_bytes),
        )
    }

    /// Checks the caller's key: `check` answers for a present key. The key is looked up
    /// before the failed-authentication limiter is consulted: a key that exists is never
    /// refused by the limiter, and a limited source's refusal costs the same lookup as an
    /// unlimited one's.
    fn authorize(&self, check: impl FnOnce(&str) -> Access) -> Result<(), Failure> {
        let (access, reason) = match self.bearer() {
            Some(key) => (check(key), "unknown_key"),
            None => (Access::Unknown, "missing_key"),
        };
        match access {
            Access::Allowed(_) => Ok(()),
            Access::Forbidden => {
                metrics::counter!("zoftoken_api_auth_failures_total", "reason" => "forbidden")
                    .increment(1);
                Err(Failure::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this authkey may not do this operation on this service and user",
                ))
            }
            Access::Unknown => {
                let now = self.state.now();
                if let Some(retry) = self.state.limiter.fail(self.client_ip(), now) {
                    metrics::counter!("zoftoken_api_auth_failures_total", "reason" => "rate_limited")
                        .increment(1);
                    let mut f = Failure::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_auth_failures",
                        "too many failed authentications from this address; try again later",
                    );
                    f.retry_after = Some(retry);
                    return Err(f);
                }
                metrics::counter!("zoftoken_api_auth_failures_total", "reason" => reason)
                    .increment(1);
                Err(if reason == "missing_key" {
                    Failure::new(
                        StatusCode::UNAUTHORIZED,
                        "missing_authkey",
                        "send an authkey as `Authorization: Bearer <key>`",
                    )
                } else {
                    Failure::new(
                        StatusCode::UNAUTHORIZED,
                        "unknown_authkey",
                        "unknown authkey",
                    )
                })
            }
        }
    }

    fn authorize_token(&self, right: Right, tok: &Tok<'_>) -> Result<(), Failure> {
        let engine = &self.state.engine;
        self.authorize(|k| engine.authorize(k, right, &tok.service, &tok.username))
    }

    fn authorize_unrestricted(&self) -> Result<(), Failure> {
        let engine = &self.state.engine;
        self.authorize(|k| engine.authorize_unrestricted(k))
    }

    fn require_database(&self) -> Result<(), Failure> {
        if self.state.config.config_source_database {
            Ok(())
        } else {
            Err(Failure::new(
                StatusCode::CONFLICT,
                "config_source_file",
                "services and authkeys come from the configuration file (`config_source: file`): \
                 edit the file, or switch to `config_source: database`",
            ))
        }
    }

    /// Reads and parses a JSON body (an empty body reads as `{}`).
    async fn json<T: DeserializeOwned>(&self, body: Incoming) -> Result<T, Failure> {
        let max = self.state.config.max_body_bytes;
        let too_large = || {
            Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body must be at most {max} bytes"),
            )
        };
        let declared = self
            .parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let collected = tokio::time::timeout(
            self.state.config.body_timeout,
            Limited::new(body, max).collect(),
        )
        .await
        .map_err(|_| {
            Failure::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body was not received in time",
            )
        })?;
        let bytes = match collected {
            Ok(c) => Zeroizing::new(c.to_bytes().to_vec()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Err(_) => {
                return Err(Failure::bad(
                    "invalid_body",
                    "the request body could not be read",
                ))
            }
        };
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        match serde_json::from_slice(text) {
            Ok(v) => Ok(v),
            // JSON has one number type: `7.0` is the integer 7 to a JSON Schema validator, so
            // it is taken as one (only then is the body read a second time, as a value).
            Err(e) if e.to_string().contains("invalid type: floating point") => {
                let mut value: serde_json::Value = serde_json::from_slice(text)
                    .map_err(|e| Failure::bad("invalid_json", e.to_string()))?;
                integral_floats_to_integers(&mut value);
                serde_json::from_value(value)
                    .map_err(|e| Failure::bad("invalid_json", e.to_string()))
            }
            Err(e) => Err(Failure::bad("invalid_json", e.to_string())),
        }
    }

    async fn token(
        &self,
        tok: Tok<'_>,
        path: TokenPath<'_>,
        body: Incoming,
    ) -> (&'static str, Outcome) {
        let m = &self.parts.method;
        match path {
            TokenPath::Root if m == Method::GET => ("token_status", self.status(tok).await),
            TokenPath::Root if m == Method::POST => ("token_enroll", self.enroll(tok, body).await),
            TokenPath::Root if m == Method::DELETE => ("token_delete", self.delete(tok).await),
            TokenPath::Root => ("unmatched", Err(method_not_allowed("GET, POST, DELETE"))),
            TokenPath::State if m == Method::PUT => ("token_force", self.force(tok, body).await),
            TokenPath::Code if m == Method::POST => {
                ("code_validate", self.validate(tok, body).await)
            }
            TokenPath::OfflineChallenge if m == Method::POST => {
                ("offline_challenge", self.challenge(tok, body).await)
            }
            TokenPath::OfflineResponse if m == Method::POST => {
                ("offline_response", self.response(tok, body).await)
            }
            TokenPath::BackupCodes if m == Method::POST => {
                ("backup_generate", self.backup_generate(tok, body).await)
            }
            TokenPath::BackupVerify if m == Method::POST => {
                ("backup_verify", self.backup_verify(tok, body).await)
            }
            TokenPath::Transactions if m == Method::POST => {
                ("transaction_create", self.tx_create(tok, body).await)
            }
            TokenPath::Transaction(tx) if m == Method::GET => {
                ("transaction_get", self.tx_get(tok, tx).await)
            }
            TokenPath::State => ("unmatched", Err(method_not_allowed("PUT"))),
            TokenPath::Transaction(_) => ("unmatched", Err(method_not_allowed("GET"))),
            _ => ("unmatched", Err(method_not_allowed("POST"))),
        }
    }

    /// `GET …/tokens/{username}[?wait=N[&state=S]]`: the status, at once or at the token's
    /// next change (or at once when `state` is given and differs from the current state).
    async fn status(&self, tok: Tok<'_>) -> Outcome {
        self.authorize_token(Right::Any, &tok)?;
        let q = parse_query(self.parts.uri.query(), &["wait", "state"])?;
        let engine = &self.state.engine;
        let id = TokenId::derive(&tok.service, &tok.username);
        let clock = || self.state.now();
        if q.wait_s == 0 {
            let st = settled_status(engine, clock, &tok.service, &tok.username).await?;
            return ok(&status_body(&st));
        }
        // Watch first, then read: a change between the two is not missed.
        let changed = engine.watch(&id);
        let st = settled_status(engine, clock, &tok.service, &tok.username).await?;
        let now = self.state.now();
        if q.state.is_some_and(|s| s != st.state) {
            return ok(&status_body(&st));
        }
        let mut limit = Duration::from_secs(q.wait_s).min(self.state.config.max_wait);
        if let Some(until) = st.open_until_ms {
            // The window's end is a change too (the timer's expiry wakes us as well).
            limit = limit.min(Duration::from_millis(until.saturating_sub(now)));
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep(limit) => {}
            _ = self.state.stopping() => {}
        }
        let st = settled_status(engine, clock, &tok.service, &tok.username).await?;
        ok(&status_body(&st))
    }

    async fn enroll(&self, tok: Tok<'_>, body: Incoming) -> Outcome {
        self.authorize_token(Right::Admin, &tok)?;
        let b: EnrollBody = self.json(body).await?;
        let (engine, store, now) = self.handles();
        let (service, username) = (tok.service.into_owned(), tok.username.into_owned());
        if b.kind == Kind::Totp {
            let t = blocking(move || {
                writable(&engine, &store, now)?;
                let id = TokenId::derive(&service, &username);
                ensure_loaded(&engine, &store, now, &id)?;
                settled_retry(|| {
                    let mut batch = Batch::new();
                    let t = engine.enroll_totp(now, &service, &username, &mut batch)?;
                    commit(&engine, &store, now, &mut batch)?;
                    Ok(t)
                })
            })
            .await?;
            let qr = crate::qr::render(&t.otpauth_uri).ok_or_else(Failure::internal)?;
            return Ok(json_response(
                StatusCode::CREATED,
                &json!({
                    "kind": "totp",
                    "token_id": hex::encode(t.token_id.0),
                    "otpauth_uri": t.otpauth_uri.as_str(),
                    "secret_base32": t.secret_base32.as_str(),
                    "qr_png_base64": qr.png_base64,
                    "qr_svg": qr.svg,
                }),
            ));
        }
        let t = blocking(move || {
            writable(&engine, &store, now)?;
            let id = TokenId::derive(&service, &username);
            ensure_loaded(&engine, &store, now, &id)?;
            settled_retry(|| {
                let mut batch = Batch::new();
                let t = engine.enroll(now, &service, &username, &mut batch)?;
                commit(&engine, &store, now, &mut batch)?;
                Ok(t)
            })
        })
        .await?;
        let qr = crate::qr::render(&t.deeplink).ok_or_else(Failure::internal)?;
        Ok(json_response(
            StatusCode::CREATED,
            &json!({
                "kind": "app",
                "token_id": hex::encode(t.token_id.0),
                "deeplink": t.deeplink,
                "manual_code": t.manual_code,
                "expires_ms": t.expires_ms,
                "qr_png_base64": qr.png_base64,
                "qr_svg": qr.svg,
            }),
        ))
    }

    fn state_arc(&self) -> Arc<State> {
        self.state.clone()
    }

    fn handles(&self) -> (Arc<Engine>, Arc<Store>, u64) {
        (
            self.state.engine.clone(),
            self.state.store.clone(),
            self.state.now(),
        )
    }

    async fn delete(&self, tok: Tok<'_>) -> Outcome {
        self.authorize_token(Right::Admin, &tok)?;
        parse_query(self.parts.uri.query(), &[])?;
        let (engine, store, now) = self.handles();
        let (service, username) = (tok.service.into_owned(), tok.username.into_owned());
        blocking(move || {
            if engine.service_index_of(&service).is_none() {
                return Err(EngineError::UnknownService.into());
            }
            writable(&engine, &store, now)?;
            let id = TokenId::derive(&service, &username);
            ensure_loaded(&engine, &store, now, &id)?;
            settled_retry(|| {
                let mut batch = Batch::new();
                match engine.delete(now, &id, &mut batch) {
                    Ok(()) => {}
                    // Stored but neither paired nor pending (an expired enrollment): remove
                    // the rest.
                    Err(EngineError::UnknownToken) if store.token_info(&id)?.is_some() => batch
                        .mutations
                        .push(zoftoken_engine::Mutation::DeleteToken(id)),
                    Err(e) => return Err(e.into()),
                }
                commit(&engine, &store, now, &mut batch)
            })
        })
        .await?;
        ok(&json!({ "deleted": true }))
    }

    /// Runs an engine operation on a token (loaded if needed) and commits its batch.
    async fn token_op<R: Send + 'static>(
        &self,
        tok: Tok<'_>,
        op: impl Fn(&Engine, u64, &TokenId, &mut Batch) -> Result<R, EngineError> + Send + 'static,
    ) -> Result<R, Failure> {
        let (engine, store, now) = self.handles();
        let (service, username) = (tok.service.into_owned(), tok.username.into_owned());
        blocking(move || {
            if engine.service_index_of(&service).is_none() {
                return Err(EngineError::UnknownService.into());
            }
            writable(&engine, &store, now)?;
            let id = TokenId::derive(&service, &username);
            ensure_loaded(&engine, &store, now, &id)?;
            settled_retry(|| {
                let mut batch = Batch::new();
                let r = op(&engine, now, &id, &mut batch);
                // A failed operation may still have counted a failure: commit what it changed.
                commit(&engine, &store, now, &mut batch)?;
                Ok(r?)
            })
        })
        .await
    }

    async fn force(&self, tok: Tok<'_>, body: Incoming) -> Outcome {
        self.authorize_token(Right::Admin, &tok)?;
        let b: ForceBody = self.json(body).await?;
        let to = match b.state {
            ForceState::Open => Force::Open,
            ForceState::Closed => Force::Closed,
            ForceState::Blocked => Force::Blocked,
        };
        let st = self
            .token_op(tok, move |e, now, id, batch| e.force(now, id, to, batch))
            .await?;
        ok(&status_body(&st))
    }

    async fn validate(&self, tok: Tok<'_>, body: Incoming) -> Outcome {
        self.authorize_token(Right::Any, &tok)?;
        let b: CodeBody = self.json(body).await?;
        check_code(&b.code, "code")?;
        let o = self
            .token_op(tok, move |e, now, id, batch| {
                e.validate_code(now, id, &b.code, batch)
            })
            .await?;
        ok(&outcome_body(o))
    }

    async fn challenge(&self, tok: Tok<'_>, body: Incoming) -> Outcome {
        self.authorize_token(Right::Admin, &tok)?;
        let b: ChallengeBody = self.json(body).await?;
        let code = self
            .token_op(tok, move |e, now, id, _| {
                e.offline_challenge(now, id, b.length)
            })
            .await?;
        ok(&json!({ "code": code }))
    }

    async fn response(&self, tok: Tok<'_>, body: Incoming) -> Outcome {
        self.authorize_token(Right::Admin, &tok)?;
        let b: ResponseBody = self.json(body).await?;
        check_code(&b.response, "response")?;
        let o = self
            .token_op(tok, move |e, now, id, batch| {
                e.offline_response(now, id, &b.response, batch)
            })
            .await?;
        ok(&outcome_body(o))
    }

    async fn backup_generate(&self, tok: Tok<'_>, body: Incoming) -> Outcome {
        self.authorize_token(Right::Admin, &tok)?;
        let b: BackupBody = self.json(body).await?;
        let codes = self
            .token_op(tok, move |e, _, id, batch| {
                e.generate_backup_codes(id, b.count, b.digits, batch)
                    .map(Zeroizing::new)
            })
            .await?;
        Ok(json_response(
            StatusCode::CREATED,
            &json!({ "codes": &*codes }),
        ))
    }

    async fn backup_verify(&self, tok: Tok<'_>, body: Incoming) -> Outcome {
        self.authorize_token(Right::Any, &tok)?;
        let b: CodeBody = self.json(body).await?;
        check_code(&b.code, "code")?;
        let o = self
            .token_op(tok, move |e, now, id, batch| {
                e.verify_backup_code(now, id, &b.code, batch)
            })
            .await?;
        ok(&outcome_body(o))
    }

    async fn tx_create(&self, tok: Tok<'_>, body: Incoming) -> Outcome {
        self.authorize_token(Right::Admin, &tok)?;
        let b: TxBody = self.json(body).await?;
        let timeout_ms = b.timeout_s.saturating_mul(1000);
        let (tx_id, now) = self
            .token_op(tok, move |e, now, id, batch| {
                e.create_transaction(now, id, &b.message, timeout_ms, batch)
                    .map(|t| (t, now))
            })
            .await?;
        Ok(json_response(
            StatusCode::CREATED,
            &json!({
                "tx_id": hex::encode(tx_id),
                "state": "waiting",
                "expires_ms": now.saturating_add(timeout_ms),
            }),
        ))
    }

    /// `GET …/transactions/{tx_id}[?wait=N]`: at once, or when it is decided or expires.
    async fn tx_get(&self, tok: Tok<'_>, tx: &str) -> Outcome {
        self.authorize_token(Right::Any, &tok)?;
        let q = parse_query(self.parts.uri.query(), &["wait"])?;
        let mut tx_id = [0u8; 16];
        hex::decode_to_slice(tx, &mut tx_id)
            .map_err(|_| Failure::bad("invalid_tx_id", "tx_id must be 32 hexadecimal digits"))?;
        let engine = &self.state.engine;
        if engine.service_index_of(&tok.service).is_none() {
            return Err(EngineError::UnknownService.into());
        }
        let id = TokenId::derive(&tok.service, &tok.username);
        let read = |now: u64| async move {
            match settled(|| engine.transaction(now, &tx_id)).await {
                Ok(t) if t.token_id == id => Ok(t),
                Err(EngineError::Unsettled) => Err(Failure::from(EngineError::Unsettled)),
                _ => Err(Failure::from(EngineError::UnknownTransaction)),
            }
        };
        let now = self.state.now();
        let t = read(now).await?;
        if q.wait_s == 0 || t.state != TxState::Waiting {
            return ok(&tx_body(&t));
        }
        let changed = engine.watch(&id);
        let t = read(now).await?;
        if t.state != TxState::Waiting {
            return ok(&tx_body(&t));
        }
        let limit = Duration::from_secs(q.wait_s)
            .min(self.state.config.max_wait)
            .min(Duration::from_millis(t.expires_ms.saturating_sub(now)));
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep(limit) => {}
            _ = self.state.stopping() => {}
        }
        ok(&tx_body(&read(self.state.now()).await?))
    }

    // Services and authkeys (unrestricted admin keys).

    async fn service_docs(&self) -> Result<Vec<ServiceDoc>, Failure> {
        if self.state.config.config_source_database {
            let store = self.state.store.clone();
            blocking(move || Ok(store.services()?)).await
        } else {
            Ok(self
                .state
                .engine
                .service_configs()
                .iter()
                .map(ServiceDoc::from_config)
                .collect())
        }
    }

    async fn service_list(&self) -> Outcome {
        self.authorize_unrestricted()?;
        let docs: Vec<ServiceDoc> = self
            .service_docs()
            .await?
            .into_iter()
            .map(redacted)
            .collect();
        ok(&json!({
            "source": if self.state.config.config_source_database { "database" } else { "file" },
            "services": docs,
        }))
    }

    async fn service_get(&self, name: String) -> Outcome {
        self.authorize_unrestricted()?;
        let doc = self
            .service_docs()
            .await?
            .into_iter()
            .find(|d| d.name == name)
            .ok_or(Failure::from(EngineError::UnknownService))?;
        ok(&redacted(doc))
    }

    /// Validates the full list, stores `doc`, and swaps the engine's services.
    fn save_service(
        state: &State,
        mut all: Vec<ServiceDoc>,
        doc: ServiceDoc,
    ) -> Result<ServiceDoc, Failure> {
        all.retain(|d| d.name != doc.name);
        all.push(doc.clone());
        let configs = zoftoken_storage::services_to_config(&all).map_err(|errors| {
            let at = format!("services[{}]", all.len() - 1);
            Failure::bad(
                "invalid_service",
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.path.replacen(&at, "service", 1), e.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        state.store.put_service(&doc)?;
        state.engine.reload_services(configs)?;
        state.set_details(&all);
        Ok(redacted(doc))
    }

    async fn service_create(&self, body: Incoming) -> Outcome {
        self.authorize_unrestricted()?;
        self.require_database()?;
        let mut doc: ServiceDoc = self.json(body).await?;
        refuse_new_ca_file(&doc, None)?;
        restore_redacted(&mut doc, None)?;
        let state = self.state_arc();
        let saved = blocking(move || {
            let all = state.store.services()?;
            if all.iter().any(|d| d.name == doc.name) {
                return Err(Failure::new(
                    StatusCode::CONFLICT,
                    "service_exists",
                    "a service of this name exists (PUT replaces it)",
                ));
            }
            Self::save_service(&state, all, doc)
        })
        .await?;
        Ok(json_response(StatusCode::CREATED, &saved))
    }

    async fn service_replace(&self, name: String, body: Incoming) -> Outcome {
        self.authorize_unrestricted()?;
        self.require_database()?;
        // The name is the path's: a body may leave it out.
        let mut value: serde_json::Value = self.json(body).await?;
        integral_floats_to_integers(&mut value);
        if let serde_json::Value::Object(map) = &mut value {
            map.entry("name")
                .or_insert_with(|| serde_json::Value::String(name.clone()));
        }
        let mut doc: ServiceDoc = serde_json::from_value(value)
            .map_err(|e| Failure::bad("invalid_json", e.to_string()))?;
        if doc.name != name {
            return Err(Failure::bad(
                "invalid_service",
                "the body's name must be the service name of the path",
            ));
        }
        let state = self.state_arc();
        let saved = blocking(move || {
            let all = state.store.services()?;
            let old = all
                .iter()
                .find(|d| d.name == doc.name)
                .ok_or(Failure::from(EngineError::UnknownService))?;
            refuse_new_ca_file(&doc, Some(old))?;
            // A document read back from the API carries `<redacted>`: keep the stored secrets.
            restore_redacted(&mut doc, Some(old))?;
            Self::save_service(&state, all, doc)
        })
        .await?;
        ok(&saved)
    }

    async fn service_delete(&self, name: String) -> Outcome {
        self.authorize_unrestricted()?;
        self.require_database()?;
        let q = parse_query(self.parts.uri.query(), &["force"])?;
        let state = self.state_arc();
        let tokens = blocking(move || {
            if state.store.services()?.iter().all(|d| d.name != name) {
                return Err(EngineError::UnknownService.into());
            }
            let mut tokens = 0u64;
            state.store.for_each_token(&mut |_, s, _| {
                if s == name {
                    tokens += 1;
                }
                true
            })?;
            if tokens > 0 && !q.force {
                return Err(Failure::new(
                    StatusCode::CONFLICT,
                    "service_has_tokens",
                    format!(
                        "the service has {tokens} tokens: delete them first or pass ?force=true \
                         (they stay stored, unusable until the service exists again)"
                    ),
                ));
            }
            // The running engine forgets it too: its tokens' packets are dropped from now on.
            let remaining: Vec<ServiceDoc> = state
                .store
                .services()?
                .into_iter()
                .filter(|d| d.name != name)
                .collect();
            let configs = zoftoken_storage::services_to_config(&remaining)
                .map_err(|_| Failure::internal())?;
            if !state.store.delete_service(&name)? {
                return Err(EngineError::UnknownService.into());
            }
            state.engine.reload_services(configs)?;
            state.set_details(&remaining);
            Ok(tokens)
        })
        .await?;
        ok(&json!({ "deleted": true, "tokens_kept": tokens }))
    }

    fn authkey_list(&self) -> Outcome {
        self.authorize_unrestricted()?;
        let keys: Vec<Value> = self
            .state
            .engine
            .authkey_list()
            .into_iter()
            .map(|k| {
                json!({
                    "name": k.name,
                    "admin": k.admin,
                    "service_mask": k.service_mask,
                    "user_mask": k.user_mask,
                })
            })
            .collect();
        ok(&json!({ "authkeys": keys }))
    }

    async fn authkey_create(&self, body: Incoming) -> Outcome {
        self.authorize_unrestricted()?;
        self.require_database()?;
        let b: AuthkeyBody = self.json(body).await?;
        if b.name.is_empty() || b.name.len() > crate::routes::AUTHKEY_NAME_MAX {
            return Err(Failure::bad(
                "invalid_name",
                "the authkey name must be 1 to 255 bytes",
            ));
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, bytes.as_mut());
        let secret = Zeroizing::new(match b.format {
            SecretFormat::Hex => hex::encode(bytes.as_ref()),
            SecretFormat::Base64 => {
                use base64::Engine as _;
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref())
            }
        });
        let doc = AuthkeyDoc::new(&b.name, &secret, b.admin, &b.service_mask, &b.user_mask);
        let state = self.state_arc();
        blocking(move || {
            let mut all = state.store.authkeys()?;
            if all.iter().any(|d| d.name == doc.name) {
                return Err(Failure::new(
                    StatusCode::CONFLICT,
                    "authkey_exists",
                    "an authkey of this name exists",
                ));
            }
            all.push(doc.clone());
            let configs = zoftoken_storage::authkeys_to_config(&all).map_err(|errors| {
                Failure::bad(
                    "invalid_authkey",
                    errors
                        .iter()
                        .map(|e| e.message.clone())
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })?;
            state.store.put_authkey(&doc)?;
            state.engine.reload_authkeys(&configs)?;
            Ok(())
        })
        .await?;
        Ok(json_response(
            StatusCode::CREATED,
            &json!({
                "name": b.name,
                "secret": secret.as_str(),
                "admin": b.admin,
                "service_mask": b.service_mask,
                "user_mask": b.user_mask,
            }),
        ))
    }

    async fn authkey_revoke(&self, name: String) -> Outcome {
        self.authorize_unrestricted()?;
        self.require_database()?;
        let state = self.state_arc();
        blocking(move || {
            if !state.store.delete_authkey(&name)? {
                return Err(Failure::new(
                    StatusCode::NOT_FOUND,
                    "unknown_authkey_name",
                    "no authkey of this name",
                ));
            }
            let configs = zoftoken_storage::authkeys_to_config(&state.store.authkeys()?)
                .map_err(|_| Failure::internal())?;
            state.engine.reload_authkeys(&configs)?;
            Ok(())
        })
        .await?;
        ok(&json!({ "revoked": true }))
    }

    // Webhook dead letters and disabled endpoints (unrestricted admin keys). A replay is
    // queued in the store; the running pipeline delivers it at its next poll.

    /// `GET /v1/webhooks/dead-letters[?limit=N]`: oldest first.
    async fn dead_letter_list(&self) -> Outcome {
        self.authorize_unrestricted()?;
        let q = parse_query(self.parts.uri.query(), &["limit"])?;
        let limit = q
            .limit
            .unwrap_or(DEAD_LETTERS_DEFAULT)
            .min(DEAD_LETTERS_MAX);
        let store = self.state.store.clone();
        let list = blocking(move || Ok(zoftoken_webhooks::dead_letters(&store, limit)?)).await?;
        ok(&json!({ "dead_letters": list }))
    }

    async fn dead_letter_replay(&self, id: String) -> Outcome {
        self.dead_letter_by_id(id, zoftoken_webhooks::replay_dead_letter, "replayed")
            .await
    }

    async fn dead_letter_replay_all(&self) -> Outcome {
        self.authorize_unrestricted()?;
        parse_query(self.parts.uri.query(), &[])?;
        let store = self.state.store.clone();
        let n = blocking(move || Ok(zoftoken_webhooks::replay_all_dead_letters(&store)?)).await?;
        ok(&json!({ "replayed": n }))
    }

    async fn dead_letter_delete(&self, id: String) -> Outcome {
        self.dead_letter_by_id(id, zoftoken_webhooks::delete_dead_letter, "deleted")
            .await
    }

    /// Runs `op` on the dead letter `id`; answers `{ done: true }`, or 404 if there is none.
    async fn dead_letter_by_id(
        &self,
        id: String,
        op: fn(&Store, &str) -> Result<bool, WebhookError>,
        done: &'static str,
    ) -> Outcome {
        self.authorize_unrestricted()?;
        parse_query(self.parts.uri.query(), &[])?;
        let store = self.state.store.clone();
        let found = blocking(move || Ok(op(&store, &id)?)).await?;
        if !found {
            return Err(unknown_dead_letter());
        }
        ok(&json!({ done: true }))
    }

    /// `GET /v1/webhooks/disabled`: endpoints disabled after a 410 Gone.
    async fn webhook_disabled_list(&self) -> Outcome {
        self.authorize_unrestricted()?;
        parse_query(self.parts.uri.query(), &[])?;
        let store = self.state.store.clone();
        let list = blocking(move || Ok(zoftoken_webhooks::disabled_endpoints(&store)?)).await?;
        let disabled: Vec<Value> = list
            .into_iter()
            .map(|d| {
                json!({
                    "service": d.service,
                    "url": d.url,
                    "status": d.status,
                    "at_ms": d.at_ms,
                })
            })
            .collect();
        ok(&json!({ "disabled": disabled }))
    }
}
