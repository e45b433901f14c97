//! What a component's code may look like before anything compiles it.
//!
//! Compiling is the one step of an upload whose cost the uploader chooses: Cranelift's time grows
//! faster than the code (a function with hundreds of locals live across deeply nested blocks
//! costs seconds of CPU per kilobyte). So the bytes are read first, which costs a fraction of a
//! second even for CPython's 18 MB component: a component that imports what a handler may not, lacks the handler's
//! export, or whose code is beyond the limits below is refused before any compile; what passes
//! is then compiled under a CPU, time and memory budget (`compiler.rs`).
//!
//! The limits are far above what the shipped guests need (Rust, C, componentize-py's CPython and
//! jco's StarlingMonkey; the table below, docs/writing-handlers.md) and far below where wasmtime's
//! own parser stops (50,000 locals, 7,654,321 bytes a function body, a million functions).

use super::error::LoadError;
use super::inspect::{ComponentReport, HANDLER_EXPORT, is_allowed_import};
use wasmparser::{ComponentExternalKind, ComponentTypeRef, Encoding, Operator, Parser, Payload};

// What the shipped guests hold (guest-examples/dist, measured by the test below):
//
// | guest            | functions | most locals | largest body | deepest nesting | code    |
// | ---------------- | --------- | ----------- | ------------ | --------------- | ------- |
// | echo (Rust)      | 249       | 35          | 8.9 kB       | 34              | 72 kB   |
// | echo-c (C)       | 27        | 15          | 7.0 kB       | 16              | 19 kB   |
// | echo-py (CPython)| 13,480    | 271         | 427 kB       | 781             | 6.5 MB  |
// | echo-js (StarlingMonkey) | 12,669 | 118    | 172 kB       | 456             | 9.2 MB  |

/// Most functions with a body, over every core module of a component.
pub const MAX_FUNCTIONS: u64 = 100_000;

/// Most locals one function may declare.
pub const MAX_LOCALS_PER_FUNCTION: u64 = 4_000;

/// The largest function body, in bytes.
pub const MAX_FUNCTION_BODY_BYTES: u64 = 2 << 20;

/// The deepest nesting of `block`, `loop`, `if` and `try` in a function (a `switch` becomes a
/// `block` per case: CPython's interpreter loop nests 781 deep).
pub const MAX_NESTING_DEPTH: u64 = 4_000;

/// Most code over every core module, in bytes (the upload limit bounds the component as a whole).
pub const MAX_CODE_BYTES: u64 = 64 << 20;

/// What a component's code holds, over all its core modules: what the limits are checked on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeStats {
    /// Functions with a body.
    pub functions: u64,
    /// The most locals one function declares.
    pub max_locals: u64,
    /// The largest function body, in bytes.
    pub max_body_bytes: u64,
    /// The deepest nesting of blocks in one function.
    pub max_depth: u64,
    /// Every function body's bytes together.
    pub code_bytes: u64,
}

/// Reads a component without compiling it: its top-level imports and exports, and what its code
/// holds, refusing code beyond the limits above (or bytes that do not parse).
pub fn read(wasm: &[u8]) -> Result<(ComponentReport, CodeStats), LoadError> {
    let invalid = |e: wasmparser::BinaryReaderError| LoadError::Invalid(e.to_string());
    let mut stats = CodeStats::default();
    let mut report = ComponentReport { imports: Vec::new(), exports: Vec::new() };
    // 1 inside the outer component; its imports and exports are the handler's.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(invalid)? {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding != Encoding::Component {
                    return Err(LoadError::CoreModule);
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(imports) if depth == 1 => {
                for import in imports {
                    let import = import.map_err(invalid)?;
                    // A type (the contract's `event`, say) grants nothing; what could is a function or an
                    // instance of them, and those are checked.
                    if !matches!(import.ty, ComponentTypeRef::Type(_)) {
                        report.imports.push(import.name.name.to_string());
                    }
                }
            }
            Payload::ComponentExportSection(exports) if depth == 1 => {
                for export in exports {
                    let export = export.map_err(invalid)?;
                    report.exports.push(format!("{} ({})", export.name.name, kind(export.kind)));
                }
            }
            Payload::CodeSectionEntry(body) => {
                stats.functions += 1;
                let size = body.range().len() as u64;
                stats.code_bytes += size;
                stats.max_body_bytes = stats.max_body_bytes.max(size);
                let mut locals = 0u64;
                for declared in body.get_locals_reader().map_err(invalid)? {
                    locals += u64::from(declared.map_err(invalid)?.0);
                }
                stats.max_locals = stats.max_locals.max(locals);
                stats.max_depth = stats.max_depth.max(nesting_depth(&body).map_err(invalid)?);
                within(&stats)?;
            }
            _ => {}
        }
    }
    Ok((report, stats))
}

/// Accepts the imports and exports [`read`] found, before any compile: every import must be
/// allowed and the handler's function exported. Their types are checked after compiling.
pub fn admit(report: &ComponentReport) -> Result<(), LoadError> {
    let forbidden: Vec<String> =
        report.imports.iter().filter(|name| !is_allowed_import(name)).cloned().collect();
    if !forbidden.is_empty() {
        return Err(LoadError::ForbiddenImports { imports: forbidden });
    }
    let handler = format!("{HANDLER_EXPORT} (function)");
    if !report.exports.contains(&handler) {
        return Err(LoadError::MissingExport { export: HANDLER_EXPORT });
    }
    Ok(())
}

/// [`read`] and [`admit`]: what was read, and the verdict, as `keyhole check` reports it.
pub fn check(wasm: &[u8]) -> Result<(ComponentReport, CodeStats), (Option<ComponentReport>, LoadError)> {
    let (report, stats) = read(wasm).map_err(|e| (None, e))?;
    match admit(&report) {
        Ok(()) => Ok((report, stats)),
        Err(error) => Err((Some(report), error)),
    }
}

fn kind(kind: ComponentExternalKind) -> &'static str {
    match kind {
        ComponentExternalKind::Func => "function",
        ComponentExternalKind::Module => "module",
        ComponentExternalKind::Component => "component",
        ComponentExternalKind::Instance => "instance",
        ComponentExternalKind::Type => "type",
        ComponentExternalKind::Value => "value",
    }
}

/// The deepest nesting of blocks in a function body.
fn nesting_depth(body: &wasmparser::FunctionBody<'_>) -> wasmparser::Result<u64> {
    let mut operators = body.get_operators_reader()?;
    let (mut depth, mut deepest) = (0u64, 0u64);
    while !operators.eof() {
        match operators.read()? {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::Try { .. }
            | Operator::TryTable { .. } => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            Operator::End => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(deepest)
}

/// Refuses code beyond a limit, naming the first one exceeded.
fn within(stats: &CodeStats) -> Result<(), LoadError> {
    let limits = [
        ("functions", stats.functions, MAX_FUNCTIONS),
        ("locals in one function", stats.max_locals, MAX_LOCALS_PER_FUNCTION),
        ("bytes in one function body", stats.max_body_bytes, MAX_FUNCTION_BODY_BYTES),
        ("nested blocks in one function", stats.max_depth, MAX_NESTING_DEPTH),
        ("bytes of code", stats.code_bytes, MAX_CODE_BYTES),
    ];
    match limits.into_iter().find(|(_, value, max)| value > max) {
        Some((what, value, max)) => Err(LoadError::OverCodeLimit { what, value, max }),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use wasm_encoder::{
        BlockType, CodeSection, Function, FunctionSection, Instruction, Module, TypeSection, ValType,
    };

    fn guest(name: &str) -> Option<Vec<u8>> {
        let path = format!("{}/../guest-examples/dist/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).ok()
    }

    /// A core module of one function with `locals` locals and `depth` nested `if`s.
    fn module(locals: u32, depth: u32) -> Vec<u8> {
        let mut types = TypeSection::new();
        types.ty().function([], []);
        let mut functions = FunctionSection::new();
        functions.function(0);
        let mut f = Function::new([(locals, ValType::I32)]);
        for _ in 0..depth {
            f.instruction(&Instruction::LocalGet(0)).instruction(&Instruction::If(BlockType::Empty));
        }
        for _ in 0..depth {
            f.instruction(&Instruction::End);
        }
        f.instruction(&Instruction::End);
        let mut code = CodeSection::new();
        code.function(&f);
        let mut m = Module::new();
        m.section(&types).section(&functions).section(&code);
        m.finish()
    }

    /// Appends a component section: its id, then its bytes as a vector.
    fn section(id: u8, data: &[u8], wasm: &mut Vec<u8>) {
        wasm.push(id);
        wasm_encoder::Encode::encode(data, wasm);
    }

    /// A real handler with `module` appended as one more core module: valid, and compiled whole.
    fn padded(module: &[u8]) -> Option<Vec<u8>> {
        let mut wasm = guest("echo")?;
        section(1, module, &mut wasm);
        Some(wasm)
    }

    #[test]
    fn every_shipped_guest_is_within_the_limits() {
        let mut seen = 0;
        for name in ["echo", "echo-c", "echo-py", "echo-js", "age-band", "probe"] {
            let Some(wasm) = guest(name) else { continue };
            let (_, stats) = check(&wasm).unwrap_or_else(|(_, e)| panic!("{name}: {e}"));
            println!("{name}: {stats:?}");
            seen += 1;
        }
        assert!(seen > 0, "no guest built: run scripts/build-guests.sh");
    }

    #[test]
    fn locals_limit_obeyed() {
        let Some(wasm) = padded(&module(MAX_LOCALS_PER_FUNCTION as u32, 1)) else { return };
        assert_eq!(check(&wasm).unwrap().1.max_locals, MAX_LOCALS_PER_FUNCTION);
    }

    #[test]
    fn locals_limit_violated() {
        let Some(wasm) = padded(&module(MAX_LOCALS_PER_FUNCTION as u32 + 1, 1)) else { return };
        let (_, error) = check(&wasm).unwrap_err();
        assert!(matches!(error, LoadError::OverCodeLimit { what: "locals in one function", .. }), "{error}");
    }

    #[test]
    fn nesting_limit_obeyed() {
        let Some(wasm) = padded(&module(1, MAX_NESTING_DEPTH as u32)) else { return };
        assert_eq!(check(&wasm).unwrap().1.max_depth, MAX_NESTING_DEPTH);
    }

    #[test]
    fn nesting_limit_violated() {
        let Some(wasm) = padded(&module(1, MAX_NESTING_DEPTH as u32 + 1)) else { return };
        let (_, error) = check(&wasm).unwrap_err();
        assert!(matches!(error, LoadError::OverCodeLimit { what: "nested blocks in one function", .. }));
    }

    #[test]
    fn forbidden_imports_and_a_missing_export_are_found_without_compiling() {
        if let Some(wasm) = guest("hostile-sockets") {
            assert!(matches!(check(&wasm), Err((Some(_), LoadError::ForbiddenImports { .. }))));
        }
        let mut bare = b"\0asm\x0d\0\x01\0".to_vec();
        section(1, &module(1, 1), &mut bare);
        assert!(matches!(check(&bare), Err((Some(_), LoadError::MissingExport { .. }))));
        assert!(matches!(check(&module(1, 1)), Err((None, LoadError::CoreModule))));
    }
}
