//! Dead letters: an event that failed for good is published, as it was received, to the
//! binding's dead-letter topic, with headers that say where it came from and why it failed, in
//! the style of Kafka Connect's (`__connect.errors.*`).
//!
//! A dead letter holds the reference, never resolved data nor data a producer wrote inline: the
//! key and headers are the original record's, byte for byte, except that a `dataref`'s query
//! string (which may carry a token) is cut off; a binary-mode value (which is the event's data)
//! is dropped, and so are a structured-mode event's `data` and `data_base64` members. A header
//! says what was cut.

use crate::cloudevents::RawRecord;
use crate::config::Stage;
use crate::model::Origin;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::{Duration, SystemTime};

/// The prefix of every error header.
pub const HEADER_PREFIX: &str = "__keyhole.errors.";

/// An owned copy of a consumed record, kept while its event is in flight so that it can be dead
/// lettered as it was received.
#[derive(Clone, Debug, Default)]
pub struct Received {
    /// The record's key.
    pub key: Option<Vec<u8>>,
    /// The record's value.
    pub value: Option<Vec<u8>>,
    /// The record's headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The record's timestamp (milliseconds since the epoch), when it has one.
    pub timestamp: Option<i64>,
}

impl Received {
    /// Copies a record.
    pub fn copy(record: &RawRecord<'_>, timestamp: Option<i64>) -> Self {
        Received {
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            headers: record
                .headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.map(<[u8]>::to_vec)))
                .collect(),
            timestamp,
        }
    }
}

/// Why an event is dead lettered, and by whom.
pub struct Failure<'a> {
    /// Where the event was read.
    pub origin: &'a Origin,
    /// The binding's consumer group.
    pub group: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    /// The handler.
    pub handler: &'a str,
    /// The handler's version (`sha256:<hex>`).
    pub handler_version: &'a str,
    /// The stage that failed.
    pub stage: Stage,
    /// A stable label of the error, e.g. `owner_unavailable`, `trapped`.
    pub class: &'a str,
    /// Why, without personal data.
    pub message: &'a str,
    /// Attempts made.
    pub attempts: u32,
    /// The event's CloudEvents id, when the envelope had one.
    pub event_id: Option<&'a str>,
}

/// Publishes a dead letter and waits for the broker's confirmation; returns where it landed.
pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    received: &Received,
    failure: &Failure<'_>,
    timeout: Duration,
) -> Result<(i32, i64), KafkaError> {
    let (headers, value) = dead_letter(received, failure, SystemTime::now());
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(key) = &received.key {
        record = record.key(key);
    }
    if let Some(value) = &value {
        record = record.payload(value);
    }
    if let Some(timestamp) = received.timestamp {
        record = record.timestamp(timestamp);
    }
    let delivery = producer.send(record, timeout).await.map_err(|(error, _)| error)?;
    Ok((delivery.partition, delivery.offset))
}

/// The dead letter's headers and value.
fn dead_letter(
    received: &Received,
    failure: &Failure<'_>,
    now: SystemTime,
) -> (OwnedHeaders, Option<Vec<u8>>) {
    let mut redacted = false;
    let mut headers = OwnedHeaders::new_with_capacity(received.headers.len() + 14);
    for (name, value) in &received.headers {
        let value = match value {
            Some(value) if name.eq_ignore_ascii_case("ce_dataref") => match without_query(value) {
                Some(cut) => {
                    redacted = true;
                    Some(cut)
                }
                None => Some(value.as_slice()),
            },
            other => other.as_deref(),
        };
        headers = headers.insert(Header { key: name, value });
    }
    let mut cut = Vec::new();
    if redacted {
        cut.push("dataref query string");
    }
    let value = match received.value.as_deref() {
        None => None,
        Some(value) if is_structured(&received.headers) => {
            let (value, query, data) = redact_structured(value);
            if query {
                cut.push("dataref query string");
            }
            if data {
                cut.push("inline data");
            }
            value
        }
        // Binary mode: the value is the event's data, personal data written inline.
        Some([]) => Some(Vec::new()),
        Some(_) => {
            cut.push("inline data");
            None
        }
    };
    let error = |name: &str| format!("{HEADER_PREFIX}{name}");
    let mut add = |name: &str, value: &str| {
        headers = std::mem::replace(&mut headers, OwnedHeaders::new())
            .insert(Header { key: &error(name), value: Some(value.as_bytes()) });
    };
    add("topic", &failure.origin.topic);
    add("partition", &failure.origin.partition.to_string());
    add("offset", &failure.origin.offset.to_string());
    add("consumer.group", failure.group);
    add("tenant", failure.tenant);
    add("handler", failure.handler);
    add("handler.version", failure.handler_version);
    add("stage", failure.stage.as_str());
    add("class.name", failure.class);
    add("exception.message", failure.message);
    add("attempts", &failure.attempts.to_string());
    add("time", &humantime::format_rfc3339_millis(now).to_string());
    if let Some(id) = failure.event_id {
        add("event.id", id);
    }
    if !cut.is_empty() {
        cut.dedup();
        add("redacted", &cut.join(", "));
    }
    (headers, value)
}

/// A reference without its query string or fragment, when it has one.
fn without_query(reference: &[u8]) -> Option<&[u8]> {
    let cut = reference.iter().position(|b| matches!(b, b'?' | b'#'))?;
    Some(&reference[..cut])
}

/// Whether the record is a structured-mode CloudEvent, by the binding's rule: a `content-type`
/// starting with `application/cloudevents` (case-insensitive).
fn is_structured(headers: &[(String, Option<Vec<u8>>)]) -> bool {
    let borrowed: Vec<(&str, Option<&[u8]>)> =
        headers.iter().map(|(name, value)| (name.as_str(), value.as_deref())).collect();
    crate::cloudevents::content_mode(&RawRecord { key: None, value: None, headers: borrowed })
        .is_ok_and(|mode| mode == crate::cloudevents::ContentMode::Structured)
}

/// A structured-mode value without its `data` and `data_base64` members and with its
/// `dataref`'s query string cut off; whether a query and whether data were cut. A value that is
/// not a JSON object cannot be told apart from data: it is dropped (`None`, data cut).
fn redact_structured(value: &[u8]) -> (Option<Vec<u8>>, bool, bool) {
    let Ok(serde_json::Value::Object(mut event)) = serde_json::from_slice::<serde_json::Value>(value) else {
        return (None, false, true);
    };
    let data = event.remove("data").is_some() | event.remove("data_base64").is_some();
    let mut query = false;
    if let Some(serde_json::Value::String(reference)) = event.get_mut("dataref")
        && let Some(cut) = without_query(reference.as_bytes()).map(<[u8]>::len)
    {
        reference.truncate(cut);
        query = true;
    }
    if !data && !query {
        return (Some(value.to_vec()), false, false);
    }
    match serde_json::to_vec(&event) {
        Ok(rewritten) => (Some(rewritten), query, data),
        // Unreachable for a value that was just parsed; drop it rather than keep what was cut.
        Err(_) => (None, query, true),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rdkafka::message::Headers as _;

    fn failure(origin: &Origin) -> Failure<'_> {
        Failure {
            origin,
            group: "keyhole.acme.echo",
            tenant: "acme",
            handler: "echo",
            handler_version: "sha256:00",
            stage: Stage::Handler,
            class: "trapped",
            message: "the handler trapped: unreachable",
            attempts: 1,
            event_id: Some("e-1"),
        }
    }

    fn header<'a>(headers: &'a OwnedHeaders, name: &str) -> Option<&'a [u8]> {
        headers.iter().find(|h| h.key == name).and_then(|h| h.value)
    }

    #[test]
    fn keeps_the_record_and_adds_connect_style_headers() {
        let origin = Origin { topic: "refs".into(), partition: 3, offset: 42 };
        let received = Received {
            key: Some(b"k".to_vec()),
            value: None,
            headers: vec![("ce_id".into(), Some(b"e-1".to_vec())), ("x-null".into(), None)],
            timestamp: Some(1),
        };
        let (headers, value) = dead_letter(&received, &failure(&origin), SystemTime::UNIX_EPOCH);
        assert_eq!(value, None);
        assert_eq!(headers.get(0).key, "ce_id");
        assert_eq!(headers.get(1).key, "x-null");
        assert_eq!(headers.get(1).value, None);
        assert_eq!(header(&headers, "__keyhole.errors.offset"), Some(&b"42"[..]));
        assert_eq!(header(&headers, "__keyhole.errors.stage"), Some(&b"handler"[..]));
        assert_eq!(header(&headers, "__keyhole.errors.time"), Some(&b"1970-01-01T00:00:00.000Z"[..]));
        assert_eq!(header(&headers, "__keyhole.errors.redacted"), None);
    }

    #[test]
    fn cuts_the_query_string_of_a_dataref() {
        let origin = Origin { topic: "refs".into(), partition: 0, offset: 0 };
        let received = Received {
            headers: vec![("ce_dataref".into(), Some(b"customers/1?token=s3cret".to_vec()))],
            ..Received::default()
        };
        let (headers, _) = dead_letter(&received, &failure(&origin), SystemTime::UNIX_EPOCH);
        assert_eq!(header(&headers, "ce_dataref"), Some(&b"customers/1"[..]));
        assert!(header(&headers, "__keyhole.errors.redacted").is_some());

        let structured = br#"{"specversion":"1.0","dataref":"customers/1?token=s3cret","id":"x"}"#;
        let received = Received {
            value: Some(structured.to_vec()),
            headers: vec![("content-type".into(), Some(b"application/cloudevents+json".to_vec()))],
            ..Received::default()
        };
        let (_, value) = dead_letter(&received, &failure(&origin), SystemTime::UNIX_EPOCH);
        let value = String::from_utf8(value.unwrap()).unwrap();
        assert!(!value.contains("s3cret") && value.contains(r#""dataref":"customers/1""#), "{value}");
    }

    #[test]
    fn inline_data_never_reaches_a_dead_letter_in_either_mode() {
        let origin = Origin { topic: "refs".into(), partition: 0, offset: 0 };
        let canary = "canary-4b1d@example.com";
        let binary = Received {
            value: Some(format!(r#"{{"email":"{canary}"}}"#).into_bytes()),
            headers: vec![("ce_id".into(), Some(b"e-1".to_vec()))],
            ..Received::default()
        };
        let (headers, value) = dead_letter(&binary, &failure(&origin), SystemTime::UNIX_EPOCH);
        assert_eq!(value, None);
        assert_eq!(header(&headers, "ce_id"), Some(&b"e-1"[..]), "the attributes are kept");
        assert_eq!(header(&headers, "__keyhole.errors.redacted"), Some(&b"inline data"[..]));

        let content_type = ("Content-Type".to_string(), Some(b"application/CloudEvents+json".to_vec()));
        for member in ["data", "data_base64"] {
            let event = format!(
                r#"{{"specversion":"1.0","id":"e-2","dataref":"c/1?t=x","{member}":{{"email":"{canary}"}}}}"#
            );
            let structured = Received {
                value: Some(event.into_bytes()),
                headers: vec![content_type.clone()],
                ..Received::default()
            };
            let (headers, value) = dead_letter(&structured, &failure(&origin), SystemTime::UNIX_EPOCH);
            let value = String::from_utf8(value.unwrap()).unwrap();
            assert!(!value.contains(canary) && value.contains(r#""id":"e-2""#), "{value}");
            let redacted = header(&headers, "__keyhole.errors.redacted").unwrap();
            assert_eq!(redacted, b"dataref query string, inline data");
        }
        // Not JSON at all: nothing tells its data apart, so none of it is kept.
        let garbage = Received {
            value: Some(canary.as_bytes().to_vec()),
            headers: vec![content_type],
            ..Received::default()
        };
        assert_eq!(dead_letter(&garbage, &failure(&origin), SystemTime::UNIX_EPOCH).1, None);
    }
}
