//! `keyhole check`: whether keyhole would accept a component, and why not.

use anyhow::Context as _;
use keyhole::sandbox::{Sandbox, SandboxConfig};
use std::process::ExitCode;

/// Checks `file`; exit 1 when keyhole would refuse it.
pub fn check(file: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let sandbox = Sandbox::new(&SandboxConfig::default())?;
    // Compiled as an upload is: read first, then in a child process within the default budget.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (report, verdict) = match runtime.block_on(sandbox.check_bounded(&std::sync::Arc::new(wasm))) {
        Ok(report) => (Some(report), Ok(())),
        Err((report, error)) => (report, Err(error)),
    };
    if json {
        let value = serde_json::json!({
            "file": file.display().to_string(),
            "accepted": verdict.is_ok(),
            "reason": verdict.as_ref().err().map(|e| e.to_string()),
            "imports": report.as_ref().map(|r| &r.imports),
            "exports": report.as_ref().map(|r| &r.exports),
        });
        println!("{value}");
    } else {
        if let Some(report) = &report {
            println!("imports:");
            for import in &report.imports {
                println!("  {import}");
            }
            println!("exports:");
            for export in &report.exports {
                println!("  {export}");
            }
        }
        match &verdict {
            Ok(()) => println!("accepted: {} implements keyhole:handler/handler@0.1.0", file.display()),
            Err(error) => println!("refused: {}: {error}", file.display()),
        }
    }
    Ok(if verdict.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
