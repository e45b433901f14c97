//! `keyhole run`: the pipeline until SIGTERM or SIGINT, with the whole shutdown bounded.

use anyhow::Context as _;
use keyhole::config::Config;
use keyhole::telemetry;
use std::process::ExitCode;
use std::time::Duration;

/// What the shutdown may take beyond the drain and the final commit: closing the Kafka clients.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long the spans still queued may take to reach the collector at shutdown: a dead
/// collector costs the shutdown this much at most.
const TRACE_FLUSH: Duration = Duration::from_secs(3);

/// Runs the configuration's bindings until a signal, then drains and commits within
/// `shutdown.drain_timeout_ms` + `shutdown.commit_timeout_ms`.
pub fn run(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let settings = Config::load(config)?;
    let flush = if settings.trace_export.is_some() { TRACE_FLUSH } else { Duration::ZERO };
    let bound = settings.drain_timeout + settings.commit_timeout + SHUTDOWN_GRACE + flush;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let exporting = match &settings.trace_export {
        Some(export) => Some(telemetry::otlp::install(export, runtime.handle().clone())?),
        None => None,
    };
    let result = runtime.block_on(keyhole::app::run(settings, None, shutdown_signal(bound)));
    // While the runtime still runs: the exporter sends on it.
    if let Some(exporting) = exporting {
        exporting.shutdown(flush);
    }
    // A Kafka call left behind on a blocking thread (a broker that went away) must not hold
    // the process: its events were not acknowledged and are read again.
    runtime.shutdown_timeout(Duration::from_millis(500));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Runs librdkafka's mock cluster until stdin closes.
pub fn mock_cluster(topics: &[String]) -> anyhow::Result<ExitCode> {
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    for topic in topics {
        let (name, partitions) = topic.split_once(':').unwrap_or((topic.as_str(), "1"));
        let partitions: i32 = partitions.parse().with_context(|| format!("{topic:?}: partitions"))?;
        cluster.create_topic(name, partitions, 1)?;
    }
    println!("{}", cluster.bootstrap_servers());
    // Lives until whoever started it closes stdin (or kills it).
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGTERM or SIGINT (Ctrl-C). If the handlers cannot be installed, keyhole runs
/// until killed, which loses nothing: offsets are stored only after events finish.
async fn shutdown_signal(bound: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received."),
                _ = int.recv() => tracing::info!("SIGINT received."),
            }
            watchdog(bound);
        }
        _ => {
            tracing::error!("Cannot install signal handlers; stop keyhole with SIGKILL.");
            std::future::pending::<()>().await
        }
    }
}

/// The last resort of a bounded shutdown: if draining, committing and closing the clients have
/// not ended within `bound` (a hung library call), the process exits anyway. Nothing is lost:
/// an event not acknowledged is read again.
fn watchdog(bound: Duration) {
    let spawned = std::thread::Builder::new().name("shutdown-watchdog".into()).spawn(move || {
        std::thread::sleep(bound);
        tracing::error!(
            bound_ms = bound.as_millis() as u64,
            "Shutdown did not finish in time; exiting. Unacknowledged events will be redelivered."
        );
        std::process::exit(1);
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "Cannot start the shutdown watchdog.");
    }
}
