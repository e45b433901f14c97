//! The registry's directory: one JSON file for tenants, grants, tokens and handlers, and the
//! components stored by content (`components/sha256/<hex>.wasm`).
//!
//! Every write goes to a temporary file that is synced and then renamed over the old one, so a
//! crash leaves either the old state or the new, never half of one.

use super::model::State;
use std::io::Write as _;
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "registry.json";

/// The registry's directory (or, for the Kafka store, this replica's cache of components).
#[derive(Clone)]
pub(crate) struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the directory.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("components/sha256"))?;
        Ok(Store { dir: dir.to_path_buf() })
    }

    /// The directory as it is, for reading only: unlike [`Store::open`], creates nothing.
    pub fn existing(dir: &Path) -> Self {
        Store { dir: dir.to_path_buf() }
    }

    /// The persisted state; empty when nothing was saved yet.
    pub fn load(&self) -> std::io::Result<State> {
        match std::fs::read(self.dir.join(STATE_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a keyhole registry: {e}", self.dir.join(STATE_FILE).display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the persisted state.
    pub fn save(&self, state: &State) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
        self.replace(&self.dir.join(STATE_FILE), &bytes)
    }

    /// Where a component with this hex digest is stored.
    pub fn component_path(&self, hex: &str) -> PathBuf {
        self.dir.join("components/sha256").join(format!("{hex}.wasm"))
    }

    /// Stores a component under its digest (once: the same bytes have the same address).
    pub fn put_component(&self, hex: &str, wasm: &[u8]) -> std::io::Result<()> {
        let path = self.component_path(hex);
        if path.is_file() {
            return Ok(());
        }
        self.replace(&path, wasm)
    }

    /// Deletes a component nobody refers to any more.
    pub fn delete_component(&self, hex: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.component_path(hex)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn replace(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        // Unique per write: two tasks may store the same component at once.
        let temporary = path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4()));
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, path)?;
        // The rename itself is durable only once the directory is synced.
        if let Some(parent) = path.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    }
}
