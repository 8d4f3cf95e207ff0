//! The ZofToken HTTP API for client assets: a small hyper 1 (HTTP/1.1) server that runs beside
//! the UDP engine in the same process, on a tokio runtime and thread(s) of its own, and reads
//! the engine's in-memory state directly (a status poll takes one shard lock and no storage
//! read; its JSON is written by hand into one buffer, and a keep-alive connection hashes its
//! authkey's secret once, not at every request).
//!
//! Every operation of the product's API table (`docs/product.md`) is a route under `/v1`,
//! declared once with its method, path, authorisation and handler ([`routes::ROUTES`]),
//! authorised by authkeys sent as `Authorization: Bearer <key>` (401 for a missing or unknown
//! key, 403 when the key lacks the admin right or its anchored masks refuse the service or the
//! username, never revealing whether the token exists; failed authentications are rate limited
//! per source address in bounded memory and counted; a key that exists is never refused by
//! that limiter; `X-Forwarded-For` is believed only from [`ApiConfig::trusted_proxies`]).
//! Mutating operations go through the admin layer (`zoftoken-admin`, the same rules as the
//! command line's) and are committed to the [`Store`] on the runtime's blocking pool before
//! they are answered; changes of services and authkeys are applied to the running engine at
//! once. Status and transaction reads long-poll (`?wait=N`) on the engine's watch futures: no
//! thread per waiter. Errors are always `{"error":{"code":"snake_case","message":"…"}}`. `/healthz`, `/readyz` and
//! `/openapi.json` (OpenAPI 3.1, kept by hand in `api/openapi.json` and tested against the
//! route table) are public and say nothing about tokens; `/metrics` (Prometheus text,
//! [`install_prometheus`]; it counts duress events) needs an unrestricted admin key.
//! Connections are bounded in total and per source address.
//!
//! Unrestricted admin keys also list, replay and delete the webhook pipeline's dead letters
//! and list the endpoints it disabled after a 410 (`/v1/webhooks/…`, through the admin
//! layer; a running pipeline delivers a replay at its next poll).
//!
//! It does not start the engine, load the store, run timers (`Engine::tick`), deliver webhooks
//! or terminate TLS (put a reverse proxy in front for that): the binary does those. It keeps
//! no rule of services, authkeys or token changes of its own: it parses requests, calls the
//! admin layer, and renders its results and errors (stable codes).
//!
//! Key types: [`ApiServer`] (start, local address, graceful shutdown), [`ApiConfig`],
//! [`ApiError`], [`Clock`], [`MetricsRender`].
#![forbid(unsafe_code)]

mod body;
mod connection_key;
mod context;
mod dispatch;
mod error;
mod http;
mod limiter;
mod meters;
mod qr;
mod resources;
mod response;
pub mod routes;

pub use http::{connection_cap, FD_RESERVE, MAX_CONNECTIONS, MAX_HEAD_BYTES};
pub use limiter::{
    IpRange, IpRangeError, CAPACITY as AUTH_LIMIT_SOURCES,
    MAX_FAILURES as AUTH_FAILURES_PER_WINDOW, WINDOW_MS as AUTH_WINDOW_MS,
};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use zoftoken_engine::Engine;
use zoftoken_storage::Store;

/// The current time as Unix milliseconds. The server passes the system clock; tests pass a
/// virtual one (the engine never reads a clock itself).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Renders the process's metrics as Prometheus text (see [`install_prometheus`]).
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// The OpenAPI 3.1 document served at `/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Errors of starting the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The listen address could not be bound or configured.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The tokio runtime or its thread could not be started.
    #[error("cannot start the API runtime: {0}")]
    Runtime(std::io::Error),
    /// The configuration is invalid (e.g. zero threads, a zero body limit).
    #[error("invalid API configuration: {0}")]
    Config(&'static str),
    /// The Prometheus recorder could not be installed (another global recorder exists).
    #[error("cannot install the Prometheus recorder: {0}")]
    Metrics(String),
}

/// How the API listens and what it accepts.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Listen address (`listen.http` in `config.yaml`; default 127.0.0.1:8080).
    pub listen: SocketAddr,
    /// Tokio worker threads (default 1). With 1, a current-thread runtime on one thread.
    pub threads: usize,
    /// Largest request body accepted (default 64 KiB); larger ones get 413.
    pub max_body_bytes: usize,
    /// Time allowed to send a request's headers (default 10 s); slower connections are closed.
    pub header_timeout: Duration,
    /// Time allowed to send a request's body (default 10 s); slower requests get 408.
    pub body_timeout: Duration,
    /// Longest long poll (`?wait=N` is capped to it; default 60 s).
    pub max_wait: Duration,
    /// Whether services and authkeys are managed in the database (`config_source: database`):
    /// then unrestricted admin keys may create, edit and delete them through the API;
    /// otherwise they are listed read-only.
    pub config_source_database: bool,
    /// The services' details JSON for the app (`services[].details` of `config.yaml`), served
    /// at `/v1/services/{name}/details`, with `config_source: file`. In database mode the
    /// details are read from the stored services instead and this is ignored.
    pub service_details: HashMap<String, serde_json::Value>,
    /// Reverse proxies whose `X-Forwarded-For` is believed (`api.trusted_proxies`; default
    /// none: the header is ignored and the peer's address is the client's). The
    /// failed-authentication limiter counts the forwarded client address of their requests,
    /// and the per-address connection cap does not apply to them.
    pub trusted_proxies: Vec<IpRange>,
    /// Connections served at once (default [`MAX_CONNECTIONS`]; the server lowers it to fit
    /// its file-descriptor limit, see [`connection_cap`]). Further ones wait in the kernel's
    /// backlog.
    pub max_connections: usize,
    /// Connections served at once from one source address (an IPv6 /64 counts as one;
    /// `api.max_connections_per_address`, default [`DEFAULT_CONNECTIONS_PER_ADDRESS`]).
    /// Further connections from it are closed at once. Trusted proxies are exempt.
    pub max_connections_per_address: usize,
}

/// Connections served at once from one source address, by default.
pub const DEFAULT_CONNECTIONS_PER_ADDRESS: usize = 1024;

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            threads: 1,
            max_body_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_wait: Duration::from_secs(60),
            config_source_database: false,
            service_details: HashMap::new(),
            trusted_proxies: Vec::new(),
            max_connections: MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_CONNECTIONS_PER_ADDRESS,
        }
    }
}

/// The running API server.
pub struct ApiServer {
    local_addr: SocketAddr,
    state: Arc<context::State>,
    shutdown: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// How long [`ApiServer::shutdown`] lets in-flight requests finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl ApiServer {
    /// Binds, starts its own tokio runtime on its own thread(s) (never on the UDP IO threads)
    /// and serves until [`ApiServer::shutdown`].
    pub fn start(
        config: ApiConfig,
        engine: Arc<Engine>,
        store: Arc<Store>,
        metrics: Option<MetricsRender>,
        clock: Clock,
    ) -> Result<ApiServer, ApiError> {
        http::start(config, engine, store, metrics, clock)
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the services' details JSON served with `config_source: file` (the server
    /// calls it when SIGHUP reloads the configuration file). In database mode the details
    /// come from the stored services and this does nothing.
    pub fn set_service_details(&self, details: HashMap<String, serde_json::Value>) {
        if !self.state.config.config_source_database {
            self.state.replace_details(details);
        }
    }

    /// Stops accepting, lets in-flight requests finish (at most [`SHUTDOWN_GRACE`]; long polls
    /// answer at once with the current state), and joins the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Bucket bounds, in seconds, of every latency histogram in `/metrics`.
pub const LATENCY_BUCKETS_S: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];

/// Installs the global `metrics` recorder as a Prometheus exporter without any listener of
/// its own (the API serves `/metrics`), and returns its renderer. Call once per process; a
/// thread runs the exporter's upkeep every 5 s (bounds the memory of histograms).
///
/// Latencies are Prometheus histograms with fixed buckets ([`LATENCY_BUCKETS_S`]), not
/// summaries: they aggregate across servers, and the upkeep only counts each sample into a
/// bucket (a summary's quantile sketch cost a visible share of a core at tens of thousands
/// of API requests or webhook deliveries per second).
pub fn install_prometheus() -> Result<MetricsRender, ApiError> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS_S)
        .map_err(|e| ApiError::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| ApiError::Metrics(e.to_string()))?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            upkeep.run_upkeep();
        })
        .map_err(ApiError::Runtime)?;
    Ok(Arc::new(move || handle.render()))
}
