//! What handlers work with: the [`State`] shared by every connection, and the [`Ctx`] of one
//! request, which authorises it as its route declares (authkeys, masks, the
//! failed-authentication limiter).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::http::request::Parts;
use hyper::StatusCode;
use serde_json::Value;
use tokio::sync::watch;
use zoftoken_admin::Registry;
use zoftoken_engine::authkeys::FoundKey;
use zoftoken_engine::{Engine, Right};
use zoftoken_storage::{ServiceDoc, Store};

use crate::connection_key::ConnectionKey;
use crate::error::Failure;
use crate::limiter::Limiter;
use crate::meters::Meters;
use crate::routes::{Authorization, Params};
use crate::{ApiConfig, Clock, MetricsRender};

/// Shared by every connection.
pub(crate) struct State {
    pub config: ApiConfig,
    pub engine: Arc<Engine>,
    pub store: Arc<Store>,
    pub metrics: Option<MetricsRender>,
    /// Services and authkeys, under the admin layer's rules (changes from remote callers,
    /// applied to the running engine).
    pub registry: Registry,
    clock: Clock,
    pub shutdown: watch::Receiver<bool>,
    limiter: Limiter,
    pub meters: Meters,
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
        let registry = if config.config_source_database {
            Registry::database(store.clone())
        } else {
            Registry::running_file(engine.clone())
        }
        .with_running_engine(engine.clone())
        .for_remote_callers();
        let state = State {
            config,
            engine,
            store,
            metrics,
            registry,
            clock,
            shutdown,
            limiter: Limiter::new(),
            meters: Meters::new(),
            details: RwLock::new(Arc::new(HashMap::new())),
        };
        if state.config.config_source_database {
            state.refresh_details();
        } else {
            state.replace_details(state.config.service_details.clone());
        }
        state
    }

    /// Takes the details JSON of the stored services (database mode; after every change of
    /// services). A failed read keeps the current ones.
    pub fn refresh_details(&self) {
        if let Ok(docs) = self.registry.services() {
            self.replace_details(details_of(&docs));
        }
    }

    pub fn replace_details(&self, map: HashMap<String, Value>) {
        *self.details.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
    }

    /// The details JSON of every service.
    pub fn details(&self) -> Arc<HashMap<String, Value>> {
        self.details
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Resolves when shutdown starts.
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut rx = self.shutdown.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}

/// The details JSON of each service that has one.
fn details_of(docs: &[ServiceDoc]) -> HashMap<String, Value> {
    docs.iter()
        .filter_map(|d| Some((d.name.clone(), d.details.clone()?)))
        .collect()
}

/// One request's context.
pub(crate) struct Ctx<'a> {
    pub state: &'a Arc<State>,
    pub peer: SocketAddr,
    pub parts: &'a Parts,
    /// The authkey verified last on the request's connection.
    pub key: &'a ConnectionKey,
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

    /// Checks the caller's key as the route declares.
    pub fn authorize_route(
        &self,
        authorization: Authorization,
        params: &Params<'_>,
    ) -> Result<(), Failure> {
        let token = |right| -> Result<(), Failure> {
            let tok = params.token()?;
            self.authorize(|k| k.allows(right, tok.service, tok.username))
        };
        match authorization {
            Authorization::Public => Ok(()),
            Authorization::Token => token(Right::Any),
            Authorization::TokenAdmin => token(Right::Admin),
            Authorization::ServiceAdmin => {
                let service = params.service()?;
                self.authorize(|k| k.allows_service(Right::Admin, service))
            }
            Authorization::Unrestricted => self.authorize(FoundKey::is_unrestricted),
        }
    }

    /// Whether the caller's key (already authorised for the route) may do an admin
    /// operation on each of `usernames` in `service`, in their order.
    pub fn admin_allows_each(&self, service: &str, usernames: &[String]) -> Vec<bool> {
        let each = |k: &FoundKey| {
            usernames
                .iter()
                .map(|u| k.allows(Right::Admin, service, u))
                .collect()
        };
        self.bearer()
            .and_then(|secret| self.key.check(&self.state.engine, secret, each))
            .unwrap_or_else(|| vec![false; usernames.len()])
    }

    /// Checks the caller's key: `allows` answers for a key that exists (found through the
    /// connection's [`ConnectionKey`]). The key is looked up before the failed-authentication
    /// limiter is consulted: a key that exists is never refused by the limiter, and a limited
    /// source's refusal costs the same lookup as an unlimited one's.
    fn authorize(&self, allows: impl FnOnce(&FoundKey) -> bool) -> Result<(), Failure> {
        // `None`: no such key (or none sent); `Some(allowed)`: the key exists.
        let (verdict, reason) = match self.bearer() {
            Some(secret) => (
                self.key.check(&self.state.engine, secret, allows),
                "unknown_key",
            ),
            None => (None, "missing_key"),
        };
        match verdict {
            Some(true) => Ok(()),
            Some(false) => {
                metrics::counter!("zoftoken_api_auth_failures_total", "reason" => "forbidden")
                    .increment(1);
                Err(Failure::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this authkey may not do this operation on this service and user",
                ))
            }
            None => {
                let now = self.state.now();
                if let Some(retry) = self.state.limiter.fail(self.client_ip(), now) {
                    metrics::counter!("zoftoken_api_auth_failures_total", "reason" => "rate_limited")
                        .increment(1);
                    return Err(Failure::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_auth_failures",
                        "too many failed authentications from this address; try again later",
                    )
                    .retry_after(retry));
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

    /// Reads and parses the request's JSON body ([`crate::body::read_json`]).
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        body: hyper::body::Incoming,
    ) -> Result<T, Failure> {
        crate::body::read_json(self.parts, &self.state.config, body).await
    }

    /// As [`Ctx::json`], for a route whose bodies may be larger: at most `max` bytes.
    pub async fn json_within<T: serde::de::DeserializeOwned>(
        &self,
        body: hyper::body::Incoming,
        max: usize,
    ) -> Result<T, Failure> {
        crate::body::read_json_within(self.parts, &self.state.config, body, max).await
    }

    /// The query, with only `allowed` parameters ([`crate::body::parse_query`]).
    pub fn query(&self, allowed: &[&str]) -> Result<crate::body::Query, Failure> {
        crate::body::parse_query(self.parts.uri.query(), allowed)
    }

    /// The engine, the store and the time, for work on the blocking pool.
    pub fn handles(&self) -> (Arc<Engine>, Arc<Store>, u64) {
        (
            self.state.engine.clone(),
            self.state.store.clone(),
            self.state.now(),
        )
    }
}

/// Runs storage work (and the engine operation feeding it) on the blocking pool.
pub(crate) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, Failure> + Send + 'static,
) -> Result<R, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Failure::internal())?
}
