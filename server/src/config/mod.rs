//! `config.yaml`: listen addresses, data directory, durability, master-key source, where
//! services and authkeys come from, and (with `config_source: file`) the services and
//! authkeys themselves. Environment variables override the deployment knobs. Everything is
//! validated at load and every error is reported with its path (`services[2].window: …`).
//! This module holds the document's types; [`load`] reads and checks a file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use zoftoken_storage::{AuthkeyDoc, Durability, ServiceDoc};

use crate::logging::LogFormat;

/// Where services and authkeys come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigSource {
    /// From this file (the command line cannot change them).
    #[default]
    File,
    /// From the database, edited with `zoftoken service …` and `zoftoken authkey …`.
    Database,
}

/// How durable each group commit is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySetting {
    /// Write-ahead log without fsync per batch: survives a crash of the process.
    #[default]
    Wal,
    /// fsync per batch: survives a power loss.
    Fsync,
}

impl From<DurabilitySetting> for Durability {
    fn from(d: DurabilitySetting) -> Durability {
        match d {
            DurabilitySetting::Wal => Durability::Wal,
            DurabilitySetting::Fsync => Durability::Fsync,
        }
    }
}

/// Which database holds the instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendSetting {
    /// RocksDB, embedded, in `data_dir`: one server.
    #[default]
    Rocksdb,
    /// PostgreSQL (`storage.postgres`): the database several servers of one instance share.
    Postgres,
}

/// The database (`storage:`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// `rocksdb` (default) or `postgres`.
    #[serde(default)]
    pub backend: BackendSetting,
    /// PostgreSQL's settings (`backend: postgres`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSettings>,
}

/// How to reach PostgreSQL (`storage.postgres:`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// The connection string, libpq style (`host=db1 port=5432 user=zoftoken dbname=zoftoken`
    /// or `postgresql://…`). One with a password is refused here: give it in the environment
    /// variable `url_env` names instead (or `ZOFTOKEN_DATABASE_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The environment variable holding the connection string (it may hold a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// Connections per server at most (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<usize>,
    /// Longest wait for a connection, for a connect, and for any one statement, in
    /// milliseconds (default 5000): beyond it the operation fails as if the database were
    /// down (no reply, `503`), never hangs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The staleness bound, in milliseconds (default 5000, at least 2000): answers from
    /// memory that show a token's state (STATUS replies, the API's status and transaction
    /// reads) are given only while the database answered within this time. Beyond it the
    /// UDP replies are withheld and the API answers `503`: other servers and the command
    /// line may have changed what memory shows. The server reaches the database at least
    /// once a second while it works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_staleness_ms: Option<u64>,
    /// How often the server reads the database's change feed for what other servers and the
    /// command line changed, in milliseconds (default 10, 1 to 1000): the time until another
    /// server's change shows here is about this plus one read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_interval_ms: Option<u64>,
    /// How long the change feed keeps a commit, in seconds (default 600, 60 to 86400): a
    /// server that could not read it for longer stops (its supervisor starts it again, and a
    /// start loads everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed_retention_s: Option<u64>,
    /// Start even though PostgreSQL replicates asynchronously (default false: refused). A
    /// failover to an asynchronous standby can lose writes the server acknowledged, and a lost
    /// write can let a replayed request through; set this only if you accept that.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_async_replication: bool,
    /// TLS to the database. Connections to another machine are TLS unless the connection
    /// string says `sslmode=disable`, with the database's certificate verified against the
    /// system's trust anchors and its host name checked; these settings change what is
    /// trusted and presented, and turn TLS on for a database on this machine too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PostgresTlsSettings>,
}

/// `storage.postgres.tls:` (PEM files, read at start).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTlsSettings {
    /// The authority that signed the database's certificate, trusted instead of the system's
    /// trust anchors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// A client certificate (chain) for a database that authenticates clients by
    /// certificate; with `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// The client certificate's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("url", &self.url.as_ref().map(|_| "<not shown>"))
            .field("url_env", &self.url_env)
            .field("pool_size", &self.pool_size)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_staleness_ms", &self.max_staleness_ms)
            .field("follow_interval_ms", &self.follow_interval_ms)
            .field("feed_retention_s", &self.feed_retention_s)
            .field("accept_async_replication", &self.accept_async_replication)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Which UDP driver serves the apps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoSetting {
    /// io_uring if a probe at start succeeds, else `recvmmsg`/`sendmmsg` (logged).
    #[default]
    Auto,
    /// io_uring, or fail to start.
    Uring,
    /// `recvmmsg`/`sendmmsg`.
    Mmsg,
}

/// Listen addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// UDP addresses for the apps.
    #[serde(default = "default_udp")]
    pub udp: Vec<String>,
    /// HTTP address of the API.
    #[serde(default = "default_http")]
    pub http: String,
}

fn default_udp() -> Vec<String> {
    vec!["0.0.0.0:7878".into()]
}
fn default_http() -> String {
    "127.0.0.1:8080".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            udp: default_udp(),
            http: default_http(),
        }
    }
}

/// The HTTP API's settings (`api:`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For` header is believed:
    /// the failed-authentication limit then counts the client address they forward, and the
    /// per-address connection cap does not apply to them. Default none: the header is
    /// ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Connections served at once from one source address (an IPv6 /64 counts as one;
    /// default 1024). Each long poll holds a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_address: Option<usize>,
}

/// Where the master key comes from: a file holding 64 hex digits, or an environment variable.
/// Absent: `<data_dir>/master.key`, created with a warning when the database is new.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterKeySource {
    /// Path of the key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Name of an environment variable holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// State-changing device requests one token may make per second unless configured: far
/// above what a person does, far below what would flood a webhook receiver.
pub const DEFAULT_TOKEN_CHANGES_PER_S: u16 = 10;

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen addresses.
    #[serde(default)]
    pub listen: Listen,
    /// Directory of the database (relative paths are relative to the working directory); with
    /// PostgreSQL, of the master key file and nothing else.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The database: embedded RocksDB in `data_dir` (default) or PostgreSQL.
    #[serde(default, skip_serializing_if = "is_default")]
    pub storage: StorageSettings,
    /// Durability of group commits.
    #[serde(default)]
    pub durability: DurabilitySetting,
    /// The master key's source.
    #[serde(default)]
    pub master_key: MasterKeySource,
    /// Where services and authkeys come from.
    #[serde(default)]
    pub config_source: ConfigSource,
    /// Threads that rebuild the tables at start (default: one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_threads: Option<usize>,
    /// The UDP driver.
    #[serde(default)]
    pub io: IoSetting,
    /// UDP IO threads per listen address, each with its own `SO_REUSEPORT` socket (default:
    /// one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_threads: Option<usize>,
    /// Threads of the HTTP API's runtime (default 1: the API shares the machine with the UDP
    /// IO threads and must not slow them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_threads: Option<usize>,
    /// The HTTP API's settings.
    #[serde(default)]
    pub api: ApiSettings,
    /// Threads of the webhook pipeline's runtime (default 1). 0 pauses delivery: events
    /// are kept in the outbox and delivered by the next server started with threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_threads: Option<usize>,
    /// Most state-changing device requests (open, close, PIN change, transaction decisions)
    /// one token may make per second; more are dropped and counted (default
    /// [`DEFAULT_TOKEN_CHANGES_PER_S`]; 0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_changes_per_s: Option<u16>,
    /// Seconds an event's delivery is retried from its first attempt before it becomes a
    /// dead letter (default 86400, a day; 60 to 604800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_retry_seconds: Option<u64>,
    /// Services (`config_source: file` only).
    #[serde(default)]
    pub services: Vec<ServiceDoc>,
    /// Authkeys (`config_source: file` only).
    #[serde(default)]
    pub authkeys: Vec<AuthkeyDoc>,
    /// Demos only (default false; never in production): `serve`, at its first start on a new
    /// database, creates an admin authkey named [`DEMO_ADMIN_AUTHKEY`] with unrestricted
    /// masks and writes its secret to [`Loaded::demo_admin_authkey_file`] (mode 0600), so
    /// that a first API call needs no hand-edited file. The server reads that file at every
    /// start and SIGHUP while this is on (deleting the file revokes the key); nothing is
    /// created for a database that exists already. `config_source: file` only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub demo_admin_authkey: bool,
    /// Log lines on standard error: `text` (default) or `json` (one object per line).
    #[serde(default)]
    pub log_format: LogFormat,
    /// Which log events are written, as `RUST_LOG` directives (default `info`; for example
    /// `warn,zoftoken_webhooks=debug`). The `RUST_LOG` environment variable wins when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_filter: Option<String>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The name of the authkey `demo_admin_authkey: true` creates.
pub const DEMO_ADMIN_AUTHKEY: &str = "demo-admin";

/// The configuration as `check-config` prints it: every webhook secret (`secret`,
/// `previous_secret`, `shared_token`) and every authkey `secret` redacted.
pub fn shown(config: &Config) -> Config {
    let mut shown = config.clone();
    for s in &mut shown.services {
        *s = s.redacted();
    }
    for a in &mut shown.authkeys {
        if a.secret.is_some() {
            a.secret = Some(zoftoken_storage::REDACTED.into());
        }
    }
    shown
}

mod load;
pub use load::{load, parse, ConfigFileError, Loaded};

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn paths(r: Result<Loaded, ConfigFileError>) -> Vec<String> {
        match r {
            Err(ConfigFileError::Invalid { errors, .. }) => {
                errors.into_iter().map(|e| e.path).collect()
            }
            Err(e) => vec![format!("other: {e}")],
            Ok(_) => vec![],
        }
    }

    #[test]
    fn the_demo_config_is_valid() {
        // The directory at run time (a shared target directory may hold a binary built in
        // another checkout, so a path baked in at compile time can be stale).
        let dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test");
        let path = Path::new(&dir).join("../config/demo.yaml");
        let l = load(&path, &no_env).unwrap();
        assert_eq!(l.services.len(), 1);
        assert_eq!(l.config.config_source, ConfigSource::File);
        assert!(
            l.config.demo_admin_authkey,
            "the demo creates its admin authkey at its first start"
        );
    }

    #[test]
    fn the_demo_admin_authkey_is_off_unless_asked_for_and_file_mode_only() {
        let l = parse(Path::new("c.yaml"), "", &no_env).unwrap();
        assert!(!l.config.demo_admin_authkey);
        assert!(
            !serde_norway::to_string(&shown(&l.config))
                .unwrap()
                .contains("demo_admin_authkey"),
            "not shown while off"
        );
        let l = parse(Path::new("c.yaml"), "demo_admin_authkey: true\n", &no_env).unwrap();
        assert_eq!(
            l.demo_admin_authkey_file(),
            PathBuf::from("data/demo-admin.authkey")
        );
        assert_eq!(
            paths(parse(
                Path::new("c.yaml"),
                "config_source: database\ndemo_admin_authkey: true\n",
                &no_env
            )),
            vec!["demo_admin_authkey"]
        );
    }

    #[test]
    fn an_empty_file_means_every_default() {
        let l = parse(Path::new("c.yaml"), "", &no_env).unwrap();
        assert_eq!(l.config.data_dir, PathBuf::from("data"));
        assert_eq!(l.udp, vec!["0.0.0.0:7878".parse().unwrap()]);
        assert_eq!(l.master_key_file(), PathBuf::from("data/master.key"));
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let text = r#"
listen:
  udp: ["0.0.0.0:7878", "nonsense"]
  http: "localhost"
master_key: { file: k, env: K }
services:
  - name: good
    endpoints: ["a.example:7878"]
  - name: good
    window: 100000
    endpoints: []
  - name: third
    endpoints: ["b.example:7878"]
    otp: { alphabet: hex, length: 6 }
    webhook: { url: "ftp://x", secret: "" }
authkeys:
  - name: k1
    secret: s
    service_mask: "("
  - name: k2
    secret_hash: "zz"
"#;
        assert_eq!(
            paths(parse(Path::new("c.yaml"), text, &no_env)),
            vec![
                "listen.udp[1]",
                "listen.http",
                "master_key",
                "services[1].endpoints",
                "services[1].name",
                "services[1].window",
                "services[2].otp.alphabet",
                "services[2].webhook.secret",
                "services[2].webhook.url",
                "authkeys[0].service_mask",
                "authkeys[1].secret_hash",
            ]
        );
    }

    #[test]
    fn wrong_types_and_unknown_fields_name_the_field() {
        for (text, needle) in [
            (
                "services:\n  - name: a\n    window: ten\n    endpoints: [\"a:1\"]\n",
                "services[0].window",
            ),
            ("durability: sometimes\n", "durability"),
            ("listen:\n  upd: []\n", "upd"),
        ] {
            match parse(Path::new("c.yaml"), text, &no_env) {
                Err(ConfigFileError::Syntax { message, .. }) => {
                    assert!(message.contains(needle), "{message}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = |k: &str| match k {
            "ZOFTOKEN_DATA_DIR" => Some("/srv/zt".to_owned()),
            "ZOFTOKEN_DURABILITY" => Some("fsync".to_owned()),
            "ZOFTOKEN_UDP_LISTEN" => Some("127.0.0.1:1, [::1]:2".to_owned()),
            _ => None,
        };
        let l = parse(Path::new("c.yaml"), "data_dir: here\n", &env).unwrap();
        assert_eq!(l.config.data_dir, PathBuf::from("/srv/zt"));
        assert_eq!(l.config.durability, DurabilitySetting::Fsync);
        assert_eq!(l.udp.len(), 2);
        let bad = |k: &str| (k == "ZOFTOKEN_DURABILITY").then(|| "maybe".to_owned());
        assert_eq!(
            paths(parse(Path::new("c.yaml"), "", &bad)),
            vec!["ZOFTOKEN_DURABILITY"]
        );
    }

    #[test]
    fn api_settings_are_parsed_and_checked() {
        let l = parse(Path::new("c.yaml"), "", &no_env).unwrap();
        assert!(
            l.trusted_proxies.is_empty(),
            "no proxy is trusted by default"
        );
        let text = "api:\n  trusted_proxies: [\"10.0.0.0/8\", \"::1\"]\n  max_connections_per_address: 8\n";
        let l = parse(Path::new("c.yaml"), text, &no_env).unwrap();
        assert_eq!(l.trusted_proxies.len(), 2);
        assert!(l.trusted_proxies[0].contains("10.9.8.7".parse().unwrap()));
        assert_eq!(l.config.api.max_connections_per_address, Some(8));
        let text = "api:\n  trusted_proxies: [\"10.0.0.0/40\", \"proxy.example\"]\n  max_connections_per_address: 0\n";
        assert_eq!(
            paths(parse(Path::new("c.yaml"), text, &no_env)),
            vec![
                "api.trusted_proxies[0]",
                "api.trusted_proxies[1]",
                "api.max_connections_per_address"
            ]
        );
    }

    #[test]
    fn padded_masks_and_control_characters_are_refused_in_the_file() {
        let text = "authkeys:\n  - name: root\n    secret: s\n    admin: true\n    service_mask: \".* \"\n\
                    services:\n  - name: \"a\\nb\"\n    endpoints: [\"a:1\"]\n";
        assert_eq!(
            paths(parse(Path::new("c.yaml"), text, &no_env)),
            vec!["services[0].name", "authkeys[0].service_mask"]
        );
    }

    #[test]
    fn database_mode_keeps_lists_out_of_the_file() {
        let text = "config_source: database\nservices:\n  - name: a\n    endpoints: [\"a:1\"]\n";
        assert_eq!(
            paths(parse(Path::new("c.yaml"), text, &no_env)),
            vec!["services"]
        );
    }
}
