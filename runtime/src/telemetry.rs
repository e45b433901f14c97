//! Logging set-up: structured `tracing` output for operators.

use tracing_subscriber::EnvFilter;

/// The log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Installs the global subscriber. The filter comes from `RUST_LOG`, else `default_filter`.
/// Logs go to stderr so that stdout stays free for command output.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second initialisation (in tests) is harmless: the first subscriber stays.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Counter: events finished, by tenant, handler and decision (`delivered`, `consent_denied`,
/// `gone`, `refused`, `failed`).
pub const EVENTS_FINISHED: &str = "keyhole_events_finished_total";
/// Counter: events refused before any request, by tenant, handler and reason kind.
pub const EVENTS_REFUSED: &str = "keyhole_events_refused_total";
/// Counter: retries of an event, by tenant, handler and cause.
pub const EVENT_RETRIES: &str = "keyhole_event_retries_total";
/// Counter: events published to a dead-letter topic, by binding and stage.
pub const DEAD_LETTERS: &str = "keyhole_dead_letters_total";

/// The process's Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
