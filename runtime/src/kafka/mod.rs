//! Kafka: one consumer per binding, rebalances that drain revoked partitions, and offsets stored
//! only once an event and every earlier event of its partition are finished.
//!
//! At-least-once (the default): `enable.auto.commit=true` with `enable.auto.offset.store=false`,
//! so librdkafka commits, in the background, exactly the offsets keyhole stored. At-most-once
//! commits each offset synchronously before its event is handled; exactly-once commits offsets
//! in the binding's transactions. Neither of those two auto-commits.

pub(crate) mod dead_letter;
mod offsets;
mod poller;
pub(crate) mod producer;
mod record;
pub(crate) mod reply;

pub use dead_letter::Received;
pub use offsets::{OffsetTracker, Ticket, TopicPartition};
pub use poller::{Polled, Poller};
pub use record::{owned_headers, raw_record};

use crate::config::{BindingSettings, Delivery, KafkaSettings};
use crate::telemetry::{self, BindingLabels};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A binding's consumer, polled by a thread of its own ([`Poller`]).
pub type BindingConsumer = BaseConsumer<BindingContext>;

/// How often librdkafka reports statistics (for the consumer lag gauge) unless the operator
/// set `statistics.interval.ms`: often enough for a scrape interval, rarely enough to cost
/// nothing.
const STATISTICS_INTERVAL_MS: &str = "5000";

/// The most a consumer holds prefetched, in KiB (librdkafka's default is 64 MiB).
const PREFETCH_KBYTES: &str = "8192";

/// The most one fetch brings back (librdkafka's default is 50 MiB); at least `message.max.bytes`.
const FETCH_MAX_BYTES: &str = "4194304";

/// Creates `binding`'s consumer in its group and subscribes it to its topics. `labels` label its
/// consumer lag gauge.
pub fn consumer(
    kafka: &KafkaSettings,
    binding: &BindingSettings,
    tracker: Arc<OffsetTracker>,
    drain_timeout: Duration,
    labels: BindingLabels,
) -> KafkaResult<BindingConsumer> {
    let BindingSettings { group_id, topics, delivery, max_in_flight, .. } = binding;
    let delivery = *delivery;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", group_id)
        .set("client.id", "keyhole")
        // A new group starts at the beginning: a reference published before keyhole started is
        // still a request someone expects to be handled. Operators may override this one.
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        // Prefetch bounded by what the binding can have in flight, not by librdkafka's defaults
        // (100,000 messages per partition, up to 64 MiB): memory then depends on the
        // configuration, not on how far behind the group is. A few in-flight limits' worth per
        // partition keeps the binding fed between fetches.
        .set("queued.min.messages", (max_in_flight.saturating_mul(4)).max(1000).to_string())
        .set("queued.max.messages.kbytes", PREFETCH_KBYTES)
        .set("fetch.max.bytes", FETCH_MAX_BYTES);
    for (name, value) in &kafka.properties {
        config.set(name, value);
    }
    // Exactly-once bindings already need a stable, unique instance id (their transactional
    // id): as a static group member too, an instance restarted after a crash takes its
    // partitions back at once instead of waiting for the group to give up on its predecessor
    // (KIP-345, as Kafka Streams does for exactly-once).
    if delivery == Delivery::ExactlyOnce {
        config.set("group.instance.id", &kafka.instance_id);
    }
    // Set last so that nothing above can undo them (config validation refuses them too).
    let auto_commit = if delivery == Delivery::AtLeastOnce { "true" } else { "false" };
    config.set("enable.auto.commit", auto_commit).set("enable.auto.offset.store", "false");
    let consumer: BindingConsumer = config.create_with_context(BindingContext {
        group_id: group_id.to_string(),
        tracker,
        drain_timeout,
        delivery,
        labels,
        lagging: Mutex::default(),
    })?;
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// A client of keyhole's own (the registry's readers): the brokers and the operator's
/// properties, no consumer group.
pub fn client_config(kafka: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers).set("client.id", client_id);
    for (name, value) in &kafka.properties {
        config.set(name, value);
    }
    config
}

/// Stores `offset` (the next offset to read) for a partition, for librdkafka to commit.
pub fn store(consumer: &impl Consumer<BindingContext>, partition: &TopicPartition, offset: i64) {
    let mut tpl = TopicPartitionList::new();
    let stored = tpl
        .add_partition_offset(&partition.topic, partition.partition, Offset::Offset(offset))
        .and_then(|()| consumer.store_offsets(&tpl));
    if let Err(error) = stored {
        // Happens when the partition was revoked meanwhile: its next owner re-reads from the
        // last commit, so the event is handled again rather than lost.
        tracing::warn!(topic = %partition.topic, partition = partition.partition, offset, %error, "Cannot store offset.");
    }
}

/// Commits the given offsets synchronously (shutdown, revocation).
pub fn commit(
    consumer: &impl Consumer<BindingContext>,
    offsets: &[(TopicPartition, i64)],
) -> KafkaResult<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (at, offset) in offsets {
        tpl.add_partition_offset(&at.topic, at.partition, Offset::Offset(*offset))?;
    }
    consumer.commit(&tpl, CommitMode::Sync)
}

/// Logs what librdkafka reports, turns its statistics into the consumer lag gauge, and drains
/// revoked partitions before letting them go.
pub struct BindingContext {
    group_id: String,
    tracker: Arc<OffsetTracker>,
    drain_timeout: Duration,
    delivery: Delivery,
    /// The binding's metric labels.
    labels: BindingLabels,
    /// The partitions whose lag the last statistics reported: one that is no longer reported
    /// (revoked) is set to 0, so that summing the gauge over instances does not count it twice.
    lagging: Mutex<HashSet<(String, i32)>>,
}

impl ClientContext for BindingContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(group = %self.group_id, %error, reason, "Kafka client error.");
    }

    fn stats(&self, statistics: Statistics) {
        let mut now = HashSet::new();
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a lag of -1 means unknown
                // (no committed offset or end offset yet, or a partition this consumer does
                // not hold).
                if partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                self.lag(topic, partition).set(p.consumer_lag as f64);
                now.insert((topic.clone(), partition));
            }
        }
        let mut lagging = self.lagging.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (topic, partition) in lagging.difference(&now) {
            self.lag(topic, *partition).set(0.0);
        }
        *lagging = now;
    }
}

impl BindingContext {
    fn lag(&self, topic: &str, partition: i32) -> metrics::Gauge {
        let mut labels = self.labels.with("topic", topic.to_string());
        labels.push(metrics::Label::new("partition", partition.to_string()));
        metrics::gauge!(telemetry::CONSUMER_LAG, labels)
    }
}

impl ConsumerContext for BindingContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = partitions(tpl);
                tracing::info!(group = %self.group_id, ?partitions, "Partitions assigned.");
                self.tracker.assign(partitions);
            }
            Rebalance::Revoke(tpl) => {
                let partitions = partitions(tpl);
                tracing::info!(group = %self.group_id, ?partitions, "Partitions revoked; draining.");
                let deadline = Instant::now() + self.drain_timeout;
                // This runs on the consumer's polling thread (or the blocking thread closing
                // it), never on an async worker: it may wait while the events finish there.
                let (left, stored) = self.tracker.revoke_and_drain(&partitions, deadline);
                if left > 0 {
                    tracing::warn!(group = %self.group_id, left, "Drain deadline passed; unfinished events will be redelivered.");
                }
                // Only at-least-once commits here: at-most-once committed every offset before
                // handling, and exactly-once revokes only between transactions, whose commits
                // held the offsets.
                if self.delivery != Delivery::AtLeastOnce {
                    return;
                }
                if let Err(error) = commit(consumer, &stored) {
                    tracing::warn!(group = %self.group_id, %error, "Cannot commit revoked partitions' offsets.");
                }
            }
            Rebalance::Error(error) => tracing::error!(group = %self.group_id, %error, "Rebalance failed."),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                tracing::debug!(group = %self.group_id, offsets = offsets.count(), "Offsets committed.")
            }
            Err(error) => tracing::warn!(group = %self.group_id, %error, "Offset commit failed."),
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements().iter().map(|e| TopicPartition::new(e.topic(), e.partition())).collect()
}
