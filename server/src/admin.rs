//! The admin command line's operations, on the database while the server is stopped: it
//! opens what the configuration names, calls the admin layer (`zoftoken-admin`, where the
//! rules live, the same as the HTTP API's), and renders each result as an [`Output`]: text
//! for people and the same facts as JSON. Also database maintenance (check, export, import),
//! load-test token sets, and users enrolled from a file (`enroll_file`: through the database,
//! or through a running server's API with `api_client`). No output contains a token secret,
//! and an authkey secret is shown only the one time `authkey create` returns it.

use std::sync::Arc;

mod api_client;
mod enroll_file;
pub use enroll_file::{enroll_file_through_api, terminal_progress, ApiTarget, EnrollFile};

use serde_json::{json, Value};
use zoftoken_admin::{
    AdminError, AuthkeySummary, ErrorKind, FileDocuments, NewAuthkey, Registry, SecretFormat,
    ServiceChanges, StoredToken, Tokens,
};
use zoftoken_engine::{Engine, TokenState};
use zoftoken_storage::{ServiceDoc, Store, StoreError};

use crate::config::{ConfigSource, Loaded};
use crate::open::{build_engine, open_store, OpenError};

/// The process's exit code for a command's error: the command's own (invalid input 2,
/// database in use 3, not found 4), else the storage's (cannot write or read 5, damaged 6),
/// else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<CommandError>()
        .map(CommandError::exit_code)
        .or_else(|| {
            e.downcast_ref::<OpenError>()
                .map(OpenError::exit_code)
                .filter(|c| *c != 1)
        })
        .or_else(|| crate::open::storage_exit_code(e))
        .unwrap_or(1)
}

/// What an operation reports: a text for people and the same facts as JSON.
#[derive(Debug)]
pub struct Output {
    /// For people.
    pub human: String,
    /// For scripts (`--json`).
    pub json: Value,
}

/// Why a command failed. [`CommandError::exit_code`] maps each to the process's exit code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The admin layer refused or failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The database could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The store failed (maintenance commands).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Bad input to a maintenance command.
    #[error("{0}")]
    Invalid(String),
    /// A running server's API did not answer (`--api`).
    #[error("the API at {url} did not answer: {reason}")]
    Unreachable {
        /// What was asked.
        url: String,
        /// Why no answer came.
        reason: String,
    },
    /// A running server's API refused (`--api`).
    #[error("the API answered {status} {code}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error's stable code.
        code: String,
        /// The error's message.
        message: String,
    },
    /// A command working through a file stopped on the way; what it did before is kept.
    #[error("stopped after {done} users, whose rows are in {out} (run again with --if-absent to go on): {source}")]
    Stopped {
        /// Users done (and written) before.
        done: usize,
        /// The file they are in.
        out: String,
        /// Why it stopped.
        #[source]
        source: Box<CommandError>,
    },
}

impl CommandError {
    /// 2: invalid input or configuration, or a command that does not apply; 3: the database
    /// is locked by a running server; 4: not found; 5: the database cannot write or read;
    /// 6: the database is damaged; 1: anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::Admin(AdminError::Store(e)) | CommandError::Store(e) => {
                crate::open::store_exit_code(e).unwrap_or(1)
            }
            CommandError::Admin(e) => match e.kind() {
                ErrorKind::Invalid | ErrorKind::Refused => 2,
                ErrorKind::NotFound => 4,
                _ => 1,
            },
            CommandError::Open(e) => e.exit_code(),
            CommandError::Invalid(_) => 2,
            CommandError::Api { status, .. } => match status {
                404 => 4,
                503 => 5,
                400..=499 => 2,
                _ => 1,
            },
            CommandError::Unreachable { .. } => 1,
            CommandError::Stopped { source, .. } => source.exit_code(),
        }
    }
}

/// The services and authkeys of a `config_source: file` configuration, from the file: the
/// database is not opened (nor a data directory or a master key created) for them.
pub fn file_registry(loaded: &Loaded) -> Registry {
    Registry::file(FileDocuments {
        services: loaded.config.services.clone(),
        authkeys: loaded.config.authkeys.clone(),
    })
}

/// The admin operations over one opened database.
pub struct Admin {
    loaded: Loaded,
    store: Arc<Store>,
    /// Warnings to show the operator (e.g. a generated master key).
    pub warnings: Vec<String>,
}

impl Admin {
    /// Opens the database of a configuration.
    pub fn open(
        loaded: Loaded,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Admin, CommandError> {
        let mut warnings = Vec::new();
        let store = Arc::new(open_store(&loaded, env, &mut warnings)?);
        Ok(Admin {
            loaded,
            store,
            warnings,
        })
    }

    /// The store (for tests and the server).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The services and authkeys in effect: the database's, or the file's.
    pub fn registry(&self) -> Registry {
        match self.loaded.config.config_source {
            ConfigSource::Database => Registry::database(self.store.clone()),
            ConfigSource::File => file_registry(&self.loaded),
        }
    }

    /// An engine for one command: the configuration's services, tables empty (token
    /// operations load the token they change).
    fn engine(&self) -> Result<Engine, CommandError> {
        // Admin commands send no packets: any non-zero epoch will do.
        Ok(build_engine(&self.loaded, &self.store, u32::MAX)?)
    }

    /// `loadgen prepare`: writes a load-test token set (paired tokens whose secrets derive
    /// from a public seed: test instances only) into the database, `progress` called after
    /// every chunk with the count written. The set must belong to the first configured
    /// service (the records carry service index 0).
    pub fn prepare_load_tokens(
        &self,
        set: &zoftoken_loadgen::TokenSet,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, CommandError> {
        let engine = self.engine()?;
        let first = engine.service_name(0);
        if first.as_deref() != Some(set.service()) {
            return Err(CommandError::Invalid(format!(
                "the token set's service `{}` is not the first configured service ({})",
                set.service(),
                first.map_or("none".to_owned(), |s| format!("`{s}`"))
            )));
        }
        const CHUNK: u64 = 10_000;
        let mut done = 0;
        while done < set.count() {
            let end = (done + CHUNK).min(set.count());
            self.store
                .commit(&set.server_mutations(done..end), &engine)?;
            done = end;
            progress(done);
        }
        self.store.flush()?;
        Ok(done)
    }

    /// `token enroll`: the deeplink and the manual code, so an app can pair.
    pub fn token_enroll(
        &self,
        now_ms: u64,
        service: &str,
        username: &str,
    ) -> Result<Output, CommandError> {
        let engine = self.engine()?;
        let t = Tokens::new(&self.store, &engine).enroll(now_ms, service, username)?;
        Ok(Output {
            human: format!(
                "enrolled `{username}` in `{service}` (token {})\n\
                 deeplink:    {}\nmanual code: {}\nexpires:     {} (Unix ms)\n\
                 Both are single use and secret: hand them to the user only.\n",
                hex::encode(t.token_id.0),
                t.deeplink,
                t.manual_code,
                t.expires_ms
            ),
            json: json!({
                "token_id": hex::encode(t.token_id.0),
                "service": service,
                "username": username,
                "deeplink": t.deeplink,
                "manual_code": t.manual_code,
                "expires_ms": t.expires_ms,
            }),
        })
    }

    /// `token list`, optionally of one service.
    pub fn token_list(&self, service: Option<&str>) -> Result<Output, CommandError> {
        let rows: Vec<Value> = zoftoken_admin::stored_tokens(&self.store, service)?
            .iter()
            .map(token_json)
            .collect();
        let mut human = String::new();
        for r in &rows {
            human.push_str(&format!(
                "{}  {}  {}  {}\n",
                r["service"].as_str().unwrap_or(""),
                r["username"].as_str().unwrap_or(""),
                r["state"].as_str().unwrap_or(""),
                r["token_id"].as_str().unwrap_or("")
            ));
        }
        human.push_str(&format!("{} tokens\n", rows.len()));
        Ok(Output {
            human,
            json: Value::Array(rows),
        })
    }

    /// `token show`.
    pub fn token_show(&self, service: &str, username: &str) -> Result<Output, CommandError> {
        let v = token_json(&zoftoken_admin::stored_token(
            &self.store,
            service,
            username,
        )?);
        let human = v
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| {
                        format!("{k}: {}\n", v.as_str().map_or(v.to_string(), str::to_owned))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Output { human, json: v })
    }

    /// `token delete`.
    pub fn token_delete(
        &self,
        now_ms: u64,
        service: &str,
        username: &str,
    ) -> Result<Output, CommandError> {
        let engine = self.engine()?;
        let id = Tokens::new(&self.store, &engine).delete(now_ms, service, username)?;
        Ok(Output {
            human: format!("token of `{username}` in `{service}` deleted\n"),
            json: json!({ "deleted": hex::encode(id.0) }),
        })
    }

    /// `webhook dead-letters`: events whose delivery was given up.
    pub fn webhook_dead_letters(&self, limit: usize) -> Result<Output, CommandError> {
        let letters = zoftoken_admin::dead_letters(&self.store, Some(limit))?;
        let mut human = String::new();
        for d in &letters {
            human.push_str(&format!(
                "{}  {}  {}  {} (sequence {})  {} attempts, last: {}{}\n",
                d.id,
                d.service,
                d.username.as_deref().unwrap_or("?"),
                d.kind,
                d.sequence,
                d.attempts,
                d.last_status
                    .map_or(String::new(), |s| format!("HTTP {s} ")),
                d.last_error
            ));
        }
        human.push_str(&format!(
            "{} dead letters{}\n",
            letters.len(),
            if letters.is_empty() {
                ""
            } else {
                " (replay with `zoftoken webhook replay ID` or `--all`)"
            }
        ));
        Ok(Output {
            human,
            json: json!({ "dead_letters": letters }),
        })
    }

    /// `webhook replay ID` / `--all`: queues dead letters for delivery again (same
    /// `webhook-id`), at the server's next start or at once if it runs the API instead.
    pub fn webhook_replay(&self, id: Option<&str>) -> Result<Output, CommandError> {
        let n = match id {
            Some(id) => {
                zoftoken_admin::replay_dead_letter(&self.store, id)?;
                1
            }
            None => zoftoken_admin::replay_all_dead_letters(&self.store)?,
        };
        Ok(Output {
            human: format!("{n} dead letters queued for delivery again\n"),
            json: json!({ "replayed": n }),
        })
    }

    /// `webhook delete ID`: drops a dead letter for good.
    pub fn webhook_delete(&self, id: &str) -> Result<Output, CommandError> {
        zoftoken_admin::delete_dead_letter(&self.store, id)?;
        Ok(Output {
            human: format!("dead letter `{id}` deleted\n"),
            json: json!({ "deleted": id }),
        })
    }

    /// `webhook disabled`: endpoints disabled after answering 410 Gone.
    pub fn webhook_disabled(&self) -> Result<Output, CommandError> {
        let list = zoftoken_admin::disabled_endpoints(&self.store)?;
        let mut human = String::new();
        for d in &list {
            human.push_str(&format!(
                "{}  {}  HTTP {} at {} (Unix ms)\n",
                d.service, d.url, d.status, d.at_ms
            ));
        }
        human.push_str(&format!(
            "{} disabled endpoints (a changed webhook configuration or a replay re-enables one)\n",
            list.len()
        ));
        let rows: Vec<Value> = list
            .iter()
            .map(|d| json!({ "service": d.service, "url": d.url, "status": d.status, "at_ms": d.at_ms }))
            .collect();
        Ok(Output {
            human,
            json: json!({ "disabled": rows }),
        })
    }

    /// `db migrate`: opening the database applied every migration; says which versions it
    /// has now.
    pub fn db_migrate(&self) -> Output {
        let records = zoftoken_storage::schema::SCHEMA_VERSION;
        match &self.loaded.postgres {
            Some(pg) => {
                let sql = zoftoken_storage_postgres::migrate::VERSION;
                Output {
                    human: format!(
                        "PostgreSQL {}: SQL schema version {sql}, record schema version \
                         {records}: up to date\n",
                        pg.describe()
                    ),
                    json: json!({ "backend": "postgres", "sql_schema": sql, "record_schema": records }),
                }
            }
            None => Output {
                human: format!(
                    "RocksDB {}: record schema version {records}: up to date\n",
                    self.loaded.config.data_dir.display()
                ),
                json: json!({ "backend": "rocksdb", "record_schema": records }),
            },
        }
    }

    /// `db check`.
    pub fn db_check(&self) -> Result<(Output, bool), CommandError> {
        let r = self.store.check()?;
        let mut human = String::new();
        for (cf, n) in &r.records {
            human.push_str(&format!("{cf}: {n} records\n"));
        }
        if r.orphan_states > 0 {
            human.push_str(&format!(
                "{} orphan state records (harmless)\n",
                r.orphan_states
            ));
        }
        for p in &r.problems {
            human.push_str(&format!("problem: {p}\n"));
        }
        human.push_str(if r.problems.is_empty() {
            "database OK\n"
        } else {
            "database has problems\n"
        });
        Ok((
            Output {
                human,
                json: json!({ "records": r.records, "orphan_states": r.orphan_states, "problems": r.problems }),
            },
            r.problems.is_empty(),
        ))
    }

    /// `db export` to a writer.
    pub fn db_export(&self, out: &mut dyn std::io::Write) -> Result<Output, CommandError> {
        let m = self.store.export(out)?;
        Ok(Output {
            human: format!("exported {} records (secrets stay encrypted)\n", m.records),
            json: json!({ "exported": m.records }),
        })
    }

    /// `db import` from a reader (into an empty database).
    pub fn db_import(&self, input: &mut dyn std::io::BufRead) -> Result<Output, CommandError> {
        let m = self.store.import(input)?;
        Ok(Output {
            human: format!("imported {} records\n", m.records),
            json: json!({ "imported": m.records }),
        })
    }
}

/// A stored token as every command prints it (no secret).
fn token_json(t: &StoredToken) -> Value {
    let state = t.state;
    json!({
        "token_id": hex::encode(t.token_id.0),
        "service": t.service,
        "username": t.username,
        "state": state.map(|s| s.state.name()).unwrap_or("pending"),
        "open_until_ms": state.filter(|s| s.state == TokenState::Open).map(|s| s.open_until_ms),
        "failures": state.map(|s| s.failures),
        "last_seen_ms": state.map(|s| s.last_seen_ms).filter(|t| *t > 0),
        "paired": state.is_some(),
        "enrollment_expires_ms": t.enrollment_expires_ms,
    })
}

/// A service as every command prints it: its webhook's secrets redacted (the admin layer
/// returns them so).
fn service_json(d: &ServiceDoc) -> Value {
    serde_json::to_value(d).unwrap_or(Value::Null)
}

/// `service list`.
pub fn service_list(registry: &Registry) -> Result<Output, CommandError> {
    let docs = registry.services()?;
    let mut human = String::new();
    for d in &docs {
        human.push_str(&format!(
            "{}  window={}s  duress={}  endpoints={}  otp={}x{}s {}{}\n",
            d.name,
            d.window,
            d.duress_allowed,
            d.endpoints.join(","),
            d.otp.length,
            d.otp.period,
            d.otp.alphabet,
            d.webhook
                .as_ref()
                .map(|w| format!("  webhook={}", w.url))
                .unwrap_or_default()
        ));
    }
    if docs.is_empty() {
        human.push_str("no services\n");
    }
    Ok(Output {
        human,
        json: Value::Array(docs.iter().map(service_json).collect()),
    })
}

/// `service create`.
pub fn service_create(
    registry: &Registry,
    name: &str,
    changes: ServiceChanges,
) -> Result<Output, CommandError> {
    let doc = registry.service_create_with(name, changes)?;
    Ok(Output {
        human: format!("service `{}` created\n", doc.name),
        json: service_json(&doc),
    })
}

/// `service edit`.
pub fn service_edit(
    registry: &Registry,
    name: &str,
    changes: ServiceChanges,
) -> Result<Output, CommandError> {
    let doc = registry.service_edit(name, changes)?;
    Ok(Output {
        human: format!("service `{}` updated\n", doc.name),
        json: service_json(&doc),
    })
}

/// `service delete`: refused while tokens exist unless `force` (the tokens stay in the
/// database, unusable until a service of that name exists again).
pub fn service_delete(
    registry: &Registry,
    name: &str,
    force: bool,
) -> Result<Output, CommandError> {
    let tokens = registry.service_delete(name, force)?;
    Ok(Output {
        human: format!("service `{name}` deleted\n"),
        json: json!({ "deleted": name, "tokens_kept": tokens }),
    })
}

/// `authkey create`: 256 random bits, printed once. In database mode only the hash is
/// stored; in file mode nothing is stored and the entry to paste into the file is printed.
pub fn authkey_create(
    registry: &Registry,
    name: &str,
    admin: bool,
    service_mask: &str,
    user_mask: &str,
    format: SecretFormat,
) -> Result<Output, CommandError> {
    let key = registry.authkey_create(NewAuthkey {
        name: name.to_owned(),
        admin,
        service_mask: service_mask.to_owned(),
        user_mask: user_mask.to_owned(),
        format,
    })?;
    let hash = &key.secret_hash;
    let human = if key.stored {
        format!(
            "authkey `{name}` created. Its secret, shown this once:\n\n  {}\n\n\
             Only its hash is stored; keep the secret safe.\n",
            key.secret.as_str()
        )
    } else {
        format!(
            "Secret of the new authkey `{name}`, shown this once:\n\n  {}\n\n\
             Nothing was stored (`config_source: file`). Add this entry under \
             `authkeys:` in the configuration file:\n\n  - name: {}\n    \
             secret_hash: \"{hash}\"\n    admin: {admin}\n    service_mask: {}\n    \
             user_mask: {}\n",
            key.secret.as_str(),
            // JSON strings are YAML double-quoted scalars: any mask pastes as is.
            json!(name),
            json!(service_mask),
            json!(user_mask),
        )
    };
    Ok(Output {
        human,
        json: json!({
            "name": name,
            "secret": key.secret.as_str(),
            "secret_hash": hash,
            "admin": admin,
            "service_mask": service_mask,
            "user_mask": user_mask,
            "stored": key.stored,
        }),
    })
}

fn authkey_json(k: &AuthkeySummary) -> Value {
    json!({
        "name": k.name,
        "admin": k.admin,
        "service_mask": k.service_mask,
        "user_mask": k.user_mask,
        "secret_hash_prefix": k.secret_hash_prefix,
    })
}

/// `authkey list` (hashes abbreviated; no secret is known to list).
pub fn authkey_list(registry: &Registry) -> Result<Output, CommandError> {
    let keys = registry.authkeys()?;
    let mut human = String::new();
    for k in &keys {
        human.push_str(&format!(
            "{}  admin={}  service_mask={}  user_mask={}\n",
            k.name, k.admin, k.service_mask, k.user_mask
        ));
    }
    if keys.is_empty() {
        human.push_str("no authkeys\n");
    }
    Ok(Output {
        human,
        json: Value::Array(keys.iter().map(authkey_json).collect()),
    })
}

/// `authkey revoke`.
pub fn authkey_revoke(registry: &Registry, name: &str) -> Result<Output, CommandError> {
    registry.authkey_revoke(name)?;
    Ok(Output {
        human: format!("authkey `{name}` revoked\n"),
        json: json!({ "revoked": name }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zoftoken_storage::KvError;

    fn io(text: &str) -> std::io::Error {
        std::io::Error::other(text.to_owned())
    }

    #[test]
    fn a_storage_failure_under_an_admin_command_is_exit_code_5_or_6() {
        let cannot_write = CommandError::Admin(AdminError::Store(StoreError::Kv(KvError::Io(
            Box::new(io("No space left on device")),
        ))));
        assert_eq!(exit_code(&anyhow::Error::new(cannot_write)), 5);
        let damaged = CommandError::Admin(AdminError::Store(StoreError::Kv(KvError::Corruption(
            Box::new(io("bad block")),
        ))));
        assert_eq!(exit_code(&anyhow::Error::new(damaged)), 6);
        let maintenance = CommandError::Store(StoreError::Kv(KvError::Io(Box::new(io("eio")))));
        assert_eq!(exit_code(&anyhow::Error::new(maintenance)), 5);
        // The command's own codes stay.
        let unknown = CommandError::Admin(AdminError::UnknownAuthkey("k".into()));
        assert_eq!(exit_code(&anyhow::Error::new(unknown)), 4);
        assert_eq!(exit_code(&anyhow::anyhow!("anything else")), 1);
    }
}
