//! Reading `config.yaml`: the file parsed, environment overrides applied, every value
//! validated with its path, and the result ([`Loaded`]) with the paths and addresses resolved.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use zoftoken_engine::config::ConfigError;

use super::*;
use crate::logging::{self, LogFormat};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is malformed or has values of the wrong type or unknown fields.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// serde's message, with the field's path and the line.
        message: String,
    },
    /// Values are invalid: every problem, with its path.
    #[error("{path}: invalid configuration:\n{}", .errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every error found.
        errors: Vec<ConfigError>,
    },
}

/// The validated configuration, ready to use.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The file's contents after environment overrides.
    pub config: Config,
    /// UDP addresses, parsed.
    pub udp: Vec<SocketAddr>,
    /// HTTP address, parsed.
    pub http: SocketAddr,
    /// Services converted for the engine (empty with `config_source: database`).
    pub services: Vec<zoftoken_engine::ServiceConfig>,
    /// Authkeys converted for the engine (empty with `config_source: database`).
    pub authkeys: Vec<zoftoken_engine::AuthkeyConfig>,
    /// `api.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<zoftoken_api::IpRange>,
    /// With `storage.backend: postgres`: the connection (its string from the file or the
    /// environment) and the pool's limits.
    pub postgres: Option<zoftoken_storage_postgres::PgConfig>,
}

impl Loaded {
    /// The master key file to use when no environment variable gives the key.
    pub fn master_key_file(&self) -> PathBuf {
        self.config
            .master_key
            .file
            .clone()
            .unwrap_or_else(|| self.config.data_dir.join("master.key"))
    }

    /// Where `demo_admin_authkey: true` keeps the demo admin authkey's secret:
    /// `<data_dir>/demo-admin.authkey`.
    pub fn demo_admin_authkey_file(&self) -> PathBuf {
        self.config.data_dir.join("demo-admin.authkey")
    }

    /// How stale an answer from memory may be with a database other processes change
    /// (`storage.postgres.max_staleness_ms`).
    pub fn staleness_bound(&self) -> std::time::Duration {
        let ms = self
            .config
            .storage
            .postgres
            .as_ref()
            .and_then(|p| p.max_staleness_ms)
            .unwrap_or(DEFAULT_STALENESS_MS);
        std::time::Duration::from_millis(ms)
    }

    /// How long the change feed keeps a commit (`storage.postgres.feed_retention_s`).
    pub fn feed_retention(&self) -> std::time::Duration {
        let s = self
            .config
            .storage
            .postgres
            .as_ref()
            .and_then(|p| p.feed_retention_s)
            .unwrap_or(DEFAULT_FEED_RETENTION_S);
        std::time::Duration::from_secs(s)
    }

    /// How often a server on a shared database reads its change feed
    /// (`storage.postgres.follow_interval_ms`).
    pub fn follow_interval(&self) -> std::time::Duration {
        let ms = self
            .config
            .storage
            .postgres
            .as_ref()
            .and_then(|p| p.follow_interval_ms)
            .unwrap_or(DEFAULT_FOLLOW_INTERVAL_MS);
        std::time::Duration::from_millis(ms)
    }
}

/// The default time the change feed keeps a commit (`storage.postgres.feed_retention_s`).
const DEFAULT_FEED_RETENTION_S: u64 = 600;

/// The default interval of change-feed reads (`storage.postgres.follow_interval_ms`).
const DEFAULT_FOLLOW_INTERVAL_MS: u64 = 10;

/// The default staleness bound (`storage.postgres.max_staleness_ms`).
const DEFAULT_STALENESS_MS: u64 = 5_000;
/// The lowest staleness bound accepted: above the once-a-second keep-alive read.
const MIN_STALENESS_MS: u64 = 2_000;

/// Reads, overrides from `env` (a lookup function, `std::env::var` in production) and
/// validates the configuration at `path`.
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text, env)
}

/// As [`load`], from the file's text.
pub fn parse(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigFileError> {
    let mut config: Config = if text.trim().is_empty() {
        serde_norway::from_str("{}")
    } else {
        serde_norway::from_str(text)
    }
    .map_err(|e| ConfigFileError::Syntax {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut errors = Vec::new();
    let mut err = |p: &str, m: &str| {
        errors.push(ConfigError {
            path: p.to_owned(),
            message: m.to_owned(),
        })
    };
    if let Some(v) = env("ZOFTOKEN_LOG_FORMAT") {
        match v.as_str() {
            "text" => config.log_format = LogFormat::Text,
            "json" => config.log_format = LogFormat::Json,
            _ => err("ZOFTOKEN_LOG_FORMAT", "must be `text` or `json`"),
        }
    }
    if let Some(f) = &config.log_filter {
        if let Err(e) = logging::check_filter(f) {
            err("log_filter", &e.to_string());
        }
    }
    if let Some(v) = env("ZOFTOKEN_UDP_LISTEN") {
        config.listen.udp = v.split(',').map(|s| s.trim().to_owned()).collect();
    }
    if let Some(v) = env("ZOFTOKEN_HTTP_LISTEN") {
        config.listen.http = v;
    }
    if let Some(v) = env("ZOFTOKEN_DATA_DIR") {
        config.data_dir = PathBuf::from(v);
    }
    if let Some(v) = env("ZOFTOKEN_DURABILITY") {
        match v.as_str() {
            "wal" => config.durability = DurabilitySetting::Wal,
            "fsync" => config.durability = DurabilitySetting::Fsync,
            _ => err("ZOFTOKEN_DURABILITY", "must be `wal` or `fsync`"),
        }
    }
    if let Some(v) = env("ZOFTOKEN_IO") {
        match v.as_str() {
            "auto" => config.io = IoSetting::Auto,
            "uring" => config.io = IoSetting::Uring,
            "mmsg" => config.io = IoSetting::Mmsg,
            _ => err("ZOFTOKEN_IO", "must be `auto`, `uring` or `mmsg`"),
        }
    }
    if let Some(v) = env("ZOFTOKEN_IO_THREADS") {
        match v.parse::<usize>() {
            Ok(n) => config.io_threads = Some(n),
            Err(_) => err("ZOFTOKEN_IO_THREADS", "must be a number"),
        }
    }
    if config.io_threads.is_some_and(|n| n == 0 || n > 256) {
        err("io_threads", "must be 1 to 256");
    }
    if config
        .webhook_retry_seconds
        .is_some_and(|s| !(60..=604_800).contains(&s))
    {
        err("webhook_retry_seconds", "must be 60 to 604800 (a week)");
    }
    if let Some(v) = env("ZOFTOKEN_MASTER_KEY_FILE") {
        config.master_key.file = Some(PathBuf::from(v));
        config.master_key.env = None;
    }
    let mut udp = Vec::new();
    if config.listen.udp.is_empty() {
        err("listen.udp", "at least one address");
    }
    for (i, a) in config.listen.udp.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            Ok(a) => udp.push(a),
            Err(_) => err(
                &format!("listen.udp[{i}]"),
                "must be an IP address and port",
            ),
        }
    }
    let http = match config.listen.http.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            err("listen.http", "must be an IP address and port");
            SocketAddr::from(([127, 0, 0, 1], 8080))
        }
    };
    if config.data_dir.as_os_str().is_empty() {
        err("data_dir", "must not be empty");
    }
    if config.master_key.file.is_some() && config.master_key.env.is_some() {
        err("master_key", "give `file` or `env`, not both");
    }
    if let Some(name) = &config.master_key.env {
        if name.is_empty() {
            err("master_key.env", "must name an environment variable");
        }
    }
    let mut trusted_proxies = Vec::new();
    for (i, p) in config.api.trusted_proxies.iter().enumerate() {
        match p.parse::<zoftoken_api::IpRange>() {
            Ok(r) => trusted_proxies.push(r),
            Err(e) => err(&format!("api.trusted_proxies[{i}]"), &e.to_string()),
        }
    }
    if config.api.max_connections_per_address == Some(0) {
        err("api.max_connections_per_address", "must be at least 1");
    }
    if config.load_threads == Some(0) {
        err("load_threads", "must be at least 1");
    }
    let postgres = postgres_settings(&mut config, env, &mut err);
    let (mut services, mut authkeys) = (Vec::new(), Vec::new());
    match config.config_source {
        ConfigSource::Database => {
            if config.demo_admin_authkey {
                err(
                    "demo_admin_authkey",
                    "only with `config_source: file` (with the database, create an admin key \
                     with `zoftoken authkey create NAME --admin` before the first start)",
                );
            }
            if !config.services.is_empty() {
                err(
                    "services",
                    "must be empty with `config_source: database` (use `zoftoken service create`)",
                );
            }
            if !config.authkeys.is_empty() {
                err(
                    "authkeys",
                    "must be empty with `config_source: database` (use `zoftoken authkey create`)",
                );
            }
        }
        ConfigSource::File => {
            match zoftoken_storage::services_to_config(&config.services) {
                Ok(s) => services = s,
                Err(e) => errors.extend(e),
            }
            match zoftoken_storage::authkeys_to_config(&config.authkeys) {
                Ok(a) => authkeys = a,
                Err(e) => errors.extend(e),
            }
        }
    }
    if !errors.is_empty() {
        return Err(ConfigFileError::Invalid {
            path: path.to_owned(),
            errors,
        });
    }
    Ok(Loaded {
        config,
        udp,
        http,
        services,
        authkeys,
        trusted_proxies,
        postgres,
    })
}

/// `storage:` with its environment overrides (`ZOFTOKEN_STORAGE_BACKEND`,
/// `ZOFTOKEN_DATABASE_URL`): PostgreSQL's connection, checked, or `None` for RocksDB.
fn postgres_settings(
    config: &mut Config,
    env: &dyn Fn(&str) -> Option<String>,
    err: &mut dyn FnMut(&str, &str),
) -> Option<zoftoken_storage_postgres::PgConfig> {
    if let Some(v) = env("ZOFTOKEN_STORAGE_BACKEND") {
        match v.as_str() {
            "rocksdb" => config.storage.backend = BackendSetting::Rocksdb,
            "postgres" => config.storage.backend = BackendSetting::Postgres,
            _ => err(
                "ZOFTOKEN_STORAGE_BACKEND",
                "must be `rocksdb` or `postgres`",
            ),
        }
    }
    if config.storage.backend == BackendSetting::Rocksdb {
        if config.storage.postgres.is_some() {
            err("storage.postgres", "only with `storage.backend: postgres`");
        }
        return None;
    }
    let settings = config.storage.postgres.clone();
    let Some(s) = settings else {
        if env("ZOFTOKEN_DATABASE_URL").is_none() {
            err(
                "storage.postgres",
                "`backend: postgres` needs `postgres: { url: … }` or `url_env`, or \
                 ZOFTOKEN_DATABASE_URL in the environment",
            );
            return None;
        }
        return postgres_config(
            env("ZOFTOKEN_DATABASE_URL"),
            "ZOFTOKEN_DATABASE_URL",
            None,
            err,
        );
    };
    if s.url.is_some() && s.url_env.is_some() {
        err("storage.postgres", "give `url` or `url_env`, not both");
        return None;
    }
    let (url, from) = if let Some(url) = env("ZOFTOKEN_DATABASE_URL") {
        (Some(url), "ZOFTOKEN_DATABASE_URL".to_owned())
    } else if let Some(name) = &s.url_env {
        match env(name) {
            Some(url) => (Some(url), name.clone()),
            None => {
                err(
                    "storage.postgres.url_env",
                    &format!("`{name}` is not set in the environment"),
                );
                return None;
            }
        }
    } else {
        (s.url.clone(), "storage.postgres.url".to_owned())
    };
    if from == "storage.postgres.url" && url.is_none() {
        err("storage.postgres.url", "give `url` or `url_env`");
        return None;
    }
    postgres_config(url, &from, Some(&s), err)
}

fn postgres_config(
    url: Option<String>,
    from: &str,
    s: Option<&PostgresSettings>,
    err: &mut dyn FnMut(&str, &str),
) -> Option<zoftoken_storage_postgres::PgConfig> {
    let url = url?;
    let mut pg = match zoftoken_storage_postgres::PgConfig::parse(&url) {
        Ok(pg) => pg,
        Err(e) => {
            err(from, &e.to_string());
            return None;
        }
    };
    if from == "storage.postgres.url" && pg.has_password() {
        err(
            from,
            "holds a password: configuration files are read by many; give the connection \
             string in the environment instead (`url_env`, or ZOFTOKEN_DATABASE_URL)",
        );
        return None;
    }
    pg.pool_size = 16;
    if let Some(s) = s {
        if let Some(n) = s.pool_size {
            if !(1..=1024).contains(&n) {
                err("storage.postgres.pool_size", "must be 1 to 1024");
            }
            pg.pool_size = n;
        }
        if let Some(ms) = s.timeout_ms {
            if !(100..=600_000).contains(&ms) {
                err("storage.postgres.timeout_ms", "must be 100 to 600000");
            }
            pg.set_timeout(std::time::Duration::from_millis(ms));
        }
        if let Some(ms) = s.max_staleness_ms {
            if !(MIN_STALENESS_MS..=3_600_000).contains(&ms) {
                err(
                    "storage.postgres.max_staleness_ms",
                    &format!(
                        "must be {MIN_STALENESS_MS} to 3600000 (the server reaches the \
                         database once a second)"
                    ),
                );
            }
        }
        if let Some(ms) = s.follow_interval_ms {
            if !(1..=1_000).contains(&ms) {
                err("storage.postgres.follow_interval_ms", "must be 1 to 1000");
            }
        }
        if let Some(secs) = s.feed_retention_s {
            if !(60..=86_400).contains(&secs) {
                err("storage.postgres.feed_retention_s", "must be 60 to 86400");
            }
            pg.feed_retention = std::time::Duration::from_secs(secs);
        }
        if let Some(t) = &s.tls {
            let tls = zoftoken_storage_postgres::PgTls {
                ca_file: t.ca_file.as_ref().map(Into::into),
                cert_file: t.cert_file.as_ref().map(Into::into),
                key_file: t.key_file.as_ref().map(Into::into),
            };
            if let Err(e) = pg.set_tls(tls) {
                err("storage.postgres.tls", &e.to_string());
            }
        }
    }
    Some(pg)
}
