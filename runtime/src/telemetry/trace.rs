//! An event's trace. keyhole continues the W3C trace context an event carries (the CloudEvents
//! distributed-tracing extension, `traceparent` and `tracestate`): into the fields of the event's
//! log span, onto its reply, and, when span export is on ([`super::otlp`]), into the spans it
//! exports: one per event (`process <topic>`, a consumer span) with a child per stage
//! (`resolve`, `sandbox`, `send <topic>` for a reply or a dead letter).
//!
//! What a span may carry is fixed here: the event's coordinates (topic, partition, offset,
//! group, event id), the binding's names, and after that only static strings and numbers
//! (decisions, error kinds, status codes). Never a subject, a reference, a token, resolved data
//! or a message a guest or an owner wrote.

use super::otlp;
use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer,
};
use opentelemetry::{Context, KeyValue, Value};

/// An event's W3C trace context as keyhole continues it: the caller's trace id and flags, the
/// caller's span as parent, and keyhole's span for the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// The caller's span: 16 lowercase hex digits, not all zero. `None` when keyhole started the
    /// trace (span export on, and the event carried no trace context).
    pub parent_span_id: Option<String>,
    /// keyhole's span for this event: 16 lowercase hex digits. With span export on, the id of
    /// the exported event span; otherwise random.
    pub span_id: String,
    /// The trace flags (2 hex digits): the caller's, passed on; with span export on, the
    /// sampling decision of keyhole's span.
    pub flags: String,
    /// The `tracestate` extension, passed on unchanged.
    pub tracestate: Option<String>,
}

/// The trace context an event carried, checked.
struct Incoming<'a> {
    trace_id: &'a str,
    parent_span_id: &'a str,
    flags: &'a str,
    tracestate: Option<&'a str>,
}

impl<'a> Incoming<'a> {
    /// The `traceparent` and `tracestate` extensions (as name–value pairs). `None` when there is
    /// no `traceparent` or it is not a valid version-00 header: trace context is advice, never a
    /// reason to refuse an event.
    fn parse(extensions: &'a [(String, String)]) -> Option<Self> {
        let value = |name: &str| extensions.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let (trace_id, parent_span_id, flags) = parse_traceparent(value("traceparent")?)?;
        // The value is passed on as it came; its length is bounded by the envelope's header
        // limits, and a header that is not printable ASCII is dropped rather than forwarded.
        let tracestate = value("tracestate")
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
        Some(Incoming { trace_id, parent_span_id, flags, tracestate })
    }

    /// Continued with keyhole's span `span_id` and trace flags `flags`.
    fn continued(&self, span_id: String, flags: String) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id.to_string(),
            parent_span_id: Some(self.parent_span_id.to_string()),
            span_id,
            flags,
            tracestate: self.tracestate.map(str::to_string),
        }
    }

    /// The caller's span, as the parent of keyhole's.
    fn remote_parent(&self) -> Context {
        let hex = |s: &str| u128::from_str_radix(s, 16).unwrap_or_default();
        let flags = u8::from_str_radix(self.flags, 16).unwrap_or_default();
        let state = self.tracestate.and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
        let parent = SpanContext::new(
            TraceId::from(hex(self.trace_id)),
            SpanId::from(hex(self.parent_span_id) as u64),
            TraceFlags::new(flags),
            true,
            state,
        );
        Context::new().with_remote_span_context(parent)
    }
}

impl TraceContext {
    /// Continues the trace of an event's `traceparent` and `tracestate` extensions with a
    /// random span of keyhole's own; `None` without a valid `traceparent`.
    pub fn continue_from(extensions: &[(String, String)]) -> Option<Self> {
        let incoming = Incoming::parse(extensions)?;
        Some(incoming.continued(new_span_id(), incoming.flags.to_string()))
    }

    /// The `traceparent` for what keyhole sends on: the same trace, keyhole's span as parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// Where an event was read, and by which binding: what its span says of it.
#[derive(Clone, Copy, Debug)]
pub struct Consumed<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The binding's consumer group.
    pub group: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    /// The handler.
    pub handler: &'a str,
    /// The event's id, when the envelope had one.
    pub event_id: Option<&'a str>,
}

/// One event's trace: the context its reply carries, and its exported span when span export
/// is on and the trace is sampled. Ends (and is exported) when dropped, finished or not.
pub struct EventTrace {
    context: Option<TraceContext>,
    /// A context holding the recording event span: the parent of the stage spans.
    span: Option<Context>,
}

impl EventTrace {
    /// The trace of an event read at `consumed`, with the CloudEvent `extensions` when its
    /// envelope could be read. With span export on, keyhole's span is exported and its id goes
    /// onto the reply; an event without a trace context starts a trace there.
    pub fn start(consumed: &Consumed<'_>, extensions: Option<&[(String, String)]>) -> Self {
        let incoming = extensions.and_then(Incoming::parse);
        let Some(tracer) = otlp::tracer() else { return EventTrace::unexported(incoming) };
        let parent = incoming.as_ref().map(Incoming::remote_parent).unwrap_or_default();
        let mut attributes = vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.destination.name", consumed.topic.to_string()),
            KeyValue::new("messaging.destination.partition.id", consumed.partition.to_string()),
            KeyValue::new("messaging.kafka.offset", consumed.offset),
            KeyValue::new("messaging.consumer.group.name", consumed.group.to_string()),
            KeyValue::new("keyhole.tenant", consumed.tenant.to_string()),
            KeyValue::new("keyhole.handler", consumed.handler.to_string()),
        ];
        if let Some(id) = consumed.event_id {
            attributes.push(KeyValue::new("messaging.message.id", id.to_string()));
        }
        let builder = SpanBuilder::from_name(format!("process {}", consumed.topic))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes);
        let span = tracer.build_with_context(builder, &parent);
        let ids = opentelemetry::trace::Span::span_context(&span).clone();
        // A provider already shut down answers with an empty context: no ids to send on.
        if !ids.is_valid() {
            return EventTrace::unexported(incoming);
        }
        let span_id = ids.span_id().to_string();
        let flags = format!("{:02x}", ids.trace_flags().to_u8());
        let context = match &incoming {
            Some(incoming) => incoming.continued(span_id, flags),
            None => TraceContext {
                trace_id: ids.trace_id().to_string(),
                parent_span_id: None,
                span_id,
                flags,
                tracestate: None,
            },
        };
        let recording = opentelemetry::trace::Span::is_recording(&span);
        EventTrace { context: Some(context), span: recording.then(|| Context::new().with_span(span)) }
    }

    /// A trace that exports nothing: the incoming context continued with a random span id.
    fn unexported(incoming: Option<Incoming<'_>>) -> Self {
        let context = incoming.map(|i| i.continued(new_span_id(), i.flags.to_string()));
        EventTrace { context, span: None }
    }

    /// The context the event's reply carries on; `None` when the event carried none and span
    /// export is off (a new trace id would lead nowhere).
    pub fn context(&self) -> Option<&TraceContext> {
        self.context.as_ref()
    }

    /// The span of one request to the data owner (`attempt` from 1).
    pub fn resolve(&self, data_source: &str, attempt: u32) -> StageSpan {
        self.stage("resolve".into(), SpanKind::Client, || {
            vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("keyhole.data_source", data_source.to_string()),
                KeyValue::new("keyhole.attempt", i64::from(attempt)),
            ]
        })
    }

    /// The span of one handler call in the sandbox.
    pub fn sandbox(&self, version: &str, attempt: u32) -> StageSpan {
        self.stage("sandbox".into(), SpanKind::Internal, || {
            vec![
                KeyValue::new("keyhole.handler.version", version.to_string()),
                KeyValue::new("keyhole.attempt", i64::from(attempt)),
            ]
        })
    }

    /// The span of publishing a reply or a dead letter (`what`) to `topic`.
    pub fn send(&self, topic: &str, what: &'static str) -> StageSpan {
        self.stage(format!("send {topic}"), SpanKind::Producer, || {
            vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.operation.name", "send"),
                KeyValue::new("messaging.destination.name", topic.to_string()),
                KeyValue::new("keyhole.output", what),
            ]
        })
    }

    fn stage(&self, name: String, kind: SpanKind, attributes: impl FnOnce() -> Vec<KeyValue>) -> StageSpan {
        let (Some(parent), Some(tracer)) = (&self.span, otlp::tracer()) else { return StageSpan(None) };
        let builder = SpanBuilder::from_name(name).with_kind(kind).with_attributes(attributes());
        StageSpan(Some(tracer.build_with_context(builder, parent)))
    }

    /// Ends the event span with keyhole's decision (`delivered`, `consent_denied`, …) after
    /// `attempts`; `failure` is the error kind of a refused or failed event, which marks the
    /// span as an error.
    pub fn finish(self, decision: &'static str, attempts: u32, failure: Option<&'static str>) {
        let Some(context) = self.span else { return };
        let span = context.span();
        span.set_attribute(KeyValue::new("keyhole.decision", decision));
        span.set_attribute(KeyValue::new("keyhole.attempts", i64::from(attempts)));
        if let Some(kind) = failure {
            span.set_status(Status::error(kind));
        }
        span.end();
    }
}

/// A stage's span; ends when dropped. After its start it takes only static strings and
/// numbers, so nothing an event, an owner or a guest wrote can reach it.
pub struct StageSpan(Option<opentelemetry_sdk::trace::Span>);

impl StageSpan {
    /// Sets attribute `key` to a number or a static string.
    pub fn set(&mut self, key: &'static str, value: impl Into<StaticValue>) {
        if let Some(span) = &mut self.0 {
            opentelemetry::trace::Span::set_attribute(span, KeyValue::new(key, value.into().0));
        }
    }

    /// Where a sent record landed.
    pub fn placed(&mut self, partition: i32, offset: i64) {
        if let Some(span) = &mut self.0 {
            opentelemetry::trace::Span::set_attributes(
                span,
                [
                    KeyValue::new("messaging.destination.partition.id", partition.to_string()),
                    KeyValue::new("messaging.kafka.offset", offset),
                ],
            );
        }
    }

    /// Marks the span as failed, with the error's kind (never its message).
    pub fn fail(&mut self, kind: &'static str) {
        if let Some(span) = &mut self.0 {
            opentelemetry::trace::Span::set_attribute(span, KeyValue::new("error.type", kind));
            opentelemetry::trace::Span::set_status(span, Status::error(kind));
        }
    }
}

/// An attribute value set after a span started: a number or a static string.
pub struct StaticValue(Value);

impl From<&'static str> for StaticValue {
    fn from(value: &'static str) -> Self {
        StaticValue(value.into())
    }
}

impl From<i64> for StaticValue {
    fn from(value: i64) -> Self {
        StaticValue(value.into())
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

/// The log span an event is handled in: the binding and event id, and the trace fields when the
/// event has a trace context, so every log line of the event can be found by trace id.
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
        if let Some(parent) = &trace.parent_span_id {
            span.record("parent_span_id", parent.as_str());
        }
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
        assert_eq!(trace.parent_span_id.as_deref(), Some("b7ad6b7169203331"));
        assert_ne!(Some(trace.span_id.clone()), trace.parent_span_id);
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
