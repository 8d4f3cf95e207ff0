//! [`Registry`]: the services and authkeys in effect, where they live ([`Source`]), and the
//! engine that runs them. Changes are serialised, written first and then applied to the
//! running engine, if there is one (the HTTP API's; the command line works on a stopped
//! database and has none).

use std::sync::{Arc, Mutex, MutexGuard};

use zoftoken_engine::Engine;
use zoftoken_storage::{AuthkeyDoc, ServiceDoc, Store};

use crate::error::AdminError;

/// The services and authkeys of a configuration file, as written there.
#[derive(Clone, Debug, Default)]
pub struct FileDocuments {
    /// `services:`.
    pub services: Vec<ServiceDoc>,
    /// `authkeys:`.
    pub authkeys: Vec<AuthkeyDoc>,
}

/// Where services and authkeys live.
#[derive(Clone)]
pub enum Source {
    /// `config_source: database`: in the database, changed through the [`Registry`].
    Database(Arc<Store>),
    /// `config_source: file`: the configuration file's documents, read-only here (an
    /// authkey may still be made for the file, [`Registry::authkey_create`]).
    File(FileDocuments),
    /// `config_source: file` in a running server: read from its engine, which follows the
    /// file at every reload; read-only here.
    Engine(Arc<Engine>),
}

/// The services and authkeys in effect, read and changed under the layer's rules.
pub struct Registry {
    pub(crate) source: Source,
    /// The engine serving requests, which every change is applied to once written.
    pub(crate) running: Option<Arc<Engine>>,
    /// Whether changes come from remote callers (the HTTP API), who may not name files on
    /// the server.
    pub(crate) remote: bool,
    /// Serialises changes: each reads, checks and writes the whole list.
    changes: Mutex<()>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Source::Database(_) => "database",
            Source::File(_) => "file",
            Source::Engine(_) => "engine",
        };
        f.debug_struct("Registry")
            .field("source", &source)
            .field("running", &self.running.is_some())
            .field("remote", &self.remote)
            .finish()
    }
}

impl Registry {
    /// A registry of `source`, with no running engine, for a local operator.
    pub fn new(source: Source) -> Registry {
        Registry {
            source,
            running: None,
            remote: false,
            changes: Mutex::new(()),
        }
    }

    /// `config_source: database`.
    pub fn database(store: Arc<Store>) -> Registry {
        Registry::new(Source::Database(store))
    }

    /// `config_source: file`, with the file's documents.
    pub fn file(documents: FileDocuments) -> Registry {
        Registry::new(Source::File(documents))
    }

    /// `config_source: file` in a running server: read from its engine.
    pub fn running_file(engine: Arc<Engine>) -> Registry {
        Registry::new(Source::Engine(engine))
    }

    /// Every change is applied to `engine` once written (its services and authkeys are
    /// swapped; its tokens keep running).
    pub fn with_running_engine(mut self, engine: Arc<Engine>) -> Registry {
        self.running = Some(engine);
        self
    }

    /// Changes come from remote callers (the HTTP API): a webhook `ca_file`, which names a
    /// file on the server, is refused unless it is the one stored.
    pub fn for_remote_callers(mut self) -> Registry {
        self.remote = true;
        self
    }

    /// Whether services and authkeys live in the database.
    pub fn in_database(&self) -> bool {
        matches!(self.source, Source::Database(_))
    }

    /// The store of a database registry, or [`AdminError::ConfigSourceFile`]: services and
    /// authkeys can be changed only there. Front ends may ask before they read a request.
    pub fn ensure_editable(&self) -> Result<&Store, AdminError> {
        match &self.source {
            Source::Database(store) => Ok(store),
            Source::File(_) | Source::Engine(_) => Err(AdminError::ConfigSourceFile),
        }
    }

    /// Holds other changes off until dropped.
    pub(crate) fn lock(&self) -> MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }
}
