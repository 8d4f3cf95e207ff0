//! Services: listed and read with their webhook secrets redacted; created, replaced, edited
//! and deleted in the database, each change validated against the whole list, written, then
//! applied to the running engine.

use zoftoken_storage::{ServiceDoc, Store, REDACTED};

use crate::error::{AdminError, ConfigProblems};
use crate::registry::{Registry, Source};
use crate::service_changes::ServiceChanges;

impl Registry {
    /// Every service, webhook secrets redacted.
    pub fn services(&self) -> Result<Vec<ServiceDoc>, AdminError> {
        Ok(self
            .service_docs()?
            .iter()
            .map(ServiceDoc::redacted)
            .collect())
    }

    /// One service, webhook secrets redacted.
    pub fn service(&self, name: &str) -> Result<ServiceDoc, AdminError> {
        self.service_docs()?
            .iter()
            .find(|d| d.name == name)
            .map(ServiceDoc::redacted)
            .ok_or_else(|| AdminError::UnknownService(name.to_owned()))
    }

    /// The services as they are, secrets included.
    fn service_docs(&self) -> Result<Vec<ServiceDoc>, AdminError> {
        Ok(match &self.source {
            Source::Database(store) => store.services()?,
            Source::File(docs) => docs.services.clone(),
            Source::Engine(engine) => engine
                .service_configs()
                .iter()
                .map(ServiceDoc::from_config)
                .collect(),
        })
    }

    /// Creates a service from a whole document; returns it redacted.
    pub fn service_create(&self, mut doc: ServiceDoc) -> Result<ServiceDoc, AdminError> {
        let store = self.ensure_editable()?;
        self.check_server_files(&doc, None)?;
        restore_redacted(&mut doc, None)?;
        let _changes = self.lock();
        let all = store.services()?;
        if all.iter().any(|d| d.name == doc.name) {
            return Err(AdminError::ServiceExists(doc.name));
        }
        self.save(store, all, doc)
    }

    /// Creates service `name` from field changes of the defaults (window 600 s, duress
    /// allowed, 6-digit codes every 30 s, no webhook); returns it redacted.
    pub fn service_create_with(
        &self,
        name: &str,
        changes: ServiceChanges,
    ) -> Result<ServiceDoc, AdminError> {
        self.ensure_editable()?;
        let mut doc = ServiceChanges::defaults(name)?;
        changes.apply(&mut doc)?;
        self.service_create(doc)
    }

    /// Replaces service `name` by a whole document (whose name must be `name`); a
    /// `<redacted>` secret keeps the stored one. Returns it redacted.
    pub fn service_replace(&self, name: &str, doc: ServiceDoc) -> Result<ServiceDoc, AdminError> {
        let store = self.ensure_editable()?;
        if doc.name != name {
            return Err(AdminError::ServiceNameMismatch {
                expected: name.to_owned(),
                given: doc.name,
            });
        }
        let _changes = self.lock();
        let all = store.services()?;
        self.replace_locked(store, all, doc)
    }

    /// Changes the given fields of service `name`; returns it redacted.
    pub fn service_edit(
        &self,
        name: &str,
        changes: ServiceChanges,
    ) -> Result<ServiceDoc, AdminError> {
        let store = self.ensure_editable()?;
        let _changes = self.lock();
        let all = store.services()?;
        let mut doc = all
            .iter()
            .find(|d| d.name == name)
            .cloned()
            .ok_or_else(|| AdminError::UnknownService(name.to_owned()))?;
        changes.apply(&mut doc)?;
        self.replace_locked(store, all, doc)
    }

    fn replace_locked(
        &self,
        store: &Store,
        all: Vec<ServiceDoc>,
        mut doc: ServiceDoc,
    ) -> Result<ServiceDoc, AdminError> {
        let old = all
            .iter()
            .find(|d| d.name == doc.name)
            .ok_or_else(|| AdminError::UnknownService(doc.name.clone()))?;
        self.check_server_files(&doc, Some(old))?;
        restore_redacted(&mut doc, Some(old))?;
        self.save(store, all, doc)
    }

    /// Validates the whole list with `doc` in it, stores `doc`, then swaps the running
    /// engine's services.
    fn save(
        &self,
        store: &Store,
        mut all: Vec<ServiceDoc>,
        doc: ServiceDoc,
    ) -> Result<ServiceDoc, AdminError> {
        all.retain(|d| d.name != doc.name);
        all.push(doc.clone());
        let at = format!("services[{}]", all.len() - 1);
        let configs = zoftoken_storage::services_to_config(&all)
            .map_err(|e| AdminError::InvalidService(ConfigProblems::renamed(e, &at, "service")))?;
        store.put_service(&doc)?;
        if let Some(engine) = &self.running {
            engine.reload_services(configs)?;
        }
        tracing::info!(service = %doc.name, "admin: service saved");
        Ok(doc.redacted())
    }

    /// Deletes service `name`; refused while it has tokens unless `force` (they stay stored,
    /// unusable until a service of that name exists again). Returns how many tokens it had.
    pub fn service_delete(&self, name: &str, force: bool) -> Result<u64, AdminError> {
        let store = self.ensure_editable()?;
        let _changes = self.lock();
        let remaining: Vec<ServiceDoc> = {
            let all = store.services()?;
            if all.iter().all(|d| d.name != name) {
                return Err(AdminError::UnknownService(name.to_owned()));
            }
            all.into_iter().filter(|d| d.name != name).collect()
        };
        let tokens = tokens_of(store, name)?;
        if tokens > 0 && !force {
            return Err(AdminError::ServiceHasTokens {
                name: name.to_owned(),
                tokens,
            });
        }
        // The running engine forgets it too (its tokens' packets are dropped from now on):
        // what it will run is checked before anything is written.
        let configs = match &self.running {
            Some(_) => Some(
                zoftoken_storage::services_to_config(&remaining)
                    .map_err(|e| AdminError::StoredConfigInvalid(ConfigProblems(e)))?,
            ),
            None => None,
        };
        if !store.delete_service(name)? {
            return Err(AdminError::UnknownService(name.to_owned()));
        }
        if let (Some(engine), Some(configs)) = (&self.running, configs) {
            engine.reload_services(configs)?;
        }
        tracing::info!(service = %name, tokens, "admin: service deleted");
        Ok(tokens)
    }

    /// Refuses, from remote callers, a webhook `ca_file` other than the stored one: it names
    /// a file on the server, which is its operator's to choose. A document read back and
    /// written again keeps its stored value.
    fn check_server_files(
        &self,
        new: &ServiceDoc,
        old: Option<&ServiceDoc>,
    ) -> Result<(), AdminError> {
        if !self.remote {
            return Ok(());
        }
        let given = new.webhook.as_ref().and_then(|w| w.ca_file.as_ref());
        let stored = old
            .and_then(|d| d.webhook.as_ref())
            .and_then(|w| w.ca_file.as_ref());
        match given {
            Some(path) if Some(path) != stored => Err(AdminError::CaFileRefused),
            _ => Ok(()),
        }
    }
}

/// How many tokens service `name` has in the database.
fn tokens_of(store: &Store, name: &str) -> Result<u64, AdminError> {
    let mut tokens = 0u64;
    store.for_each_token(&mut |_, s, _| {
        if s == name {
            tokens += 1;
        }
        true
    })?;
    Ok(tokens)
}

/// Puts the stored secrets back where a document carries `<redacted>` (as every listing
/// shows them); refuses a `<redacted>` that stands for nothing stored.
fn restore_redacted(new: &mut ServiceDoc, old: Option<&ServiceDoc>) -> Result<(), AdminError> {
    let Some(w) = &mut new.webhook else {
        return Ok(());
    };
    let old = old.and_then(|d| d.webhook.as_ref());
    if w.secret == REDACTED {
        w.secret = old
            .map(|o| o.secret.clone())
            .ok_or(AdminError::NothingRedacted)?;
    }
    if w.previous_secret.as_deref() == Some(REDACTED) {
        w.previous_secret = Some(
            old.and_then(|o| o.previous_secret.clone())
                .ok_or(AdminError::NothingRedacted)?,
        );
    }
    if w.shared_token.as_deref() == Some(REDACTED) {
        w.shared_token = Some(
            old.and_then(|o| o.shared_token.clone())
                .ok_or(AdminError::NothingRedacted)?,
        );
    }
    Ok(())
}
