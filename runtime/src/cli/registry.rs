//! `keyhole registry export` / `import`: moves a registry between a directory (the local
//! store's format) and the store the configuration names (the Kafka topics).

use anyhow::Context as _;
use keyhole::config::{Config, Settings};
use keyhole::registry::{Catalog, Registry, migrate};
use std::path::Path;
use std::process::ExitCode;

/// Writes the configured registry into the directory `to`.
pub fn export(config: &Path, to: &Path) -> anyhow::Result<ExitCode> {
    with_registry(config, |registry| async move {
        let summary = migrate::export(&registry, to).await?;
        Ok(report("exported", &summary, &to.display().to_string()))
    })
}

/// Writes the registry in the directory `from` into the configured (empty) registry.
pub fn import(config: &Path, from: &Path) -> anyhow::Result<ExitCode> {
    with_registry(config, |registry| async move {
        let summary = migrate::import(from, &registry).await?;
        Ok(report("imported", &summary, "the configured registry"))
    })
}

fn report(done: &str, summary: &migrate::Summary, into: &str) -> ExitCode {
    println!(
        "{done} {} tenant(s), {} handler(s), {} version(s) into {into}",
        summary.tenants, summary.handlers, summary.versions
    );
    for failure in &summary.failures {
        println!("not moved: {failure}");
    }
    if summary.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

fn with_registry<F, Fut>(config: &Path, work: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(Registry) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let settings: Settings = Config::load(config)?;
    let admin =
        settings.admin.clone().context("the configuration has no [admin] section: no registry to move")?;
    let catalog = Catalog::of(&settings);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (registry, _) = Registry::open_configured(&admin, &settings.kafka, catalog)
            .await
            .context("cannot open the configured registry")?;
        work(registry).await
    })
}
