//! The registry: tenants, what the operator granted each, their API tokens, and their handlers'
//! uploaded versions. The admin API changes it; the engine runs each handler's active version.
//!
//! It persists in a local directory (see [`store`]), so keyhole restarts with the same tenants,
//! grants and active versions. Every change is checked and saved before it is applied in memory:
//! a change that cannot be saved did not happen.

mod error;
mod model;
mod rules;
mod store;
mod token;
mod views;

pub use model::{
    Deployment, Grant, HandlerSpec, HandlerView, IssuedToken, TenantLimits, TenantView, VersionInfo,
};

pub use error::RegistryError;
pub use token::matches as token_matches;

use crate::model::names::{NAME_RULE, is_name, is_topic};
use crate::model::purpose::is_purpose;
use crate::sandbox::ComponentReport;
use model::{HandlerRecord, State, TenantRecord};
use rules::{check_spec, contract_of, handler_record, handler_record_mut, hex_of, normalise, now};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use store::Store;
use views::{handler_view, tenant_view};

/// What the registry checks grants and specs against: the host's configuration.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// The configured data sources' names.
    pub data_sources: Vec<String>,
    /// `(tenant, handler)` of the handlers in the configuration file, whose names (and consumer
    /// groups) the registry may not reuse.
    pub configured: HashSet<(String, String)>,
}

/// The registry. Cheap to share behind an `Arc`; every operation takes its lock briefly.
pub struct Registry {
    store: Store,
    state: Mutex<State>,
    catalog: Catalog,
}

impl Registry {
    /// Opens the registry kept in `dir` (created if missing).
    pub fn open(dir: &Path, catalog: Catalog) -> Result<Self, RegistryError> {
        let store = Store::open(dir)?;
        let state = store.load()?;
        // Names stored before '.' was refused still load (refusing them would strand their
        // tenants), but their joins may collide: say so, once, where the operator looks.
        for (tenant, record) in &state.tenants {
            for handler in std::iter::once(None).chain(record.handlers.keys().map(Some)) {
                let bad = !is_name(tenant) || handler.is_some_and(|h| !is_name(h));
                if bad {
                    tracing::error!(tenant = %tenant, handler = handler.map(String::as_str),
                        "A stored name breaks the name rule ({NAME_RULE}); its consumer group may be shared with another handler's. Delete it and create it again under a valid name.");
                }
            }
        }
        Ok(Registry { store, state: Mutex::new(state), catalog })
    }

    fn read(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `change` to a copy of the state, saves the copy, and only then makes it current.
    fn change<T>(
        &self,
        change: impl FnOnce(&mut State) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut state = self.read();
        let mut next = state.clone();
        let result = change(&mut next)?;
        self.store.save(&next)?;
        *state = next;
        Ok(result)
    }

    // --- tenants and tokens (the operator's) ---------------------------------------------------

    /// Every tenant.
    pub fn tenants(&self) -> Vec<TenantView> {
        self.read().tenants.iter().map(|(name, t)| tenant_view(name, t)).collect()
    }

    /// One tenant.
    pub fn tenant(&self, tenant: &str) -> Result<TenantView, RegistryError> {
        let state = self.read();
        let record = state.tenants.get(tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?;
        Ok(tenant_view(tenant, record))
    }

    /// Creates a tenant or replaces its grant; `true` when it was created. Handlers the new grant
    /// no longer covers stay stored but stop running (their state says why).
    pub fn put_tenant(&self, tenant: &str, grant: Grant) -> Result<(TenantView, bool), RegistryError> {
        if !is_name(tenant) {
            return Err(RegistryError::Invalid(format!("tenant name {tenant:?} must be {NAME_RULE}")));
        }
        self.check_grant(&grant)?;
        self.change(|state| {
            let created = !state.tenants.contains_key(tenant);
            let record = state.tenants.entry(tenant.to_string()).or_insert_with(|| TenantRecord {
                grant: Grant::default(),
                tokens: Vec::new(),
                handlers: Default::default(),
            });
            record.grant = grant;
            Ok((tenant_view(tenant, record), created))
        })
    }

    /// Deletes a tenant, its tokens, its handlers and their components.
    pub fn delete_tenant(&self, tenant: &str) -> Result<(), RegistryError> {
        self.change(|state| {
            state.tenants.remove(tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?;
            Ok(())
        })?;
        self.collect_garbage();
        Ok(())
    }

    /// Issues a new bearer token for a tenant; only its hash is kept.
    pub fn issue_token(&self, tenant: &str) -> Result<IssuedToken, RegistryError> {
        let issued = token::issue();
        self.change(|state| {
            let record =
                state.tenants.get_mut(tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?;
            record.tokens.push(model::TokenRecord {
                id: issued.id.clone(),
                sha256: token::digest_hex(&issued.token),
                created_at: now(),
            });
            Ok(())
        })?;
        Ok(issued)
    }

    /// Revokes a tenant's token.
    pub fn revoke_token(&self, tenant: &str, id: &str) -> Result<(), RegistryError> {
        self.change(|state| {
            let record =
                state.tenants.get_mut(tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?;
            let before = record.tokens.len();
            record.tokens.retain(|t| t.id != id);
            if record.tokens.len() == before {
                return Err(RegistryError::UnknownToken { tenant: tenant.into(), id: id.into() });
            }
            Ok(())
        })
    }

    /// The tenant a bearer token belongs to. Every stored hash is compared, in constant time,
    /// whatever matches: the time taken says nothing about which tokens exist.
    pub fn authenticate(&self, presented: &str) -> Option<String> {
        let state = self.read();
        let candidates = state
            .tenants
            .iter()
            .flat_map(|(name, t)| t.tokens.iter().map(move |token| (name, token.sha256.as_str())));
        token::find(presented, candidates).cloned()
    }

    // --- handlers (the tenant's) ----------------------------------------------------------------

    /// A tenant's handlers.
    pub fn handlers(&self, tenant: &str) -> Result<Vec<HandlerView>, RegistryError> {
        let state = self.read();
        let record = state.tenants.get(tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?;
        Ok(record.handlers.iter().map(|(name, h)| handler_view(tenant, name, h)).collect())
    }

    /// One handler.
    pub fn handler(&self, tenant: &str, handler: &str) -> Result<HandlerView, RegistryError> {
        let state = self.read();
        let record = handler_record(&state, tenant, handler)?;
        Ok(handler_view(tenant, handler, record))
    }

    /// Creates a handler or replaces its spec; `true` when created. The spec must be within the
    /// tenant's grant and limits.
    pub fn put_handler(
        &self,
        tenant: &str,
        handler: &str,
        spec: HandlerSpec,
    ) -> Result<(HandlerView, bool), RegistryError> {
        if !is_name(handler) {
            return Err(RegistryError::Invalid(format!("handler name {handler:?} must be {NAME_RULE}")));
        }
        if self.catalog.configured.contains(&(tenant.to_string(), handler.to_string())) {
            return Err(RegistryError::Conflict(format!(
                "{tenant}/{handler} is defined in keyhole's configuration file; choose another name"
            )));
        }
        self.change(|state| {
            let record =
                state.tenants.get_mut(tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?;
            check_spec(tenant, &record.grant, &self.catalog, &spec)?;
            let created = !record.handlers.contains_key(handler);
            let max = record.grant.limits.max_handlers;
            if created && record.handlers.len() >= max as usize {
                return Err(RegistryError::OverLimit {
                    tenant: tenant.into(),
                    limit: "handlers",
                    value: record.handlers.len() as u64 + 1,
                    max: max.into(),
                });
            }
            let entry = record.handlers.entry(handler.to_string()).or_insert_with(|| HandlerRecord {
                spec: spec.clone(),
                versions: Vec::new(),
                active: None,
                previous: Vec::new(),
            });
            entry.spec = spec;
            Ok((handler_view(tenant, handler, entry), created))
        })
    }

    /// Deletes a handler and its versions.
    pub fn delete_handler(&self, tenant: &str, handler: &str) -> Result<(), RegistryError> {
        self.change(|state| {
            let record =
                state.tenants.get_mut(tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?;
            record.handlers.remove(handler).ok_or_else(|| RegistryError::UnknownHandler {
                tenant: tenant.into(),
                handler: handler.into(),
            })?;
            Ok(())
        })?;
        self.collect_garbage();
        Ok(())
    }

    /// The largest component the tenant may upload.
    pub fn upload_limit(&self, tenant: &str) -> Result<u64, RegistryError> {
        let state = self.read();
        let record = state.tenants.get(tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?;
        Ok(record.grant.limits.max_component_bytes)
    }

    /// Stores a component that passed validation (`report`) as a version of the handler;
    /// `true` when it is new (uploading the same bytes again changes nothing).
    pub fn add_version(
        &self,
        tenant: &str,
        handler: &str,
        wasm: &[u8],
        report: &ComponentReport,
    ) -> Result<(VersionInfo, bool), RegistryError> {
        let version = crate::sandbox::version_of(wasm);
        let hex = hex_of(&version)?;
        let limit = self.upload_limit(tenant)?;
        if wasm.len() as u64 > limit {
            return Err(RegistryError::OverLimit {
                tenant: tenant.into(),
                limit: "component size in bytes",
                value: wasm.len() as u64,
                max: limit,
            });
        }
        // Stored before the state names it: a crash in between leaves an unreferenced file, not
        // a version without its component.
        self.store.put_component(hex, wasm)?;
        self.change(|state| {
            let max = state.tenants.get(tenant).map_or(0, |t| t.grant.limits.max_versions_per_handler);
            let record = handler_record_mut(state, tenant, handler)?;
            if let Some(existing) = record.versions.iter().find(|v| v.version == version) {
                return Ok((existing.clone(), false));
            }
            if record.versions.len() >= max as usize {
                return Err(RegistryError::OverLimit {
                    tenant: tenant.into(),
                    limit: "versions per handler",
                    value: record.versions.len() as u64 + 1,
                    max: max.into(),
                });
            }
            let info = VersionInfo {
                version: version.clone(),
                uploaded_at: now(),
                size_bytes: wasm.len() as u64,
                contract: contract_of(report),
                imports: report.imports.clone(),
            };
            record.versions.push(info.clone());
            Ok((info, true))
        })
    }

    /// One version's metadata.
    pub fn version(&self, tenant: &str, handler: &str, version: &str) -> Result<VersionInfo, RegistryError> {
        let state = self.read();
        let record = handler_record(&state, tenant, handler)?;
        let version = normalise(version);
        record.versions.iter().find(|v| v.version == version).cloned().ok_or_else(|| {
            RegistryError::UnknownVersion { handler: handler.into(), version: version.clone() }
        })
    }

    /// Deletes a version that is not active.
    pub fn delete_version(&self, tenant: &str, handler: &str, version: &str) -> Result<(), RegistryError> {
        let version = normalise(version);
        self.change(|state| {
            let record = handler_record_mut(state, tenant, handler)?;
            if record.active.as_deref() == Some(version.as_str()) {
                return Err(RegistryError::Conflict(format!(
                    "{version} is the active version; activate another one first"
                )));
            }
            let before = record.versions.len();
            record.versions.retain(|v| v.version != version);
            if record.versions.len() == before {
                return Err(RegistryError::UnknownVersion {
                    handler: handler.into(),
                    version: version.clone(),
                });
            }
            record.previous.retain(|v| *v != version);
            Ok(())
        })?;
        self.collect_garbage();
        Ok(())
    }

    /// Makes `version` the active one; returns the version it replaced.
    pub fn activate(
        &self,
        tenant: &str,
        handler: &str,
        version: &str,
    ) -> Result<Option<String>, RegistryError> {
        let version = normalise(version);
        self.change(|state| {
            let record = handler_record_mut(state, tenant, handler)?;
            if !record.versions.iter().any(|v| v.version == version) {
                return Err(RegistryError::UnknownVersion {
                    handler: handler.into(),
                    version: version.clone(),
                });
            }
            if record.active.as_deref() == Some(version.as_str()) {
                return Ok(record.active.clone());
            }
            let replaced = record.active.replace(version.clone());
            if let Some(replaced) = &replaced {
                record.previous.retain(|v| v != replaced && *v != version);
                record.previous.push(replaced.clone());
            }
            Ok(replaced)
        })
    }

    /// Activates the version that was active before the current one; returns it.
    pub fn rollback(&self, tenant: &str, handler: &str) -> Result<String, RegistryError> {
        self.change(|state| {
            let record = handler_record_mut(state, tenant, handler)?;
            let Some(back) = record.previous.pop() else {
                return Err(RegistryError::Conflict(format!(
                    "{tenant}/{handler} has no earlier active version to roll back to"
                )));
            };
            record.active = Some(back.clone());
            Ok(back)
        })
    }

    /// Puts a handler's activation back as it was (after an activation that could not be
    /// applied).
    pub fn restore_activation(
        &self,
        tenant: &str,
        handler: &str,
        active: Option<String>,
        previous: Vec<String>,
    ) -> Result<(), RegistryError> {
        self.change(|state| {
            let record = handler_record_mut(state, tenant, handler)?;
            record.active = active;
            record.previous = previous;
            Ok(())
        })
    }

    /// A handler's activation as it is: the active version and the rollback history.
    pub fn activation(
        &self,
        tenant: &str,
        handler: &str,
    ) -> Result<(Option<String>, Vec<String>), RegistryError> {
        let state = self.read();
        let record = handler_record(&state, tenant, handler)?;
        Ok((record.active.clone(), record.previous.clone()))
    }

    // --- for the pipeline -------------------------------------------------------------------

    /// Every handler with an active version: what should run.
    pub fn deployments(&self) -> Vec<Deployment> {
        let state = self.read();
        let mut deployments = Vec::new();
        for (tenant, record) in &state.tenants {
            for (handler, h) in &record.handlers {
                let Some(version) = &h.active else { continue };
                let Ok(hex) = hex_of(version) else { continue };
                deployments.push(Deployment {
                    tenant: tenant.clone(),
                    handler: handler.clone(),
                    spec: h.spec.clone(),
                    limits: record.grant.limits.clone(),
                    version: version.clone(),
                    component: self.store.component_path(hex),
                    not_granted: check_spec(tenant, &record.grant, &self.catalog, &h.spec)
                        .err()
                        .map(|e| e.to_string()),
                });
            }
        }
        deployments
    }

    /// Removes component files no version refers to any more.
    fn collect_garbage(&self) {
        let used: HashSet<String> = self
            .read()
            .tenants
            .values()
            .flat_map(|t| t.handlers.values())
            .flat_map(|h| h.versions.iter().map(|v| v.version.clone()))
            .collect();
        let Ok(entries) = std::fs::read_dir(self.store.component_path("x").with_file_name("")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".wasm")) else { continue };
            if !used.contains(&format!("sha256:{hex}"))
                && let Err(error) = self.store.delete_component(hex)
            {
                tracing::warn!(%error, component = hex, "Cannot delete an unused component.");
            }
        }
    }

    fn check_grant(&self, grant: &Grant) -> Result<(), RegistryError> {
        for topic in grant.topics.iter().chain(&grant.reply_topics) {
            if !is_topic(topic) {
                return Err(RegistryError::Invalid(format!("{topic:?} is not a valid topic name")));
            }
        }
        for source in &grant.data_sources {
            if !self.catalog.data_sources.contains(source) {
                return Err(RegistryError::Invalid(format!(
                    "no data source named {source:?} is configured (configured: {})",
                    self.catalog.data_sources.join(", ")
                )));
            }
        }
        for purpose in &grant.purposes {
            if !is_purpose(purpose) {
                return Err(RegistryError::Invalid(format!(
                    "purpose {purpose:?} must be 1-512 printable ASCII characters (it travels in an HTTP header)"
                )));
            }
        }
        let l = &grant.limits;
        if l.max_component_bytes == 0
            || l.max_in_flight == 0
            || l.max_memory_bytes == 0
            || l.max_deadline_ms == 0
        {
            return Err(RegistryError::Invalid("limits must be greater than 0".into()));
        }
        Ok(())
    }
}
