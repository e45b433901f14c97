//! What keyhole tells its operators: the log (set up here), the Prometheus metrics
//! ([`metrics`]), each event's W3C trace context and its spans ([`trace`]), and the export of
//! those spans over OTLP ([`otlp`]).
//!
//! Nothing here carries a subject, a reference, a token or resolved data: metric labels come
//! from closed sets, span attributes from the event's coordinates and keyhole's decisions.

pub mod metrics;
pub mod otlp;
pub mod trace;

pub use metrics::*;
pub use trace::{Consumed, EventTrace, TraceContext, event_span};

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
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let lines = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    let quiet_exporter = tracing_subscriber::filter::filter_fn(|meta| {
        !meta.target().starts_with("opentelemetry") || OTEL_EVENTS_SHOWN.contains(&meta.name())
    });
    // A second initialisation (in tests) is harmless: the first subscriber stays.
    let _ = tracing_subscriber::registry().with(filter).with(quiet_exporter).with(lines).try_init();
}

/// The OpenTelemetry SDK's own log events that are shown: that spans are being dropped (once,
/// when it starts) and how many were (at shutdown). The others repeat on every failed export, a
/// line or two per batch for as long as a collector is down; keyhole logs that once a minute
/// itself ([`otlp`]).
const OTEL_EVENTS_SHOWN: &[&str] =
    &["BatchSpanProcessor.SpanDroppingStarted", "BatchSpanProcessor.SpansDropped"];
