//! The producers of replies and dead letters.
//!
//! Every producer is idempotent with `acks=all`: a confirmed record is on every in-sync replica,
//! and a retried send is never written twice. Bindings that are at-least-once or at-most-once
//! share one; an exactly-once binding has its own transactional producer, whose transactions
//! hold its replies, its dead letters and the offsets it consumed.

use crate::config::KafkaSettings;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{FutureProducer, Producer, PurgeConfig};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

/// Consumer-only librdkafka properties: the pass-through table is shared with the consumers,
/// and a producer would warn about each of these. `statistics.interval.ms` too: only the
/// consumers read statistics (for the lag metric); a producer would log each report.
const CONSUMER_ONLY: &[&str] = &[
    "statistics.interval.ms",
    "auto.commit.interval.ms",
    "auto.offset.reset",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.wait.max.ms",
    "heartbeat.interval.ms",
    "isolation.level",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "session.timeout.ms",
];

/// How long a transaction call may block.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The producer shared by the bindings that are not exactly-once.
pub fn shared(kafka: &KafkaSettings) -> KafkaResult<FutureProducer> {
    config(kafka, "keyhole-producer").create()
}

/// A producer of keyhole's own records (the registry's log and blobs), under `client_id`.
pub fn own(kafka: &KafkaSettings, client_id: &str) -> KafkaResult<FutureProducer> {
    config(kafka, client_id).create()
}

/// An exactly-once binding's producer, its transactions initialised (which fences off an
/// earlier instance with the same `transactional_id`). Blocks.
pub fn transactional(kafka: &KafkaSettings, transactional_id: &str) -> KafkaResult<FutureProducer> {
    let producer: FutureProducer =
        config(kafka, "keyhole-transactions").set("transactional.id", transactional_id).create()?;
    producer.init_transactions(TRANSACTION_TIMEOUT)?;
    Ok(producer)
}

fn config(kafka: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers).set("client.id", client_id);
    for (name, value) in kafka.properties.iter().filter(|(name, _)| !CONSUMER_ONLY.contains(&name.as_str())) {
        config.set(name, value);
    }
    config.set("enable.idempotence", "true").set("acks", "all");
    config
}

/// Begins a transaction. Blocks.
pub fn begin(producer: &FutureProducer) -> KafkaResult<()> {
    producer.begin_transaction()
}

/// Adds the consumed positions (the next offsets to read) to the open transaction and commits
/// it: the replies and dead letters sent in it become visible to `read_committed` readers
/// together with the group's progress, or not at all. Blocks.
pub fn commit<C: Consumer<X>, X: ConsumerContext>(
    producer: &FutureProducer,
    consumer: &C,
    positions: &[(super::TopicPartition, i64)],
) -> Result<(), TransactionError> {
    if !positions.is_empty() {
        let mut offsets = TopicPartitionList::new();
        for (at, offset) in positions {
            offsets.add_partition_offset(&at.topic, at.partition, Offset::Offset(*offset))?;
        }
        let group = consumer.group_metadata().ok_or(TransactionError::NoGroup)?;
        producer.send_offsets_to_transaction(&offsets, &group, TRANSACTION_TIMEOUT)?;
    }
    Ok(producer.commit_transaction(TRANSACTION_TIMEOUT)?)
}

/// Why a transaction could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// The consumer has no group membership to commit offsets for.
    #[error("the consumer is not in its group")]
    NoGroup,
    /// Kafka refused.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

impl TransactionError {
    /// Whether the producer can no longer be used: fenced by a newer instance with the same
    /// transactional id, or another fatal error. Otherwise the transaction can be aborted and
    /// tried again.
    pub fn is_fatal(&self) -> bool {
        matches!(self, TransactionError::Kafka(KafkaError::Transaction(error)) if error.is_fatal())
    }
}

/// Aborts the open transaction: nothing sent in it becomes visible to `read_committed` readers.
/// Blocks.
pub fn abort(producer: &FutureProducer) -> KafkaResult<()> {
    producer.abort_transaction(TRANSACTION_TIMEOUT)
}

/// Whether the producer failed for good (fenced by a newer instance with its transactional
/// id, or another fatal error): it will never send again.
pub fn failed_for_good(producer: &FutureProducer) -> bool {
    producer.client().fatal_error().is_some()
}

/// Fails every send queued in or in flight from a producer that failed for good, now. Without
/// this, librdkafka fails them only when `message.timeout.ms` passes (capped at
/// `transaction.timeout.ms`, a minute by default), and each event waiting on one holds its batch
/// and the binding's shutdown that long.
pub fn fail_pending(producer: &FutureProducer) {
    // Non-blocking: this runs on an async worker; the failed sends are reported as they go.
    producer.purge(PurgeConfig::default().queue().inflight().non_blocking());
}
