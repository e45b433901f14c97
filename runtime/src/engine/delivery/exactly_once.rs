//! Exactly-once: reads a batch (up to the in-flight limit, as much as is ready), handles it in
//! one transaction with its replies, dead letters and receipts, and commits the batch's offsets
//! in that transaction. A batch that cannot be finished is aborted and read again, with consent
//! asked again.

use super::BindingError;
use crate::engine::binding::Binding;
use crate::engine::dispatcher::Dispatcher;
use crate::engine::reader::Reader;
use crate::kafka::{self, Partition};
use rdkafka::consumer::Consumer as _;
use rdkafka::producer::FutureProducer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// How long a batch waits for more records once it has one.
const BATCH_LINGER: Duration = Duration::from_millis(5);

/// Reads and handles batches in transactions until cancelled.
pub async fn read(
    binding: &Arc<Binding>,
    reader: &Reader<'_>,
    dispatcher: &Arc<Dispatcher>,
    permits: &Arc<Semaphore>,
) -> Result<(), BindingError> {
    let name = reader.name;
    let producer = binding.producer.clone();
    let failed = |message: String| BindingError::Failed(message);
    loop {
        let mut batch = Vec::new();
        while batch.len() < binding.settings.max_in_flight {
            let Ok(permit) = permits.clone().try_acquire_owned() else { break };
            let work = if batch.is_empty() {
                reader.next(permit).await
            } else {
                // Take what is already there; do not wait to fill the batch.
                tokio::time::timeout(BATCH_LINGER, reader.next(permit)).await.ok().flatten()
            };
            match work {
                Some(work) => batch.push(work),
                None => break,
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let (first, positions) =
            bounds(batch.iter().map(|w| ((w.origin.topic.clone(), w.origin.partition), w.origin.offset)));
        blocking(&producer, kafka::producer::begin)
            .await
            .map_err(|e| failed(format!("cannot begin a transaction: {e}")))?;
        dispatcher.take_abandoned();
        for work in batch {
            dispatcher.submit(work);
        }
        let all = u32::try_from(binding.settings.max_in_flight).unwrap_or(u32::MAX);
        drop(permits.acquire_many(all).await);
        let committed = if dispatcher.take_abandoned() > 0 {
            Err("interrupted".to_string())
        } else {
            let (producer, consumer, positions) =
                (producer.clone(), reader.consumer.clone(), positions.clone());
            tokio::task::spawn_blocking(move || {
                kafka::producer::commit(&producer, consumer.as_ref(), &positions)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|committed| {
                committed.map_err(|error| {
                    if error.is_fatal() {
                        tracing::error!(binding = %name, %error, "Transaction failed for good.");
                    }
                    error.to_string()
                })
            })
        };
        let Err(why) = committed else {
            tracing::debug!(binding = %name, offsets = ?positions, "Transaction committed.");
            continue;
        };
        tracing::warn!(binding = %name, reason = %why, "Transaction aborted; its events are read again.");
        blocking(&producer, kafka::producer::abort)
            .await
            .map_err(|e| failed(format!("cannot abort a transaction: {e}")))?;
        if reader.cancel.is_cancelled() {
            return Ok(());
        }
        // Read the batch again: back to its first offsets, with fresh offset tracking.
        reader.tracker.assign(first.iter().map(|(partition, _)| partition.clone()));
        for ((topic, partition), offset) in first {
            let consumer = reader.consumer.clone();
            let topic_name = topic.clone();
            tokio::task::spawn_blocking(move || {
                consumer.seek(
                    &topic_name,
                    partition,
                    rdkafka::Offset::Offset(offset),
                    Duration::from_secs(10),
                )
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|sought| sought.map_err(|e| e.to_string()))
            .map_err(|e| failed(format!("cannot rewind {topic}[{partition}] after an abort: {e}")))?;
        }
    }
}

/// An offset of each partition of a batch.
type Offsets = Vec<(Partition, i64)>;

/// Per partition of a batch: its first offset (to rewind to) and the next offset to read (to
/// commit).
fn bounds(offsets: impl Iterator<Item = (Partition, i64)>) -> (Offsets, Offsets) {
    let mut first: Offsets = Vec::new();
    let mut next: Offsets = Vec::new();
    for (partition, offset) in offsets {
        match next.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, n)) => *n = (*n).max(offset + 1),
            None => {
                next.push((partition.clone(), offset + 1));
                first.push((partition, offset));
            }
        }
    }
    (first, next)
}

/// A transactional producer call: it blocks until the broker answers, so it runs on a
/// blocking thread.
async fn blocking(
    producer: &Arc<FutureProducer>,
    call: fn(&FutureProducer) -> rdkafka::error::KafkaResult<()>,
) -> Result<(), String> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || call(&producer))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::bounds;

    #[test]
    fn a_batch_rewinds_to_its_first_offsets_and_commits_past_its_last() {
        let p = |n: i32| ("t".to_string(), n);
        let (first, next) = bounds([(p(0), 5), (p(1), 9), (p(0), 7), (p(0), 6)].into_iter());
        assert_eq!(first, [(p(0), 5), (p(1), 9)]);
        assert_eq!(next, [(p(0), 8), (p(1), 10)]);
    }
}
