//! `[telemetry]`: span export over OTLP/HTTP. The file's keys come first; what it leaves out is
//! taken from the standard `OTEL_*` variables, so a container can be pointed at a collector
//! without a new configuration file.

use super::validate::Problems;
use crate::telemetry::otlp::TraceExport;
use serde::Deserialize;
use std::time::Duration;

/// `[telemetry]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans go to
    /// `<otlp_endpoint>/v1/traces`. Unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (as it is), else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (plus `/v1/traces`), else no export.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of keyhole's spans. Unset: `OTEL_SERVICE_NAME`, else `keyhole`.
    pub service_name: Option<String>,
    /// Bound on one export request, connecting included.
    #[serde(default = "default_export_timeout_ms")]
    pub export_timeout_ms: u64,
    /// Spans waiting for export at most; beyond it new spans are dropped, events never wait.
    #[serde(default = "default_max_queue_spans")]
    pub max_queue_spans: usize,
    /// Spans per export request at most.
    #[serde(default = "default_max_batch_spans")]
    pub max_batch_spans: usize,
    /// How long a span waits at most for its batch to be sent.
    #[serde(default = "default_batch_delay_ms")]
    pub batch_delay_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: None,
            export_timeout_ms: default_export_timeout_ms(),
            max_queue_spans: default_max_queue_spans(),
            max_batch_spans: default_max_batch_spans(),
            batch_delay_ms: default_batch_delay_ms(),
        }
    }
}

fn default_export_timeout_ms() -> u64 {
    10_000
}
fn default_max_queue_spans() -> usize {
    2048
}
fn default_max_batch_spans() -> usize {
    512
}
fn default_batch_delay_ms() -> u64 {
    5_000
}

/// The largest span queue: the SDK allocates it whole at start, a few hundred bytes a span.
const MAX_QUEUE_SPANS: usize = 65_536;

/// The only OTLP protocol keyhole sends.
const PROTOCOL: &str = "http/protobuf";

/// The export `telemetry` and the variables (read through `env`) ask for; `None` when they name
/// no collector or `OTEL_SDK_DISABLED=true`. `instance_id` becomes `service.instance.id`.
pub(super) fn validate_telemetry(
    telemetry: &TelemetryConfig,
    instance_id: &str,
    env: impl Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Option<TraceExport> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    let (key, endpoint) = match &telemetry.otlp_endpoint {
        Some(base) => ("telemetry.otlp_endpoint", traces_url(base)),
        None => match (env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), env("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            (Some(url), _) if !url.is_empty() => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url),
            (_, Some(base)) if !base.is_empty() => ("OTEL_EXPORTER_OTLP_ENDPOINT", traces_url(&base)),
            _ => return None,
        },
    };
    let before = problems.len();
    check_endpoint(key, &endpoint, problems);
    // The traces variable wins over the general one, which may be meant for other signals.
    let protocol = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
        .into_iter()
        .find_map(|variable| env(variable).filter(|p| !p.is_empty()).map(|p| (variable, p)));
    if let Some((variable, protocol)) = protocol.filter(|(_, p)| p != PROTOCOL) {
        problems.add(variable, format!("{protocol:?}: keyhole exports over {PROTOCOL} only"));
    }
    let service_name = telemetry
        .service_name
        .clone()
        .or_else(|| env("OTEL_SERVICE_NAME").filter(|name| !name.is_empty()))
        .unwrap_or_else(|| "keyhole".into());
    if service_name.trim().is_empty() {
        problems.add("telemetry.service_name", "must not be empty");
    }
    for (key, value) in [
        ("telemetry.export_timeout_ms", telemetry.export_timeout_ms),
        ("telemetry.batch_delay_ms", telemetry.batch_delay_ms),
        ("telemetry.max_queue_spans", telemetry.max_queue_spans as u64),
        ("telemetry.max_batch_spans", telemetry.max_batch_spans as u64),
    ] {
        if value == 0 {
            problems.add(key, "must be greater than 0");
        }
    }
    if telemetry.max_queue_spans > MAX_QUEUE_SPANS {
        problems.add(
            "telemetry.max_queue_spans",
            format!("at most {MAX_QUEUE_SPANS}: the queue is allocated whole at start"),
        );
    }
    if telemetry.max_batch_spans > telemetry.max_queue_spans {
        problems.add("telemetry.max_batch_spans", "must not exceed telemetry.max_queue_spans");
    }
    (problems.len() == before).then(|| TraceExport {
        endpoint,
        service_name,
        instance_id: instance_id.to_string(),
        timeout: Duration::from_millis(telemetry.export_timeout_ms),
        max_queue_spans: telemetry.max_queue_spans,
        max_batch_spans: telemetry.max_batch_spans,
        batch_delay: Duration::from_millis(telemetry.batch_delay_ms),
    })
}

/// `<base>/v1/traces`, as OTLP/HTTP appends it to a base endpoint.
fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

/// An http(s) URL with a host. Credentials and query strings are refused: the endpoint is
/// logged, and a collector's credentials belong in `OTEL_EXPORTER_OTLP_HEADERS`.
fn check_endpoint(key: &str, endpoint: &str, problems: &mut Problems) {
    let url = match url::Url::parse(endpoint) {
        Ok(url) => url,
        Err(error) => return problems.add(key, format!("{endpoint:?} is not a URL: {error}")),
    };
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        problems.add(key, format!("{endpoint:?}: must be an http:// or https:// URL with a host"));
    } else if !url.username().is_empty() || url.password().is_some() {
        problems.add(key, "must not carry credentials: put them in OTEL_EXPORTER_OTLP_HEADERS");
    } else if url.query().is_some() || url.fragment().is_some() {
        problems.add(key, "must not carry a query string or fragment");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(file: &TelemetryConfig, vars: &[(&str, &str)]) -> (Option<TraceExport>, Vec<String>) {
        let vars: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut problems = Problems::default();
        let export = validate_telemetry(file, "replica-1", |name| vars.get(name).cloned(), &mut problems);
        (export, problems.into_result(|| ()).err().unwrap_or_default().into_iter().map(|p| p.path).collect())
    }

    fn with_endpoint(endpoint: &str) -> TelemetryConfig {
        TelemetryConfig { otlp_endpoint: Some(endpoint.into()), ..TelemetryConfig::default() }
    }

    #[test]
    fn nothing_configured_exports_nothing() {
        assert_eq!(resolve(&TelemetryConfig::default(), &[]), (None, vec![]));
    }

    #[test]
    fn the_file_comes_before_the_variables_which_fill_what_it_leaves_out() {
        let (export, problems) = resolve(
            &with_endpoint("http://collector:4318/"),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318"), ("OTEL_SERVICE_NAME", "keyhole-eu")],
        );
        assert!(problems.is_empty(), "{problems:?}");
        let export = export.unwrap();
        assert_eq!(export.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(export.service_name, "keyhole-eu");
        assert_eq!(export.instance_id, "replica-1");

        let (export, _) =
            resolve(&TelemetryConfig::default(), &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
        assert_eq!(export.unwrap().endpoint, "http://c:4318/v1/traces");
        let (export, _) = resolve(
            &TelemetryConfig::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x"),
            ],
        );
        let export = export.unwrap();
        assert_eq!(export.endpoint, "http://t:1/x");
        assert_eq!(export.service_name, "keyhole");
    }

    #[test]
    fn otel_sdk_disabled_turns_export_off() {
        let (export, problems) = resolve(&with_endpoint("http://c:4318"), &[("OTEL_SDK_DISABLED", "true")]);
        assert_eq!((export, problems), (None, vec![]));
    }

    #[test]
    fn bad_endpoints_protocols_and_limits_are_refused_by_name() {
        for bad in
            ["collector:4318", "ftp://c/", "http://user:secret@c:4318", "http://c:4318?key=1", "not a url"]
        {
            let (export, problems) = resolve(&with_endpoint(bad), &[]);
            assert_eq!((export, problems), (None, vec!["telemetry.otlp_endpoint".to_string()]), "{bad}");
        }
        let (_, problems) =
            resolve(&TelemetryConfig::default(), &[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")]);
        assert_eq!(problems, ["OTEL_EXPORTER_OTLP_ENDPOINT"]);
        let (_, problems) =
            resolve(&with_endpoint("http://c:4318"), &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert_eq!(problems, ["OTEL_EXPORTER_OTLP_PROTOCOL"]);
        // The traces variable wins over a general one meant for other signals.
        let (export, problems) = resolve(
            &with_endpoint("http://c:4318"),
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ],
        );
        assert!(export.is_some() && problems.is_empty(), "{problems:?}");
        let (_, problems) =
            resolve(&TelemetryConfig { max_queue_spans: 1 << 24, ..with_endpoint("http://c:4318") }, &[]);
        assert_eq!(problems, ["telemetry.max_queue_spans"]);
        let zero = TelemetryConfig {
            export_timeout_ms: 0,
            max_queue_spans: 10,
            max_batch_spans: 11,
            ..with_endpoint("https://c")
        };
        let (_, problems) = resolve(&zero, &[]);
        assert_eq!(problems, ["telemetry.export_timeout_ms", "telemetry.max_batch_spans"]);
    }
}
