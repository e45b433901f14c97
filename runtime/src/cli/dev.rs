//! `keyhole dev` and `keyhole demo`: a handler through the real pipeline on an in-process
//! broker and data owner.

use super::DevArgs;
use anyhow::Context as _;
use std::process::ExitCode;

/// Runs the fixtures (again on every change of the handler with `--watch`).
pub fn dev(args: &DevArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let mut last_change = modified(&args.handler);
    loop {
        let code = simulate_once(&runtime, &args.handler, &args.fixtures, args.json)?;
        if !args.watch {
            return Ok(code);
        }
        eprintln!("watching {} for changes (Ctrl-C stops)", args.handler.display());
        loop {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let now = modified(&args.handler);
            if now != last_change {
                last_change = now;
                // Let the compiler finish writing the file.
                std::thread::sleep(std::time::Duration::from_millis(300));
                break;
            }
        }
    }
}

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Runs the fixtures once; errors in the fixtures or the handler are reported and, in watch
/// mode, waited out.
fn simulate_once(
    runtime: &tokio::runtime::Runtime,
    handler: &std::path::Path,
    fixtures: &std::path::Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use keyhole::simulate::{self, fixtures::Fixtures, report};
    let fixtures = Fixtures::load(fixtures).map_err(anyhow::Error::msg)?;
    if !json {
        eprintln!("Starting an in-process Kafka cluster and data owner; running {}...", handler.display());
    }
    let results = match runtime.block_on(simulate::run(handler, &fixtures)) {
        Ok(results) => results,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    if json {
        print!("{}", report::json_lines(&results));
    } else {
        print!("{}", report::text(&handler.display().to_string(), &results));
    }
    Ok(if report::handler_failed(&results) { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Runs the demo scenario.
pub fn demo(handler: &std::path::Path, fixtures: &std::path::Path) -> anyhow::Result<ExitCode> {
    if !handler.is_file() {
        anyhow::bail!(
            "{} does not exist: build the example handlers first (scripts/build-guests.sh)",
            handler.display()
        );
    }
    println!("keyhole demo: a data owner published references to customer records; keyhole resolves each");
    println!("one with the owner at the moment of consumption, and the handler sees only what the owner");
    println!("released. Here the handler is `echo`, which replies with exactly what it received.\n");
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    simulate_once(&runtime, handler, fixtures, false)
}
