//! `keyhole dev` and `keyhole demo`: a handler through the real pipeline on an in-process
//! broker and data owner.

use super::DevArgs;
use anyhow::Context as _;
use std::process::ExitCode;

/// The conformance fixtures (examples/conformance), built in so that a handler author needs no
/// checkout of keyhole to run them.
const CONFORMANCE: &[(&str, &[u8])] = &[
    ("fixtures.toml", include_bytes!("../../../examples/conformance/fixtures.toml")),
    ("records/overlong.bin", include_bytes!("../../../examples/conformance/records/overlong.bin")),
    ("records/surrogate.bin", include_bytes!("../../../examples/conformance/records/surrogate.bin")),
    ("records/truncated.bin", include_bytes!("../../../examples/conformance/records/truncated.bin")),
    (
        "records/beyond-unicode.bin",
        include_bytes!("../../../examples/conformance/records/beyond-unicode.bin"),
    ),
    ("records/binary.bin", include_bytes!("../../../examples/conformance/records/binary.bin")),
];

/// A temporary directory, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the conformance fixtures into a new temporary directory.
fn conformance_fixtures() -> anyhow::Result<TempDir> {
    let dir = TempDir(std::env::temp_dir().join(format!("keyhole-conformance-{}", uuid::Uuid::new_v4())));
    std::fs::create_dir_all(dir.path().join("records"))
        .with_context(|| format!("cannot create {}", dir.path().display()))?;
    for (name, bytes) in CONFORMANCE {
        std::fs::write(dir.path().join(name), bytes)?;
    }
    Ok(dir)
}

/// Runs the fixtures (again on every change of the handler with `--watch`).
pub fn dev(args: &DevArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let built_in = if args.conformance { Some(conformance_fixtures()?) } else { None };
    let fixtures = match (&built_in, &args.fixtures) {
        (Some(dir), _) => dir.path().to_path_buf(),
        (None, Some(path)) => path.clone(),
        (None, None) => anyhow::bail!("give --fixtures DIR or --conformance"),
    };
    let mut last_change = modified(&args.handler);
    loop {
        let code = simulate_once(&runtime, &args.handler, &fixtures, args.json)?;
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
