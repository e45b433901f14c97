//! Logging set-up, the Prometheus metrics keyhole records, and W3C trace context.
//!
//! Metrics: every series is labelled `binding` (`<tenant>/<handler>`) and `tenant`, sometimes
//! with a closed set of others (`outcome`, `kind`, `stage`, `topic`, `partition`); never with a
//! subject, an event id or anything else that names a person. [`prometheus`] installs the
//! recorder once per process; the `metrics` macros record nothing before it is installed.
//!
//! Trace context: keyhole has no trace exporter (no OpenTelemetry dependency). It continues an
//! event's `traceparent` into the fields of its log spans and onto the event's reply, so that a
//! tracing backend fed from the logs and the downstream services can stitch the trace together.

use metrics::{Label, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::RwLock;
use std::time::Duration;
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

/// Counter: records read from Kafka, by `binding`, `tenant`.
pub const EVENTS_CONSUMED: &str = "keyhole_events_consumed_total";
/// Gauge: events read and not yet finished or abandoned (left to be read again), by `binding`,
/// `tenant`.
pub const EVENTS_IN_FLIGHT: &str = "keyhole_events_in_flight";
/// Counter: events finished, by `binding`, `tenant` and `decision` (`delivered`,
/// `consent_denied`, `gone`, `refused`, `failed`).
pub const EVENTS_FINISHED: &str = "keyhole_events_finished_total";
/// Counter: events refused before any request (a malformed envelope, a hostile reference), by
/// `binding`, `tenant` and `kind` (the envelope error's kind, e.g. `forbidden_dataref`).
pub const EVENTS_REFUSED: &str = "keyhole_events_refused_total";
/// Counter: answers of the data owner, one per resolution attempt, by `binding`, `tenant`,
/// `data_source` and `outcome`: `released`, or the resolve error's kind (`consent_denied`,
/// `gone`, `unauthorized`, `transient`, `too_large`, `rejected`).
pub const RESOLUTIONS: &str = "keyhole_resolutions_total";
/// Histogram: seconds each handler call took (instantiation included), every call whatever its
/// result, by `binding`, `tenant`.
pub const HANDLER_DURATION: &str = "keyhole_handler_duration_seconds";
/// Counter: handler calls that failed, by `binding`, `tenant` and `kind` (the guest error's
/// kind, e.g. `trapped`, `deadline_exceeded`, `handler_retryable`).
pub const HANDLER_ERRORS: &str = "keyhole_handler_errors_total";
/// Counter: attempts of an event started again after a transient failure, by `binding`,
/// `tenant` and `cause` (the failure's kind).
pub const EVENT_RETRIES: &str = "keyhole_event_retries_total";
/// Counter: events published to a dead-letter topic, by `binding`, `tenant` and `stage`.
pub const DEAD_LETTERS: &str = "keyhole_dead_letters_total";
/// Counter: replies published and confirmed by the broker, by `binding`, `tenant`.
pub const REPLIES: &str = "keyhole_replies_total";
/// Counter: access receipts written, by `binding`, `tenant` and `decision`.
pub const RECEIPTS: &str = "keyhole_receipts_total";
/// Counter: receipt writes that failed and were tried again, by `binding`, `tenant`.
pub const RECEIPT_ERRORS: &str = "keyhole_receipt_errors_total";
/// Counter: audit record writes that failed and were tried again, by `binding`, `tenant`.
pub const AUDIT_ERRORS: &str = "keyhole_audit_errors_total";
/// Gauge: 1 while a binding is paused (its data source unavailable or refusing keyhole's
/// credentials), else 0, by `binding`, `tenant`. `/readyz` says why.
pub const BINDING_PAUSED: &str = "keyhole_binding_paused";
/// Gauge: messages of a partition not yet consumed by the binding's group, from librdkafka's
/// statistics (`consumer_lag`: the partition's end offset minus the group's committed offset),
/// by `binding`, `tenant`, `topic` and `partition`. 0 for a partition this instance no longer
/// holds.
pub const CONSUMER_LAG: &str = "keyhole_consumer_lag";

/// Upper bounds, in seconds, of the handler duration histogram: a fresh instance costs tens of
/// microseconds; the default deadline is one second, the longest a few more.
const HANDLER_DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes: samples wait
/// in memory until then.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process's Prometheus recorder: installed as the global `metrics` recorder on the first
/// call; every later call returns the same handle. The admin server renders `/metrics` with
/// [`PrometheusHandle::render`].
///
/// If another global recorder was installed first (a test harness, say), the handle still
/// renders, but keyhole's series go to the other recorder and it renders none of them.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Fails only for an empty bucket list, which this constant is not; a summary instead of
        // buckets would still be better than no metrics.
        let builder = match PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HANDLER_DURATION.to_string()), HANDLER_DURATION_BUCKETS)
        {
            Ok(with_buckets) => with_buckets,
            Err(error) => {
                tracing::error!(%error, "Cannot set the handler duration buckets.");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(error) = metrics::set_global_recorder(recorder) {
            tracing::warn!(%error, "Another metrics recorder is installed; /metrics will not show keyhole's series.");
            return handle;
        }
        describe();
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new().name("keyhole-metrics".into()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "Cannot start the metrics upkeep thread; histograms are folded only when scraped.");
        }
        handle
    })
}

/// The `# HELP` lines.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(EVENTS_CONSUMED, "Records read from Kafka.");
    describe_gauge!(EVENTS_IN_FLIGHT, "Events read and not yet finished.");
    describe_counter!(EVENTS_FINISHED, "Events finished, by decision.");
    describe_counter!(EVENTS_REFUSED, "Events refused before any request, by kind.");
    describe_counter!(RESOLUTIONS, "The data owner's answers, one per resolution attempt, by outcome.");
    describe_histogram!(HANDLER_DURATION, metrics::Unit::Seconds, "Duration of handler calls.");
    describe_counter!(HANDLER_ERRORS, "Handler calls that failed, by kind.");
    describe_counter!(EVENT_RETRIES, "Attempts started again after a transient failure, by cause.");
    describe_counter!(DEAD_LETTERS, "Events published to a dead-letter topic, by stage.");
    describe_counter!(REPLIES, "Replies published.");
    describe_counter!(RECEIPTS, "Access receipts written, by decision.");
    describe_counter!(RECEIPT_ERRORS, "Receipt writes that failed and were tried again.");
    describe_counter!(AUDIT_ERRORS, "Audit record writes that failed and were tried again.");
    describe_gauge!(BINDING_PAUSED, "1 while the binding is paused because its data source cannot answer.");
    describe_gauge!(CONSUMER_LAG, "Messages not yet consumed, per partition.");
}

/// The labels every series of a binding carries: `binding` and `tenant`.
#[derive(Clone, Debug)]
pub struct BindingLabels {
    binding: SharedString,
    tenant: SharedString,
}

impl BindingLabels {
    /// The labels of binding `name` (`<tenant>/<handler>`) of `tenant`.
    pub fn new(name: &str, tenant: &str) -> Self {
        BindingLabels { binding: name.to_string().into(), tenant: tenant.to_string().into() }
    }

    /// `binding` and `tenant`.
    pub fn labels(&self) -> Vec<Label> {
        vec![Label::new("binding", self.binding.clone()), Label::new("tenant", self.tenant.clone())]
    }

    /// `binding`, `tenant` and one more. `value` must come from a closed set (a kind, a stage),
    /// never from an event.
    pub fn with(&self, key: &'static str, value: impl Into<SharedString>) -> Vec<Label> {
        let mut labels = self.labels();
        labels.push(Label::new(key, value));
        labels
    }
}

impl metrics::IntoLabels for BindingLabels {
    fn into_labels(self) -> Vec<Label> {
        vec![Label::new("binding", self.binding), Label::new("tenant", self.tenant)]
    }
}

/// A binding's metric handles. Recording through a handle is an atomic add; the `metrics`
/// macros would look the series up in the registry, with freshly allocated labels, on every
/// call. Handles with one more label from a closed set (a kind, a stage, a decision) are made on
/// first use and kept.
pub struct BindingMetrics {
    labels: BindingLabels,
    /// The binding's data source, a label of [`RESOLUTIONS`].
    data_source: SharedString,
    /// Counters by name and extra label.
    counters: RwLock<HashMap<CounterKey, metrics::Counter>>,
    /// [`EVENTS_CONSUMED`].
    pub consumed: metrics::Counter,
    /// [`EVENTS_IN_FLIGHT`].
    in_flight: metrics::Gauge,
    /// [`HANDLER_DURATION`].
    pub handler_duration: metrics::Histogram,
    /// [`REPLIES`].
    pub replies: metrics::Counter,
    /// [`BINDING_PAUSED`].
    pub paused: metrics::Gauge,
}

/// A counter's name and its label besides `binding` and `tenant`, if any.
type CounterKey = (&'static str, Option<(&'static str, &'static str)>);

impl BindingMetrics {
    /// The handles of binding `labels`, whose data source is `data_source`.
    pub fn new(labels: BindingLabels, data_source: &str) -> Self {
        BindingMetrics {
            consumed: metrics::counter!(EVENTS_CONSUMED, labels.labels()),
            in_flight: metrics::gauge!(EVENTS_IN_FLIGHT, labels.labels()),
            handler_duration: metrics::histogram!(HANDLER_DURATION, labels.labels()),
            replies: metrics::counter!(REPLIES, labels.labels()),
            paused: metrics::gauge!(BINDING_PAUSED, labels.labels()),
            data_source: data_source.to_string().into(),
            counters: RwLock::default(),
            labels,
        }
    }

    /// The binding's labels.
    pub fn labels(&self) -> &BindingLabels {
        &self.labels
    }

    /// Counter `name` of the binding, with `label` (`key`, `value` from a closed set) if given.
    pub fn counter(
        &self,
        name: &'static str,
        label: Option<(&'static str, &'static str)>,
    ) -> metrics::Counter {
        let key = (name, label);
        if let Some(counter) = self.counters.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return counter.clone();
        }
        let mut labels = self.labels.labels();
        if let Some((key, value)) = label {
            labels.push(Label::new(key, value));
        }
        if name == RESOLUTIONS {
            labels.insert(2, Label::new("data_source", self.data_source.clone()));
        }
        let counter = metrics::counter!(name, labels);
        self.counters.write().unwrap_or_else(|p| p.into_inner()).entry(key).or_insert(counter).clone()
    }

    /// Counts one more event in flight until the returned guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.increment(1.0);
        InFlight(self.in_flight.clone())
    }
}

/// One event counted in [`EVENTS_IN_FLIGHT`] for as long as this lives: however an event ends
/// (finished, abandoned, dropped before handling), the gauge comes down with it.
pub struct InFlight(metrics::Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// An event's W3C trace context (the CloudEvents distributed-tracing extension), continued by
/// keyhole: the caller's trace id and flags, the caller's span as parent, and a span of
/// keyhole's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// The caller's span: 16 lowercase hex digits, not all zero.
    pub parent_span_id: String,
    /// keyhole's span for this event: 16 lowercase hex digits, random.
    pub span_id: String,
    /// The trace flags (2 hex digits), passed on unchanged: keyhole does not sample.
    pub flags: String,
    /// The `tracestate` extension, passed on unchanged.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Continues the trace of an event's `traceparent` and `tracestate` extensions (as
    /// name–value pairs). `None` when there is no `traceparent` or it is not a valid version-00
    /// header: trace context is advice, never a reason to refuse an event.
    pub fn continue_from(extensions: &[(String, String)]) -> Option<Self> {
        let value = |name: &str| extensions.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let (trace_id, parent_span_id, flags) = parse_traceparent(value("traceparent")?)?;
        // The value is passed on as it came; its length is bounded by the envelope's header
        // limits, and a header that is not printable ASCII is dropped rather than forwarded.
        let tracestate = value("tracestate")
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()))
            .map(str::to_string);
        Some(TraceContext {
            trace_id: trace_id.to_string(),
            parent_span_id: parent_span_id.to_string(),
            span_id: new_span_id(),
            flags: flags.to_string(),
            tracestate,
        })
    }

    /// The `traceparent` for what keyhole sends on: the same trace, keyhole's span as parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// `(trace-id, parent-id, flags)` of a `traceparent`, lowercase hex checked. A version above
/// 00 is read as 00 and may carry more fields after the flags, as the W3C recommendation asks
/// of a receiver that knows only version 00; version ff is invalid.
fn parse_traceparent(text: &str) -> Option<(&str, &str, &str)> {
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let mut parts = text.split('-');
    let (version, trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let more = parts.next().is_some();
    let valid = hex(version, 2)
        && version != "ff"
        && !(version == "00" && more)
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0');
    valid.then_some((trace_id, parent_id, flags))
}

/// A random, non-zero span id.
fn new_span_id() -> String {
    let id = rand::random::<u64>().max(1);
    format!("{id:016x}")
}

/// The span an event is handled in: the binding and event id, and the trace fields when the
/// event carried a trace context, so every log line of the event can be found by trace id.
pub fn event_span(binding: &str, event_id: Option<&str>, trace: Option<&TraceContext>) -> tracing::Span {
    let span = tracing::info_span!(
        "event",
        binding,
        event_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        parent_span_id = tracing::field::Empty,
    );
    if let Some(trace) = trace {
        span.record("trace_id", trace.trace_id.as_str());
        span.record("span_id", trace.span_id.as_str());
        span.record("parent_span_id", trace.parent_span_id.as_str());
    }
    span
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ext(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let trace = TraceContext::continue_from(&ext(&[
            ("traceparent", PARENT),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]))
        .unwrap();
        assert_eq!(trace.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(trace.parent_span_id, "b7ad6b7169203331");
        assert_ne!(trace.span_id, trace.parent_span_id);
        assert_eq!(trace.span_id.len(), 16);
        assert_eq!(trace.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        let sent = trace.traceparent();
        assert!(sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{sent}");
        assert!(sent.ends_with("-01"), "{sent}");
        assert!(!sent.contains("b7ad6b7169203331"), "{sent}");
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        ] {
            assert_eq!(TraceContext::continue_from(&ext(&[("traceparent", bad)])), None, "{bad}");
        }
        assert_eq!(TraceContext::continue_from(&ext(&[("tracestate", "a=b")])), None);
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        let later = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-comes-next";
        let trace = TraceContext::continue_from(&ext(&[("traceparent", later)])).unwrap();
        assert!(trace.traceparent().starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
    }

    #[test]
    fn a_non_printable_tracestate_is_dropped() {
        let trace =
            TraceContext::continue_from(&ext(&[("traceparent", PARENT), ("tracestate", "a=\u{7}")])).unwrap();
        assert_eq!(trace.tracestate, None);
    }
}
