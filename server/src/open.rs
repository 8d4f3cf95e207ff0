//! Opening the database as a configuration says: the master key (from the environment, a
//! key file, or generated for a new database), RocksDB in the data directory or PostgreSQL
//! (whose replication must not lose acknowledged writes on a failover, unless the operator
//! accepts it), the store's schema and key checks, and the engine built from the configured
//! services.
//!
//! With `demo_admin_authkey: true` (demos only), the demo admin authkey's secret file in the
//! data directory is written at the first start ([`write_demo_admin_authkey`]) and read with
//! the configuration's authkeys ([`demo_admin_authkey`]).
//!
//! Nothing secret is left readable by others: a key file that group or others may read or
//! write is refused, the data directory is created (or tightened to) 0700, and the binary
//! sets its umask to 077 so that every file RocksDB or an export creates is 0600.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zoftoken_engine::{Engine, EngineConfig};
use zoftoken_storage::{AuthkeyDoc, KvError, KvStore, MasterKey, Store, StoreError};
use zoftoken_storage_postgres::{PgConfig, PgKv, PgOpenError};
use zoftoken_storage_rocksdb::RocksKv;

use crate::config::{ConfigSource, Loaded, DEMO_ADMIN_AUTHKEY};

/// Why the database could not be opened. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The master key is missing.
    #[error("master key missing: {0}")]
    KeyMissing(String),
    /// The master key is malformed.
    #[error("master key invalid: {0}")]
    KeyInvalid(String),
    /// The master key file is open to group or others.
    #[error(
        "master key file {path} has mode {mode:04o}: group and others must have no access to it \
         (run `chmod 600 {path}`); refusing to use it"
    )]
    KeyFileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database is used by a running server.
    #[error("{0}\nThe server is running: stop it first, or use the HTTP API.")]
    Locked(String),
    /// The store refused to open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// PostgreSQL could not be used: unreachable, refused the connection, or a schema this
    /// build does not know.
    #[error("PostgreSQL {database}: {source}")]
    Postgres {
        /// Where (without credentials).
        database: String,
        /// Why.
        #[source]
        source: PgOpenError,
    },
    /// PostgreSQL replicates so that a failover could lose acknowledged writes, and the
    /// configuration does not accept that.
    #[error("PostgreSQL {database}: {message}")]
    Replication {
        /// Where (without credentials).
        database: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Services or authkeys in the database are invalid.
    #[error("configuration in the database is invalid:\n{0}")]
    Config(String),
    /// The engine refused the configuration.
    #[error("engine: {0}")]
    Engine(#[from] zoftoken_engine::EngineError),
    /// The demo admin authkey's secret file (`demo_admin_authkey: true`) cannot be used: open
    /// to group or others, empty, or its key clashes with the file's authkeys.
    #[error("demo admin authkey file {path}: {message}")]
    DemoAuthkey {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
}

impl OpenError {
    /// The process's exit code: 2 (invalid configuration) for a master key that is missing,
    /// malformed or open to others, 3 for a database in use by a running server, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            OpenError::KeyMissing(_)
            | OpenError::KeyInvalid(_)
            | OpenError::KeyFileMode { .. }
            | OpenError::DemoAuthkey { .. } => 2,
            OpenError::Locked(_) => 3,
            OpenError::Postgres {
                source: PgOpenError::Connect(_),
                ..
            } => 5,
            _ => 1,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Whether `dir` holds a RocksDB database.
pub fn rocksdb_exists(dir: &Path) -> bool {
    dir.join("CURRENT").exists()
}

/// The configured database, for logs: the data directory, or PostgreSQL's host and database
/// (never its password).
pub fn describe_database(loaded: &Loaded) -> String {
    match &loaded.postgres {
        Some(pg) if pg.encrypted() => format!("PostgreSQL {} (TLS)", pg.describe()),
        Some(pg) => format!("PostgreSQL {}", pg.describe()),
        None => loaded.config.data_dir.display().to_string(),
    }
}

/// Whether the configured database holds an instance already: RocksDB's files in the data
/// directory, or PostgreSQL's schema.
pub fn database_exists(loaded: &Loaded) -> Result<bool, OpenError> {
    match &loaded.postgres {
        None => Ok(rocksdb_exists(&loaded.config.data_dir)),
        Some(pg) => PgKv::schema_version(pg)
            .map(|v| v > 0)
            .map_err(|source| OpenError::Postgres {
                database: pg.describe(),
                source,
            }),
    }
}

/// Finds the master key. `warnings` receives what the operator must know (a generated key).
pub fn master_key(
    loaded: &Loaded,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<MasterKey, OpenError> {
    let parse = |text: &str, from: &str| {
        MasterKey::from_hex(text).map_err(|e| OpenError::KeyInvalid(format!("{from}: {e}")))
    };
    if let Some(text) = env("ZOFTOKEN_MASTER_KEY") {
        return parse(&text, "ZOFTOKEN_MASTER_KEY");
    }
    if let Some(name) = &loaded.config.master_key.env {
        let text = env(name).ok_or_else(|| {
            OpenError::KeyMissing(format!(
                "master_key.env names `{name}`, which is not set in the environment"
            ))
        })?;
        return parse(&text, name);
    }
    let file = loaded.master_key_file();
    if file.exists() {
        check_key_file_mode(&file)?;
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(&file).map_err(io(&file))?);
        return parse(&text, &file.display().to_string());
    }
    if database_exists(loaded)? {
        let database = describe_database(loaded);
        return Err(OpenError::KeyMissing(format!(
            "{} does not exist, but the database in {database} does: it needs the key it was \
             created with (restore the key file, or set ZOFTOKEN_MASTER_KEY)",
            file.display(),
        )));
    }
    if loaded.config.master_key.file.is_some() {
        return Err(OpenError::KeyMissing(format!(
            "{} does not exist (create it with 64 hex digits, e.g. `openssl rand -hex 32`)",
            file.display()
        )));
    }
    // The embedded default: a new database, no key configured. Generate one beside it.
    let (key, text) = MasterKey::generate();
    if let Some(parent) = file.parent() {
        create_private_dir(parent).map_err(io(parent))?;
    }
    let mut f = open_private(&file).map_err(io(&file))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(io(&file))?;
    warnings.push(format!(
        "generated a new master key in {} (mode 0600). Anyone with this file and a copy of the \
         database has every token secret: for production, move it off the data volume and \
         point master_key.file or ZOFTOKEN_MASTER_KEY at it. Losing it loses every token.",
        file.display()
    ));
    Ok(key)
}

/// Refuses a key file that group or others may read, write or execute (as ssh refuses a
/// private key): the key is the database's root of trust.
fn check_key_file_mode(file: &Path) -> Result<(), OpenError> {
    match mode_open_to_others(file)? {
        Some(mode) => Err(OpenError::KeyFileMode {
            path: file.to_owned(),
            mode,
        }),
        None => Ok(()),
    }
}

/// The permission bits of `file` if group or others have any access to it.
fn mode_open_to_others(file: &Path) -> Result<Option<u32>, OpenError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file)
            .map_err(io(file))?
            .permissions()
            .mode()
            & 0o7777;
        if mode & 0o077 != 0 {
            return Ok(Some(mode));
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(None)
}

/// The demo admin authkey of `demo_admin_authkey: true`: an admin key with unrestricted masks
/// whose secret is the content of [`Loaded::demo_admin_authkey_file`]. `None` when the
/// setting is off (the file is then never read) or the file does not exist (never created,
/// or deleted to revoke the key). A file that group or others may access is refused, as a
/// master key file is.
pub fn demo_admin_authkey(loaded: &Loaded) -> Result<Option<AuthkeyDoc>, OpenError> {
    if !loaded.config.demo_admin_authkey {
        return Ok(None);
    }
    let file = loaded.demo_admin_authkey_file();
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => zeroize::Zeroizing::new(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&file)(e)),
    };
    if let Some(mode) = mode_open_to_others(&file)? {
        return Err(OpenError::DemoAuthkey {
            message: format!(
                "mode {mode:04o}: group and others must have no access to it (run `chmod 600 \
                 {}`); refusing to use it",
                file.display()
            ),
            path: file,
        });
    }
    let secret = text.trim();
    if secret.is_empty() {
        return Err(OpenError::DemoAuthkey {
            path: file,
            message: "empty; delete it to revoke the key".into(),
        });
    }
    Ok(Some(AuthkeyDoc::new(
        DEMO_ADMIN_AUTHKEY,
        secret,
        true,
        ".*",
        ".*",
    )))
}

/// Writes the demo admin authkey's secret to a new file (mode 0600; an existing file is never
/// replaced) and returns the file.
pub fn write_demo_admin_authkey(loaded: &Loaded, secret: &str) -> Result<PathBuf, OpenError> {
    let file = loaded.demo_admin_authkey_file();
    let mut f = open_private(&file).map_err(io(&file))?;
    f.write_all(secret.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(io(&file))?;
    Ok(file)
}

/// Sets the data directory to 0700 if group or others have any access to it; returns a line
/// for the log when it did.
fn tighten_data_dir(dir: &Path) -> std::io::Result<Option<String>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            return Ok(Some(format!(
                "the data directory {} had mode {mode:04o}; set it to 0700 (the database is \
                 for this user only)",
                dir.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(None)
}

/// Creates (or truncates) a file readable and writable by the owner only: mode 0600 for a
/// new file, and an existing regular file is set to 0600 before anything is written to it.
pub fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let f = o.open(path)?;
    // Only a regular file: `-o /dev/stdout` must not change a terminal's mode.
    #[cfg(unix)]
    if f.metadata()?.is_file() {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(f)
}

/// Creates a directory (and its parents) readable by the owner only, if it does not exist.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

/// Opens the store of a configuration.
pub fn open_store(
    loaded: &Loaded,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Store, OpenError> {
    let key = master_key(loaded, env, warnings)?;
    let kv: Arc<dyn KvStore> = match &loaded.postgres {
        Some(pg) => Arc::new(open_postgres(loaded, pg, warnings)?),
        None => {
            let dir = &loaded.config.data_dir;
            create_private_dir(dir).map_err(io(dir))?;
            if let Some(note) = tighten_data_dir(dir).map_err(io(dir))? {
                warnings.push(note);
            }
            Arc::new(RocksKv::open(dir).map_err(|e| match e {
                KvError::Locked(source) => OpenError::Locked(source.to_string()),
                other => OpenError::Store(other.into()),
            })?)
        }
    };
    Ok(Store::open(kv, key, loaded.config.durability.into())?)
}

/// Connects to PostgreSQL (schema migrated to this build's version) and checks that a
/// failover cannot lose a write the server acknowledges: no standby that replicates
/// asynchronously, commits that wait for the synchronous ones, not a standby itself. Unless
/// `storage.postgres.accept_async_replication` accepts the risk (then a warning).
fn open_postgres(
    loaded: &Loaded,
    pg: &PgConfig,
    warnings: &mut Vec<String>,
) -> Result<PgKv, OpenError> {
    let database = pg.describe();
    if !pg.encrypted() && !pg.is_local() {
        warnings.push(format!(
            "PostgreSQL {database}: the connection is not encrypted (sslmode=disable): anyone \
             on the network path can read and change what this server reads and writes"
        ));
    }
    let kv = PgKv::open(pg).map_err(|source| OpenError::Postgres {
        database: database.clone(),
        source,
    })?;
    let replication = kv.replication().map_err(|e| OpenError::Store(e.into()))?;
    if replication.in_recovery {
        return Err(OpenError::Replication {
            database,
            message: "is a standby (read-only, in recovery): point the server at the primary"
                .into(),
        });
    }
    if let Some(why) = replication.loss_on_failover() {
        let accepted = loaded
            .config
            .storage
            .postgres
            .as_ref()
            .is_some_and(|p| p.accept_async_replication);
        let risk = format!(
            "{why}. A failover could lose writes this server acknowledged, and a lost write \
             can let a replayed request through"
        );
        if !accepted {
            return Err(OpenError::Replication {
                database,
                message: format!(
                    "{risk}. Make the standbys synchronous (synchronous_standby_names, \
                     synchronous_commit = on), or set \
                     storage.postgres.accept_async_replication: true to accept the risk"
                ),
            });
        }
        warnings.push(format!(
            "PostgreSQL {database}: {risk} (accepted by storage.postgres.accept_async_replication)"
        ));
    }
    Ok(kv)
}

/// Opens the database of a damaged write-ahead log, dropping everything from the first damage
/// on (`zoftoken db recover`), and checks it as a start would (schema, master key). The
/// report says what was dropped.
pub fn recover_store(
    loaded: &Loaded,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<(Store, zoftoken_storage_rocksdb::Recovery), OpenError> {
    if loaded.postgres.is_some() {
        return Err(OpenError::Io {
            path: loaded.config.data_dir.clone(),
            source: std::io::Error::other(
                "`db recover` repairs an embedded RocksDB database; PostgreSQL recovers by \
                 itself (its own tools restore a damaged cluster)",
            ),
        });
    }
    let dir = &loaded.config.data_dir;
    if !rocksdb_exists(dir) {
        return Err(OpenError::Io {
            path: dir.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no database here"),
        });
    }
    let key = master_key(loaded, env, warnings)?;
    let (kv, recovery) = RocksKv::recover(dir).map_err(|e| match e {
        KvError::Locked(source) => OpenError::Locked(source.to_string()),
        other => OpenError::Store(other.into()),
    })?;
    let store = Store::open(Arc::new(kv), key, loaded.config.durability.into())?;
    Ok((store, recovery))
}

/// The exit code of a failed start caused by the database: 5 when it cannot be written or
/// read (a full disk, a read-only or failing filesystem), 6 when it is damaged (see `zoftoken
/// db recover`); `None` for other failures.
pub fn storage_exit_code(e: &anyhow::Error) -> Option<u8> {
    e.chain().find_map(|cause| {
        let kv = cause
            .downcast_ref::<KvError>()
            .or_else(|| match cause.downcast_ref::<StoreError>() {
                Some(StoreError::Kv(k)) => Some(k),
                _ => None,
            })
            .or_else(|| match cause.downcast_ref::<OpenError>() {
                Some(OpenError::Store(StoreError::Kv(k))) => Some(k),
                _ => None,
            });
        match kv {
            Some(k) => kv_exit_code(k),
            None => cause.downcast_ref::<StoreError>().and_then(store_exit_code),
        }
    })
}

/// The exit code for a store's error: 6 for damage, 5 for a database that cannot write or
/// read, `None` for anything else (a locked database is [`OpenError::Locked`]'s 3).
pub fn store_exit_code(e: &StoreError) -> Option<u8> {
    match e {
        StoreError::Kv(k) => kv_exit_code(k),
        StoreError::Corrupt { .. } => Some(6),
        _ => None,
    }
}

fn kv_exit_code(e: &KvError) -> Option<u8> {
    match e {
        KvError::Corruption(_) => Some(6),
        KvError::Locked(_) => None,
        _ => Some(5),
    }
}

/// The services and authkeys in effect: the file's, or the database's.
pub fn effective_config(
    loaded: &Loaded,
    store: &Store,
) -> Result<
    (
        Vec<zoftoken_engine::ServiceConfig>,
        Vec<zoftoken_engine::AuthkeyConfig>,
    ),
    OpenError,
> {
    let list = |e: Vec<zoftoken_engine::config::ConfigError>| {
        e.iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    match loaded.config.config_source {
        ConfigSource::File => match demo_admin_authkey(loaded)? {
            None => Ok((loaded.services.clone(), loaded.authkeys.clone())),
            Some(demo) => {
                let mut docs = loaded.config.authkeys.clone();
                docs.push(demo);
                let authkeys = zoftoken_storage::authkeys_to_config(&docs).map_err(|e| {
                    OpenError::DemoAuthkey {
                        path: loaded.demo_admin_authkey_file(),
                        message: format!(
                            "its key `{DEMO_ADMIN_AUTHKEY}` does not fit the configuration's \
                             authkeys:\n{}",
                            list(e)
                        ),
                    }
                })?;
                Ok((loaded.services.clone(), authkeys))
            }
        },
        ConfigSource::Database => {
            let services = zoftoken_storage::services_to_config(&store.services()?)
                .map_err(|e| OpenError::Config(list(e)))?;
            let authkeys = zoftoken_storage::authkeys_to_config(&store.authkeys()?)
                .map_err(|e| OpenError::Config(list(e)))?;
            Ok((services, authkeys))
        }
    }
}

/// An engine over the configuration's services and authkeys (tables empty).
pub fn build_engine(loaded: &Loaded, store: &Store, epoch: u32) -> Result<Engine, OpenError> {
    let (services, authkeys) = effective_config(loaded, store)?;
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let mut config = EngineConfig::new(services, epoch, seed);
    // The same on every start and every server of the instance: phones keep their PIN keys.
    config.pin_tree_secret = *store.pin_tree_secret().expose();
    config.authkeys = authkeys;
    config.shared_database = store.kv().is_shared();
    config.max_changes_per_s = loaded
        .config
        .token_changes_per_s
        .unwrap_or(crate::config::DEFAULT_TOKEN_CHANGES_PER_S);
    Ok(Engine::new(config)?)
}
