//! The registry: tenants, what the operator granted each, their API tokens, and their handlers'
//! uploaded versions. The admin API changes it; the engine runs each handler's active version.
//!
//! Every change is a [`Command`] that a deterministic state machine applies ([`command`]).
//! Where it persists is the operator's choice: a local directory ([`local`], one instance, the
//! default) or two Kafka topics shared by every replica ([`kafka`]). Either way, a change that
//! cannot be saved did not happen, and a caller is answered with what was decided.

mod command;
mod error;
mod kafka;
mod local;
pub mod migrate;
mod model;
mod rules;
mod snapshot;
mod token;
mod views;

pub use command::Command;
pub use kafka::Announced;
pub use model::{
    Activation, BlobRef, Deployment, Grant, HandlerSpec, HandlerView, IssuedToken, MAX_ACTIVATIONS,
    TenantLimits, TenantView, TokenRecord, VersionInfo,
};
pub use snapshot::{HandlerEntry, Snapshot};

pub use error::RegistryError;
pub use token::{is_tenant_token_shaped, matches as token_matches};

use crate::config::{AdminSettings, KafkaSettings, RegistryStore};
use crate::model::names::{NAME_RULE, is_name};
use crate::sandbox::ComponentReport;
use command::Answer;
use kafka::KafkaStore;
use local::Store;
use model::State;
use rules::{check_grant, check_spec, contract_of, handler_record, hex_of, normalise, now};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use views::{handler_view, tenant_view};

/// What the registry checks grants and specs against: the host's configuration. Every replica
/// sharing a Kafka registry must have the same (it takes part in every decision).
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// The configured data sources' names.
    pub data_sources: Vec<String>,
    /// `(tenant, handler)` of the handlers in the configuration file, whose names (and consumer
    /// groups) the registry may not reuse.
    pub configured: HashSet<(String, String)>,
    /// keyhole's own topics, which no grant may name.
    pub own_topics: crate::model::names::OwnTopics,
}

impl Catalog {
    /// The catalog of a configuration.
    pub fn of(settings: &crate::config::Settings) -> Catalog {
        Catalog {
            data_sources: settings.data_sources.iter().map(|s| s.name.clone()).collect(),
            configured: settings.bindings.iter().map(|b| (b.tenant.clone(), b.handler.clone())).collect(),
            own_topics: settings.own_topics.clone(),
        }
    }
}

/// Where the registry persists.
enum Backend {
    /// A directory; `writes` makes one change at a time (each saves the whole state).
    Local { store: Store, writes: tokio::sync::Mutex<()> },
    /// The Kafka topics; `cache` keeps the components this replica fetched.
    Kafka { store: Box<KafkaStore>, cache: Store },
}

/// The registry. Cheap to share behind an `Arc`; reads take its lock briefly.
pub struct Registry {
    /// The state every read sees; the Kafka store's reader applies the log to it.
    state: Arc<Mutex<State>>,
    catalog: Arc<Catalog>,
    backend: Backend,
}

impl Registry {
    /// Opens the registry kept in `dir` (created if missing).
    pub fn open(dir: &Path, catalog: Catalog) -> Result<Self, RegistryError> {
        let store = Store::open(dir)?;
        let state = store.load()?;
        warn_about_stored_names(&state);
        let backend = Backend::Local { store, writes: tokio::sync::Mutex::new(()) };
        Ok(Registry { state: Arc::new(Mutex::new(state)), catalog: Arc::new(catalog), backend })
    }

    /// Opens the registry as `[admin]` and `[registry]` configure it. A Kafka registry is read
    /// to its end before this returns; the receiver gets the versions announced from then on.
    pub async fn open_configured(
        admin: &AdminSettings,
        kafka: &KafkaSettings,
        catalog: Catalog,
    ) -> Result<(Self, Option<tokio::sync::mpsc::Receiver<Announced>>), RegistryError> {
        // Reading the store's files (and creating them) is blocking I/O: not on an async worker.
        let dir = admin.state_dir.clone();
        let RegistryStore::Kafka(settings) = &admin.registry else {
            let registry = tokio::task::spawn_blocking(move || Registry::open(&dir, catalog))
                .await
                .map_err(|e| RegistryError::Storage(std::io::Error::other(e)))??;
            // This instance's own registry is never behind; shown, so that a dashboard or an
            // alert on staleness reads 0 here rather than nothing.
            metrics::gauge!(crate::telemetry::REGISTRY_STALENESS).set(0.0);
            return Ok((registry, None));
        };
        let cache = tokio::task::spawn_blocking(move || Store::open(&dir.join("cache")))
            .await
            .map_err(|e| RegistryError::Storage(std::io::Error::other(e)))??;
        let (state, catalog) = (Arc::new(Mutex::new(State::default())), Arc::new(catalog));
        let (store, announced) = KafkaStore::open(kafka, settings, state.clone(), catalog.clone()).await?;
        warn_about_stored_names(&read(&state));
        Ok((
            Registry { state, catalog, backend: Backend::Kafka { store: Box::new(store), cache } },
            Some(announced),
        ))
    }

    fn read(&self) -> std::sync::MutexGuard<'_, State> {
        read(&self.state)
    }

    /// Applies `command` where the registry persists and answers what was decided.
    async fn submit(&self, command: Command) -> Result<Answer, RegistryError> {
        match &self.backend {
            Backend::Local { store, writes } => {
                let _one_at_a_time = writes.lock().await;
                let mut next = self.read().clone();
                let applied = command::apply(&mut next, &self.catalog, &command, &now())?;
                let (store, saved) = (store.clone(), next.clone());
                // Synced to disk: not on an async worker.
                tokio::task::spawn_blocking(move || store.save(&saved))
                    .await
                    .map_err(|e| RegistryError::Storage(std::io::Error::other(e)))??;
                *read(&self.state) = next;
                self.delete_unused_files(&applied.removed).await;
                Ok(applied.answer)
            }
            Backend::Kafka { store, .. } => {
                // Refused here already, when it cannot succeed: no record for it.
                command::apply(&mut self.read().clone(), &self.catalog, &command, &now())?;
                let applied = store.submit(command).await?;
                let removed: Vec<_> = applied
                    .removed
                    .into_iter()
                    .filter_map(|(info, blob)| Some((info.version, blob?)))
                    .collect();
                store.forget(&removed).await;
                Ok(applied.answer)
            }
        }
    }

    /// `Ok` when tenants' tokens may be trusted here: always with the local store; with Kafka,
    /// while this replica has read the registry log recently (see
    /// `registry.max_staleness_ms`).
    pub fn current(&self) -> Result<(), RegistryError> {
        match &self.backend {
            Backend::Local { .. } => Ok(()),
            Backend::Kafka { store, .. } => store.current(),
        }
    }

    /// Before a request is served: with the Kafka store, waits until this replica has applied
    /// every change confirmed (by any replica) before now, so that whichever replica a client
    /// reaches, it sees its own and everyone's earlier writes. When the log's end cannot be
    /// read (the broker is away), the replica serves what it has while it is within
    /// `max_staleness_ms` of having read it all, and refuses (503) after that.
    pub async fn sync(&self) -> Result<(), RegistryError> {
        let Backend::Kafka { store, .. } = &self.backend else { return Ok(()) };
        match store.sync().await {
            Ok(()) => Ok(()),
            Err(error) => store.current().map_err(|_| error),
        }
    }

    /// Stops following the Kafka store's registry log (at shutdown) and waits, briefly, for its
    /// reader's tasks. Nothing to do for the local store.
    pub async fn close(&self) {
        if let Backend::Kafka { store, .. } = &self.backend {
            store.close().await;
        }
    }

    /// With the Kafka store, wakes whenever another replica's (or this one's) change was
    /// applied here.
    pub fn changes(&self) -> Option<tokio::sync::watch::Receiver<i64>> {
        match &self.backend {
            Backend::Local { .. } => None,
            Backend::Kafka { store, .. } => Some(store.changes()),
        }
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
    pub async fn put_tenant(&self, tenant: &str, grant: Grant) -> Result<(TenantView, bool), RegistryError> {
        if !is_name(tenant) {
            return Err(RegistryError::Invalid(format!("tenant name {tenant:?} must be {NAME_RULE}")));
        }
        check_grant(&self.catalog, &grant)?;
        match self.submit(Command::PutTenant { tenant: tenant.into(), grant }).await? {
            Answer::Tenant(view, created) => Ok((view, created)),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes a tenant, its tokens, its handlers and their components.
    pub async fn delete_tenant(&self, tenant: &str) -> Result<(), RegistryError> {
        self.submit(Command::DeleteTenant { tenant: tenant.into() }).await.map(drop)
    }

    /// Issues a new bearer token for a tenant; only its hash is kept.
    pub async fn issue_token(&self, tenant: &str) -> Result<IssuedToken, RegistryError> {
        let issued = token::issue();
        let record = TokenRecord {
            id: issued.id.clone(),
            sha256: token::digest_hex(&issued.token),
            created_at: now(),
        };
        self.submit(Command::IssueToken { tenant: tenant.into(), token: record }).await?;
        Ok(issued)
    }

    /// Revokes a tenant's token.
    pub async fn revoke_token(&self, tenant: &str, id: &str) -> Result<(), RegistryError> {
        self.submit(Command::RevokeToken { tenant: tenant.into(), id: id.into() }).await.map(drop)
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
    pub async fn put_handler(
        &self,
        tenant: &str,
        handler: &str,
        spec: HandlerSpec,
    ) -> Result<(HandlerView, bool), RegistryError> {
        if !is_name(handler) {
            return Err(RegistryError::Invalid(format!("handler name {handler:?} must be {NAME_RULE}")));
        }
        let command = Command::PutHandler { tenant: tenant.into(), handler: handler.into(), spec };
        match self.submit(command).await? {
            Answer::Handler(view, created) => Ok((view, created)),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes a handler and its versions.
    pub async fn delete_handler(&self, tenant: &str, handler: &str) -> Result<(), RegistryError> {
        self.submit(Command::DeleteHandler { tenant: tenant.into(), handler: handler.into() }).await.map(drop)
    }

    /// The largest component the tenant may upload.
    pub fn upload_limit(&self, tenant: &str) -> Result<u64, RegistryError> {
        let state = self.read();
        let record = state.tenants.get(tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?;
        Ok(record.grant.limits.max_component_bytes)
    }

    /// Whether the handler has room for `version`: it is one of its versions already, or the
    /// handler has fewer than the tenant's `max_versions_per_handler`. Checked before an upload
    /// is compiled; [`Registry::add_version`] checks it again against the state it meets.
    pub fn version_room(&self, tenant: &str, handler: &str, version: &str) -> Result<(), RegistryError> {
        let state = self.read();
        let max = state
            .tenants
            .get(tenant)
            .ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?
            .grant
            .limits
            .max_versions_per_handler;
        let record = handler_record(&state, tenant, handler)?;
        if record.versions.iter().any(|v| v.version == version) || record.versions.len() < max as usize {
            return Ok(());
        }
        Err(RegistryError::OverLimit {
            tenant: tenant.into(),
            limit: "versions per handler",
            value: record.versions.len() as u64 + 1,
            max: max.into(),
        })
    }

    /// Stores a component that passed validation (`report`) as a version of the handler;
    /// `true` when it is new (uploading the same bytes again changes nothing).
    pub async fn add_version(
        &self,
        tenant: &str,
        handler: &str,
        wasm: Arc<Vec<u8>>,
        report: &ComponentReport,
    ) -> Result<(VersionInfo, bool), RegistryError> {
        let info = VersionInfo {
            version: crate::sandbox::version_of(&wasm),
            uploaded_at: now(),
            size_bytes: wasm.len() as u64,
            contract: contract_of(report),
            imports: report.imports.clone(),
        };
        self.store_version(tenant, handler, info, wasm).await
    }

    /// Stores `wasm` as the version `info` describes (its digest checked).
    pub(crate) async fn store_version(
        &self,
        tenant: &str,
        handler: &str,
        info: VersionInfo,
        wasm: Arc<Vec<u8>>,
    ) -> Result<(VersionInfo, bool), RegistryError> {
        let version = info.version.clone();
        if crate::sandbox::version_of(&wasm) != version {
            return Err(RegistryError::Blob { version, reason: "its bytes do not match its digest".into() });
        }
        let hex = hex_of(&version)?.to_string();
        let (tenant, handler) = (tenant.to_string(), handler.to_string());
        let check = Command::AddVersion {
            tenant: tenant.clone(),
            handler: handler.clone(),
            info: info.clone(),
            blob: None,
        };
        // Refused (or already stored) before any byte is written.
        let known = command::apply(&mut self.read().clone(), &self.catalog, &check, &now())?;
        if let Answer::Version(existing, false) = known.answer {
            return Ok((existing, false));
        }
        // The bytes are stored before the manifest that names them: a crash in between leaves
        // bytes nothing names, never a version without its bytes.
        let blob = match &self.backend {
            Backend::Local { store, .. } => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.put_component(&hex, &wasm))
                    .await
                    .map_err(|e| RegistryError::Storage(std::io::Error::other(e)))??;
                None
            }
            Backend::Kafka { store, .. } => Some(store.put_blob(&version, &wasm).await?),
        };
        match self.submit(Command::AddVersion { tenant, handler, info, blob }).await? {
            Answer::Version(info, created) => Ok((info, created)),
            other => Err(unexpected(&other)),
        }
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
    pub async fn delete_version(
        &self,
        tenant: &str,
        handler: &str,
        version: &str,
    ) -> Result<(), RegistryError> {
        let command = Command::DeleteVersion {
            tenant: tenant.into(),
            handler: handler.into(),
            version: normalise(version),
        };
        self.submit(command).await.map(drop)
    }

    /// Makes `version` the active one; returns the handler as this activation left it (a later
    /// one may already have replaced it) and the version it replaced.
    pub async fn activate(
        &self,
        tenant: &str,
        handler: &str,
        version: &str,
    ) -> Result<(HandlerView, Option<String>), RegistryError> {
        let command =
            Command::Activate { tenant: tenant.into(), handler: handler.into(), version: normalise(version) };
        self.activation_of(command).await
    }

    /// Activates the version that was active before the current one; returns the handler as the
    /// rollback left it and the version it replaced.
    pub async fn rollback(
        &self,
        tenant: &str,
        handler: &str,
    ) -> Result<(HandlerView, Option<String>), RegistryError> {
        self.activation_of(Command::Rollback { tenant: tenant.into(), handler: handler.into() }).await
    }

    async fn activation_of(&self, command: Command) -> Result<(HandlerView, Option<String>), RegistryError> {
        match self.submit(command).await? {
            Answer::Activated(view, replaced) => Ok((view, replaced)),
            other => Err(unexpected(&other)),
        }
    }

    /// Puts a handler's activation back as it was, after an activation of `failed` that could
    /// not be applied; left alone if another activation came in the meantime.
    pub async fn restore_activation(
        &self,
        tenant: &str,
        handler: &str,
        failed: &str,
        active: Option<String>,
        previous: Vec<String>,
    ) -> Result<(), RegistryError> {
        let command = Command::SetActivation {
            tenant: tenant.into(),
            handler: handler.into(),
            active,
            previous,
            only_if_active: Some(failed.to_string()),
            activations: Vec::new(),
        };
        self.submit(command).await.map(drop)
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

    /// Applies a command as it is (importing a registry, see [`migrate`]).
    pub(crate) async fn apply_command(&self, command: Command) -> Result<(), RegistryError> {
        self.submit(command).await.map(drop)
    }

    /// A copy of the whole state (exporting a registry, see [`migrate`]).
    pub(crate) fn snapshot(&self) -> State {
        self.read().clone()
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
                    component: self.component_path(hex),
                    not_granted: check_spec(tenant, &record.grant, &self.catalog, &h.spec)
                        .err()
                        .map(|e| e.to_string()),
                });
            }
        }
        deployments
    }

    /// A version's bytes: from the directory, or from this replica's cache of the blob topic
    /// (fetched into it, and checked against the digest, the first time).
    pub async fn component(
        &self,
        tenant: &str,
        handler: &str,
        version: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let hex = hex_of(version)?.to_string();
        let path = self.component_path(&hex);
        let cached = tokio::task::spawn_blocking(move || std::fs::read(path)).await;
        let (store, cache) = match (&self.backend, cached) {
            (Backend::Local { .. }, Ok(read)) => return Ok(read?),
            (_, Ok(Ok(wasm))) if crate::sandbox::version_of(&wasm) == version => return Ok(wasm),
            (Backend::Kafka { store, cache }, _) => (store, cache),
            (Backend::Local { .. }, Err(e)) => return Err(RegistryError::Storage(std::io::Error::other(e))),
        };
        let blob = {
            let state = self.read();
            handler_record(&state, tenant, handler)?.blobs.get(version).cloned()
        };
        let blob = blob.ok_or_else(|| RegistryError::Blob {
            version: version.to_string(),
            reason: "its manifest names no bytes in the blob topic".into(),
        })?;
        let wasm = store.get_blob(version, &blob).await?;
        let (cache, bytes) = (cache.clone(), wasm.clone());
        let stored = tokio::task::spawn_blocking(move || cache.put_component(&hex, &bytes)).await;
        if let Ok(Err(error)) = stored {
            tracing::warn!(%version, %error, "Cannot cache a component; it is fetched again next time.");
        }
        Ok(wasm)
    }

    fn component_path(&self, hex: &str) -> std::path::PathBuf {
        match &self.backend {
            Backend::Local { store, .. } => store.component_path(hex),
            Backend::Kafka { cache, .. } => cache.component_path(hex),
        }
    }

    /// Deletes the files of removed versions that no other handler stores.
    async fn delete_unused_files(&self, removed: &[(VersionInfo, Option<BlobRef>)]) {
        let Backend::Local { store, .. } = &self.backend else { return };
        let used: HashSet<String> = self
            .read()
            .tenants
            .values()
            .flat_map(|t| t.handlers.values())
            .flat_map(|h| h.versions.iter().map(|v| v.version.clone()))
            .collect();
        let unused: Vec<String> = removed
            .iter()
            .filter(|(info, _)| !used.contains(&info.version))
            .filter_map(|(info, _)| hex_of(&info.version).ok().map(str::to_string))
            .collect();
        let store = store.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for hex in unused {
                if let Err(error) = store.delete_component(&hex) {
                    tracing::warn!(%error, component = hex, "Cannot delete an unused component.");
                }
            }
        })
        .await;
    }
}

fn read(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An answer of the wrong kind for its command: a bug, reported rather than panicking on.
fn unexpected(answer: &Answer) -> RegistryError {
    RegistryError::Storage(std::io::Error::other(format!("unexpected registry answer {answer:?}")))
}

/// Names stored before '.' was refused still load (refusing them would strand their tenants),
/// but their joins may collide: say so, once, where the operator looks.
fn warn_about_stored_names(state: &State) {
    for (tenant, record) in &state.tenants {
        for handler in std::iter::once(None).chain(record.handlers.keys().map(Some)) {
            let bad = !is_name(tenant) || handler.is_some_and(|h| !is_name(h));
            if bad {
                tracing::error!(tenant = %tenant, handler = handler.map(String::as_str),
                    "A stored name breaks the name rule ({NAME_RULE}); its consumer group may be shared with another handler's. Delete it and create it again under a valid name.");
            }
        }
    }
}
