//! Publishing a handler's reply: a binary-mode CloudEvent correlated to its request, sent by an
//! idempotent producer with `acks=all` (see [`super::producer`]), and confirmed before the
//! request's offset may be stored. A request's `traceparent` continues onto its reply, with
//! keyhole's span as the parent.

use crate::cloudevents::{ReferenceEvent, encode};
use crate::sandbox::{HandlerIdentity, Reply};
use crate::telemetry::TraceContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

/// The request a reply answers, as the reply needs it.
pub struct Request<'a> {
    /// The handler that replies.
    pub who: &'a HandlerIdentity,
    /// The request event.
    pub event: &'a ReferenceEvent,
    /// The request's Kafka key, which the reply keeps.
    pub key: Option<&'a [u8]>,
    /// The request's trace context as keyhole continued it: the reply's `traceparent` names
    /// keyhole's span as its parent. None when the request carried none and span export is off
    /// (a trace keyhole started would lead nowhere).
    pub trace: Option<&'a TraceContext>,
}

/// Publishes `reply` to `topic`, keyed like the request, and waits for the broker's
/// confirmation. Returns the reply's CloudEvents id.
pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    request: &Request<'_>,
    reply: &Reply,
    timeout: Duration,
) -> Result<String, KafkaError> {
    let Request { who, event: request_event, key, trace } = *request;
    let id = encode::new_id();
    let source = format!("urn:keyhole:{}:{}", who.tenant, who.handler);
    let time = encode::now();
    let correlation = request_event.correlationid.as_deref().unwrap_or(&request_event.id);
    let traceparent = trace.map(TraceContext::traceparent);
    let tracestate = trace.and_then(|trace| trace.tracestate.as_deref());
    let headers = super::owned_headers(&encode::binary_headers(
        &[
            ("specversion", Some("1.0")),
            ("id", Some(id.as_str())),
            ("source", Some(source.as_str())),
            ("type", Some(reply.type_.as_str())),
            ("time", Some(time.as_str())),
            ("correlationid", Some(correlation)),
            ("causationid", Some(request_event.id.as_str())),
            ("traceparent", traceparent.as_deref()),
            ("tracestate", tracestate),
        ],
        Some(reply.datacontenttype.as_str()),
    ));
    let mut record: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(topic).headers(headers).payload(&reply.data);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer.send(record, timeout).await.map_err(|(error, _)| error)?;
    Ok(id)
}
