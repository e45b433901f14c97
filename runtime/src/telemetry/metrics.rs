//! The Prometheus metrics keyhole records. A binding's series are labelled `binding`
//! (`<tenant>/<handler>`) and `tenant`, sometimes with a closed set of others (`outcome`, `kind`,
//! `stage`, `reason`, `topic`, `partition`); the process's own (the sandbox's budgets, the
//! registry's staleness) have no such labels. Never a subject, an event id or anything else that
//! names a person. [`prometheus`] installs the recorder once per process; the `metrics` macros record
//! nothing before it is installed.

use metrics::{Label, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::RwLock;
use std::time::Duration;

/// Counter: events whose handling panicked (a bug in keyhole), by `binding`, `tenant`; dead
/// lettered at stage `internal` (or, if recording them panicked, read again later).
pub const EVENT_PANICS: &str = "keyhole_event_panics_total";
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
/// Gauge: the `seq` of the last access receipt written to a chain (docs/data-protection.md),
/// by `sink`: `file` (the receipts file's one stream) or `kafka` (with `binding`: that
/// binding's stream on the receipts topic).
pub const RECEIPTS_CHAIN_SEQ: &str = "keyhole_receipts_chain_seq";
/// Counter: audit record writes that failed and were tried again, by `binding`, `tenant`.
pub const AUDIT_ERRORS: &str = "keyhole_audit_errors_total";
/// Gauge: 1 while a binding is paused for `reason`, else 0, by `binding`, `tenant` and `reason`
/// ([`PAUSE_REASONS`]: `owner_unavailable`, its data source down; `unauthorized`, its data source
/// refusing keyhole's credentials). Both series exist from the binding's start; at most one is
/// 1. `/readyz` says more.
pub const BINDING_PAUSED: &str = "keyhole_binding_paused";
/// The values of [`BINDING_PAUSED`]'s `reason` label.
pub const PAUSE_REASONS: [&str; 2] = ["owner_unavailable", "unauthorized"];
/// Histogram: seconds each request to the data owner took, one per resolution attempt (as
/// [`RESOLUTIONS`] counts them), whatever the answer, by `binding`, `tenant` and `data_source`.
/// From asking to the answer: the wait for one of the data source's request permits included,
/// and with batched resolution the batch's round trip.
pub const OWNER_REQUEST_DURATION: &str = "keyhole_owner_request_duration_seconds";
/// Gauge: seconds since this replica last knew it had read the registry log to its end (since
/// it started reading, until it has); 0 with a local registry, which is never behind. No
/// `binding`, `tenant`: the process's. `/readyz` and the admin API refuse tenants' tokens past
/// `registry.max_staleness_ms`.
pub const REGISTRY_STALENESS: &str = "keyhole_registry_staleness_seconds";
/// Gauge: handler instances admitted and not yet gone, of the sandbox's pool. The process's (no
/// `binding`, `tenant`).
pub const SANDBOX_INSTANCES_IN_USE: &str = "keyhole_sandbox_instances_in_use";
/// Gauge: the sandbox's instance slots (`sandbox.max_concurrent_instances`). The process's.
pub const SANDBOX_INSTANCES_MAX: &str = "keyhole_sandbox_instances_max";
/// Gauge: bytes of linear memory reserved by the instances admitted (each its handler's
/// `max_memory_bytes`, rounded up to whole MiB). The process's.
pub const SANDBOX_MEMORY_RESERVED: &str = "keyhole_sandbox_memory_reserved_bytes";
/// Gauge: the sandbox's memory budget for every tenant together (`sandbox.memory_budget_bytes`,
/// in whole MiB). The process's.
pub const SANDBOX_MEMORY_BUDGET: &str = "keyhole_sandbox_memory_budget_bytes";
/// Gauge: messages of a partition not yet consumed by the binding's group, from librdkafka's
/// statistics (`consumer_lag`: the partition's end offset minus the group's committed offset),
/// by `binding`, `tenant`, `topic` and `partition`. 0 for a partition this instance no longer
/// holds.
pub const CONSUMER_LAG: &str = "keyhole_consumer_lag";
/// Counter: registry records skipped because their signature did not check out, by `reason`
/// (`unsigned`, `malformed`, `unknown_key`, `mismatch`). Any increase means someone other than
/// a keyhole replica wrote to the registry topic.
pub const REGISTRY_RECORDS_REJECTED: &str = "keyhole_registry_records_rejected_total";

/// Upper bounds, in seconds, of the handler duration histogram: a fresh instance costs tens of
/// microseconds; the default deadline is one second, the longest a few more.
const HANDLER_DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Upper bounds, in seconds, of the owner request histogram: an owner on the same network
/// answers in milliseconds; the default request timeout is 5 s, the longest allowed 60 s.
const OWNER_REQUEST_BUCKETS: &[f64] =
    &[0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

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
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full(OWNER_REQUEST_DURATION.to_string()),
                    OWNER_REQUEST_BUCKETS,
                )
            }) {
            Ok(with_buckets) => with_buckets,
            Err(error) => {
                tracing::error!(%error, "Cannot set the histograms' buckets.");
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

/// Bindings that were stopped and not started again (their handler deleted or deactivated, their
/// tenant deleted or its grant narrowed): their series are left out of [`render`].
static RETIRED: RwLock<std::collections::BTreeSet<String>> = RwLock::new(std::collections::BTreeSet::new());

/// Leaves binding `name`'s series out of `/metrics` until it is [`revive`]d. The recorder has no
/// way to forget a series, so they are filtered when rendered: a dashboard or an alert then
/// sees a deleted handler's series end, rather than a gauge frozen at its last value for ever.
pub fn retire(name: &str) {
    RETIRED.write().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(name.to_string());
}

/// Shows binding `name`'s series again (it started again; counters go on from their totals).
pub fn revive(name: &str) {
    RETIRED.write().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(name);
}

/// Every series in the Prometheus text format, but the retired bindings'.
pub fn render() -> String {
    let text = prometheus().render();
    let retired = RETIRED.read().unwrap_or_else(|poisoned| poisoned.into_inner());
    if retired.is_empty() {
        return text;
    }
    // Binding names are `<tenant>/<handler>` of restricted characters: no quote or backslash to
    // escape in a label value.
    let labels: Vec<String> = retired.iter().map(|name| format!("binding=\"{name}\"")).collect();
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        if !labels.iter().any(|label| line.contains(label.as_str())) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
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
    describe_gauge!(RECEIPTS_CHAIN_SEQ, "The seq of the last receipt written to its chain.");
    describe_counter!(AUDIT_ERRORS, "Audit record writes that failed and were tried again.");
    describe_counter!(
        EVENT_PANICS,
        "Events whose handling panicked (a bug in keyhole); dead lettered at stage internal."
    );
    describe_gauge!(
        BINDING_PAUSED,
        "1 while the binding is paused because its data source cannot answer, by reason."
    );
    describe_histogram!(
        OWNER_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Duration of requests to the data owner, one per resolution attempt."
    );
    describe_gauge!(
        REGISTRY_STALENESS,
        metrics::Unit::Seconds,
        "Seconds since this replica last read the registry log to its end; 0 with a local registry."
    );
    describe_gauge!(SANDBOX_INSTANCES_IN_USE, "Handler instances admitted and not yet gone.");
    describe_gauge!(SANDBOX_INSTANCES_MAX, "The sandbox's instance slots.");
    describe_gauge!(
        SANDBOX_MEMORY_RESERVED,
        metrics::Unit::Bytes,
        "Linear memory reserved by the admitted instances (their handlers' limits)."
    );
    describe_gauge!(
        SANDBOX_MEMORY_BUDGET,
        metrics::Unit::Bytes,
        "The sandbox's memory budget for every tenant together."
    );
    describe_gauge!(CONSUMER_LAG, "Messages not yet consumed, per partition.");
    describe_counter!(
        REGISTRY_RECORDS_REJECTED,
        "Registry records skipped because their signature did not check out, by reason."
    );
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
    /// [`OWNER_REQUEST_DURATION`], with the binding's `data_source`.
    pub owner_request_duration: metrics::Histogram,
    /// [`REPLIES`].
    pub replies: metrics::Counter,
    /// [`BINDING_PAUSED`], one per reason, in the order of [`PAUSE_REASONS`].
    pub paused: [metrics::Gauge; 2],
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
            owner_request_duration: metrics::histogram!(
                OWNER_REQUEST_DURATION,
                labels.with("data_source", data_source.to_string())
            ),
            replies: metrics::counter!(REPLIES, labels.labels()),
            paused: PAUSE_REASONS
                .map(|reason| metrics::gauge!(BINDING_PAUSED, labels.with("reason", reason))),
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
