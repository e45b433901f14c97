//! Validation at load: what a component imports and exports, and whether keyhole accepts it.

use super::bindings::HandlerPre;
use super::engine::Sandbox;
use super::error::{LoadError, describe};
use super::state::GuestState;
use std::sync::Arc;
use wasmtime::component::{Component, types::ComponentItem};

/// Interfaces a handler may import, by name without version. Everything here either is
/// keyhole's own contract or reveals nothing outside the sandbox: the clocks, random numbers,
/// an empty environment and stdin, and captured stdout/stderr.
const ALLOWED_IMPORTS: &[&str] = &[
    "keyhole:handler/types",
    "keyhole:handler/log",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
];

/// The handler contract this host implements (`wit/handler.wit`).
pub const CONTRACT: &str = "keyhole:handler@0.1.0";

/// The export every handler must have.
pub const HANDLER_EXPORT: &str = "handle";

/// A compiled component and what it declares, before keyhole has decided to accept it.
pub struct Inspection {
    pub(crate) component: Component,
    /// `sha256:<hex>` of its bytes: it is kept compiled under this once accepted.
    pub(crate) version: String,
    /// The component's imports and exports.
    pub report: ComponentReport,
}

/// A component's declared imports and exports, for `keyhole check` and for operators.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ComponentReport {
    /// Imported interfaces and functions, by full name (with version).
    pub imports: Vec<String>,
    /// Exports, as `name (kind)`.
    pub exports: Vec<String>,
}

impl Sandbox {
    /// Reads a component, then compiles it in this process (or takes it compiled from the cache)
    /// and lists its imports and exports. For components keyhole's operator configured; one from
    /// outside goes through [`Sandbox::check_bounded`]. Refuses anything that is not a valid
    /// component, or whose code is beyond [`super::code_limits`], before compiling it.
    pub fn inspect(&self, wasm: &[u8]) -> Result<Inspection, LoadError> {
        preamble(wasm)?;
        let version = super::version_of(wasm);
        let component = match self.compiled.get(&version) {
            Some(component) => component,
            None => {
                super::code_limits::read(wasm)?;
                Component::new(&self.engine, wasm).map_err(|e| LoadError::Invalid(describe(&e)))?
            }
        };
        Ok(self.inspection(component, version))
    }

    fn inspection(&self, component: Component, version: String) -> Inspection {
        let ty = component.component_type();
        let imports = ty.imports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let exports =
            ty.exports(&self.engine).map(|(name, item)| format!("{name} ({})", kind(&item.ty))).collect();
        Inspection { component, version, report: ComponentReport { imports, exports } }
    }

    /// Accepts or refuses an inspected component: every import must be allowed, the handler
    /// export must exist, and both must match the contract's types. Only an accepted component
    /// is kept compiled.
    pub(crate) fn validate(&self, inspection: &Inspection) -> Result<HandlerPre<GuestState>, LoadError> {
        let forbidden: Vec<String> =
            inspection.report.imports.iter().filter(|name| !is_allowed_import(name)).cloned().collect();
        if !forbidden.is_empty() {
            return Err(LoadError::ForbiddenImports { imports: forbidden });
        }
        let ty = inspection.component.component_type();
        let exports_handler = ty
            .exports(&self.engine)
            .any(|(name, item)| name == HANDLER_EXPORT && matches!(item.ty, ComponentItem::ComponentFunc(_)));
        if !exports_handler {
            return Err(LoadError::MissingExport { export: HANDLER_EXPORT });
        }
        let pre = self
            .linker
            .instantiate_pre(&inspection.component)
            .map_err(|e| LoadError::ContractMismatch(describe(&e)))?;
        let pre = HandlerPre::new(pre).map_err(|e| LoadError::ContractMismatch(describe(&e)))?;
        self.compiled.put(inspection.version.clone(), inspection.component.clone());
        Ok(pre)
    }

    /// Inspects and validates in one step, compiling in this process: the verdict on a component
    /// keyhole's operator configured.
    pub fn check(&self, wasm: &[u8]) -> Result<ComponentReport, (Option<ComponentReport>, LoadError)> {
        let inspection = self.inspect(wasm).map_err(|e| (None, e))?;
        match self.validate(&inspection) {
            Ok(_) => Ok(inspection.report),
            Err(e) => Err((Some(inspection.report), e)),
        }
    }

    /// The verdict on a component from outside (an upload, a version another replica announced,
    /// `keyhole check`): read first, refused without compiling when its imports, exports or code
    /// are not acceptable ([`super::code_limits`]), then compiled in a child process within the
    /// `[sandbox]` compile budget, then validated. Kept compiled only when accepted. Dropping the
    /// future stops the compile.
    pub async fn check_bounded(
        &self,
        wasm: &Arc<Vec<u8>>,
    ) -> Result<ComponentReport, (Option<ComponentReport>, LoadError)> {
        // Reading and hashing a large component takes a core for a moment: not on an async worker.
        let read = {
            let wasm = wasm.clone();
            tokio::task::spawn_blocking(move || {
                preamble(&wasm).map_err(|e| (None, e))?;
                let (report, _) = super::code_limits::check(&wasm)?;
                Ok((report, super::version_of(&wasm)))
            })
        };
        let unfinished = |e: tokio::task::JoinError| {
            (None, LoadError::CompilerUnavailable(format!("reading the component did not finish: {e}")))
        };
        let (report, version) = read.await.map_err(unfinished)??;
        let component = match self.compiled.get(&version) {
            Some(component) => component,
            None => self.compile_bounded(wasm).await.map_err(|e| (Some(report), e))?,
        };
        let inspection = self.inspection(component, version);
        match self.validate(&inspection) {
            Ok(_) => Ok(inspection.report),
            Err(e) => Err((Some(inspection.report), e)),
        }
    }
}

/// The preamble's version and layer fields: 1.0 for a core module, 0x0d.1 for a component.
fn preamble(wasm: &[u8]) -> Result<(), LoadError> {
    if !wasm.starts_with(b"\0asm") {
        return Err(LoadError::NotWasm);
    }
    if wasm.get(4..8) == Some(&[1, 0, 0, 0]) {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

pub(crate) fn is_allowed_import(name: &str) -> bool {
    let unversioned = name.split_once('@').map_or(name, |(interface, _)| interface);
    ALLOWED_IMPORTS.contains(&unversioned)
}

fn kind(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentFunc(_) => "function",
        ComponentItem::CoreFunc(_) => "core function",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::is_allowed_import;

    #[test]
    fn imports_are_matched_by_interface_whatever_the_version() {
        assert!(is_allowed_import("wasi:io/streams@0.2.6"));
        assert!(is_allowed_import("keyhole:handler/log@0.1.0"));
        assert!(!is_allowed_import("wasi:filesystem/types@0.2.6"));
        assert!(!is_allowed_import("wasi:sockets/tcp@0.2.0"));
        assert!(!is_allowed_import("wasi:io/streams-extra@0.2.0"));
    }
}
