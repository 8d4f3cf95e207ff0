//! The admin operations of the command line, on the database while the server is stopped:
//! services, authkeys, tokens, and database maintenance. Each returns an [`Output`] that the
//! binary prints as text or JSON. No operation prints or stores an authkey secret except the
//! one time `authkey create` returns it, and no output contains a token secret.

use serde_json::{json, Value};
use zoftoken_engine::{Batch, Engine, EngineError};
use zoftoken_proto::TokenId;
use zoftoken_storage::{AuthkeyDoc, ServiceDoc, Store, StoreError};

use crate::config::{ConfigSource, Loaded};
use crate::open::{build_engine, open_store, OpenError};

/// What an operation reports: a text for people and the same facts as JSON.
#[derive(Debug)]
pub struct Output {
    /// For people.
    pub human: String,
    /// For scripts (`--json`).
    pub json: Value,
}

/// Why an admin operation failed. [`AdminError::exit_code`] maps each to the process's exit
/// code.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Bad input: an invalid service, a duplicate name.
    #[error("{0}")]
    Invalid(String),
    /// The operation does not apply in this configuration (e.g. editing services that come
    /// from `config.yaml`).
    #[error("{0}")]
    Refused(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The database could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine refused.
    #[error("{0}")]
    Engine(#[from] EngineError),
    /// The webhook records could not be read or changed.
    #[error(transparent)]
    Webhook(#[from] zoftoken_webhooks::WebhookError),
}

impl AdminError {
    /// 2: invalid input or configuration, or refused; 3: the database is locked by a running
    /// server; 4: not found; 1: anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Invalid(_) | AdminError::Refused(_) => 2,
            AdminError::Open(e) => e.exit_code(),
            AdminError::NotFound(_) => 4,
            AdminError::Engine(EngineError::UnknownService | EngineError::UnknownToken) => 4,
            AdminError::Engine(EngineError::Invalid(_) | EngineError::Config(_)) => 2,
            _ => 1,
        }
    }
}

/// Changes to a service; `None` keeps the current value.
#[derive(Debug, Default, Clone)]
pub struct ServiceChanges {
    /// Window in seconds.
    pub window: Option<u32>,
    /// Endpoints (replaces the list).
    pub endpoints: Option<Vec<String>>,
    /// Duress allowed.
    pub duress_allowed: Option<bool>,
    /// Details URL (empty string removes it).
    pub details_url: Option<String>,
    /// Code length.
    pub otp_length: Option<u8>,
    /// Code period.
    pub otp_period: Option<u16>,
    /// Code alphabet.
    pub otp_alphabet: Option<String>,
    /// Webhook URL (empty string removes the webhook).
    pub webhook_url: Option<String>,
    /// Webhook secret.
    pub webhook_secret: Option<String>,
    /// Webhook events (replaces the list).
    pub webhook_events: Option<Vec<String>>,
    /// Accept an `http://` webhook URL to a non-loopback address.
    pub webhook_allow_insecure_http: Option<bool>,
}

impl ServiceChanges {
    fn apply(self, d: &mut ServiceDoc) -> Result<(), AdminError> {
        if let Some(v) = self.window {
            d.window = v;
        }
        if let Some(v) = self.endpoints {
            d.endpoints = v;
        }
        if let Some(v) = self.duress_allowed {
            d.duress_allowed = v;
        }
        if let Some(v) = self.details_url {
            d.details_url = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = self.otp_length {
            d.otp.length = v;
        }
        if let Some(v) = self.otp_period {
            d.otp.period = v;
        }
        if let Some(v) = self.otp_alphabet {
            d.otp.alphabet = v;
        }
        match (self.webhook_url, &mut d.webhook) {
            (Some(url), _) if url.is_empty() => d.webhook = None,
            (Some(url), Some(w)) => w.url = url,
            (Some(url), None) => {
                d.webhook = Some(zoftoken_storage::WebhookDoc {
                    url,
                    secret: self.webhook_secret.clone().ok_or_else(|| {
                        AdminError::Invalid("a new webhook needs --webhook-secret".into())
                    })?,
                    events: Vec::new(),
                    previous_secret: None,
                    ca_file: None,
                    shared_token: None,
                    allow_insecure_http: false,
                })
            }
            (None, _) => {}
        }
        if let Some(w) = &mut d.webhook {
            if let Some(s) = self.webhook_secret {
                w.secret = s;
            }
            if let Some(e) = self.webhook_events {
                w.events = e;
            }
            if let Some(a) = self.webhook_allow_insecure_http {
                w.allow_insecure_http = a;
            }
        } else if self.webhook_secret.is_some()
            || self.webhook_events.is_some()
            || self.webhook_allow_insecure_http.is_some()
        {
            return Err(AdminError::Invalid(
                "the service has no webhook: give --webhook-url too".into(),
            ));
        }
        Ok(())
    }
}

/// Output format of a generated authkey secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretFormat {
    /// 64 hex digits.
    Hex,
    /// 43 characters of URL-safe base64 without padding.
    Base64,
}

/// The admin operations over one opened database.
pub struct Admin {
    loaded: Loaded,
    store: Store,
    /// Warnings to show the operator (e.g. a generated master key).
    pub warnings: Vec<String>,
}

/// A service as every command prints it: its webhook's secrets redacted.
fn service_json(d: &ServiceDoc) -> Value {
    serde_json::to_value(d.redacted()).unwrap_or(Value::Null)
}

fn authkey_json(d: &AuthkeyDoc) -> Value {
    json!({
        "name": d.name,
        "admin": d.admin,
        "service_mask": d.service_mask,
        "user_mask": d.user_mask,
        "secret_hash_prefix": d.secret_hash.as_deref().map(|h| h.get(..8).unwrap_or(h)),
    })
}

impl Admin {
    /// Opens the database of a configuration.
    pub fn open(loaded: Loaded, env: &dyn Fn(&str) -> Option<String>) -> Result<Admin, AdminError> {
        let mut warnings = Vec::new();
        let store = open_store(&loaded, env, &mut warnings)?;
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

    fn require_database(&self, what: &str) -> Result<(), AdminError> {
        require_database(&self.loaded, what)
    }

    fn engine(&self) -> Result<Engine, AdminError> {
        // Admin commands send no packets: any non-zero epoch will do.
        Ok(build_engine(&self.loaded, &self.store, u32::MAX)?)
    }

    fn service_docs(&self) -> Result<Vec<ServiceDoc>, AdminError> {
        Ok(match self.loaded.config.config_source {
            ConfigSource::File => self.loaded.config.services.clone(),
            ConfigSource::Database => self.store.services()?,
        })
    }

    /// `service list`.
    pub fn service_list(&self) -> Result<Output, AdminError> {
        let docs = self.service_docs()?;
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

    fn save_service(&self, doc: ServiceDoc, replace: bool) -> Result<Output, AdminError> {
        let mut all = self.store.services()?;
        let exists = all.iter().any(|d| d.name == doc.name);
        if exists && !replace {
            return Err(AdminError::Invalid(format!(
                "service `{}` exists (use `service edit`)",
                doc.name
            )));
        }
        all.retain(|d| d.name != doc.name);
        all.push(doc.clone());
        let at = all.len() - 1;
        if let Err(errors) = zoftoken_storage::services_to_config(&all) {
            let mine = format!("services[{at}]");
            let text: Vec<String> = errors
                .iter()
                .map(|e| format!("  {}: {}", e.path.replacen(&mine, "service", 1), e.message))
                .collect();
            return Err(AdminError::Invalid(format!(
                "invalid service:\n{}",
                text.join("\n")
            )));
        }
        self.store.put_service(&doc)?;
        Ok(Output {
            human: format!(
                "service `{}` {}\n",
                doc.name,
                if exists { "updated" } else { "created" }
            ),
            json: service_json(&doc),
        })
    }

    /// `service create`.
    pub fn service_create(
        &self,
        name: &str,
        changes: ServiceChanges,
    ) -> Result<Output, AdminError> {
        self.require_database("service create")?;
        let mut doc: ServiceDoc = serde_json::from_value(json!({ "name": name, "endpoints": [] }))
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        changes.apply(&mut doc)?;
        self.save_service(doc, false)
    }

    /// `service edit`.
    pub fn service_edit(&self, name: &str, changes: ServiceChanges) -> Result<Output, AdminError> {
        self.require_database("service edit")?;
        let mut doc = self
            .store
            .services()?
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| AdminError::NotFound(format!("no service `{name}`")))?;
        changes.apply(&mut doc)?;
        self.save_service(doc, true)
    }

    fn tokens_of(&self, service: &str) -> Result<u64, AdminError> {
        let mut n = 0;
        self.store.for_each_token(&mut |_, s, _| {
            if s == service {
                n += 1;
            }
            true
        })?;
        Ok(n)
    }

    /// `service delete`: refused while tokens exist unless `force` (the tokens stay in the
    /// database, unusable until a service of that name exists again).
    pub fn service_delete(&self, name: &str, force: bool) -> Result<Output, AdminError> {
        self.require_database("service delete")?;
        let tokens = self.tokens_of(name)?;
        if tokens > 0 && !force {
            return Err(AdminError::Refused(format!(
                "service `{name}` has {tokens} tokens; delete them first or pass --force \
                 (they stay stored, unusable until the service exists again)"
            )));
        }
        if !self.store.delete_service(name)? {
            return Err(AdminError::NotFound(format!("no service `{name}`")));
        }
        Ok(Output {
            human: format!("service `{name}` deleted\n"),
            json: json!({ "deleted": name, "tokens_kept": tokens }),
        })
    }

    /// `authkey create`: 256 random bits, returned once. In database mode only the hash is
    /// stored; in file mode nothing is stored and the entry to paste is printed (see
    /// [`authkey_create`], which the binary calls without opening the database then).
    pub fn authkey_create(
        &self,
        name: &str,
        admin: bool,
        service_mask: &str,
        user_mask: &str,
        format: SecretFormat,
    ) -> Result<Output, AdminError> {
        authkey_create(
            &self.loaded,
            Some(&self.store),
            name,
            admin,
            service_mask,
            user_mask,
            format,
        )
    }

    /// `authkey list` (hashes abbreviated; no secret is known to list).
    pub fn authkey_list(&self) -> Result<Output, AdminError> {
        authkey_list(&self.loaded, Some(&self.store))
    }

    /// `authkey revoke`.
    pub fn authkey_revoke(&self, name: &str) -> Result<Output, AdminError> {
        self.require_database("authkey revoke")?;
        if !self.store.delete_authkey(name)? {
            return Err(AdminError::NotFound(format!("no authkey `{name}`")));
        }
        Ok(Output {
            human: format!("authkey `{name}` revoked\n"),
            json: json!({ "revoked": name }),
        })
    }

    /// `loadgen prepare`: writes a load-test token set (paired tokens whose secrets derive
    /// from a public seed: test instances only) into the database, `progress` called after
    /// every chunk with the count written. The set must belong to the first configured
    /// service (the records carry service index 0).
    pub fn prepare_load_tokens(
        &self,
        set: &zoftoken_loadgen::TokenSet,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, AdminError> {
        let engine = self.engine()?;
        let first = engine.service_name(0);
        if first.as_deref() != Some(set.service()) {
            return Err(AdminError::Invalid(format!(
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

    fn commit(&self, engine: &Engine, batch: &mut Batch) -> Result<(), AdminError> {
        self.store.commit(&batch.mutations, engine)?;
        engine.publish(batch);
        Ok(())
    }

    /// `token enroll`: the deeplink and the manual code, so an app can pair.
    pub fn token_enroll(
        &self,
        now_ms: u64,
        service: &str,
        username: &str,
    ) -> Result<Output, AdminError> {
        let engine = self.engine()?;
        let id = TokenId::derive(service, username);
        self.store.load_one(&engine, now_ms, &id)?;
        let mut batch = Batch::new();
        let t = engine.enroll(now_ms, service, username, &mut batch)?;
        self.commit(&engine, &mut batch)?;
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

    fn token_json(&self, id: &TokenId, service: &str, username: &str) -> Result<Value, AdminError> {
        let state = self.store.token_state(id)?;
        let pending = self.store.enrollment_expiry(id)?;
        Ok(json!({
            "token_id": hex::encode(id.0),
            "service": service,
            "username": username,
            "state": state.map(|s| s.state.name()).unwrap_or("pending"),
            "open_until_ms": state.filter(|s| s.state == zoftoken_engine::TokenState::Open).map(|s| s.open_until_ms),
            "failures": state.map(|s| s.failures),
            "last_seen_ms": state.map(|s| s.last_seen_ms).filter(|t| *t > 0),
            "paired": state.is_some(),
            "enrollment_expires_ms": pending,
        }))
    }

    /// `token list`, optionally of one service.
    pub fn token_list(&self, service: Option<&str>) -> Result<Output, AdminError> {
        let mut rows = Vec::new();
        let mut err = None;
        self.store.for_each_token(&mut |id, s, u| {
            if service.is_some_and(|want| want != s) {
                return true;
            }
            match self.token_json(&id, s, u) {
                Ok(v) => {
                    rows.push(v);
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
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
    pub fn token_show(&self, service: &str, username: &str) -> Result<Output, AdminError> {
        let id = TokenId::derive(service, username);
        if self.store.token_info(&id)?.is_none() {
            return Err(AdminError::NotFound(format!(
                "no token for `{username}` in `{service}`"
            )));
        }
        let v = self.token_json(&id, service, username)?;
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
    ) -> Result<Output, AdminError> {
        let engine = self.engine()?;
        let id = TokenId::derive(service, username);
        if !self.store.load_one(&engine, now_ms, &id)? {
            return Err(AdminError::NotFound(format!(
                "no token for `{username}` in `{service}`"
            )));
        }
        let mut batch = Batch::new();
        match engine.delete(now_ms, &id, &mut batch) {
            Ok(()) => {}
            // Stored but neither paired nor pending (an expired enrollment): remove the rest.
            Err(EngineError::UnknownToken) => {
                batch
                    .mutations
                    .push(zoftoken_engine::Mutation::DeleteToken(id));
            }
            Err(e) => return Err(e.into()),
        }
        self.commit(&engine, &mut batch)?;
        Ok(Output {
            human: format!("token of `{username}` in `{service}` deleted\n"),
            json: json!({ "deleted": hex::encode(id.0) }),
        })
    }

    /// `webhook dead-letters`: events whose delivery was given up.
    pub fn webhook_dead_letters(&self, limit: usize) -> Result<Output, AdminError> {
        let letters = zoftoken_webhooks::dead_letters(&self.store, limit)?;
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
    pub fn webhook_replay(&self, id: Option<&str>) -> Result<Output, AdminError> {
        let n = match id {
            Some(id) => {
                if !zoftoken_webhooks::replay_dead_letter(&self.store, id)? {
                    return Err(AdminError::NotFound(format!("no dead letter `{id}`")));
                }
                1
            }
            None => zoftoken_webhooks::replay_all_dead_letters(&self.store)?,
        };
        Ok(Output {
            human: format!("{n} dead letters queued for delivery again\n"),
            json: json!({ "replayed": n }),
        })
    }

    /// `webhook delete ID`: drops a dead letter for good.
    pub fn webhook_delete(&self, id: &str) -> Result<Output, AdminError> {
        if !zoftoken_webhooks::delete_dead_letter(&self.store, id)? {
            return Err(AdminError::NotFound(format!("no dead letter `{id}`")));
        }
        Ok(Output {
            human: format!("dead letter `{id}` deleted\n"),
            json: json!({ "deleted": id }),
        })
    }

    /// `webhook disabled`: endpoints disabled after answering 410 Gone.
    pub fn webhook_disabled(&self) -> Result<Output, AdminError> {
        let list = zoftoken_webhooks::disabled_endpoints(&self.store)?;
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

    /// `db check`.
    pub fn db_check(&self) -> Result<(Output, bool), AdminError> {
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
    pub fn db_export(&self, out: &mut dyn std::io::Write) -> Result<Output, AdminError> {
        let m = self.store.export(out)?;
        Ok(Output {
            human: format!("exported {} records (secrets stay encrypted)\n", m.records),
            json: json!({ "exported": m.records }),
        })
    }

    /// `db import` from a reader (into an empty database).
    pub fn db_import(&self, input: &mut dyn std::io::BufRead) -> Result<Output, AdminError> {
        let m = self.store.import(input)?;
        Ok(Output {
            human: format!("imported {} records\n", m.records),
            json: json!({ "imported": m.records }),
        })
    }
}

/// Refuses `what` (an edit of services or authkeys) unless they live in the database. The
/// binary checks this before it opens the database, so a refused command touches nothing.
pub fn require_database(loaded: &Loaded, what: &str) -> Result<(), AdminError> {
    match loaded.config.config_source {
        ConfigSource::Database => Ok(()),
        ConfigSource::File => Err(AdminError::Refused(format!(
            "{what}: services and authkeys come from the configuration file \
             (`config_source: file`); edit the file, or switch to `config_source: database`"
        ))),
    }
}

/// The store of a database-mode operation.
fn stored(store: Option<&Store>) -> Result<&Store, AdminError> {
    store.ok_or_else(|| {
        AdminError::Refused("this operation needs the database (`config_source: database`)".into())
    })
}

/// `authkey create`: 256 random bits, returned once. With `config_source: database` only
/// the hash is stored in `store` (which must be given). With `config_source: file` nothing
/// is stored and the entry to paste into the file is printed: `store` is not needed, and the
/// binary does not open the database (nor create a data directory or a master key) for it.
pub fn authkey_create(
    loaded: &Loaded,
    store: Option<&Store>,
    name: &str,
    admin: bool,
    service_mask: &str,
    user_mask: &str,
    format: SecretFormat,
) -> Result<Output, AdminError> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, bytes.as_mut());
    let secret = zeroize::Zeroizing::new(match format {
        SecretFormat::Hex => hex::encode(bytes.as_ref()),
        SecretFormat::Base64 => {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref())
        }
    });
    let doc = AuthkeyDoc::new(name, &secret, admin, service_mask, user_mask);
    let existing = match loaded.config.config_source {
        ConfigSource::Database => stored(store)?.authkeys()?,
        ConfigSource::File => loaded.config.authkeys.clone(),
    };
    if existing.iter().any(|d| d.name == name) {
        return Err(AdminError::Invalid(format!("authkey `{name}` exists")));
    }
    if let Err(errors) = zoftoken_storage::authkeys_to_config(std::slice::from_ref(&doc)) {
        let text: Vec<String> = errors
            .iter()
            .map(|e| {
                format!(
                    "  {}: {}",
                    e.path.replacen("authkeys[0]", "authkey", 1),
                    e.message
                )
            })
            .collect();
        return Err(AdminError::Invalid(format!(
            "invalid authkey:\n{}",
            text.join("\n")
        )));
    }
    let hash = doc.secret_hash.clone().unwrap_or_default();
    let (stored, human) = match loaded.config.config_source {
        ConfigSource::Database => {
            stored(store)?.put_authkey(&doc)?;
            (
                true,
                format!(
                    "authkey `{name}` created. Its secret, shown this once:\n\n  {}\n\n\
                         Only its hash is stored; keep the secret safe.\n",
                    secret.as_str()
                ),
            )
        }
        ConfigSource::File => (
            false,
            format!(
                "Secret of the new authkey `{name}`, shown this once:\n\n  {}\n\n\
                     Nothing was stored (`config_source: file`). Add this entry under \
                     `authkeys:` in the configuration file:\n\n  - name: {}\n    \
                     secret_hash: \"{hash}\"\n    admin: {admin}\n    service_mask: {}\n    \
                     user_mask: {}\n",
                secret.as_str(),
                // JSON strings are YAML double-quoted scalars: any mask pastes as is.
                json!(name),
                json!(service_mask),
                json!(user_mask),
            ),
        ),
    };
    Ok(Output {
        human,
        json: json!({
            "name": name,
            "secret": secret.as_str(),
            "secret_hash": hash,
            "admin": admin,
            "service_mask": service_mask,
            "user_mask": user_mask,
            "stored": stored,
        }),
    })
}

/// `authkey list` (hashes abbreviated; no secret is known to list). `store` is needed with
/// `config_source: database` only.
pub fn authkey_list(loaded: &Loaded, store: Option<&Store>) -> Result<Output, AdminError> {
    let docs = match loaded.config.config_source {
        ConfigSource::Database => stored(store)?.authkeys()?,
        ConfigSource::File => loaded.config.authkeys.clone(),
    };
    let mut human = String::new();
    for d in &docs {
        human.push_str(&format!(
            "{}  admin={}  service_mask={}  user_mask={}\n",
            d.name, d.admin, d.service_mask, d.user_mask
        ));
    }
    if docs.is_empty() {
        human.push_str("no authkeys\n");
    }
    Ok(Output {
        human,
        json: Value::Array(docs.iter().map(authkey_json).collect()),
    })
}
