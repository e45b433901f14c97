//! Publishing a handler's reply: a binary-mode CloudEvent correlated to its request, sent by an
//! idempotent producer with `acks=all` (see [`super::producer`]), and confirmed before the
//! request's offset may be stored.

use crate::envelope::ReferenceEvent;
use crate::sandbox::{HandlerIdentity, Reply};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

/// Publishes `reply` to `topic`, keyed like the request, and waits for the broker's
/// confirmation. Returns the reply's CloudEvents id.
pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    who: &HandlerIdentity,
    request: &ReferenceEvent,
    key: Option<&[u8]>,
    reply: &Reply,
    timeout: Duration,
) -> Result<String, KafkaError> {
    let id = crate::publish::new_id();
    let source = format!("urn:keyhole:{}:{}", who.tenant, who.handler);
    let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let correlation = request.correlationid.as_deref().unwrap_or(&request.id);
    let headers = [
        ("ce_specversion", "1.0"),
        ("ce_id", id.as_str()),
        ("ce_source", source.as_str()),
        ("ce_type", reply.type_.as_str()),
        ("ce_time", time.as_str()),
        ("ce_correlationid", correlation),
        ("ce_causationid", request.id.as_str()),
        ("content-type", reply.datacontenttype.as_str()),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |headers, (name, value)| {
        headers.insert(Header { key: name, value: Some(value.as_bytes()) })
    });
    let mut record: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(topic).headers(headers).payload(&reply.data);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer.send(record, timeout).await.map_err(|(error, _)| error)?;
    Ok(id)
}
