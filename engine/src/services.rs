//! The configured services as the engine holds them: a list indexed by the service index that
//! tokens record, looked up by name, replaced by a reload (SIGHUP) without renumbering.

use std::collections::HashMap;
use std::sync::Arc;

use zoftoken_proto::codes::OtpParams;

use crate::config::{self, ServiceConfig};
use crate::{Engine, EngineError, EventKind};

/// One service, as of the last reload.
pub(crate) struct Service {
    pub(crate) config: ServiceConfig,
    pub(crate) name: Arc<str>,
    /// Dropped from the configuration by a reload. Its index stays reserved (tokens record
    /// it) so that the service can return, but until then it does not exist: its tokens'
    /// packets are dropped, the API does not know it, and it receives no webhooks.
    pub(crate) removed: bool,
}

/// Every service ever configured in this process, by index.
pub(crate) struct Services {
    list: Vec<Service>,
    /// Names of the services that are not removed.
    by_name: HashMap<String, u16>,
}

impl Services {
    /// The configured service at `index` (`None` if there is none or it was removed).
    pub(crate) fn get(&self, index: u16) -> Option<&Service> {
        self.list.get(usize::from(index)).filter(|s| !s.removed)
    }

    /// The index of a configured service.
    pub(crate) fn index_of(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }

    /// The configured services, in index order.
    pub(crate) fn configured(&self) -> impl Iterator<Item = &Service> {
        self.list.iter().filter(|s| !s.removed)
    }

    /// The name recorded for `index`, also of a removed service (its tokens' events, such as
    /// an expiry, still name it).
    pub(crate) fn name_of(&self, index: u16) -> Option<&Arc<str>> {
        self.list.get(usize::from(index)).map(|s| &s.name)
    }
}

impl Engine {
    /// The services of `list` (configuration, removed), indexed in its order.
    pub(crate) fn build_services(list: Vec<(ServiceConfig, bool)>) -> Services {
        let by_name = list
            .iter()
            .enumerate()
            .filter(|(_, (_, removed))| !removed)
            .map(|(i, (s, _))| (s.name.clone(), i as u16))
            .collect();
        let list = list
            .into_iter()
            .map(|(config, removed)| Service {
                name: Arc::from(config.name.as_str()),
                config,
                removed,
            })
            .collect();
        Services { list, by_name }
    }

    /// Replaces the services (reload) with `services`, matched by name: a service that is no
    /// longer listed is removed (its tokens' packets are dropped and the API refuses it) but
    /// keeps its index, so that its tokens work again if it returns; a new one is added.
    pub fn reload_services(&self, services: Vec<ServiceConfig>) -> Result<(), EngineError> {
        config::validate_services(&services).map_err(EngineError::Config)?;
        let current = self.services();
        let mut list = current
            .list
            .iter()
            .map(|s| (s.config.clone(), true))
            .collect::<Vec<_>>();
        for s in services {
            match list.iter_mut().find(|(c, _)| c.name == s.name) {
                Some(slot) => *slot = (s, false),
                None => list.push((s, false)),
            }
        }
        if list.len() > usize::from(u16::MAX) {
            return Err(EngineError::Invalid("too many services"));
        }
        let new = Arc::new(Self::build_services(list));
        *self.services.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        for shard in self.shards.iter() {
            crate::lock(shard).services = new.clone();
        }
        Ok(())
    }

    /// The current services' configurations, in index order (a snapshot: a reload swaps
    /// them, SIGHUP). The webhook pipeline reads webhook settings here; the API the details.
    pub fn service_configs(&self) -> Vec<ServiceConfig> {
        self.services()
            .configured()
            .map(|s| s.config.clone())
            .collect()
    }

    /// The current services (a snapshot).
    pub(crate) fn services(&self) -> Arc<Services> {
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The index of a configured service, or [`EngineError::UnknownService`].
    pub(crate) fn service_index(&self, name: &str) -> Result<u16, EngineError> {
        self.services()
            .index_of(name)
            .ok_or(EngineError::UnknownService)
    }

    /// The index of a service by name (what [`Engine::load_token`] records carry).
    pub fn service_index_of(&self, name: &str) -> Option<u16> {
        self.service_index(name).ok()
    }

    /// The name of a service by index.
    pub fn service_name(&self, index: u16) -> Option<Arc<str>> {
        self.services().name_of(index).cloned()
    }

    /// Whether service `index` has a webhook that receives events of `kind` (storage writes
    /// only those events into the durable outbox; the others need no delivery).
    pub fn webhook_wants(&self, index: u16, kind: EventKind) -> bool {
        self.services()
            .get(index)
            .and_then(|s| s.config.webhook.as_ref())
            .is_some_and(|w| w.events.is_empty() || w.events.iter().any(|e| e == kind.name()))
    }

    /// The otp parameters of a service (for the app's display and the API).
    pub fn otp_params(&self, service: &str) -> Result<OtpParams, EngineError> {
        let services = self.services();
        services
            .index_of(service)
            .and_then(|i| services.get(i))
            .map(|s| s.config.otp)
            .ok_or(EngineError::UnknownService)
    }
}
