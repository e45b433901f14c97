//! Moving a registry between stores (`keyhole registry export` / `import`): a local
//! `state_dir` into the Kafka store when a single instance becomes a cluster, and the Kafka
//! store back into a directory, as a backup or to go back to one instance.
//!
//! The directory format is the local store's own (`registry.json` and
//! `components/sha256/<hex>.wasm`): an exported directory is a working `state_dir`.

use super::command::Command;
use super::local::Store;
use super::{Registry, RegistryError};
use std::path::Path;
use std::sync::Arc;

/// What a migration moved, and what it could not.
#[derive(Debug, Default)]
pub struct Summary {
    /// Tenants moved.
    pub tenants: usize,
    /// Handlers moved.
    pub handlers: usize,
    /// Versions moved, with their bytes.
    pub versions: usize,
    /// What was not moved, and why.
    pub failures: Vec<String>,
}

/// Writes `registry` into the directory `to`, which must not hold a registry yet.
pub async fn export(registry: &Registry, to: &Path) -> Result<Summary, RegistryError> {
    let store = Store::open(to)?;
    if !store.load()?.tenants.is_empty() {
        return Err(RegistryError::Conflict(format!("{} already holds a registry", to.display())));
    }
    let mut state = registry.snapshot();
    let mut summary = Summary::default();
    for (tenant, record) in &mut state.tenants {
        summary.tenants += 1;
        for (handler, h) in &mut record.handlers {
            summary.handlers += 1;
            for info in &h.versions {
                let wasm = registry.component(tenant, handler, &info.version).await?;
                let hex = super::rules::hex_of(&info.version)?.to_string();
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.put_component(&hex, &wasm))
                    .await
                    .map_err(|e| RegistryError::Storage(std::io::Error::other(e)))??;
                summary.versions += 1;
            }
            // Where the bytes were in Kafka means nothing in a directory.
            h.blobs.clear();
        }
    }
    let saved = tokio::task::spawn_blocking(move || store.save(&state));
    saved.await.map_err(|e| RegistryError::Storage(std::io::Error::other(e)))??;
    Ok(summary)
}

/// Writes the registry in the directory `from` into `registry`, which must be empty: tenants
/// with their grants and token digests, handlers (their specs' declarations included), versions
/// with their bytes, activations with their history.
/// Goes on past what cannot be moved (a handler its grant no longer covers) and lists it.
pub async fn import(from: &Path, registry: &Registry) -> Result<Summary, RegistryError> {
    if !registry.tenants().is_empty() {
        return Err(RegistryError::Conflict("the target registry is not empty".into()));
    }
    if !from.join("registry.json").is_file() {
        return Err(RegistryError::Invalid(format!("{} holds no registry.json", from.display())));
    }
    let source = Store::open(from)?;
    let state = source.load()?;
    let mut summary = Summary::default();
    for (tenant, record) in state.tenants {
        registry.apply_command(Command::PutTenant { tenant: tenant.clone(), grant: record.grant }).await?;
        summary.tenants += 1;
        for token in record.tokens {
            registry.apply_command(Command::IssueToken { tenant: tenant.clone(), token }).await?;
        }
        for (handler, h) in record.handlers {
            let put = Command::PutHandler { tenant: tenant.clone(), handler: handler.clone(), spec: h.spec };
            if let Err(error) = registry.apply_command(put).await {
                summary.failures.push(format!("{tenant}/{handler}: {error}"));
                continue;
            }
            summary.handlers += 1;
            for info in h.versions {
                let path = source.component_path(super::rules::hex_of(&info.version)?);
                let wasm = tokio::task::spawn_blocking(move || std::fs::read(path))
                    .await
                    .map_err(|e| RegistryError::Storage(std::io::Error::other(e)))??;
                let version = info.version.clone();
                match registry.store_version(&tenant, &handler, info, Arc::new(wasm)).await {
                    Ok(_) => summary.versions += 1,
                    Err(error) => summary.failures.push(format!("{tenant}/{handler} {version}: {error}")),
                }
            }
            let activation = Command::SetActivation {
                tenant: tenant.clone(),
                handler: handler.clone(),
                active: h.active,
                previous: h.previous,
                only_if_active: None,
                activations: h.activations,
            };
            if let Err(error) = registry.apply_command(activation).await {
                summary.failures.push(format!("{tenant}/{handler} activation: {error}"));
            }
        }
    }
    Ok(summary)
}
