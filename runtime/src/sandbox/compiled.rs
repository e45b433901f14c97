//! Compiled components, kept by digest: a version is compiled once per process, whether it was
//! validated at upload, fetched ahead of its activation, or activated on several handlers.
//! Compiling a Python component takes a core for seconds; a cached one costs a clone.

use std::collections::VecDeque;
use std::sync::Mutex;
use wasmtime::component::Component;

/// How many compiled components are kept besides the ones running handlers hold: enough for
/// uploads waiting to be activated and a rollback, without keeping every version's machine code.
const CAPACITY: usize = 8;

/// The most recently compiled components, by version (`sha256:<hex>`).
#[derive(Default)]
pub(crate) struct CompiledCache(Mutex<VecDeque<(String, Component)>>);

impl CompiledCache {
    /// The compiled component of `version`, if kept.
    pub fn get(&self, version: &str) -> Option<Component> {
        let mut kept = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let at = kept.iter().position(|(v, _)| v == version)?;
        let entry = kept.remove(at)?;
        let component = entry.1.clone();
        kept.push_back(entry);
        Some(component)
    }

    /// Keeps `component` as `version`'s, forgetting the least recently used beyond capacity.
    pub fn put(&self, version: String, component: Component) {
        let mut kept = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.retain(|(v, _)| *v != version);
        kept.push_back((version, component));
        while kept.len() > CAPACITY {
            kept.pop_front();
        }
    }
}
