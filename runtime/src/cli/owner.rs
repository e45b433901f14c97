//! `keyhole owner check`: a data owner's endpoint against fixtures; the report on stdout.

use super::OwnerCheckArgs;
use anyhow::Context as _;
use keyhole::owner_check::{Fixtures, OwnerCheck, Settings};
use std::process::ExitCode;
use std::time::Duration;

/// Runs the check; exit 0 when every check passed, 1 on any violation. A usage or fixture error
/// is an `Err` (exit 2), before any request.
pub fn check(args: &OwnerCheckArgs) -> anyhow::Result<ExitCode> {
    // From the environment only: a token on the command line ends up in shell histories and CI
    // logs. Never printed, not even its length.
    let token = std::env::var(&args.token_env).ok().filter(|token| !token.is_empty()).with_context(|| {
        format!(
            "set {} to the bearer token keyhole sends your endpoint (or name another variable with \
                 --token-env)",
            args.token_env
        )
    })?;
    let text = std::fs::read_to_string(&args.fixtures)
        .with_context(|| format!("cannot read {}", args.fixtures.display()))?;
    let fixtures = Fixtures::parse(&text).with_context(|| format!("{}", args.fixtures.display()))?;
    let mut settings = Settings::new(&args.base_url, token)?;
    if let Some(timeout_ms) = args.timeout_ms {
        settings.timeout = Duration::from_millis(timeout_ms);
    }
    settings.repeat = args.repeat;
    settings.batch_path.clone_from(&args.batch_path);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Built inside the runtime: the HTTP clients need it.
    let report = runtime.block_on(async {
        let check = OwnerCheck::new(fixtures, settings)?;
        anyhow::Ok(check.run().await)
    })?;
    print!("{report}");
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
