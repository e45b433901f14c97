//! The registry read once, for a report, without writing to it (`keyhole processing-record`):
//! from a directory without creating it or anything in it, or from the Kafka topics without
//! creating them, producing to them or joining a consumer group. Unlike [`super::Registry`], a
//! snapshot has no way to change anything.

use super::local::Store;
use super::model::{Activation, State};
use super::rules::check_spec;
use super::{Catalog, HandlerSpec, RegistryError, TenantLimits, VersionInfo};
use crate::config::{AdminSettings, KafkaSettings, RegistryStore};

/// Every tenant's handlers as the registry held them when it was read.
pub struct Snapshot {
    /// The state read.
    state: State,
    /// What grants and specs are checked against, to say which handlers may not run.
    catalog: Catalog,
}

/// One stored handler, as a report needs it.
#[derive(Clone, Debug)]
pub struct HandlerEntry {
    /// The tenant.
    pub tenant: String,
    /// The handler.
    pub handler: String,
    /// How it is bound, with its declarations.
    pub spec: HandlerSpec,
    /// The tenant's limits, which fill in what the spec leaves out.
    pub limits: TenantLimits,
    /// Its stored versions, oldest first.
    pub versions: Vec<VersionInfo>,
    /// The version new events run on, if one is active.
    pub active: Option<String>,
    /// Which version became active when, oldest first (bounded; empty in registries written
    /// before activations were recorded).
    pub activations: Vec<Activation>,
    /// Why it may not run, when its tenant's grant no longer covers its spec.
    pub not_granted: Option<String>,
}

impl Snapshot {
    /// Reads the registry `[admin]` and `[registry]` name, to its end.
    pub async fn read(
        admin: &AdminSettings,
        kafka: &KafkaSettings,
        catalog: Catalog,
    ) -> Result<Snapshot, RegistryError> {
        let state = match &admin.registry {
            RegistryStore::Local => {
                let store = Store::existing(&admin.state_dir);
                // A file read: not on an async worker.
                tokio::task::spawn_blocking(move || store.load())
                    .await
                    .map_err(|e| RegistryError::Storage(std::io::Error::other(e)))??
            }
            RegistryStore::Kafka(settings) => {
                super::kafka::read_once(kafka, settings, catalog.clone()).await?
            }
        };
        Ok(Snapshot { state, catalog })
    }

    /// Every stored handler, by tenant and name.
    pub fn handlers(&self) -> Vec<HandlerEntry> {
        let mut entries = Vec::new();
        for (tenant, record) in &self.state.tenants {
            for (handler, h) in &record.handlers {
                entries.push(HandlerEntry {
                    tenant: tenant.clone(),
                    handler: handler.clone(),
                    spec: h.spec.clone(),
                    limits: record.grant.limits.clone(),
                    versions: h.versions.clone(),
                    active: h.active.clone(),
                    activations: h.activations.clone(),
                    not_granted: check_spec(tenant, &record.grant, &self.catalog, &h.spec)
                        .err()
                        .map(|e| e.to_string()),
                });
            }
        }
        entries
    }
}
