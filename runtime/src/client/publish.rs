//! The producer's side: well-formed reference events, as a data owner or requester emits them.
//!
//! An event is a binary-mode CloudEvent (`ce_*` headers) with a `dataref` and no value: the
//! personal data stays with its owner. The reference is checked with the same rules keyhole
//! applies when consuming, so a producer learns at once that a reference would be refused.

use crate::cloudevents::{DataRef, EnvelopeError, encode};
use crate::kafka;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

/// What to publish.
#[derive(Clone, Debug)]
pub struct ReferenceEventSpec {
    /// The CloudEvents `id`; unique per source.
    pub id: String,
    /// The CloudEvents `source`.
    pub source: String,
    /// The CloudEvents `type`.
    pub type_: String,
    /// The CloudEvents `subject`.
    pub subject: Option<String>,
    /// The CloudEvents `time` (RFC 3339); now when absent.
    pub time: Option<String>,
    /// The reference: a path relative to the data owner's base URL.
    pub dataref: String,
    /// The `partitionkey` extension, also used as the message key so that events of one key
    /// stay in order.
    pub partition_key: Option<String>,
    /// The `correlationid` extension.
    pub correlation_id: Option<String>,
    /// The `replyto` extension: the topic the reply should go to (the handler's allow-list
    /// decides whether it may).
    pub reply_to: Option<String>,
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The reference would be refused by any consumer.
    #[error("the reference would be refused")]
    Reference(#[from] EnvelopeError),
    /// Kafka did not take the event.
    #[error("Kafka did not accept the event")]
    Kafka(#[from] KafkaError),
}

/// An idempotent producer with `acks=all`: a confirmed event is on every in-sync replica, and a
/// retried send is never written twice.
pub fn producer(
    bootstrap_servers: &str,
    properties: &[(String, String)],
) -> Result<FutureProducer, KafkaError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap_servers).set("client.id", "keyhole-publish");
    for (name, value) in properties {
        config.set(name, value);
    }
    config.set("enable.idempotence", "true").set("acks", "all");
    config.create()
}

/// A fresh random (version 4) UUID, for event ids.
pub use crate::cloudevents::encode::new_id;

/// Publishes one reference event and waits until Kafka confirms it; returns its partition and
/// offset.
pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    event: &ReferenceEventSpec,
    timeout: Duration,
) -> Result<(i32, i64), PublishError> {
    DataRef::parse(&event.dataref)?;
    send(producer, topic, event, timeout).await
}

/// Publishes without checking the reference: for the simulator, which must be able to show
/// what keyhole does with a hostile one.
pub(crate) async fn send(
    producer: &FutureProducer,
    topic: &str,
    event: &ReferenceEventSpec,
    timeout: Duration,
) -> Result<(i32, i64), PublishError> {
    let now = || humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let time = event.time.clone().unwrap_or_else(now);
    let headers = kafka::owned_headers(&encode::binary_headers(
        &[
            ("specversion", Some("1.0")),
            ("id", Some(event.id.as_str())),
            ("source", Some(event.source.as_str())),
            ("type", Some(event.type_.as_str())),
            ("time", Some(time.as_str())),
            ("dataref", Some(event.dataref.as_str())),
            ("subject", event.subject.as_deref()),
            ("partitionkey", event.partition_key.as_deref()),
            ("correlationid", event.correlation_id.as_deref()),
            ("replyto", event.reply_to.as_deref()),
        ],
        None,
    ));
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(key) = &event.partition_key {
        record = record.key(key.as_str());
    }
    let delivery = producer.send(record, timeout).await.map_err(|(error, _)| error)?;
    Ok((delivery.partition, delivery.offset))
}

/// A reply, as `keyhole request` prints it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReceivedReply {
    /// Where it was read.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its CloudEvents attributes (`ce_` headers, without the prefix) and `content-type`.
    pub attributes: std::collections::BTreeMap<String, String>,
    /// Its data.
    #[serde(skip)]
    pub data: Vec<u8>,
}

/// Why no reply came.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Publishing the request failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The reply topic cannot be read.
    #[error("cannot read the reply topic {topic}: {source}")]
    ReplyTopic {
        /// The topic.
        topic: String,
        /// Why.
        source: KafkaError,
    },
    /// Nothing correlated arrived in time.
    #[error(
        "no reply to {id} on {topic} within {}: the owner may have refused consent, the event may \
         have been dead lettered (see keyhole's audit), or keyhole is not running",
        humantime::format_duration(*waited)
    )]
    TimedOut {
        /// The request's id.
        id: String,
        /// The reply topic.
        topic: String,
        /// How long it waited.
        waited: Duration,
    },
}

/// Publishes `event` as a request and waits up to `timeout` for its reply on `reply_topic`: the
/// first record there whose `causationid` is the request's id. Starts reading the reply topic
/// at its end before publishing, so a fast reply is not missed and old ones are not read.
pub async fn request(
    bootstrap_servers: &str,
    properties: &[(String, String)],
    topic: &str,
    event: &ReferenceEventSpec,
    reply_topic: &str,
    timeout: Duration,
) -> Result<ReceivedReply, RequestError> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    let reply_error = |source| RequestError::ReplyTopic { topic: reply_topic.to_string(), source };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("client.id", "keyhole-request")
        .set("group.id", format!("keyhole-request-{}", new_id()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    for (name, value) in properties {
        config.set(name, value);
    }
    let consumer: StreamConsumer = config.create().map_err(reply_error)?;
    let metadata =
        consumer.fetch_metadata(Some(reply_topic), Duration::from_secs(10)).map_err(reply_error)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(reply_error(KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownTopic)));
    }
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in partitions {
        let (_, high) = consumer
            .fetch_watermarks(reply_topic, partition, Duration::from_secs(10))
            .map_err(reply_error)?;
        assignment
            .add_partition_offset(reply_topic, partition, rdkafka::Offset::Offset(high))
            .map_err(reply_error)?;
    }
    consumer.assign(&assignment).map_err(reply_error)?;
    let producer = producer(bootstrap_servers, properties).map_err(PublishError::from)?;
    publish(&producer, topic, event, Duration::from_secs(30)).await?;
    let wait = async {
        loop {
            let message = match consumer.recv().await {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "Cannot read the reply topic; retrying.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let attributes = attributes(&message);
            if attributes.get("causationid") == Some(&event.id) {
                return ReceivedReply {
                    topic: message.topic().to_string(),
                    partition: message.partition(),
                    offset: message.offset(),
                    attributes,
                    data: message.payload().unwrap_or_default().to_vec(),
                };
            }
        }
    };
    tokio::time::timeout(timeout, wait).await.map_err(|_| RequestError::TimedOut {
        id: event.id.clone(),
        topic: reply_topic.to_string(),
        waited: timeout,
    })
}

/// A record's CloudEvents attributes (binary mode) and content type.
fn attributes(message: &impl rdkafka::Message) -> std::collections::BTreeMap<String, String> {
    use rdkafka::message::Headers as _;
    let Some(headers) = message.headers() else { return Default::default() };
    headers
        .iter()
        .filter_map(|h| {
            let name = h.key.strip_prefix("ce_").or((h.key == "content-type").then_some(h.key))?;
            Some((name.to_string(), String::from_utf8_lossy(h.value?).into_owned()))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_4_uuids() {
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
    }
}
